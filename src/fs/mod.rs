//! The filesystem: POSIX operations on top of an [`ObjectStore`], testable without FUSE.
//!
//! Paths map to keys under the mount's prefix: a file `a/b` is the object `PREFIX/a/b`, a
//! directory is a `a/` marker object (what s3fs writes) or just a common prefix (what other
//! tools leave). Attributes live in s3fs-compatible metadata and need a HEAD; listings give
//! sizes and names only, so a directory read starts HEADs for its entries in the background
//! and the lookups that follow (`ls -l`, rsync) find them ready. Everything the mount itself
//! changed is known without asking the server.
//!
//! Durability: `flush` (every `close`) and `fsync` upload a changed file and report failure;
//! metadata changes on a file being written are folded into its upload.
//!
//! [`Fs`] is a facade: each POSIX operation is a short method over parts that own their state
//! and their locks:
//!
//! - `namespace.rs`: the inode table, listings and the HEAD cache; resolving names.
//! - `handles.rs`: open handles, read-ahead detection and the read path.
//! - `writeback.rs`: files being written (`Files`), their uploads, and the `--write-back`
//!   queue.
//! - `persist.rs`: the attribute persister (folded into an upload, a copy onto itself, or a
//!   directory marker).
//! - `rename.rs`: the rename engine.
//! - `moves.rs`: renames of stored files, applied in the background; also the store every
//!   other part talks to, so a pending one is invisible.
//! - `nodes.rs`: symlinks and special files (FIFOs, sockets, devices), objects made whole in
//!   one request.
//! - `pending.rs`: what is not on the server yet, and storing all of it (`upload_all`).
//!
//! # Lock order
//!
//! A lock is only ever taken while holding locks above it in this list, in short
//! namespace → file states (in inode order) → table → files map → pending attributes:
//!
//! 1. `Fs::namespace`, the namespace lock (`tokio::sync::RwLock<()>`, held across requests):
//!    exclusive for `rename` and `unlink` from their first request to their table update;
//!    shared by a read or a rebuild that found its object changed or gone
//!    (`read_changed_object`, `rebuilt_after`) and by an attribute store
//!    (`persist_metadata`). Never taken while holding a file state (`rebuilt_after` lets
//!    its state go first), and never twice by one task (tokio's lock is write-preferring:
//!    a second shared lock would wait behind a queued rename).
//! 2. The file states (`tokio::sync::Mutex<FileContent>`, one per entry of `Files`, held
//!    across uploads and copies). Several at once only through `Files::lock_in_order`, in
//!    inode order (a directory rename); otherwise one at a time.
//! 3. `Namespace::table` (the inode table and its listings; a file state holder records an
//!    upload or a copy in it).
//! 4. `Files::map` (which files have an in-memory state).
//! 5. `Persister::pending` (closed files whose attributes are not stored yet).
//!
//! Leaves, under which nothing else is taken: `Moves::table`, `Namespace::heads`,
//! `Namespace::warned`, `Handles::table`, `WriteBackQueue::scheduled`,
//! `WriteBackQueue::failed`, `Persister::in_flight`. These `std::sync::Mutex`es (3 to 5 and
//! the leaves) are never held across an `.await`, nor while calling into the block cache (whose
//! own locks rank below them all) or the store. They are [`crate::sync::Mutex`]es with their
//! rank in the type: in debug builds, so in every test, taking one out of this order panics. The one step
//! against the order, `Files::remove_if_clean` trying a file state while holding the map,
//! uses `try_lock` and never waits. The write-back and prefetch semaphores are acquired
//! holding nothing. Waiting for a background rename (`Moves::settle`, which every request
//! changing its keys does) is allowed holding anything above: the move's task takes only
//! `Moves::table` and, to record the copy, `Namespace::table`, each for a moment.

pub mod attr;
mod handles;
pub mod inode;
mod moves;
mod namespace;
mod persist;
mod rename;
mod writeback;

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::arena::{Arena, LockedBuf};
use crate::cache::blocks::BlockCache;
use crate::cache::spill::Spill;
use crate::error::{FsError, FsResult};
use crate::s3::{ObjectStore, S3Error, Sealing};
use crate::upload::file::WriteContext;
use crate::upload::{FileContent, UploadConfig};
use attr::{Attr, Defaults, Kind};
use handles::Handles;
use inode::{Node, ROOT};
use moves::Moves;
use namespace::Namespace;
use persist::Persister;
use writeback::{Files, WriteBackQueue};

/// Filesystem settings derived from the command line.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix of the mount root: "" or "some/prefix/".
    pub prefix: String,
    pub defaults: Defaults,
    /// How long attributes fetched from the server are trusted.
    pub attr_ttl: Duration,
    /// How long a directory listing is trusted.
    pub dir_ttl: Duration,
    pub upload: UploadConfig,
    pub read_only: bool,
    /// Bytes of the arena the read cache may hold.
    pub read_cache: u64,
    /// Most bytes read ahead of a sequential reader.
    pub max_readahead: u64,
    /// Opt-in write-back: `close()` returns at once and the upload starts after a short
    /// delay; `None` is the durable-on-close default.
    pub write_back: Option<WriteBack>,
    /// Sealed spill tier for evicted blocks and write chunks (`--spill-dir`); `None`: off.
    pub spill: Option<Spill>,
    /// Serve objects stored without SSE-C, read-only (`--allow-plain`, for a migration).
    /// Off by default: anyone with write access to the bucket, and no key, can put one.
    pub allow_plain: bool,
}

/// Write-back settings (`--write-back`).
#[derive(Debug, Clone, Copy)]
pub struct WriteBack {
    /// Wait this long after the last close before uploading, so the utimens/chmod/rename
    /// that follow a close (rsync) fold into one upload under the final name.
    pub delay: Duration,
    /// Most bytes of closed-but-not-uploaded data; writers wait while it is exceeded.
    pub max_pending: u64,
    /// Uploads of different files in flight at once.
    pub concurrency: usize,
}

impl FsConfig {
    /// Sensible settings for `prefix` owned by `uid:gid`.
    pub fn new(prefix: &str, uid: u32, gid: u32) -> FsConfig {
        let prefix = prefix.trim_matches('/');
        FsConfig {
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            defaults: Defaults {
                uid,
                gid,
                file_perm: 0o644,
                dir_perm: 0o755,
                special_modes: false,
            },
            attr_ttl: Duration::from_secs(30),
            dir_ttl: Duration::from_secs(30),
            upload: UploadConfig::default(),
            read_only: false,
            read_cache: 64 << 20,
            max_readahead: 32 << 20,
            write_back: None,
            spill: None,
            allow_plain: false,
        }
    }
}

/// Attribute changes requested by `setattr`.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
}

/// One entry of a directory read.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: Kind,
}

/// Statistics for `statfs` (S3 has no capacity; report a large, constant one).
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// What a read returns: a slice of a cached block (no copy) or a buffer of its own (data
/// from several blocks, or from a file being written). Both are locked memory.
pub enum ReadData {
    Block(Arc<LockedBuf>, std::ops::Range<usize>),
    Owned(LockedBuf),
}

impl std::fmt::Debug for ReadData {
    /// Length only: the bytes are plaintext.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadData({} bytes)", self.len())
    }
}

impl std::ops::Deref for ReadData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Block(b, r) => &b[r.clone()],
            ReadData::Owned(b) => b,
        }
    }
}

/// How long an attribute change of a closed file waits before its CopyObject. rsync sets the
/// times of its temporary file right after closing it and renames it at once: the rename's
/// copy then carries the times, and a file costs three requests instead of four.
pub const META_DELAY: Duration = Duration::from_millis(100);

/// Longest file name POSIX tools expect.
pub const NAME_MAX: usize = 255;

/// The log line for an object stored without SSE-C (see [`Fs::check_sealed`]).
const PLAIN_REFUSED: &str = "object is stored without SSE-C, so anyone with write access to the bucket could have put it: not served (EACCES). If it is yours, `ssecfs rotate --adopt-plain --to KEY BUCKET` seals it under your key server-side, or mount with --allow-plain to read it";
const PLAIN_READ_ONLY: &str = "object is stored without SSE-C: --allow-plain serves it read-only (`ssecfs rotate --adopt-plain --to KEY BUCKET` seals it under your key)";

fn check_name(name: &str) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(FsError::Invalid("file name"));
    }
    Ok(())
}

/// Is this listing name one a path can hold?
fn valid_listed_name(name: &str) -> bool {
    check_name(name).is_ok()
}

/// The filesystem state shared by every request: the configuration, the store, and the parts.
pub struct Fs {
    cfg: FsConfig,
    store: Arc<dyn ObjectStore>,
    wctx: Arc<WriteContext>,
    /// Renames and unlinks hold this exclusively from their first server request to their
    /// table update, so two of them never interleave (the server and the table would end up
    /// naming different objects), and a read that finds its object changed or gone waits
    /// (shared) for an in-flight one before deciding what it is reading.
    namespace: tokio::sync::RwLock<()>,
    names: Namespace,
    handles: Handles,
    files: Files,
    wb: WriteBackQueue,
    meta: Persister,
    /// Renames of stored files, applied in the background; also the store all parts use.
    moves: Arc<Moves>,
    me: Weak<Fs>,
}

impl Fs {
    /// A filesystem over `store`, with plaintext buffers from `arena`.
    pub fn new(cfg: FsConfig, store: Arc<dyn ObjectStore>, arena: Arena) -> Arc<Fs> {
        Arc::new_cyclic(|me| {
            // every part talks to the store through the rename queue (see `moves.rs`)
            let moves = Moves::new(store, cfg.upload.part_size, me.clone());
            let store: Arc<dyn ObjectStore> = moves.clone();
            let cache = Arc::new(
                BlockCache::new(store.clone(), arena.clone(), cfg.read_cache)
                    .with_spill(cfg.spill.clone()),
            );
            Fs {
                names: Namespace::new(&cfg, store.clone(), cache.clone()),
                wctx: Arc::new(WriteContext {
                    store: store.clone(),
                    arena,
                    cache,
                    config: cfg.upload,
                    upload_slots: Arc::new(Semaphore::new(cfg.upload.part_concurrency.max(1) * 2)),
                    spill: cfg.spill.clone(),
                }),
                store,
                moves,
                namespace: tokio::sync::RwLock::new(()),
                handles: Handles::new(),
                files: Files::default(),
                wb: WriteBackQueue::new(cfg.write_back),
                meta: Persister::default(),
                me: me.clone(),
                cfg,
            }
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// The arena holding all plaintext.
    pub fn arena(&self) -> &Arena {
        &self.wctx.arena
    }

    fn writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// `ino`'s object key for a log line, or "inode N" when it has none any more.
    pub fn describe(&self, ino: u64) -> String {
        self.names
            .file_key(ino)
            .unwrap_or_else(|_| format!("inode {ino}"))
    }

    /// An object stored without SSE-C is not this key holder's: anyone with write access to
    /// the bucket could have put it. Refused (EACCES) unless `--allow-plain`, and then only
    /// for reading; it can still be listed, stat'ed and unlinked.
    fn check_sealed(&self, ino: u64, node: &Node, write: bool) -> FsResult<()> {
        if node.sealing != Sealing::Plain || !node.remote {
            return Ok(());
        }
        if !self.cfg.allow_plain {
            self.names.warn_once(&self.describe(ino), PLAIN_REFUSED);
            return Err(FsError::PlainObject);
        }
        if write {
            self.names.warn_once(&self.describe(ino), PLAIN_READ_ONLY);
            return Err(FsError::PlainObject);
        }
        Ok(())
    }

    /// Find `name` in `parent` on the server (or in fresh caches) without touching lookup
    /// counts. A node whose attributes are not on the server yet is kept as it is: the
    /// server's are older.
    async fn resolve(&self, parent: u64, name: &str) -> FsResult<u64> {
        check_name(name)?;
        let pinned = |ino| self.meta.is_pending(ino);
        if let Some(ino) = self.names.trusted_child(parent, name, pinned)? {
            return Ok(ino);
        }
        self.names.find(parent, name).await
    }

    // ----- operations ---------------------------------------------------------------

    /// Look up `name` in `parent`; counts a kernel reference.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<(u64, Attr)> {
        let ino = self.resolve(parent, name).await?;
        let attr = self.names.update(ino, |n| {
            n.lookups += 1;
            n.attr.clone()
        });
        Ok((
            ino,
            self.names.with_links(ino, attr.ok_or(FsError::NotFound)?),
        ))
    }

    /// Drop `n` kernel references.
    pub fn forget(&self, ino: u64, n: u64) {
        // a node with changes not yet on the server stays until they are
        let busy = self.files.contains(ino) || self.meta.is_pending(ino);
        self.names.forget(ino, n, busy);
    }

    /// Current attributes.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let attr = self.current_attr(ino).await?;
        Ok(self.names.with_links(ino, attr))
    }

    /// The node's attributes, asked of the server again once they are stale.
    async fn current_attr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.names.node(ino)?;
        if ino == ROOT
            || node.fresh_until > std::time::Instant::now()
            || node.open > 0
            || !node.remote
        {
            return Ok(node.attr);
        }
        // Re-validate through the parent.
        match self.resolve(node.parent, &node.name).await {
            Ok(new) if new == ino => Ok(self.names.node(ino)?.attr),
            Ok(_) | Err(FsError::NotFound) => Ok(node.attr), // gone or replaced: keep serving what the kernel holds
            Err(e) => Err(e),
        }
    }

    /// Open a file; `truncate` for O_TRUNC.
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> FsResult<u64> {
        let node = self.names.node(ino)?;
        if node.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        self.check_sealed(ino, &node, write)?;
        if write {
            self.writable()?;
        }
        self.retry_failed_release(ino, truncate && write).await?;
        if truncate && write {
            let f = self.dirty_file(ino).await?;
            let target = self.names.target(ino)?;
            let mut held = f.lock().await;
            held.truncate(&self.wctx, &target, 0).await?;
            // recorded while the state is held, as `write` does: a write let in after it
            // records its own size last
            self.names.update(ino, |n| {
                n.attr.size = 0;
                n.attr.mtime = SystemTime::now();
                n.attr.ctime = n.attr.mtime;
            });
        }
        self.names.update(ino, |n| {
            n.open += 1;
            n.writers += u32::from(write);
        });
        Ok(self.handles.open_file(write))
    }

    /// Create and open a new file.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(u64, Attr, u64)> {
        self.writable()?;
        check_name(name)?;
        let existed_remote = match self.resolve(parent, name).await {
            Ok(ino) => {
                let n = self.names.node(ino)?;
                if n.attr.kind == Kind::Dir {
                    return Err(FsError::IsDir);
                }
                n.remote
            }
            Err(FsError::NotFound) => false,
            Err(e) => return Err(e),
        };
        let attr = Attr::new(Kind::File, (mode & 0o7777) as u16, uid, gid);
        let mut node = self.names.new_node(attr.clone(), existed_remote);
        node.lookups = 1;
        node.open = 1;
        node.writers = 1;
        let ino = self.names.table().upsert(parent, name, node);
        self.files
            .insert(ino, FileContent::new(None, &self.cfg.upload));
        let entry = Namespace::entry_of(&attr, "");
        self.names.listing_update(parent, name, Some(entry));
        self.names.entries_changed(parent);
        Ok((ino, attr, self.handles.open_file(true)))
    }

    /// Read up to `size` bytes at `offset` into a locked buffer.
    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        match self.files.get(ino) {
            Some(file) => self.read_from_state(ino, file, offset, size).await,
            None => self.read_from_object(ino, fh, offset, size).await,
        }
    }

    /// Write `data` at `offset`.
    pub async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.writable()?;
        if let Some(wb) = self.cfg.write_back {
            self.wb.wait_for_room(wb.max_pending).await;
        }
        let file = self.dirty_file(ino).await?;
        // The new mtime first: a multipart upload this write starts carries the metadata of
        // `target`, and is kept as it is when only times moved since (see FileContent::flush).
        self.names.update(ino, |n| {
            n.attr.mtime = SystemTime::now();
            n.attr.ctime = n.attr.mtime;
        });
        let target = self.names.target(ino)?;
        let mut f = file.clone().lock_owned().await;
        let was_clean = !f.is_dirty();
        if let Err(e) = f.write(&self.wctx, &target, offset, data).await {
            f = self.rebuilt_after(ino, &file, f, was_clean, e).await?;
            let target = self.names.target(ino)?;
            f.write(&self.wctx, &target, offset, data).await?;
        }
        // recorded before the state is let go: whoever takes it next (an attribute copy) and
        // then reads the inode finds the size this state has
        let size = f.size();
        self.names.update(ino, |n| n.attr.size = size);
        drop(f);
        Ok(data.len() as u32)
    }

    /// `close()` of one descriptor: make the file durable and report the outcome (default),
    /// or schedule its upload (write-back), reporting an earlier upload's failure.
    pub async fn flush(&self, ino: u64) -> FsResult<()> {
        self.close_ino(ino).await
    }

    /// `fsync()`: upload now and wait, in both modes.
    pub async fn fsync(&self, ino: u64) -> FsResult<()> {
        if let Some(e) = self.wb.take_failure(ino) {
            tracing::warn!(ino, error = %e, "reporting an earlier failed upload");
        }
        self.persist_metadata(ino).await?;
        self.upload_ino(ino).await?;
        // the file's rename too (POSIX asks it of the directory; users of fsync expect it)
        self.moves.settle(&self.names.file_key(ino)?).await?;
        Ok(())
    }

    /// `fsyncdir()`: the directory's own pending attributes and the renames of this mount are
    /// stored (all of them: a rename touches two directories, and storing the others costs
    /// nothing the next sync would not).
    pub async fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        self.persist_metadata(ino).await?;
        match self.moves.settle_all().await {
            0 => Ok(()),
            n => Err(FsError::Lost(format!(
                "{n} rename(s) could not be stored; the files are on the server under their old names"
            ))),
        }
    }

    /// Last close of a handle: upload anything left and free the file's memory. Its failure
    /// is kept for the next open, close, fsync or unmount (the kernel drops a release's answer).
    pub async fn release(&self, ino: u64, fh: u64) -> FsResult<()> {
        let writer = self.handles.release(fh);
        let last = self
            .names
            .update(ino, |n| {
                n.open = n.open.saturating_sub(1);
                n.writers = n.writers.saturating_sub(u32::from(writer));
                n.open == 0
            })
            .unwrap_or(true);
        if !last {
            return Ok(());
        }
        match self.close_ino(ino).await {
            Ok(()) => self.drop_if_closed(ino),
            Err(e) => {
                // No application sees a release's answer (pages written through mmap after
                // close are uploaded here): say which file, and report it at its next open,
                // close, fsync or unmount, while the data waits in memory for that retry.
                let path = self.describe(ino);
                tracing::error!(ino, path = %path, error = %e, "upload at the last release failed; the data stays in memory and the failure is reported on the next open, close, fsync or unmount");
                self.wb.record_failure(ino, e);
            }
        }
        Ok(())
    }

    /// Open a directory: take its listing (cached while fresh) and start HEADs of its files.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let node = self.names.node(ino)?;
        if node.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let listing = match self.names.fresh_listing(ino) {
            Some(l) => l,
            None => self.names.list_dir(ino).await?,
        };
        let entries = self.names.dir_entries(ino, node.parent, &listing);
        Ok(self.handles.open_dir(entries))
    }

    /// Entries of an open directory from `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        self.handles.dir_entries(fh, offset)
    }

    /// Close a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.handles.release(fh);
    }

    /// Change attributes (truncate, chmod, chown, utimens).
    pub async fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Attr> {
        self.writable()?;
        let node = self.names.node(ino)?;
        // storing attributes copies the object under this mount's key: not for a plain one
        self.check_sealed(ino, &node, true)?;
        let now = SystemTime::now();
        let mut truncated_state = None;
        if let Some(size) = set.size {
            match node.attr.kind {
                Kind::File => {}
                Kind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("only a regular file has a size to set")),
            }
            let file = self.dirty_file(ino).await?;
            let target = self.names.target(ino)?;
            let mut held = file.lock_owned().await;
            held.truncate(&self.wctx, &target, size).await?;
            truncated_state = Some(held); // until the new size is recorded, as `write` does
        }
        // Applied to the inode as it is now, not to `node`: a truncate waited above, and a
        // chmod or a write of another process meanwhile must not be undone by this one.
        let (attr, meta_changed) = self
            .names
            .update(ino, |n| {
                let (mut attr, meta_changed) = set.applied_to(&n.attr, now);
                if let Some(size) = set.size {
                    attr.size = size;
                    attr.mtime = set.mtime.unwrap_or(now);
                    attr.ctime = now;
                }
                n.attr = attr.clone();
                (attr, meta_changed)
            })
            .ok_or(FsError::BadHandle)?;
        drop(truncated_state);
        let truncated = set.size.is_some();
        self.persist_attr_change(ino, &node, &attr, meta_changed, truncated)
            .await?;
        Ok(attr)
    }

    /// Make a directory (an s3fs-style `name/` marker).
    pub async fn mkdir(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(u64, Attr)> {
        self.writable()?;
        self.must_not_exist(parent, name).await?;
        let key = format!("{}/", self.names.child_key(parent, name)?);
        let attr = Attr::new(Kind::Dir, (mode & 0o7777) as u16, uid, gid);
        self.store
            .put(&key, Bytes::new(), &attr.to_metadata())
            .await?;
        self.names.forget_head(&key);
        let mut node = self.names.new_node(attr.clone(), true);
        node.lookups = 1;
        // A new directory is empty: its listing is complete.
        let ino = self.names.insert(parent, name, node, true);
        self.names.entries_changed(parent);
        Ok((ino, attr))
    }

    /// `EEXIST` when `parent/name` exists (mkdir, symlink).
    async fn must_not_exist(&self, parent: u64, name: &str) -> FsResult<()> {
        match self.resolve(parent, name).await {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Remove an empty directory.
    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let ino = self.resolve(parent, name).await?;
        if self.names.node(ino)?.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.names.dir_is_empty(ino).await? {
            return Err(FsError::NotEmpty);
        }
        let key = self.names.dir_prefix(ino)?;
        match self.store.delete(&key).await {
            Ok(()) | Err(S3Error::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        self.names.forget_head(&key);
        self.names.remove(ino, parent, name);
        self.names.entries_changed(parent);
        Ok(())
    }

    /// Remove a file, symlink or special file.
    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let _ns = self.namespace.write().await;
        let ino = self.resolve(parent, name).await?;
        let node = self.names.node(ino)?;
        if node.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let key = self.names.file_key(ino)?;
        if node.remote {
            match self.store.delete(&key).await {
                Ok(()) | Err(S3Error::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(file) = self.files.get(ino) {
            file.lock().await.discard(&self.wctx).await;
        }
        self.meta.settle(ino);
        self.names.forget_head(&key);
        self.wctx.cache.invalidate(&key);
        self.names.remove(ino, parent, name);
        self.names.entries_changed(parent);
        Ok(())
    }

    /// Rename a file, symlink or whole directory (see `rename.rs`: copies, then deletes).
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        self.writable()?;
        check_name(new_name)?;
        let _ns = self.namespace.write().await;
        let checked = self
            .rename_check(parent, name, new_parent, new_name, no_replace)
            .await?;
        let Some((ino, dst)) = checked else {
            return Ok(());
        };
        if self.names.node(ino)?.attr.kind == Kind::Dir {
            self.rename_dir(ino, new_parent, new_name, dst).await?;
        } else {
            self.rename_file(ino, new_parent, new_name, dst).await?;
        }
        self.names
            .moved(ino, (parent, name), (new_parent, new_name))?;
        self.names.entries_changed(parent);
        self.names.entries_changed(new_parent);
        Ok(())
    }

    /// Filesystem statistics.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: 1 << 40,
            bfree: 1 << 40,
            files: 1 << 40,
            ffree: 1 << 40,
            bsize: 4096,
            namelen: NAME_MAX as u32,
        }
    }
}

impl SetAttr {
    /// `attr` with these changes but the size's, at `now`, and whether its metadata changed
    /// (then the ctime is `now`).
    fn applied_to(&self, attr: &Attr, now: SystemTime) -> (Attr, bool) {
        let mut new = attr.clone();
        if let Some(m) = self.mode {
            new.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = self.uid {
            new.uid = u;
        }
        if let Some(g) = self.gid {
            new.gid = g;
        }
        if let Some(t) = self.mtime {
            new.mtime = t;
        }
        if let Some(t) = self.atime {
            new.atime = t;
        }
        let as_stored = |a: &Attr| {
            Attr {
                size: 0,
                ctime: now,
                ..a.clone()
            }
            .to_metadata()
        };
        let meta_changed = as_stored(&new) != as_stored(attr);
        if meta_changed {
            new.ctime = now;
        }
        (new, meta_changed)
    }
}

mod pending;
pub use pending::{Pending, UploadAll};
#[cfg(test)]
mod moves_tests;
mod nodes;
#[cfg(test)]
mod posix_tests;
#[cfg(test)]
mod read_tests;
#[cfg(test)]
mod sweep_tests;
#[cfg(test)]
mod tests;
