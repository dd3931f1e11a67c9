//! The aws-sdk-s3 implementation of [`ObjectStore`]: the only code that builds S3 requests.
//!
//! Every request that touches object data or metadata goes through [`with_key!`] (the SSE-C
//! trio) and every copy also through [`with_source_key!`] (the copy-source trio), so a new
//! operation cannot be added without them by accident; `tests` below check each operation's
//! headers on the wire with a capturing HTTP client.
//!
//! Failures: every request is idempotent and retried by the SDK ([`RETRY_ATTEMPTS`], backoff
//! with jitter, no shared retry quota); a ranged GET whose body breaks or disagrees with its
//! headers is retried here. Answers are checked before they are believed (Content-Range of a
//! GET, Content-Length of a HEAD, listing entries, part ETags): a garbled answer is an error
//! (`MalformedResponse`, EIO), never a short file. Listings ask for URL-encoded names
//! (`encoding-type=url`, decoded here): a name holding a character XML 1.0 cannot carry would
//! otherwise make the whole answer unreadable. Every error names its request ([`map_err`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, EncodingType, MetadataDirective,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::Bytes;

use super::{
    crc32c_base64, CompletedPart, ListPage, ListedObject, Metadata, ObjectInfo, ObjectStore,
    PartSource, PendingUpload, Request, S3Error, S3Result, Sealing, KEY_FINGERPRINT_META,
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

/// How many undecodable names [`AwsStore::decoded`] remembers having logged.
const WARNED_MAX: usize = 1024;

/// Decode a name of an answer to `encoding-type=url`: `%XX` escapes, and `+` for a space (AWS
/// encodes a space so; a literal `+` always comes as `%2B`). `None` for a malformed escape or
/// bytes that are not UTF-8.
fn url_decode(s: &str) -> Option<String> {
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

/// The error mapper for one request: `.map_err(map_err(Request::object("HeadObject", key)))`.
/// The one place where an SDK error becomes an [`S3Error`], so each one names its operation and
/// object (or prefix) along with what the server said.
fn map_err<E>(req: Request) -> impl FnOnce(SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| sdk_error(req, e)
}

/// Map an SDK error to [`S3Error`] by HTTP status and error code.
fn sdk_error<E>(req: Request, e: SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let (code, message) = (se.err().code(), se.err().message());
            // A success status with an error: the answer did not parse (e.g. a listing whose
            // XML holds a control character). It has no code or message to show, only a cause.
            if code.is_none() && message.is_none() && (200..300).contains(&status) {
                return S3Error::Unreadable {
                    req,
                    status,
                    cause: causes(se.err()),
                };
            }
            classify(
                req,
                status,
                code.unwrap_or("").to_owned(),
                message.unwrap_or("").to_owned(),
            )
        }
        SdkError::ResponseError(re) => {
            let status = re.raw().status().as_u16();
            let cause = causes(&e);
            if (200..300).contains(&status) {
                return S3Error::Unreadable { req, status, cause };
            }
            classify(
                req,
                status,
                String::new(),
                format!("unreadable answer: {cause}"),
            )
        }
        SdkError::TimeoutError(_) => S3Error::Transport(format!("{req}: request timed out")),
        SdkError::DispatchFailure(df) => S3Error::Transport(format!(
            "{req}: {}",
            df.as_connector_error()
                .map(|c| causes(c))
                .unwrap_or_else(|| "dispatch failure".into())
        )),
        // (Display, never Debug: the Debug of an answer holds its headers, the key's MD5)
        _ => S3Error::Other {
            req,
            status: 0,
            code: "Client".into(),
            message: causes(&e).chars().take(300).collect(),
        },
    }
}

/// An error and its sources, `outer: inner: innermost` (Display only).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        // (wrappers often repeat their source's text)
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

/// Status + code → error kind. 400 without a more specific code on a keyed request means the
/// key does not open the object (Garage; HEAD answers have no body, so no code at all).
pub(crate) fn classify(req: Request, status: u16, code: String, message: String) -> S3Error {
    match (status, code.as_str()) {
        (404, "NoSuchBucket") => S3Error::NoSuchBucket,
        // an upload that vanished (or a retried Complete that already succeeded): an I/O
        // error of the write, not a missing file
        (404, "NoSuchUpload") => S3Error::Other {
            req,
            status,
            code,
            message,
        },
        (404, _) => S3Error::NotFound,
        (400, "" | "InvalidRequest") => S3Error::WrongKey,
        (403, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken") => {
            S3Error::BadCredentials(code)
        }
        // Garage says AccessDenied with "Forbidden: Invalid signature" / "No such key: GK…"
        (403, _)
            if message.contains("signature")
                || message.contains("Signature")
                || message.contains("No such key") =>
        {
            S3Error::BadCredentials(message)
        }
        (403, _) => S3Error::AccessDenied(match (code.is_empty(), message.is_empty()) {
            (true, true) => format!("{req}"),
            (true, false) => format!("{req}: {message}"),
            (false, true) => format!("{req}: {code}"),
            (false, false) => format!("{req}: {code}: {message}"),
        }),
        (412, _) => S3Error::PreconditionFailed,
        _ => S3Error::Other {
            req,
            status,
            code,
            message,
        },
    }
}

/// Attempts of each request by the SDK (connection errors, timeouts, 5xx, throttling,
/// unreadable answers).
pub const RETRY_ATTEMPTS: u32 = 8;

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

/// A server answer to `req` that breaks the protocol (missing header, garbled body).
fn malformed(req: Request, what: impl Into<String>) -> S3Error {
    S3Error::Other {
        req,
        status: 0,
        code: "MalformedResponse".into(),
        message: what.into(),
    }
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

    /// One GET of `Σ len(bufs)` bytes at `offset`, filling `bufs` in order. The outer `Err` is
    /// a body failure to retry; the inner result is final.
    async fn get_range_once(
        &self,
        key: &str,
        offset: u64,
        bufs: &mut [&mut [u8]],
        etag: Option<&str>,
        sealing: Sealing,
    ) -> Result<S3Result<usize>, BodyFailure> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", offset, offset + total as u64 - 1));
        if let Some(etag) = etag {
            req = req.if_match(etag);
        }
        let opener = match self.key_of(sealing) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(k) = opener {
            req = with_key!(req, k);
        }
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
                return Ok(Err(e));
            }
        }
        // How many bytes the answer must carry: the range it says it holds. Without a
        // Content-Range only a full buffer, or a whole object from offset 0, is believable.
        let expected = match out.content_range().map(parse_content_range) {
            Some(Some((first, last))) if first == offset && last >= first => {
                let n = last - first + 1;
                if n > total as u64 {
                    return Err(BodyFailure(malformed(
                        Request::object("GetObject", key),
                        format!("GET answered {n} bytes for a range of {total}"),
                    )));
                }
                Some(n as usize)
            }
            Some(_) => {
                return Err(BodyFailure(malformed(
                    Request::object("GetObject", key),
                    format!(
                        "GET at {offset} answered Content-Range {:?}",
                        out.content_range()
                    ),
                )))
            }
            None => None,
        };
        let length = out.content_length();
        let mut body = out.body;
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
            metadata: out
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_lowercase(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            sealing,
        })
    }

    async fn get_ranges(
        &self,
        key: &str,
        offset: u64,
        bufs: &mut [&mut [u8]],
        etag: Option<&str>,
        sealing: Sealing,
    ) -> S3Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        // The SDK retries a GET until its response head arrives; a body that breaks or comes
        // short after that is ours to retry (the range is idempotent).
        let mut attempt = 1;
        loop {
            match self.get_range_once(key, offset, bufs, etag, sealing).await {
                Err(BodyFailure(e)) if attempt < BODY_ATTEMPTS => {
                    tracing::warn!(object = key, offset, attempt, error = %e, "ranged GET failed mid-body; retrying");
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

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        meta: Option<&Metadata>,
        src_sealing: Sealing,
    ) -> S3Result<String> {
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
        // A listing is believed only if it is one: every key under the prefix and with a
        // size, a continuation token when truncated (a garbled page must not hide, invent or
        // shrink files), and whole. The SDK's parser accepts a page cut short (one ending after
        // a few entries, with a Content-Length to match): such a page
        // would hide the files after the cut, and a cached listing then answers ENOENT for
        // them. KeyCount (Garage sends it before the entries, AWS after) must count the
        // entries; a server without it must at least have sent IsTruncated and Name (AWS
        // sends Name after the entries).
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
        let mut objects = Vec::with_capacity(out.contents().len());
        for o in out.contents() {
            let key = match o.key() {
                Some(raw) => match self.decoded(OP, encoded, raw) {
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
        let mut prefixes = Vec::with_capacity(out.common_prefixes().len());
        for p in out.common_prefixes() {
            let p = match p.prefix() {
                Some(raw) => match self.decoded(OP, encoded, raw) {
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

/// What `rotate` did.
#[derive(Debug, Default)]
pub struct RotateSummary {
    /// Objects re-encrypted from an old key to the new one (or that would be, in a dry run).
    pub rotated: u64,
    /// Objects the new key already opens (rotated by an earlier, interrupted run).
    pub already: u64,
    /// Objects stored without SSE-C and left alone (rotation changes what another tool wrote
    /// only with `--adopt-plain`).
    pub plain: u64,
    /// Objects stored without SSE-C, sealed under the new key (`--adopt-plain`).
    pub adopted: u64,
    /// Objects no key of the ring opens.
    pub neither: Vec<String>,
}

/// What `rotate` may change.
#[derive(Debug, Clone, Copy, Default)]
pub struct RotateMode {
    /// Only count what would change.
    pub dry_run: bool,
    /// Seal plain objects under the new key too.
    pub adopt_plain: bool,
}

/// How many objects `rotate` re-encrypts at once.
const ROTATE_CONCURRENCY: usize = 8;

impl AwsStore {
    /// Rotate every object under `prefix` to the ring's primary key (the `--to` key), from
    /// whichever other key of the ring opens it: CopyObject onto itself (UploadPartCopy above
    /// 5 GiB) with the old key as copy source, metadata kept but for the key fingerprint.
    /// Nothing is downloaded. Objects the primary key already opens are skipped, so an
    /// interrupted run resumes where it stopped. Plain objects are sealed under the primary key
    /// with `mode.adopt_plain`, else left alone. `progress(done, total)` follows along.
    pub async fn rotate_prefix(
        &self,
        prefix: &str,
        mode: RotateMode,
        progress: impl Fn(u64, u64),
    ) -> S3Result<RotateSummary> {
        use futures::StreamExt;
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self.list(prefix, None, token.take(), None).await?;
            keys.extend(page.objects.into_iter().map(|o| o.key));
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let total = keys.len() as u64;
        let mut s = RotateSummary::default();
        progress(0, total);
        let mut results = futures::stream::iter(keys)
            .map(|key| async move {
                let outcome = self.rotate_one(&key, mode).await;
                (key, outcome)
            })
            .buffer_unordered(ROTATE_CONCURRENCY);
        let mut done = 0;
        while let Some((key, outcome)) = results.next().await {
            match outcome? {
                Some(Sealing::PRIMARY) => s.already += 1,
                Some(Sealing::Plain) if mode.adopt_plain => s.adopted += 1,
                Some(Sealing::Plain) => s.plain += 1,
                Some(Sealing::Key(_)) => s.rotated += 1,
                None => s.neither.push(key),
            }
            done += 1;
            progress(done, total);
        }
        s.neither.sort();
        Ok(s)
    }

    /// Rotate one object; returns the sealing it had (`None`: no key opens it, reported rather
    /// than an error so one odd object does not stop the run; one deleted meanwhile counts as
    /// done).
    async fn rotate_one(&self, key: &str, mode: RotateMode) -> S3Result<Option<Sealing>> {
        let info = match self.head(key).await {
            Ok(info) => info,
            Err(S3Error::WrongKey | S3Error::AccessDenied(_)) => return Ok(None),
            Err(S3Error::NotFound) => return Ok(Some(Sealing::PRIMARY)),
            Err(e) => return Err(e),
        };
        let changes = match info.sealing {
            Sealing::Key(i) => i > 0,
            Sealing::Plain => mode.adopt_plain,
        };
        if changes && !mode.dry_run {
            super::copy_any_size(
                self,
                key,
                key,
                info.size,
                &info.metadata,
                true,
                info.sealing,
                1 << 30,
            )
            .await?;
        }
        Ok(Some(info.sealing))
    }
}

/// How to reach the server; shared by every subcommand.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub allow_http: bool,
    pub profile: Option<String>,
    /// Extra PEM certificates to trust (a private CA or a self-signed server), on top of the
    /// system's roots.
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// Why a connection could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "refusing plain HTTP endpoint {0}: the customer key would travel in clear text; use \
         https, or pass --allow-http if this is a trusted loopback or test server"
    )]
    PlainHttp(String),
    #[error(
        "refusing plain HTTP endpoint {url} from {origin}: the customer key would travel in \
         clear text; use https, or pass --allow-http if this is a trusted loopback or test server"
    )]
    PlainHttpFrom { url: String, origin: String },
    #[error("endpoint {0} is not an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("CA bundle {path}: {problem}")]
    CaBundle { path: String, problem: String },
}

/// The HTTPS client trusting `--ca-bundle` on top of the system roots.
fn https_client_with_ca(
    path: &std::path::Path,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, ConnectError> {
    use aws_smithy_http_client::tls;
    let bad = |problem: String| ConnectError::CaBundle {
        path: path.display().to_string(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| bad(e.to_string()))?;
    Ok(http_client(Some(context)))
}

/// How long an idle connection is kept. Short, because a pooled connection keeps its last
/// request head (the key's headers) and its last answer (plaintext) in buffers that only its
/// close frees, and then the wiping allocator clears them; a busy mount reuses connections
/// long before this, an idle one pays one TLS handshake when it wakes.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(5);

/// The HTTP client every store uses: rustls with aws-lc (as the SDK's default), `context`'s
/// trust store if given, idle connections closed after [`IDLE_CONNECTION`].
fn http_client(
    context: Option<aws_smithy_http_client::tls::TlsContext>,
) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    let b = aws_smithy_http_client::Builder::new()
        .pool_idle_timeout(IDLE_CONNECTION)
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ));
    match context {
        Some(c) => b.tls_context(c).build_https(),
        None => b.build_https(),
    }
}

/// Checks every request's scheme as it is sent, whatever configured the endpoint (a flag,
/// the environment, a config file, a profile, a redirect the SDK followed): without
/// `--allow-http` a request to an http:// URL never leaves, since it carries the key.
#[derive(Debug)]
struct HttpsOnly;

impl aws_smithy_runtime_api::client::interceptors::Intercept for HttpsOnly {
    fn name(&self) -> &'static str {
        "ssecfs::HttpsOnly"
    }

    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let uri = context.request().uri();
        if uri.starts_with("https://") {
            return Ok(());
        }
        let shown = uri.split('?').next().unwrap_or(uri);
        Err(format!(
            "refusing to send a request to {shown}: not https, and the customer key would travel \
             in clear text (pass --allow-http for a trusted loopback or test server)"
        )
        .into())
    }
}

/// Build an S3 client from the standard AWS chain plus our connection options.
pub async fn build_client(conn: &Connection) -> Result<aws_sdk_s3::Client, ConnectError> {
    let endpoint = conn
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(ep) = &endpoint {
        if ep.starts_with("http://") {
            if !conn.allow_http {
                return Err(ConnectError::PlainHttp(ep.clone()));
            }
        } else if !ep.starts_with("https://") {
            return Err(ConnectError::BadEndpoint(ep.clone()));
        }
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = &conn.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &conn.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let shared = loader.load().await;
    if endpoint.is_none() {
        // The AWS config file can name an endpoint too (`endpoint_url` in the profile or in
        // its `[services]` section): the same rule, and the refusal says where it came from.
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id("S3")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .expect("all fields set");
        let configured = shared
            .service_config()
            .and_then(|c| c.load_config(key))
            .or_else(|| shared.endpoint_url().map(str::to_owned));
        if let Some(url) = configured {
            let source = format!(
                "the AWS config file ({}, profile {})",
                std::env::var("AWS_CONFIG_FILE").unwrap_or_else(|_| "~/.aws/config".into()),
                conn.profile
                    .clone()
                    .or_else(|| std::env::var("AWS_PROFILE").ok())
                    .unwrap_or_else(|| "default".into())
            );
            if url.starts_with("http://") && !conn.allow_http {
                return Err(ConnectError::PlainHttpFrom {
                    url,
                    origin: source,
                });
            }
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(ConnectError::BadEndpoint(url));
            }
        }
    }
    let mut b = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(conn.path_style || endpoint.is_some())
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        // Every request we make is idempotent (PUT/COPY/DELETE of a whole object or part, GET,
        // HEAD, LIST; a retried Complete that already succeeded is recognised by the ETag).
        // 8 attempts, 200 ms doubling to 10 s with jitter: ~11 s on average (23 s at most)
        // ride out a server restart or a burst of 5xx before the operation reports EIO.
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(RETRY_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(10)),
        )
        // The standard retry quota (a token bucket shared by the client) stops retrying after
        // a burst of failures; a filesystem would then turn a transient outage into EIO.
        .retry_partition(
            aws_sdk_s3::config::retry::RetryPartition::custom("ssecfs")
                .token_bucket(aws_sdk_s3::config::retry::TokenBucket::unlimited())
                .build(),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(300))
                .build(),
        );
    if shared.region().is_none() {
        b = b.region(aws_config::Region::new("us-east-1"));
    }
    if !conn.allow_http {
        b = b.interceptor(HttpsOnly);
    }
    if let Some(ep) = endpoint {
        b = b.endpoint_url(ep);
    }
    b = b.http_client(match &conn.ca_bundle {
        Some(ca) => https_client_with_ca(ca)?,
        None => http_client(None),
    });
    Ok(aws_sdk_s3::Client::from_conf(b.build()))
}

#[cfg(test)]
mod tests {
    //! Each operation's request, captured on the wire, carries the SSE-C trio (and the
    //! copy-source trio for copies).
    use super::*;
    use crate::fs::error::FsError;
    use aws_smithy_http_client::test_util::capture_request;

    const ALG: &str = "x-amz-server-side-encryption-customer-algorithm";
    const KEY: &str = "x-amz-server-side-encryption-customer-key";
    const MD5: &str = "x-amz-server-side-encryption-customer-key-md5";
    const SRC_ALG: &str = "x-amz-copy-source-server-side-encryption-customer-algorithm";
    const SRC_KEY: &str = "x-amz-copy-source-server-side-encryption-customer-key";
    const SRC_MD5: &str = "x-amz-copy-source-server-side-encryption-customer-key-md5";

    fn key() -> CustomerKey {
        CustomerKey::from_bytes(&[9u8; 32]).unwrap()
    }

    /// A store whose only key is [`key`].
    fn store() -> (
        AwsStore,
        aws_smithy_http_client::test_util::CaptureRequestReceiver,
    ) {
        ring_store(KeyRing::single(key()))
    }

    fn ring_store(
        ring: KeyRing,
    ) -> (
        AwsStore,
        aws_smithy_http_client::test_util::CaptureRequestReceiver,
    ) {
        store_answering(ring, None)
    }

    /// A store whose one request gets `answer` (default: 200, empty body).
    fn store_answering(
        ring: KeyRing,
        answer: Option<HttpResponse>,
    ) -> (
        AwsStore,
        aws_smithy_http_client::test_util::CaptureRequestReceiver,
    ) {
        let (http, rx) = capture_request(answer.map(|r| r.try_into_http1x().unwrap()));
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .http_client(http)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "AKID", "SECRET", None, None, "test",
            ))
            .endpoint_url("http://127.0.0.1:1")
            .force_path_style(true)
            .build();
        (
            AwsStore::new(
                aws_sdk_s3::Client::from_conf(conf),
                "b".into(),
                Arc::new(ring),
            ),
            rx,
        )
    }

    /// A believable 206 answer to a ranged GET (an implausible one would be retried, and the
    /// capturing client answers only once).
    fn ranged_answer(body: &'static [u8], offset: u64, total: u64) -> HttpResponse {
        let mut answer = HttpResponse::new(
            206.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::from(body),
        );
        let end = offset + body.len() as u64 - 1;
        answer
            .headers_mut()
            .insert("content-range", format!("bytes {offset}-{end}/{total}"));
        answer
            .headers_mut()
            .insert("content-length", body.len().to_string());
        answer
    }

    /// `answer` with the SSE-C echo a server that applied key `k` sends.
    fn echoing(mut answer: HttpResponse, k: &CustomerKey) -> HttpResponse {
        let h = answer.headers_mut();
        h.insert(ALG, "AES256");
        h.insert(MD5, k.md5_base64().to_owned());
        answer
    }

    fn assert_trio(req: &aws_smithy_runtime_api::http::Request, k: &CustomerKey, copy: bool) {
        let h = req.headers();
        assert_eq!(h.get(ALG), Some("AES256"), "{:?}", req.uri());
        assert_eq!(h.get(KEY), Some(k.base64()));
        assert_eq!(h.get(MD5), Some(k.md5_base64()));
        if copy {
            assert_eq!(h.get(SRC_ALG), Some("AES256"));
            assert_eq!(h.get(SRC_KEY), Some(k.base64()));
            assert_eq!(h.get(SRC_MD5), Some(k.md5_base64()));
        } else {
            assert!(h.get(SRC_KEY).is_none());
        }
    }

    /// A server that ignores SSE-C answers reads too, with whatever it holds: a GET or a HEAD
    /// under a key whose answer does not say that key opened it is refused (a HEAD's refusal
    /// is an error to retry, EIO, not a verdict that the object is plain).
    #[tokio::test]
    async fn reads_are_believed_only_with_the_sse_c_echo() {
        let head_answer = || {
            let mut a = HttpResponse::new(
                200.try_into().unwrap(),
                aws_smithy_types::body::SdkBody::empty(),
            );
            a.headers_mut().insert("content-length", "10");
            a
        };
        let (s, _rx) = store_answering(KeyRing::single(key()), Some(head_answer()));
        let e = s.head("a").await.unwrap_err();
        assert!(
            matches!(&e, S3Error::Other { code, .. } if code == "MalformedResponse"),
            "{e:?}"
        );
        let (s, _rx) =
            store_answering(KeyRing::single(key()), Some(echoing(head_answer(), &key())));
        let info = s.head("a").await.unwrap();
        assert_eq!((info.size, info.sealing), (10, Sealing::PRIMARY));

        let mut buf = [0u8; 10];
        let (s, _rx) = store_answering(
            KeyRing::single(key()),
            Some(ranged_answer(b"0123456789", 0, 10)),
        );
        let e = s
            .get_range("a", 0, &mut buf, None, Sealing::PRIMARY)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                S3Error::SseIgnored {
                    op: "GetObject",
                    ..
                }
            ),
            "{e:?}"
        );
        let other = CustomerKey::from_bytes(&[7u8; 32]).unwrap();
        let (s, _rx) = store_answering(
            KeyRing::single(key()),
            Some(echoing(ranged_answer(b"0123456789", 0, 10), &other)),
        );
        assert!(s
            .get_range("a", 0, &mut buf, None, Sealing::PRIMARY)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn every_data_operation_carries_the_key() {
        let k = key();
        let meta = Metadata::new();
        let mut buf = [0u8; 10];

        let (s, rx) = store();
        let _ = s.head("a").await;
        assert_trio(&rx.expect_request(), &k, false);

        // (a believable answer: an empty one would be retried, and this client answers once)
        let answer = echoing(ranged_answer(b"0123456789", 5, 100), &k);
        let (s, rx) = store_answering(KeyRing::single(key()), Some(answer));
        assert_eq!(
            s.get_range("a", 5, &mut buf, None, Sealing::PRIMARY)
                .await
                .unwrap(),
            10
        );
        assert_eq!(&buf, b"0123456789");
        let req = rx.expect_request();
        assert_trio(&req, &k, false);
        assert_eq!(req.headers().get("range"), Some("bytes=5-14"));

        let (s, rx) = store();
        let _ = s.put("a", Bytes::from_static(b"x"), &meta).await;
        let req = rx.expect_request();
        assert_trio(&req, &k, false);
        let crc = crc32c_base64(b"x");
        assert_eq!(
            req.headers().get("x-amz-checksum-crc32c"),
            Some(crc.as_str())
        );

        let (s, rx) = store();
        let _ = s.copy("a", "b c", Some(&meta), Sealing::PRIMARY).await;
        let req = rx.expect_request();
        assert_trio(&req, &k, true);
        assert_eq!(req.headers().get("x-amz-copy-source"), Some("b/a"));
        assert_eq!(
            req.headers().get("x-amz-metadata-directive"),
            Some("REPLACE")
        );

        let (s, rx) = store();
        let _ = s.create_multipart("a", &meta).await;
        assert_trio(&rx.expect_request(), &k, false);

        let (s, rx) = store();
        let _ = s.upload_part("a", "u", 1, Bytes::from_static(b"x")).await;
        let req = rx.expect_request();
        assert_trio(&req, &k, false);
        assert_eq!(
            req.headers().get("x-amz-checksum-crc32c"),
            Some(crc.as_str())
        );

        let (s, rx) = store();
        let _ = s
            .upload_part_copy(
                "a",
                "u",
                1,
                &PartSource {
                    key: "src key",
                    range: 0..10,
                    sealing: Sealing::PRIMARY,
                    etag: Some("e1"),
                },
            )
            .await;
        let req = rx.expect_request();
        assert_trio(&req, &k, true);
        assert_eq!(req.headers().get("x-amz-copy-source"), Some("b/src%20key"));
        assert_eq!(
            req.headers().get("x-amz-copy-source-range"),
            Some("bytes=0-9")
        );
        assert_eq!(
            req.headers().get("x-amz-copy-source-if-match"),
            Some("\"e1\"")
        );

        let (s, rx) = store();
        let _ = s
            .complete_multipart(
                "a",
                "u",
                vec![CompletedPart {
                    number: 1,
                    etag: "e".into(),
                    crc32c: None,
                }],
            )
            .await;
        assert_trio(&rx.expect_request(), &k, false);
    }

    #[tokio::test]
    async fn writes_name_their_key_and_old_keys_open_copy_sources() {
        let new = CustomerKey::from_bytes(&[1u8; 32]).unwrap();
        let old = CustomerKey::from_bytes(&[2u8; 32]).unwrap();
        let (new_fp, old_b64) = (new.fingerprint().to_owned(), old.base64().to_owned());
        let ring = || {
            KeyRing::new(vec![
                (CustomerKey::from_bytes(&[1u8; 32]).unwrap(), "new".into()),
                (CustomerKey::from_bytes(&[2u8; 32]).unwrap(), "old".into()),
            ])
            .unwrap()
        };
        let meta_fp = format!("x-amz-meta-{KEY_FINGERPRINT_META}");

        let (s, rx) = ring_store(ring());
        let _ = s.put("a", Bytes::from_static(b"x"), &Metadata::new()).await;
        let req = rx.expect_request();
        assert_trio(&req, &new, false);
        assert_eq!(req.headers().get(meta_fp.as_str()), Some(new_fp.as_str()));

        let (s, rx) = ring_store(ring());
        let _ = s.create_multipart("a", &Metadata::new()).await;
        let req = rx.expect_request();
        assert_eq!(req.headers().get(meta_fp.as_str()), Some(new_fp.as_str()));

        // a copy from an object under the old key: source trio of the old key, destination
        // sealed (and tagged) with the new one
        let (s, rx) = ring_store(ring());
        let _ = s
            .copy("a", "b", Some(&Metadata::new()), Sealing::Key(1))
            .await;
        let req = rx.expect_request();
        assert_eq!(req.headers().get(KEY), Some(new.base64()));
        assert_eq!(req.headers().get(SRC_KEY), Some(old_b64.as_str()));
        assert_eq!(req.headers().get(meta_fp.as_str()), Some(new_fp.as_str()));

        let (s, rx) = store_answering(ring(), Some(ranged_answer(b"abcd", 0, 100)));
        let mut buf = [0u8; 4];
        let _ = s.get_range("a", 0, &mut buf, None, Sealing::Key(1)).await;
        assert_eq!(
            rx.expect_request().headers().get(KEY),
            Some(old_b64.as_str())
        );

        // a plain object is read and copied without key headers on its side
        let (s, rx) = store_answering(ring(), Some(ranged_answer(b"abcd", 0, 100)));
        let _ = s.get_range("a", 0, &mut buf, None, Sealing::Plain).await;
        assert!(rx.expect_request().headers().get(KEY).is_none());
        let (s, rx) = ring_store(ring());
        let _ = s
            .upload_part_copy(
                "a",
                "u",
                1,
                &PartSource {
                    key: "src",
                    range: 0..4,
                    sealing: Sealing::Plain,
                    etag: None,
                },
            )
            .await;
        let req = rx.expect_request();
        assert!(req.headers().get(SRC_KEY).is_none());
        assert_eq!(req.headers().get(KEY), Some(new.base64()));
    }

    fn head_of_x() -> Request {
        Request::object("HeadObject", "x")
    }

    #[test]
    fn errors_classify_by_status_and_code() {
        assert!(matches!(
            classify(head_of_x(), 400, "".into(), "".into()),
            S3Error::WrongKey
        ));
        assert!(matches!(
            classify(head_of_x(), 404, "".into(), "".into()),
            S3Error::NotFound
        ));
        assert!(matches!(
            classify(head_of_x(), 404, "NoSuchBucket".into(), "".into()),
            S3Error::NoSuchBucket
        ));
        assert!(matches!(
            classify(head_of_x(), 403, "InvalidAccessKeyId".into(), "".into()),
            S3Error::BadCredentials(_)
        ));
        assert!(matches!(
            classify(head_of_x(), 403, "AccessDenied".into(), "".into()),
            S3Error::AccessDenied(_)
        ));
        // what a user sees names the request and what the server said, whatever is missing
        let shown = classify(head_of_x(), 403, "AccessDenied".into(), "".into()).to_string();
        assert_eq!(shown, r#"access denied: HeadObject of "x": AccessDenied"#);
        let shown = classify(head_of_x(), 500, "".into(), "".into()).to_string();
        assert_eq!(shown, r#"HeadObject of "x": HTTP 500"#);
        let shown = classify(
            Request::prefix("ListObjectsV2", "d/"),
            503,
            "SlowDown".into(),
            "Please reduce your request rate.".into(),
        )
        .to_string();
        assert_eq!(
            shown,
            r#"ListObjectsV2 of prefix "d/": HTTP 503 SlowDown: Please reduce your request rate."#
        );
    }

    #[test]
    fn a_vanished_upload_is_an_io_error_not_a_missing_file() {
        assert!(matches!(
            classify(head_of_x(), 404, "NoSuchUpload".into(), "".into()),
            S3Error::Other { status: 404, .. }
        ));
    }

    #[tokio::test]
    async fn a_listing_that_is_not_one_is_an_error() {
        let page = |xml: &'static str| {
            HttpResponse::new(
                200.try_into().unwrap(),
                aws_smithy_types::body::SdkBody::from(xml),
            )
        };
        let bad = [
            // a key outside the prefix (a garbled page once panicked the daemon)
            "<ListBucketResult><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated>\
             <Contents><Key>zzz</Key><Size>1</Size></Contents></ListBucketResult>",
            // no size: not "an empty file"
            "<ListBucketResult><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated>\
             <Contents><Key>d/x</Key></Contents></ListBucketResult>",
            // truncated without a way to go on: not "the end"
            "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
            // cut short, as Garage orders a page (KeyCount first) and as AWS does (Name last)
            "<ListBucketResult><Name>b</Name><KeyCount>2</KeyCount><IsTruncated>false</IsTruncated>\
             <Contents><Key>d/x</Key><Size>3</Size></Contents></ListBucketResult>",
            "<ListBucketResult><IsTruncated>false</IsTruncated>\
             <Contents><Key>d/x</Key><Size>3</Size></Contents></ListBucketResult>",
        ];
        for xml in bad {
            let (s, _rx) = store_answering(KeyRing::single(key()), Some(page(xml)));
            let r = s.list("d/", Some("/"), None, None).await;
            assert!(
                matches!(&r, Err(S3Error::Other { code, .. }) if code == "MalformedResponse"),
                "{xml}: {r:?}"
            );
        }
        let (s, _rx) = store_answering(
            KeyRing::single(key()),
            Some(page(
                "<ListBucketResult><IsTruncated>false</IsTruncated>\
                 <Contents><Key>d/x</Key><Size>3</Size></Contents>\
                 <CommonPrefixes><Prefix>d/e/</Prefix></CommonPrefixes><Name>b</Name>\
                 </ListBucketResult>",
            )),
        );
        let p = s.list("d/", Some("/"), None, None).await.unwrap();
        assert_eq!((p.objects[0].size, p.prefixes[0].as_str()), (3, "d/e/"));
    }

    /// A 200 answer with this body.
    fn ok_answer(body: &'static str) -> HttpResponse {
        HttpResponse::new(
            200.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::from(body),
        )
    }

    #[tokio::test]
    async fn listings_ask_for_url_encoded_names_and_decode_them() {
        let (s, rx) = store_answering(
            KeyRing::single(key()),
            Some(ok_answer(
                "<ListBucketResult><EncodingType>url</EncodingType>\
                 <KeyCount>5</KeyCount><IsTruncated>false</IsTruncated>\
                 <Contents><Key>d%2Fa%01b</Key><Size>1</Size></Contents>\
                 <Contents><Key>d%2Fnot%FFutf8</Key><Size>1</Size></Contents>\
                 <Contents><Key>d/new%0Aline+and%2Bplus</Key><Size>2</Size></Contents>\
                 <CommonPrefixes><Prefix>d%2Fsub%20dir%2F</Prefix></CommonPrefixes>\
                 <CommonPrefixes><Prefix>d%2Fcut%2</Prefix></CommonPrefixes>\
                 </ListBucketResult>",
            )),
        );
        let p = s.list("d/", Some("/"), None, None).await.unwrap();
        let uri = rx.expect_request().uri().to_owned();
        assert!(uri.contains("encoding-type=url"), "{uri}");
        let keys: Vec<&str> = p.objects.iter().map(|o| o.key.as_str()).collect();
        // (the names that do not decode are skipped, their neighbours listed)
        assert_eq!(keys, ["d/a\x01b", "d/new\nline and+plus"]);
        assert_eq!(p.prefixes, ["d/sub dir/"]);
        assert_eq!(s.warned.lock().unwrap().len(), 2, "each logged");

        // a server that ignores the parameter (no EncodingType): names as they are
        let (s, _rx) = store_answering(
            KeyRing::single(key()),
            Some(ok_answer(
                "<ListBucketResult><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated>\
                 <Contents><Key>d/100%25+x</Key><Size>1</Size></Contents></ListBucketResult>",
            )),
        );
        let p = s.list("d/", Some("/"), None, None).await.unwrap();
        assert_eq!(p.objects[0].key, "d/100%25+x");
    }

    #[tokio::test]
    async fn upload_listings_ask_for_url_encoded_names_and_decode_them() {
        let (s, rx) = store_answering(
            KeyRing::single(key()),
            Some(ok_answer(
                "<ListMultipartUploadsResult><EncodingType>url</EncodingType>\
                 <IsTruncated>false</IsTruncated>\
                 <Upload><Key>d%2Fa%01b</Key><UploadId>u1</UploadId></Upload>\
                 <Upload><Key>d%2F%FF</Key><UploadId>u2</UploadId></Upload>\
                 </ListMultipartUploadsResult>",
            )),
        );
        let ups = s.list_multipart("d/").await.unwrap();
        let uri = rx.expect_request().uri().to_owned();
        assert!(uri.contains("encoding-type=url"), "{uri}");
        let keys: Vec<(&str, &str)> = ups
            .iter()
            .map(|u| (u.key.as_str(), u.upload_id.as_str()))
            .collect();
        assert_eq!(keys, [("d/a\x01b", "u1")]);
    }

    /// What an unencoded listing holding a control character got from Garage: an answer the
    /// SDK cannot parse, once shown as `S3 error 200 : `. The error names the request.
    #[tokio::test]
    async fn an_unreadable_answer_names_the_request_and_the_cause() {
        let (s, _rx) = store_answering(
            KeyRing::single(key()),
            Some(ok_answer(
                "<ListBucketResult><Contents><Key>d/a\x01b</Key><Size>1</Size></Contents>\
                 </ListBucketResult>",
            )),
        );
        let e = s.list("d/", Some("/"), None, None).await.unwrap_err();
        assert!(
            matches!(e, S3Error::Unreadable { status: 200, .. }),
            "{e:?}"
        );
        let shown = e.to_string();
        let head = r#"ListObjectsV2 of prefix "d/": unreadable answer (HTTP 200): "#;
        assert!(
            shown.starts_with(head) && shown.len() > head.len() + 5,
            "{shown}"
        );
        assert_eq!(FsError::from(e).errno(), libc::EIO);
    }

    #[test]
    fn url_decoding_is_strict() {
        assert_eq!(url_decode("a%2Fb+c%2B").as_deref(), Some("a/b c+"));
        assert_eq!(url_decode("%E2%82%AC%01").as_deref(), Some("\u{20ac}\x01"));
        for bad in ["%", "%2", "%G1", "%+1", "%FF", "%C3"] {
            assert_eq!(url_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn multipart_etag_is_the_s3_formula() {
        // seen from Garage 2.5: parts "93df…", "cf24…" → "592e…-2"
        let parts = [
            "93dfd2677368616ebfe77bc0594edff2",
            "cf247707c1a156f4080ab419a35a6d4b",
        ]
        .iter()
        .enumerate()
        .map(|(i, e)| CompletedPart {
            number: i as i32 + 1,
            etag: format!("\"{e}\""),
            crc32c: None,
        })
        .collect::<Vec<_>>();
        assert_eq!(
            multipart_etag(&parts).as_deref(),
            Some("592e5223a4ddcdfe652e0c15c7e25925-2")
        );
        let odd = [CompletedPart {
            number: 1,
            etag: "not-md5".into(),
            crc32c: None,
        }];
        assert_eq!(multipart_etag(&odd), None);
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9)));
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("garbage"), None);
    }

    #[tokio::test]
    async fn plain_http_needs_allow_http() {
        let conn = Connection {
            endpoint: Some("http://127.0.0.1:3900".into()),
            ..Default::default()
        };
        let err = build_client(&conn).await.unwrap_err().to_string();
        assert!(err.contains("--allow-http"), "{err}");
    }
}
