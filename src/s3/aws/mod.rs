//! The aws-sdk-s3 implementation of [`ObjectStore`]: the only code that builds S3 requests.
//!
//! Every request that touches object data or metadata goes through [`with_key!`] (the SSE-C
//! trio) and every copy also through [`with_source_key!`] (the copy-source trio), so a new
//! operation cannot be added without them by accident; `tests` check each operation's
//! headers on the wire with a capturing HTTP client. Both macros live here and only this
//! module's requests use them.
//!
//! Failures: every request is idempotent and retried by the SDK ([`RETRY_ATTEMPTS`], backoff
//! with jitter, no shared retry quota); a ranged GET whose body breaks or disagrees with its
//! headers is retried here. Answers are checked before they are believed (Content-Range of a
//! GET, Content-Length of a HEAD, listing entries, part ETags): a garbled answer is an error
//! (`MalformedResponse`, EIO), never a short file. Every error names its request
//! (`error::map_err`).
//!
//! Submodules: `connect` builds the client (https only, trust store), `listing` parses and
//! checks listings (URL-encoded names), `error` maps SDK errors.

mod connect;
mod error;
mod listing;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, MetadataDirective};
use bytes::Bytes;

pub use self::connect::{build_client, ConnectError, Connection, IDLE_CONNECTION, RETRY_ATTEMPTS};
use self::error::{malformed, map_err, sdk_error};
use super::{
    crc32c_base64, CompletedPart, CopyRequest, ListPage, Metadata, ObjectInfo, ObjectStore,
    PartSource, PendingUpload, ReadSource, Request, S3Error, S3Result, Sealing,
    KEY_FINGERPRINT_META,
};
use crate::key::{CustomerKey, KeyRing};

/// Adds the SSE-C trio (algorithm, key, key MD5) to a request builder.
macro_rules! with_key {
    ($builder:expr, $key:expr) => {
        $builder
            .sse_customer_algorithm("AES256")
            .sse_customer_key($key.base64())
            .sse_customer_key_md5($key.md5_base64())
    };
}

/// Adds the copy-source SSE-C trio to a copy request builder.
macro_rules! with_source_key {
    ($builder:expr, $key:expr) => {
        $builder
            .copy_source_sse_customer_algorithm("AES256")
            .copy_source_sse_customer_key($key.base64())
            .copy_source_sse_customer_key_md5($key.md5_base64())
    };
}

// (after the macros, which it uses)
mod whole;

/// S3 through aws-sdk-s3, bound to one bucket and one key ring (the first key seals writes).
pub struct AwsStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    ring: Arc<KeyRing>,
    /// Listed names already logged as undecodable: one line per name, not one per listing.
    warned: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for AwsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsStore")
            .field("bucket", &self.bucket)
            .field("keys", &self.ring)
            .finish()
    }
}

impl AwsStore {
    /// Wrap a configured client.
    pub fn new(client: aws_sdk_s3::Client, bucket: String, ring: Arc<KeyRing>) -> AwsStore {
        AwsStore {
            client,
            bucket,
            ring,
            warned: Mutex::default(),
        }
    }
    /// Fingerprint of the key that seals new writes (safe to print).
    pub fn key_fingerprint(&self) -> &str {
        self.key().fingerprint()
    }

    /// The key every write is sealed with.
    fn key(&self) -> &CustomerKey {
        self.ring.primary()
    }

    /// The key that opens an object of this sealing (`None`: a plain object, no headers).
    fn key_of(&self, sealing: Sealing) -> S3Result<Option<&CustomerKey>> {
        match sealing {
            Sealing::Plain => Ok(None),
            Sealing::Key(i) => self.ring.get(i).map(Some).ok_or(S3Error::WrongKey),
        }
    }

    /// Metadata as sent on a write: the caller's, plus the fingerprint of the sealing key.
    fn sealed_meta(&self, meta: &Metadata) -> std::collections::HashMap<String, String> {
        let mut m: std::collections::HashMap<String, String> =
            meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        m.insert(
            KEY_FINGERPRINT_META.to_owned(),
            self.key().fingerprint().to_owned(),
        );
        m
    }

    /// The bucket this store talks to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The underlying client (for `check`, which probes bucket-level state).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    fn copy_source(&self, src: &str) -> String {
        format!("{}/{}", self.bucket, encode_key(src))
    }
}

/// Percent-encode an object key for `x-amz-copy-source` (slashes kept).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn to_system_time(t: Option<&aws_smithy_types::DateTime>) -> SystemTime {
    t.and_then(|d| SystemTime::try_from(*d).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Attempts of one ranged GET whose body fails or comes short (each attempt's request also has
/// the SDK's own retries until the response head).
const BODY_ATTEMPTS: u32 = 5;

/// A response body that broke or did not match its headers: worth another attempt.
struct BodyFailure(S3Error);

/// Exponential backoff with full jitter: 100 ms · 2^(attempt-1), at most 5 s, times [0.5, 1).
async fn backoff(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    let base =
        Duration::from_millis(100 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(5));
    // a fresh RandomState is randomly keyed: enough jitter without an RNG dependency
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.5 + (r % 1000) as f64 / 2000.0;
    tokio::time::sleep(base.mul_f64(factor)).await;
}

/// The ETag S3 (and Garage) gives a completed multipart upload: the MD5 of the parts' binary
/// ETags, a dash, the part count. `None` when a part ETag is not an MD5 in hex.
fn multipart_etag(parts: &[CompletedPart]) -> Option<String> {
    use md5::Digest;
    let mut h = md5::Md5::new();
    for p in parts {
        let hex = p.etag.trim_matches('"');
        if hex.len() != 32 {
            return None;
        }
        for i in (0..32).step_by(2) {
            h.update([u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()?]);
        }
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{hex}-{}", parts.len()))
}

/// `bytes FIRST-LAST/TOTAL` → (FIRST, LAST).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let (first, last) = v
        .strip_prefix("bytes ")?
        .split_once('/')?
        .0
        .split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
}

impl AwsStore {
    /// A write's answer must echo SSE-C (AES256) and the MD5 of the key it was sealed with,
    /// as AWS and Garage do: else the server ignored the headers and may hold plaintext.
    /// Reads too: a GET or HEAD answered under a key must say it was opened with that key.
    fn confirm_sse_c(
        &self,
        op: &'static str,
        key: &str,
        sealed_with: &CustomerKey,
        algorithm: Option<&str>,
        key_md5: Option<&str>,
    ) -> S3Result<()> {
        if algorithm == Some("AES256") && key_md5 == Some(sealed_with.md5_base64()) {
            return Ok(());
        }
        tracing::error!(op, object = key, algorithm = ?algorithm, "the server did not confirm SSE-C");
        Err(S3Error::SseIgnored {
            op,
            key: key.to_owned(),
        })
    }

    /// One GET of `Σ len(bufs)` bytes of `src` at `offset`, filling `bufs` in order. The
    /// outer `Err` is a body failure to retry; the inner result is final.
    async fn get_range_once(
        &self,
        src: &ReadSource<'_>,
        offset: u64,
        bufs: &mut [&mut [u8]],
    ) -> Result<S3Result<usize>, BodyFailure> {
        let key = src.key;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let opener = match self.key_of(src.sealing) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        let req = self.ranged_get(src, offset, total, opener);
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                let err = sdk_error(Request::object("GetObject", key), e);
                if let S3Error::Other { status: 416, .. } = err {
                    return Ok(Ok(0));
                }
                return Ok(Err(err));
            }
        };
        if let Some(k) = opener {
            if let Err(e) = self.confirm_sse_c(
                "GetObject",
                key,
                k,
                out.sse_customer_algorithm(),
                out.sse_customer_key_md5(),
            ) {
                // (retried like a broken body: a proxy may have stripped the headers of this
                // one answer; a server that ignores SSE-C fails every attempt)
                return Err(BodyFailure(e));
            }
        }
        let expected = expected_len(key, offset, total, out.content_range())?;
        let length = out.content_length();
        let filled = fill_bufs(out.body, bufs).await?;
        let believable = match expected {
            Some(n) => filled == n,
            None => filled == total || (offset == 0 && length == Some(filled as i64)),
        };
        if !believable {
            return Err(BodyFailure(malformed(
                Request::object("GetObject", key),
                format!(
                    "GET at {offset} returned {filled} bytes; the answer announced {expected:?} \
                     (Content-Length {length:?})"
                ),
            )));
        }
        Ok(Ok(filled))
    }

    /// The GetObject request of `total` bytes of `src` at `offset`: only from version
    /// `src.etag` when given, with the key trio of `opener` unless the object is plain.
    fn ranged_get(
        &self,
        src: &ReadSource<'_>,
        offset: u64,
        total: usize,
        opener: Option<&CustomerKey>,
    ) -> aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(src.key)
            .range(format!("bytes={}-{}", offset, offset + total as u64 - 1));
        if let Some(etag) = src.etag {
            req = req.if_match(etag);
        }
        if let Some(k) = opener {
            req = with_key!(req, k);
        }
        req
    }
}

/// How many bytes a GET of `total` at `offset` must carry: the range its Content-Range says
/// it holds. Without a Content-Range (`None`) only a full buffer, or a whole object from
/// offset 0, is believable; a range elsewhere, or longer than asked, is a garbled answer.
fn expected_len(
    key: &str,
    offset: u64,
    total: usize,
    content_range: Option<&str>,
) -> Result<Option<usize>, BodyFailure> {
    match content_range.map(parse_content_range) {
        Some(Some((first, last))) if first == offset && last >= first => {
            let n = last - first + 1;
            if n > total as u64 {
                return Err(BodyFailure(malformed(
                    Request::object("GetObject", key),
                    format!("GET answered {n} bytes for a range of {total}"),
                )));
            }
            Ok(Some(n as usize))
        }
        Some(_) => Err(BodyFailure(malformed(
            Request::object("GetObject", key),
            format!("GET at {offset} answered Content-Range {content_range:?}"),
        ))),
        None => Ok(None),
    }
}

/// Copy a response body into `bufs`, one after another, dropping each chunk (the HTTP
/// stack's copy of the plaintext) right after it is copied; bytes beyond `bufs` are
/// dropped too. Returns how many bytes were written; a body that breaks is a failure to retry.
/// An answer's `x-amz-meta-*` headers, names lowercased (servers differ in case).
fn object_metadata(m: Option<&std::collections::HashMap<String, String>>) -> Metadata {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_lowercase(), v.clone()))
            .collect()
    })
    .unwrap_or_default()
}

async fn fill_bufs(mut body: ByteStream, bufs: &mut [&mut [u8]]) -> Result<usize, BodyFailure> {
    let mut filled = 0;
    // Where the next byte goes: buffer `slot`, at `at` within it.
    let (mut slot, mut at) = (0, 0);
    loop {
        let chunk = match body.try_next().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                return Err(BodyFailure(S3Error::Transport(format!(
                    "reading response body: {e}"
                ))))
            }
        };
        let mut rest = &chunk[..];
        while !rest.is_empty() && slot < bufs.len() {
            let n = rest.len().min(bufs[slot].len() - at);
            bufs[slot][at..at + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            filled += n;
            at += n;
            if at == bufs[slot].len() {
                slot += 1;
                at = 0;
            }
        }
        // `chunk` (the HTTP stack's copy) is dropped here, right after the copy.
    }
    Ok(filled)
}

#[async_trait]
impl ObjectStore for AwsStore {
    async fn head(&self, key: &str) -> S3Result<ObjectInfo> {
        let mut found = None;
        let mut first_err = None;
        for (i, k) in self.ring.iter().enumerate() {
            let req = self.client.head_object().bucket(&self.bucket).key(key);
            let sent = with_key!(req, k).send().await;
            match sent.map_err(map_err(Request::object("HeadObject", key))) {
                // The answer must say this key opened it: a server that ignores SSE-C answers
                // any HEAD, and an answer stripped on the way proves nothing. Not a plain object
                // either (that is one the keyed HEADs are refused for): an error to retry.
                Ok(out) => {
                    if self
                        .confirm_sse_c(
                            "HeadObject",
                            key,
                            k,
                            out.sse_customer_algorithm(),
                            out.sse_customer_key_md5(),
                        )
                        .is_err()
                    {
                        return Err(malformed(
                            Request::object("HeadObject", key),
                            "answer under a key without its SSE-C echo (AES256 and the key's MD5)",
                        ));
                    }
                    found = Some((out, i as u8));
                    break;
                }
                // Garage says 400 for a wrong key, AWS 403: try the next key of the ring.
                Err(e @ (S3Error::WrongKey | S3Error::AccessDenied(_))) => {
                    first_err.get_or_insert(e);
                }
                Err(other) => return Err(other),
            }
        }
        let (out, opened_by) = match found {
            Some((out, i)) => (out, Some(i)),
            // Maybe a plain object uploaded by another tool: ask without a key.
            None => match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) if out.sse_customer_algorithm().is_none() => (out, None),
                _ => return Err(first_err.unwrap_or(S3Error::WrongKey)),
            },
        };
        let Some(size) = out.content_length().filter(|&n| n >= 0) else {
            return Err(malformed(
                Request::object("HeadObject", key),
                "answer without Content-Length",
            ));
        };
        let sealing = match opened_by {
            Some(i) => Sealing::Key(i),
            None => Sealing::Plain,
        };
        Ok(ObjectInfo {
            size: size as u64,
            etag: out.e_tag().unwrap_or("").to_owned(),
            last_modified: to_system_time(out.last_modified()),
            metadata: object_metadata(out.metadata()),
            sealing,
        })
    }

    async fn get_whole(&self, key: &str, buf: &mut [u8]) -> S3Result<Option<ObjectInfo>> {
        self.whole(key, buf).await
    }

    async fn get_ranges(
        &self,
        src: &ReadSource<'_>,
        offset: u64,
        bufs: &mut [&mut [u8]],
    ) -> S3Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        // The SDK retries a GET until its response head arrives; a body that breaks or comes
        // short after that is ours to retry (the range is idempotent).
        let mut attempt = 1;
        loop {
            match self.get_range_once(src, offset, bufs).await {
                Err(BodyFailure(e)) if attempt < BODY_ATTEMPTS => {
                    tracing::warn!(object = src.key, offset, attempt, error = %e, "ranged GET failed mid-body; retrying");
                    backoff(attempt).await;
                    attempt += 1;
                }
                Err(BodyFailure(e)) => return Err(e),
                Ok(r) => return r,
            }
        }
    }

    async fn put(&self, key: &str, body: Bytes, meta: &Metadata) -> S3Result<String> {
        let req = with_key!(
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .set_metadata(Some(self.sealed_meta(meta)))
                .checksum_crc32_c(crc32c_base64(&body))
                .body(ByteStream::from(body)),
            self.key()
        );
        // The body is not hashed into the SigV4 signature (UNSIGNED-PAYLOAD): the CRC32C
        // above already lets the server refuse a damaged body, TLS guards it on the wire, and
        // the SHA-256 cost 42% of the daemon's CPU for a 1 GiB write. Same for UploadPart.
        let out = req
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(map_err(Request::object("PutObject", key)))?;
        self.confirm_sse_c(
            "PutObject",
            key,
            self.key(),
            out.sse_customer_algorithm(),
            out.sse_customer_key_md5(),
        )?;
        Ok(out.e_tag().unwrap_or("").to_owned())
    }

    async fn copy(&self, copy: &CopyRequest<'_>) -> S3Result<String> {
        let CopyRequest {
            src,
            dst,
            meta,
            src_sealing,
        } = *copy;
        let mut req = with_key!(
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(dst)
                .copy_source(self.copy_source(src)),
            self.key()
        );
        if let Some(k) = self.key_of(src_sealing)? {
            req = with_source_key!(req, k);
        }
        // Metadata names the sealing key: a copy from another key (or a plain object) must
        // replace it, so "keep the source's" reads the source's metadata first.
        let kept;
        let meta = match meta {
            None if src_sealing != Sealing::PRIMARY => {
                kept = self.head(src).await?.metadata;
                Some(&kept)
            }
            m => m,
        };
        req = match meta {
            Some(m) => req
                .metadata_directive(MetadataDirective::Replace)
                .set_metadata(Some(self.sealed_meta(m))),
            None => req.metadata_directive(MetadataDirective::Copy),
        };
        let out = req
            .send()
            .await
            .map_err(map_err(Request::copy("CopyObject", src, dst)))?;
        self.confirm_sse_c(
            "CopyObject",
            dst,
            self.key(),
            out.sse_customer_algorithm(),
            out.sse_customer_key_md5(),
        )?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or("")
            .to_owned())
    }

    async fn delete(&self, key: &str) -> S3Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(map_err(Request::object("DeleteObject", key)))?;
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<ListPage> {
        self.list_page(prefix, delimiter, token, max_keys).await
    }

    async fn create_multipart(&self, key: &str, meta: &Metadata) -> S3Result<String> {
        let out = with_key!(
            self.client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .set_metadata(Some(self.sealed_meta(meta))),
            self.key()
        )
        .send()
        .await
        .map_err(map_err(Request::object("CreateMultipartUpload", key)))?;
        self.confirm_sse_c(
            "CreateMultipartUpload",
            key,
            self.key(),
            out.sse_customer_algorithm(),
            out.sse_customer_key_md5(),
        )?;
        out.upload_id().map(str::to_owned).ok_or_else(|| {
            malformed(
                Request::object("CreateMultipartUpload", key),
                "answer without an upload id",
            )
        })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> S3Result<CompletedPart> {
        let crc = crc32c_base64(&body);
        let out = with_key!(
            self.client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_crc32_c(&crc)
                .body(ByteStream::from(body)),
            self.key()
        )
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .map_err(map_err(Request::object("UploadPart", key)))?;
        self.confirm_sse_c(
            "UploadPart",
            key,
            self.key(),
            out.sse_customer_algorithm(),
            out.sse_customer_key_md5(),
        )?;
        match out.e_tag() {
            Some(e) if !e.is_empty() => Ok(CompletedPart {
                number,
                etag: e.to_owned(),
                crc32c: Some(out.checksum_crc32_c().unwrap_or(&crc).to_owned()),
            }),
            // the part may be stored, but CompleteMultipartUpload needs its ETag
            _ => Err(malformed(
                Request::object("UploadPart", key),
                format!("the answer for part {number} has no ETag"),
            )),
        }
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        src: &PartSource<'_>,
    ) -> S3Result<CompletedPart> {
        let range = &src.range;
        let mut req = with_key!(
            self.client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .copy_source(self.copy_source(src.key))
                .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
                .set_copy_source_if_match(src.if_match()),
            self.key()
        );
        if let Some(k) = self.key_of(src.sealing)? {
            req = with_source_key!(req, k);
        }
        let failed = Request::copy("UploadPartCopy", src.key, key);
        let out = req.send().await.map_err(map_err(failed))?;
        self.confirm_sse_c(
            "UploadPartCopy",
            key,
            self.key(),
            out.sse_customer_algorithm(),
            out.sse_customer_key_md5(),
        )?;
        let result = out.copy_part_result();
        Ok(CompletedPart {
            number,
            etag: result.and_then(|r| r.e_tag()).unwrap_or("").to_owned(),
            crc32c: result.and_then(|r| r.checksum_crc32_c()).map(str::to_owned),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> S3Result<String> {
        let expected = multipart_etag(&parts);
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .into_iter()
                    .map(|p| {
                        aws_sdk_s3::types::CompletedPart::builder()
                            .part_number(p.number)
                            .e_tag(p.etag)
                            .set_checksum_crc32_c(p.crc32c)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let out = with_key!(
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(upload),
            self.key()
        )
        .send()
        .await
        .map_err(map_err(Request::object("CompleteMultipartUpload", key)));
        match out {
            Ok(out) => Ok(out.e_tag().unwrap_or("").to_owned()),
            // The answer to an earlier attempt was lost and the SDK retried: the upload is
            // gone because it completed. The object's ETag proves it is ours.
            Err(e) if e.is_vanished_upload() => match (expected, self.head(key).await) {
                (Some(want), Ok(info)) if info.etag.trim_matches('"') == want => {
                    tracing::info!(object = key, "CompleteMultipartUpload was retried after it succeeded; the object is complete");
                    Ok(info.etag)
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> S3Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(map_err(Request::object("AbortMultipartUpload", key)))?;
        Ok(())
    }

    async fn list_multipart(&self, prefix: &str) -> S3Result<Vec<PendingUpload>> {
        self.list_uploads(prefix).await
    }
}

#[cfg(test)]
mod tests;
