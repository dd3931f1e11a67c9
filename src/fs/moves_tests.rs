//! Background renames (`moves.rs`) against the in-memory store: answered before the server has
//! them, invisible through the mount, in order per key, stored by every durability point.

use super::tests::{fs_on, write_file};
use super::*;
use crate::s3::mem::MemStore;
use crate::s3::ReadSource;

async fn read_name(fs: &Fs, parent: u64, name: &str) -> Vec<u8> {
    let (ino, attr) = fs.lookup(parent, name).await.unwrap();
    let fh = fs.open(ino, false, false).await.unwrap();
    let buf = fs.read(ino, fh, 0, attr.size as u32 + 10).await.unwrap();
    fs.release(ino, fh).await.unwrap();
    buf.to_vec()
}

async fn names(fs: &Fs, dir: u64) -> Vec<String> {
    let fh = fs.opendir(dir).await.unwrap();
    let v = fs.readdir(fh, 0).unwrap().into_iter().map(|(_, e)| e.name);
    let v = v.filter(|n| n != "." && n != "..").collect();
    fs.releasedir(fh);
    v
}

/// A mount with copies answering slowly: a rename waits for none of them.
fn slow_copies(mem: &MemStore) -> Arc<Fs> {
    mem.delay_copy_replies(Duration::from_millis(300));
    fs_on(mem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_is_answered_before_its_copy_and_stored_by_fsyncdir() {
    let mem = MemStore::new("k");
    let fs = slow_copies(&mem);
    write_file(&fs, ROOT, ".f.tmp", b"content").await;
    let t = std::time::Instant::now();
    fs.rename(ROOT, ".f.tmp", ROOT, "f", false).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fs.pending().renames, 1);
    // the mount shows the new name at once, from the old object
    assert_eq!(read_name(&fs, ROOT, "f").await, b"content");
    assert!(matches!(
        fs.lookup(ROOT, ".f.tmp").await,
        Err(FsError::NotFound)
    ));
    // a second mount would still see the old name: not durable yet
    assert!(mem.raw(".f.tmp").is_some());
    fs.fsyncdir(ROOT).await.unwrap();
    assert_eq!(mem.raw("f").unwrap(), b"content");
    assert!(mem.raw(".f.tmp").is_none());
    assert_eq!(fs.pending().renames, 0);
    // the inode knows the copy now: reads do not go through a translation
    assert_eq!(read_name(&fs, ROOT, "f").await, b"content");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_during_the_move_shows_the_new_name_only() {
    let mem = MemStore::new("k");
    let fs = slow_copies(&mem);
    let (d, _) = fs.mkdir(ROOT, "d", 0o755, 1000, 1000).await.unwrap();
    write_file(&fs, d, ".a.tmp", b"aa").await;
    fs.rename(d, ".a.tmp", d, "a", false).await.unwrap();
    assert!(
        mem.raw("d/.a.tmp").is_some(),
        "the server still has the old name"
    );
    // this mount re-lists (as after its listing expired): the move is hidden
    let listed = fs.store.list("d/", Some("/"), None, None).await.unwrap();
    let keys: Vec<&str> = listed.objects.iter().map(|o| o.key.as_str()).collect();
    assert!(
        keys.contains(&"d/a") && !keys.contains(&"d/.a.tmp"),
        "{keys:?}"
    );
    assert_eq!(names(&fs, d).await, vec!["a"]);
    let info = fs.store.head("d/a").await.unwrap();
    assert_eq!(info.size, 2);
    fs.upload_all(UploadAll::Sync).await;
    assert_eq!(mem.raw("d/a").unwrap(), b"aa");
}

/// A write to the new name while the move is in flight lands after it: the copy never
/// overwrites newer data, and the edit builds on the moved object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_the_rename_lands_after_the_move() {
    let mem = MemStore::new("k");
    let fs = slow_copies(&mem);
    write_file(&fs, ROOT, ".f.tmp", b"0123456789").await;
    fs.rename(ROOT, ".f.tmp", ROOT, "f", false).await.unwrap();
    let (ino, _) = fs.lookup(ROOT, "f").await.unwrap();
    let fh = fs.open(ino, true, false).await.unwrap();
    fs.write(ino, 2, b"ab").await.unwrap();
    fs.flush(ino).await.unwrap();
    fs.release(ino, fh).await.unwrap();
    assert_eq!(mem.raw("f").unwrap(), b"01ab456789");
    assert!(mem.raw(".f.tmp").is_none());
    fs.upload_all(UploadAll::Sync).await;
    assert_eq!(mem.raw("f").unwrap(), b"01ab456789");
}

/// a → b → c, and a new file under the old name a: each lands in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_chain_and_a_new_file_under_the_old_name_keep_their_order() {
    let mem = MemStore::new("k");
    let fs = slow_copies(&mem);
    write_file(&fs, ROOT, "a", b"first").await;
    fs.rename(ROOT, "a", ROOT, "b", false).await.unwrap();
    fs.rename(ROOT, "b", ROOT, "c", false).await.unwrap();
    write_file(&fs, ROOT, "a", b"second").await;
    assert_eq!(read_name(&fs, ROOT, "c").await, b"first");
    assert_eq!(read_name(&fs, ROOT, "a").await, b"second");
    assert_eq!(fs.upload_all(UploadAll::Sync).await, 0);
    assert_eq!(mem.raw("a").unwrap(), b"second");
    assert!(mem.raw("b").is_none());
    assert_eq!(mem.raw("c").unwrap(), b"first");
}

/// A rename right behind the move it waits for sees the inode on the copy: the move is
/// recorded in the inode before its waiters wake, so the next move names the copy's version
/// (CI once read NotFound here when the waiter won that race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_behind_a_stored_move_names_the_copy() {
    let mem = MemStore::new("k");
    mem.delay_copy_replies(Duration::from_micros(200));
    let fs = fs_on(&mem);
    for i in 0..200 {
        let (a, b, c) = (format!("a{i}"), format!("b{i}"), format!("c{i}"));
        write_file(&fs, ROOT, &a, b"first").await;
        fs.rename(ROOT, &a, ROOT, &b, false).await.unwrap();
        fs.rename(ROOT, &b, ROOT, &c, false).await.unwrap();
        assert_eq!(read_name(&fs, ROOT, &c).await, b"first", "round {i}");
    }
    assert_eq!(fs.upload_all(UploadAll::Sync).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_over_a_file_and_an_unlink_of_the_new_name() {
    let mem = MemStore::new("k");
    let fs = slow_copies(&mem);
    write_file(&fs, ROOT, "old", b"replaced").await;
    write_file(&fs, ROOT, "new", b"winner").await;
    fs.rename(ROOT, "new", ROOT, "old", false).await.unwrap();
    assert_eq!(read_name(&fs, ROOT, "old").await, b"winner");
    write_file(&fs, ROOT, "x", b"x").await;
    fs.rename(ROOT, "x", ROOT, "y", false).await.unwrap();
    fs.unlink(ROOT, "y").await.unwrap();
    assert_eq!(fs.upload_all(UploadAll::Sync).await, 0);
    assert_eq!(mem.raw("old").unwrap(), b"winner");
    assert!(mem.raw("new").is_none() && mem.raw("x").is_none() && mem.raw("y").is_none());
}

/// Files renamed into a directory, then the directory renamed: every file arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_rename_carries_the_moves_into_it() {
    let mem = MemStore::new("k");
    let fs = slow_copies(&mem);
    let (d, _) = fs.mkdir(ROOT, "d", 0o755, 1000, 1000).await.unwrap();
    for i in 0..5 {
        let tmp = format!(".t{i}");
        write_file(&fs, ROOT, &tmp, format!("file {i}").as_bytes()).await;
        fs.rename(ROOT, &tmp, d, &format!("f{i}"), false)
            .await
            .unwrap();
    }
    fs.rename(ROOT, "d", ROOT, "e", false).await.unwrap();
    assert_eq!(fs.upload_all(UploadAll::Sync).await, 0);
    for i in 0..5 {
        assert_eq!(
            mem.raw(&format!("e/f{i}")).unwrap(),
            format!("file {i}").as_bytes()
        );
        assert!(mem.raw(&format!("d/f{i}")).is_none());
        assert!(mem.raw(&format!(".t{i}")).is_none());
    }
}

/// A move that fails stays pending, the file is served from its old object, and the next
/// durability point stores it (or says it could not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_move_is_retried_by_fsync_and_reported_when_it_fails_again() {
    let mem = MemStore::new("k");
    let (failing, fs) = super::tests::failing_fs_on(&mem, FsConfig::new("", 1000, 1000));
    // the same steps on a mount that fails nothing tell which request is the copy
    let rehearsal = MemStore::new("k");
    let (counted, fs2) = super::tests::failing_fs_on(&rehearsal, FsConfig::new("", 1000, 1000));
    write_file(&fs2, ROOT, ".f.tmp", b"data").await;
    fs2.rename(ROOT, ".f.tmp", ROOT, "f", false).await.unwrap();
    fs2.fsyncdir(ROOT).await.unwrap();
    let copy = counted.log().iter().position(|&op| op == "copy").unwrap() as u64 + 1;

    let ino = write_file(&fs, ROOT, ".f.tmp", b"data").await;
    failing.fail_also(copy);
    fs.rename(ROOT, ".f.tmp", ROOT, "f", false).await.unwrap();
    while failing.requests() < copy {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(fs.pending().renames, 1);
    assert_eq!(read_name(&fs, ROOT, "f").await, b"data");
    // fsync tries the move again: its copy is the next request, and fails too
    failing.fail_also(failing.requests() + 1);
    assert!(fs.fsync(ino).await.is_err());
    assert!(
        mem.raw(".f.tmp").is_some(),
        "the data is under its old name"
    );
    fs.fsync(ino).await.unwrap();
    assert_eq!(mem.raw("f").unwrap(), b"data");
    assert!(mem.raw(".f.tmp").is_none());
}

/// rsync's pattern costs one round trip on the critical path (the PutObject close owes);
/// the rename's copy and delete follow, 2,000 files' worth at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_renames_run_at_once() {
    let mem = MemStore::new("k");
    let fs = slow_copies(&mem);
    let t = std::time::Instant::now();
    for i in 0..64 {
        write_file(&fs, ROOT, &format!(".{i}.tmp"), b"x").await;
        fs.rename(ROOT, &format!(".{i}.tmp"), ROOT, &format!("{i}"), false)
            .await
            .unwrap();
    }
    assert_eq!(fs.upload_all(UploadAll::Sync).await, 0);
    // 64 copies of 300 ms one after another would take 19 s
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for i in 0..64 {
        assert_eq!(mem.raw(&format!("{i}")).unwrap(), b"x");
    }
}

/// rsync 3.2's pattern, as strace shows it: create the temporary file 0600, write, close,
/// utimensat, then open it read-only, fchmod 0644, close, rename. Only the first close's
/// PutObject is on the critical path; the rename's copy carries the times and the mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyncs_fchmod_through_a_read_only_descriptor_costs_no_round_trip() {
    let mem = MemStore::new("k");
    let fs = slow_copies(&mem);
    let before = mem.counts();
    let (ino, _, fh) = fs.create(ROOT, ".f.XyZ", 0o600, 1000, 1000).await.unwrap();
    fs.write(ino, 0, b"data").await.unwrap();
    fs.flush(ino).await.unwrap();
    fs.release(ino, fh).await.unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let set = |mode, mtime| SetAttr {
        mode,
        mtime,
        ..Default::default()
    };
    fs.setattr(ino, set(None, Some(mtime))).await.unwrap();
    let fh = fs.open(ino, false, false).await.unwrap();
    fs.setattr(ino, set(Some(0o644), None)).await.unwrap();
    fs.flush(ino).await.unwrap();
    fs.release(ino, fh).await.unwrap();
    fs.rename(ROOT, ".f.XyZ", ROOT, "f", false).await.unwrap();
    let spent = |now: &std::collections::BTreeMap<&str, u64>, op: &str| {
        now.get(op).unwrap_or(&0) - before.get(op).unwrap_or(&0)
    };
    // the close after fchmod made no request: the PutObject (and at most the rename's own
    // copy, starting in the background) so far
    let now = mem.counts();
    assert_eq!(spent(&now, "put"), 1, "{now:?}");
    assert!(spent(&now, "copy") <= 1, "{now:?}");
    fs.fsyncdir(ROOT).await.unwrap();
    tokio::time::sleep(META_DELAY * 2).await;
    let now = mem.counts();
    assert_eq!(
        (
            spent(&now, "put"),
            spent(&now, "copy"),
            spent(&now, "delete")
        ),
        (1, 1, 1),
        "{now:?}"
    );
    let meta = mem.head("f").await.unwrap().metadata;
    assert_eq!(
        (meta["mtime"].as_str(), meta["mode"].as_str()),
        ("1600000000", "33188")
    );
}

/// Between the delete of the old name and the end of the move, a read naming the version the
/// mount knows (the old one: a dirty writer loading a part it has not read yet) finds the
/// copy, not a 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_the_old_name_is_deleted_but_before_the_move_ends_finds_the_copy() {
    let mem = MemStore::new("k");
    let fs = fs_on(&mem);
    write_file(&fs, ROOT, ".f.tmp", b"content").await;
    let old = fs.store.head(".f.tmp").await.unwrap().etag;
    mem.delay_delete_replies(Duration::from_millis(500));
    fs.rename(ROOT, ".f.tmp", ROOT, "f", false).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mem.raw(".f.tmp").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the move never deleted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fs.pending().renames, 1, "the delete has not answered yet");
    let src = ReadSource {
        key: "f",
        etag: Some(&old),
        sealing: Sealing::PRIMARY,
    };
    let mut buf = [0u8; 7];
    let n = fs
        .store
        .get_ranges(&src, 0, &mut [&mut buf[..]])
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"content");
    fs.fsyncdir(ROOT).await.unwrap();
}
