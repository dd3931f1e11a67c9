//! Wiring: from parsed arguments to a live mount (or a keygen / check), with the process
//! discipline a mount needs.
//!
//! Order matters. Everything the user can get wrong (key file, options, sizes) is checked
//! before forking, so mount(8) prints the message. Without `-f` the process forks *before*
//! any thread or runtime exists; the child reports through a pipe, and the parent exits 0
//! only once the kernel mount is live. The key is loaded again in the child because locked
//! memory is `MADV_DONTFORK`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::arena::Arena;
use crate::cli::{self, CheckArgs, Cli, Command, ConnectionArgs, MountArgs, RotateArgs};
use crate::fs::{Fs, FsConfig};
use crate::harden::forbid_core_dumps;
use crate::key::{CustomerKey, KeyRing};
use crate::s3::aws::{build_client, AwsStore, Connection};
use crate::s3::{ObjectStore, S3Error};
use crate::upload::UploadConfig;

mod mount;
use mount::mount;

/// Entry point of the binary.
pub fn main_entry() -> ExitCode {
    forbid_core_dumps();
    let (args, kernel_flags) =
        match cli::expand_args(std::env::args_os().collect::<Vec<OsString>>()) {
            Ok(v) => v,
            Err(e) => return fail(&e.to_string()),
        };
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Keygen { path } => keygen(&path),
        Command::Check(c) => check(c),
        Command::Rotate(r) => rotate(r),
        Command::Sync { mountpoint } => sync(&mountpoint),
        Command::Status { mountpoint } => status(&mountpoint),
        Command::Mount(mut m) => {
            m.kernel_flags = kernel_flags;
            match mount(*m) {
                Ok(()) => ExitCode::SUCCESS,
                Err(msg) => fail(&msg),
            }
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("ssecfs: {msg}");
    ExitCode::from(1)
}

fn keygen(path: &Path) -> ExitCode {
    match crate::key::generate_key_file(path) {
        Ok(k) => {
            println!("wrote a new key to {} (mode 0600)", path.display());
            println!("fingerprint: {}", k.fingerprint());
            println!("keep a copy somewhere safe: without this key the data cannot be read");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// Where logs go: a file when asked, syslog/journald when detached, else stderr.
/// `ssecfs sync MOUNTPOINT`: have the daemon store everything pending, showing what is left.
fn sync(mountpoint: &Path) -> ExitCode {
    let mut answer = match crate::control::request(mountpoint, "sync") {
        Ok(a) => a,
        Err(e) => return fail(&format!("sync: {e}")),
    };
    // A spinner with what is left, on a terminal only (indicatif hides itself otherwise).
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("static template"),
    );
    bar.set_message("storing what is pending");
    loop {
        let line = match crate::control::next_line(&mut answer) {
            Ok(Some(l)) => l,
            Ok(None) => {
                bar.abandon();
                return fail("sync: the mount's daemon went away before it finished");
            }
            Err(e) => {
                bar.abandon();
                return fail(&format!("sync: {e}"));
            }
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pending", files, bytes] => {
                let mib = bytes.parse::<u64>().unwrap_or(0) as f64 / (1 << 20) as f64;
                bar.set_message(format!("{files} files left, {mib:.1} MiB in memory"));
                bar.tick();
            }
            ["done", "0"] => {
                bar.finish_and_clear();
                return ExitCode::SUCCESS;
            }
            ["done", failed] => {
                bar.abandon();
                return fail(&format!(
                    "sync: {failed} files could not be stored (kept in memory for the next try); `ssecfs status {}` names them",
                    mountpoint.display()
                ));
            }
            _ => {
                bar.abandon();
                return fail(&format!(
                    "sync: {}",
                    line.strip_prefix("error ").unwrap_or(&line)
                ));
            }
        }
    }
}

/// `ssecfs status MOUNTPOINT`: print the daemon's report.
fn status(mountpoint: &Path) -> ExitCode {
    let mut answer = match crate::control::request(mountpoint, "status") {
        Ok(a) => a,
        Err(e) => return fail(&format!("status: {e}")),
    };
    loop {
        match crate::control::next_line(&mut answer) {
            Ok(Some(l)) if l.starts_with("error ") => {
                return fail(&format!("status: {}", &l["error ".len()..]))
            }
            Ok(Some(l)) => println!("{l}"),
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => return fail(&format!("status: {e}")),
        }
    }
}

fn load_ring(conn: &ConnectionArgs) -> Result<KeyRing, String> {
    KeyRing::load(&conn.key_file).map_err(|e| e.to_string())
}

fn connection(conn: &ConnectionArgs) -> Result<Connection, String> {
    if let Some(c) = &conn.credentials {
        let meta =
            std::fs::metadata(c).map_err(|e| format!("credentials file {}: {e}", c.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "credentials file {} is readable by group or others; run `chmod 600 {}`",
                c.display(),
                c.display()
            ));
        }
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", c);
    }
    Ok(Connection {
        endpoint: conn.endpoint.clone(),
        region: conn.region.clone(),
        path_style: conn.path_style,
        allow_http: conn.allow_http,
        profile: conn.profile.clone(),
        ca_bundle: conn.ca_bundle.clone(),
    })
}

async fn connect(
    conn: &ConnectionArgs,
    bucket: &str,
    ring: KeyRing,
) -> Result<Arc<AwsStore>, String> {
    let client = build_client(&connection(conn)?)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(AwsStore::new(
        client,
        bucket.to_owned(),
        Arc::new(ring),
    )))
}

/// Explain an S3 error met while checking a bucket, in terms of what the user should do.
fn explain(e: &S3Error, bucket: &str, endpoint: &str) -> String {
    match e {
        S3Error::NoSuchBucket => format!("bucket `{bucket}` does not exist at {endpoint}"),
        S3Error::BadCredentials(code) => format!(
            "the server refused the credentials ({code}); check AWS_ACCESS_KEY_ID / \
             AWS_SECRET_ACCESS_KEY or the profile"
        ),
        S3Error::AccessDenied(m) => format!("access to bucket `{bucket}` denied: {m}"),
        S3Error::Transport(m) => format!("cannot reach the endpoint {endpoint}: {m}"),
        other => other.to_string(),
    }
}

/// One write with SSE-C, read back and deleted. Refuses a bucket that blocks SSE-C writes
/// (AWS's default for new buckets since April 2026: a generic 403 on PutObject) and a server
/// that ignores SSE-C (its answer does not echo the algorithm and the key's MD5).
async fn probe_sse_c_writes(
    store: &AwsStore,
    prefix: &str,
    bucket: &str,
    endpoint: &str,
) -> Result<(), String> {
    let probe = format!("{prefix}.ssecfs-probe-{}", std::process::id());
    let body = bytes::Bytes::from_static(b"ssecfs probe");
    match store.put(&probe, body, &Default::default()).await {
        Ok(_) => {
            let read = store.head(&probe).await;
            let _ = store.delete(&probe).await;
            read.map(|_| ()).map_err(|e| format!("probe object unreadable: {e}"))
        }
        Err(S3Error::AccessDenied(_)) => Err(format!(
            "SSE-C writes are refused (403): the bucket probably blocks SSE-C \
             (BlockedEncryptionTypes). Mount with --read-only to read it, or the owner can lift \
             it with: aws s3api put-bucket-encryption --bucket {bucket} \
             --server-side-encryption-configuration \
             '{{\"Rules\":[{{\"ApplyServerSideEncryptionByDefault\":{{\"SSEAlgorithm\":\"AES256\"}},\"BlockedEncryptionTypes\":{{\"EncryptionType\":[\"NONE\"]}}}}]}}'"
        )),
        Err(e @ S3Error::SseIgnored { .. }) => {
            // it may be stored in the clear: take it away again
            let _ = store.delete(&probe).await;
            Err(e.to_string())
        }
        Err(e) => Err(explain(&e, bucket, endpoint)),
    }
}

/// What mount checks before it goes live: the bucket answers with these credentials, and
/// the key opens at least one of the objects sampled (unless the bucket is empty).
async fn preflight(
    store: &AwsStore,
    prefix: &str,
    endpoint: &str,
    force: bool,
) -> Result<(), String> {
    let page = store
        .list(prefix, None, None, Some(20))
        .await
        .map_err(|e| explain(&e, store.bucket(), endpoint))?;
    let sample: Vec<_> = page
        .objects
        .iter()
        .filter(|o| !o.key.ends_with('/'))
        .take(5)
        .collect();
    if sample.is_empty() || force {
        return Ok(());
    }
    let mut opened = 0;
    let mut wrong = 0;
    for o in &sample {
        match store.head(&o.key).await {
            Ok(_) => opened += 1,
            Err(S3Error::WrongKey | S3Error::AccessDenied(_)) => wrong += 1,
            Err(e) => return Err(explain(&e, store.bucket(), endpoint)),
        }
    }
    if opened == 0 && wrong > 0 {
        return Err(format!(
            "the key (fingerprint {}) opens none of the {wrong} objects sampled in `{}`; is this \
             the right key? (use --force to mount anyway)",
            store.key_fingerprint(),
            store.bucket()
        ));
    }
    Ok(())
}

fn check(args: CheckArgs) -> ExitCode {
    crate::log::init("warn", crate::log::Target::Stderr);
    let ring = match load_ring(&args.conn) {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let fps: Vec<String> = ring.iter().map(|k| k.fingerprint().to_owned()).collect();
    let (bucket, prefix) = cli::split_source(&args.source);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let endpoint = args.conn.endpoint.clone().unwrap_or_else(|| "AWS".into());
    let result: Result<(), String> = rt.block_on(async {
        let store = connect(&args.conn, &bucket, ring).await?;
        println!("key fingerprint {} (seals new writes)", fps[0]);
        for fp in &fps[1..] {
            println!("key fingerprint {fp} (opens older objects)");
        }
        preflight(&store, &format_prefix(&prefix), &endpoint, true).await?;
        println!("ok   endpoint reachable, credentials valid, bucket `{bucket}` exists");
        probe_sse_c_writes(&store, &format_prefix(&prefix), &bucket, &endpoint).await?;
        println!("ok   SSE-C writes allowed, and the server confirmed it applied SSE-C");
        let page = store
            .list(&format_prefix(&prefix), None, None, Some(20))
            .await
            .map_err(|e| e.to_string())?;
        let (mut ok, mut wrong) = (0, 0);
        for o in page.objects.iter().filter(|o| !o.key.ends_with('/')) {
            match store.head(&o.key).await {
                Ok(_) => ok += 1,
                Err(_) => wrong += 1,
            }
        }
        if ok == 0 && wrong > 0 {
            return Err(format!("the key opens none of the {wrong} objects sampled"));
        }
        println!("ok   the key opens {ok} of {} objects sampled", ok + wrong);
        match store.list_multipart(&format_prefix(&prefix)).await {
            Ok(ups) if ups.is_empty() => println!("ok   no incomplete multipart uploads"),
            Ok(ups) => {
                let now = std::time::SystemTime::now();
                let oldest = ups
                    .iter()
                    .filter_map(|u| now.duration_since(u.initiated).ok())
                    .max();
                println!(
                    "note {} incomplete multipart upload(s) hold storage (oldest begun {} ago); \
                     a mount aborts those older than --abort-uploads-after (default 7d)",
                    ups.len(),
                    approx_age(oldest.unwrap_or_default())
                );
            }
            Err(e) => println!("note cannot list incomplete multipart uploads: {e}"),
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `3 d`, `5 h`, `12 min`: how long ago, roughly, for a person.
fn approx_age(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 86_400 => format!("{} d", s / 86_400),
        s if s >= 3_600 => format!("{} h", s / 3_600),
        s => format!("{} min", s / 60),
    }
}

fn rotate(args: RotateArgs) -> ExitCode {
    crate::log::init("warn", crate::log::Target::Stderr);
    // The ring: the new key first (it seals the copies), then every old key.
    let ring = (|| {
        let to = CustomerKey::load(&args.to).map_err(|e| e.to_string())?;
        let mut keys = vec![(to, format!("--to {}", args.to.display()))];
        keys.extend(crate::key::read_keys(&args.from).map_err(|e| e.to_string())?);
        KeyRing::new(keys).map_err(|e| e.to_string())
    })();
    let ring = match ring {
        Ok(r) if r.len() > 1 || args.adopt_plain => r,
        Ok(_) => return fail("--from needs at least one key"),
        Err(e) => return fail(&e),
    };
    let (bucket, prefix) = cli::split_source(&args.source);
    let endpoint = args.conn.endpoint.clone().unwrap_or_else(|| "AWS".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // A progress bar on a terminal only (indicatif hides itself otherwise).
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} objects ({per_sec}, eta {eta})",
        )
        .expect("static template"),
    );
    bar.set_prefix(if args.dry_run { "checking" } else { "rotating" });
    let result: Result<crate::s3::rotate::RotateSummary, String> = rt.block_on(async {
        let store = connect(&args.conn, &bucket, ring).await?;
        crate::s3::rotate::rotate_prefix(
            store.as_ref(),
            &format_prefix(&prefix),
            crate::s3::rotate::RotateMode {
                dry_run: args.dry_run,
                adopt_plain: args.adopt_plain,
            },
            |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        )
        .await
        .map_err(|e| explain(&e, &bucket, &endpoint))
    });
    bar.finish_and_clear();
    match result {
        Ok(s) => report_rotation(&s, args.dry_run),
        Err(e) => fail(&e),
    }
}

/// What a rotation did, and its exit status: 1 while some object is opened by no key given.
fn report_rotation(s: &crate::s3::rotate::RotateSummary, dry_run: bool) -> ExitCode {
    println!(
        "{}rotated {}, already under the new key {}, adopted {}, plain (not SSE-C) {}, \
         opened by no key {}",
        if dry_run { "dry run: would have " } else { "" },
        s.rotated,
        s.already,
        s.adopted,
        s.plain,
        s.neither.len()
    );
    if s.plain > 0 {
        println!(
            "  plain objects are left as they are; --adopt-plain seals them under the \
             new key"
        );
    }
    for k in s.neither.iter().take(20) {
        println!("  no key opens: {k}");
    }
    if s.neither.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn format_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}
