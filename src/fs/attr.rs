//! File attributes and their s3fs-compatible encoding in object metadata.
//!
//! s3fs keeps POSIX attributes in user metadata: `x-amz-meta-mode` (decimal, with the file-type
//! bits), `-uid`, `-gid`, `-mtime` (epoch seconds, s3fs also accepts a fraction). We write the
//! same names and formats so a bucket moves between s3fs and ssecfs in both directions. An
//! object without them gets defaults: the mounting user, 0644 / 0755, and LastModified.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::s3::Metadata;

/// What kind of node a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
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
        let kind = match mode.map(|m| m & libc::S_IFMT) {
            _ if dir_marker => Kind::Dir,
            Some(libc::S_IFLNK) => Kind::Symlink,
            Some(libc::S_IFDIR) => Kind::Dir,
            _ => Kind::File,
        };
        let mask = if defaults.special_modes {
            0o7777
        } else {
            0o777
        };
        let perm = mode.map(|m| (m & mask) as u16).unwrap_or(match kind {
            Kind::Dir => defaults.dir_perm,
            Kind::Symlink => 0o777,
            Kind::File => defaults.file_perm,
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
        Attr {
            kind,
            size,
            perm,
            uid: num(META_UID).unwrap_or(defaults.uid),
            gid: num(META_GID).unwrap_or(defaults.gid),
            mtime,
            ctime,
        }
    }

    /// The full `st_mode` (type bits + permissions), as s3fs stores it.
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
        };
        ty | u32::from(self.perm)
    }

    /// Metadata to store with the object.
    pub fn to_metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        m.insert(META_MODE.into(), self.mode().to_string());
        m.insert(META_UID.into(), self.uid.to_string());
        m.insert(META_GID.into(), self.gid.to_string());
        m.insert(META_MTIME.into(), epoch_secs(self.mtime).to_string());
        m.insert(META_CTIME.into(), epoch_secs(self.ctime).to_string());
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

/// Parse "1700000000" or "1700000000.123" (s3fs and rclone forms) into a time, truncated to
/// whole seconds like s3fs stores it.
pub fn parse_epoch(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    let secs: i64 = match v.split_once('.') {
        Some((s, _frac)) => s.parse().ok()?,
        None => v.parse().ok()?,
    };
    Some(if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    })
}

/// Truncate a time to whole seconds (what survives a round trip through metadata).
pub fn to_whole_secs(t: SystemTime) -> SystemTime {
    parse_epoch(&epoch_secs(t).to_string()).unwrap_or(t)
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
