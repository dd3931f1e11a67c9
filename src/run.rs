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
        Ok(s) => {
            println!(
                "{}rotated {}, already under the new key {}, adopted {}, plain (not SSE-C) {}, \
                 opened by no key {}",
                if args.dry_run {
                    "dry run: would have "
                } else {
                    ""
                },
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
        Err(e) => fail(&e),
    }
}

fn format_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Everything validated before forking, so the parent can report it.
struct Prepared {
    bucket: String,
    prefix: String,
    cache_size: u64,
    shrink: bool,
    part_size: u64,
    umask: u32,
    write_back_max: Option<u64>,
    /// `--spill-dir` and the bound in bytes.
    spill: Option<(PathBuf, u64)>,
    /// `--abort-uploads-after`; `None` for `off` (and for read-only mounts).
    abort_uploads_after: Option<Duration>,
}

fn prepare(m: &MountArgs) -> Result<Prepared, String> {
    if !m.no_mlockall {
        crate::harden::check_lock_all().map_err(|e| e.to_string())?;
    }
    drop(load_ring(&m.conn)?);
    connection(&m.conn)?;
    let (bucket, prefix) = cli::split_source(&m.source);
    if bucket.is_empty() {
        return Err(format!(
            "`{}` names no bucket; expected BUCKET[:PREFIX]",
            m.source
        ));
    }
    let meta = std::fs::metadata(&m.mountpoint)
        .map_err(|e| format!("mountpoint {}: {e}", m.mountpoint.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "mountpoint {} is not a directory",
            m.mountpoint.display()
        ));
    }
    let has_entries = std::fs::read_dir(&m.mountpoint)
        .map_err(|e| format!("mountpoint {}: {e}", m.mountpoint.display()))?
        .next()
        .is_some();
    if has_entries && !m.nonempty {
        return Err(format!(
            "mountpoint {} is not empty: its files would be hidden while mounted (pass \
             --nonempty or -o nonempty to mount over them anyway)",
            m.mountpoint.display()
        ));
    }
    let (cache_size, shrink) = if m.cache_size.eq_ignore_ascii_case("auto") {
        (256 << 20, true)
    } else {
        (
            cli::parse_size(&m.cache_size).map_err(|e| format!("--cache-size: {e}"))?,
            false,
        )
    };
    if cache_size < 16 << 20 {
        return Err(format!(
            "--cache-size {} is too small: at least 16M is needed",
            m.cache_size
        ));
    }
    let part_size = cli::parse_size(&m.part_size).map_err(|e| format!("--part-size: {e}"))?;
    if !(crate::s3::MIN_PART..=1 << 30).contains(&part_size) {
        return Err(format!(
            "--part-size {} must be between 5M and 1G",
            m.part_size
        ));
    }
    if part_size * 4 > cache_size {
        return Err(format!(
            "--cache-size {} is too small for --part-size {}: at least four parts must fit",
            m.cache_size, m.part_size
        ));
    }
    let umask = match &m.umask {
        Some(u) => u32::from_str_radix(u, 8)
            .map_err(|_| format!("--umask {u}: expected octal like 022"))?,
        None => 0o022,
    };
    let write_back_max = match &m.write_back_max {
        Some(v) => {
            let n = cli::parse_size(v).map_err(|e| format!("--write-back-max: {e}"))?;
            if n > cache_size {
                return Err(format!(
                    "--write-back-max {v} is larger than --cache-size {}",
                    m.cache_size
                ));
            }
            Some(n)
        }
        None => None,
    };
    let spill = match (&m.spill_dir, &m.spill_size) {
        (None, None) => None,
        (None, Some(_)) => return Err("--spill-size needs --spill-dir".into()),
        (Some(dir), size) => {
            let size = cli::parse_size(size.as_deref().unwrap_or("1G"))
                .map_err(|e| format!("--spill-size: {e}"))?;
            if size < 2 * (part_size + crate::cache::spill::TAG_LEN) {
                return Err(format!(
                    "--spill-size {} is too small for --part-size {}: at least two parts must fit",
                    m.spill_size.as_deref().unwrap_or("1G"),
                    m.part_size
                ));
            }
            let meta = std::fs::metadata(dir)
                .map_err(|e| format!("--spill-dir {}: {e}", dir.display()))?;
            if !meta.is_dir() {
                return Err(format!("--spill-dir {} is not a directory", dir.display()));
            }
            // absolute: the daemon may change directory when it detaches
            let dir = dir
                .canonicalize()
                .map_err(|e| format!("--spill-dir {}: {e}", dir.display()))?;
            Some((dir, size))
        }
    };
    let abort_uploads_after = cli::parse_age(&m.abort_uploads_after)
        .map_err(|e| format!("--abort-uploads-after: {e}"))?
        .filter(|_| !m.read_only);
    Ok(Prepared {
        abort_uploads_after,
        spill,
        bucket,
        prefix,
        cache_size,
        shrink,
        part_size,
        umask,
        write_back_max,
    })
}

fn mount(m: MountArgs) -> Result<(), String> {
    let prep = prepare(&m)?;
    if m.foreground {
        crate::log::init(
            &m.log_level,
            m.log_file
                .as_deref()
                .map_or(crate::log::Target::Stderr, crate::log::Target::File),
        );
        return serve(&m, &prep, &mut None);
    }
    // Detach: fork now (no threads yet), the child reports readiness through a pipe.
    let (read_end, write_end) = crate::sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    match crate::sys::fork().map_err(|e| format!("fork: {e}"))? {
        crate::sys::Forked::Child => {
            drop(read_end);
            crate::sys::setsid();
            redirect_stdio();
            crate::log::init(
                &m.log_level,
                m.log_file
                    .as_deref()
                    .map_or(crate::log::Target::Syslog, crate::log::Target::File),
            );
            let mut pipe = Some(std::fs::File::from(write_end));
            let result = serve(&m, &prep, &mut pipe);
            if let Err(e) = &result {
                if let Some(p) = pipe.as_mut() {
                    let _ = writeln!(p, "ERR {e}");
                }
                tracing::error!("{e}");
            }
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
        crate::sys::Forked::Parent => {
            drop(write_end);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            if msg.starts_with("OK") {
                Ok(())
            } else if let Some(e) = msg.lines().find_map(|l| l.strip_prefix("ERR ")) {
                Err(e.to_owned())
            } else {
                Err("the mount process exited before the mount was live (see its log)".into())
            }
        }
    }
}

fn redirect_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsFd;
        let _ = crate::sys::redirect_stdio(null.as_fd());
    }
}

/// Mount and serve until unmounted; `ready` hears "OK" (and is closed) once the mount is live.
fn serve(m: &MountArgs, prep: &Prepared, ready: &mut Option<std::fs::File>) -> Result<(), String> {
    // before the key is loaded and any thread exists: every page from here on is locked
    // (mlockall is not inherited across fork, so it is done here, in the daemon)
    if m.no_mlockall {
        tracing::info!("--no-mlockall: only the cache and the key are locked memory");
    } else {
        crate::harden::lock_all_memory().map_err(|e| e.to_string())?;
        tracing::debug!("all of the daemon's memory is locked (mlockall)");
    }
    let ring = load_ring(&m.conn)?;
    let fingerprints: Vec<String> = ring.iter().map(|k| k.fingerprint().to_owned()).collect();
    let arena = Arena::new(prep.cache_size as usize, prep.shrink).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("ssecfs-io")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let endpoint = m.conn.endpoint.clone().unwrap_or_else(|| "AWS".into());
    let store = rt.block_on(async {
        let store = connect(&m.conn, &prep.bucket, ring).await?;
        preflight(&store, &format_prefix(&prep.prefix), &endpoint, m.force).await?;
        if !m.read_only {
            probe_sse_c_writes(
                &store,
                &format_prefix(&prep.prefix),
                &prep.bucket,
                &endpoint,
            )
            .await?;
        }
        Ok::<_, String>(store)
    })?;
    if let Some(age) = prep.abort_uploads_after {
        // In the background: the mount need not wait for a listing of uploads.
        let store = store.clone();
        let prefix = format_prefix(&prep.prefix);
        rt.spawn(async move {
            let now = std::time::SystemTime::now();
            match crate::s3::abort_stale_uploads(store.as_ref(), &prefix, age, now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(aborted = n, "incomplete multipart uploads cleaned up"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not clean up incomplete multipart uploads")
                }
            }
        });
    }
    let (uid, gid) = crate::sys::ids();
    let mut cfg = FsConfig::new(&prep.prefix, m.uid.unwrap_or(uid), m.gid.unwrap_or(gid));
    cfg.defaults.file_perm = (0o666 & !prep.umask) as u16;
    cfg.defaults.dir_perm = (0o777 & !prep.umask) as u16;
    cfg.attr_ttl = Duration::from_secs(m.attr_ttl);
    cfg.dir_ttl = Duration::from_secs(m.attr_ttl);
    cfg.read_only = m.read_only;
    cfg.allow_plain = m.allow_plain;
    cfg.defaults.special_modes = m.allow_special_modes;
    cfg.upload = UploadConfig {
        part_size: prep.part_size,
        part_concurrency: m.upload_concurrency.max(1),
        ..UploadConfig::default()
    };
    cfg.read_cache = arena.cap() as u64 / 2;
    cfg.max_readahead = (arena.cap() as u64 / 8).clamp(4 << 20, 64 << 20);
    if m.write_back {
        cfg.write_back = Some(crate::fs::WriteBack {
            delay: Duration::from_millis(100),
            max_pending: prep.write_back_max.unwrap_or(arena.cap() as u64 / 2),
            concurrency: 32,
        });
    }
    if let Some((dir, size)) = &prep.spill {
        let spill = crate::cache::spill::Spill::create(dir, *size, &arena)
            .map_err(|e| format!("--spill-dir: {e}"))?;
        tracing::info!(dir = %dir.display(), bytes = size, "sealed spill tier on");
        cfg.spill = Some(spill);
    }
    let fs = Fs::new(cfg, store as Arc<dyn ObjectStore>, arena);

    let mut options = vec![
        fuser::MountOption::FSName(format!("ssecfs:{}", m.source)),
        fuser::MountOption::Subtype("ssecfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if m.read_only {
        options.push(fuser::MountOption::RO);
    }
    for f in &m.kernel_flags {
        options.push(match f.as_str() {
            "nosuid" => fuser::MountOption::NoSuid,
            "nodev" => fuser::MountOption::NoDev,
            "noexec" => fuser::MountOption::NoExec,
            "suid" => fuser::MountOption::Suid,
            "dev" => fuser::MountOption::Dev,
            "exec" => fuser::MountOption::Exec,
            "atime" => fuser::MountOption::Atime,
            _ => fuser::MountOption::NoAtime,
        });
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.n_threads = Some(16);
    config.acl = if m.allow_other {
        fuser::SessionACL::All
    } else if m.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    // the name `ssecfs sync` and `ssecfs status` find the control socket by
    let canonical = std::fs::canonicalize(&m.mountpoint).unwrap_or_else(|_| m.mountpoint.clone());
    let adapter = crate::fuse::FuseAdapter::new(fs.clone(), rt.handle().clone());
    let mut session = fuser::Session::new(adapter, &m.mountpoint, &config)
        .map_err(|e| format!("cannot mount at {}: {e}", m.mountpoint.display()))?;
    tracing::info!(source = %m.source, mountpoint = %m.mountpoint.display(), "mounted");
    crate::fuse::raise_kernel_readahead(&m.mountpoint, crate::fuse::KERNEL_READAHEAD_KB);
    {
        let _rt = rt.enter();
        crate::control::serve(
            fs.clone(),
            crate::control::MountInfo {
                source: m.source.clone(),
                endpoint: endpoint.clone(),
                mountpoint: canonical,
                fingerprints,
                write_back: m.write_back,
                started: std::time::SystemTime::now(),
                owner: uid,
            },
        );
    }
    if let Some(mut pipe) = ready.take() {
        let _ = writeln!(pipe, "OK");
    }
    // SIGTERM, SIGINT, SIGHUP (the terminal of a foreground mount went away), SIGQUIT:
    // upload everything pending, then unmount (which ends the session). Their default
    // action would end the daemon with written data still in memory.
    let mut unmounter = session.unmount_callable();
    let fs_sig = fs.clone();
    let mountpoint = m.mountpoint.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
            SignalKind::quit(),
        ];
        let Ok(mut signals) = kinds.into_iter().map(signal).collect::<Result<Vec<_>, _>>() else {
            return;
        };
        let any = futures::future::select_all(signals.iter_mut().map(|s| Box::pin(s.recv())));
        let _ = any.await;
        tracing::info!("signal received: uploading pending writes, then unmounting");
        let failed = fs_sig.flush_all(crate::fs::FlushAll::Unmount).await;
        if failed > 0 {
            tracing::error!(failed, "files could not be uploaded");
        }
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, mountpoint = %mountpoint.display(), "unmount failed; trying lazy unmount");
            let _ = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(&mountpoint).status();
        }
    });
    let result = session
        .run()
        .map_err(|e| format!("FUSE session ended with an error: {e}"));
    let failed = rt.block_on(fs.flush_all(crate::fs::FlushAll::Unmount));
    rt.shutdown_timeout(Duration::from_secs(5));
    if failed > 0 {
        return Err(format!("{failed} files could not be uploaded before exit"));
    }
    result
}
