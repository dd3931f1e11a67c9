//! The attribute persister: how a chmod, chown or utimens reaches the server.
//!
//! One place decides between the three ways: folded into the upload of a file being written
//! (no request of its own), a CopyObject of a closed file onto itself (delayed by
//! [`META_DELAY`], so a rename made meanwhile carries the attributes instead), or a new
//! marker for a directory (delayed too, so a burst of changes is one marker). It also keeps a file's in-memory state consistent when this mount
//! replaces the file's object server-side (`rebase_clean`, `rebuilt_after`).

use std::collections::HashSet;

use bytes::Bytes;
use tokio::sync::Notify;

use super::attr::{Attr, Kind};
use super::inode::{Node, ROOT};
use super::writeback::{FileState, HeldFile};
use super::{Fs, META_DELAY};
use crate::cache::blocks::ObjectRef;
use crate::error::{FsError, FsResult};
use crate::s3::{S3Error, Sealing};
use crate::sync::{rank, Mutex};
use crate::upload::FileContent;

/// Closed files whose attributes changed but are not on the server yet, and the stores under
/// way. Both locks are leaves, taken after the inode table and the files map.
#[derive(Default)]
pub(super) struct Persister {
    /// Written [`META_DELAY`] after the change, or carried by the copy of a rename made
    /// meanwhile, or on close, fsync and unmount.
    pending: Mutex<HashSet<u64>, { rank::PENDING }>,
    /// Attribute stores under way (see [`MetaStore`]): `upload_all` waits for them, else the
    /// runtime's shutdown after it could cancel one that had already left `pending`.
    in_flight: Mutex<usize, { rank::LEAF }>,
    settled: Notify,
}

/// One attribute store under way, counted in `Persister::in_flight` from before its inode
/// leaves `pending` until it has finished (or failed and gone back).
struct MetaStore<'a>(&'a Persister);

impl<'a> MetaStore<'a> {
    fn start(p: &'a Persister) -> MetaStore<'a> {
        *p.in_flight.lock() += 1;
        MetaStore(p)
    }
}

impl Drop for MetaStore<'_> {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock();
        *n -= 1;
        if *n == 0 {
            self.0.settled.notify_waiters();
        }
    }
}

impl Persister {
    /// Does `ino` have attributes not on the server yet?
    pub(super) fn is_pending(&self, ino: u64) -> bool {
        self.pending.lock().contains(&ino)
    }

    /// Mark `ino`'s attributes as not on the server yet; false when they already were.
    fn mark(&self, ino: u64) -> bool {
        self.pending.lock().insert(ino)
    }

    /// Take `ino` out of the set to store its attributes; false when it was not in it.
    fn take(&self, ino: u64) -> bool {
        self.pending.lock().remove(&ino)
    }

    /// `ino`'s pending attributes are on the server now (carried by a copy) or moot.
    pub(super) fn settle(&self, ino: u64) {
        self.pending.lock().remove(&ino);
    }

    pub(super) fn pending_inos(&self) -> Vec<u64> {
        self.pending.lock().iter().copied().collect()
    }

    pub(super) fn count(&self) -> usize {
        self.pending.lock().len()
    }

    /// Until no attribute store is under way.
    pub(super) async fn stores_settled(&self) {
        loop {
            let settled = self.settled.notified();
            if *self.in_flight.lock() == 0 {
                return;
            }
            settled.await;
        }
    }
}

impl Fs {
    /// Make `setattr`'s new `attr` of `ino` (whose node was `was`) durable: folded into the
    /// upload of a file being written or truncated (`truncated`), and that upload made now
    /// when no handle is open (a truncate(2)); else, when the metadata changed, a delayed
    /// copy of a closed file or a delayed new marker of a directory (an immediate one when
    /// the directory has no marker yet: nothing else would make one).
    pub(super) async fn persist_attr_change(
        &self,
        ino: u64,
        was: &Node,
        attr: &Attr,
        meta_changed: bool,
        truncated: bool,
    ) -> FsResult<()> {
        if let Some(file) = self.files.get(ino) {
            let mut f = file.lock().await;
            if f.is_dirty() || truncated {
                if meta_changed {
                    f.mark_meta_changed();
                } else {
                    f.mark_dirty();
                }
                drop(f);
                if was.open == 0 {
                    self.close_ino(ino).await?;
                    self.drop_if_closed(ino);
                }
                return Ok(());
            }
        }
        if meta_changed {
            // a directory's too: rsync sets its mode and times right after mkdir and its
            // times again at the end, and neither needs to wait for the server
            if was.remote {
                self.defer_metadata(ino).await?;
            } else {
                self.store_metadata(ino, attr).await?;
            }
        }
        Ok(())
    }

    /// Write the attributes of closed file `ino` [`META_DELAY`] from now.
    async fn defer_metadata(&self, ino: u64) -> FsResult<()> {
        if !self.meta.mark(ino) {
            return Ok(()); // already scheduled; it will write the latest attributes
        }
        let Some(me) = self.me.upgrade() else {
            return self.persist_metadata(ino).await;
        };
        tokio::spawn(async move {
            tokio::time::sleep(META_DELAY).await;
            if let Err(e) = me.persist_metadata(ino).await {
                let path = me.describe(ino);
                tracing::error!(ino, path = %path, error = %e, "could not store changed attributes; retried on the next close, fsync or unmount");
            }
        });
        Ok(())
    }

    /// Store `ino`'s pending attribute change now, if it still has one. A file being written
    /// takes it into the upload its close makes; a removed file drops it. On failure it stays
    /// pending.
    pub(super) async fn persist_metadata(&self, ino: u64) -> FsResult<()> {
        if !self.meta.is_pending(ino) {
            return Ok(()); // the common case, without waiting for a rename in progress
        }
        let _ns = self.namespace.read().await;
        let _counted = MetaStore::start(&self.meta);
        if !self.meta.take(ino) {
            return Ok(());
        }
        let Ok(node) = self.names.node(ino) else {
            return Ok(());
        };
        if !node.remote || !self.names.table().is_linked(ino) {
            return Ok(());
        }
        let result = self.store_metadata(ino, &node.attr).await;
        if result.is_err() {
            self.meta.mark(ino);
        } else if !self.files.contains(ino) {
            // the kernel may have forgotten the inode meanwhile (see `forget`)
            self.names.table().forget(ino, 0);
        }
        result
    }

    /// Persist metadata of an unchanged node: CopyObject onto itself (files, symlinks, special
    /// files) or a new marker (directories).
    async fn store_metadata(&self, ino: u64, attr: &Attr) -> FsResult<()> {
        let node = self.names.node(ino)?;
        if ino == ROOT && self.cfg.prefix.is_empty() {
            return Ok(()); // the bucket root has no marker to carry metadata
        }
        match attr.kind {
            Kind::Dir => self.store_dir_marker(ino, attr).await,
            _ if node.remote => self.copy_onto_itself(ino).await,
            _ => Ok(()),
        }
    }

    /// A directory's attributes: a new marker object carries them.
    async fn store_dir_marker(&self, ino: u64, attr: &Attr) -> FsResult<()> {
        let key = self.names.dir_prefix(ino)?;
        self.store
            .put(&key, Bytes::new(), &attr.to_metadata())
            .await?;
        self.names.forget_head(&key);
        self.names.update(ino, |n| n.remote = true);
        Ok(())
    }

    /// A closed file's attributes: a copy of its object onto itself, holding the file's
    /// in-memory state until that state is based on the copy. A file being written instead
    /// folds them into the upload its close makes.
    ///
    /// A file with no state gets a clean one for the copy, so that a writer opening it
    /// meanwhile waits and builds on the copy: built on the object the copy replaces, it
    /// could not read the parts it had not loaded yet, and its changes could not be uploaded.
    async fn copy_onto_itself(&self, ino: u64) -> FsResult<()> {
        let is_file = self.names.node(ino)?.attr.kind == Kind::File;
        let made = is_file && !self.files.contains(ino);
        let held = if is_file {
            Some(self.dirty_file(ino).await?.lock_owned().await)
        } else {
            self.files.lock(ino).await // a symlink or special file has none
        };
        let result = self.copy_holding(ino, held).await;
        if made {
            self.drop_if_closed(ino);
        }
        result
    }

    /// The copy of `copy_onto_itself`, holding the file's state (`held`; none for a symlink
    /// or special file without one). The file's size and attributes are read only now: a
    /// write and a flush (another process's close) that went first may have grown the
    /// object, and a copy recorded with the size seen before would make the next append
    /// leave zeros between.
    async fn copy_holding(&self, ino: u64, mut held: Option<HeldFile>) -> FsResult<()> {
        if let Some(f) = held.as_deref_mut().filter(|f| f.is_dirty()) {
            f.mark_meta_changed();
            return Ok(());
        }
        let node = self.names.node(ino)?;
        let mut attr = node.attr;
        if let Some(f) = held.as_deref() {
            attr.size = f.size(); // clean: the state's size is the object's
        }
        let key = self.names.file_key(ino)?;
        let etag = crate::s3::copy_any_size(
            self.store.as_ref(),
            &crate::s3::CopyRequest {
                src: &key,
                dst: &key,
                meta: Some(&attr.to_metadata()),
                src_sealing: node.sealing,
            },
            attr.size,
            self.cfg.upload.part_size,
        )
        .await?;
        self.names.forget_head(&key);
        self.wctx.cache.invalidate(&key);
        let copy = ObjectRef {
            key,
            etag: etag.clone(),
            size: attr.size,
            sealing: Sealing::PRIMARY,
        };
        self.rebase_clean(held.as_deref_mut(), copy);
        self.names.update(ino, |n| {
            n.etag = etag;
            n.sealing = Sealing::PRIMARY;
        });
        Ok(())
    }

    /// The file's object was replaced server-side by this mount (attribute copy, rename)
    /// while its in-memory state, held, is clean: base that state on the new object.
    pub(super) fn rebase_clean(&self, held: Option<&mut FileContent>, obj: ObjectRef) {
        if let Some(f) = held {
            if !f.is_dirty() {
                *f = FileContent::new(Some(obj), &self.cfg.upload);
            }
        }
    }

    /// After `e` from `ino`'s in-memory state `f` (held, and clean before the failed call
    /// when `was_clean`): when nothing was changed there yet and the object it was built on
    /// has been replaced (by another client, or by a copy of this mount begun before the
    /// state existed), rebuild it on the file's object as it is now and hand it back to try
    /// again; otherwise `e`. A file replaced or removed while open stays ESTALE.
    pub(super) async fn rebuilt_after(
        &self,
        ino: u64,
        file: &FileState,
        f: HeldFile,
        was_clean: bool,
        e: FsError,
    ) -> FsResult<HeldFile> {
        let replaced = matches!(
            e,
            FsError::S3(S3Error::PreconditionFailed | S3Error::NotFound)
        );
        if !(was_clean && replaced) {
            return Err(e);
        }
        drop(f); // a rename or unlink holding the namespace may be waiting for it
        let now = {
            let _ns = self.namespace.read().await;
            if !self.names.table().is_linked(ino) {
                return Err(S3Error::PreconditionFailed.into());
            }
            let key = self.names.file_key(ino)?;
            self.refresh_object(ino, &key).await?
        };
        let mut f = file.clone().lock_owned().await;
        if !f.is_dirty() {
            *f = FileContent::new(Some(now), &self.cfg.upload);
        }
        Ok(f)
    }

    /// What `ino`'s object `key` is on the server now (after a precondition failure): its
    /// ETag and size, recorded in the inode too.
    pub(super) async fn refresh_object(&self, ino: u64, key: &str) -> FsResult<ObjectRef> {
        self.names.forget_head(key);
        let info = self.store.head(key).await?;
        self.names.update(ino, |n| {
            n.etag = info.etag.clone();
            n.attr.size = info.size;
            n.sealing = info.sealing;
        });
        Ok(ObjectRef {
            key: key.to_owned(),
            etag: info.etag,
            size: info.size,
            sealing: info.sealing,
        })
    }
}
