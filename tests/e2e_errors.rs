//! End-to-end: what the user sees when a mount cannot be made. Run without `-f`, so the
//! daemonizing parent must report: non-zero exit, one clear message on stderr, no mount and
//! no process left behind, no key material in the message. Also the successful daemonized
//! mount, mounting with a key that does not open the bucket's objects, keygen and check.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;

/// A failing mount must answer within this long (retries included).
const FAIL_WITHIN: Duration = Duration::from_secs(60);

/// A valid key file and an empty mount point.
struct Setup {
    dir: TempDir,
    key: Key,
    key_path: PathBuf,
    mnt: PathBuf,
}

fn setup() -> Setup {
    let dir = tempdir("e2e-errors-");
    let key = Key::random();
    let key_path = dir.path().join("key");
    key.write_file(&key_path);
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    Setup {
        dir,
        key,
        key_path,
        mnt,
    }
}

impl Setup {
    /// `mount --endpoint EP --allow-http --key-file KEY`, without the source and mount point.
    fn base_args(&self) -> Vec<OsString> {
        vec![
            "mount".into(),
            "--endpoint".into(),
            endpoint().into(),
            "--allow-http".into(),
            "--key-file".into(),
            self.key_path.clone().into(),
        ]
    }
}

/// The result of a daemonizing `ssecfs …`, and a guard that removes whatever it mounted.
struct Attempt {
    out: Output,
    took: Duration,
    guard: DaemonMount,
}

impl Attempt {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}

fn ssecfs(args: &[OsString], envs: &[(&str, &str)], mnt: &Path) -> Attempt {
    let mut cmd = Command::new(SSECFS);
    // the default log level unless a test says otherwise
    cmd.args(args).env("NO_COLOR", "1").env_remove("SSECFS_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let t = Instant::now();
    // the guard exists before the command runs, so a mount it makes is removed on panic
    let guard = DaemonMount {
        mountpoint: mnt.to_owned(),
    };
    let out = output_of(&mut cmd, FAIL_WITHIN + Duration::from_secs(30));
    Attempt {
        out,
        took: t.elapsed(),
        guard,
    }
}

/// The mount failed the way a user can act on: non-zero exit within [`FAIL_WITHIN`], a
/// message naming the problem (every one of `needles`, case-insensitive), nothing mounted,
/// no daemon left, no key material printed.
#[track_caller]
fn assert_refused(a: &Attempt, key: &Key, needles: &[&str]) {
    let err = a.stderr();
    let all = format!(
        "exit {} after {:?}\n--- stderr:\n{err}--- stdout:\n{}",
        a.out.status,
        a.took,
        String::from_utf8_lossy(&a.out.stdout)
    );
    assert!(!a.out.status.success(), "the mount should fail:\n{all}");
    assert!(a.took < FAIL_WITHIN, "took too long to fail:\n{all}");
    assert!(!err.trim().is_empty(), "no message on stderr:\n{all}");
    let lower = err.to_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_lowercase()),
            "stderr should mention {n:?}:\n{all}"
        );
    }
    assert!(
        !err.contains(&key.base64()) && !err.contains(&key.md5_base64()),
        "key material on stderr:\n{all}"
    );
    assert!(
        !is_fuse_mount(&a.guard.mountpoint),
        "a failed mount left a mount behind:\n{all}"
    );
    // the daemon (if it forked one) is gone shortly after the parent reported
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.guard.pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        a.guard.pids().is_empty(),
        "ssecfs processes left behind for {}: {:?}\n{all}",
        a.guard.mountpoint.display(),
        a.guard.pids()
    );
}

fn args(base: Vec<OsString>, more: &[&str], source: &str, mnt: &Path) -> Vec<OsString> {
    let mut v = base;
    v.extend(more.iter().map(OsString::from));
    v.push(source.into());
    v.push(mnt.into());
    v
}

#[test]
fn missing_key_file() {
    let b = TestBucket::new();
    let s = setup();
    let missing = s.dir.path().join("no-such-key");
    let a = ssecfs(
        &[
            "mount".into(),
            "--endpoint".into(),
            endpoint().into(),
            "--allow-http".into(),
            "--key-file".into(),
            missing.clone().into(),
            b.name().into(),
            s.mnt.clone().into(),
        ],
        &[],
        &s.mnt,
    );
    assert_refused(&a, &s.key, &["key file", missing.to_str().unwrap()]);
}

#[test]
fn key_file_readable_by_others() {
    let b = TestBucket::new();
    let s = setup();
    fs::set_permissions(&s.key_path, fs::Permissions::from_mode(0o644)).unwrap();
    let a = ssecfs(&args(s.base_args(), &[], b.name(), &s.mnt), &[], &s.mnt);
    assert_refused(&a, &s.key, &["chmod 600", s.key_path.to_str().unwrap()]);
}

#[test]
fn key_of_16_bytes() {
    let b = TestBucket::new();
    let s = setup();
    // raw 16 bytes
    fs::write(&s.key_path, random_bytes(16)).unwrap();
    let a = ssecfs(&args(s.base_args(), &[], b.name(), &s.mnt), &[], &s.mnt);
    assert_refused(&a, &s.key, &["key file", "32"]);
    // base64 of 16 bytes (what `openssl rand -base64 16` writes)
    let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random_bytes(16));
    fs::write(&s.key_path, format!("{text}\n")).unwrap();
    let a = ssecfs(&args(s.base_args(), &[], b.name(), &s.mnt), &[], &s.mnt);
    assert_refused(&a, &s.key, &["key file", "16 bytes", "32"]);
}

/// Every other kind of bad key file: refused with one line naming the file and the problem,
/// and the bucket untouched.
#[test]
fn bad_key_files_each_get_a_one_line_error() {
    let b = TestBucket::new();
    let s = setup();
    let b64 = |n: usize| {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random_bytes(n))
    };
    let cases: Vec<(&str, Vec<u8>, u32, Vec<&str>)> = vec![
        ("empty", vec![], 0o600, vec!["is empty"]),
        ("33 raw bytes", random_bytes(33), 0o600, vec!["33 bytes"]),
        (
            "33 bytes as base64",
            format!("{}\n", b64(33)).into_bytes(),
            0o600,
            vec!["33 bytes"],
        ),
        (
            "bad base64",
            b"this is not base64!\n".to_vec(),
            0o600,
            vec!["base64"],
        ),
        (
            "group-readable",
            format!("{}\n", s.key.base64()).into_bytes(),
            0o640,
            vec!["chmod 600"],
        ),
    ];
    for (what, content, mode, needles) in cases {
        let _ = fs::remove_file(&s.key_path);
        fs::write(&s.key_path, &content).unwrap();
        fs::set_permissions(&s.key_path, fs::Permissions::from_mode(mode)).unwrap();
        let a = ssecfs(&args(s.base_args(), &[], b.name(), &s.mnt), &[], &s.mnt);
        let mut all = needles.clone();
        all.push(s.key_path.to_str().unwrap());
        assert_refused(&a, &s.key, &all);
        assert_eq!(
            a.stderr().trim().lines().count(),
            1,
            "{what}: {}",
            a.stderr()
        );
    }
    // a directory where the key file should be
    let dir_key = s.dir.path().join("keydir");
    fs::create_dir(&dir_key).unwrap();
    let mut base = s.base_args();
    *base.last_mut().unwrap() = dir_key.clone().into();
    let a = ssecfs(&args(base, &[], b.name(), &s.mnt), &[], &s.mnt);
    assert_refused(&a, &s.key, &["is a directory", dir_key.to_str().unwrap()]);
    assert_eq!(a.stderr().trim().lines().count(), 1, "{}", a.stderr());
    assert!(
        list(b.name(), "").is_empty(),
        "a refused mount wrote to the bucket"
    );
}

#[test]
fn bucket_that_does_not_exist() {
    let s = setup();
    let name = format!("e2e-missing-{:08x}", rand::random::<u32>());
    let a = ssecfs(&args(s.base_args(), &[], &name, &s.mnt), &[], &s.mnt);
    assert_refused(&a, &s.key, &[&name, "does not exist"]);
}

#[test]
fn http_endpoint_without_allow_http() {
    let b = TestBucket::new();
    let s = setup();
    let a = ssecfs(
        &[
            "mount".into(),
            "--endpoint".into(),
            endpoint().into(),
            "--key-file".into(),
            s.key_path.clone().into(),
            b.name().into(),
            s.mnt.clone().into(),
        ],
        &[],
        &s.mnt,
    );
    assert_refused(&a, &s.key, &["--allow-http"]);
}

/// The message must point at the credentials: either say so, or pass on the server's reason
/// (Garage answers a generic 403 `AccessDenied` whose message says "Invalid signature" or "No
/// such key"; AWS answers `SignatureDoesNotMatch` / `InvalidAccessKeyId`).
#[track_caller]
fn assert_points_at_credentials(a: &Attempt, server_reason: &str) {
    let err = a.stderr().to_lowercase();
    assert!(
        err.contains("credential") || err.contains(&server_reason.to_lowercase()),
        "wrong credentials: the message should mention the credentials (or the server's \
         reason {server_reason:?}), got:\n{}",
        a.stderr()
    );
}

#[test]
fn wrong_credentials() {
    let b = TestBucket::new();
    let s = setup();
    // a known access key with a wrong secret
    let a = ssecfs(
        &args(s.base_args(), &[], b.name(), &s.mnt),
        &[(
            "AWS_SECRET_ACCESS_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        )],
        &s.mnt,
    );
    assert_refused(&a, &s.key, &[]);
    assert_points_at_credentials(&a, "signature");
    // an access key the server does not know
    let a = ssecfs(
        &args(s.base_args(), &[], b.name(), &s.mnt),
        &[("AWS_ACCESS_KEY_ID", "GK000000000000000000000000")],
        &s.mnt,
    );
    assert_refused(&a, &s.key, &[]);
    assert_points_at_credentials(&a, "no such key");
}

#[test]
fn endpoint_refusing_connections() {
    let b = TestBucket::new();
    let s = setup();
    // a port nobody listens on: bind one, then close it
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ep = format!("http://127.0.0.1:{port}");
    let a = ssecfs(
        &[
            "mount".into(),
            "--endpoint".into(),
            ep.clone().into(),
            "--allow-http".into(),
            "--key-file".into(),
            s.key_path.clone().into(),
            b.name().into(),
            s.mnt.clone().into(),
        ],
        &[],
        &s.mnt,
    );
    assert_refused(&a, &s.key, &[&ep]);
    assert!(
        a.stderr().contains("reach") || a.stderr().contains("refused"),
        "the message should say the endpoint cannot be reached: {}",
        a.stderr()
    );
}

#[test]
fn mountpoint_missing() {
    let b = TestBucket::new();
    let s = setup();
    let missing = s.dir.path().join("no-such-dir");
    let a = ssecfs(&args(s.base_args(), &[], b.name(), &missing), &[], &missing);
    assert_refused(&a, &s.key, &["mountpoint", missing.to_str().unwrap()]);
}

#[test]
fn mountpoint_not_empty() {
    let b = TestBucket::new();
    let s = setup();
    fs::write(s.mnt.join("precious.txt"), b"local file").unwrap();
    let a = ssecfs(&args(s.base_args(), &[], b.name(), &s.mnt), &[], &s.mnt);
    assert_refused(
        &a,
        &s.key,
        &["not empty", "nonempty", s.mnt.to_str().unwrap()],
    );
    assert_eq!(fs::read(s.mnt.join("precious.txt")).unwrap(), b"local file");
}

#[test]
fn unknown_mount_option() {
    let b = TestBucket::new();
    let s = setup();
    let a = ssecfs(
        &args(s.base_args(), &["-o", "ro,frobnicate=3"], b.name(), &s.mnt),
        &[],
        &s.mnt,
    );
    assert_refused(&a, &s.key, &["unknown mount option", "frobnicate"]);
}

#[test]
fn cache_size_nonsense() {
    let b = TestBucket::new();
    let s = setup();
    let a = ssecfs(
        &args(
            s.base_args(),
            &["--cache-size", "nonsense"],
            b.name(),
            &s.mnt,
        ),
        &[],
        &s.mnt,
    );
    assert_refused(&a, &s.key, &["--cache-size", "nonsense"]);
    // and the same inside -o
    let a = ssecfs(
        &args(s.base_args(), &["-o", "cache_size=lots"], b.name(), &s.mnt),
        &[],
        &s.mnt,
    );
    assert_refused(&a, &s.key, &["cache-size", "lots"]);
}

#[test]
fn daemonized_mount_is_live_when_the_parent_exits() {
    let b = TestBucket::new();
    let s = setup();
    let log = s.dir.path().join("daemon.log");
    let a = ssecfs(
        &args(
            s.base_args(),
            &["--log-file", log.to_str().unwrap()],
            b.name(),
            &s.mnt,
        ),
        &[],
        &s.mnt,
    );
    assert!(
        a.out.status.success(),
        "daemonized mount failed ({}): {}",
        a.out.status,
        a.stderr()
    );
    // no polling: the parent exits only once the mount is live
    assert!(
        is_fuse_mount(&s.mnt),
        "parent exited 0 but {} is not mounted",
        s.mnt.display()
    );
    let pids = a.guard.pids();
    assert_eq!(pids.len(), 1, "one daemon serves the mount: {pids:?}");
    fs::write(s.mnt.join("via-daemon.txt"), b"daemon").unwrap();
    assert_eq!(fs::read(s.mnt.join("via-daemon.txt")).unwrap(), b"daemon");
    assert_stored(b.name(), "via-daemon.txt", &s.key, b"daemon");

    // unmounting ends the daemon
    unmount_path(&s.mnt, Duration::from_secs(5));
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while !a.guard.pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        a.guard.pids().is_empty(),
        "the daemon did not exit within {EXIT_TIMEOUT:?} of the unmount; log:\n{}",
        tail(&log, 40)
    );
    assert!(
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("mounted"),
        "--log-file {} holds the daemon's log:\n{}",
        log.display(),
        tail(&log, 40)
    );
}

/// At the default level (info) the log holds what the daemon did, not a debug trace of every
/// S3 request.
#[test]
fn default_log_level_writes_no_debug_lines() {
    let b = TestBucket::new();
    let s = setup();
    let log = s.dir.path().join("daemon.log");
    let a = ssecfs(
        &args(
            s.base_args(),
            &["--log-file", log.to_str().unwrap()],
            b.name(),
            &s.mnt,
        ),
        &[],
        &s.mnt,
    );
    assert!(a.out.status.success(), "mount failed: {}", a.stderr());
    fs::write(s.mnt.join("a.txt"), b"hello").unwrap();
    assert_eq!(fs::read(s.mnt.join("a.txt")).unwrap(), b"hello");
    fs::rename(s.mnt.join("a.txt"), s.mnt.join("b.txt")).unwrap();
    drop(a); // unmount, wait for the daemon
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("mounted"), "log:\n{text}");
    let noisy: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" DEBUG ") || l.contains(" TRACE "))
        .collect();
    assert!(
        noisy.is_empty(),
        "{} of {} log lines are DEBUG/TRACE at the default --log-level info, e.g.:\n{}",
        noisy.len(),
        text.lines().count(),
        noisy.iter().take(5).copied().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_key_that_opens_nothing_is_refused_unless_forced() {
    let b = TestBucket::new();
    let owner = Key::random();
    for i in 0..3 {
        put_with_key(
            b.name(),
            &format!("secret-{i}.txt"),
            format!("secret {i}").as_bytes(),
            &owner,
            &[],
        );
    }
    // a different key, without --force: refused by the daemonizing parent
    let s = setup();
    assert_ne!(s.key, owner);
    let a = ssecfs(&args(s.base_args(), &[], b.name(), &s.mnt), &[], &s.mnt);
    assert_refused(&a, &s.key, &["key", "--force"]);
    assert!(
        !a.stderr().contains(&owner.base64()),
        "the owner's key appears in the message"
    );

    // with --force: the mount comes up, names are listed, contents are EACCES
    let other = Key::random();
    let m = Mount::with_key(&b, &other, &["--force"]);
    let mut names: Vec<String> = fs::read_dir(m.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["secret-0.txt", "secret-1.txt", "secret-2.txt"]);
    let e = fs::read(m.path("secret-0.txt")).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied,
        "reading an object written under another key: {e}"
    );
    assert_eq!(errno(&e), libc::EACCES);
    // and nothing the mount did damaged the objects: the owner still reads them
    assert_stored(b.name(), "secret-0.txt", &owner, b"secret 0");
    // a new file written under the other key is stored under it
    fs::write(m.path("mine.txt"), b"mine").unwrap();
    assert_stored(b.name(), "mine.txt", &other, b"mine");
    drop(m);

    // the owner's key mounts without --force even though one object now needs another key
    let m = Mount::with_key(&b, &owner, &[]);
    assert_eq!(fs::read(m.path("secret-1.txt")).unwrap(), b"secret 1");
    assert_eq!(
        fs::read(m.path("mine.txt")).unwrap_err().kind(),
        std::io::ErrorKind::PermissionDenied
    );
}

#[test]
fn keygen_writes_a_usable_private_key_and_check_verifies_it() {
    let b = TestBucket::new();
    let dir = tempdir("e2e-keygen-");
    let path = dir.path().join("new.key");
    let out = run(SSECFS, &[OsString::from("keygen"), path.clone().into()]);
    assert!(out.contains("fingerprint"), "{out}");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "keygen file mode");
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 44, "base64 of 32 bytes: {text:?}");
    assert!(
        !out.contains(text.trim()),
        "keygen printed the key itself: {out}"
    );
    // refuses to overwrite
    let again = output_of(
        Command::new(SSECFS).arg("keygen").arg(&path),
        Duration::from_secs(30),
    );
    assert!(!again.status.success(), "keygen overwrote an existing key");
    assert_eq!(fs::read_to_string(&path).unwrap(), text, "key file changed");

    // check: all good on a fresh bucket
    let check = |key_file: &Path| {
        output_of(
            Command::new(SSECFS)
                .arg("check")
                .arg("--endpoint")
                .arg(endpoint())
                .arg("--allow-http")
                .arg("--key-file")
                .arg(key_file)
                .arg(b.name()),
            FAIL_WITHIN,
        )
    };
    let ok = check(&path);
    assert!(
        ok.status.success(),
        "ssecfs check failed: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(list(b.name(), "").is_empty(), "check left its probe behind");

    // the generated key mounts and its objects open with it
    let m = {
        let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text.trim())
            .unwrap();
        let mut k = [0u8; 32];
        k.copy_from_slice(&raw);
        let key = Key::from_bytes(k);
        let m = Mount::with_key(&b, &key, &[]);
        fs::write(m.path("k.txt"), b"keygen key").unwrap();
        assert_stored(b.name(), "k.txt", &key, b"keygen key");
        m
    };
    drop(m);

    // check with another key: fails, saying the key opens none of the objects
    let other = dir.path().join("other.key");
    Key::random().write_file(&other);
    let bad = check(&other);
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success(),
        "check passed with a key that opens nothing"
    );
    assert!(msg.contains("key"), "{msg}");
}
