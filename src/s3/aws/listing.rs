//! Listings: ListObjectsV2 pages and ListMultipartUploads. Names are asked URL-encoded and
//! decoded here, since one name holding a character XML 1.0 cannot carry would make a whole
//! answer unreadable; a page is believed only if it is whole.

use std::time::SystemTime;

use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::types::{CommonPrefix, EncodingType, Object};

use super::error::{malformed, map_err};
use super::{to_system_time, AwsStore};
use crate::s3::{ListPage, ListedObject, PendingUpload, Request, S3Result};

/// A listing is believed only if it is one: every key under the prefix and with a size, a
/// continuation token when truncated (a garbled page must not hide, invent or shrink files),
/// and whole. The SDK's parser accepts a page cut short (one ending after a few entries, with
/// a Content-Length to match): such a page would hide the files after the cut, and a cached
/// listing then answers ENOENT for them. KeyCount (Garage sends it before the entries, AWS
/// after) must count the entries; a server without it must at least have sent IsTruncated and
/// Name (AWS sends Name after the entries).
fn check_whole(out: &ListObjectsV2Output, req: impl Fn() -> Request) -> S3Result<()> {
    let answered = out.contents().len() + out.common_prefixes().len();
    let whole = match out.key_count() {
        Some(n) => usize::try_from(n) == Ok(answered),
        None => out.name().is_some(),
    };
    if !whole || out.is_truncated().is_none() {
        return Err(malformed(
            req(),
            format!(
                "a page cut short: KeyCount {:?} for {answered} entries, IsTruncated {:?}",
                out.key_count(),
                out.is_truncated()
            ),
        ));
    }
    Ok(())
}

/// How many undecodable names [`AwsStore::decoded`] remembers having logged.
const WARNED_MAX: usize = 1024;

impl AwsStore {
    /// A name of a listing as stored: URL-decoded when the answer says it is encoded. `None`
    /// for one that does not decode to UTF-8 (a server's garble, or a name no request could
    /// send back): skipped with one log line, so its neighbours are still listed.
    fn decoded(&self, op: &'static str, encoded: bool, raw: &str) -> Option<String> {
        if !encoded {
            return Some(raw.to_owned());
        }
        let name = url_decode(raw);
        if name.is_none() {
            let mut warned = self.warned.lock().unwrap();
            if warned.len() >= WARNED_MAX {
                warned.clear(); // (bounded: a bucket of garbled names repeats a line at worst)
            }
            if warned.insert(raw.to_owned()) {
                tracing::warn!(
                    op,
                    entry = raw,
                    "a listed name does not URL-decode to UTF-8; skipped"
                );
            }
        }
        name
    }

    /// One ListObjectsV2 page, checked (see [`crate::s3::ObjectStore::list`]).
    pub(super) async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<ListPage> {
        const OP: &str = "ListObjectsV2";
        let req = || Request::prefix(OP, prefix);
        // Names come URL-encoded: another client may put a key holding a character XML 1.0
        // cannot carry (a control character), and one such key would make the whole page, and
        // every listing of the directory, unreadable.
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_owned))
            .set_continuation_token(token)
            .set_max_keys(max_keys)
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(map_err(req()))?;
        // (decoded only when the answer says it is encoded, as botocore does: a server that
        // ignores the parameter sends names as they are)
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        check_whole(&out, req)?;
        let objects = self.listed_objects(out.contents(), OP, encoded, prefix, req)?;
        let prefixes = self.listed_prefixes(out.common_prefixes(), OP, encoded, prefix, req)?;
        // (continuation tokens are opaque, never URL-encoded)
        let next = match (out.is_truncated(), out.next_continuation_token()) {
            (Some(true), Some(t)) => Some(t.to_owned()),
            (Some(true), None) => {
                return Err(malformed(req(), "truncated without a continuation token"))
            }
            _ => None,
        };
        Ok(ListPage {
            objects,
            prefixes,
            next,
        })
    }

    /// A page's objects, each under the prefix and with a size: a garbled entry must not
    /// hide, invent or shrink a file. Names that do not decode are skipped.
    fn listed_objects(
        &self,
        contents: &[Object],
        op: &'static str,
        encoded: bool,
        prefix: &str,
        req: impl Fn() -> Request,
    ) -> S3Result<Vec<ListedObject>> {
        let mut objects = Vec::with_capacity(contents.len());
        for o in contents {
            let key = match o.key() {
                Some(raw) => match self.decoded(op, encoded, raw) {
                    Some(key) => Some(key),
                    None => continue,
                },
                None => None,
            };
            match (key, o.size()) {
                (Some(key), Some(size)) if key.starts_with(prefix) && size >= 0 => {
                    objects.push(ListedObject {
                        key,
                        size: size as u64,
                        etag: o.e_tag().unwrap_or("").to_owned(),
                        last_modified: to_system_time(o.last_modified()),
                    })
                }
                (key, size) => {
                    return Err(malformed(
                        req(),
                        format!("an entry {key:?} of size {size:?}"),
                    ))
                }
            }
        }
        Ok(objects)
    }

    /// A page's common prefixes (its subdirectories), each under the prefix. Names that do
    /// not decode are skipped.
    fn listed_prefixes(
        &self,
        common: &[CommonPrefix],
        op: &'static str,
        encoded: bool,
        prefix: &str,
        req: impl Fn() -> Request,
    ) -> S3Result<Vec<String>> {
        let mut prefixes = Vec::with_capacity(common.len());
        for p in common {
            let p = match p.prefix() {
                Some(raw) => match self.decoded(op, encoded, raw) {
                    Some(p) => Some(p),
                    None => continue,
                },
                None => None,
            };
            match p {
                Some(p) if p.starts_with(prefix) => prefixes.push(p),
                other => return Err(malformed(req(), format!("a common prefix {other:?}"))),
            }
        }
        Ok(prefixes)
    }

    /// Every page of ListMultipartUploads under `prefix`.
    pub(super) async fn list_uploads(&self, prefix: &str) -> S3Result<Vec<PendingUpload>> {
        const OP: &str = "ListMultipartUploads";
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            // URL-encoded for the same reason as a listing of objects
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .encoding_type(EncodingType::Url)
                .send()
                .await
                .map_err(map_err(Request::prefix(OP, prefix)))?;
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            for u in page.uploads() {
                let (Some(raw), Some(upload_id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(key) = self.decoded(OP, encoded, raw) else {
                    continue;
                };
                out.push(PendingUpload {
                    key,
                    upload_id: upload_id.to_owned(),
                    // no date: as if just started, so it is never taken for stale
                    initiated: u
                        .initiated()
                        .and_then(|d| SystemTime::try_from(*d).ok())
                        .unwrap_or_else(SystemTime::now),
                });
            }
            // NextKeyMarker is encoded too, and goes back as a key
            let next_key = match page.next_key_marker() {
                None => None,
                Some(raw) => match self.decoded(OP, encoded, raw) {
                    Some(k) => Some(k),
                    None => {
                        tracing::warn!(
                            op = OP,
                            prefix,
                            "the listing cannot go on past a name that is not UTF-8; the \
                             uploads after it are not listed"
                        );
                        return Ok(out);
                    }
                },
            };
            let next = (next_key, page.next_upload_id_marker().map(str::to_owned));
            // (a server that does not move on would otherwise be asked forever)
            let stuck = (next.0 == key_marker && next.1 == id_marker) || next == (None, None);
            if page.is_truncated() != Some(true) || stuck {
                return Ok(out);
            }
            (key_marker, id_marker) = next;
        }
    }
}

/// Decode a name of an answer to `encoding-type=url`: `%XX` escapes, and `+` for a space (AWS
/// encodes a space so; a literal `+` always comes as `%2B`). `None` for a malformed escape or
/// bytes that are not UTF-8.
pub(super) fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let digit = |c: u8| (c as char).to_digit(16);
                out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
