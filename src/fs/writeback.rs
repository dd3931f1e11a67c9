//! Files being written, and getting them onto the server.
//!
//! [`Files`] holds the in-memory state of every file with changes (or an open writer); the
//! upload of one (`upload_ino`) is the durable point of `close` and `fsync`. With
//! `--write-back`, [`WriteBackQueue`] delays that upload after a close, bounds the bytes
//! waiting, and keeps a failure to report at the file's next open, close, fsync or unmount
//! (the kernel drops a release's answer). Both locks are taken after the inode table and
//! never held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{Notify, OwnedMutexGuard, Semaphore};

use super::attr::{self, Kind};
use super::namespace::Namespace;
use super::{Fs, WriteBack};
use crate::cache::blocks::ObjectRef;
use crate::error::{FsError, FsResult};
use crate::s3::Sealing;
use crate::sync::{rank, Mutex};
use crate::upload::FileContent;

/// One file's in-memory state. Locked (a `tokio::sync::Mutex`) across its uploads.
pub(super) type FileState = Arc<tokio::sync::Mutex<FileContent>>;
/// A file's state, held.
pub(super) type HeldFile = OwnedMutexGuard<FileContent>;

/// The in-memory states by inode. The map's lock is taken after the inode table and before
/// the attribute persister's set; no file state is waited for while the map is locked.
#[derive(Default)]
pub(super) struct Files {
    map: Mutex<HashMap<u64, FileState>, { rank::FILES }>,
}

impl Files {
    pub(super) fn get(&self, ino: u64) -> Option<FileState> {
        self.map.lock().get(&ino).cloned()
    }

    pub(super) fn contains(&self, ino: u64) -> bool {
        self.map.lock().contains_key(&ino)
    }

    pub(super) fn insert(&self, ino: u64, file: FileContent) {
        let file = Arc::new(tokio::sync::Mutex::new(file));
        self.map.lock().insert(ino, file);
    }

    /// `ino`'s state, made by `make` when it has none.
    fn get_or_insert_with(&self, ino: u64, make: impl FnOnce() -> FileContent) -> FileState {
        let mut map = self.map.lock();
        map.entry(ino)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(make())))
            .clone()
    }

    pub(super) fn inos(&self) -> Vec<u64> {
        self.map.lock().keys().copied().collect()
    }

    /// The inodes with a state for which `keep` holds (called with the map locked).
    pub(super) fn inos_where(&self, keep: impl Fn(u64) -> bool) -> Vec<u64> {
        let map = self.map.lock();
        map.keys().copied().filter(|&ino| keep(ino)).collect()
    }

    pub(super) fn states(&self) -> Vec<FileState> {
        self.map.lock().values().cloned().collect()
    }

    /// Forget `ino`'s state when it is clean and nobody holds it (`try_lock`: the map's lock
    /// never waits for a file's).
    fn remove_if_clean(&self, ino: u64) {
        let mut map = self.map.lock();
        if let Some(f) = map.get(&ino) {
            if f.try_lock().is_ok_and(|f| !f.is_dirty()) {
                map.remove(&ino);
            }
        }
    }

    /// `ino`'s state, locked, when it has one. This mount holds it while it replaces the
    /// file's object server-side (attribute copy, rename): a write arriving meanwhile waits,
    /// then builds on the new object instead of fetching the replaced one (whose ETag no
    /// longer matches: the write would fail with ESTALE).
    pub(super) async fn lock(&self, ino: u64) -> Option<HeldFile> {
        let file = self.get(ino)?;
        Some(file.lock_owned().await)
    }

    /// The states of `inos` that have one, locked in inode order: the one order in which
    /// this mount ever holds several file states at once.
    pub(super) async fn lock_in_order(&self, mut inos: Vec<u64>) -> Vec<HeldFile> {
        inos.sort_unstable();
        inos.dedup();
        let mut held = Vec::with_capacity(inos.len());
        for ino in inos {
            held.extend(self.lock(ino).await);
        }
        held
    }
}

/// Write-back state: files waiting for their delayed upload, failures to report.
pub(super) struct WriteBackQueue {
    scheduled: Mutex<HashSet<u64>, { rank::LEAF }>,
    bytes: AtomicU64,
    drained: Notify,
    failed: Mutex<HashMap<u64, FsError>, { rank::LEAF }>,
    slots: Arc<Semaphore>,
}

impl WriteBackQueue {
    pub(super) fn new(wb: Option<WriteBack>) -> WriteBackQueue {
        WriteBackQueue {
            scheduled: Mutex::default(),
            bytes: AtomicU64::new(0),
            drained: Notify::new(),
            failed: Mutex::default(),
            slots: Arc::new(Semaphore::new(wb.map_or(1, |w| w.concurrency.max(1)))),
        }
    }

    /// Bounded crash window: wait while more than `max_pending` closed bytes await upload.
    pub(super) async fn wait_for_room(&self, max_pending: u64) {
        while self.bytes.load(Ordering::Acquire) > max_pending {
            let drained = self.drained.notified();
            if self.bytes.load(Ordering::Acquire) <= max_pending {
                break;
            }
            drained.await;
        }
    }

    pub(super) fn take_failure(&self, ino: u64) -> Option<FsError> {
        self.failed.lock().remove(&ino)
    }

    pub(super) fn record_failure(&self, ino: u64, e: FsError) {
        self.failed.lock().insert(ino, e);
    }

    pub(super) fn failure_count(&self) -> usize {
        self.failed.lock().len()
    }

    /// The failed uploads, by inode, with the error.
    pub(super) fn failures(&self) -> Vec<(u64, String)> {
        let failed = self.failed.lock();
        failed
            .iter()
            .map(|(ino, e)| (*ino, e.to_string()))
            .collect()
    }
}

impl Fs {
    /// The in-memory state of a file being written, created from its object when needed.
    pub(super) async fn dirty_file(&self, ino: u64) -> FsResult<FileState> {
        if let Some(f) = self.files.get(ino) {
            return Ok(f);
        }
        let node = self.names.node(ino)?;
        if node.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let base = if node.remote {
            let key = self.names.file_key(ino)?;
            let (etag, size, sealing) = if node.etag.is_empty() {
                let info = self.store.head(&key).await?;
                (info.etag, info.size, info.sealing)
            } else {
                (node.etag.clone(), node.attr.size, node.sealing)
            };
            Some(ObjectRef {
                key,
                etag,
                size,
                sealing,
            })
        } else {
            None
        };
        Ok(self
            .files
            .get_or_insert_with(ino, || FileContent::new(base, &self.cfg.upload)))
    }

    /// Upload `ino` if it has changes; the durable point of `close` and `fsync`.
    pub(super) async fn upload_ino(&self, ino: u64) -> FsResult<()> {
        let Some(file) = self.files.get(ino) else {
            return Ok(());
        };
        let mut f = file.lock().await;
        if !f.is_dirty() {
            return Ok(());
        }
        if !self.names.table().is_linked(ino) {
            // deleted while open: nothing to keep
            f.discard(&self.wctx).await;
            return Ok(());
        }
        let target = self.names.target(ino)?;
        let obj = f.flush(&self.wctx, &target).await?;
        let kept = f.take_kept_meta();
        self.names.forget_head(&obj.key);
        record_upload(&self.names, ino, &obj, kept.as_ref())
    }

    /// `close()`: upload now (default), or schedule the upload (write-back); an earlier
    /// upload's failure is tried once more and reported when it stays.
    pub(super) async fn close_ino(&self, ino: u64) -> FsResult<()> {
        if let Some(e) = self.wb.take_failure(ino) {
            // The data is still in memory: try once more now, report the failure if it stays.
            self.upload_ino(ino).await.map_err(|_| e)?;
        }
        match self.cfg.write_back {
            None => {
                // Attributes set through read-only descriptors only (rsync's fchmod of its
                // temporary file, opened O_RDONLY after its close) wait for their timer or
                // the rename that follows, which carries them in its copy: a round trip fewer
                // per file. A close of a writer (touch, an editor) stores them.
                let writers = self.names.table().get(ino).map_or(0, |n| n.writers);
                if writers > 0 || self.files.contains(ino) {
                    self.persist_metadata(ino).await?;
                }
                self.upload_ino(ino).await
            }
            Some(wb) => {
                self.schedule_upload(ino, wb).await;
                Ok(())
            }
        }
    }

    /// Write-back: upload `ino` after the delay, unless already scheduled.
    async fn schedule_upload(&self, ino: u64, wb: WriteBack) {
        let Some(file) = self.files.get(ino) else {
            return;
        };
        let bytes = {
            let mut f = file.lock().await;
            if !f.is_dirty() {
                return;
            }
            // closed: what it set aside for writing is for other writers now
            f.trim_reserve();
            f.buffered_bytes() as u64
        };
        if !self.wb.scheduled.lock().insert(ino) {
            return;
        }
        self.wb.bytes.fetch_add(bytes, Ordering::AcqRel);
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(wb.delay).await;
            let slot = me.wb.slots.clone().acquire_owned().await;
            me.wb.scheduled.lock().remove(&ino);
            let result = me.upload_ino(ino).await;
            drop(slot);
            me.wb.bytes.fetch_sub(bytes, Ordering::AcqRel);
            me.wb.drained.notify_waiters();
            match result {
                Ok(()) => me.drop_if_closed(ino),
                Err(e) => {
                    tracing::error!(ino, error = %e, "write-back upload failed; the data stays in memory and the failure is reported on the next close, fsync or unmount");
                    me.wb.record_failure(ino, e);
                }
            }
        });
    }

    /// Free a file's memory once it is clean and no handle is open.
    pub(super) fn drop_if_closed(&self, ino: u64) {
        let open = self.names.table().get(ino).map_or(0, |n| n.open);
        if open == 0 {
            self.files.remove_if_clean(ino);
        }
    }

    /// An upload that failed at the last release (pages written through mmap after close;
    /// no application saw that answer) is tried again at the next open, which reports the
    /// failure when it stays. An open that truncates replaces that data: it is only logged.
    pub(super) async fn retry_failed_release(&self, ino: u64, truncating: bool) -> FsResult<()> {
        let Some(e) = self.wb.take_failure(ino) else {
            return Ok(());
        };
        if truncating {
            let path = self.describe(ino);
            tracing::warn!(ino, path = %path, error = %e, "an open with O_TRUNC discards the data of an earlier failed upload");
            return Ok(());
        }
        self.upload_ino(ino).await.map_err(|_| e)
    }
}

/// Record in the table (and the parent's listing) that `ino` is now `obj` on the server,
/// with the times the upload `kept` when it left the object's metadata as it was.
fn record_upload(
    names: &Namespace,
    ino: u64,
    obj: &ObjectRef,
    kept: Option<&crate::s3::Metadata>,
) -> FsResult<()> {
    let (parent, name, entry) = {
        let mut t = names.table();
        let n = t.get_mut(ino).ok_or(FsError::BadHandle)?;
        n.remote = true;
        n.etag = obj.etag.clone();
        n.sealing = Sealing::PRIMARY;
        n.attr.size = obj.size;
        if let Some(m) = kept {
            // what the server holds is what we report
            let stored = |k: &str, t: &mut std::time::SystemTime| {
                if let Some(v) = m.get(k).and_then(|v| attr::parse_epoch(v)) {
                    *t = v;
                }
            };
            stored(attr::META_MTIME, &mut n.attr.mtime);
            stored(attr::META_CTIME, &mut n.attr.ctime);
            stored(attr::META_ATIME, &mut n.attr.atime);
        }
        (
            n.parent,
            n.name.clone(),
            Namespace::entry_of(&n.attr, &obj.etag),
        )
    };
    names.listing_update(parent, &name, Some(entry));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upload::UploadConfig;

    fn files(inos: &[u64]) -> Files {
        let files = Files::default();
        for &ino in inos {
            files.insert(ino, FileContent::new(None, &UploadConfig::default()));
        }
        files
    }

    /// Several file states are locked in inode order, each once, skipping inodes without one.
    #[tokio::test]
    async fn lock_in_order_locks_each_state_once_in_inode_order() {
        let files = files(&[3, 5, 9]);
        let held = files.lock_in_order(vec![9, 3, 4, 9, 5]).await;
        assert_eq!(held.len(), 3);
        for ino in [3, 5, 9] {
            assert!(
                files.get(ino).unwrap().try_lock().is_err(),
                "{ino} not held"
            );
        }
        drop(held);
        assert!(files.get(3).unwrap().try_lock().is_ok());
    }

    /// Two tasks locking overlapping sets given in opposite orders do not deadlock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opposite_orders_do_not_deadlock() {
        let files = Arc::new(files(&[1, 2, 3, 4]));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let files = files.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..200 {
                    let inos = if i % 2 == 0 {
                        vec![1, 2, 3, 4]
                    } else {
                        vec![4, 3, 2, 1]
                    };
                    let held = files.lock_in_order(inos).await;
                    tokio::task::yield_now().await;
                    drop(held);
                }
            }));
        }
        let all = futures::future::join_all(tasks);
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("no deadlock");
    }
}
