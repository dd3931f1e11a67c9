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

pub mod attr;
pub mod error;
pub mod inode;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{OnceCell, Semaphore};

use crate::cache::arena::{Arena, LockedBuf};
use crate::cache::blocks::{BlockCache, ObjectRef, LARGE_BLOCK, SMALL_BLOCK};
use crate::cache::spill::Spill;
use crate::s3::{ObjectInfo, ObjectStore, S3Error, S3Result, Sealing};
use crate::upload::file::{Target, WriteContext};
use crate::upload::{DirtyFile, UploadConfig};
use attr::{Attr, Defaults, Kind};
use error::{FsError, FsResult};
use inode::{Entry, Listing, Node, Table, ROOT};

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

/// Per-handle sequential-read detection.
#[derive(Debug, Default, Clone, Copy)]
struct ReadAhead {
    next: u64,
    window: u64,
}

enum Handle {
    File { ra: ReadAhead },
    Dir { entries: Arc<Vec<DirEntry>> },
}

type HeadCell = Arc<OnceCell<S3Result<ObjectInfo>>>;

/// The filesystem state shared by every request.
pub struct Fs {
    cfg: FsConfig,
    store: Arc<dyn ObjectStore>,
    wctx: Arc<WriteContext>,
    table: Mutex<Table>,
    /// Renames and unlinks hold this exclusively from their first server request to their
    /// table update, so two of them never interleave (the server and the table would end up
    /// naming different objects), and a read that finds its object changed or gone waits
    /// (shared) for an in-flight one before deciding what it is reading.
    namespace: tokio::sync::RwLock<()>,
    files: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirtyFile>>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    heads: Mutex<HashMap<String, (Instant, HeadCell)>>,
    prefetch_slots: Arc<Semaphore>,
    warned: Mutex<HashSet<String>>,
    /// Write-back state: files waiting for their delayed upload, failures to report.
    pending: Mutex<HashSet<u64>>,
    pending_bytes: AtomicU64,
    pending_drained: tokio::sync::Notify,
    failed_uploads: Mutex<HashMap<u64, FsError>>,
    write_back_slots: Arc<Semaphore>,
    /// Closed files whose attributes (chmod, chown, utimens) changed but are not on the
    /// server yet: written [`META_DELAY`] later, or carried by the copy of a rename made
    /// meanwhile, or on close, fsync and unmount.
    meta_pending: Mutex<HashSet<u64>>,
    /// Attribute stores under way (see [`MetaStore`]): `flush_all` waits for them, else the
    /// runtime's shutdown after it could cancel one that had already left `meta_pending`.
    meta_in_flight: Mutex<usize>,
    meta_settled: tokio::sync::Notify,
    me: std::sync::Weak<Fs>,
}

/// One attribute store under way, counted in `Fs::meta_in_flight` from before its inode
/// leaves `meta_pending` until it has finished (or failed and gone back).
struct MetaStore<'a>(&'a Fs);

impl<'a> MetaStore<'a> {
    fn start(fs: &'a Fs) -> MetaStore<'a> {
        *fs.meta_in_flight.lock().unwrap() += 1;
        MetaStore(fs)
    }
}

impl Drop for MetaStore<'_> {
    fn drop(&mut self) {
        let mut n = self.0.meta_in_flight.lock().unwrap();
        *n -= 1;
        if *n == 0 {
            self.0.meta_settled.notify_waiters();
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

impl Fs {
    /// A filesystem over `store`, with plaintext buffers from `arena`.
    pub fn new(cfg: FsConfig, store: Arc<dyn ObjectStore>, arena: Arena) -> Arc<Fs> {
        let cache = Arc::new(
            BlockCache::new(store.clone(), arena.clone(), cfg.read_cache)
                .with_spill(cfg.spill.clone()),
        );
        let mut root = Attr::new(
            Kind::Dir,
            cfg.defaults.dir_perm,
            cfg.defaults.uid,
            cfg.defaults.gid,
        );
        root.mtime = SystemTime::now();
        let write_back_slots = Arc::new(Semaphore::new(
            cfg.write_back.map_or(1, |w| w.concurrency.max(1)),
        ));
        Arc::new_cyclic(|me| Fs {
            pending: Mutex::default(),
            pending_bytes: AtomicU64::new(0),
            pending_drained: tokio::sync::Notify::new(),
            failed_uploads: Mutex::default(),
            write_back_slots,
            meta_pending: Mutex::default(),
            meta_in_flight: Mutex::new(0),
            meta_settled: tokio::sync::Notify::new(),
            me: me.clone(),
            wctx: Arc::new(WriteContext {
                store: store.clone(),
                arena,
                cache,
                config: cfg.upload,
                upload_slots: Arc::new(Semaphore::new(cfg.upload.part_concurrency.max(1) * 2)),
                spill: cfg.spill.clone(),
            }),
            store,
            table: Mutex::new(Table::new(root)),
            namespace: tokio::sync::RwLock::new(()),
            files: Mutex::default(),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            heads: Mutex::default(),
            prefetch_slots: Arc::new(Semaphore::new(32)),
            warned: Mutex::default(),
            cfg,
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

    // ----- keys and nodes -------------------------------------------------------------

    fn path_of(&self, ino: u64) -> FsResult<String> {
        self.table
            .lock()
            .unwrap()
            .path(ino)
            .ok_or(FsError::BadHandle)
    }

    /// Object key of a file or symlink.
    fn file_key(&self, ino: u64) -> FsResult<String> {
        Ok(format!("{}{}", self.cfg.prefix, self.path_of(ino)?))
    }

    /// Key prefix of a directory's contents (also its marker object's key).
    fn dir_prefix(&self, ino: u64) -> FsResult<String> {
        let p = self.path_of(ino)?;
        Ok(if p.is_empty() {
            self.cfg.prefix.clone()
        } else {
            format!("{}{p}/", self.cfg.prefix)
        })
    }

    fn child_key(&self, parent: u64, name: &str) -> FsResult<String> {
        Ok(format!("{}{name}", self.dir_prefix(parent)?))
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.table
            .lock()
            .unwrap()
            .get(ino)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    fn warn_once(&self, key: &str, what: &str) {
        if self.warned.lock().unwrap().insert(format!("{what}:{key}")) {
            tracing::warn!(object = key, "{what}");
        }
    }

    // ----- HEAD cache -----------------------------------------------------------------

    async fn head_cached(&self, key: &str) -> S3Result<ObjectInfo> {
        let cell = {
            let mut heads = self.heads.lock().unwrap();
            match heads.get(key) {
                Some((at, cell)) if at.elapsed() < self.cfg.attr_ttl => cell.clone(),
                _ => {
                    let cell: HeadCell = Arc::default();
                    heads.insert(key.to_owned(), (Instant::now(), cell.clone()));
                    cell
                }
            }
        };
        let r = cell
            .get_or_init(|| async { self.store.head(key).await })
            .await
            .clone();
        if matches!(&r, Err(e) if e.is_transient()) {
            self.heads.lock().unwrap().remove(key);
        }
        r
    }

    fn forget_head(&self, key: &str) {
        self.heads.lock().unwrap().remove(key);
    }

    fn forget_all_heads(&self) {
        self.heads.lock().unwrap().clear();
    }

    fn file_node(&self, info: &ObjectInfo, key: &str) -> Node {
        if info.sealing == Sealing::Plain {
            self.warn_once(key, PLAIN_REFUSED);
        }
        Node {
            parent: 0,
            name: String::new(),
            attr: Attr::from_object(
                info.size,
                info.last_modified,
                &info.metadata,
                false,
                &self.cfg.defaults,
            ),
            fresh_until: Instant::now() + self.cfg.attr_ttl,
            remote: true,
            etag: info.etag.clone(),
            sealing: info.sealing,
            lookups: 0,
            open: 0,
            link_target: None,
        }
    }

    fn new_node(&self, attr: Attr, remote: bool) -> Node {
        Node {
            parent: 0,
            name: String::new(),
            attr,
            fresh_until: inode::far_future(),
            remote,
            etag: String::new(),
            sealing: Sealing::PRIMARY,
            lookups: 0,
            open: 0,
            link_target: None,
        }
    }

    /// Directory node for `prefix/` from its marker (if any).
    async fn dir_node(&self, marker_key: &str) -> FsResult<Node> {
        let (attr, remote) = match self.head_cached(marker_key).await {
            Ok(info) => (
                Attr::from_object(
                    0,
                    info.last_modified,
                    &info.metadata,
                    true,
                    &self.cfg.defaults,
                ),
                true,
            ),
            Err(S3Error::NotFound | S3Error::WrongKey) => {
                let mut a = Attr::new(
                    Kind::Dir,
                    self.cfg.defaults.dir_perm,
                    self.cfg.defaults.uid,
                    self.cfg.defaults.gid,
                );
                a.mtime = SystemTime::UNIX_EPOCH;
                a.ctime = a.mtime;
                (a, false)
            }
            Err(e) => return Err(e.into()),
        };
        let mut n = self.new_node(attr, remote);
        n.fresh_until = Instant::now() + self.cfg.attr_ttl;
        Ok(n)
    }

    /// `f` of the listing of `parent`, if one was taken within `--attr-ttl`.
    fn with_fresh_listing<T>(&self, parent: u64, f: impl FnOnce(&Listing) -> T) -> Option<T> {
        let t = self.table.lock().unwrap();
        t.listings
            .get(&parent)
            .filter(|l| l.taken.elapsed() < self.cfg.dir_ttl)
            .map(f)
    }

    fn fresh_listing(&self, parent: u64) -> Option<Listing> {
        self.with_fresh_listing(parent, Listing::clone)
    }

    /// What a fresh listing of `parent` says of `name` (`Some(None)`: not there), without
    /// copying the listing: `ls -l` of a 10,000-entry directory looks up every name, and
    /// cloning the listing for each made it quadratic (12 s of CPU).
    fn fresh_listing_entry(&self, parent: u64, name: &str) -> Option<Option<Entry>> {
        self.with_fresh_listing(parent, |l| l.entries.get(name).cloned())
    }

    fn listing_update(&self, parent: u64, name: &str, entry: Option<Entry>) {
        let mut t = self.table.lock().unwrap();
        if let Some(l) = t.listings.get_mut(&parent) {
            match entry {
                Some(e) => {
                    l.entries.insert(name.to_owned(), e);
                }
                None => {
                    l.entries.remove(name);
                }
            }
        }
    }

    fn entry_of(attr: &Attr, etag: &str) -> Entry {
        Entry {
            kind: attr.kind,
            size: attr.size,
            mtime: attr.mtime,
            etag: etag.to_owned(),
        }
    }

    /// Find `name` in `parent` on the server (or in fresh caches) without touching lookup
    /// counts.
    async fn resolve(&self, parent: u64, name: &str) -> FsResult<u64> {
        check_name(name)?;
        {
            let t = self.table.lock().unwrap();
            let pnode = t.get(parent).ok_or(FsError::BadHandle)?;
            if pnode.attr.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            if let Some(ino) = t.child(parent, name) {
                let n = t.get(ino).expect("child exists");
                if n.fresh_until > Instant::now()
                    || n.open > 0
                    || !n.remote
                    || self.meta_pending.lock().unwrap().contains(&ino)
                {
                    // (attributes not yet on the server: the server's are older)
                    return Ok(ino);
                }
            }
        }
        let key = self.child_key(parent, name)?;
        let listed = self.fresh_listing_entry(parent, name);
        let node = match listed {
            Some(None) => return Err(FsError::NotFound),
            Some(Some(e)) if e.kind == Kind::Dir => self.dir_node(&format!("{key}/")).await?,
            Some(Some(_)) => match self.head_cached(&key).await {
                Ok(info) => self.file_node(&info, &key),
                Err(e) => return Err(self.head_error(&key, e)),
            },
            None => {
                let dir_prefix = format!("{key}/");
                let (head, list) = tokio::join!(
                    self.head_cached(&key),
                    self.store.list(&dir_prefix, Some("/"), None, Some(1))
                );
                let list = list?;
                if !list.objects.is_empty() || !list.prefixes.is_empty() {
                    if head.is_ok() {
                        self.warn_once(&key, "both a file and a directory have this name; the directory wins and the file is hidden");
                    }
                    self.dir_node(&dir_prefix).await?
                } else {
                    match head {
                        Ok(info)
                            if Attr::from_object(
                                0,
                                info.last_modified,
                                &info.metadata,
                                false,
                                &self.cfg.defaults,
                            )
                            .kind
                                == Kind::Dir =>
                        {
                            self.dir_node(&dir_prefix).await?
                        }
                        Ok(info) => self.file_node(&info, &key),
                        Err(e) => return Err(self.head_error(&key, e)),
                    }
                }
            }
        };
        Ok(self.table.lock().unwrap().upsert(parent, name, node))
    }

    fn head_error(&self, key: &str, e: S3Error) -> FsError {
        if matches!(e, S3Error::WrongKey) {
            self.warn_once(key, "no key given (--key-file) opens this object: it was written with another key; access denied");
        }
        e.into()
    }

    // ----- operations ---------------------------------------------------------------

    /// Look up `name` in `parent`; counts a kernel reference.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<(u64, Attr)> {
        let ino = self.resolve(parent, name).await?;
        let mut t = self.table.lock().unwrap();
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        n.lookups += 1;
        Ok((ino, n.attr.clone()))
    }

    /// Drop `n` kernel references.
    pub fn forget(&self, ino: u64, n: u64) {
        // a node with changes not yet on the server stays until they are
        let busy = self.files.lock().unwrap().contains_key(&ino)
            || self.meta_pending.lock().unwrap().contains(&ino);
        if !busy {
            self.table.lock().unwrap().forget(ino, n);
        } else if let Some(node) = self.table.lock().unwrap().get_mut(ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
    }

    /// Current attributes.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.node(ino)?;
        if ino == ROOT || node.fresh_until > Instant::now() || node.open > 0 || !node.remote {
            return Ok(node.attr);
        }
        // Re-validate through the parent.
        let (parent, name) = (node.parent, node.name.clone());
        match self.resolve(parent, &name).await {
            Ok(new) if new == ino => Ok(self.node(ino)?.attr),
            Ok(_) | Err(FsError::NotFound) => Ok(node.attr), // gone or replaced: keep serving what the kernel holds
            Err(e) => Err(e),
        }
    }

    fn target(&self, ino: u64) -> FsResult<Target> {
        let key = self.file_key(ino)?;
        let meta = self.node(ino)?.attr.to_metadata();
        Ok(Target { key, meta })
    }

    /// The in-memory state of a file being written, created from its object when needed.
    async fn dirty_file(&self, ino: u64) -> FsResult<Arc<tokio::sync::Mutex<DirtyFile>>> {
        if let Some(f) = self.files.lock().unwrap().get(&ino) {
            return Ok(f.clone());
        }
        let node = self.node(ino)?;
        if node.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let base = if node.remote {
            let key = self.file_key(ino)?;
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
        let mut files = self.files.lock().unwrap();
        Ok(files
            .entry(ino)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(DirtyFile::new(
                    base,
                    &self.cfg.upload,
                )))
            })
            .clone())
    }

    /// Upload `ino` if it has changes; the durable point of `close` and `fsync`.
    async fn flush_ino(&self, ino: u64) -> FsResult<()> {
        let Some(file) = self.files.lock().unwrap().get(&ino).cloned() else {
            return Ok(());
        };
        let mut f = file.lock().await;
        if !f.is_dirty() {
            return Ok(());
        }
        if !self.table.lock().unwrap().is_linked(ino) {
            // deleted while open: nothing to keep
            f.discard(&self.wctx).await;
            return Ok(());
        }
        let target = self.target(ino)?;
        let obj = f.flush(&self.wctx, &target).await?;
        let kept = f.take_kept_meta();
        self.forget_head(&obj.key);
        let (parent, name, entry) = {
            let mut t = self.table.lock().unwrap();
            let n = t.get_mut(ino).ok_or(FsError::BadHandle)?;
            n.remote = true;
            n.etag = obj.etag.clone();
            n.sealing = Sealing::PRIMARY;
            n.attr.size = obj.size;
            if let Some(m) = &kept {
                // what the server holds is what we report
                n.attr.mtime = m
                    .get("mtime")
                    .and_then(|v| attr::parse_epoch(v))
                    .unwrap_or(n.attr.mtime);
                n.attr.ctime = m
                    .get("ctime")
                    .and_then(|v| attr::parse_epoch(v))
                    .unwrap_or(n.attr.ctime);
            }
            (n.parent, n.name.clone(), Self::entry_of(&n.attr, &obj.etag))
        };
        self.listing_update(parent, &name, Some(entry));
        Ok(())
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, h);
        fh
    }

    /// Open a file; `truncate` for O_TRUNC.
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> FsResult<u64> {
        let node = self.node(ino)?;
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
            let target = self.target(ino)?;
            f.lock().await.truncate(&self.wctx, &target, 0).await?;
            let mut t = self.table.lock().unwrap();
            if let Some(n) = t.get_mut(ino) {
                n.attr.size = 0;
                n.attr.mtime = SystemTime::now();
            }
        }
        if let Some(n) = self.table.lock().unwrap().get_mut(ino) {
            n.open += 1;
        }
        Ok(self.new_handle(Handle::File {
            ra: ReadAhead::default(),
        }))
    }

    /// An upload that failed at the last release (pages written through mmap after close;
    /// no application saw that answer) is tried again at the next open, which reports the
    /// failure when it stays. An open that truncates replaces that data: it is only logged.
    async fn retry_failed_release(&self, ino: u64, truncating: bool) -> FsResult<()> {
        let Some(e) = self.failed_uploads.lock().unwrap().remove(&ino) else {
            return Ok(());
        };
        if truncating {
            let path = self.describe(ino);
            tracing::warn!(ino, path = %path, error = %e, "an open with O_TRUNC discards the data of an earlier failed upload");
            return Ok(());
        }
        self.flush_ino(ino).await.map_err(|_| e)
    }

    /// An object stored without SSE-C is not this key holder's: anyone with write access to
    /// the bucket could have put it. Refused (EACCES) unless `--allow-plain`, and then only
    /// for reading; it can still be listed, stat'ed and unlinked.
    /// HEAD of an object a directory rename is about to copy: a copy of a plain object would
    /// seal it under our key, an adoption `check_sealed` refuses for a file; so is this one.
    async fn sealed_head(&self, key: &str) -> FsResult<crate::s3::ObjectInfo> {
        let info = self.store.head(key).await?;
        if info.sealing == Sealing::Plain {
            self.warn_once(key, PLAIN_REFUSED);
            return Err(FsError::PlainObject);
        }
        Ok(info)
    }

    fn check_sealed(&self, ino: u64, node: &Node, write: bool) -> FsResult<()> {
        if node.sealing != Sealing::Plain || !node.remote {
            return Ok(());
        }
        if !self.cfg.allow_plain {
            self.warn_once(&self.describe(ino), PLAIN_REFUSED);
            return Err(FsError::PlainObject);
        }
        if write {
            self.warn_once(&self.describe(ino), PLAIN_READ_ONLY);
            return Err(FsError::PlainObject);
        }
        Ok(())
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
                let n = self.node(ino)?;
                if n.attr.kind == Kind::Dir {
                    return Err(FsError::IsDir);
                }
                n.remote
            }
            Err(FsError::NotFound) => false,
            Err(e) => return Err(e),
        };
        let attr = Attr::new(Kind::File, (mode & 0o7777) as u16, uid, gid);
        let mut node = self.new_node(attr.clone(), existed_remote);
        node.lookups = 1;
        node.open = 1;
        let ino = self.table.lock().unwrap().upsert(parent, name, node);
        self.files.lock().unwrap().insert(
            ino,
            Arc::new(tokio::sync::Mutex::new(DirtyFile::new(
                None,
                &self.cfg.upload,
            ))),
        );
        self.listing_update(parent, name, Some(Self::entry_of(&attr, "")));
        let fh = self.new_handle(Handle::File {
            ra: ReadAhead::default(),
        });
        Ok((ino, attr, fh))
    }

    /// Read up to `size` bytes at `offset` into a locked buffer.
    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        let file = self.files.lock().unwrap().get(&ino).cloned();
        if let Some(file) = file {
            let mut out = self.alloc_read(size).await?;
            let target = self.target(ino)?;
            let mut f = file.clone().lock_owned().await;
            let was_clean = !f.is_dirty();
            let n = match f.read(&self.wctx, &target, offset, &mut out).await {
                Ok(n) => n,
                Err(e) => {
                    let mut f = self.rebuilt_after(ino, &file, f, was_clean, e).await?;
                    f.read(&self.wctx, &target, offset, &mut out).await?
                }
            };
            out.set_len(n);
            return Ok(ReadData::Owned(out));
        }
        let node = self.node(ino)?;
        if node.attr.kind != Kind::File {
            return Err(FsError::IsDir);
        }
        if !node.remote && !self.table.lock().unwrap().is_linked(ino) {
            // Replaced or removed while open: its object is gone (or is another file's now);
            // answering 0 bytes would let the kernel fill the file with zeros.
            return Err(S3Error::PreconditionFailed.into());
        }
        if offset >= node.attr.size || !node.remote {
            return Ok(ReadData::Owned(self.wctx.arena.alloc(0).await?));
        }
        let mut obj = ObjectRef {
            key: self.file_key(ino)?,
            etag: node.etag.clone(),
            size: node.attr.size,
            sealing: node.sealing,
        };
        // Sequential or random? Grow the read-ahead window for sequential readers.
        let block = {
            let mut handles = self.handles.lock().unwrap();
            match handles.get_mut(&fh) {
                Some(Handle::File { ra, .. }) => {
                    let sequential = offset == ra.next || (offset == 0 && ra.next == 0);
                    ra.window = if sequential {
                        (ra.window * 2).clamp(LARGE_BLOCK * 2, self.cfg.max_readahead)
                    } else {
                        0
                    };
                    ra.next = offset + u64::from(size);
                    if sequential {
                        let from = (offset + u64::from(size)) / LARGE_BLOCK + 1;
                        let to = (offset + ra.window).div_ceil(LARGE_BLOCK) + 1;
                        self.wctx.cache.prefetch(&obj, LARGE_BLOCK, from, to);
                        LARGE_BLOCK
                    } else if self.wctx.cache.has_large(&obj, offset) {
                        LARGE_BLOCK
                    } else {
                        SMALL_BLOCK
                    }
                }
                _ => SMALL_BLOCK,
            }
        };
        match self.read_object(&obj, offset, size, block).await {
            Err(FsError::S3(e @ (S3Error::PreconditionFailed | S3Error::NotFound))) => {
                // A rename or unlink in this mount may be moving this file or replacing its
                // object: let it finish, then look again at what this inode is.
                let _ns = self.namespace.read().await;
                let (linked, now) = {
                    let t = self.table.lock().unwrap();
                    (t.is_linked(ino), t.get(ino).cloned())
                };
                let now = match now {
                    Some(n) if linked && n.remote => n,
                    // replaced or removed while open: never serve another file's bytes
                    _ => return Err(S3Error::PreconditionFailed.into()),
                };
                let key = self.file_key(ino)?;
                if key != obj.key || now.etag != obj.etag {
                    // moved or rewritten by this mount meanwhile: read what it is now
                    obj.key = key;
                    obj.etag = now.etag;
                    obj.size = now.attr.size;
                    return self.read_object(&obj, offset, size, block).await;
                }
                if matches!(e, S3Error::NotFound) {
                    return Err(e.into());
                }
                // The object changed on the server: refresh and read the new version.
                let now = self.refresh_object(ino, &obj.key).await?;
                obj.etag = now.etag;
                obj.size = now.size;
                self.read_object(&obj, offset, size, block).await
            }
            other => other,
        }
    }

    /// `obj[offset..offset+size)` from the block cache: straight from one block when it holds
    /// the whole range (sequential reads of block-aligned sizes), else copied together.
    async fn read_object(
        &self,
        obj: &ObjectRef,
        offset: u64,
        size: u32,
        block: u64,
    ) -> FsResult<ReadData> {
        let cache = &self.wctx.cache;
        if let Some((b, range)) = cache
            .within_one_block(obj, offset, u64::from(size), block)
            .await?
        {
            return Ok(ReadData::Block(b, range));
        }
        let mut out = self.alloc_read(size).await?;
        let n = cache.read(obj, offset, &mut out, block).await?;
        out.set_len(n);
        Ok(ReadData::Owned(out))
    }

    /// A read's reply buffer: the wait for it is bounded like a writer's.
    async fn alloc_read(&self, size: u32) -> FsResult<LockedBuf> {
        let wait = self.cfg.upload.memory_wait;
        Ok(self.wctx.arena.alloc_within(size as usize, wait).await?)
    }

    /// Write `data` at `offset`.
    pub async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.writable()?;
        if let Some(wb) = self.cfg.write_back {
            // Bounded crash window: wait while too much closed data awaits upload.
            while self.pending_bytes.load(Ordering::Acquire) > wb.max_pending {
                let drained = self.pending_drained.notified();
                if self.pending_bytes.load(Ordering::Acquire) <= wb.max_pending {
                    break;
                }
                drained.await;
            }
        }
        let file = self.dirty_file(ino).await?;
        // The new mtime first: a multipart upload this write starts carries the metadata of
        // `target`, and is kept as it is when only times moved since (see DirtyFile::flush).
        if let Some(n) = self.table.lock().unwrap().get_mut(ino) {
            n.attr.mtime = SystemTime::now();
        }
        let target = self.target(ino)?;
        let mut f = file.clone().lock_owned().await;
        let was_clean = !f.is_dirty();
        if let Err(e) = f.write(&self.wctx, &target, offset, data).await {
            f = self.rebuilt_after(ino, &file, f, was_clean, e).await?;
            let target = self.target(ino)?;
            f.write(&self.wctx, &target, offset, data).await?;
        }
        let size = f.size();
        drop(f);
        if let Some(n) = self.table.lock().unwrap().get_mut(ino) {
            n.attr.size = size;
        }
        Ok(data.len() as u32)
    }

    /// `close()` of one descriptor: make the file durable and report the outcome (default),
    /// or schedule its upload (write-back), reporting an earlier upload's failure.
    pub async fn flush(&self, ino: u64) -> FsResult<()> {
        self.close_ino(ino).await
    }

    /// `fsync()`: upload now and wait, in both modes.
    pub async fn fsync(&self, ino: u64) -> FsResult<()> {
        let earlier_failure = self.failed_uploads.lock().unwrap().remove(&ino);
        if let Some(e) = earlier_failure {
            tracing::warn!(ino, error = %e, "reporting an earlier failed upload");
        }
        self.flush_metadata(ino).await?;
        self.flush_ino(ino).await
    }

    async fn close_ino(&self, ino: u64) -> FsResult<()> {
        let earlier_failure = self.failed_uploads.lock().unwrap().remove(&ino);
        if let Some(e) = earlier_failure {
            // The data is still in memory: try once more now, report the failure if it stays.
            self.flush_ino(ino).await.map_err(|_| e)?;
        }
        match self.cfg.write_back {
            None => {
                self.flush_metadata(ino).await?;
                self.flush_ino(ino).await
            }
            Some(wb) => {
                self.schedule_upload(ino, wb).await;
                Ok(())
            }
        }
    }

    /// Write-back: upload `ino` after the delay, unless already scheduled.
    async fn schedule_upload(&self, ino: u64, wb: WriteBack) {
        let Some(file) = self.files.lock().unwrap().get(&ino).cloned() else {
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
        if !self.pending.lock().unwrap().insert(ino) {
            return;
        }
        self.pending_bytes.fetch_add(bytes, Ordering::AcqRel);
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(wb.delay).await;
            let slot = me.write_back_slots.clone().acquire_owned().await;
            me.pending.lock().unwrap().remove(&ino);
            let result = me.flush_ino(ino).await;
            drop(slot);
            me.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
            me.pending_drained.notify_waiters();
            match result {
                Ok(()) => me.drop_if_closed(ino),
                Err(e) => {
                    tracing::error!(ino, error = %e, "write-back upload failed; the data stays in memory and the failure is reported on the next close, fsync or unmount");
                    me.failed_uploads.lock().unwrap().insert(ino, e);
                }
            }
        });
    }

    /// Free a file's memory once it is clean and no handle is open.
    fn drop_if_closed(&self, ino: u64) {
        let open = self.table.lock().unwrap().get(ino).map_or(0, |n| n.open);
        if open > 0 {
            return;
        }
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get(&ino) {
            if f.try_lock().is_ok_and(|f| !f.is_dirty()) {
                files.remove(&ino);
            }
        }
    }

    /// Last close of a handle: upload anything left and free the file's memory. Its failure
    /// is kept for the next open, close, fsync or unmount (the kernel drops a release's answer).
    pub async fn release(&self, ino: u64, fh: u64) -> FsResult<()> {
        self.handles.lock().unwrap().remove(&fh);
        let last = {
            let mut t = self.table.lock().unwrap();
            match t.get_mut(ino) {
                Some(n) => {
                    n.open = n.open.saturating_sub(1);
                    n.open == 0
                }
                None => true,
            }
        };
        if !last {
            return Ok(());
        }
        match self.close_ino(ino).await {
            Ok(()) => self.drop_if_closed(ino),
            Err(e) => {
                // No application sees a release's answer (pages written through mmap after
                // close are flushed here): say which file, and report it at its next open,
                // close, fsync or unmount, while the data waits in memory for that retry.
                let path = self.describe(ino);
                tracing::error!(ino, path = %path, error = %e, "upload at the last release failed; the data stays in memory and the failure is reported on the next open, close, fsync or unmount");
                self.failed_uploads.lock().unwrap().insert(ino, e);
            }
        }
        Ok(())
    }

    /// Open a directory: take its listing (cached while fresh) and start HEADs of its files.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let node = self.node(ino)?;
        if node.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let listing = match self.fresh_listing(ino) {
            Some(l) => l,
            None => self.list_dir(ino).await?,
        };
        let mut entries = vec![
            DirEntry {
                ino,
                name: ".".into(),
                kind: Kind::Dir,
            },
            DirEntry {
                ino: node.parent,
                name: "..".into(),
                kind: Kind::Dir,
            },
        ];
        {
            let mut t = self.table.lock().unwrap();
            for (name, e) in &listing.entries {
                let ino = match t.child(ino, name) {
                    Some(c) => c,
                    None => {
                        let mut attr = Attr::new(
                            e.kind,
                            if e.kind == Kind::Dir {
                                self.cfg.defaults.dir_perm
                            } else {
                                self.cfg.defaults.file_perm
                            },
                            self.cfg.defaults.uid,
                            self.cfg.defaults.gid,
                        );
                        attr.size = e.size;
                        attr.mtime = e.mtime;
                        attr.ctime = e.mtime;
                        let mut n = self.new_node(attr, true);
                        n.etag = e.etag.clone();
                        n.fresh_until = Instant::now(); // listing attrs are provisional
                        t.upsert(ino, name, n)
                    }
                };
                entries.push(DirEntry {
                    ino,
                    name: name.clone(),
                    kind: e.kind,
                });
            }
        }
        Ok(self.new_handle(Handle::Dir {
            entries: Arc::new(entries),
        }))
    }

    async fn list_dir(&self, ino: u64) -> FsResult<Listing> {
        let prefix = self.dir_prefix(ino)?;
        let mut entries = BTreeMap::new();
        let mut token = None;
        let mut files = Vec::new();
        loop {
            let page = self
                .store
                .list(&prefix, Some("/"), token.take(), None)
                .await?;
            for o in page.objects {
                // (the store checks that listed keys are under the prefix; never slice blindly)
                let Some(name) = o.key.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                if name.is_empty() {
                    continue; // the directory's own marker
                }
                if !valid_listed_name(name) {
                    self.warn_once(&o.key, "object name is not a valid path component; skipped");
                    continue;
                }
                files.push(o.key.clone());
                entries.insert(
                    name.to_owned(),
                    Entry {
                        kind: Kind::File,
                        size: o.size,
                        mtime: o.last_modified,
                        etag: o.etag,
                    },
                );
            }
            for p in page.prefixes {
                let Some(name) = p.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let name = name.trim_end_matches('/');
                if !valid_listed_name(name) {
                    self.warn_once(&p, "prefix is not a valid path component; skipped");
                    continue;
                }
                // a directory wins over a file of the same name
                entries.insert(
                    name.to_owned(),
                    Entry {
                        kind: Kind::Dir,
                        size: 0,
                        mtime: SystemTime::UNIX_EPOCH,
                        etag: String::new(),
                    },
                );
            }
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        // Files created here but not uploaded yet are part of the directory too.
        {
            let t = self.table.lock().unwrap();
            for (name, child) in t.children_of(ino) {
                if let Some(n) = t.get(child) {
                    if !n.remote || n.open > 0 {
                        entries.insert(name, Self::entry_of(&n.attr, &n.etag));
                    }
                }
            }
        }
        let listing = Listing {
            entries,
            taken: Instant::now(),
        };
        self.table
            .lock()
            .unwrap()
            .listings
            .insert(ino, listing.clone());
        self.prefetch_heads(files);
        Ok(listing)
    }

    /// Warm the HEAD cache for listed files, many at once, in the background.
    fn prefetch_heads(&self, keys: Vec<String>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for key in keys {
            if self
                .heads
                .lock()
                .unwrap()
                .get(&key)
                .is_some_and(|(at, _)| at.elapsed() < self.cfg.attr_ttl)
            {
                continue;
            }
            let cell: HeadCell = Arc::default();
            self.heads
                .lock()
                .unwrap()
                .insert(key.clone(), (Instant::now(), cell.clone()));
            let store = self.store.clone();
            let slots = self.prefetch_slots.clone();
            rt.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let _ = cell.get_or_init(|| async { store.head(&key).await }).await;
            });
        }
    }

    /// Entries of an open directory from `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        let handles = self.handles.lock().unwrap();
        match handles.get(&fh) {
            Some(Handle::Dir { entries }) => Ok(entries
                .iter()
                .enumerate()
                .skip(offset as usize)
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// Close a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Change attributes (truncate, chmod, chown, utimens).
    pub async fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Attr> {
        self.writable()?;
        let node = self.node(ino)?;
        // storing attributes copies the object under this mount's key: not for a plain one
        self.check_sealed(ino, &node, true)?;
        let mut attr = node.attr.clone();
        let now = SystemTime::now();
        if let Some(m) = set.mode {
            attr.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = set.uid {
            attr.uid = u;
        }
        if let Some(g) = set.gid {
            attr.gid = g;
        }
        if let Some(t) = set.mtime {
            attr.mtime = t;
        }
        let meta_changed = attr::Attr {
            size: 0,
            ctime: now,
            ..attr.clone()
        }
        .to_metadata()
            != attr::Attr {
                size: 0,
                ctime: now,
                ..node.attr.clone()
            }
            .to_metadata();
        if meta_changed {
            attr.ctime = now;
        }
        if let Some(size) = set.size {
            if attr.kind != Kind::File {
                return Err(FsError::IsDir);
            }
            let file = self.dirty_file(ino).await?;
            let target = self.target(ino)?;
            file.lock()
                .await
                .truncate(&self.wctx, &target, size)
                .await?;
            attr.size = size;
            attr.mtime = set.mtime.unwrap_or(now);
        }
        self.table
            .lock()
            .unwrap()
            .get_mut(ino)
            .ok_or(FsError::BadHandle)?
            .attr = attr.clone();
        let file = self.files.lock().unwrap().get(&ino).cloned();
        if let Some(file) = file {
            let mut f = file.lock().await;
            if f.is_dirty() || set.size.is_some() {
                // Folded into the upload that close() makes; a truncate(2) without an open
                // handle is made durable right now.
                if meta_changed {
                    f.mark_meta_changed();
                } else {
                    f.mark_dirty();
                }
                drop(f);
                if node.open == 0 {
                    self.close_ino(ino).await?;
                    self.drop_if_closed(ino);
                }
                return Ok(attr);
            }
        }
        if meta_changed {
            if attr.kind != Kind::Dir && node.remote {
                self.defer_metadata(ino).await?;
            } else {
                self.store_metadata(ino, &attr).await?;
            }
        }
        Ok(attr)
    }

    /// `ino`'s object key for a log line, or "inode N" when it has none any more.
    pub fn describe(&self, ino: u64) -> String {
        self.file_key(ino)
            .unwrap_or_else(|_| format!("inode {ino}"))
    }

    /// Write the attributes of closed file `ino` [`META_DELAY`] from now (see `meta_pending`).
    async fn defer_metadata(&self, ino: u64) -> FsResult<()> {
        if !self.meta_pending.lock().unwrap().insert(ino) {
            return Ok(()); // already scheduled; it will write the latest attributes
        }
        let Some(me) = self.me.upgrade() else {
            return self.flush_metadata(ino).await;
        };
        tokio::spawn(async move {
            tokio::time::sleep(META_DELAY).await;
            if let Err(e) = me.flush_metadata(ino).await {
                let path = me.describe(ino);
                tracing::error!(ino, path = %path, error = %e, "could not store changed attributes; retried on the next close, fsync or unmount");
            }
        });
        Ok(())
    }

    /// Until no attribute store is under way.
    async fn meta_stores_settled(&self) {
        loop {
            let settled = self.meta_settled.notified();
            if *self.meta_in_flight.lock().unwrap() == 0 {
                return;
            }
            settled.await;
        }
    }

    /// Store `ino`'s pending attribute change now, if it still has one. A file being written
    /// takes it into the upload its close makes; a removed file drops it. On failure it stays
    /// pending.
    async fn flush_metadata(&self, ino: u64) -> FsResult<()> {
        if !self.meta_pending.lock().unwrap().contains(&ino) {
            return Ok(()); // the common case, without waiting for a rename in progress
        }
        let _ns = self.namespace.read().await;
        let _counted = MetaStore::start(self);
        if !self.meta_pending.lock().unwrap().remove(&ino) {
            return Ok(());
        }
        let Ok(node) = self.node(ino) else {
            return Ok(());
        };
        if !node.remote || !self.table.lock().unwrap().is_linked(ino) {
            return Ok(());
        }
        let result = self.store_metadata(ino, &node.attr).await;
        if result.is_err() {
            self.meta_pending.lock().unwrap().insert(ino);
        } else if !self.files.lock().unwrap().contains_key(&ino) {
            // the kernel may have forgotten the inode meanwhile (see `forget`)
            self.table.lock().unwrap().forget(ino, 0);
        }
        result
    }

    /// `ino`'s in-memory state, locked, when it has one. This mount holds it while it replaces
    /// the file's object server-side (attribute copy, rename): a write arriving meanwhile
    /// waits, then builds on the new object instead of fetching the replaced one (whose ETag
    /// no longer matches: the write would fail with ESTALE).
    async fn lock_file(&self, ino: u64) -> Option<tokio::sync::OwnedMutexGuard<DirtyFile>> {
        let file = self.files.lock().unwrap().get(&ino).cloned()?;
        Some(file.lock_owned().await)
    }

    /// The file's object was replaced server-side by this mount (attribute copy, rename)
    /// while its in-memory state, held, is clean: base that state on the new object.
    fn rebase_clean(&self, held: Option<&mut DirtyFile>, obj: ObjectRef) {
        if let Some(f) = held {
            if !f.is_dirty() {
                *f = DirtyFile::new(Some(obj), &self.cfg.upload);
            }
        }
    }

    /// After `e` from `ino`'s in-memory state `f` (held, and clean before the failed call
    /// when `was_clean`): when nothing was changed there yet and the object it was built on
    /// has been replaced (by another client, or by a copy of this mount begun before the
    /// state existed), rebuild it on the file's object as it is now and hand it back to try
    /// again; otherwise `e`. A file replaced or removed while open stays ESTALE.
    async fn rebuilt_after(
        &self,
        ino: u64,
        file: &Arc<tokio::sync::Mutex<DirtyFile>>,
        f: tokio::sync::OwnedMutexGuard<DirtyFile>,
        was_clean: bool,
        e: FsError,
    ) -> FsResult<tokio::sync::OwnedMutexGuard<DirtyFile>> {
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
            if !self.table.lock().unwrap().is_linked(ino) {
                return Err(S3Error::PreconditionFailed.into());
            }
            let key = self.file_key(ino)?;
            self.refresh_object(ino, &key).await?
        };
        let mut f = file.clone().lock_owned().await;
        if !f.is_dirty() {
            *f = DirtyFile::new(Some(now), &self.cfg.upload);
        }
        Ok(f)
    }

    /// What `ino`'s object `key` is on the server now (after a precondition failure): its
    /// ETag and size, recorded in the inode too.
    async fn refresh_object(&self, ino: u64, key: &str) -> FsResult<ObjectRef> {
        self.forget_head(key);
        let info = self.store.head(key).await?;
        if let Some(n) = self.table.lock().unwrap().get_mut(ino) {
            n.etag = info.etag.clone();
            n.attr.size = info.size;
            n.sealing = info.sealing;
        }
        Ok(ObjectRef {
            key: key.to_owned(),
            etag: info.etag,
            size: info.size,
            sealing: info.sealing,
        })
    }

    /// Persist metadata of an unchanged node: CopyObject onto itself (files, symlinks) or a
    /// new marker (directories).
    async fn store_metadata(&self, ino: u64, attr: &Attr) -> FsResult<()> {
        let node = self.node(ino)?;
        if ino == ROOT && self.cfg.prefix.is_empty() {
            return Ok(()); // the bucket root has no marker to carry metadata
        }
        match attr.kind {
            Kind::Dir => {
                let key = self.dir_prefix(ino)?;
                self.store
                    .put(&key, Bytes::new(), &attr.to_metadata())
                    .await?;
                self.forget_head(&key);
                if let Some(n) = self.table.lock().unwrap().get_mut(ino) {
                    n.remote = true;
                }
            }
            Kind::File | Kind::Symlink => {
                if !node.remote {
                    return Ok(());
                }
                let mut held = self.lock_file(ino).await;
                if let Some(f) = held.as_deref_mut().filter(|f| f.is_dirty()) {
                    // being written: the upload its close makes carries the attributes
                    f.mark_meta_changed();
                    return Ok(());
                }
                let key = self.file_key(ino)?;
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
                self.forget_head(&key);
                self.wctx.cache.invalidate(&key);
                self.rebase_clean(
                    held.as_deref_mut(),
                    ObjectRef {
                        key: key.clone(),
                        etag: etag.clone(),
                        size: attr.size,
                        sealing: Sealing::PRIMARY,
                    },
                );
                if let Some(n) = self.table.lock().unwrap().get_mut(ino) {
                    n.etag = etag;
                    n.sealing = Sealing::PRIMARY;
                }
            }
        }
        Ok(())
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
        match self.resolve(parent, name).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let key = format!("{}/", self.child_key(parent, name)?);
        let attr = Attr::new(Kind::Dir, (mode & 0o7777) as u16, uid, gid);
        self.store
            .put(&key, Bytes::new(), &attr.to_metadata())
            .await?;
        self.forget_head(&key);
        let mut node = self.new_node(attr.clone(), true);
        node.lookups = 1;
        let ino = {
            let mut t = self.table.lock().unwrap();
            let ino = t.upsert(parent, name, node);
            // A new directory is empty: its listing is complete.
            t.listings.insert(
                ino,
                Listing {
                    entries: BTreeMap::new(),
                    taken: Instant::now(),
                },
            );
            ino
        };
        self.listing_update(parent, name, Some(Self::entry_of(&attr, "")));
        Ok((ino, attr))
    }

    /// Is the directory empty on the server and locally?
    async fn dir_is_empty(&self, ino: u64) -> FsResult<bool> {
        {
            let t = self.table.lock().unwrap();
            if t.children_of(ino)
                .iter()
                .any(|(_, c)| t.get(*c).is_some_and(|n| !n.remote))
            {
                return Ok(false);
            }
        }
        let prefix = self.dir_prefix(ino)?;
        let page = self.store.list(&prefix, None, None, Some(2)).await?;
        Ok(page.objects.iter().all(|o| o.key == prefix))
    }

    /// Remove an empty directory.
    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let ino = self.resolve(parent, name).await?;
        if self.node(ino)?.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.dir_is_empty(ino).await? {
            return Err(FsError::NotEmpty);
        }
        let key = self.dir_prefix(ino)?;
        match self.store.delete(&key).await {
            Ok(()) | Err(S3Error::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        self.forget_head(&key);
        let mut t = self.table.lock().unwrap();
        t.detach(ino);
        t.listings.remove(&ino);
        if let Some(l) = t.listings.get_mut(&parent) {
            l.entries.remove(name);
        }
        Ok(())
    }

    /// Remove a file or symlink.
    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let _ns = self.namespace.write().await;
        let ino = self.resolve(parent, name).await?;
        let node = self.node(ino)?;
        if node.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let key = self.file_key(ino)?;
        if node.remote {
            match self.store.delete(&key).await {
                Ok(()) | Err(S3Error::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let file = self.files.lock().unwrap().get(&ino).cloned();
        if let Some(file) = file {
            file.lock().await.discard(&self.wctx).await;
        }
        self.meta_pending.lock().unwrap().remove(&ino);
        self.forget_head(&key);
        self.wctx.cache.invalidate(&key);
        self.table.lock().unwrap().detach(ino);
        self.listing_update(parent, name, None);
        Ok(())
    }

    /// Make a symbolic link: an object whose body is the target, as s3fs stores them.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<(u64, Attr)> {
        self.writable()?;
        match self.resolve(parent, name).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let key = self.child_key(parent, name)?;
        let mut attr = Attr::new(Kind::Symlink, 0o777, uid, gid);
        attr.size = target.len() as u64;
        let etag = self
            .store
            .put(
                &key,
                Bytes::copy_from_slice(target.as_bytes()),
                &attr.to_metadata(),
            )
            .await?;
        self.forget_head(&key);
        let mut node = self.new_node(attr.clone(), true);
        node.etag = etag.clone();
        node.lookups = 1;
        node.link_target = Some(target.to_owned());
        let ino = self.table.lock().unwrap().upsert(parent, name, node);
        self.listing_update(parent, name, Some(Self::entry_of(&attr, &etag)));
        Ok((ino, attr))
    }

    /// Target of a symbolic link.
    pub async fn readlink(&self, ino: u64) -> FsResult<String> {
        let node = self.node(ino)?;
        if node.attr.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        if let Some(t) = node.link_target {
            return Ok(t);
        }
        let key = self.file_key(ino)?;
        let mut buf = self
            .wctx
            .arena
            .alloc(node.attr.size.clamp(1, 4096) as usize)
            .await?;
        let n = self
            .store
            .get_range(&key, 0, &mut buf, None, node.sealing)
            .await?;
        let target = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(n) = self.table.lock().unwrap().get_mut(ino) {
            n.link_target = Some(target.clone());
        }
        Ok(target)
    }

    /// Rename a file, symlink or whole directory. Files: CopyObject (both key trios) then
    /// delete. Directories: copy every object below, then delete the sources, so a failure
    /// half-way leaves every object readable under its old name or its new one.
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
        let ino = self.resolve(parent, name).await?;
        let node = self.node(ino)?;
        let dst = match self.resolve(new_parent, new_name).await {
            Ok(d) => Some(d),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if dst == Some(ino) {
            return Ok(());
        }
        if let Some(d) = dst {
            if no_replace {
                return Err(FsError::Exists);
            }
            let dn = self.node(d)?;
            match (node.attr.kind == Kind::Dir, dn.attr.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.dir_is_empty(d).await? => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        if node.attr.kind == Kind::Dir && self.table.lock().unwrap().is_within(new_parent, ino) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        if node.attr.kind == Kind::Dir {
            self.rename_dir(ino, new_parent, new_name, dst).await?;
        } else {
            self.rename_file(ino, new_parent, new_name, dst).await?;
        }
        let attr = self.node(ino)?.attr;
        let etag = self.node(ino)?.etag;
        {
            let mut t = self.table.lock().unwrap();
            t.rename(ino, new_parent, new_name);
            if let Some(l) = t.listings.get_mut(&parent) {
                l.entries.remove(name);
            }
        }
        self.listing_update(new_parent, new_name, Some(Self::entry_of(&attr, &etag)));
        self.forget_all_heads();
        Ok(())
    }

    async fn rename_file(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &str,
        dst: Option<u64>,
    ) -> FsResult<()> {
        // the copy would seal a plain object under this mount's key, adopting it unseen
        self.check_sealed(ino, &self.node(ino)?, true)?;
        let src_key = self.file_key(ino)?;
        let dst_key = self.child_key(new_parent, new_name)?;
        // A file being written whose object exists (or whose upload already started) is
        // made whole first, so the copy carries its current content; its state stays held
        // until the copy is its base (see `lock_file`).
        let mut held = loop {
            let remote = self.node(ino)?.remote;
            let held = self.lock_file(ino).await;
            if !held
                .as_deref()
                .is_some_and(|f| f.is_streaming() || (f.is_dirty() && remote))
            {
                break held;
            }
            drop(held);
            self.flush_ino(ino).await?;
        };
        let node = self.node(ino)?;
        if node.remote {
            let etag = crate::s3::copy_any_size(
                self.store.as_ref(),
                &crate::s3::CopyRequest {
                    src: &src_key,
                    dst: &dst_key,
                    meta: Some(&node.attr.to_metadata()),
                    src_sealing: node.sealing,
                },
                node.attr.size,
                self.cfg.upload.part_size,
            )
            .await?;
            // the copy carried the current attributes, pending ones included
            self.meta_pending.lock().unwrap().remove(&ino);
            self.delete_renamed(&src_key).await;
            self.wctx.cache.invalidate(&src_key);
            self.wctx.cache.invalidate(&dst_key);
            // The file's base object moved with it.
            self.rebase_clean(
                held.as_deref_mut(),
                ObjectRef {
                    key: dst_key.clone(),
                    etag: etag.clone(),
                    size: node.attr.size,
                    sealing: Sealing::PRIMARY,
                },
            );
            if let Some(n) = self.table.lock().unwrap().get_mut(ino) {
                n.etag = etag;
                n.sealing = Sealing::PRIMARY;
            }
        }
        drop(held);
        if let Some(d) = dst {
            if self.node(d)?.attr.kind == Kind::Dir {
                let _ = self.store.delete(&format!("{dst_key}/")).await;
            }
            let file = self.files.lock().unwrap().get(&d).cloned();
            if let Some(file) = file {
                file.lock().await.discard(&self.wctx).await;
            }
        }
        Ok(())
    }

    /// Delete a renamed object's old name once its copy exists. The copy *is* the rename:
    /// from then on the mount serves the new name, so a delete that fails (twice) is
    /// logged, not returned. Failing the rename would leave the mount naming an object it
    /// may have deleted already (an answer lost), and the worst a failed delete leaves is a
    /// second copy under the old name, never a lost file.
    async fn delete_renamed(&self, key: &str) {
        let mut result = self.store.delete(key).await;
        if result.is_err() {
            result = self.store.delete(key).await;
        }
        if let Err(e) = result {
            tracing::error!(object = key, error = %e, "renamed, but the old name could not be deleted: a copy of the file stays under it");
        }
    }

    async fn rename_dir(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &str,
        dst: Option<u64>,
    ) -> FsResult<()> {
        // Everything written below the directory goes to the server first, and the state of
        // each file in memory below stays held until the copies are its bases (see `lock_file`).
        let mut held = loop {
            let mut below: Vec<u64> = {
                let t = self.table.lock().unwrap();
                let files = self.files.lock().unwrap();
                files
                    .keys()
                    .copied()
                    .filter(|f| t.is_within(*f, ino))
                    .collect()
            };
            below.sort_unstable();
            for &f in &below {
                self.flush_ino(f).await?;
            }
            let mut held = Vec::new();
            for f in below {
                held.extend(self.lock_file(f).await);
            }
            if held.iter().all(|f| !f.is_dirty() && !f.is_streaming()) {
                break held;
            }
        };
        let src = self.dir_prefix(ino)?;
        let dst_prefix = format!("{}/", self.child_key(new_parent, new_name)?);
        let objects = self.store.list_all(&src, None).await?.objects;
        if !objects.iter().any(|o| o.key == src) {
            // no marker: write one at the destination so the (maybe empty) directory exists
            let attr = self.node(ino)?.attr;
            self.store
                .put(&dst_prefix, Bytes::new(), &attr.to_metadata())
                .await?;
        }
        // Copy all, then delete all.
        let results: Vec<FsResult<(String, ObjectRef)>> =
            futures::future::join_all(objects.iter().map(|o| {
                let to = format!("{dst_prefix}{}", &o.key[src.len()..]);
                async move {
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
                        // Most objects are under the primary key; the others need HEAD to
                        // find theirs (and their metadata, re-tagged with the new key).
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
                    let copy = ObjectRef {
                        key: to,
                        etag,
                        size: o.size,
                        sealing: Sealing::PRIMARY,
                    };
                    Ok((o.key.clone(), copy))
                }
            }))
            .await;
        // A copy that failed (or a plain object refused) fails the rename with the source
        // whole: the copies already made are deleted again, but for the directory's marker,
        // which may have been the destination's own (an empty directory renamed over).
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
        if let Some(e) = failed {
            for copy in copies.values().filter(|c| c.key != dst_prefix) {
                if let Err(e) = self.store.delete(&copy.key).await {
                    tracing::warn!(object = %copy.key, error = %e, "a directory rename failed, and a copy it had made could not be deleted");
                }
            }
            return Err(e);
        }
        for o in &objects {
            self.delete_renamed(&o.key).await;
            self.wctx.cache.invalidate(&o.key);
        }
        for f in &mut held {
            let copy = f.base().and_then(|b| copies.get(&b.key)).cloned();
            if let Some(copy) = copy {
                self.rebase_clean(Some(&mut **f), copy);
            }
        }
        drop(held);
        if let Some(d) = dst {
            let mut t = self.table.lock().unwrap();
            t.listings.remove(&d);
        }
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

mod pending;
pub use pending::{FlushAll, Pending};
#[cfg(test)]
mod sweep_tests;
#[cfg(test)]
mod tests;
