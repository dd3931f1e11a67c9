//! fuser adapter: each kernel request becomes one call into [`Fs`], run to completion on the
//! tokio runtime from one of fuser's worker threads, and its result becomes a reply or an
//! errno. Nothing clever lives here; errors are logged once here with their cause.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

use crate::error::FsError;
use crate::fs::attr::{Attr, Kind};
use crate::fs::{Fs, SetAttr};

/// How long the kernel may cache entries and attributes before asking again.
const KERNEL_TTL: Duration = Duration::from_secs(1);

/// The fuser `Filesystem` over our [`Fs`].
pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    /// Flags for every opened file: direct I/O when the kernel allows mmap with it.
    open_flags: FopenFlags,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> FuseAdapter {
        FuseAdapter {
            fs,
            rt,
            open_flags: FopenFlags::empty(),
        }
    }

    fn run<T>(
        &self,
        op: &'static str,
        ino: u64,
        fut: impl std::future::Future<Output = Result<T, FsError>>,
    ) -> Result<T, Errno> {
        let span = tracing::debug_span!("fuse", op, ino);
        let _g = span.enter();
        let path = || self.fs.describe(ino);
        self.rt.block_on(watched(op, fut, path)).map_err(|e| {
            if !e.is_quiet() {
                tracing::warn!(op, ino, error = %e, "request failed");
            }
            Errno::from_i32(e.errno())
        })
    }
}

/// A request older than this is logged, with the file and what it does, and again each time
/// as long: no request may wait silently (memory waits are bounded, S3 requests time out).
const SLOW_REQUEST: Duration = Duration::from_secs(30);

/// `fut`, logging while it takes longer than [`SLOW_REQUEST`].
async fn watched<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = T>,
    path: impl Fn() -> String,
) -> T {
    tokio::pin!(fut);
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(SLOW_REQUEST, &mut fut).await {
            Ok(v) => return v,
            Err(_) => tracing::warn!(
                op,
                path = %path(),
                waited_s = started.elapsed().as_secs(),
                "request still waiting (on S3 requests or locked memory)"
            ),
        }
    }
}

fn to_name(name: &OsStr) -> Result<&str, Errno> {
    // Object keys are UTF-8; names that are not cannot be stored.
    name.to_str().ok_or(Errno::from_i32(libc::EILSEQ))
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// Our attributes as the kernel wants them.
pub fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 1 << 20,
        flags: 0,
    }
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

macro_rules! reply_or {
    ($reply:ident, $result:expr, $ok:expr) => {
        match $result {
            Ok(v) =>
            {
                #[allow(clippy::redundant_closure_call)]
                ($ok)($reply, v)
            }
            Err(e) => $reply.error(e),
        }
    };
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        // Direct I/O: read() and write() go straight between the caller's buffer and ours,
        // bypassing the page cache. Plaintext then lives only in the locked arena (the page
        // cache is neither locked nor bounded by --cache-size), and a read costs one copy
        // less: 1 GiB sequential read went from 0.82x to 0.91x the raw SDK. mmap (and so
        // exec) of such files needs FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6); on older kernels
        // files keep the page cache.
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok()
        {
            self.open_flags = FopenFlags::FOPEN_DIRECT_IO;
        }
        tracing::debug!(
            direct_io = !self.open_flags.is_empty(),
            "kernel session ready"
        );
        Ok(())
    }

    fn destroy(&mut self) {
        let failed = self
            .rt
            .block_on(self.fs.upload_all(crate::fs::UploadAll::Unmount));
        if failed > 0 {
            tracing::error!(failed, "files could not be uploaded at unmount");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r =
            to_name(name).and_then(|n| self.run("lookup", parent.0, self.fs.lookup(parent.0, n)));
        reply_or!(reply, r, |reply: ReplyEntry, (ino, attr): (u64, Attr)| {
            reply.entry(&KERNEL_TTL, &file_attr(ino, &attr), Generation(0))
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self.run("getattr", ino.0, self.fs.getattr(ino.0));
        reply_or!(reply, r, |reply: ReplyAttr, attr: Attr| reply
            .attr(&KERNEL_TTL, &file_attr(ino.0, &attr)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time_of),
            atime: atime.map(time_of),
        };
        let r = self.run("setattr", ino.0, self.fs.setattr(ino.0, set));
        reply_or!(reply, r, |reply: ReplyAttr, attr: Attr| reply
            .attr(&KERNEL_TTL, &file_attr(ino.0, &attr)));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.run("readlink", ino.0, self.fs.readlink(ino.0));
        reply_or!(reply, r, |reply: ReplyData, t: String| reply
            .data(t.as_bytes()));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = to_name(name).and_then(|n| {
            self.run(
                "mkdir",
                parent.0,
                self.fs
                    .mkdir(parent.0, n, mode & !umask, req.uid(), req.gid()),
            )
        });
        reply_or!(reply, r, |reply: ReplyEntry, (ino, attr): (u64, Attr)| {
            reply.entry(&KERNEL_TTL, &file_attr(ino, &attr), Generation(0))
        });
    }

    #[allow(clippy::too_many_arguments)] // fuser's signature
    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        // the type bits pass; only the permission bits take the umask
        let mode = mode & !(umask & 0o7777);
        let r = to_name(name).and_then(|n| {
            self.run(
                "mknod",
                parent.0,
                self.fs.mknod(parent.0, n, mode, rdev, req.uid(), req.gid()),
            )
        });
        reply_or!(reply, r, |reply: ReplyEntry, (ino, attr): (u64, Attr)| {
            reply.entry(&KERNEL_TTL, &file_attr(ino, &attr), Generation(0))
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r =
            to_name(name).and_then(|n| self.run("unlink", parent.0, self.fs.unlink(parent.0, n)));
        reply_or!(reply, r, |reply: ReplyEmpty, ()| reply.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = to_name(name).and_then(|n| self.run("rmdir", parent.0, self.fs.rmdir(parent.0, n)));
        reply_or!(reply, r, |reply: ReplyEmpty, ()| reply.ok());
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = to_name(link_name).and_then(|n| {
            let t = target.to_str().ok_or(Errno::from_i32(libc::EILSEQ))?;
            self.run(
                "symlink",
                parent.0,
                self.fs.symlink(parent.0, n, t, req.uid(), req.gid()),
            )
        });
        reply_or!(reply, r, |reply: ReplyEntry, (ino, attr): (u64, Attr)| {
            reply.entry(&KERNEL_TTL, &file_attr(ino, &attr), Generation(0))
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = to_name(name).and_then(|n| {
            let nn = to_name(newname)?;
            self.run(
                "rename",
                parent.0,
                self.fs.rename(parent.0, n, newparent.0, nn, no_replace),
            )
        });
        reply_or!(reply, r, |reply: ReplyEmpty, ()| reply.ok());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let trunc = flags.0 & libc::O_TRUNC != 0;
        let r = self.run("open", ino.0, self.fs.open(ino.0, write, trunc));
        reply_or!(reply, r, |reply: ReplyOpen, fh: u64| reply
            .opened(FileHandle(fh), self.open_flags));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.run("read", ino.0, self.fs.read(ino.0, fh.0, offset, size));
        // The reply is copied to the kernel straight from locked memory (often the cached
        // block itself).
        reply_or!(reply, r, |reply: ReplyData, buf: crate::fs::ReadData| reply
            .data(&buf));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.run("write", ino.0, self.fs.write(ino.0, offset, data));
        reply_or!(reply, r, |reply: ReplyWrite, n: u32| reply.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let r = self.run("flush", ino.0, self.fs.flush(ino.0));
        reply_or!(reply, r, |reply: ReplyEmpty, ()| reply.ok());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.run("release", ino.0, self.fs.release(ino.0, fh.0));
        reply_or!(reply, r, |reply: ReplyEmpty, ()| reply.ok());
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.run("fsync", ino.0, self.fs.fsync(ino.0));
        reply_or!(reply, r, |reply: ReplyEmpty, ()| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.run("opendir", ino.0, self.fs.opendir(ino.0));
        reply_or!(reply, r, |reply: ReplyOpen, fh: u64| reply
            .opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    if reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => {
                tracing::warn!(op = "readdir", ino = ino.0, error = %e);
                reply.error(Errno::from_i32(e.errno()));
            }
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.run("fsyncdir", ino.0, self.fs.fsyncdir(ino.0));
        reply_or!(reply, r, |reply: ReplyEmpty, ()| reply.ok());
    }

    // Extended attributes are not stored (S3 metadata is plaintext at the provider): answer
    // ENOSYS once, quietly, and the kernel stops asking.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = to_name(name).and_then(|n| {
            self.run(
                "create",
                parent.0,
                self.fs
                    .create(parent.0, n, mode & !umask, req.uid(), req.gid()),
            )
        });
        reply_or!(
            reply,
            r,
            |reply: ReplyCreate, (ino, attr, fh): (u64, Attr, u64)| reply.created(
                &KERNEL_TTL,
                &file_attr(ino, &attr),
                Generation(0),
                FileHandle(fh),
                self.open_flags
            )
        );
    }
}

/// Kernel read-ahead for our mount, in KiB. The kernel gives every FUSE mount 128 KiB, so a
/// sequential reader sends one 128 KiB READ at a time: eight kernel round trips per MiB, and
/// the daemon spent more CPU on them than on the data (1 GiB `dd`: 2.4 s of daemon CPU at
/// 128 KiB, 1.4 s at 4 MiB). With 4 MiB the kernel keeps several 1 MiB READs (`max_pages`) in
/// flight; random readers are unaffected (the kernel only grows read-ahead for sequential
/// access).
pub const KERNEL_READAHEAD_KB: u32 = 4096;

/// Raise the kernel's read-ahead of the FUSE mount at `mountpoint` to `kb` KiB by writing
/// `/sys/class/bdi/MAJ:MIN/read_ahead_kb`. Only root may write it; for anyone else the mount
/// keeps the kernel's 128 KiB and this says so at debug level. The device number comes from
/// /proc/self/mountinfo, because stat() on the mountpoint would wait for our own session.
pub fn raise_kernel_readahead(mountpoint: &Path, kb: u32) {
    let Some(dev) = mount_device(mountpoint) else {
        tracing::debug!(mountpoint = %mountpoint.display(), "mount not found in mountinfo; read-ahead left as is");
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => tracing::debug!(path, kb, "kernel read-ahead raised"),
        Err(e) => tracing::debug!(path, error = %e, "kernel read-ahead left at its default"),
    }
}

/// `MAJ:MIN` of the last mount at `mountpoint` in /proc/self/mountinfo.
fn mount_device(mountpoint: &Path) -> Option<String> {
    let want = std::fs::canonicalize(mountpoint).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo_device(&info, &want.to_string_lossy())
}

/// The device field of the last line of `info` mounted at `mountpoint` (mountinfo escapes
/// spaces and the like as octal `\040`).
fn mountinfo_device(info: &str, mountpoint: &str) -> Option<String> {
    let escaped = mountpoint
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let at = f.nth(1)?;
        (at == escaped).then(|| dev.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::mountinfo_device;

    #[test]
    fn mountinfo_device_finds_the_last_mount_at_a_path() {
        let info = "22 1 0:21 / /tmp rw shared:1 - tmpfs tmpfs rw\n\
                    40 22 0:39 / /tmp/my\\040mnt rw,nosuid - fuse.ssecfs ssecfs:b rw\n\
                    41 22 0:40 / /tmp/my\\040mnt rw,nosuid - fuse.ssecfs ssecfs:b rw\n";
        assert_eq!(
            mountinfo_device(info, "/tmp/my mnt").as_deref(),
            Some("0:40")
        );
        assert_eq!(mountinfo_device(info, "/tmp").as_deref(), Some("0:21"));
        assert_eq!(mountinfo_device(info, "/nowhere"), None);
    }
}
