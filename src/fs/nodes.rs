//! Names that are whole objects made in one request: symbolic links (the body is the target)
//! and special files (zero-length, the type in the mode), both as s3fs stores them.

use bytes::Bytes;

use super::attr::{Attr, Kind};
use super::Fs;
use crate::error::{FsError, FsResult};
use crate::s3::ReadSource;

impl Fs {
    /// Make a symbolic link: an object whose body is the target, as s3fs stores them.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<(u64, Attr)> {
        let mut attr = Attr::new(Kind::Symlink, 0o777, uid, gid);
        attr.size = target.len() as u64;
        let body = Bytes::copy_from_slice(target.as_bytes());
        self.make_object(parent, name, attr, body, Some(target.to_owned()))
            .await
    }

    /// Make a FIFO, socket, device node or empty regular file: a zero-length object with the
    /// type in its mode and the device in `rdev`, as s3fs stores them.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(u64, Attr)> {
        let kind = match Kind::of_mode(mode) {
            Some(Kind::Dir | Kind::Symlink) | None => {
                return Err(FsError::Invalid("mknod of this file type"))
            }
            Some(k) => k,
        };
        let mut attr = Attr::new(kind, (mode & 0o7777) as u16, uid, gid);
        if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
            attr.rdev = rdev;
        }
        self.make_object(parent, name, attr, Bytes::new(), None)
            .await
    }

    /// Store a new object `body` with `attr` as `parent/name` (symlink, special file), which
    /// must not exist yet.
    async fn make_object(
        &self,
        parent: u64,
        name: &str,
        attr: Attr,
        body: Bytes,
        link_target: Option<String>,
    ) -> FsResult<(u64, Attr)> {
        self.writable()?;
        self.must_not_exist(parent, name).await?;
        let key = self.names.child_key(parent, name)?;
        let etag = self.store.put(&key, body, &attr.to_metadata()).await?;
        self.names.forget_head(&key);
        let mut node = self.names.new_node(attr.clone(), true);
        node.etag = etag;
        node.lookups = 1;
        node.link_target = link_target;
        let ino = self.names.insert(parent, name, node, false);
        self.names.entries_changed(parent);
        Ok((ino, attr))
    }

    /// Target of a symbolic link.
    pub async fn readlink(&self, ino: u64) -> FsResult<String> {
        let node = self.names.node(ino)?;
        if node.attr.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        if let Some(t) = node.link_target {
            return Ok(t);
        }
        let key = self.names.file_key(ino)?;
        let mut buf = self
            .wctx
            .arena
            .alloc(node.attr.size.clamp(1, 4096) as usize)
            .await?;
        let n = self
            .store
            .get_range(&ReadSource::latest(&key, node.sealing), 0, &mut buf)
            .await?;
        let target = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.names
            .update(ino, |n| n.link_target = Some(target.clone()));
        Ok(target)
    }
}
