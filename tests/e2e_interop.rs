//! End-to-end: a bucket shared with other tools. Objects uploaded directly (with the SSE-C key,
//! with or without s3fs-style metadata, with or without directory markers) show up right; a
//! `BUCKET:PREFIX` mount sees only its prefix; what the mount writes carries s3fs metadata.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// (uid, gid) of this process: what objects without metadata show.
fn ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

#[test]
fn objects_uploaded_directly_appear_as_files() {
    let b = TestBucket::new();
    let key = Key::random();
    let (uid, gid) = ids();
    let body = random_bytes(20_000);
    put_with_key(b.name(), "direct.bin", &body, &key, &[]);
    // objects under prefixes without any `dir/` marker
    put_with_key(
        b.name(),
        "nomarker/deeper/obj.txt",
        b"deep object",
        &key,
        &[],
    );
    put_with_key(b.name(), "nomarker/top.txt", b"top object", &key, &[]);

    let mut m = Mount::with_key(&b, &key, &[]);
    let check = |m: &Mount| {
        assert_eq!(names(m.root()), ["direct.bin", "nomarker"]);
        assert_eq!(fs::read(m.path("direct.bin")).unwrap(), body);
        let md = fs::metadata(m.path("direct.bin")).unwrap();
        assert_eq!(md.len(), 20_000);
        assert_eq!(md.mode(), libc::S_IFREG | 0o644, "default file mode");
        assert_eq!((md.uid(), md.gid()), (uid, gid), "default owner");
        assert!(
            (md.mtime() - now()).abs() < 600,
            "no mtime metadata: LastModified ({}) is used",
            md.mtime()
        );

        // prefixes without markers are directories
        assert!(m.path("nomarker").is_dir());
        assert!(m.path("nomarker/deeper").is_dir());
        let dmd = fs::metadata(m.path("nomarker")).unwrap();
        assert_eq!(dmd.mode(), libc::S_IFDIR | 0o755, "default directory mode");
        assert_eq!(names(&m.path("nomarker")), ["deeper", "top.txt"]);
        assert_eq!(names(&m.path("nomarker/deeper")), ["obj.txt"]);
        assert_eq!(
            fs::read(m.path("nomarker/deeper/obj.txt")).unwrap(),
            b"deep object"
        );
        // a lookup without a listing first (fresh path, straight stat)
        assert_eq!(
            fs::read_to_string(m.path("nomarker/top.txt")).unwrap(),
            "top object"
        );
    };
    check(&m);

    // a file in a marker-less directory can be added and removed; the directory stays as long
    // as something is in it
    fs::write(m.path("nomarker/deeper/new.txt"), b"added").unwrap();
    assert_stored(b.name(), "nomarker/deeper/new.txt", &key, b"added");
    fs::remove_file(m.path("nomarker/deeper/new.txt")).unwrap();
    m.remount();
    check(&m);
    // unmarked directory emptied through the mount and removed
    fs::remove_file(m.path("nomarker/deeper/obj.txt")).unwrap();
    fs::remove_dir(m.path("nomarker/deeper")).unwrap();
    assert!(!m.path("nomarker/deeper").exists());
    assert_eq!(list(b.name(), "nomarker/"), ["nomarker/top.txt"]);
}

#[test]
fn s3fs_style_metadata_is_honoured() {
    let b = TestBucket::new();
    let key = Key::random();
    let file = |name: &str, mode: u32, extra: &[(&str, &str)]| {
        let mode = mode.to_string();
        let mut meta = vec![("mode", mode.as_str())];
        meta.extend_from_slice(extra);
        put_with_key(
            b.name(),
            name,
            format!("body of {name}").as_bytes(),
            &key,
            &meta,
        );
    };
    let owner = [("uid", "1234"), ("gid", "4321"), ("mtime", "1577934245")];
    file("s3fs/f644", libc::S_IFREG | 0o644, &owner);
    assert_eq!((libc::S_IFREG | 0o644).to_string(), "33188");
    file(
        "s3fs/f600",
        libc::S_IFREG | 0o600,
        &[("mtime", "1600000000")],
    );
    file(
        "s3fs/x755",
        libc::S_IFREG | 0o755,
        &[("mtime", "1500000000.75")],
    );
    file("s3fs/setgid", libc::S_IFREG | 0o2750, &[]);
    // a directory marker with a mode and mtime, and a file inside it
    put_with_key(
        b.name(),
        "s3fs/dir/",
        b"",
        &key,
        &[
            ("mode", &(libc::S_IFDIR | 0o700).to_string()),
            ("mtime", "1400000000"),
            ("uid", "1234"),
            ("gid", "4321"),
        ],
    );
    file("s3fs/dir/inner", libc::S_IFREG | 0o640, &[]);
    // an s3fs symlink: the body is the target
    put_with_key(
        b.name(),
        "s3fs/link",
        b"f644",
        &key,
        &[
            ("mode", &(libc::S_IFLNK | 0o777).to_string()),
            ("mtime", "1577934245"),
        ],
    );

    let mut m = Mount::with_key(&b, &key, &[]);
    let check = |m: &Mount| {
        let st = |rel: &str| fs::symlink_metadata(m.path(rel)).unwrap();
        let md = st("s3fs/f644");
        assert_eq!(md.mode(), 0o100644);
        assert_eq!((md.uid(), md.gid()), (1234, 4321));
        assert_eq!(md.mtime(), 1577934245);
        assert_eq!(md.len(), "body of s3fs/f644".len() as u64);
        let md = st("s3fs/f600");
        assert_eq!((md.mode(), md.mtime()), (0o100600, 1600000000));
        let md = st("s3fs/x755");
        assert_eq!((md.mode(), md.mtime()), (0o100755, 1500000000));
        // setgid from (unauthenticated) metadata is dropped unless --allow-special-modes
        assert_eq!(st("s3fs/setgid").mode(), 0o100750);
        let md = st("s3fs/dir");
        assert!(md.is_dir());
        assert_eq!(md.mode(), 0o40700);
        assert_eq!((md.uid(), md.gid(), md.mtime()), (1234, 4321, 1400000000));
        assert_eq!(st("s3fs/dir/inner").mode(), 0o100640);
        let md = st("s3fs/link");
        assert!(md.file_type().is_symlink(), "{md:?}");
        assert_eq!(
            fs::read_link(m.path("s3fs/link")).unwrap(),
            Path::new("f644")
        );
        assert_eq!(
            fs::read_to_string(m.path("s3fs/link")).unwrap(),
            "body of s3fs/f644"
        );
        // stat(1) agrees
        let s = run(
            "stat",
            &["-c", "%a %u %g %Y", m.path("s3fs/f644").to_str().unwrap()],
        );
        assert_eq!(s.trim(), "644 1234 4321 1577934245");
        assert_eq!(
            names(&m.path("s3fs")),
            ["dir", "f600", "f644", "link", "setgid", "x755"]
        );
    };
    check(&m);
    m.remount();
    check(&m);
}

#[test]
fn files_written_through_the_mount_carry_s3fs_metadata() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    let (uid, gid) = ids();
    fs::write(m.path("w.txt"), b"written").unwrap();
    let md = fs::metadata(m.path("w.txt")).unwrap();
    let h = head(b.name(), "w.txt", Some(m.key())).unwrap();
    let meta = |k: &str| h.metadata.get(k).cloned().unwrap_or_default();
    assert_eq!(
        meta("mode"),
        "33188",
        "x-amz-meta-mode of a new 0644 file: {h:?}"
    );
    assert_eq!(meta("uid"), uid.to_string(), "{h:?}");
    assert_eq!(meta("gid"), gid.to_string(), "{h:?}");
    // s3fs's form: seconds, and nine digits of nanoseconds when there are any
    let mtime = match md.mtime_nsec() {
        0 => md.mtime().to_string(),
        ns => format!("{}.{ns:09}", md.mtime()),
    };
    assert_eq!(meta("mtime"), mtime, "{h:?}");
    assert_eq!(h.sse_customer_algorithm.as_deref(), Some("AES256"));
    assert_eq!(h.sse_customer_key_md5, Some(m.key().md5_base64()));

    // chmod, chown, touch: new metadata on the same object, content unchanged
    run("chmod", &["751", m.path("w.txt").to_str().unwrap()]);
    run("chown", &["2001:2002", m.path("w.txt").to_str().unwrap()]);
    run(
        "touch",
        &["-d", "@1234567890", m.path("w.txt").to_str().unwrap()],
    );
    let h = head(b.name(), "w.txt", Some(m.key())).unwrap();
    let meta = |k: &str| h.metadata.get(k).cloned().unwrap_or_default();
    assert_eq!(meta("mode"), (libc::S_IFREG | 0o751).to_string(), "{h:?}");
    assert_eq!(
        (meta("uid"), meta("gid")),
        ("2001".into(), "2002".into()),
        "{h:?}"
    );
    assert_eq!(meta("mtime"), "1234567890", "{h:?}");
    assert_stored(b.name(), "w.txt", m.key(), b"written");

    // a directory: an s3fs marker carrying the mode with the directory bit
    fs::create_dir(m.path("dir")).unwrap();
    run("chmod", &["710", m.path("dir").to_str().unwrap()]);
    // stored 100 ms later, or by an fsync of the directory (FUSE_FSYNCDIR), as here
    fs::File::open(m.path("dir")).unwrap().sync_all().unwrap();
    let h = head(b.name(), "dir/", Some(m.key()))
        .unwrap_or_else(|e| panic!("HEAD of the directory marker dir/: {e}"));
    assert_eq!(
        h.metadata.get("mode").map(String::as_str),
        Some((libc::S_IFDIR | 0o710).to_string().as_str()),
        "{h:?}"
    );
    assert_eq!(h.metadata.get("uid"), Some(&uid.to_string()), "{h:?}");

    m.remount();
    let md = fs::metadata(m.path("w.txt")).unwrap();
    assert_eq!(
        (md.mode(), md.uid(), md.gid(), md.mtime()),
        (0o100751, 2001, 2002, 1234567890)
    );
    assert_eq!(fs::metadata(m.path("dir")).unwrap().mode(), 0o40710);
}

#[test]
fn prefix_mount_shows_only_its_prefix() {
    let b = TestBucket::new();
    let key = Key::random();
    for (k, body) in [
        ("outside.txt", &b"outside"[..]),
        ("some/other.txt", b"other"),
        ("some/prefix/a.txt", b"a in prefix"),
        ("some/prefix/sub/b.txt", b"b in prefix"),
        ("some/prefixed.txt", b"sibling sharing the string prefix"),
        ("some/prefix-not/c.txt", b"sibling directory"),
    ] {
        put_with_key(b.name(), k, body, &key, &[]);
    }
    let source = format!("{}:some/prefix", b.name());
    let mut m = Mount::with_source(&source, &key, &[]);
    let check = |m: &Mount| {
        assert_eq!(names(m.root()), ["a.txt", "sub"], "root of {source}");
        assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"a in prefix");
        assert_eq!(fs::read(m.path("sub/b.txt")).unwrap(), b"b in prefix");
        for outside in [
            "outside.txt",
            "other.txt",
            "prefixed.txt",
            "prefix-not",
            "some",
        ] {
            let e = fs::metadata(m.path(outside)).unwrap_err();
            assert_eq!(errno(&e), libc::ENOENT, "{outside} must not be visible");
        }
    };
    check(&m);

    // writes land under the prefix
    fs::write(m.path("new.txt"), b"new in prefix").unwrap();
    fs::create_dir(m.path("newdir")).unwrap();
    fs::write(m.path("newdir/x"), b"x").unwrap();
    run("mv", &[m.path("a.txt"), m.path("newdir/a-moved.txt")]);
    assert_stored(b.name(), "some/prefix/new.txt", &key, b"new in prefix");
    assert_stored(b.name(), "some/prefix/newdir/x", &key, b"x");
    assert_stored(
        b.name(),
        "some/prefix/newdir/a-moved.txt",
        &key,
        b"a in prefix",
    );
    assert_eq!(
        list(b.name(), ""),
        [
            "outside.txt",
            "some/other.txt",
            "some/prefix-not/c.txt",
            "some/prefix/new.txt",
            "some/prefix/newdir/",
            "some/prefix/newdir/a-moved.txt",
            "some/prefix/newdir/x",
            "some/prefix/sub/b.txt",
            "some/prefixed.txt",
        ],
        "objects on the server"
    );
    m.remount();
    assert_eq!(names(m.root()), ["new.txt", "newdir", "sub"]);
    assert_eq!(
        fs::read(m.path("newdir/a-moved.txt")).unwrap(),
        b"a in prefix"
    );

    // the same prefix given with slashes, and the s3:// form
    drop(m);
    let m2 = Mount::with_source(&format!("{}:/some/prefix/", b.name()), &key, &[]);
    assert_eq!(names(m2.root()), ["new.txt", "newdir", "sub"]);
    drop(m2);
    let m3 = Mount::with_source(&format!("s3://{}/some/prefix", b.name()), &key, &[]);
    assert_eq!(names(m3.root()), ["new.txt", "newdir", "sub"]);
}

/// Uploads carry a CRC32C the server checked before storing (SSE-C ETags are no MD5s): a
/// single PUT reports the full-object checksum of the plaintext, a multipart upload a
/// composite one, both readable back with the key and `ChecksumMode::Enabled`.
#[test]
fn uploads_carry_a_checksum_the_server_verified() {
    let bucket = TestBucket::new();
    let m = Mount::new(&bucket, &["--part-size", "5M"]);
    let small = random_bytes(100_000);
    let big = random_bytes(12 << 20);
    fs::write(m.path("small.bin"), &small).unwrap();
    fs::write(m.path("big.bin"), &big).unwrap();
    let k = m.key().clone();
    let checksum = |name: &str| {
        rt().block_on(async {
            client()
                .head_object()
                .bucket(bucket.name())
                .key(name)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .sse_customer_algorithm("AES256")
                .sse_customer_key(k.base64())
                .sse_customer_key_md5(k.md5_base64())
                .send()
                .await
                .unwrap()
                .checksum_crc32_c()
                .map(str::to_owned)
        })
    };
    assert_eq!(
        checksum("small.bin").as_deref(),
        Some(ssecfs::s3::crc32c_base64(&small).as_str())
    );
    let composite = checksum("big.bin").expect("a multipart upload reports its checksum");
    assert!(composite.ends_with("-3"), "3 parts of 5 MiB: {composite}");
}

/// s3fs-fuse mounting `bucket` with SSE-C key `key`; unmounted (lazily) when dropped.
struct S3fsMount {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl S3fsMount {
    fn new(bucket: &str, key: &Key) -> S3fsMount {
        let dir = tempdir("s3fs-");
        let path = dir.path().join("mnt");
        fs::create_dir(&path).unwrap();
        let secret = |p: &Path, text: String| {
            use std::os::unix::fs::PermissionsExt;
            fs::write(p, text).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
        };
        let passwd = dir.path().join("passwd");
        let id = std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID");
        let sk = std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY");
        secret(&passwd, format!("{id}:{sk}\n"));
        let keys = dir.path().join("sse-c.keys");
        secret(&keys, format!("{}\n", key.base64())); // s3fs: one base64 key per line
        let opts = format!(
            "passwd_file={},url={},use_path_request_style,endpoint={},use_sse=custom:{}",
            passwd.display(),
            endpoint(),
            region(),
            keys.display()
        );
        let out = std::process::Command::new("s3fs")
            .arg(bucket)
            .arg(&path)
            .args(["-o", &opts])
            .output()
            .expect("run s3fs (scripts/setup.sh installs it: apt install s3fs)");
        assert!(out.status.success(), "s3fs: {out:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !is_fuse_mount(&path) {
            assert!(std::time::Instant::now() < deadline, "s3fs did not mount");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        S3fsMount { _dir: dir, path }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.path.join(rel)
    }
}

impl Drop for S3fsMount {
    fn drop(&mut self) {
        unmount_path(&self.path, std::time::Duration::from_secs(10));
    }
}

fn mkfifo(p: &Path) {
    run("mkfifo", &["-m", "640", p.to_str().unwrap()]);
}

fn mknod(p: &Path, kind: &str, major: u32, minor: u32) {
    let (maj, min) = (major.to_string(), minor.to_string());
    run(
        "mknod",
        &["-m", "600", p.to_str().unwrap(), kind, &maj, &min],
    );
}

/// File type and permission bits of `p`, not following a symlink.
fn type_and_mode(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.mode() & libc::S_IFMT, m.mode() & 0o7777)
}

#[test]
fn special_files_round_trip_with_s3fs_in_both_directions() {
    let b = TestBucket::new();
    let m = Mount::new(&b, &[]);
    let s = S3fsMount::new(b.name(), m.key());
    // made through ssecfs, seen by s3fs
    mkfifo(&m.path("ours-fifo"));
    mknod(&m.path("ours-chr"), "c", 1, 5);
    mknod(&m.path("ours-blk"), "b", 7, 3);
    fs::write(m.path("ours-file"), b"ssecfs wrote this").unwrap();
    // made through s3fs, seen by ssecfs
    mkfifo(&s.path("theirs-fifo"));
    mknod(&s.path("theirs-chr"), "c", 8, 1);
    fs::write(s.path("theirs-file"), b"s3fs wrote this").unwrap();
    let expected = [
        ("ours-fifo", libc::S_IFIFO, 0o640),
        ("ours-chr", libc::S_IFCHR, 0o600),
        ("ours-blk", libc::S_IFBLK, 0o600),
        ("ours-file", libc::S_IFREG, 0o644),
        ("theirs-fifo", libc::S_IFIFO, 0o640),
        ("theirs-chr", libc::S_IFCHR, 0o600),
        ("theirs-file", libc::S_IFREG, 0o644),
    ];
    // a fresh ssecfs mount reads everything from the server, not from what it made
    let fresh = Mount::with_key(&b, m.key(), &[]);
    for (name, ty, mode) in expected {
        assert_eq!(type_and_mode(&s.path(name)), (ty, mode), "s3fs sees {name}");
        assert_eq!(
            type_and_mode(&fresh.path(name)),
            (ty, mode),
            "ssecfs sees {name}"
        );
    }
    // device numbers: ssecfs keeps its own (s3fs 1.90 stores none, so its node shows 0:0)
    let rdev = |p: &Path| fs::symlink_metadata(p).unwrap().rdev();
    assert_eq!(rdev(&fresh.path("ours-chr")), libc::makedev(1, 5));
    assert_eq!(rdev(&fresh.path("ours-blk")), libc::makedev(7, 3));
    assert_eq!(fs::read(s.path("ours-file")).unwrap(), b"ssecfs wrote this");
    assert_eq!(
        fs::read(fresh.path("theirs-file")).unwrap(),
        b"s3fs wrote this"
    );
    // they are plain SSE-C objects under the same key, with no body
    let h = head(b.name(), "ours-fifo", Some(m.key())).unwrap();
    assert_eq!(
        h.metadata.get("mode"),
        Some(&(libc::S_IFIFO | 0o640).to_string())
    );
    // and one mount removes what the other made
    fs::remove_file(fresh.path("theirs-fifo")).unwrap();
    fs::remove_file(s.path("ours-chr")).unwrap();
    assert!(!list(b.name(), "")
        .iter()
        .any(|k| k == "theirs-fifo" || k == "ours-chr"));
}
