//! Harness shared by the end-to-end tests: a fresh bucket per test, a real `ssecfs mount -f`
//! child per mount (unmounted and reaped on drop, even when the test panics), direct S3 access
//! with and without the customer key, and helpers to run commands and compare trees.
//!
//! The tests need a real S3 server with SSE-C: `scripts/test.sh` starts a local Garage and
//! exports `S3_ENDPOINT` and the `AWS_*` credentials. Without them every test fails with a
//! message saying so (it never passes silently).
#![allow(dead_code)]

pub mod faultproxy;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use md5::Digest;
use tempfile::TempDir;

/// The ssecfs binary under test.
pub const SSECFS: &str = env!("CARGO_BIN_EXE_ssecfs");

/// How long a mount may take to appear in /proc/self/mounts.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the mount process may take to exit once unmounted.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit for one command run by the tests.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// environment

/// The S3 endpoint of the test server; panics with instructions when it is not configured.
pub fn endpoint() -> String {
    match std::env::var("S3_ENDPOINT") {
        Ok(v) if !v.trim().is_empty() => {
            for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                if std::env::var(var).map_or(true, |v| v.is_empty()) {
                    panic!(
                        "S3_ENDPOINT is set but {var} is not: run the end-to-end tests with \
                         scripts/test.sh (it starts a local Garage and exports S3_ENDPOINT and \
                         the AWS_* credentials), or `eval \"$(scripts/test-server.sh)\"` first"
                    );
                }
            }
            v
        }
        _ => panic!(
            "S3_ENDPOINT is not set: the end-to-end tests need a real S3 server with SSE-C. \
             Run them with scripts/test.sh (it starts a local Garage and exports S3_ENDPOINT \
             and the AWS_* credentials), or `eval \"$(scripts/test-server.sh)\"` before \
             `cargo test`"
        ),
    }
}

/// Region of the test server (Garage: "garage").
pub fn region() -> String {
    std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "garage".into())
}

/// Where the tests put their temporary directories: under `$SSECFS_TEST_DIR` when it exists
/// (scripts/test.sh and .ci/run lazily unmount leftover FUSE mounts there), else the system
/// temp dir.
pub fn tmp_base() -> PathBuf {
    match std::env::var_os("SSECFS_TEST_DIR").map(PathBuf::from) {
        Some(d) if d.is_dir() => d,
        _ => std::env::temp_dir(),
    }
}

/// A fresh temporary directory under [`tmp_base`].
pub fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(tmp_base())
        .expect("create a temporary directory")
}

// ---------------------------------------------------------------------------------------------
// S3 client

/// One runtime for all direct S3 calls of a test binary.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// An S3 client for the test server (path style, checksums only when required: Garage over
/// plain http).
pub fn client() -> &'static aws_sdk_s3::Client {
    static CLIENT: OnceLock<aws_sdk_s3::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let ep = endpoint();
        rt().block_on(async {
            let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region()))
                .load()
                .await;
            let conf = aws_sdk_s3::config::Builder::from(&shared)
                .endpoint_url(ep)
                .force_path_style(true)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                )
                .build();
            aws_sdk_s3::Client::from_conf(conf)
        })
    })
}

/// A failed direct S3 request.
#[derive(Debug, Clone)]
pub struct S3Failure {
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for S3Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3 error (status {:?}, code {:?}): {}",
            self.status, self.code, self.message
        )
    }
}

fn failure<E, R>(e: SdkError<E, R>) -> S3Failure
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug + HasStatus,
{
    let status = e.raw_response().map(HasStatus::status_code);
    let (code, message) = match &e {
        SdkError::ServiceError(se) => (
            se.err().code().map(str::to_owned),
            se.err().message().unwrap_or("").to_owned(),
        ),
        other => (None, format!("{other:?}").chars().take(400).collect()),
    };
    S3Failure {
        status,
        code,
        message,
    }
}

/// The HTTP status of a raw SDK response.
pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_smithy_runtime_api::client::orchestrator::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// A customer key (SSE-C): 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(md5 {})", self.md5_base64())
    }
}

impl Key {
    pub fn random() -> Key {
        Key(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub fn md5_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(self.0))
    }

    /// Write the key as base64 text (what `openssl rand -base64 32` writes), mode 0600.
    pub fn write_file(&self, path: &Path) {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap_or_else(|e| panic!("create key file {}: {e}", path.display()));
        writeln!(f, "{}", self.base64()).expect("write key file");
        // the umask cannot widen 0600, but make the mode explicit anyway
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod key file");
    }
}

/// What HEAD says about an object.
#[derive(Debug, Clone)]
pub struct Head {
    pub size: u64,
    pub etag: String,
    /// user metadata, names lower case without `x-amz-meta-`
    pub metadata: BTreeMap<String, String>,
    pub sse_customer_algorithm: Option<String>,
    pub sse_customer_key_md5: Option<String>,
}

/// GET `key` with the customer key; panics (with the S3 error) when it fails.
pub fn get_with_key(bucket: &str, key: &str, k: &Key) -> Vec<u8> {
    try_get(bucket, key, Some(k))
        .unwrap_or_else(|e| panic!("GET s3://{bucket}/{key} with the key failed: {e}"))
}

/// GET `key` without any key headers (must fail for an SSE-C object).
pub fn get_without_key(bucket: &str, key: &str) -> Result<Vec<u8>, S3Failure> {
    try_get(bucket, key, None)
}

/// GET with an optional customer key.
pub fn try_get(bucket: &str, key: &str, k: Option<&Key>) -> Result<Vec<u8>, S3Failure> {
    let c = client();
    rt().block_on(async {
        let mut req = c.get_object().bucket(bucket).key(key);
        if let Some(k) = k {
            req = req
                .sse_customer_algorithm("AES256")
                .sse_customer_key(k.base64())
                .sse_customer_key_md5(k.md5_base64());
        }
        let out = req.send().await.map_err(failure)?;
        let body = out.body.collect().await.map_err(|e| S3Failure {
            status: None,
            code: None,
            message: format!("reading the body: {e}"),
        })?;
        Ok(body.into_bytes().to_vec())
    })
}

/// HEAD with an optional customer key.
pub fn head(bucket: &str, key: &str, k: Option<&Key>) -> Result<Head, S3Failure> {
    let c = client();
    rt().block_on(async {
        let mut req = c.head_object().bucket(bucket).key(key);
        if let Some(k) = k {
            req = req
                .sse_customer_algorithm("AES256")
                .sse_customer_key(k.base64())
                .sse_customer_key_md5(k.md5_base64());
        }
        let out = req.send().await.map_err(failure)?;
        Ok(Head {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().unwrap_or("").to_owned(),
            metadata: out
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_lowercase(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            sse_customer_algorithm: out.sse_customer_algorithm().map(str::to_owned),
            sse_customer_key_md5: out.sse_customer_key_md5().map(str::to_owned),
        })
    })
}

/// Every key under `prefix` (no delimiter), sorted.
pub fn list(bucket: &str, prefix: &str) -> Vec<String> {
    try_list(bucket, prefix).unwrap_or_else(|e| panic!("LIST s3://{bucket}/{prefix}: {e}"))
}

pub fn try_list(bucket: &str, prefix: &str) -> Result<Vec<String>, S3Failure> {
    let c = client();
    rt().block_on(async {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = c
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(failure)?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    })
}

/// PUT an object, with the customer key when given, and user metadata.
pub fn put(bucket: &str, key: &str, body: &[u8], k: Option<&Key>, meta: &[(&str, &str)]) {
    let c = client();
    rt().block_on(async {
        let mut req = c
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()));
        if let Some(k) = k {
            req = req
                .sse_customer_algorithm("AES256")
                .sse_customer_key(k.base64())
                .sse_customer_key_md5(k.md5_base64());
        }
        for (name, value) in meta {
            req = req.metadata(*name, *value);
        }
        req.send()
            .await
            .map_err(failure)
            .unwrap_or_else(|e| panic!("PUT s3://{bucket}/{key}: {e}"));
    })
}

/// PUT with the customer key and metadata.
pub fn put_with_key(bucket: &str, key: &str, body: &[u8], k: &Key, meta: &[(&str, &str)]) {
    put(bucket, key, body, Some(k), meta)
}

/// The object `key` holds exactly `expected` under `k`, is SSE-C, and cannot be read without
/// the key.
#[track_caller]
pub fn assert_stored(bucket: &str, key: &str, k: &Key, expected: &[u8]) {
    let got = get_with_key(bucket, key, k);
    assert!(
        got == expected,
        "s3://{bucket}/{key} read with the key: {} bytes (sha256 {}), expected {} bytes (sha256 {})",
        got.len(),
        sha256_hex(&got),
        expected.len(),
        sha256_hex(expected)
    );
    match get_without_key(bucket, key) {
        Ok(b) => panic!(
            "s3://{bucket}/{key} was readable WITHOUT the customer key ({} bytes): not SSE-C",
            b.len()
        ),
        Err(e) => assert!(
            matches!(e.status, Some(400 | 403)),
            "GET s3://{bucket}/{key} without the key failed, but not with 400/403: {e}"
        ),
    }
    let h = head(bucket, key, Some(k))
        .unwrap_or_else(|e| panic!("HEAD s3://{bucket}/{key} with the key: {e}"));
    assert_eq!(
        h.sse_customer_algorithm.as_deref(),
        Some("AES256"),
        "s3://{bucket}/{key} HEAD with the key: no SSE-C algorithm in the answer: {h:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// buckets

/// A fresh, uniquely named bucket; emptied and deleted on drop (kept when the test panicked,
/// or with SSECFS_KEEP_BUCKETS=1, for inspection).
pub struct TestBucket {
    name: String,
}

impl TestBucket {
    pub fn new() -> TestBucket {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "e2e-{}-{}-{:08x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let c = client();
        rt().block_on(async {
            c.create_bucket()
                .bucket(&name)
                .send()
                .await
                .map_err(failure)
        })
        .unwrap_or_else(|e| panic!("CreateBucket {name} at {}: {e}", endpoint()));
        TestBucket { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for TestBucket {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBucket {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SSECFS_KEEP_BUCKETS").is_some() {
            eprintln!("keeping bucket {} for inspection", self.name);
            return;
        }
        let name = self.name.clone();
        let c = client();
        // best effort: a leftover bucket only costs space on a throw-away server
        rt().block_on(async move {
            if let Ok(out) = c.list_multipart_uploads().bucket(&name).send().await {
                for u in out.uploads() {
                    if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                        let _ = c
                            .abort_multipart_upload()
                            .bucket(&name)
                            .key(k)
                            .upload_id(id)
                            .send()
                            .await;
                    }
                }
            }
            for _ in 0..3 {
                let Ok(keys) = try_list_async(&name).await else {
                    break;
                };
                if keys.is_empty() {
                    break;
                }
                let dels = keys
                    .iter()
                    .map(|k| c.delete_object().bucket(&name).key(k).send());
                let _ = futures::future::join_all(dels).await;
            }
            let _ = c.delete_bucket().bucket(&name).send().await;
        });
    }
}

async fn try_list_async(bucket: &str) -> Result<Vec<String>, S3Failure> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = client()
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(failure)?;
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => break,
        }
    }
    Ok(keys)
}

// ---------------------------------------------------------------------------------------------
// mounts

/// Is `path` a FUSE mount point right now (per /proc/self/mounts)?
pub fn is_fuse_mount(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_src, Some(mp), Some(ty)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        ty.starts_with("fuse") && Path::new(&unescape_mount_path(mp)) == path
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Run `fusermount3 ARGS PATH`; `false` when it fails or hangs for more than 10 s (a hung
/// daemon can block a non-lazy unmount; the caller then falls back to a lazy one). Panics
/// when there is no fusermount3: on a fresh machine that is a missing install, not a busy
/// mount to retry for seconds and then blame on the daemon.
fn fusermount(args: &[&str], path: &Path) -> bool {
    let mut child = match Command::new("fusermount3")
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("fusermount3 not found (the fuse3 package): run scripts/setup.sh")
        }
        Err(_) => return false,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return s.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// `fusermount3 -u` (retried while busy for up to `busy_for`), then `-u -z` if still mounted.
pub fn unmount_path(path: &Path, busy_for: Duration) {
    let deadline = Instant::now() + busy_for;
    while is_fuse_mount(path) {
        if fusermount(&["-u"], path) || !is_fuse_mount(path) {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "fusermount3 -u {} keeps failing: lazy unmount",
                path.display()
            );
            fusermount(&["-u", "-z"], path);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of a file (for logs in failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// What to show of a mount log in a failure message: its warnings and errors, then its end.
pub fn log_excerpt(path: &Path) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let bad: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("ssecfs:"))
        .collect();
    let bad = &bad[bad.len().saturating_sub(30)..];
    let end = &lines[lines.len().saturating_sub(40)..];
    format!(
        "{} (warnings and errors, last {}):\n{}\n{} (last {} lines):\n{}",
        path.display(),
        bad.len(),
        bad.join("\n"),
        path.display(),
        end.len(),
        end.join("\n")
    )
}

/// How a mount process ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// It had to be killed: it did not exit within [`EXIT_TIMEOUT`] of the unmount.
    pub killed: bool,
}

impl Stopped {
    pub fn clean(&self) -> bool {
        self.status.success() && !self.killed
    }
}

/// A live `ssecfs mount -f` of a bucket. Dropping it unmounts, waits for the process to exit
/// (killing it after [`EXIT_TIMEOUT`]) and fails the test if the process did not exit cleanly
/// (unless the test is already failing).
pub struct Mount {
    source: String,
    key: Key,
    args: Vec<String>,
    /// Endpoint other than the test server's (e.g. a fault proxy in front of it).
    endpoint: Option<String>,
    /// The daemon's `SSECFS_LOG`. Per mount, never through this process's environment:
    /// tests run in parallel threads, and one test's `set_var` reached another's mount.
    log_filter: String,
    dir: Option<TempDir>,
    mnt: Option<TempDir>,
    mnt_path: PathBuf,
    key_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    generation: u32,
    watchdog: Option<Watchdog>,
}

/// Kills a mount process that is still serving after [`mount_deadline`], so that a test stuck
/// in a filesystem call (a hung or deadlocked daemon) fails with ENOTCONN instead of hanging
/// the whole suite. The pid stays valid until [`Watchdog::disarm`]: the child is reaped only
/// after that.
struct Watchdog {
    state: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Has our child `pid` exited? (waitid with WNOWAIT: it stays a zombie, its pid reserved.)
fn exited_without_reaping(pid: u32) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after a successful waitid (0 when nothing changed).
    r == 0 && unsafe { info.si_pid() } != 0
}

/// The developer's `SSECFS_LOG` as the test process first saw it (read once: no test may
/// change what another's mount logs), else debug for ssecfs and warnings from the rest.
fn default_log_filter() -> String {
    static FILTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILTER
        .get_or_init(|| std::env::var("SSECFS_LOG").unwrap_or_else(|_| "ssecfs=debug,warn".into()))
        .clone()
}

/// How long one mount may live (env `SSECFS_E2E_MOUNT_DEADLINE` seconds, default 600).
pub fn mount_deadline() -> Duration {
    Duration::from_secs(
        std::env::var("SSECFS_E2E_MOUNT_DEADLINE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
}

impl Watchdog {
    fn arm(pid: u32, mnt: PathBuf) -> Watchdog {
        let state = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*st;
            let deadline = Instant::now() + mount_deadline();
            let mut done = lock.lock().unwrap();
            while !*done {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!(
                        "WATCHDOG: the mount at {} is still up after {:?}: killing ssecfs \
                         (pid {pid}) so the stuck test fails instead of hanging",
                        mnt.display(),
                        mount_deadline()
                    );
                    // SAFETY: kill(2) on our own child, not yet reaped (`done` is false).
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    fusermount(&["-u", "-z"], &mnt);
                    return;
                }
                done = cv.wait_timeout(done, deadline - now).unwrap().0;
            }
        });
        Watchdog {
            state,
            thread: Some(thread),
        }
    }

    fn disarm(mut self) {
        let (lock, cv) = &*self.state;
        *lock.lock().unwrap() = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Mount {
    /// Mount `bucket` with a new random key and `extra` options.
    pub fn new(bucket: &TestBucket, extra: &[&str]) -> Mount {
        Mount::with_key(bucket, &Key::random(), extra)
    }

    /// Mount `bucket` with `key` (e.g. the key of another mount, or a different one).
    pub fn with_key(bucket: &TestBucket, key: &Key, extra: &[&str]) -> Mount {
        Mount::with_source(bucket.name(), key, extra)
    }

    /// Mount `source` (`BUCKET` or `BUCKET:PREFIX`) with `key`.
    pub fn with_source(source: &str, key: &Key, extra: &[&str]) -> Mount {
        Mount::try_with_source(source, key, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Mount::with_source`], but a mount that does not come up is an `Err` carrying
    /// the reason and the process log (for tests that expect a refusal).
    pub fn try_with_source(source: &str, key: &Key, extra: &[&str]) -> Result<Mount, String> {
        Mount::try_through(source, key, None, extra)
    }

    /// Mount `source` with `key` through `endpoint` (plain http) instead of the test server.
    pub fn through(source: &str, key: &Key, endpoint: &str, extra: &[&str]) -> Mount {
        Mount::try_through(source, key, Some(endpoint.to_owned()), extra)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Mount::through`], but a mount that does not come up is an `Err` with the
    /// reason and the log (for tests that expect a refusal).
    pub fn try_through_endpoint(
        source: &str,
        key: &Key,
        endpoint: &str,
        extra: &[&str],
    ) -> Result<Mount, String> {
        Mount::try_through(source, key, Some(endpoint.to_owned()), extra)
    }

    /// Mount `bucket` with `SSECFS_LOG=filter` for the daemon (and a new random key).
    pub fn with_log_filter(bucket: &TestBucket, filter: &str, extra: &[&str]) -> Mount {
        Mount::try_mount(bucket.name(), &Key::random(), None, extra, Some(filter))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_through(
        source: &str,
        key: &Key,
        endpoint: Option<String>,
        extra: &[&str],
    ) -> Result<Mount, String> {
        Mount::try_mount(source, key, endpoint, extra, None)
    }

    /// The one constructor. `log_filter` None: the developer's `SSECFS_LOG` if set when the
    /// suite started, else debug for ssecfs and warnings from the rest.
    fn try_mount(
        source: &str,
        key: &Key,
        endpoint: Option<String>,
        extra: &[&str],
        log_filter: Option<&str>,
    ) -> Result<Mount, String> {
        let log_filter = log_filter.map_or_else(default_log_filter, str::to_owned);
        let dir = tempdir("e2e-state-");
        let mnt = tempdir("e2e-mnt-");
        let mnt_path = mnt
            .path()
            .canonicalize()
            .expect("canonical mountpoint path");
        let key_path = dir.path().join("key");
        key.write_file(&key_path);
        let log_path = dir.path().join("ssecfs.log");
        let mut m = Mount {
            source: source.to_owned(),
            key: key.clone(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            endpoint,
            log_filter,
            dir: Some(dir),
            mnt: Some(mnt),
            mnt_path,
            key_path,
            log_path,
            child: None,
            generation: 0,
            watchdog: None,
        };
        m.start()?;
        Ok(m)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(SSECFS);
        cmd.arg("mount").arg("-f");
        // extra args naming their own endpoint (TLS) replace the test server's
        if !self.args.iter().any(|a| a == "--endpoint") {
            cmd.arg("--endpoint")
                .arg(self.endpoint.clone().unwrap_or_else(endpoint))
                .arg("--allow-http");
        }
        cmd.arg("--key-file")
            .arg(&self.key_path)
            .args(&self.args)
            .arg(&self.source)
            .arg(&self.mnt_path)
            .env("NO_COLOR", "1")
            .env("SSECFS_LOG", &self.log_filter);
        cmd
    }

    fn start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "start() on a live mount");
        self.generation += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the mount log");
        let mut cmd = self.command();
        writeln!(log, "===== mount #{}: {cmd:?}", self.generation).expect("write the mount log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {SSECFS}: {e}"));
        self.watchdog = Some(Watchdog::arm(child.id(), self.mnt_path.clone()));
        self.child = Some(child);
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if is_fuse_mount(&self.mnt_path) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("child");
            // peek without reaping: the watchdog may only be disarmed before the pid is freed
            if exited_without_reaping(child.id()) {
                if let Some(w) = self.watchdog.take() {
                    w.disarm();
                }
                let status = child.wait().expect("wait for the mount process");
                self.child = None;
                return Err(format!(
                    "ssecfs mount {} {} exited ({status}) before the mount was live; log:\n{}",
                    self.source,
                    self.mnt_path.display(),
                    log_excerpt(&self.log_path)
                ));
            }
            if Instant::now() >= deadline {
                if let Some(w) = self.watchdog.take() {
                    w.disarm();
                }
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                unmount_path(&self.mnt_path, Duration::ZERO);
                return Err(format!(
                    "ssecfs mount {} {} was not live within {MOUNT_TIMEOUT:?} (not in \
                     /proc/self/mounts); log:\n{}",
                    self.source,
                    self.mnt_path.display(),
                    log_excerpt(&self.log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Unmount and wait for the process (killing it after [`EXIT_TIMEOUT`]); `None` when it
    /// was not running.
    pub fn stop(&mut self) -> Option<Stopped> {
        self.stop_within(EXIT_TIMEOUT)
    }

    /// [`Mount::stop`] giving the process `exit_timeout` to exit after the unmount.
    pub fn stop_within(&mut self, exit_timeout: Duration) -> Option<Stopped> {
        let mut child = self.child.take()?;
        if let Some(w) = self.watchdog.take() {
            w.disarm();
        }
        unmount_path(&self.mnt_path, Duration::from_secs(5));
        let deadline = Instant::now() + exit_timeout;
        let (status, killed) = loop {
            match child.try_wait() {
                Ok(Some(s)) => break (s, false),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                _ => {
                    eprintln!(
                        "ssecfs (pid {}) did not exit within {exit_timeout:?} of the unmount \
                         of {}: killing it",
                        child.id(),
                        self.mnt_path.display()
                    );
                    let _ = child.kill();
                    break (child.wait().expect("wait for the killed mount"), true);
                }
            }
        };
        // a killed or crashed process leaves a dead mount behind
        if is_fuse_mount(&self.mnt_path) {
            unmount_path(&self.mnt_path, Duration::ZERO);
        }
        Some(Stopped { status, killed })
    }

    /// Unmount; panics unless the process exited cleanly (status 0, not killed).
    #[track_caller]
    pub fn unmount(&mut self) {
        self.unmount_within(EXIT_TIMEOUT);
    }

    /// [`Mount::unmount`], allowing the daemon `exit_timeout` to exit.
    #[track_caller]
    pub fn unmount_within(&mut self, exit_timeout: Duration) {
        if let Some(s) = self.stop_within(exit_timeout) {
            assert!(
                s.clean(),
                "ssecfs did not exit cleanly after unmount ({:?}); log:\n{}",
                s,
                log_excerpt(&self.log_path)
            );
        }
    }

    /// Unmount (asserting a clean exit) and mount again with the same key and options.
    #[track_caller]
    pub fn remount(&mut self) {
        self.remount_within(EXIT_TIMEOUT);
    }

    /// [`Mount::remount`], allowing the old daemon `exit_timeout` to exit: after fault
    /// injection, kernel read-ahead requests still in their retry backoff hold the FUSE
    /// session until they end.
    #[track_caller]
    pub fn remount_within(&mut self, exit_timeout: Duration) {
        self.unmount_within(exit_timeout);
        if let Err(e) = self.start() {
            panic!("remount failed: {e}");
        }
    }

    /// Is the mount live?
    pub fn is_mounted(&self) -> bool {
        is_fuse_mount(&self.mnt_path)
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.mnt_path
    }

    /// A path inside the mount ("" is the mount point itself).
    pub fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt_path.clone()
        } else {
            self.mnt_path.join(rel)
        }
    }

    /// The customer key of this mount.
    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn key_file(&self) -> &Path {
        &self.key_path
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The whole log of the mount process(es) so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The pid of the mount process, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let stopped = self.stop();
        if self.is_mounted() {
            // never recurse into a live mount when the temp dir is removed
            eprintln!(
                "{} is still mounted: leaving the directory behind",
                self.mnt_path.display()
            );
            if let Some(d) = self.mnt.take() {
                let _ = d.keep();
            }
        }
        if panicking {
            eprintln!("----- ssecfs log: {}\n-----", log_excerpt(&self.log_path));
            if let Some(d) = self.dir.take() {
                let kept = d.keep();
                eprintln!("(kept {} for inspection)", kept.display());
            }
            return;
        }
        if let Some(s) = stopped {
            if !s.clean() {
                panic!(
                    "ssecfs did not exit cleanly after unmount of {} ({:?}); log:\n{}",
                    self.mnt_path.display(),
                    s,
                    log_excerpt(&self.log_path)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// daemonized mounts (no -f): the tests only know the mount point

/// A mount made by a daemonized `ssecfs mount` (found by its mount point). Drop unmounts it
/// and waits for the daemon to go, killing it (by pid) after [`EXIT_TIMEOUT`].
pub struct DaemonMount {
    pub mountpoint: PathBuf,
}

impl DaemonMount {
    /// Pids of ssecfs processes whose command line names this mount point.
    pub fn pids(&self) -> Vec<i32> {
        ssecfs_pids_for(&self.mountpoint)
    }
}

/// Pids of `ssecfs` processes whose command line contains `path`.
pub fn ssecfs_pids_for(path: &Path) -> Vec<i32> {
    let want = path.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ssecfs = args
            .first()
            .is_some_and(|a| a.ends_with(b"/ssecfs") || *a == b"ssecfs");
        if is_ssecfs && args.contains(&want) {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for DaemonMount {
    fn drop(&mut self) {
        unmount_path(&self.mountpoint, Duration::from_secs(5));
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for p in pids {
                    eprintln!("daemon {p} still running after unmount: killing it");
                    // SAFETY: kill(2) on a pid we found running our binary on our mount point.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_fuse_mount(&self.mountpoint) {
            unmount_path(&self.mountpoint, Duration::ZERO);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// commands

/// close(2) of `f`, its result as the application sees it: dropping a File (and so
/// `fs::write`) throws that answer away, and close() is where ssecfs reports a failed upload.
pub fn close(f: fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: we own `fd` (taken from the File), closed exactly once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `fs::write` that also checks close(2)'s answer (see [`close`]).
pub fn write_closed(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    close(f)
}

/// Run a command with a timeout, capturing its output (no assertion on the status).
pub fn output_of(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_millis(1);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {timeout:?} (killed)");
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}

/// Copy a program to `dst` through a child `cp`, for a test that runs the copy. Written by
/// this process, the copy could be held open for writing by a child that another test thread
/// forks at that moment (a fork holds every descriptor until its exec), and running it would
/// then fail with ETXTBSY ("Text file busy").
#[track_caller]
pub fn copy_program(src: impl AsRef<Path>, dst: impl AsRef<Path>) {
    run_cmd(Command::new("cp").arg(src.as_ref()).arg(dst.as_ref()));
}

/// Run `program args…`; panics with its output unless it succeeds. Returns stdout.
#[track_caller]
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_cmd(&mut cmd)
}

/// Run a prepared command (see [`run`]).
#[track_caller]
pub fn run_cmd(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = output_of(cmd, CMD_TIMEOUT);
    if !out.status.success() {
        panic!(
            "command failed ({}): {desc}\n--- stdout:\n{}\n--- stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a `sh -c` script; panics with its output unless it succeeds. Returns stdout.
#[track_caller]
pub fn sh(script: &str) -> String {
    run("sh", &["-c", script])
}

/// Run a `sh -c` script and return its output whatever the status.
pub fn sh_output(script: &str) -> Output {
    output_of(Command::new("sh").args(["-c", script]), CMD_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// data and trees

/// A workload through `m` that makes every kind of keyed request: PutObject (`a` = `small`),
/// CopyObject with the copy-source trio (rename to `b`, chmod), multipart (`big`) and
/// UploadPartCopy (a one-byte edit of `big` at offset 1, fsynced). `big` must exceed a part.
pub fn keyed_workload(m: &Mount, small: &[u8], big: &[u8]) {
    fs::write(m.path("a"), small).unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    sh(&format!("chmod 600 '{}'", m.path("b").display()));
    fs::write(m.path("big"), big).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("big"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"E", 1).unwrap();
    f.sync_all().unwrap();
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// sha256 of a file, streaming.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest as _;
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// One node of a [`snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        perm: u32,
        size: u64,
        mtime: i64,
        sha256: String,
    },
    Dir {
        perm: u32,
    },
    Symlink {
        target: PathBuf,
    },
}

/// Everything under `root` (relative path → node), without following symlinks. Directory
/// mtimes are left out (they legitimately change when entries come and go).
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = md.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&p).unwrap_or_else(|e| panic!("readlink {rel}: {e}"));
            out.insert(rel, Node::Symlink { target });
        } else if ft.is_dir() {
            out.insert(
                rel,
                Node::Dir {
                    perm: md.mode() & 0o7777,
                },
            );
            walk(root, &p, out);
        } else {
            out.insert(
                rel,
                Node::File {
                    perm: md.mode() & 0o7777,
                    size: md.len(),
                    mtime: md.mtime(),
                    sha256: sha256_file(&p),
                },
            );
        }
    }
}

/// Assert two snapshots are equal, listing the differences.
#[track_caller]
pub fn assert_same_tree(what: &str, a: &BTreeMap<String, Node>, b: &BTreeMap<String, Node>) {
    if a == b {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => diffs.push(format!("  only before: {k} {v:?}")),
            Some(w) if w != v => diffs.push(format!("  changed: {k}\n    {v:?}\n    {w:?}")),
            _ => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            diffs.push(format!("  only after: {k} {w:?}"));
        }
    }
    panic!("{what}: trees differ:\n{}", diffs.join("\n"));
}

/// The errno of an io::Error (panics when it has none).
#[track_caller]
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("error without errno: {e:?}"))
}

/// `stat(2)` mode bits (permission part) of a path, not following symlinks.
pub fn perm_of(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// mtime (whole seconds) of a path, not following symlinks.
pub fn mtime_of(p: &Path) -> i64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .mtime()
}

/// A `kB` field of /proc/PID/status (VmLck, VmHWM, …); 0 when unreadable.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// plaintext on local disks

/// Every file on the local disks a daemon could write to (/tmp, /var/tmp, /dev/shm, the working
/// directory, $HOME, the XDG cache, the test dir, plus `extra_roots`) that holds `needle`. FUSE
/// mounts are not entered (we scan disks) and build trees/toolchains are skipped (large, and
/// never written by the daemon).
pub fn local_files_containing(needle: &[u8], extra_roots: &[PathBuf]) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let xdg_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"));
    let mut roots = vec![
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
        PathBuf::from("/dev/shm"),
        std::env::current_dir().unwrap(),
        xdg_cache.clone(),
        home.clone(),
        tmp_base(),
    ];
    roots.extend_from_slice(extra_roots);
    let mut skip = vec![home.join(".cargo"), home.join(".rustup")];
    // ours and other build trees next to it (worktrees, CI runs): ssecfs-target*
    if let Ok(rd) = fs::read_dir(&xdg_cache) {
        skip.extend(rd.flatten().map(|e| e.path()).filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ssecfs-target"))
        }));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        skip.push(PathBuf::from(t));
    }
    skip.push(std::env::current_dir().unwrap().join("target"));
    let mut hits = Vec::new();
    for r in &roots {
        find_in_tree(r, needle, &skip, &mut hits);
    }
    hits.sort();
    hits.dedup();
    hits
}

/// Every file below `root` (not following symlinks, skipping `skip`), checked for `needle`.
fn find_in_tree(root: &Path, needle: &[u8], skip: &[PathBuf], hits: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if skip.iter().any(|s| p.starts_with(s)) {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            // never descend into a FUSE mount (ours or another test's)
            if !is_fuse_mount(&p) {
                find_in_tree(&p, needle, skip, hits);
            }
        } else if ft.is_file() && file_contains(&p, needle) {
            hits.push(p);
        }
    }
}

/// Does the file at `p` hold `needle` (read in 1 MiB pieces, matches across pieces found)?
pub fn file_contains(p: &Path, needle: &[u8]) -> bool {
    let Ok(mut f) = fs::File::open(p) else {
        return false;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = carry.len().saturating_sub(needle.len());
        carry.drain(..keep);
    }
}

/// 64 random bits from the OS (markers that exist nowhere else).
pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

/// `ssecfs rotate --from FROM --to TO [extra] BUCKET` against the test server; asserts success
/// and returns its stdout (the summary).
pub fn rotate(
    bucket: &str,
    from: &std::path::Path,
    to: &std::path::Path,
    extra: &[&str],
) -> String {
    let out = output_of(
        Command::new(SSECFS)
            .args([
                "rotate",
                "--endpoint",
                &endpoint(),
                "--allow-http",
                "--from",
            ])
            .arg(from)
            .arg("--to")
            .arg(to)
            .args(extra)
            .arg(bucket),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rotate failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
