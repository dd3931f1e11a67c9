//! Names: which inode a path is, and what the server says about it.
//!
//! The inode table, the per-directory listings cache and the HEAD cache answer one question
//! together ("what is at `parent/name`, and what are its attributes?"), so they live in one
//! part, [`Namespace`]. It knows keys (the mount's prefix) and how to build nodes from what
//! the server answers; it never holds a lock across a request to the server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OnceCell, Semaphore};

use super::attr::{Attr, Defaults, Kind};
use super::inode::{self, Entry, Listing, Node, Table};
use super::{valid_listed_name, DirEntry, FsConfig, PLAIN_REFUSED};
use crate::cache::blocks::{BlockCache, SMALL_BLOCK};
use crate::error::{FsError, FsResult};
use crate::s3::{ListPage, ObjectInfo, ObjectStore, S3Error, S3Result, Sealing};
use crate::sync::{rank, Mutex, MutexGuard};
use crate::upload::file::Target;

/// One object's attributes, asked once however many lookups want them.
struct Head {
    info: OnceCell<S3Result<ObjectInfo>>,
    /// The size of a small file a listing saw: fetch it whole, body and attributes in one
    /// GET (0: HEAD). Whoever asks first does it that way, the prefetch or a lookup.
    whole: u64,
}

type HeadCell = Arc<Head>;

impl Head {
    fn new(whole: u64) -> HeadCell {
        Arc::new(Head {
            info: OnceCell::new(),
            whole,
        })
    }

    async fn get(
        &self,
        store: &dyn ObjectStore,
        cache: &BlockCache,
        key: &str,
    ) -> S3Result<ObjectInfo> {
        let fetch = || async {
            if self.whole > 0 {
                if let Some(got) = cache.fetch_whole(key, self.whole).await {
                    return got;
                }
            }
            store.head(key).await
        };
        self.info.get_or_init(fetch).await.clone()
    }
}

/// How many HEADs of a listing are in flight at once: enough to cover the round trip. By
/// Little's law a server answering R requests a second over a path of latency L needs R×L
/// of them in flight, so the limit follows the fastest HEAD seen (the path's round trip plus
/// the server's least work): 32 per 2 ms of it, from 32 on loopback to 512 at 60 ms. It never
/// shrinks: a slow answer under load is the server's queue, not the path.
pub(super) struct PrefetchSlots {
    sem: Arc<Semaphore>,
    granted: AtomicUsize,
    fastest_us: AtomicU64,
}

impl PrefetchSlots {
    const BASE: usize = 32;
    const MAX: usize = 512;

    fn new() -> PrefetchSlots {
        PrefetchSlots {
            sem: Arc::new(Semaphore::new(Self::BASE)),
            granted: AtomicUsize::new(Self::BASE),
            fastest_us: AtomicU64::new(u64::MAX),
        }
    }

    /// The limit for a fastest HEAD of `fastest_us`.
    fn limit(fastest_us: u64) -> usize {
        let per_2ms = usize::try_from(fastest_us / 2000).unwrap_or(usize::MAX);
        Self::BASE
            .saturating_mul(per_2ms.saturating_add(1))
            .min(Self::MAX)
    }

    /// A HEAD took `took`: raise the limit if the path is slower than thought.
    fn took(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let fastest = self.fastest_us.fetch_min(us, Ordering::Relaxed).min(us);
        let want = Self::limit(fastest);
        let had = self.granted.load(Ordering::Relaxed);
        if want > had
            && self
                .granted
                .compare_exchange(had, want, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sem.add_permits(want - had);
        }
    }
}

/// The inode table with its listings, and the HEAD cache. Locks (see the lock order in
/// `fs/mod.rs`): `table` is taken after the namespace lock and a file state, and before the
/// files map and the attribute persister's set; `heads` and `warned` are leaves.
pub(super) struct Namespace {
    store: Arc<dyn ObjectStore>,
    /// Where a directory read puts the small files it fetches whole.
    cache: Arc<BlockCache>,
    prefix: String,
    defaults: Defaults,
    attr_ttl: Duration,
    dir_ttl: Duration,
    table: Mutex<Table, { rank::TABLE }>,
    heads: Mutex<HashMap<String, (Instant, HeadCell)>, { rank::LEAF }>,
    prefetch_slots: Arc<PrefetchSlots>,
    warned: Mutex<HashSet<String>, { rank::LEAF }>,
}

impl Namespace {
    pub(super) fn new(
        cfg: &FsConfig,
        store: Arc<dyn ObjectStore>,
        cache: Arc<BlockCache>,
    ) -> Namespace {
        let mut root = Attr::new(
            Kind::Dir,
            cfg.defaults.dir_perm,
            cfg.defaults.uid,
            cfg.defaults.gid,
        );
        root.mtime = SystemTime::now();
        Namespace {
            store,
            cache,
            prefix: cfg.prefix.clone(),
            defaults: cfg.defaults,
            attr_ttl: cfg.attr_ttl,
            dir_ttl: cfg.dir_ttl,
            table: Mutex::new(Table::new(root)),
            heads: Mutex::default(),
            prefetch_slots: Arc::new(PrefetchSlots::new()),
            warned: Mutex::default(),
        }
    }

    /// The inode table, locked. Never held across an `.await`.
    pub(super) fn table(&self) -> MutexGuard<'_, Table, { rank::TABLE }> {
        self.table.lock()
    }

    // ----- keys and nodes -------------------------------------------------------------

    pub(super) fn path_of(&self, ino: u64) -> FsResult<String> {
        self.table().path(ino).ok_or(FsError::BadHandle)
    }

    /// Object key of a file or symlink.
    pub(super) fn file_key(&self, ino: u64) -> FsResult<String> {
        Ok(format!("{}{}", self.prefix, self.path_of(ino)?))
    }

    /// Key prefix of a directory's contents (also its marker object's key).
    pub(super) fn dir_prefix(&self, ino: u64) -> FsResult<String> {
        let p = self.path_of(ino)?;
        Ok(if p.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{p}/", self.prefix)
        })
    }

    pub(super) fn child_key(&self, parent: u64, name: &str) -> FsResult<String> {
        Ok(format!("{}{name}", self.dir_prefix(parent)?))
    }

    pub(super) fn node(&self, ino: u64) -> FsResult<Node> {
        self.table().get(ino).cloned().ok_or(FsError::BadHandle)
    }

    /// `attr` of directory `ino` with its link count: 2 plus its subdirectories (their `..`),
    /// as far as its cached listing knows them. Other kinds keep theirs.
    pub(super) fn with_links(&self, ino: u64, mut attr: Attr) -> Attr {
        if attr.kind == Kind::Dir {
            let t = self.table();
            let subdirs = t.listings.get(&ino).map_or(0, |l| {
                l.entries.values().filter(|e| e.kind == Kind::Dir).count()
            });
            attr.nlink = 2u32.saturating_add(subdirs.try_into().unwrap_or(u32::MAX));
        }
        attr
    }

    /// Run `f` on `ino`'s node, if the table still has it.
    pub(super) fn update<T>(&self, ino: u64, f: impl FnOnce(&mut Node) -> T) -> Option<T> {
        self.table().get_mut(ino).map(f)
    }

    /// The kernel dropped `n` references to `ino`: forget the node when nothing refers to
    /// it, unless `keep` (it has changes not on the server yet).
    pub(super) fn forget(&self, ino: u64, n: u64, keep: bool) {
        let mut t = self.table();
        if !keep {
            t.forget(ino, n);
        } else if let Some(node) = t.get_mut(ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
    }

    /// Where an upload of `ino` goes: its key and its attributes as metadata.
    pub(super) fn target(&self, ino: u64) -> FsResult<Target> {
        let key = self.file_key(ino)?;
        let meta = self.node(ino)?.attr.to_metadata();
        Ok(Target { key, meta })
    }

    pub(super) fn warn_once(&self, key: &str, what: &str) {
        if self.warned.lock().insert(format!("{what}:{key}")) {
            tracing::warn!(object = key, "{what}");
        }
    }

    // ----- HEAD cache -----------------------------------------------------------------

    pub(super) async fn head_cached(&self, key: &str) -> S3Result<ObjectInfo> {
        let cell = {
            let mut heads = self.heads.lock();
            // (a cell holding a transient error is no answer: a prefetch left it there, and
            // the object must not stay unreadable after the network healed)
            let stale_error =
                |cell: &HeadCell| matches!(cell.info.get(), Some(Err(e)) if e.is_transient());
            match heads.get(key) {
                Some((at, cell)) if at.elapsed() < self.attr_ttl && !stale_error(cell) => {
                    cell.clone()
                }
                _ => {
                    let cell = Head::new(0);
                    heads.insert(key.to_owned(), (Instant::now(), cell.clone()));
                    cell
                }
            }
        };
        let r = cell.get(self.store.as_ref(), &self.cache, key).await;
        if matches!(&r, Err(e) if e.is_transient()) {
            self.heads.lock().remove(key);
        }
        r
    }

    pub(super) fn forget_head(&self, key: &str) {
        self.heads.lock().remove(key);
    }

    pub(super) fn forget_all_heads(&self) {
        self.heads.lock().clear();
    }

    /// Start the HEADs of a listing's files in the background, so the lookups that follow
    /// find them ready. A small file (as many as half the cache holds) is fetched whole
    /// instead, attributes and body in one GET, so `cp -r` and `tar c` of small files find
    /// their data cached too.
    fn prefetch_heads(&self, files: Vec<(String, u64)>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut room = self.cache.small_object_room();
        for (key, size) in files {
            if self
                .heads
                .lock()
                .get(&key)
                .is_some_and(|(at, _)| at.elapsed() < self.attr_ttl)
            {
                continue;
            }
            let whole = size > 0 && size <= SMALL_BLOCK && room > 0;
            room -= usize::from(whole);
            let cell = Head::new(if whole { size } else { 0 });
            self.heads
                .lock()
                .insert(key.clone(), (Instant::now(), cell.clone()));
            let store = self.store.clone();
            let cache = self.cache.clone();
            let slots = self.prefetch_slots.clone();
            rt.spawn(async move {
                let _slot = slots.sem.clone().acquire_owned().await;
                let started = Instant::now();
                let _ = cell.get(store.as_ref(), &cache, &key).await;
                slots.took(started.elapsed());
            });
        }
    }

    pub(super) fn head_error(&self, key: &str, e: S3Error) -> FsError {
        if matches!(e, S3Error::WrongKey) {
            self.warn_once(key, "no key given (--key-file) opens this object: it was written with another key; access denied");
        }
        e.into()
    }

    // ----- building nodes -------------------------------------------------------------

    pub(super) fn file_node(&self, info: &ObjectInfo, key: &str) -> Node {
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
                &self.defaults,
            ),
            fresh_until: Instant::now() + self.attr_ttl,
            remote: true,
            etag: info.etag.clone(),
            sealing: info.sealing,
            lookups: 0,
            open: 0,
            writers: 0,
            link_target: None,
        }
    }

    pub(super) fn new_node(&self, attr: Attr, remote: bool) -> Node {
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
            writers: 0,
            link_target: None,
        }
    }

    /// Directory node for `prefix/` from its marker (if any).
    async fn dir_node(&self, marker_key: &str) -> FsResult<Node> {
        let (attr, remote) = match self.head_cached(marker_key).await {
            Ok(info) => (
                Attr::from_object(0, info.last_modified, &info.metadata, true, &self.defaults),
                true,
            ),
            Err(S3Error::NotFound | S3Error::WrongKey) => {
                let mut a = self.default_attr(Kind::Dir);
                a.mtime = SystemTime::UNIX_EPOCH;
                a.ctime = a.mtime;
                (a, false)
            }
            Err(e) => return Err(e.into()),
        };
        let mut n = self.new_node(attr, remote);
        n.fresh_until = Instant::now() + self.attr_ttl;
        Ok(n)
    }

    /// Attributes of a `kind` the server says nothing about: the mount's defaults.
    fn default_attr(&self, kind: Kind) -> Attr {
        let perm = if kind == Kind::Dir {
            self.defaults.dir_perm
        } else {
            self.defaults.file_perm
        };
        Attr::new(kind, perm, self.defaults.uid, self.defaults.gid)
    }

    pub(super) fn entry_of(attr: &Attr, etag: &str) -> Entry {
        Entry {
            kind: attr.kind,
            size: attr.size,
            mtime: attr.mtime,
            etag: etag.to_owned(),
        }
    }

    // ----- resolving names ------------------------------------------------------------

    /// The child `name` of directory `parent` when the table's node can be trusted without
    /// asking the server: fresh, open, not on the server yet, or `pinned` (its attributes are
    /// not on the server yet, so the server's are older). `pinned` runs with the table locked.
    pub(super) fn trusted_child(
        &self,
        parent: u64,
        name: &str,
        pinned: impl Fn(u64) -> bool,
    ) -> FsResult<Option<u64>> {
        let t = self.table();
        let pnode = t.get(parent).ok_or(FsError::BadHandle)?;
        if pnode.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let Some(ino) = t.child(parent, name) else {
            return Ok(None);
        };
        let n = t.get(ino).expect("child exists");
        let trusted = n.fresh_until > Instant::now() || n.open > 0 || !n.remote || pinned(ino);
        Ok(trusted.then_some(ino))
    }

    /// Find `name` in `parent` on the server (or in a fresh listing and the HEAD cache) and
    /// record it in the table, without touching lookup counts.
    pub(super) async fn find(&self, parent: u64, name: &str) -> FsResult<u64> {
        let key = self.child_key(parent, name)?;
        let node = match self.fresh_listing_entry(parent, name) {
            Some(None) => return Err(FsError::NotFound),
            Some(Some(e)) if e.kind == Kind::Dir => self.dir_node(&format!("{key}/")).await?,
            Some(Some(_)) => match self.head_cached(&key).await {
                Ok(info) => self.file_node(&info, &key),
                Err(e) => return Err(self.head_error(&key, e)),
            },
            None => self.find_unlisted(&key).await?,
        };
        Ok(self.table().upsert(parent, name, node))
    }

    /// What `key` is when no listing says: a directory (objects below it, or a marker-style
    /// object), else a file, else nothing.
    async fn find_unlisted(&self, key: &str) -> FsResult<Node> {
        let dir_prefix = format!("{key}/");
        let (head, list) = tokio::join!(
            self.head_cached(key),
            self.store.list(&dir_prefix, Some("/"), None, Some(1))
        );
        let list = list?;
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            if head.is_ok() {
                self.warn_once(key, "both a file and a directory have this name; the directory wins and the file is hidden");
            }
            return self.dir_node(&dir_prefix).await;
        }
        match head {
            Ok(info)
                if Attr::from_object(
                    0,
                    info.last_modified,
                    &info.metadata,
                    false,
                    &self.defaults,
                )
                .kind
                    == Kind::Dir =>
            {
                self.dir_node(&dir_prefix).await
            }
            Ok(info) => Ok(self.file_node(&info, key)),
            Err(e) => Err(self.head_error(key, e)),
        }
    }

    // ----- listings -------------------------------------------------------------------

    /// `f` of the listing of `parent`, if one was taken within `--attr-ttl`.
    fn with_fresh_listing<T>(&self, parent: u64, f: impl FnOnce(&Listing) -> T) -> Option<T> {
        let t = self.table();
        t.listings
            .get(&parent)
            .filter(|l| l.taken.elapsed() < self.dir_ttl)
            .map(f)
    }

    pub(super) fn fresh_listing(&self, parent: u64) -> Option<Listing> {
        self.with_fresh_listing(parent, Listing::clone)
    }

    /// What a fresh listing of `parent` says of `name` (`Some(None)`: not there), without
    /// copying the listing: `ls -l` of a 10,000-entry directory looks up every name, and
    /// cloning the listing for each made it quadratic (12 s of CPU).
    fn fresh_listing_entry(&self, parent: u64, name: &str) -> Option<Option<Entry>> {
        self.with_fresh_listing(parent, |l| l.entries.get(name).cloned())
    }

    pub(super) fn listing_update(&self, parent: u64, name: &str, entry: Option<Entry>) {
        let mut t = self.table();
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

    /// List directory `ino` on the server, cache the listing and start HEADs of its files.
    pub(super) async fn list_dir(&self, ino: u64) -> FsResult<Listing> {
        let prefix = self.dir_prefix(ino)?;
        let mut entries = BTreeMap::new();
        let mut token = None;
        let mut files = Vec::new();
        loop {
            let page = self
                .store
                .list(&prefix, Some("/"), token.take(), None)
                .await?;
            token = page.next.clone();
            self.add_page(&prefix, page, &mut entries, &mut files);
            if token.is_none() {
                break;
            }
        }
        self.add_unsaved_children(ino, &mut entries);
        let listing = Listing {
            entries,
            taken: Instant::now(),
        };
        self.table().listings.insert(ino, listing.clone());
        self.prefetch_heads(files);
        Ok(listing)
    }

    /// The names of one listing page under `prefix` (files' keys also into `files`).
    fn add_page(
        &self,
        prefix: &str,
        page: ListPage,
        entries: &mut BTreeMap<String, Entry>,
        files: &mut Vec<(String, u64)>,
    ) {
        for o in page.objects {
            // (the store checks that listed keys are under the prefix; never slice blindly)
            let Some(name) = o.key.strip_prefix(prefix) else {
                continue;
            };
            if name.is_empty() {
                continue; // the directory's own marker
            }
            if !valid_listed_name(name) {
                self.warn_once(&o.key, "object name is not a valid path component; skipped");
                continue;
            }
            files.push((o.key.clone(), o.size));
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
            let Some(name) = p.strip_prefix(prefix) else {
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
    }

    /// Files created in `ino` but not uploaded yet (or open) are part of the directory too.
    fn add_unsaved_children(&self, ino: u64, entries: &mut BTreeMap<String, Entry>) {
        let t = self.table();
        for (name, child) in t.children_of(ino) {
            if let Some(n) = t.get(child) {
                if !n.remote || n.open > 0 {
                    entries.insert(name, Self::entry_of(&n.attr, &n.etag));
                }
            }
        }
    }

    /// The entries of directory `ino` (parent `parent`) for a directory handle: `.`, `..`
    /// and every name of `listing`, with a provisional node for each one the table lacks.
    pub(super) fn dir_entries(&self, ino: u64, parent: u64, listing: &Listing) -> Vec<DirEntry> {
        let mut entries = vec![
            DirEntry {
                ino,
                name: ".".into(),
                kind: Kind::Dir,
            },
            DirEntry {
                ino: parent,
                name: "..".into(),
                kind: Kind::Dir,
            },
        ];
        let mut t = self.table();
        for (name, e) in &listing.entries {
            let child = match t.child(ino, name) {
                Some(c) => c,
                None => {
                    let mut attr = self.default_attr(e.kind);
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
                ino: child,
                name: name.clone(),
                kind: e.kind,
            });
        }
        entries
    }

    /// Record new node `node` as `parent/name`; with `complete`, a directory known empty
    /// (just made), whose listing is complete without asking the server.
    pub(super) fn insert(&self, parent: u64, name: &str, node: Node, complete: bool) -> u64 {
        let entry = Self::entry_of(&node.attr, &node.etag);
        let ino = {
            let mut t = self.table();
            let ino = t.upsert(parent, name, node);
            if complete {
                let entries = BTreeMap::new();
                let taken = Instant::now();
                t.listings.insert(ino, Listing { entries, taken });
            }
            ino
        };
        self.listing_update(parent, name, Some(entry));
        ino
    }

    /// An entry of directory `dir` was made, removed or renamed: its mtime and ctime move, in
    /// memory only (see `Table::upsert`).
    pub(super) fn entries_changed(&self, dir: u64) {
        self.update(dir, |n| {
            n.attr.mtime = SystemTime::now();
            n.attr.ctime = n.attr.mtime;
        });
    }

    /// `ino`, at `parent/name`, is gone from the server: unlink it here too.
    pub(super) fn remove(&self, ino: u64, parent: u64, name: &str) {
        let mut t = self.table();
        t.detach(ino);
        t.listings.remove(&ino);
        if let Some(l) = t.listings.get_mut(&parent) {
            l.entries.remove(name);
        }
    }

    /// `ino` was renamed from `parent/name` to `new_parent/new_name` on the server: here too.
    /// Every cached HEAD may name a moved object, so all are dropped.
    pub(super) fn moved(
        &self,
        ino: u64,
        (parent, name): (u64, &str),
        (new_parent, new_name): (u64, &str),
    ) -> FsResult<()> {
        let entry = {
            let mut t = self.table();
            let node = t.get(ino).ok_or(FsError::BadHandle)?;
            let entry = Self::entry_of(&node.attr, &node.etag);
            t.rename(ino, new_parent, new_name);
            if let Some(l) = t.listings.get_mut(&parent) {
                l.entries.remove(name);
            }
            entry
        };
        self.listing_update(new_parent, new_name, Some(entry));
        self.forget_all_heads();
        Ok(())
    }

    /// Is the directory empty on the server and locally?
    pub(super) async fn dir_is_empty(&self, ino: u64) -> FsResult<bool> {
        {
            let t = self.table();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback keeps 32 in flight; a 20 ms path gets enough to cover its round trip.
    #[test]
    fn prefetch_slots_grow_with_the_round_trip_and_never_shrink() {
        assert_eq!(PrefetchSlots::limit(300), 32);
        assert_eq!(PrefetchSlots::limit(20_000), 352);
        assert_eq!(PrefetchSlots::limit(60_000), 512);
        let slots = PrefetchSlots::new();
        slots.took(Duration::from_micros(400));
        assert_eq!(slots.sem.available_permits(), 32);
        slots.took(Duration::from_millis(21));
        assert_eq!(
            slots.sem.available_permits(),
            32,
            "the fastest seen decides"
        );
        let slow = PrefetchSlots::new();
        slow.took(Duration::from_millis(21));
        assert_eq!(slow.sem.available_permits(), 352);
        slow.took(Duration::from_millis(80));
        assert_eq!(slow.sem.available_permits(), 352);
    }
}
