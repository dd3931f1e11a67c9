//! The rename engine. S3 has no rename: a file is copied (both key trios) then its old name
//! deleted; a directory is every object below it copied, then every source deleted, so a
//! failure half-way leaves every object readable under its old name or its new one. The whole
//! of it runs under the namespace lock, held exclusively (see `fs/mod.rs`), with the state of
//! every file it moves held until the copy is that state's base.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;

use super::attr::{Attr, Kind};
use super::moves::{delete_old_name, Move};
use super::writeback::HeldFile;
use super::{Fs, PLAIN_REFUSED};
use crate::cache::blocks::ObjectRef;
use crate::error::{FsError, FsResult};
use crate::s3::{ListedObject, ObjectInfo, S3Error, Sealing};

impl Fs {
    /// Which inode `parent/name` is and which one `new_parent/new_name` replaces, once the
    /// rename is known to be allowed; `None` when both names are the same inode (nothing to
    /// do). Called with the namespace lock held.
    pub(super) async fn rename_check(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<Option<(u64, Option<u64>)>> {
        let ino = self.resolve(parent, name).await?;
        let is_dir = self.names.node(ino)?.attr.kind == Kind::Dir;
        let dst = match self.resolve(new_parent, new_name).await {
            Ok(d) => Some(d),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if dst == Some(ino) {
            return Ok(None);
        }
        if let Some(d) = dst {
            if no_replace {
                return Err(FsError::Exists);
            }
            let dst_is_dir = self.names.node(d)?.attr.kind == Kind::Dir;
            match (is_dir, dst_is_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.names.dir_is_empty(d).await? => {
                    return Err(FsError::NotEmpty)
                }
                _ => {}
            }
        }
        if is_dir && self.names.table().is_within(new_parent, ino) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        Ok(Some((ino, dst)))
    }

    /// Rename a file or symlink's object; `dst` is the inode it replaces.
    pub(super) async fn rename_file(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &str,
        dst: Option<u64>,
    ) -> FsResult<()> {
        // the copy would seal a plain object under this mount's key, adopting it unseen
        self.check_sealed(ino, &self.names.node(ino)?, true)?;
        let src_key = self.names.file_key(ino)?;
        let dst_key = self.names.child_key(new_parent, new_name)?;
        // an earlier rename from or to either name is stored first: moves of one key keep
        // their order
        self.moves.settle(&src_key).await?;
        self.moves.settle(&dst_key).await?;
        let mut held = self.hold_uploaded(ino).await?;
        let node = self.names.node(ino)?;
        // a rename changes the file's ctime (as Linux filesystems do); the copy stores it
        let renamed = Attr {
            ctime: SystemTime::now(),
            ..node.attr.clone()
        };
        if node.remote {
            // Stored in the background (see `moves.rs`): the copy carries the current
            // attributes, pending ones included, and the file is read from its old object
            // until it exists.
            self.moves
                .queue(Move {
                    ino,
                    src: src_key.clone(),
                    dst: dst_key.clone(),
                    size: node.attr.size,
                    etag: node.etag.clone(),
                    last_modified: node.attr.mtime,
                    sealing: node.sealing,
                    meta: renamed.to_metadata(),
                })
                .await?;
            self.meta.settle(ino);
            self.wctx.cache.invalidate(&src_key);
            self.wctx.cache.invalidate(&dst_key);
            let base = ObjectRef {
                key: dst_key.clone(),
                etag: node.etag.clone(),
                size: node.attr.size,
                sealing: node.sealing,
            };
            self.rebase_clean(held.as_deref_mut(), base);
        }
        self.names.update(ino, |n| n.attr.ctime = renamed.ctime);
        drop(held);
        if let Some(d) = dst {
            self.discard_replaced(d, &dst_key).await?;
        }
        Ok(())
    }

    /// A background rename of `mv.ino` is stored: the inode's object is the copy now (unless
    /// the file changed since, which a later upload waited for the move to do).
    pub(super) fn move_stored(&self, mv: &Move, etag: &str) {
        self.names.update(mv.ino, |n| {
            if n.etag == mv.etag {
                n.etag = etag.to_owned();
                n.sealing = Sealing::PRIMARY;
            }
        });
        self.wctx.cache.invalidate(&mv.dst);
    }

    /// `ino`'s state, held, once a file being written whose object exists (or whose upload
    /// already started) is made whole, so a copy carries its current content; its state
    /// stays held until the copy is its base (see `Files::lock`).
    async fn hold_uploaded(&self, ino: u64) -> FsResult<Option<HeldFile>> {
        loop {
            let remote = self.names.node(ino)?.remote;
            let held = self.files.lock(ino).await;
            if !held
                .as_deref()
                .is_some_and(|f| f.is_streaming() || (f.is_dirty() && remote))
            {
                return Ok(held);
            }
            drop(held);
            self.upload_ino(ino).await?;
        }
    }

    /// Inode `d`, at `dst_key`, was renamed over: drop its marker if it was a directory and
    /// its unsaved data.
    async fn discard_replaced(&self, d: u64, dst_key: &str) -> FsResult<()> {
        if self.names.node(d)?.attr.kind == Kind::Dir {
            let _ = self.store.delete(&format!("{dst_key}/")).await;
        }
        if let Some(file) = self.files.get(d) {
            file.lock().await.discard(&self.wctx).await;
        }
        Ok(())
    }

    /// Rename directory `ino` and everything below it; `dst` is the (empty) directory it
    /// replaces.
    pub(super) async fn rename_dir(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &str,
        dst: Option<u64>,
    ) -> FsResult<()> {
        let mut held = self.hold_uploaded_below(ino).await?;
        let src = self.names.dir_prefix(ino)?;
        let dst_prefix = format!("{}/", self.names.child_key(new_parent, new_name)?);
        let objects = self.list_all(&src).await?;
        if !objects.iter().any(|o| o.key == src) {
            // no marker: write one at the destination so the (maybe empty) directory exists
            let attr = self.names.node(ino)?.attr;
            self.store
                .put(&dst_prefix, Bytes::new(), &attr.to_metadata())
                .await?;
        }
        // Copy all, then delete all.
        let copies = self.copy_all(&objects, &src, &dst_prefix).await?;
        for o in &objects {
            delete_old_name(self.store.as_ref(), &o.key).await;
            self.wctx.cache.invalidate(&o.key);
        }
        for f in &mut held {
            let copy = f.base().and_then(|b| copies.get(&b.key)).cloned();
            if let Some(copy) = copy {
                self.rebase_clean(Some(&mut **f), copy);
            }
        }
        drop(held);
        // the directory's ctime moves in memory, like its times when entries change
        self.names.update(ino, |n| n.attr.ctime = SystemTime::now());
        if let Some(d) = dst {
            self.names.table().listings.remove(&d);
        }
        Ok(())
    }

    /// Everything written below directory `ino` goes to the server first, and the state of
    /// each file in memory below stays held (in inode order) until the copies are its bases
    /// (see `Files::lock`).
    async fn hold_uploaded_below(&self, ino: u64) -> FsResult<Vec<HeldFile>> {
        loop {
            let mut below = {
                let t = self.names.table();
                self.files.inos_where(|f| t.is_within(f, ino))
            };
            below.sort_unstable();
            for &f in &below {
                self.upload_ino(f).await?;
            }
            let held = self.files.lock_in_order(below).await;
            if held.iter().all(|f| !f.is_dirty() && !f.is_streaming()) {
                return Ok(held);
            }
        }
    }

    /// Every object under `prefix`, all pages.
    async fn list_all(&self, prefix: &str) -> FsResult<Vec<ListedObject>> {
        Ok(self.store.list_all(prefix, None).await?.objects)
    }

    /// Copy every one of `objects` from under `src` to under `dst_prefix`, all at once: the
    /// copies by source key. A copy that failed (or a plain object refused) fails the rename
    /// with the source whole: the copies already made are deleted again, but for the
    /// directory's marker, which may have been the destination's own (an empty directory
    /// renamed over).
    async fn copy_all(
        &self,
        objects: &[ListedObject],
        src: &str,
        dst_prefix: &str,
    ) -> FsResult<HashMap<String, ObjectRef>> {
        let results = futures::future::join_all(objects.iter().map(|o| {
            let to = format!("{dst_prefix}{}", &o.key[src.len()..]);
            async move { Ok::<_, FsError>((o.key.clone(), self.copy_one(o, to).await?)) }
        }))
        .await;
        let mut copies: HashMap<String, ObjectRef> = HashMap::new();
        let mut failed = None;
        for r in results {
            match r {
                Ok((from, copy)) => {
                    copies.insert(from, copy);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let Some(e) = failed else {
            return Ok(copies);
        };
        for copy in copies.values().filter(|c| c.key != dst_prefix) {
            if let Err(e) = self.store.delete(&copy.key).await {
                tracing::warn!(object = %copy.key, error = %e, "a directory rename failed, and a copy it had made could not be deleted");
            }
        }
        Err(e)
    }

    /// Copy one object of a directory being renamed to `to`.
    async fn copy_one(&self, o: &ListedObject, to: String) -> FsResult<ObjectRef> {
        let etag = if o.size > crate::s3::MAX_COPY_OBJECT {
            let info = self.sealed_head(&o.key).await?;
            crate::s3::copy_any_size(
                self.store.as_ref(),
                &crate::s3::CopyRequest {
                    src: &o.key,
                    dst: &to,
                    meta: Some(&info.metadata),
                    src_sealing: info.sealing,
                },
                o.size,
                self.cfg.upload.part_size,
            )
            .await?
        } else {
            // Most objects are under the primary key; the others need HEAD to find theirs
            // (and their metadata, re-tagged with the new key).
            let copy = crate::s3::CopyRequest {
                src: &o.key,
                dst: &to,
                meta: None,
                src_sealing: Sealing::PRIMARY,
            };
            match self.store.copy(&copy).await {
                Err(S3Error::WrongKey) => {
                    let info = self.sealed_head(&o.key).await?;
                    self.store
                        .copy(&crate::s3::CopyRequest {
                            meta: Some(&info.metadata),
                            src_sealing: info.sealing,
                            ..copy
                        })
                        .await?
                }
                other => other?,
            }
        };
        Ok(ObjectRef {
            key: to,
            etag,
            size: o.size,
            sealing: Sealing::PRIMARY,
        })
    }

    /// HEAD of an object a directory rename is about to copy: a copy of a plain object would
    /// seal it under our key, an adoption `check_sealed` refuses for a file; so is this one.
    async fn sealed_head(&self, key: &str) -> FsResult<ObjectInfo> {
        let info = self.store.head(key).await?;
        if info.sealing == Sealing::Plain {
            self.names.warn_once(key, PLAIN_REFUSED);
            return Err(FsError::PlainObject);
        }
        Ok(info)
    }
}
