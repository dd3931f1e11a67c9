//! `ssecfs mount`: check everything before mounting, detach, then serve until unmounted.

use super::*;

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
    check_mountpoint(m)?;
    let (cache_size, shrink) = cache_size(m)?;
    let part_size = part_size(m, cache_size)?;
    let umask = umask(m)?;
    let write_back_max = write_back_max(m, cache_size)?;
    let spill = spill(m, part_size)?;
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

/// The mountpoint is a directory, and empty unless `--nonempty`: mounting over files would
/// hide them while mounted.
fn check_mountpoint(m: &MountArgs) -> Result<(), String> {
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
    Ok(())
}

/// `--cache-size` in bytes (at least 16M), and whether the arena may shrink it to the
/// locked-memory limit (`auto`: 256M, or what the limit allows).
fn cache_size(m: &MountArgs) -> Result<(u64, bool), String> {
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
    Ok((cache_size, shrink))
}

/// `--part-size` in bytes: within S3's part limits, and small enough that four parts fit in
/// the cache.
fn part_size(m: &MountArgs, cache_size: u64) -> Result<u64, String> {
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
    Ok(part_size)
}

/// `--umask`, octal; 022 when not given.
fn umask(m: &MountArgs) -> Result<u32, String> {
    match &m.umask {
        Some(u) => {
            u32::from_str_radix(u, 8).map_err(|_| format!("--umask {u}: expected octal like 022"))
        }
        None => Ok(0o022),
    }
}

/// `--write-back-max` in bytes: pending writes live in the cache, so no more than it holds.
fn write_back_max(m: &MountArgs, cache_size: u64) -> Result<Option<u64>, String> {
    let Some(v) = &m.write_back_max else {
        return Ok(None);
    };
    let n = cli::parse_size(v).map_err(|e| format!("--write-back-max: {e}"))?;
    if n > cache_size {
        return Err(format!(
            "--write-back-max {v} is larger than --cache-size {}",
            m.cache_size
        ));
    }
    Ok(Some(n))
}

/// `--spill-dir` (made absolute) and `--spill-size` in bytes: the tier must hold two sealed
/// parts, and the directory is checked now, so that mount(8) prints what is wrong with it.
fn spill(m: &MountArgs, part_size: u64) -> Result<Option<(PathBuf, u64)>, String> {
    match (&m.spill_dir, &m.spill_size) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err("--spill-size needs --spill-dir".into()),
        (Some(dir), size) => {
            let size = cli::parse_size(size.as_deref().unwrap_or("1G"))
                .map_err(|e| format!("--spill-size: {e}"))?;
            if size < 2 * crate::cache::spill::slot_len(part_size) {
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
            Ok(Some((dir, size)))
        }
    }
}

pub(super) fn mount(m: MountArgs) -> Result<(), String> {
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
    lock_memory(m)?;
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
    let store = rt.block_on(connect_checked(m, prep, ring, &endpoint))?;
    if let Some(age) = prep.abort_uploads_after {
        spawn_stale_upload_cleanup(&rt, store.clone(), format_prefix(&prep.prefix), age);
    }
    let (uid, gid) = crate::sys::ids();
    let cfg = fs_config(m, prep, &arena, (uid, gid))?;
    let fs = Fs::new(cfg, store as Arc<dyn ObjectStore>, arena);

    let config = fuse_config(m);
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
    let unmounter = session.unmount_callable();
    spawn_signal_handler(&rt, unmounter, fs.clone(), m.mountpoint.clone());
    let result = session
        .run()
        .map_err(|e| format!("FUSE session ended with an error: {e}"));
    let failed = rt.block_on(fs.upload_all(crate::fs::UploadAll::Unmount));
    rt.shutdown_timeout(Duration::from_secs(5));
    if failed > 0 {
        return Err(format!("{failed} files could not be uploaded before exit"));
    }
    result
}

/// Lock every page of the daemon before the key is loaded and any thread exists (mlockall
/// is not inherited across fork, so it is done here, in the daemon), unless `--no-mlockall`.
fn lock_memory(m: &MountArgs) -> Result<(), String> {
    if m.no_mlockall {
        tracing::info!("--no-mlockall: only the cache and the key are locked memory");
    } else {
        crate::harden::lock_all_memory().map_err(|e| e.to_string())?;
        tracing::debug!("all of the daemon's memory is locked (mlockall)");
    }
    Ok(())
}

/// Connect, and refuse a bucket the mount could not use: preflight, and for a writable
/// mount, a probe that SSE-C writes are honoured.
async fn connect_checked(
    m: &MountArgs,
    prep: &Prepared,
    ring: KeyRing,
    endpoint: &str,
) -> Result<Arc<AwsStore>, String> {
    let store = connect(&m.conn, &prep.bucket, ring).await?;
    preflight(&store, &format_prefix(&prep.prefix), endpoint, m.force).await?;
    if !m.read_only {
        probe_sse_c_writes(&store, &format_prefix(&prep.prefix), &prep.bucket, endpoint).await?;
    }
    Ok(store)
}

/// `--abort-uploads-after`: abort stale multipart uploads in the background, so the mount
/// need not wait for a listing of uploads.
fn spawn_stale_upload_cleanup(
    rt: &tokio::runtime::Runtime,
    store: Arc<AwsStore>,
    prefix: String,
    age: Duration,
) {
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

/// The filesystem's settings from the mount options; the read cache, readahead and
/// write-back bounds follow the arena's size. Opens the spill tier, if asked for.
fn fs_config(
    m: &MountArgs,
    prep: &Prepared,
    arena: &Arena,
    (uid, gid): (u32, u32),
) -> Result<FsConfig, String> {
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
        let spill = crate::cache::spill::Spill::create(dir, *size, arena)
            .map_err(|e| format!("--spill-dir: {e}"))?;
        tracing::info!(dir = %dir.display(), bytes = size, "sealed spill tier on");
        cfg.spill = Some(spill);
    }
    Ok(cfg)
}

/// The kernel side of the mount: its options (name, read-only, the `nosuid`-style flags
/// passed through), FUSE worker threads, and who may enter it.
fn fuse_config(m: &MountArgs) -> fuser::Config {
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
    config
}

/// SIGTERM, SIGINT, SIGHUP (the terminal of a foreground mount went away), SIGQUIT:
/// upload everything pending, then unmount (which ends the session). Their default
/// action would end the daemon with written data still in memory.
fn spawn_signal_handler(
    rt: &tokio::runtime::Runtime,
    mut unmounter: fuser::SessionUnmounter,
    fs_sig: Arc<Fs>,
    mountpoint: PathBuf,
) {
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
        let failed = fs_sig.upload_all(crate::fs::UploadAll::Unmount).await;
        if failed > 0 {
            tracing::error!(failed, "files could not be uploaded");
        }
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, mountpoint = %mountpoint.display(), "unmount failed; trying lazy unmount");
            let _ = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(&mountpoint).status();
        }
    });
}
