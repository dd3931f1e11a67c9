//! Object storage: the one seam between the filesystem and S3.
//!
//! [`ObjectStore`] is what the filesystem sees: plain operations on keys, with the customer key
//! already bound in. [`aws::AwsStore`] is the only place that builds S3 requests, so the SSE-C
//! headers cannot be forgotten on one path and not another; [`mem::MemStore`] is an in-memory
//! store that enforces SSE-C the way Garage does, for fast tests of the filesystem logic.
//! Whatever needs only the trait is written against it ([`copy_any_size`], [`rotate`]), so
//! the in-memory store tests it too.
//!
//! Request bodies are [`bytes::Bytes`] built over locked buffers (`Bytes::from_owner`), so
//! plaintext handed to the HTTP stack still lives in the arena; response bodies are copied
//! straight into caller-provided locked buffers.

pub mod aws;
#[cfg(test)]
pub mod failing;
// (test code only: the product never runs on an in-memory store)
#[cfg(any(test, feature = "mock"))]
pub mod mem;
pub mod rotate;

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// User metadata (`x-amz-meta-*` without the prefix, lower case).
pub type Metadata = BTreeMap<String, String>;

/// Which key seals an object: none (a plain object another tool uploaded) or one key of the
/// ring. Recorded when HEAD finds the key that opens an object, so reads and copies send the
/// right key at once instead of trying the ring again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sealing {
    /// Stored without SSE-C: read without key headers (writes never produce this).
    Plain,
    /// Sealed with the ring key at this index; 0 is the key every new write uses.
    Key(u8),
}

impl Sealing {
    /// The ring's first key: the one new objects are written with.
    pub const PRIMARY: Sealing = Sealing::Key(0);
}

impl Default for Sealing {
    fn default() -> Sealing {
        Sealing::PRIMARY
    }
}

/// User-metadata name (`x-amz-meta-ssecfs-key`) holding the fingerprint of the key an object
/// was written with, so tools (and `rotate`) can tell which key an object needs.
pub const KEY_FINGERPRINT_META: &str = "ssecfs-key";

/// What HEAD tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub etag: String,
    pub last_modified: SystemTime,
    pub metadata: Metadata,
    /// Which key opened it (`Plain`: an object another tool uploaded without SSE-C).
    pub sealing: Sealing,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: SystemTime,
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    pub prefixes: Vec<String>,
    pub next: Option<String>,
}

/// A part of a multipart upload, as the server acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: i32,
    pub etag: String,
    /// CRC32C (base64) the server verified the part against, when it reports one; passed back
    /// on completion (AWS requires it when the upload was created with the algorithm).
    pub crc32c: Option<String>,
}

/// A multipart upload the server still holds: started, never completed nor aborted. Its parts
/// take storage (billed on AWS) yet show in no listing; a daemon that crashed mid-upload leaves
/// one behind.
#[derive(Debug, Clone)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// What a failed request was about: the S3 operation and its object or listing prefix. An
/// error carries it because whatever shows the error (a FUSE log line names only an inode,
/// a failed mount only the error) may know neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: &'static str,
    pub target: Target,
}

/// What a request was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Object(String),
    /// A listing's prefix.
    Prefix(String),
    /// A copy (CopyObject, UploadPartCopy) from one object to another.
    Copy {
        src: String,
        dst: String,
    },
}

impl Request {
    pub fn object(op: &'static str, key: &str) -> Request {
        Request {
            op,
            target: Target::Object(key.to_owned()),
        }
    }

    pub fn prefix(op: &'static str, prefix: &str) -> Request {
        Request {
            op,
            target: Target::Prefix(prefix.to_owned()),
        }
    }

    pub fn copy(op: &'static str, src: &str, dst: &str) -> Request {
        Request {
            op,
            target: Target::Copy {
                src: src.to_owned(),
                dst: dst.to_owned(),
            },
        }
    }
}

impl std::fmt::Display for Request {
    /// `HeadObject of "d/x"`, `ListObjectsV2 of prefix "d/"`: names escaped, since another
    /// client may have put any character in them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Object(key) => write!(f, "{} of {key:?}", self.op),
            Target::Prefix(prefix) => write!(f, "{} of prefix {prefix:?}", self.op),
            Target::Copy { src, dst } => write!(f, "{} of {src:?} to {dst:?}", self.op),
        }
    }
}

/// The server's side of an error: `HTTP 503 SlowDown: message`, leaving out what is empty
/// (status 0: no HTTP answer to speak of, e.g. a garbled one).
fn server_said(status: u16, code: &str, message: &str) -> String {
    let mut s = match status {
        0 => String::new(),
        n => format!("HTTP {n}"),
    };
    for (sep, part) in [(" ", code), (": ", message)] {
        if !part.is_empty() {
            if !s.is_empty() {
                s.push_str(sep);
            }
            s.push_str(part);
        }
    }
    if s.is_empty() {
        s.push_str("no status, code or message");
    }
    s
}

/// Errors of the object layer, kept apart so the filesystem can map each to its errno.
#[derive(Debug, Clone, thiserror::Error)]
pub enum S3Error {
    #[error("no such object")]
    NotFound,
    #[error("no such bucket")]
    NoSuchBucket,
    /// 400 on a keyed request: the object needs another key (or none). Garage answers 400 for a
    /// wrong key; AWS answers 403, which arrives as `AccessDenied` on HEAD/GET of an object.
    #[error("the customer key does not open this object (wrong key, or the object is not SSE-C)")]
    WrongKey,
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("the object changed while it was read (ETag mismatch)")]
    PreconditionFailed,
    #[error("invalid credentials: {0}")]
    BadCredentials(String),
    #[error("cannot reach the endpoint: {0}")]
    Transport(String),
    /// An answer did not confirm SSE-C under the key sent: a server (or proxy) that ignores
    /// the headers stores plaintext (moto, s3s-fs) and must not be written to or believed.
    #[error(
        "{op} of {key}: the server did not confirm SSE-C (its answer lacks \
         x-amz-server-side-encryption-customer-algorithm: AES256 with this key's MD5): it \
         ignores SSE-C, so it may store data unencrypted, or the object is not sealed under \
         this key; ssecfs neither writes to such a server nor believes its answers"
    )]
    SseIgnored { op: &'static str, key: String },
    #[error("{req}: {}", server_said(*.status, .code, .message))]
    Other {
        req: Request,
        status: u16,
        code: String,
        message: String,
    },
    /// An answer the SDK could not parse (a 200 whose XML holds what XML 1.0 cannot carry,
    /// a proxy's HTML page): it has neither code nor message, so the cause is what it says.
    #[error("{req}: unreadable answer (HTTP {status}): {cause}")]
    Unreadable {
        req: Request,
        status: u16,
        cause: String,
    },
}

impl S3Error {
    /// Worth retrying: transient network trouble, a 5xx, or an answer garbled on the way.
    pub fn is_transient(&self) -> bool {
        match self {
            S3Error::Transport(_) => true,
            S3Error::Other { status, .. } if *status >= 500 || *status == 429 => true,
            // (a garbled answer says nothing about the object: remembering it as the
            // object's state would keep a file unreadable after the network healed)
            S3Error::Other { code, .. } => code == "MalformedResponse",
            S3Error::Unreadable { .. } => true,
            _ => false,
        }
    }

    /// 404 NoSuchUpload: the multipart upload is gone (aborted, or already completed).
    pub fn is_vanished_upload(&self) -> bool {
        matches!(self, S3Error::Other { status: 404, code, .. } if code == "NoSuchUpload")
    }
}

pub type S3Result<T> = Result<T, S3Error>;

/// A server-side copy of one object to another (CopyObject, or UploadPartCopy parts): the
/// copy is sealed with the primary key, the source opened with `src_sealing`.
#[derive(Debug, Clone, Copy)]
pub struct CopyRequest<'a> {
    pub src: &'a str,
    pub dst: &'a str,
    /// `Some`: the copy's metadata, replacing the source's (how chmod and utimens work);
    /// `None`: the source's, kept.
    pub meta: Option<&'a Metadata>,
    /// Which key opens the source (what [`ObjectStore::head`] found).
    pub src_sealing: Sealing,
}

/// Which object a ranged GET reads: `key`, opened with `sealing` (what [`ObjectStore::head`]
/// found). With `etag`, only that version of it: the read fails with `PreconditionFailed`
/// if the object changed, so the blocks of one cached version never mix with another's.
#[derive(Debug, Clone, Copy)]
pub struct ReadSource<'a> {
    pub key: &'a str,
    pub etag: Option<&'a str>,
    pub sealing: Sealing,
}

impl<'a> ReadSource<'a> {
    /// `key` as it is now, whatever its version.
    pub fn latest(key: &'a str, sealing: Sealing) -> ReadSource<'a> {
        ReadSource {
            key,
            etag: None,
            sealing,
        }
    }
}

/// Where an UploadPartCopy takes its bytes: `range` of object `key`, opened with `sealing`.
/// With `etag`, only from that version of the object: an edit of a big file copies its
/// unchanged parts from the version it was based on, and when another client replaced the
/// object meanwhile the copy fails (`PreconditionFailed`, ESTALE at close) instead of storing
/// a mix of both versions.
#[derive(Debug, Clone)]
pub struct PartSource<'a> {
    pub key: &'a str,
    pub range: std::ops::Range<u64>,
    pub sealing: Sealing,
    pub etag: Option<&'a str>,
}

impl PartSource<'_> {
    /// The ETag as a quoted entity tag, the form every server compares (Garage strips the
    /// quotes, AWS wants them; the SDK hands ETags back quoted, MemStore's too).
    pub fn if_match(&self) -> Option<String> {
        self.etag
            .filter(|e| !e.is_empty())
            .map(|e| format!("\"{}\"", e.trim_matches('"')))
    }
}

/// Everything the filesystem needs from S3, with the customer key bound in.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// HEAD with the ring's keys in order until one opens the object, then without key headers
    /// to recognise a plain object; `WrongKey` when nothing opens it.
    async fn head(&self, key: &str) -> S3Result<ObjectInfo>;

    /// Ranged GET of `src` with its key, written into `bufs` one after another: a single
    /// request for `offset .. offset + Σ len(bufs)`, so read-ahead fills several cache blocks
    /// with one GET (the server spends less per byte on fewer, larger ranges). When `src.etag`
    /// is given the read fails with `PreconditionFailed` if the object changed. Returns the
    /// bytes written in all (short at end of object).
    async fn get_ranges(
        &self,
        src: &ReadSource<'_>,
        offset: u64,
        bufs: &mut [&mut [u8]],
    ) -> S3Result<usize>;

    /// [`ObjectStore::get_ranges`] into one buffer, whose length is the range length.
    async fn get_range(
        &self,
        src: &ReadSource<'_>,
        offset: u64,
        buf: &mut [u8],
    ) -> S3Result<usize> {
        self.get_ranges(src, offset, &mut [buf]).await
    }

    /// A whole small object of `buf.len()` bytes (its size in a listing) with its attributes,
    /// opened by the primary key: one GetObject where HEAD then GET cost two round trips.
    /// `Ok(None)` when it is not that size any more or the primary key does not open it (the
    /// caller asks HEAD then, which tries the ring). Default: HEAD, then GET.
    async fn get_whole(&self, key: &str, buf: &mut [u8]) -> S3Result<Option<ObjectInfo>> {
        head_then_get(self, key, buf).await
    }

    /// PutObject with the key and metadata; returns the new ETag.
    /// Sent with a CRC32C of the body, which the server checks before storing anything.
    async fn put(&self, key: &str, body: Bytes, meta: &Metadata) -> S3Result<String>;

    /// CopyObject `req.src` → `req.dst` with both key trios; the copy is sealed with the
    /// primary key. Sources up to 5 GiB (above: [`copy_any_size`]).
    async fn copy(&self, req: &CopyRequest<'_>) -> S3Result<String>;

    async fn delete(&self, key: &str) -> S3Result<()>;

    /// ListObjectsV2 page (no key needed).
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<ListPage>;

    /// Every page of [`ObjectStore::list`], gathered into one (`next` is `None`): for callers
    /// that need the whole listing, so none loops over continuation tokens by hand.
    async fn list_all(&self, prefix: &str, delimiter: Option<&str>) -> S3Result<ListPage> {
        let mut all = ListPage::default();
        let mut token = None;
        loop {
            let page = self.list(prefix, delimiter, token.take(), None).await?;
            all.objects.extend(page.objects);
            all.prefixes.extend(page.prefixes);
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }

    async fn create_multipart(&self, key: &str, meta: &Metadata) -> S3Result<String>;

    /// UploadPart with a CRC32C of the body the server checks (a corrupted part is refused).
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> S3Result<CompletedPart>;

    /// UploadPartCopy of `src.range` of `src.key` with both key trios; with `src.etag`, only
    /// from that version (else `PreconditionFailed`).
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        src: &PartSource<'_>,
    ) -> S3Result<CompletedPart>;

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> S3Result<String>;

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> S3Result<()>;

    /// ListMultipartUploads under `prefix`, every page (no key needed).
    async fn list_multipart(&self, prefix: &str) -> S3Result<Vec<PendingUpload>>;
}

/// [`ObjectStore::get_whole`] in two requests: a store that cannot do it in one, or that
/// must answer for an object it redirects.
pub async fn head_then_get<S: ObjectStore + ?Sized>(
    store: &S,
    key: &str,
    buf: &mut [u8],
) -> S3Result<Option<ObjectInfo>> {
    let info = store.head(key).await?;
    if info.size != buf.len() as u64 {
        return Ok(None);
    }
    let src = ReadSource {
        key,
        etag: Some(&info.etag),
        sealing: info.sealing,
    };
    let n = store.get_range(&src, 0, buf).await?;
    Ok((n == buf.len()).then_some(info))
}

/// Abort the multipart uploads under `prefix` started at least `age` before `now`: what a
/// crashed daemon (or a killed upload tool) left behind. An upload still running elsewhere is
/// younger than any sensible `age`. Returns how many were aborted; the first failure ends it.
pub async fn abort_stale_uploads(
    store: &dyn ObjectStore,
    prefix: &str,
    age: std::time::Duration,
    now: SystemTime,
) -> S3Result<usize> {
    let mut aborted = 0;
    for u in store.list_multipart(prefix).await? {
        let stale = now
            .duration_since(u.initiated)
            .is_ok_and(|since| since >= age);
        if stale {
            store.abort_multipart(&u.key, &u.upload_id).await?;
            tracing::info!(object = %u.key, "aborted an incomplete multipart upload left behind");
            aborted += 1;
        }
    }
    Ok(aborted)
}

/// CRC32C of `data`, base64 of its big-endian bytes: the `x-amz-checksum-crc32c` value. Since
/// SSE-C ETags are not MD5s, this is what proves the server stored what was sent.
pub fn crc32c_base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(data).to_be_bytes())
}

/// Objects above this size cannot be the source of one CopyObject: use UploadPartCopy.
pub const MAX_COPY_OBJECT: u64 = 5 << 30;
/// Smallest multipart part except the last.
pub const MIN_PART: u64 = 5 << 20;
/// Most parts an upload may have.
pub const MAX_PARTS: u64 = 10_000;

/// Copy `req.src` (of `size` bytes) to `req.dst` whatever its size: CopyObject up to 5 GiB,
/// multipart UploadPartCopy of `part_size` parts (or larger, to stay within
/// [`MAX_PARTS`]) above. Both paths carry both key trios.
pub async fn copy_any_size(
    store: &dyn ObjectStore,
    req: &CopyRequest<'_>,
    size: u64,
    part_size: u64,
) -> S3Result<String> {
    if size <= MAX_COPY_OBJECT {
        return store.copy(req).await;
    }
    let (src, dst) = (req.src, req.dst);
    // (a multipart upload gets its metadata when it is created, not from the source)
    let kept;
    let meta = match req.meta {
        Some(m) => m,
        None => {
            kept = store.head(src).await?.metadata;
            &kept
        }
    };
    let part = part_size.max(size.div_ceil(MAX_PARTS)).max(MIN_PART);
    let upload_id = store.create_multipart(dst, meta).await?;
    let mut parts = Vec::new();
    let result: S3Result<()> = async {
        let mut start = 0;
        let mut number = 1;
        while start < size {
            let end = (start + part).min(size);
            parts.push(
                store
                    .upload_part_copy(
                        dst,
                        &upload_id,
                        number,
                        &PartSource {
                            key: src,
                            range: start..end,
                            sealing: req.src_sealing,
                            etag: None,
                        },
                    )
                    .await?,
            );
            start = end;
            number += 1;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => store.complete_multipart(dst, &upload_id, parts).await,
        Err(e) => {
            let _ = store.abort_multipart(dst, &upload_id).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stale_uploads_under_the_prefix_are_aborted_and_no_others() {
        let store = mem::MemStore::new("fp");
        let meta = Metadata::new();
        store.create_multipart("mnt/a", &meta).await.unwrap();
        store.create_multipart("other/b", &meta).await.unwrap();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        // younger than the age: kept
        assert_eq!(
            abort_stale_uploads(&store, "mnt/", day, now).await.unwrap(),
            0
        );
        // a week later the one under the prefix goes; the other is not ours
        let later = now + 7 * day;
        assert_eq!(
            abort_stale_uploads(&store, "mnt/", day, later)
                .await
                .unwrap(),
            1
        );
        let left: Vec<String> = store
            .list_multipart("")
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.key)
            .collect();
        assert_eq!(left, ["other/b"]);
    }
}
