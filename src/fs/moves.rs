//! Background renames. S3 has no rename: a stored file moves by CopyObject then DeleteObject,
//! two round trips that rsync would pay after every file's PutObject. A rename of a stored
//! file is therefore answered once the inode table says so, and [`Moves`] applies it behind
//! (copy, then delete), many at once but never two on one key.
//!
//! [`Moves`] is the store every other part of the mount talks to, so a pending move is
//! invisible: a HEAD or GET of the new name reads the old object, a listing shows the new name
//! and not the old one, and any request that changes either key (an upload to the new name,
//! a rename of it, an unlink, an attribute copy) first waits for the move. An ETag taken from
//! the old object stays good after the move: reads and part copies naming it are sent with
//! the copy's ETag.
//!
//! Durability is POSIX's for rename: by the next `fsync` of the file or `fsyncdir`, `ssecfs
//! sync`, unmount or SIGTERM ([`Moves::settle_all`]). A crash before that loses no data: the
//! file is on the server under its old name. A move that failed stays pending (the mount
//! goes on serving the file from its old object) and is tried again by the next request that
//! waits for it, whose caller gets the error if it fails again.
//!
//! Lock: `Moves::table`, a leaf (`std::sync::Mutex`, never held across an `.await`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::Fs;
use crate::s3::{
    CompletedPart, CopyRequest, ListPage, ListedObject, Metadata, ObjectInfo, ObjectStore,
    PartSource, PendingUpload, ReadSource, S3Error, S3Result, Sealing,
};
use crate::sync::{rank, Mutex, MutexGuard};

/// Moves applied at once (each is a copy then a delete).
const IN_FLIGHT: usize = 32;
/// Moves waiting at most; a rename beyond waits for room (memory stays bounded).
const MAX_PENDING: usize = 10_000;
/// Longest a rename waits for room in a full queue.
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// ETag translations kept after their move (old → copy), newest last.
const TRANSLATIONS: usize = 4096;

/// One rename to apply on the server.
#[derive(Debug, Clone)]
pub(super) struct Move {
    /// The inode renamed: its ETag becomes the copy's once the move is stored.
    pub ino: u64,
    pub src: String,
    pub dst: String,
    pub size: u64,
    /// The source object's version (and what the mount knows the file by until the move).
    pub etag: String,
    pub last_modified: SystemTime,
    pub sealing: Sealing,
    /// The copy's metadata: the file's attributes at the rename, its new ctime included.
    pub meta: Metadata,
}

/// A move not stored yet.
struct Entry {
    mv: Arc<Move>,
    /// A request (the worker, or a waiter trying again) is applying it now.
    running: bool,
    /// The last attempt's failure, while none is running.
    failed: Option<S3Error>,
    /// Dropped when the move is stored; a value is sent when an attempt fails.
    done: watch::Sender<()>,
    _room: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Table {
    by_dst: HashMap<String, Entry>,
    /// Source key → destination key of every pending move.
    by_src: HashMap<String, String>,
    /// Destination key → (old ETag, copy's ETag) of stored moves.
    translated: HashMap<String, (String, String)>,
    order: VecDeque<String>,
}

impl Table {
    /// The pending move `key` is the source or the destination of.
    fn touching(&mut self, key: &str) -> Option<&mut Entry> {
        let dst = match self.by_src.get(key) {
            Some(d) => d.clone(),
            None => key.to_owned(),
        };
        self.by_dst.get_mut(&dst)
    }

    fn pending_to(&self, dst: &str) -> Option<Arc<Move>> {
        self.by_dst.get(dst).map(|e| e.mv.clone())
    }

    fn translate(&mut self, dst: String, old: String, new: String) {
        if self.translated.insert(dst.clone(), (old, new)).is_none() {
            self.order.push_back(dst);
        }
        while self.order.len() > TRANSLATIONS {
            if let Some(k) = self.order.pop_front() {
                self.translated.remove(&k);
            }
        }
    }

    /// The ETag of `key`'s copy when `etag` names the object it was copied from.
    fn translation(&self, key: &str, etag: Option<&str>) -> Option<String> {
        let (old, new) = self.translated.get(key)?;
        (etag == Some(old.as_str())).then(|| new.clone())
    }
}

/// Delete a renamed object's old name once its copy exists. The copy *is* the rename: from
/// then on the mount serves the new name, so a delete that fails (twice) is logged, not
/// returned. Failing the rename would leave the mount naming an object it may have deleted
/// already (an answer lost), and the worst a failed delete leaves is a second copy under the
/// old name, never a lost file.
pub(super) async fn delete_old_name(store: &dyn ObjectStore, key: &str) {
    let mut result = store.delete(key).await;
    if result.is_err() {
        result = store.delete(key).await;
    }
    if let Err(e) = result {
        tracing::error!(object = key, error = %e, "renamed, but the old name could not be deleted: a copy of the file stays under it");
    }
}

/// The background rename queue, and the store the rest of the mount uses (see the module).
pub(super) struct Moves {
    inner: Arc<dyn ObjectStore>,
    table: Mutex<Table, { rank::LEAF }>,
    slots: Arc<Semaphore>,
    room: Arc<Semaphore>,
    part_size: u64,
    fs: Weak<Fs>,
}

impl Moves {
    pub(super) fn new(inner: Arc<dyn ObjectStore>, part_size: u64, fs: Weak<Fs>) -> Arc<Moves> {
        Arc::new(Moves {
            inner,
            table: Mutex::default(),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            room: Arc::new(Semaphore::new(MAX_PENDING)),
            part_size,
            fs,
        })
    }

    fn table(&self) -> MutexGuard<'_, Table, { rank::LEAF }> {
        self.table.lock()
    }

    /// Moves not stored yet.
    pub(super) fn pending(&self) -> usize {
        self.table().by_dst.len()
    }

    /// Queue `mv` and start it. The caller holds the namespace lock exclusively and has
    /// settled both keys, so no other move touches them. When [`MAX_PENDING`] moves wait
    /// already (the server is slow, or failing: a failed move keeps its place), the failed
    /// ones are tried again, then the rename waits at most [`ROOM_WAIT`] for room, and fails
    /// rather than wait forever.
    pub(super) async fn queue(self: &Arc<Self>, mv: Move) -> S3Result<()> {
        let room = match self.room.clone().try_acquire_owned() {
            Ok(room) => room,
            Err(_) => {
                self.settle_all().await;
                let wait = self.room.clone().acquire_owned();
                match tokio::time::timeout(ROOM_WAIT, wait).await {
                    Ok(room) => room.expect("never closed"),
                    Err(_) => {
                        return Err(S3Error::Transport(format!(
                            "{MAX_PENDING} renames are waiting for the server to store them"
                        )))
                    }
                }
            }
        };
        let mv = Arc::new(mv);
        {
            let mut t = self.table();
            t.translated.remove(&mv.dst);
            t.by_src.insert(mv.src.clone(), mv.dst.clone());
            t.by_dst.insert(
                mv.dst.clone(),
                Entry {
                    mv: mv.clone(),
                    running: true,
                    failed: None,
                    done: watch::channel(()).0,
                    _room: room,
                },
            );
        }
        let me = self.clone();
        tokio::spawn(async move {
            let slot = me.slots.clone().acquire_owned().await;
            let result = me.apply(&mv).await;
            drop(slot);
            me.finish(&mv, result);
        });
        Ok(())
    }

    /// Copy, then delete the old name. The translation (old version → copy) is recorded
    /// before the delete: from the delete on, a read naming the old version (a dirty writer
    /// loading a part) finds no old name and must be sent to the copy, not get a 412.
    async fn apply(&self, mv: &Move) -> S3Result<String> {
        let req = CopyRequest {
            src: &mv.src,
            dst: &mv.dst,
            meta: Some(&mv.meta),
            src_sealing: mv.sealing,
        };
        let etag =
            crate::s3::copy_any_size(self.inner.as_ref(), &req, mv.size, self.part_size).await?;
        self.table()
            .translate(mv.dst.clone(), mv.etag.clone(), etag.clone());
        delete_old_name(self.inner.as_ref(), &mv.src).await;
        Ok(etag)
    }

    /// Record an attempt's outcome: a stored move gives the inode the copy's ETag, then
    /// leaves the table (waking its waiters); a failed one stays, for the next waiter to try.
    ///
    /// The order matters: a waiter (the next rename of the file) reads the inode's ETag as
    /// soon as it wakes, and must find the copy's. Until the entry goes, a read naming either
    /// version finds the object: the old one through the translation, the copy directly.
    fn finish(&self, mv: &Arc<Move>, result: S3Result<String>) {
        match result {
            Ok(etag) => {
                // (the translation is recorded already, by `apply`)
                if let Some(fs) = self.fs.upgrade() {
                    fs.move_stored(mv, &etag);
                }
                let mut t = self.table();
                if t.by_dst
                    .get(&mv.dst)
                    .is_some_and(|e| Arc::ptr_eq(&e.mv, mv))
                {
                    t.by_dst.remove(&mv.dst);
                    t.by_src.remove(&mv.src);
                }
            }
            Err(e) => {
                tracing::warn!(from = %mv.src, to = %mv.dst, error = %e, "a rename could not be stored yet; the file stays under its old name on the server until it is");
                let mut t = self.table();
                if let Some(entry) = t.by_dst.get_mut(&mv.dst) {
                    if Arc::ptr_eq(&entry.mv, mv) {
                        entry.running = false;
                        entry.failed = Some(e);
                        entry.done.send_replace(());
                    }
                }
            }
        }
    }

    /// Wait until no move touches `key` (as source or destination); a failed one is tried
    /// again here, and its error returned if it fails again.
    pub(super) async fn settle(&self, key: &str) -> S3Result<()> {
        loop {
            let (mut wait, retry) = {
                let mut t = self.table();
                let Some(entry) = t.touching(key) else {
                    return Ok(());
                };
                if entry.running {
                    (Some(entry.done.subscribe()), None)
                } else {
                    entry.running = true;
                    entry.failed = None;
                    (None, Some(entry.mv.clone()))
                }
            };
            if let Some(mv) = retry {
                let result = self.apply(&mv).await;
                let failed = result.as_ref().err().cloned();
                self.finish(&mv, result);
                if let Some(e) = failed {
                    return Err(e);
                }
            } else if let Some(rx) = wait.as_mut() {
                // Err: the sender is gone, the move is stored
                let _ = rx.changed().await;
            }
        }
    }

    /// Store every pending move (durability point: fsyncdir, sync, unmount); returns the
    /// moves that failed, each logged with what it means.
    pub(super) async fn settle_all(&self) -> usize {
        let dsts: Vec<String> = self.table().by_dst.keys().cloned().collect();
        let mut failed = 0;
        for dst in dsts {
            if let Err(e) = self.settle(&dst).await {
                tracing::error!(object = %dst, error = %e, "a rename could not be stored: the file is on the server under its old name");
                failed += 1;
            }
        }
        failed
    }

    /// Settle both keys of a copy.
    async fn settle_copy(&self, req: &CopyRequest<'_>) -> S3Result<()> {
        self.settle(req.src).await?;
        self.settle(req.dst).await
    }
}

#[async_trait]
impl ObjectStore for Moves {
    async fn head(&self, key: &str) -> S3Result<ObjectInfo> {
        let (to, from) = {
            let t = self.table();
            (t.pending_to(key), t.by_src.contains_key(key))
        };
        if from {
            return Err(S3Error::NotFound); // renamed away
        }
        if let Some(mv) = to {
            match self.inner.head(&mv.src).await {
                Ok(mut info) => {
                    info.metadata = mv.meta.clone();
                    return Ok(info);
                }
                // the move was stored meanwhile: the new name is real now
                Err(S3Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.head(key).await
    }

    async fn get_ranges(
        &self,
        src: &ReadSource<'_>,
        offset: u64,
        bufs: &mut [&mut [u8]],
    ) -> S3Result<usize> {
        let to = self.table().pending_to(src.key);
        if let Some(mv) = to.filter(|mv| src.etag.is_none_or(|e| e == mv.etag)) {
            let old = ReadSource {
                key: &mv.src,
                etag: Some(&mv.etag),
                sealing: mv.sealing,
            };
            match self.inner.get_ranges(&old, offset, bufs).await {
                Err(S3Error::NotFound) => {} // stored meanwhile: read the copy
                other => return other,
            }
        }
        let new = self.table().translation(src.key, src.etag);
        match new {
            Some(etag) => {
                let copy = ReadSource {
                    key: src.key,
                    etag: Some(&etag),
                    sealing: Sealing::PRIMARY,
                };
                self.inner.get_ranges(&copy, offset, bufs).await
            }
            None => self.inner.get_ranges(src, offset, bufs).await,
        }
    }

    async fn get_whole(&self, key: &str, buf: &mut [u8]) -> S3Result<Option<ObjectInfo>> {
        let redirected = {
            let mut t = self.table();
            t.touching(key).is_some() || t.translated.contains_key(key)
        };
        if redirected {
            // through this store's own HEAD and GET, which know where the file is
            return crate::s3::head_then_get(self, key, buf).await;
        }
        self.inner.get_whole(key, buf).await
    }

    async fn put(&self, key: &str, body: Bytes, meta: &Metadata) -> S3Result<String> {
        self.settle(key).await?;
        self.inner.put(key, body, meta).await
    }

    async fn copy(&self, req: &CopyRequest<'_>) -> S3Result<String> {
        self.settle_copy(req).await?;
        self.inner.copy(req).await
    }

    async fn delete(&self, key: &str) -> S3Result<()> {
        self.settle(key).await?;
        self.inner.delete(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<ListPage> {
        let mut page = self.inner.list(prefix, delimiter, token, max_keys).await?;
        let t = self.table();
        if t.by_dst.is_empty() {
            return Ok(page);
        }
        // the old names are gone; the new ones are added once, on the last page
        page.objects
            .retain(|o| !t.by_src.contains_key(&o.key) && !t.by_dst.contains_key(&o.key));
        if page.next.is_some() {
            return Ok(page);
        }
        for (dst, entry) in &t.by_dst {
            let Some(rest) = dst.strip_prefix(prefix) else {
                continue;
            };
            match delimiter.and_then(|d| rest.find(d).map(|i| i + d.len())) {
                Some(end) => {
                    let p = format!("{prefix}{}", &rest[..end]);
                    if !page.prefixes.contains(&p) {
                        page.prefixes.push(p);
                    }
                }
                None => page.objects.push(ListedObject {
                    key: dst.clone(),
                    size: entry.mv.size,
                    etag: entry.mv.etag.clone(),
                    last_modified: entry.mv.last_modified,
                }),
            }
        }
        Ok(page)
    }

    async fn create_multipart(&self, key: &str, meta: &Metadata) -> S3Result<String> {
        self.settle(key).await?;
        self.inner.create_multipart(key, meta).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> S3Result<CompletedPart> {
        self.inner.upload_part(key, upload_id, number, body).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        src: &PartSource<'_>,
    ) -> S3Result<CompletedPart> {
        self.settle(src.key).await?;
        let new = self.table().translation(src.key, src.etag);
        match new {
            Some(etag) => {
                let copy = PartSource {
                    etag: Some(&etag),
                    sealing: Sealing::PRIMARY,
                    range: src.range.clone(),
                    ..*src
                };
                self.inner
                    .upload_part_copy(key, upload_id, number, &copy)
                    .await
            }
            None => {
                self.inner
                    .upload_part_copy(key, upload_id, number, src)
                    .await
            }
        }
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> S3Result<String> {
        self.settle(key).await?;
        self.inner.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> S3Result<()> {
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn list_multipart(&self, prefix: &str) -> S3Result<Vec<PendingUpload>> {
        self.inner.list_multipart(prefix).await
    }
}
