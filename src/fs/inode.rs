//! The inode table: stable inode numbers for paths, lookup counts, and cached attributes.
//!
//! Nodes point to their parent and carry their own name, so the object key of any node is
//! found by walking up, and renaming a directory renames everything below it in one step.
//! Directory listings are cached per directory with the time they were taken; a complete,
//! fresh listing answers "does not exist" without asking the server.

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

use super::attr::{Attr, Kind};
use crate::s3::Sealing;

/// The root directory's inode number (FUSE's convention).
pub const ROOT: u64 = 1;

/// One node the kernel knows (or may soon know) about.
#[derive(Debug, Clone)]
pub struct Node {
    pub parent: u64,
    pub name: String,
    pub attr: Attr,
    /// When the attributes stop being trusted (then HEAD again).
    pub fresh_until: Instant,
    /// The object (or directory marker) exists on the server.
    pub remote: bool,
    /// ETag of the object, when known.
    pub etag: String,
    /// The object is SSE-C (false: a plain object uploaded by another tool).
    pub sealing: Sealing,
    /// Kernel lookup count (entries handed out minus forgotten).
    pub lookups: u64,
    /// Open file handles.
    pub open: u32,
    /// Of those, opened for writing.
    pub writers: u32,
    /// Symlink target, once read.
    pub link_target: Option<String>,
}

/// A name in a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: String,
}

/// A directory's cached listing.
#[derive(Debug, Clone)]
pub struct Listing {
    pub entries: BTreeMap<String, Entry>,
    pub taken: Instant,
}

/// All nodes and listings; guarded by one mutex in the filesystem, never held across I/O.
#[derive(Debug, Default)]
pub struct Table {
    nodes: HashMap<u64, Node>,
    children: HashMap<(u64, String), u64>,
    pub listings: HashMap<u64, Listing>,
    next: u64,
}

impl Table {
    /// A table holding only the root.
    pub fn new(root: Attr) -> Table {
        let mut t = Table {
            next: ROOT + 1,
            ..Default::default()
        };
        t.nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: String::new(),
                attr: root,
                fresh_until: far_future(),
                remote: true,
                etag: String::new(),
                sealing: Sealing::PRIMARY,
                lookups: 1,
                open: 0,
                writers: 0,
                link_target: None,
            },
        );
        t
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// The child inode named `name` in `parent`, if the table has one.
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&(parent, name.to_owned())).copied()
    }

    /// Insert or refresh the child `name` of `parent`; keeps an existing inode number (and
    /// its lookup count) so the kernel's view stays consistent.
    pub fn upsert(&mut self, parent: u64, name: &str, mut node: Node) -> u64 {
        if let Some(ino) = self.child(parent, name) {
            let old = self.nodes.get_mut(&ino).expect("children and nodes agree");
            if old.attr.kind == node.attr.kind {
                if node.attr.kind == Kind::Dir {
                    // A directory's times move in memory as entries come and go through this
                    // mount (storing them would cost a request per entry); a refresh from its
                    // marker must not take them back.
                    node.attr.mtime = node.attr.mtime.max(old.attr.mtime);
                    node.attr.ctime = node.attr.ctime.max(old.attr.ctime);
                }
                node.parent = parent;
                node.name = name.to_owned();
                node.lookups = old.lookups;
                node.open = old.open;
                node.writers = old.writers;
                if node.link_target.is_none() {
                    node.link_target = old.link_target.take();
                }
                *old = node;
                return ino;
            }
            // The kind changed under the name: a new inode.
            self.detach(ino);
        }
        let ino = self.next;
        self.next += 1;
        node.parent = parent;
        node.name = name.to_owned();
        self.children.insert((parent, name.to_owned()), ino);
        self.nodes.insert(ino, node);
        ino
    }

    /// Remove the name → inode link; the node itself lives on while the kernel or an open
    /// handle still refers to it.
    pub fn detach(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get(&ino) {
            let key = (n.parent, n.name.clone());
            if self.children.get(&key) == Some(&ino) {
                self.children.remove(&key);
            }
            if n.lookups == 0 && n.open == 0 {
                self.nodes.remove(&ino);
            } else if let Some(n) = self.nodes.get_mut(&ino) {
                n.remote = false;
                n.attr.nlink = 0; // fstat of a descriptor still open shows it unlinked
            }
        }
    }

    /// Move `ino` to `new_parent/new_name`, replacing any node there.
    pub fn rename(&mut self, ino: u64, new_parent: u64, new_name: &str) {
        if let Some(old) = self.child(new_parent, new_name) {
            if old != ino {
                self.detach(old);
            }
        }
        if let Some(n) = self.nodes.get(&ino) {
            let key = (n.parent, n.name.clone());
            if self.children.get(&key) == Some(&ino) {
                self.children.remove(&key);
            }
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.parent = new_parent;
            n.name = new_name.to_owned();
        }
        self.children.insert((new_parent, new_name.to_owned()), ino);
    }

    /// Kernel forgot `n` references; drop the node when nothing refers to it.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let remove = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0 && node.open == 0
            }
            None => false,
        };
        if remove {
            let has_children = self.children.keys().any(|(p, _)| *p == ino);
            if has_children {
                return; // keep directories whose children are still known
            }
            if let Some(node) = self.nodes.remove(&ino) {
                let key = (node.parent, node.name);
                if self.children.get(&key) == Some(&ino) {
                    self.children.remove(&key);
                }
            }
            self.listings.remove(&ino);
        }
    }

    /// Relative path of `ino` from the mount root ("" for the root).
    pub fn path(&self, ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = self.nodes.get(&cur)?;
            parts.push(n.name.as_str());
            cur = n.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// Is `ino` still linked into the tree under its name?
    pub fn is_linked(&self, ino: u64) -> bool {
        ino == ROOT
            || self
                .nodes
                .get(&ino)
                .is_some_and(|n| self.children.get(&(n.parent, n.name.clone())) == Some(&ino))
    }

    /// Known children of `parent` (inode numbers).
    pub fn children_of(&self, parent: u64) -> Vec<(String, u64)> {
        self.children
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .map(|((_, name), ino)| (name.clone(), *ino))
            .collect()
    }

    /// Is `ino` below `ancestor` (or equal)?
    pub fn is_within(&self, ino: u64, ancestor: u64) -> bool {
        let mut cur = ino;
        for _ in 0..4096 {
            if cur == ancestor {
                return true;
            }
            if cur == ROOT {
                return false;
            }
            match self.nodes.get(&cur) {
                Some(n) => cur = n.parent,
                None => return false,
            }
        }
        false
    }

    /// Every node (for sweeps such as uploading all open files below a directory).
    pub fn inodes(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }
}

/// An instant far enough away to mean "never expires".
pub fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn node(kind: Kind) -> Node {
        Node {
            parent: 0,
            name: String::new(),
            attr: Attr::new(kind, 0o644, 0, 0),
            fresh_until: Instant::now(),
            remote: true,
            etag: String::new(),
            sealing: Sealing::PRIMARY,
            lookups: 0,
            open: 0,
            writers: 0,
            link_target: None,
        }
    }

    #[test]
    fn paths_follow_renames_of_ancestors() {
        let mut t = Table::new(Attr::new(Kind::Dir, 0o755, 0, 0));
        let d = t.upsert(ROOT, "d", node(Kind::Dir));
        let f = t.upsert(d, "f", node(Kind::File));
        assert_eq!(t.path(f).unwrap(), "d/f");
        let e = t.upsert(ROOT, "e", node(Kind::Dir));
        t.rename(d, e, "d2");
        assert_eq!(t.path(f).unwrap(), "e/d2/f");
        assert!(t.child(ROOT, "d").is_none());
        assert!(t.is_within(f, e));
    }

    #[test]
    fn inode_numbers_are_stable_and_forget_drops() {
        let mut t = Table::new(Attr::new(Kind::Dir, 0o755, 0, 0));
        let a = t.upsert(ROOT, "a", node(Kind::File));
        t.get_mut(a).unwrap().lookups = 2;
        assert_eq!(t.upsert(ROOT, "a", node(Kind::File)), a);
        assert_eq!(t.get(a).unwrap().lookups, 2);
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert!(t.child(ROOT, "a").is_none());
    }
}

/// Many threads drive one table (behind a mutex, as the filesystem holds it) through random
/// lookups, renames, detaches and forgets that respect the filesystem's own preconditions;
/// the name index and the nodes must agree after every step, and every linked node must
/// reach the root.
#[cfg(test)]
mod stress {
    use super::tests::node;
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::sync::{Arc, Mutex};

    const DIRS: [&str; 4] = ["d0", "d1", "d2", "d3"];
    const FILES: [&str; 6] = ["f0", "f1", "f2", "f3", "f4", "f5"];

    fn check(t: &Table) {
        for ((p, name), ino) in &t.children {
            let n = t.nodes.get(ino).expect("indexed node exists");
            assert_eq!((n.parent, n.name.as_str()), (*p, name.as_str()));
            assert!(t.nodes.contains_key(p), "parent {p} of {name} is gone");
            let path = t.path(*ino).expect("linked node reaches the root");
            assert!(path.ends_with(name.as_str()));
            assert!(t.is_linked(*ino));
        }
        assert!(t.nodes.contains_key(&ROOT));
    }

    /// A random directory inode (the root or a linked directory).
    fn some_dir(t: &Table, rng: &mut impl Rng) -> u64 {
        let dirs: Vec<u64> = std::iter::once(ROOT)
            .chain(
                t.children
                    .values()
                    .copied()
                    .filter(|i| t.nodes[i].attr.kind == Kind::Dir),
            )
            .collect();
        dirs[rng.gen_range(0..dirs.len())]
    }

    fn step(t: &mut Table, rng: &mut impl Rng) {
        let parent = some_dir(t, rng);
        match rng.gen_range(0..7) {
            // lookup of a file or a directory (the kernel takes a reference)
            0 | 1 => {
                let (name, kind) = if rng.gen_bool(0.5) {
                    (FILES[rng.gen_range(0..FILES.len())], Kind::File)
                } else {
                    (DIRS[rng.gen_range(0..DIRS.len())], Kind::Dir)
                };
                let ino = t.upsert(parent, name, node(kind));
                t.get_mut(ino).unwrap().lookups += 1;
            }
            // rename something into a random directory, as Fs::rename allows it
            2 | 3 => {
                let kids = t.children_of(parent);
                if kids.is_empty() {
                    return;
                }
                let (_, ino) = kids[rng.gen_range(0..kids.len())].clone();
                let to = some_dir(t, rng);
                let is_dir = t.get(ino).unwrap().attr.kind == Kind::Dir;
                if is_dir && t.is_within(to, ino) {
                    return; // into itself: refused
                }
                let names: &[&str] = if is_dir { &DIRS } else { &FILES };
                let new_name = names[rng.gen_range(0..names.len())];
                if let Some(d) = t.child(to, new_name) {
                    if d != ino && !t.children_of(d).is_empty() {
                        return; // ENOTEMPTY
                    }
                }
                t.rename(ino, to, new_name);
            }
            // unlink / rmdir (empty directories only)
            4 => {
                let kids = t.children_of(parent);
                if let Some((_, ino)) = kids.first() {
                    if t.children_of(*ino).is_empty() {
                        t.detach(*ino);
                    }
                }
            }
            // the kernel forgets references
            _ => {
                let inos = t.inodes();
                let ino = inos[rng.gen_range(0..inos.len())];
                let n = t.get(ino).map_or(0, |n| n.lookups);
                t.forget(ino, rng.gen_range(0..=n));
            }
        }
    }

    #[test]
    fn many_threads_keep_the_table_consistent() {
        let table = Arc::new(Mutex::new(Table::new(Attr::new(Kind::Dir, 0o755, 0, 0))));
        let threads: Vec<_> = (0..8u64)
            .map(|seed| {
                let table = table.clone();
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1abe1 + seed);
                    for _ in 0..1_500 {
                        let mut t = table.lock().unwrap();
                        step(&mut t, &mut rng);
                        check(&t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no thread panicked");
        }
        check(&table.lock().unwrap());
    }
}
