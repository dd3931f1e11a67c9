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
                node.parent = parent;
                node.name = name.to_owned();
                node.lookups = old.lookups;
                node.open = old.open;
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

    /// Every node (for sweeps such as flushing all open files below a directory).
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

    fn node(kind: Kind) -> Node {
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
