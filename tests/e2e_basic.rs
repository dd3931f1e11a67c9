//! End-to-end: everyday file operations through a real mount of a Garage bucket, checked
//! through the mount, after a remount, and directly on the server (every object readable with
//! the key and only with it).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[track_caller]
fn assert_content(p: &Path, expected: &[u8]) {
    let got = read(p);
    assert!(
        got == expected,
        "{}: {} bytes (sha256 {}), expected {} bytes (sha256 {})",
        p.display(),
        got.len(),
        sha256_hex(&got),
        expected.len(),
        sha256_hex(expected)
    );
}

/// `p` (through the mount) and `key` (on the server) both hold `expected`.
#[track_caller]
fn assert_file(b: &TestBucket, m: &Mount, rel: &str, expected: &[u8]) {
    assert_content(&m.path(rel), expected);
    assert_stored(b.name(), rel, m.key(), expected);
}

fn local_epoch(date: &str) -> i64 {
    run("date", &["-d", date, "+%s"])
        .trim()
        .parse()
        .expect("epoch")
}

#[test]
fn write_read_overwrite_append_truncate() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);

    // write, read back
    let mut expected = random_bytes(10_000);
    fs::write(m.path("f.bin"), &expected).unwrap();
    assert_file(&b, &m, "f.bin", &expected);

    // overwrite with something shorter, then longer
    expected = b"short".to_vec();
    fs::write(m.path("f.bin"), &expected).unwrap();
    assert_file(&b, &m, "f.bin", &expected);
    expected = random_bytes(300_000);
    fs::write(m.path("f.bin"), &expected).unwrap();
    assert_file(&b, &m, "f.bin", &expected);

    // append with the shell, then with O_APPEND
    sh(&format!(
        "printf 'tail-1\\n' >> '{}'",
        m.path("f.bin").display()
    ));
    expected.extend_from_slice(b"tail-1\n");
    assert_file(&b, &m, "f.bin", &expected);
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.path("f.bin"))
            .unwrap();
        f.write_all(b"tail-2\n").unwrap();
    }
    expected.extend_from_slice(b"tail-2\n");
    assert_file(&b, &m, "f.bin", &expected);

    // in-place edit in the middle (no truncation)
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(m.path("f.bin"))
            .unwrap();
        f.seek(SeekFrom::Start(1000)).unwrap();
        f.write_all(b"MIDDLE").unwrap();
    }
    expected[1000..1006].copy_from_slice(b"MIDDLE");
    assert_file(&b, &m, "f.bin", &expected);

    // truncate: shrink, grow (zeros), to zero
    run(
        "truncate",
        &["-s", "1000", m.path("f.bin").to_str().unwrap()],
    );
    expected.truncate(1000);
    assert_file(&b, &m, "f.bin", &expected);
    assert_eq!(fs::metadata(m.path("f.bin")).unwrap().len(), 1000);
    run(
        "truncate",
        &["-s", "5000", m.path("f.bin").to_str().unwrap()],
    );
    expected.resize(5000, 0);
    assert_file(&b, &m, "f.bin", &expected);
    fs::OpenOptions::new()
        .write(true)
        .open(m.path("f.bin"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    expected.truncate(4096);
    assert_file(&b, &m, "f.bin", &expected);

    // an empty file, and a file truncated to zero
    fs::File::create(m.path("empty")).unwrap();
    assert_file(&b, &m, "empty", b"");
    fs::write(m.path("zeroed"), b"something").unwrap();
    run("truncate", &["-s", "0", m.path("zeroed").to_str().unwrap()]);
    assert_file(&b, &m, "zeroed", b"");

    // write through one handle, read through another while it is open
    {
        let mut w = fs::File::create(m.path("open.txt")).unwrap();
        w.write_all(b"seen while open").unwrap();
        let mut r = String::new();
        fs::File::open(m.path("open.txt"))
            .unwrap()
            .read_to_string(&mut r)
            .unwrap();
        assert_eq!(r, "seen while open");
    }
    assert_file(&b, &m, "open.txt", b"seen while open");

    let before = snapshot(m.root());
    m.remount();
    assert_same_tree("after remount", &before, &snapshot(m.root()));
    assert_file(&b, &m, "f.bin", &expected);
    assert_file(&b, &m, "empty", b"");
    assert_file(&b, &m, "zeroed", b"");
    assert_file(&b, &m, "open.txt", b"seen while open");
    assert_eq!(
        list(b.name(), ""),
        vec!["empty", "f.bin", "open.txt", "zeroed"],
        "objects on the server"
    );
}

/// A local tree: files of assorted sizes and modes, nested directories, a symlink.
fn make_local_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deep/deeper")).unwrap();
    fs::write(root.join("a.txt"), b"alpha\n").unwrap();
    fs::write(root.join("sub/b.bin"), random_bytes(70_000)).unwrap();
    fs::write(root.join("sub/deep/c.txt"), b"gamma\n").unwrap();
    fs::write(root.join("sub/deep/deeper/d.bin"), random_bytes(1234)).unwrap();
    fs::write(root.join("sub/empty"), b"").unwrap();
    fs::set_permissions(root.join("sub/b.bin"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("sub/deep"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("deep/c.txt", root.join("sub/link")).unwrap();
    run(
        "touch",
        &[
            "-d",
            "2021-05-06 07:08:09",
            root.join("a.txt").to_str().unwrap(),
        ],
    );
}

/// Every regular file under `rel_dir` of the mount is stored under its key, with the key only.
fn assert_tree_stored(b: &TestBucket, m: &Mount, rel_dir: &str) {
    for (rel, node) in snapshot(&m.path(rel_dir)) {
        let key = if rel_dir.is_empty() {
            rel.clone()
        } else {
            format!("{rel_dir}/{rel}")
        };
        match node {
            Node::File { .. } => assert_file(b, m, &key, &read(&m.path(&key))),
            Node::Symlink { target } => assert_stored(
                b.name(),
                &key,
                m.key(),
                target.as_os_str().as_encoded_bytes(),
            ),
            Node::Dir { .. } => {}
        }
    }
}

#[test]
fn cp_and_mv_of_files_and_directories() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    let local = tempdir("e2e-local-");
    let src = local.path().join("src");
    make_local_tree(&src);
    let src_snap = snapshot(&src);

    // cp -a keeps contents, modes, mtimes, symlinks
    run(
        "cp",
        &[
            "-a",
            src.to_str().unwrap(),
            m.path("copy").to_str().unwrap(),
        ],
    );
    assert_same_tree(
        "cp -a into the mount",
        &src_snap,
        &snapshot(&m.path("copy")),
    );
    assert_tree_stored(&b, &m, "copy");

    // cp -a back out of the mount
    let back = local.path().join("back");
    run(
        "cp",
        &[
            "-a",
            m.path("copy").to_str().unwrap(),
            back.to_str().unwrap(),
        ],
    );
    assert_same_tree("cp -a out of the mount", &src_snap, &snapshot(&back));

    // cp within the mount
    run("cp", &[m.path("copy/a.txt"), m.path("a-copy.txt")]);
    assert_file(&b, &m, "a-copy.txt", b"alpha\n");

    // mv of a file: new name has the content (and mode/mtime), old name is gone everywhere
    let a_meta = fs::metadata(m.path("copy/a.txt")).unwrap();
    run("mv", &[m.path("copy/a.txt"), m.path("moved.txt")]);
    assert!(!m.path("copy/a.txt").exists());
    assert_file(&b, &m, "moved.txt", b"alpha\n");
    let moved_meta = fs::metadata(m.path("moved.txt")).unwrap();
    assert_eq!(moved_meta.mode(), a_meta.mode(), "mode kept by mv");
    assert_eq!(moved_meta.mtime(), a_meta.mtime(), "mtime kept by mv");
    assert!(head(b.name(), "copy/a.txt", Some(m.key())).is_err());

    // mv of a file over an existing one
    fs::write(m.path("victim.txt"), b"old").unwrap();
    fs::write(m.path("winner.txt"), b"new content").unwrap();
    run("mv", &[m.path("winner.txt"), m.path("victim.txt")]);
    assert!(!m.path("winner.txt").exists());
    assert_file(&b, &m, "victim.txt", b"new content");

    // mv of a directory with nested contents
    let sub_before = snapshot(&m.path("copy/sub"));
    run("mv", &[m.path("copy/sub"), m.path("renamed")]);
    assert!(!m.path("copy/sub").exists());
    assert_same_tree(
        "mv of a directory",
        &sub_before,
        &snapshot(&m.path("renamed")),
    );
    assert_tree_stored(&b, &m, "renamed");
    let leftovers: Vec<String> = list(b.name(), "copy/sub");
    assert!(
        leftovers.is_empty(),
        "objects left under the old directory name: {leftovers:?}"
    );

    // mv of a directory into another directory
    fs::create_dir(m.path("parent")).unwrap();
    run("mv", &[m.path("renamed"), m.path("parent/")]);
    assert!(!m.path("renamed").exists());
    assert_same_tree(
        "mv of a directory into another",
        &sub_before,
        &snapshot(&m.path("parent/renamed")),
    );
    assert_tree_stored(&b, &m, "parent");
    assert!(
        list(b.name(), "renamed").is_empty(),
        "{:?}",
        list(b.name(), "")
    );

    // mv of a directory out of the mount and back in (cross-filesystem: copy + delete)
    let outside = local.path().join("outside");
    run("mv", &[m.path("parent/renamed"), outside.clone()]);
    assert!(!m.path("parent/renamed").exists());
    assert_same_tree("mv out of the mount", &sub_before, &snapshot(&outside));
    assert!(list(b.name(), "parent/renamed").is_empty());
    run("mv", &[outside, m.path("back-in")]);
    assert_same_tree(
        "mv into the mount",
        &sub_before,
        &snapshot(&m.path("back-in")),
    );
    assert_tree_stored(&b, &m, "back-in");

    let before = snapshot(m.root());
    m.remount();
    assert_same_tree("after remount", &before, &snapshot(m.root()));
    assert_tree_stored(&b, &m, "");
}

#[test]
fn chmod_touch_symlink_survive_remount() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    fs::write(m.path("f"), b"file body").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/inner"), b"inner").unwrap();

    // chmod of a file and of a directory
    run("chmod", &["640", m.path("f").to_str().unwrap()]);
    assert_eq!(perm_of(&m.path("f")), 0o640);
    run("chmod", &["u=rwx,g=rx,o=", m.path("d").to_str().unwrap()]);
    assert_eq!(perm_of(&m.path("d")), 0o750);
    run("chmod", &["755", m.path("d/inner").to_str().unwrap()]);
    assert_eq!(perm_of(&m.path("d/inner")), 0o755);

    // touch -d: whole-second mtime, on a file and a directory
    let when = "2020-01-02 03:04:05";
    let epoch = local_epoch(when);
    run("touch", &["-d", when, m.path("f").to_str().unwrap()]);
    assert_eq!(mtime_of(&m.path("f")), epoch);
    run(
        "touch",
        &["-d", "2019-12-31 23:59:58", m.path("d").to_str().unwrap()],
    );
    let d_epoch = local_epoch("2019-12-31 23:59:58");
    assert_eq!(mtime_of(&m.path("d")), d_epoch);

    // symlinks: relative, absolute-looking, dangling, to a directory
    std::os::unix::fs::symlink("f", m.path("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", m.path("dangling")).unwrap();
    run("ln", &["-s", "d", m.path("dir-link").to_str().unwrap()]);
    assert_eq!(
        run("readlink", &[m.path("rel-link")]).trim_end(),
        "f",
        "readlink"
    );
    assert_eq!(
        fs::read_link(m.path("dangling")).unwrap(),
        Path::new("/nonexistent/target")
    );
    assert_content(&m.path("rel-link"), b"file body");
    assert_content(&m.path("dir-link/inner"), b"inner");
    assert!(fs::symlink_metadata(m.path("rel-link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::metadata(m.path("dangling"))
            .map_err(|e| errno(&e))
            .unwrap_err(),
        libc::ENOENT
    );

    // on the server: metadata of the file (s3fs form), symlink bodies are their targets
    let h = head(b.name(), "f", Some(m.key())).unwrap();
    assert_eq!(h.metadata.get("mode").map(String::as_str), Some("33184")); // S_IFREG|0640
    assert_eq!(h.metadata.get("mtime"), Some(&epoch.to_string()));
    assert_stored(b.name(), "f", m.key(), b"file body");
    assert_stored(b.name(), "rel-link", m.key(), b"f");
    assert_stored(b.name(), "dangling", m.key(), b"/nonexistent/target");
    let hl = head(b.name(), "rel-link", Some(m.key())).unwrap();
    assert_eq!(
        hl.metadata.get("mode").and_then(|v| v.parse::<u32>().ok()),
        Some(libc::S_IFLNK | 0o777),
        "symlink mode metadata: {hl:?}"
    );

    let before = snapshot(m.root());
    m.remount();
    assert_same_tree("after remount", &before, &snapshot(m.root()));
    assert_eq!(perm_of(&m.path("f")), 0o640);
    assert_eq!(perm_of(&m.path("d")), 0o750);
    assert_eq!(perm_of(&m.path("d/inner")), 0o755);
    assert_eq!(mtime_of(&m.path("f")), epoch, "file mtime after remount");
    assert_eq!(
        mtime_of(&m.path("d")),
        d_epoch,
        "directory mtime after remount"
    );
    assert_eq!(fs::read_link(m.path("rel-link")).unwrap(), Path::new("f"));
    assert_eq!(fs::read_link(m.path("dir-link")).unwrap(), Path::new("d"));
    assert_content(&m.path("rel-link"), b"file body");

    // chmod after the remount (the object is on the server, not being written)
    run("chmod", &["600", m.path("f").to_str().unwrap()]);
    m.remount();
    assert_eq!(perm_of(&m.path("f")), 0o600);
    assert_eq!(mtime_of(&m.path("f")), epoch, "chmod must not change mtime");
    assert_file(&b, &m, "f", b"file body");
}

/// chmod and `touch -d` on a file that is open for writing with unflushed data: later writes
/// through the open descriptor still work, and close uploads everything with the new mode
/// (the mtime moves to the time of the last write, as POSIX wants).
#[test]
fn chmod_and_touch_of_a_file_being_written() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    // a new file
    {
        let mut w = fs::File::create(m.path("new")).unwrap();
        w.write_all(b"open body").unwrap();
        run(
            "touch",
            &["-d", "2020-01-02 03:04:05", m.path("new").to_str().unwrap()],
        );
        w.write_all(b" more")
            .expect("write after `touch -d` of the open file");
    }
    assert_file(&b, &m, "new", b"open body more");
    // an existing file opened for append
    fs::write(m.path("old"), b"base\n").unwrap();
    {
        let mut w = fs::OpenOptions::new()
            .append(true)
            .open(m.path("old"))
            .unwrap();
        w.write_all(b"x").unwrap();
        run("chmod", &["600", m.path("old").to_str().unwrap()]);
        w.write_all(b"y")
            .expect("write after chmod of the open file");
    }
    assert_file(&b, &m, "old", b"base\nxy");
    assert_eq!(perm_of(&m.path("old")), 0o600);
    m.remount();
    assert_file(&b, &m, "new", b"open body more");
    assert_file(&b, &m, "old", b"base\nxy");
    assert_eq!(perm_of(&m.path("old")), 0o600);
}

/// The race behind a CI failure of the test above: a file is kept open for appending while
/// chmods and other processes' flushes (every exec closes the child's copy of the descriptor,
/// and FUSE tells the filesystem) store its attributes with CopyObject, so writes keep
/// arriving while a copy replaces the object they build on. Every write must succeed and
/// land, and the last mode must stick.
#[test]
fn writes_racing_attribute_copies_of_the_open_file() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    let path = m.path("log");
    fs::write(&path, b"start\n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut w = fs::OpenOptions::new().append(true).open(&path).unwrap();
    // flushes of `w` at random moments, as parallel tests caused in CI
    let flusher = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::process::Command::new("true").status().unwrap();
            }
        }
    });
    let mut expected = b"start\n".to_vec();
    let mut mode = 0o644;
    for i in 0..300u32 {
        let line = format!("line {i}\n");
        w.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("write {i} to the open file: {e}"));
        expected.extend_from_slice(line.as_bytes());
        mode = if i % 2 == 0 { 0o600 } else { 0o640 };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(i as u64 % 4));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flusher.join().unwrap();
    drop(w);
    assert_file(&b, &m, "log", &expected);
    assert_eq!(perm_of(&path), mode);
    m.remount();
    assert_file(&b, &m, "log", &expected);
    assert_eq!(perm_of(&m.path("log")), mode);
}

#[test]
fn mkdir_rmdir_rm_and_name_limits() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);

    run("mkdir", &["-p", m.path("a/b/c").to_str().unwrap()]);
    for d in ["a", "a/b", "a/b/c"] {
        assert!(m.path(d).is_dir(), "{d} is a directory");
    }
    let keys = list(b.name(), "");
    for marker in ["a/", "a/b/", "a/b/c/"] {
        assert!(
            keys.contains(&marker.to_string()),
            "marker {marker} in {keys:?}"
        );
    }

    // rmdir of a non-empty directory
    let e = fs::remove_dir(m.path("a/b")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY, "rmdir a/b: {e}");
    let out = sh_output(&format!("rmdir '{}'", m.path("a").display()));
    assert!(
        !out.status.success(),
        "rmdir of a non-empty directory succeeded"
    );
    // rmdir of an empty one
    fs::remove_dir(m.path("a/b/c")).unwrap();
    assert!(!m.path("a/b/c").exists());
    assert!(!list(b.name(), "").contains(&"a/b/c/".to_string()));
    // rmdir of a file, unlink of a directory
    fs::write(m.path("a/file"), b"x").unwrap();
    assert_eq!(
        errno(&fs::remove_dir(m.path("a/file")).unwrap_err()),
        libc::ENOTDIR
    );
    let e = fs::remove_file(m.path("a/b")).unwrap_err();
    assert!(
        matches!(errno(&e), libc::EISDIR | libc::EPERM),
        "unlink of a directory: {e}"
    );
    // mkdir of an existing name
    assert_eq!(
        errno(&fs::create_dir(m.path("a/b")).unwrap_err()),
        libc::EEXIST
    );
    // a directory holding only a file: not empty either
    fs::write(m.path("a/b/only"), b"y").unwrap();
    assert_eq!(
        errno(&fs::remove_dir(m.path("a/b")).unwrap_err()),
        libc::ENOTEMPTY
    );

    // rm -r of a nested tree
    fs::create_dir_all(m.path("a/b/x/y")).unwrap();
    fs::write(m.path("a/b/x/y/z"), b"z").unwrap();
    std::os::unix::fs::symlink("z", m.path("a/b/x/y/zl")).unwrap();
    run("rm", &["-r", m.path("a").to_str().unwrap()]);
    assert!(!m.path("a").exists());
    assert_eq!(
        list(b.name(), ""),
        Vec::<String>::new(),
        "objects left after rm -r"
    );
    assert_eq!(fs::read_dir(m.root()).unwrap().count(), 0);

    // names: 255 bytes is fine, 256 is ENAMETOOLONG (create, mkdir, symlink, rename)
    let ok = "n".repeat(255);
    fs::write(m.path(&ok), b"long name").unwrap();
    assert_file(&b, &m, &ok, b"long name");
    let ok_utf8 = format!("{}a", "é".repeat(127)); // 255 bytes
    fs::create_dir(m.path(&ok_utf8)).unwrap();
    for long in ["n".repeat(256), "q".repeat(300), "é".repeat(128)] {
        let p = m.path(&long);
        let e = fs::write(&p, b"x").unwrap_err();
        assert_eq!(
            errno(&e),
            libc::ENAMETOOLONG,
            "create {}-byte name: {e}",
            long.len()
        );
        let e = fs::create_dir(&p).unwrap_err();
        assert_eq!(
            errno(&e),
            libc::ENAMETOOLONG,
            "mkdir {}-byte name: {e}",
            long.len()
        );
        let e = std::os::unix::fs::symlink("t", &p).unwrap_err();
        assert_eq!(
            errno(&e),
            libc::ENAMETOOLONG,
            "symlink {}-byte name: {e}",
            long.len()
        );
        let e = fs::rename(m.path(&ok), &p).unwrap_err();
        assert_eq!(
            errno(&e),
            libc::ENAMETOOLONG,
            "rename to {}-byte name: {e}",
            long.len()
        );
        let e = fs::metadata(&p).unwrap_err();
        assert_eq!(
            errno(&e),
            libc::ENAMETOOLONG,
            "stat {}-byte name: {e}",
            long.len()
        );
    }
    let mut keys = list(b.name(), "");
    keys.sort();
    let mut want = vec![ok.clone(), format!("{ok_utf8}/")];
    want.sort();
    assert_eq!(keys, want);

    m.remount();
    assert_content(&m.path(&ok), b"long name");
    assert!(m.path(&ok_utf8).is_dir());
}

#[test]
fn large_file_multipart_with_dd() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    let local = tempdir("e2e-local-");
    let src = local.path().join("big.src");
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", src.display()),
            "bs=1M",
            "count=40",
            "status=none",
        ],
    );
    let src_sum = sha256_file(&src);
    let big = m.path("big");
    run(
        "dd",
        &[
            &format!("if={}", src.display()),
            &format!("of={}", big.display()),
            "bs=1M",
            "count=40",
            "status=none",
        ],
    );
    assert_eq!(fs::metadata(&big).unwrap().len(), 40 << 20);
    assert_eq!(sha256_file(&big), src_sum, "read back through the mount");

    // on the server: one multipart object (8 MiB parts by default), readable only with the key
    let h = head(b.name(), "big", Some(m.key())).unwrap();
    assert_eq!(h.size, 40 << 20);
    assert!(
        h.etag.trim_matches('"').contains('-'),
        "a 40 MiB file should be a multipart upload, ETag {}",
        h.etag
    );
    let original = read(&src);
    assert_stored(b.name(), "big", m.key(), &original);

    // a ranged read in the middle
    {
        let mut f = fs::File::open(&big).unwrap();
        let off = (20 << 20) + 12345;
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        let mut buf = vec![0u8; 100_000];
        f.read_exact(&mut buf).unwrap();
        assert!(buf == original[off..off + 100_000], "ranged read at {off}");
    }

    // an in-place edit of a few bytes in the middle (the rest is copied server-side)
    let off = 17 * (1 << 20) + 5;
    sh(&format!(
        "printf 'EDITED-IN-PLACE' | dd of='{}' bs=1 seek={off} conv=notrunc status=none",
        big.display()
    ));
    let mut edited = original.clone();
    edited[off..off + 15].copy_from_slice(b"EDITED-IN-PLACE");
    assert_eq!(sha256_file(&big), sha256_hex(&edited));
    assert_stored(b.name(), "big", m.key(), &edited);

    m.remount();
    assert_eq!(fs::metadata(&big).unwrap().len(), 40 << 20);
    assert_eq!(sha256_file(&big), sha256_hex(&edited), "after remount");
    // copy it out with dd and compare
    let out = local.path().join("big.out");
    run(
        "dd",
        &[
            &format!("if={}", big.display()),
            &format!("of={}", out.display()),
            "bs=1M",
            "status=none",
        ],
    );
    assert_eq!(sha256_file(&out), sha256_hex(&edited));
}

#[test]
fn stat_and_ls_output() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/one.txt"), vec![b'1'; 1234]).unwrap();
    fs::write(m.path("dir/two.bin"), random_bytes(70_000)).unwrap();
    fs::create_dir(m.path("dir/sub")).unwrap();
    std::os::unix::fs::symlink("one.txt", m.path("dir/ln")).unwrap();
    run("chmod", &["640", m.path("dir/one.txt").to_str().unwrap()]);
    run("chmod", &["700", m.path("dir/sub").to_str().unwrap()]);
    run(
        "touch",
        &[
            "-d",
            "2022-02-03 04:05:06",
            m.path("dir/two.bin").to_str().unwrap(),
        ],
    );

    let check = |m: &Mount| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let s = run(
            "stat",
            &[
                "-c",
                "%s|%a|%F|%u|%g|%h",
                m.path("dir/one.txt").to_str().unwrap(),
            ],
        );
        assert_eq!(s.trim(), format!("1234|640|regular file|{uid}|{gid}|1"));
        let s = run(
            "stat",
            &["-c", "%a|%F|%u", m.path("dir/sub").to_str().unwrap()],
        );
        assert_eq!(s.trim(), format!("700|directory|{uid}"));
        let s = run("stat", &["-c", "%F|%N", m.path("dir/ln").to_str().unwrap()]);
        assert!(
            s.trim().starts_with("symbolic link|") && s.contains("-> 'one.txt'"),
            "stat of a symlink: {s}"
        );
        let md = fs::metadata(m.path("dir/one.txt")).unwrap();
        assert!(
            (md.mtime() - now).abs() < 300,
            "mtime of a fresh file is now-ish: {} vs {now}",
            md.mtime()
        );
        assert!(
            md.blocks() * 512 >= md.len(),
            "st_blocks {} for {} bytes",
            md.blocks(),
            md.len()
        );
        assert!(md.ino() != 0);
        assert_eq!(
            mtime_of(&m.path("dir/two.bin")),
            local_epoch("2022-02-03 04:05:06")
        );
        // statfs answers
        let s = run("stat", &["-f", "-c", "%l", m.root().to_str().unwrap()]);
        assert_eq!(s.trim(), "255", "statfs namelen");

        // ls -l: one line per entry, sorted, with type/permissions, size and name
        let out = run_cmd(
            std::process::Command::new("ls")
                .args(["-l", "--time-style=+%Y"])
                .arg(m.path("dir"))
                .env("LC_ALL", "C"),
        );
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with("total")).collect();
        assert_eq!(lines.len(), 4, "ls -l:\n{out}");
        let fields: Vec<Vec<&str>> = lines
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        // perms links owner group size year name [-> target]
        assert_eq!(fields[0][0], "lrwxrwxrwx", "{out}");
        assert_eq!(fields[0][6..], ["ln", "->", "one.txt"], "{out}");
        assert_eq!(fields[1][0], "-rw-r-----", "{out}");
        assert_eq!((fields[1][4], fields[1][6]), ("1234", "one.txt"), "{out}");
        assert_eq!(fields[2][0], "drwx------", "{out}");
        assert_eq!(fields[2][6], "sub", "{out}");
        assert_eq!(fields[3][0], "-rw-r--r--", "{out}");
        assert_eq!(
            (fields[3][4], fields[3][5], fields[3][6]),
            ("70000", "2022", "two.bin"),
            "{out}"
        );
        let la = run("ls", &["-a", m.path("dir").to_str().unwrap()]);
        assert_eq!(
            la.split_whitespace().collect::<Vec<_>>(),
            [".", "..", "ln", "one.txt", "sub", "two.bin"]
        );
    };
    check(&m);
    m.remount();
    check(&m);
    assert_stored(b.name(), "dir/one.txt", m.key(), &[b'1'; 1234]);
}

#[test]
fn everything_survives_remount() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    let local = tempdir("e2e-local-");
    let src = local.path().join("src");
    make_local_tree(&src);
    run(
        "cp",
        &[
            "-a",
            src.to_str().unwrap(),
            m.path("tree").to_str().unwrap(),
        ],
    );
    fs::write(m.path("top.txt"), b"top").unwrap();
    fs::create_dir(m.path("empty-dir")).unwrap();
    run("chmod", &["711", m.path("empty-dir").to_str().unwrap()]);
    let before = snapshot(m.root());
    let keys_before = list(b.name(), "");

    m.remount();
    assert_same_tree("after the first remount", &before, &snapshot(m.root()));
    // a second, fresh mount with the same key but a cold cache and short TTLs
    m.remount();
    assert_same_tree("after the second remount", &before, &snapshot(m.root()));
    assert_eq!(
        list(b.name(), ""),
        keys_before,
        "remount alone changes nothing on the server"
    );
    assert_same_tree("local source", &snapshot(&src), &snapshot(&m.path("tree")));
    assert_tree_stored(&b, &m, "");
}

#[test]
fn read_only_mount_refuses_writes() {
    let b = TestBucket::new();
    let key = Key::random();
    put_with_key(b.name(), "existing.txt", b"existing", &key, &[]);
    let m = Mount::with_key(&b, &key, &["--read-only"]);
    assert_content(&m.path("existing.txt"), b"existing");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(errno(&e), libc::EROFS, "{what}: {e}");
    };
    erofs(fs::write(m.path("new.txt"), b"x"), "create");
    erofs(
        fs::OpenOptions::new()
            .append(true)
            .open(m.path("existing.txt"))
            .map(drop),
        "open for append",
    );
    erofs(fs::create_dir(m.path("dir")), "mkdir");
    erofs(fs::remove_file(m.path("existing.txt")), "unlink");
    erofs(
        fs::rename(m.path("existing.txt"), m.path("renamed.txt")),
        "rename",
    );
    erofs(
        fs::set_permissions(m.path("existing.txt"), fs::Permissions::from_mode(0o600)),
        "chmod",
    );
    erofs(
        std::os::unix::fs::symlink("existing.txt", m.path("link")),
        "symlink",
    );
    assert_eq!(list(b.name(), ""), ["existing.txt"]);
    assert_stored(b.name(), "existing.txt", &key, b"existing");
}

/// Files are opened with direct I/O (no page cache) where the kernel allows mmap with it;
/// programs that map or execute files must still work, and a shared mapping's writes must
/// reach the server and agree with read().
#[test]
fn mmap_and_exec_of_files_on_the_mount() {
    use std::os::fd::AsRawFd;
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    copy_program("/bin/true", m.path("true"));
    run(m.path("true").to_str().unwrap(), &[] as &[&str]);

    let p = m.path("mapped");
    let len = 10_000;
    fs::write(&p, vec![b'a'; len]).unwrap();
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        // SAFETY: a fresh shared mapping of `len` bytes of an open file, used only here and
        // unmapped before the file is closed.
        unsafe {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
            let bytes = std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len);
            assert_eq!(&bytes[..5], b"aaaaa", "the mapping shows the file");
            bytes[..5].copy_from_slice(b"HELLO");
            assert_eq!(libc::msync(ptr, len, libc::MS_SYNC), 0);
            libc::munmap(ptr, len);
        }
    }
    let mut expected = vec![b'a'; len];
    expected[..5].copy_from_slice(b"HELLO");
    assert_content(&p, &expected);
    m.remount();
    assert_content(&p, &expected);
    assert_stored(b.name(), "mapped", m.key(), &expected);
}

/// As root the mount raises its kernel read-ahead from 128 KiB to 4 MiB, so sequential
/// readers send 1 MiB READs (see `fuse::KERNEL_READAHEAD_KB`).
#[test]
fn kernel_read_ahead_is_raised_for_the_mount() {
    let b = TestBucket::new();
    let m = Mount::new(&b, &[]);
    let dev = fs::metadata(m.root()).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let ra = fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb")).unwrap();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(ra.trim(), ssecfs::fuse::KERNEL_READAHEAD_KB.to_string());
    }
}
