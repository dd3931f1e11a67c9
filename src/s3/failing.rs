//! A store that fails one chosen request: the seam of the failure-point sweep.
//!
//! [`FailingStore`] wraps another [`ObjectStore`] and counts every request; request number
//! `at` (1-based) fails with the chosen [`FailKind`], every other one goes through. A sweep
//! runs a workload once to count its requests, then once per request and kind, and checks
//! that whatever failed, no file ends up mixed, zeroed or lost (`fs::sweep_tests`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CompletedPart, CopyRequest, ListPage, Metadata, ObjectInfo, ObjectStore, PartSource,
    PendingUpload, ReadSource, Request, S3Error, S3Result,
};

/// How the chosen request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// 403, not applied (a policy refusing a write, AWS blocking SSE-C).
    Refused,
    /// 5xx after all the SDK's retries, not applied.
    ServerError,
    /// The connection reset mid-body: a read got part of its bytes, a write was not applied.
    ResetMidBody,
    /// No answer in time, not applied.
    Timeout,
    /// Applied on the server, but the answer was lost (the client sees a transport error).
    AnswerLost,
    /// The task making the request dies (a panic in the HTTP stack): only part uploads,
    /// which run in tasks of their own; other requests go through.
    Panic,
}

impl FailKind {
    pub const ALL: [FailKind; 6] = [
        FailKind::Refused,
        FailKind::ServerError,
        FailKind::ResetMidBody,
        FailKind::Timeout,
        FailKind::AnswerLost,
        FailKind::Panic,
    ];

    fn error(self, op: &'static str) -> S3Error {
        match self {
            FailKind::Refused => S3Error::AccessDenied("injected 403".into()),
            FailKind::ServerError => S3Error::Other {
                req: Request::object(op, "(injected)"),
                status: 503,
                code: "SlowDown".into(),
                message: "injected after all retries".into(),
            },
            FailKind::ResetMidBody => S3Error::Transport("injected: connection reset".into()),
            FailKind::Timeout => S3Error::Transport("injected: timed out".into()),
            FailKind::AnswerLost => S3Error::Transport("injected: answer lost".into()),
            FailKind::Panic => unreachable!("a panic is not an error"),
        }
    }
}

/// What happened to one request.
enum Fate {
    Pass,
    /// Fail before applying it.
    Fail(S3Error),
    /// Apply it, then fail.
    ApplyThenFail(S3Error),
    /// Fail a read after filling part of its buffer.
    Partial(S3Error),
    Panic,
}

/// An [`ObjectStore`] failing request number `at` with `kind`; `at == 0` fails none.
pub struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    at: u64,
    kind: FailKind,
    seen: AtomicU64,
    /// More request numbers failing as `kind` (a test of a retry that fails too).
    also: Mutex<Vec<u64>>,
    /// The operation of every request, in order (for a failing case's message).
    log: Mutex<Vec<&'static str>>,
}

impl FailingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, at: u64, kind: FailKind) -> FailingStore {
        FailingStore {
            inner,
            at,
            kind,
            seen: AtomicU64::new(0),
            also: Mutex::default(),
            log: Mutex::default(),
        }
    }

    /// Fail request number `n` as well, the same way.
    pub fn fail_also(&self, n: u64) {
        self.also.lock().unwrap().push(n);
    }

    /// Requests made so far.
    pub fn requests(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// The operations made so far, in order.
    pub fn log(&self) -> Vec<&'static str> {
        self.log.lock().unwrap().clone()
    }

    /// The failed request's operation, once it was made.
    pub fn failed_op(&self) -> Option<&'static str> {
        let log = self.log.lock().unwrap();
        (self.at > 0)
            .then(|| log.get(self.at as usize - 1).copied())
            .flatten()
    }

    fn fate(&self, op: &'static str) -> Fate {
        self.log.lock().unwrap().push(op);
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.at && !self.also.lock().unwrap().contains(&n) {
            return Fate::Pass;
        }
        match self.kind {
            FailKind::Panic if op == "upload_part" => Fate::Panic,
            FailKind::Panic => Fate::Pass,
            FailKind::AnswerLost => Fate::ApplyThenFail(self.kind.error(op)),
            FailKind::ResetMidBody if op == "get" => Fate::Partial(self.kind.error(op)),
            kind => Fate::Fail(kind.error(op)),
        }
    }
}

/// Run `$call` on the inner store according to the fate of request `$op`.
macro_rules! fated {
    ($self:ident, $op:literal, $call:expr) => {
        match $self.fate($op) {
            Fate::Pass => $call.await,
            Fate::Fail(e) | Fate::Partial(e) => Err(e),
            Fate::ApplyThenFail(e) => {
                let _ = $call.await;
                Err(e)
            }
            Fate::Panic => panic!("injected panic in {}", $op),
        }
    };
}

#[async_trait]
impl ObjectStore for FailingStore {
    async fn head(&self, key: &str) -> S3Result<ObjectInfo> {
        fated!(self, "head", self.inner.head(key))
    }

    async fn get_ranges(
        &self,
        src: &ReadSource<'_>,
        offset: u64,
        bufs: &mut [&mut [u8]],
    ) -> S3Result<usize> {
        match self.fate("get") {
            Fate::Partial(e) => {
                // part of the body arrived before the reset
                let n = self.inner.get_ranges(src, offset, bufs).await?;
                let keep = n / 2;
                let mut pos = 0;
                for b in bufs.iter_mut() {
                    let end = pos + b.len();
                    if end > keep {
                        b[keep.saturating_sub(pos)..].fill(0xEE);
                    }
                    pos = end;
                }
                Err(e)
            }
            Fate::Pass => self.inner.get_ranges(src, offset, bufs).await,
            Fate::Fail(e) | Fate::ApplyThenFail(e) => Err(e),
            Fate::Panic => panic!("injected panic in get"),
        }
    }

    async fn put(&self, key: &str, body: Bytes, meta: &Metadata) -> S3Result<String> {
        fated!(self, "put", self.inner.put(key, body.clone(), meta))
    }

    async fn copy(&self, req: &CopyRequest<'_>) -> S3Result<String> {
        fated!(self, "copy", self.inner.copy(req))
    }

    async fn delete(&self, key: &str) -> S3Result<()> {
        fated!(self, "delete", self.inner.delete(key))
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<ListPage> {
        fated!(
            self,
            "list",
            self.inner.list(prefix, delimiter, token.clone(), max_keys)
        )
    }

    async fn create_multipart(&self, key: &str, meta: &Metadata) -> S3Result<String> {
        fated!(
            self,
            "create_multipart",
            self.inner.create_multipart(key, meta)
        )
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> S3Result<CompletedPart> {
        fated!(
            self,
            "upload_part",
            self.inner.upload_part(key, upload_id, number, body.clone())
        )
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        src: &PartSource<'_>,
    ) -> S3Result<CompletedPart> {
        fated!(
            self,
            "upload_part_copy",
            self.inner.upload_part_copy(key, upload_id, number, src)
        )
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> S3Result<String> {
        fated!(
            self,
            "complete_multipart",
            self.inner.complete_multipart(key, upload_id, parts.clone())
        )
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> S3Result<()> {
        fated!(
            self,
            "abort_multipart",
            self.inner.abort_multipart(key, upload_id)
        )
    }

    async fn list_multipart(&self, prefix: &str) -> S3Result<Vec<PendingUpload>> {
        fated!(self, "list_multipart", self.inner.list_multipart(prefix))
    }
}
