//! File attributes and their s3fs-compatible encoding in object metadata.
//!
//! s3fs keeps POSIX attributes in user metadata: `x-amz-meta-mode` (decimal, with the file-type
//! bits), `-uid`, `-gid`, `-mtime`, `-ctime`, `-atime` (epoch seconds, with `.nnnnnnnnn`
//! nanoseconds when there are any, as s3fs 1.90+ writes them) and `-rdev` (device number of
//! a special file). We write the same names and formats so a bucket moves between s3fs and
//! ssecfs in both directions. An object without them gets defaults: the mounting user,
//! 0644 / 0755, and LastModified.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::s3::Metadata;

/// What kind of node a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Special files (`mknod`, `mkfifo`, a socket's `bind`): zero-length objects whose type
    /// is in the mode, as s3fs stores them. The kernel serves their I/O itself (a FIFO is a
    /// kernel pipe; the mount is `nodev`), so to the daemon they are names with attributes.
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The kind of a full `st_mode`; `None` for a type we cannot store.
    pub fn of_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => return None,
        })
    }

    /// The link count of a node of this kind: 2 for a directory (its entry and its `.`).
    pub fn links(self) -> u32 {
        if self == Kind::Dir {
            2
        } else {
            1
        }
    }
}

/// The attributes ssecfs tracks for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    pub size: u64,
    /// permission bits only (no type bits)
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub atime: SystemTime,
    /// Device number of a character or block device node (0 otherwise).
    pub rdev: u32,
    /// Link count the kernel sees: 1 (2 for a directory), 0 once unlinked while still open.
    /// Not stored: an object store has no hard links.
    pub nlink: u32,
}

/// Defaults for objects that carry no attribute metadata.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub uid: u32,
    pub gid: u32,
    pub file_perm: u16,
    pub dir_perm: u16,
    /// Keep setuid, setgid and sticky bits found in remote metadata (`--allow-special-modes`).
    /// Off by default: anyone with write access to the bucket can set `x-amz-meta-mode`, and
    /// a planted 0104755 must not show as a setuid program.
    pub special_modes: bool,
}

pub const META_MODE: &str = "mode";
pub const META_UID: &str = "uid";
pub const META_GID: &str = "gid";
pub const META_MTIME: &str = "mtime";
pub const META_CTIME: &str = "ctime";
pub const META_ATIME: &str = "atime";
pub const META_RDEV: &str = "rdev";

impl Attr {
    /// A fresh node created now.
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Attr {
        let now = SystemTime::now();
        Attr {
            kind,
            size: 0,
            perm: perm & 0o7777,
            uid,
            gid,
            mtime: now,
            ctime: now,
            atime: now,
            rdev: 0,
            nlink: kind.links(),
        }
    }

    /// Attributes of an object from its size, LastModified and metadata.
    pub fn from_object(
        size: u64,
        last_modified: SystemTime,
        meta: &Metadata,
        dir_marker: bool,
        defaults: &Defaults,
    ) -> Attr {
        let mode = meta
            .get(META_MODE)
            .and_then(|m| m.trim().parse::<u32>().ok());
        let kind = match mode.and_then(Kind::of_mode) {
            _ if dir_marker => Kind::Dir,
            Some(k) => k,
            None => Kind::File,
        };
        let mask = if defaults.special_modes {
            0o7777
        } else {
            0o777
        };
        let perm = mode.map(|m| (m & mask) as u16).unwrap_or(match kind {
            Kind::Dir => defaults.dir_perm,
            Kind::Symlink => 0o777,
            Kind::File | Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => {
                defaults.file_perm
            }
        });
        let num = |k: &str| meta.get(k).and_then(|v| v.trim().parse::<u32>().ok());
        let mtime = meta
            .get(META_MTIME)
            .and_then(|v| parse_epoch(v))
            .unwrap_or(last_modified);
        let ctime = meta
            .get(META_CTIME)
            .and_then(|v| parse_epoch(v))
            .unwrap_or(mtime);
        let atime = meta
            .get(META_ATIME)
            .and_then(|v| parse_epoch(v))
            .unwrap_or(mtime);
        let rdev = match kind {
            Kind::CharDevice | Kind::BlockDevice => num(META_RDEV).unwrap_or(0),
            _ => 0,
        };
        Attr {
            kind,
            size,
            perm,
            uid: num(META_UID).unwrap_or(defaults.uid),
            gid: num(META_GID).unwrap_or(defaults.gid),
            mtime,
            ctime,
            atime,
            rdev,
            nlink: kind.links(),
        }
    }

    /// The full `st_mode` (type bits + permissions), as s3fs stores it.
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | u32::from(self.perm)
    }

    /// Metadata to store with the object.
    pub fn to_metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        m.insert(META_MODE.into(), self.mode().to_string());
        m.insert(META_UID.into(), self.uid.to_string());
        m.insert(META_GID.into(), self.gid.to_string());
        m.insert(META_MTIME.into(), epoch_text(self.mtime));
        m.insert(META_CTIME.into(), epoch_text(self.ctime));
        m.insert(META_ATIME.into(), epoch_text(self.atime));
        if matches!(self.kind, Kind::CharDevice | Kind::BlockDevice) {
            m.insert(META_RDEV.into(), self.rdev.to_string());
        }
        m
    }
}

/// Whole seconds since the epoch (negative before 1970).
pub fn epoch_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

/// A time as s3fs writes it: `1700000000`, or `1700000000.000000123` when it has
/// nanoseconds (s3fs reads the digits after the point as nanoseconds, so always nine).
/// Before 1970: `-86400`, or `-86401.999999999` for a point 1 ns after -86401 s (the
/// fraction counts forwards from the whole second below, like `struct timespec`).
pub fn epoch_text(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    };
    if nanos == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{nanos:09}")
    }
}

/// Parse `1700000000`, `1700000000.000000123` (s3fs) or `1752126318.461` (rclone, a decimal
/// fraction) into a time: the digits after the point are a decimal fraction of a second, which
/// is the same reading for s3fs's nine digits.
pub fn parse_epoch(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u64 = digits.parse().ok()?;
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Defaults = Defaults {
        uid: 1000,
        gid: 100,
        file_perm: 0o644,
        dir_perm: 0o755,
        special_modes: false,
    };

    #[test]
    fn s3fs_metadata_round_trips() {
        let mut a = Attr::new(Kind::File, 0o640, 5, 6);
        a.size = 42;
        a.mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        a.ctime = a.mtime;
        a.atime = a.mtime;
        let m = a.to_metadata();
        assert_eq!(m["mode"], "33184"); // S_IFREG | 0640, decimal as s3fs writes it
        assert_eq!(m["mtime"], "1700000000");
        let b = Attr::from_object(42, SystemTime::now(), &m, false, &D);
        assert_eq!(a, b);
    }

    #[test]
    fn objects_without_metadata_get_defaults() {
        let lm = UNIX_EPOCH + Duration::from_secs(1234);
        let a = Attr::from_object(7, lm, &Metadata::new(), false, &D);
        assert_eq!(
            (a.kind, a.perm, a.uid, a.gid, a.mtime),
            (Kind::File, 0o644, 1000, 100, lm)
        );
        let d = Attr::from_object(0, lm, &Metadata::new(), true, &D);
        assert_eq!((d.kind, d.perm), (Kind::Dir, 0o755));
    }

    #[test]
    fn symlink_mode_and_fractional_mtime() {
        let mut m = Metadata::new();
        m.insert("mode".into(), (libc::S_IFLNK | 0o777).to_string());
        m.insert("mtime".into(), "1752126318.461".into());
        let a = Attr::from_object(3, SystemTime::now(), &m, false, &D);
        assert_eq!(a.kind, Kind::Symlink);
        assert_eq!(epoch_secs(a.mtime), 1_752_126_318);
    }

    #[test]
    fn times_before_1970() {
        let t = parse_epoch("-86400").unwrap();
        assert_eq!(epoch_secs(t), -86400);
    }

    #[test]
    fn times_keep_their_nanoseconds_as_s3fs_writes_them() {
        let cases = [
            (
                UNIX_EPOCH + Duration::new(100_000_000, 100_000_000),
                "100000000.100000000",
            ),
            (
                UNIX_EPOCH + Duration::new(1_700_000_000, 7),
                "1700000000.000000007",
            ),
            (UNIX_EPOCH + Duration::from_secs(1 << 32), "4294967296"),
            (UNIX_EPOCH - Duration::new(86_400, 1), "-86401.999999999"),
        ];
        for (t, text) in cases {
            assert_eq!(epoch_text(t), text);
            assert_eq!(parse_epoch(text), Some(t), "{text}");
        }
        // rclone's decimal fraction
        assert_eq!(
            parse_epoch("1752126318.461"),
            Some(UNIX_EPOCH + Duration::new(1_752_126_318, 461_000_000))
        );
        assert_eq!(parse_epoch("12.3x"), None);
    }

    #[test]
    fn special_files_round_trip_with_their_type_and_device() {
        for (kind, bits) in [
            (Kind::Fifo, libc::S_IFIFO),
            (Kind::Socket, libc::S_IFSOCK),
            (Kind::CharDevice, libc::S_IFCHR),
            (Kind::BlockDevice, libc::S_IFBLK),
        ] {
            let mut a = Attr::new(kind, 0o640, 5, 6);
            if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
                a.rdev = 0x0801;
            }
            let m = a.to_metadata();
            assert_eq!(m["mode"], (bits | 0o640).to_string());
            assert_eq!(m.contains_key("rdev"), a.rdev != 0);
            let b = Attr::from_object(0, SystemTime::now(), &m, false, &D);
            assert_eq!(a, b);
        }
        // what s3fs writes for `mknod c 8 1`
        let mut m = Metadata::new();
        m.insert("mode".into(), (libc::S_IFCHR | 0o600).to_string());
        m.insert("rdev".into(), "2049".into());
        let a = Attr::from_object(0, SystemTime::now(), &m, false, &D);
        assert_eq!((a.kind, a.perm, a.rdev), (Kind::CharDevice, 0o600, 2049));
    }

    #[test]
    fn special_mode_bits_from_remote_metadata_are_dropped_unless_asked_for() {
        let mut m = Metadata::new();
        m.insert("mode".into(), (libc::S_IFREG | 0o4755).to_string());
        let a = Attr::from_object(1, SystemTime::UNIX_EPOCH, &m, false, &D);
        assert_eq!(a.perm, 0o755, "a planted setuid bit");
        m.insert("mode".into(), (libc::S_IFDIR | 0o3777).to_string());
        let a = Attr::from_object(0, SystemTime::UNIX_EPOCH, &m, false, &D);
        assert_eq!((a.kind, a.perm), (Kind::Dir, 0o777));
        let trusting = Defaults {
            special_modes: true,
            ..D
        };
        let a = Attr::from_object(0, SystemTime::UNIX_EPOCH, &m, false, &trusting);
        assert_eq!(a.perm, 0o3777);
    }
}
