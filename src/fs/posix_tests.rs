//! POSIX details pjdfstest checks, against the in-memory store: special files, link counts,
//! and which operations move ctime, mtime and atime.

use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::s3::mem::MemStore;

fn fs_on(mem: &MemStore) -> Arc<Fs> {
    Fs::new(
        FsConfig::new("", 1000, 1000),
        Arc::new(mem.clone()),
        Arena::with_cap_unchecked(32 << 20),
    )
}

/// Long enough for a clock reading to move past the last one.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test]
async fn special_files_are_zero_length_objects_with_their_type_and_device() {
    let mem = MemStore::new("k");
    let fs = fs_on(&mem);
    let kinds = [
        ("fifo", libc::S_IFIFO, Kind::Fifo, 0),
        ("sock", libc::S_IFSOCK, Kind::Socket, 0),
        ("chr", libc::S_IFCHR, Kind::CharDevice, 0x0801),
        ("blk", libc::S_IFBLK, Kind::BlockDevice, 0x0802),
    ];
    for (name, bits, kind, rdev) in kinds {
        let (_, attr) = fs
            .mknod(ROOT, name, bits | 0o640, rdev, 1000, 1000)
            .await
            .unwrap();
        assert_eq!((attr.kind, attr.perm, attr.rdev), (kind, 0o640, rdev));
        let info = mem.head(name).await.unwrap();
        assert_eq!(info.size, 0, "{name}: no body");
        assert_eq!(info.metadata["mode"], (bits | 0o640).to_string());
        assert_eq!(
            info.metadata.get("rdev").cloned(),
            (rdev != 0).then(|| rdev.to_string())
        );
    }
    assert!(matches!(
        fs.mknod(ROOT, "fifo", libc::S_IFIFO | 0o600, 0, 1000, 1000)
            .await,
        Err(FsError::Exists)
    ));
    // a fresh mount finds them as they were made; they rename and unlink like files
    let fs = fs_on(&mem);
    for (name, _, kind, rdev) in kinds {
        let (_, attr) = fs.lookup(ROOT, name).await.unwrap();
        assert_eq!(
            (attr.kind, attr.perm, attr.rdev),
            (kind, 0o640, rdev),
            "{name}"
        );
    }
    fs.rename(ROOT, "chr", ROOT, "chr2", false).await.unwrap();
    let (_, attr) = fs.lookup(ROOT, "chr2").await.unwrap();
    assert_eq!((attr.kind, attr.rdev), (Kind::CharDevice, 0x0801));
    fs.fsyncdir(ROOT).await.unwrap();
    assert_eq!(mem.head("chr2").await.unwrap().metadata["rdev"], "2049");
    fs.unlink(ROOT, "fifo").await.unwrap();
    assert!(matches!(
        fs.lookup(ROOT, "fifo").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn a_directory_moves_its_times_with_its_entries_and_a_failure_moves_nothing() {
    let mem = MemStore::new("k");
    let fs = fs_on(&mem);
    let (d, _) = fs.mkdir(ROOT, "d", 0o755, 1000, 1000).await.unwrap();
    let (e, _) = fs.mkdir(ROOT, "e", 0o755, 1000, 1000).await.unwrap();
    let times = |a: Attr| (a.mtime, a.ctime);
    let mut last = times(fs.getattr(d).await.unwrap());
    let mut step = |what: &str, now: (SystemTime, SystemTime), moved: bool| {
        assert_eq!(
            now.0 > last.0 && now.1 > last.1,
            moved,
            "{what}: {now:?} after {last:?}"
        );
        last = now;
    };
    tick().await;
    let (f, _, fh) = fs.create(d, "f", 0o644, 1000, 1000).await.unwrap();
    fs.release(f, fh).await.unwrap();
    step("create", times(fs.getattr(d).await.unwrap()), true);
    tick().await;
    fs.mknod(d, "p", libc::S_IFIFO | 0o644, 0, 1000, 1000)
        .await
        .unwrap();
    step("mknod", times(fs.getattr(d).await.unwrap()), true);
    tick().await;
    fs.symlink(d, "l", "f", 1000, 1000).await.unwrap();
    step("symlink", times(fs.getattr(d).await.unwrap()), true);
    tick().await;
    assert!(fs.rmdir(ROOT, "d").await.is_err());
    assert!(fs.mkdir(d, "f", 0o755, 1000, 1000).await.is_err());
    step("failures", times(fs.getattr(d).await.unwrap()), false);
    fs.rename(d, "p", e, "p", false).await.unwrap();
    step("rename away", times(fs.getattr(d).await.unwrap()), true);
    tick().await;
    fs.unlink(d, "l").await.unwrap();
    step("unlink", times(fs.getattr(d).await.unwrap()), true);
    // the marker keeps what it stored; the times in memory win over it when it is read again
    fs.names.forget_all_heads();
    fs.names
        .update(d, |n| n.fresh_until = std::time::Instant::now());
    step("refresh", times(fs.getattr(d).await.unwrap()), false);
}

#[tokio::test]
async fn ctime_moves_with_every_change_of_a_file_and_the_rename_stores_it() {
    let mem = MemStore::new("k");
    let fs = fs_on(&mem);
    let (f, _, fh) = fs.create(ROOT, "f", 0o644, 1000, 1000).await.unwrap();
    fs.write(f, 0, b"abc").await.unwrap();
    fs.flush(f).await.unwrap();
    fs.release(f, fh).await.unwrap();
    let mut ctime = fs.getattr(f).await.unwrap().ctime;
    let mut moved = |what: &str, now: SystemTime| {
        assert!(
            now > ctime,
            "{what}: ctime {now:?} did not move from {ctime:?}"
        );
        ctime = now;
    };
    let set = |s: SetAttr| async { fs.setattr(f, s).await.unwrap().ctime };
    tick().await;
    moved(
        "chmod",
        set(SetAttr {
            mode: Some(0o600),
            ..Default::default()
        })
        .await,
    );
    tick().await;
    moved(
        "chown",
        set(SetAttr {
            uid: Some(7),
            ..Default::default()
        })
        .await,
    );
    tick().await;
    moved(
        "truncate",
        set(SetAttr {
            size: Some(1),
            ..Default::default()
        })
        .await,
    );
    tick().await;
    let fh = fs.open(f, true, true).await.unwrap();
    moved("O_TRUNC", fs.getattr(f).await.unwrap().ctime);
    tick().await;
    fs.write(f, 0, b"x").await.unwrap();
    moved("write", fs.getattr(f).await.unwrap().ctime);
    fs.flush(f).await.unwrap();
    fs.release(f, fh).await.unwrap();
    tick().await;
    fs.rename(ROOT, "f", ROOT, "g", false).await.unwrap();
    moved("rename", fs.getattr(f).await.unwrap().ctime);
    fs.fsyncdir(ROOT).await.unwrap();
    let stored = mem.head("g").await.unwrap().metadata["ctime"].clone();
    assert_eq!(
        attr::parse_epoch(&stored),
        Some(ctime),
        "the copy stored it"
    );
}

#[tokio::test]
async fn times_keep_their_nanoseconds_and_atime_its_own_value_on_the_server() {
    let mem = MemStore::new("k");
    let fs = fs_on(&mem);
    let ino = {
        let (ino, _, fh) = fs.create(ROOT, "f", 0o644, 1000, 1000).await.unwrap();
        fs.release(ino, fh).await.unwrap();
        ino
    };
    let atime = UNIX_EPOCH + Duration::new(1 << 31, 100_000_000);
    let mtime = UNIX_EPOCH + Duration::new(1 << 32, 200_000_007);
    let set = SetAttr {
        atime: Some(atime),
        mtime: Some(mtime),
        ..Default::default()
    };
    let attr = fs.setattr(ino, set).await.unwrap();
    assert_eq!((attr.atime, attr.mtime), (atime, mtime));
    fs.fsync(ino).await.unwrap();
    let fs = fs_on(&mem);
    let (_, attr) = fs.lookup(ROOT, "f").await.unwrap();
    assert_eq!((attr.atime, attr.mtime), (atime, mtime));
}

#[tokio::test]
async fn link_counts_show_unlinked_open_files_and_subdirectories() {
    let mem = MemStore::new("k");
    let fs = fs_on(&mem);
    let (f, _, fh) = fs.create(ROOT, "open", 0o644, 1000, 1000).await.unwrap();
    assert_eq!(fs.getattr(f).await.unwrap().nlink, 1);
    fs.unlink(ROOT, "open").await.unwrap();
    assert_eq!(
        fs.getattr(f).await.unwrap().nlink,
        0,
        "unlinked, still open"
    );
    fs.write(f, 0, b"still here").await.unwrap();
    assert_eq!(&fs.read(f, fh, 0, 64).await.unwrap()[..], b"still here");
    fs.release(f, fh).await.unwrap();

    let (a, _) = fs.mkdir(ROOT, "a", 0o755, 1000, 1000).await.unwrap();
    let (b, _) = fs.mkdir(ROOT, "b", 0o755, 1000, 1000).await.unwrap();
    fs.mkdir(a, "sub", 0o755, 1000, 1000).await.unwrap();
    fs.mknod(a, "p", libc::S_IFIFO | 0o644, 0, 1000, 1000)
        .await
        .unwrap();
    let links = |ino| {
        let fs = fs.clone();
        async move { fs.getattr(ino).await.unwrap().nlink }
    };
    assert_eq!((links(a).await, links(b).await), (3, 2));
    fs.rename(a, "sub", b, "sub", false).await.unwrap();
    assert_eq!((links(a).await, links(b).await), (2, 3));
}
