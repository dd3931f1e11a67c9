//! The control socket of a mount, through which `ssecfs sync MOUNTPOINT` and `ssecfs status
//! MOUNTPOINT` reach the daemon serving it.
//!
//! An abstract Unix socket (Linux) named after the canonical mountpoint: no file to create,
//! to leave behind after a crash or to clean up, and the name is found from the mountpoint
//! alone. Abstract sockets carry no permissions, so every connection is checked with
//! SO_PEERCRED: only the user who mounted and root are answered. Nothing it says is secret
//! (key fingerprints, never the key), but `sync` makes the daemon work.
//!
//! The protocol is lines of text. The client sends one command line:
//! - `status` → `name: value` lines, then the connection closes;
//! - `sync` → `pending FILES BYTES` every 200 ms while the daemon stores everything pending,
//!   then `done FAILED` (files that could not be stored).

use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::fs::{Fs, UploadAll};

/// What `status` reports about a mount beyond the live figures.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub source: String,
    pub endpoint: String,
    pub mountpoint: PathBuf,
    /// Fingerprints of the key ring, the sealing key first (never the keys).
    pub fingerprints: Vec<String>,
    pub write_back: bool,
    pub started: SystemTime,
    /// The user who mounted: with root, the only one the socket answers.
    pub owner: u32,
}

/// The socket's abstract name for a mountpoint (canonicalized by the caller).
fn socket_name(mountpoint: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let digest = sha2::Sha256::digest(mountpoint.as_os_str().as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("ssecfs/{hex}").into_bytes()
}

/// Listen on `info.mountpoint`'s socket and serve it on the current tokio runtime until the
/// process ends. A failure to bind (another mount stacked on the same path) is logged only:
/// the mount works without it.
pub fn serve(fs: Arc<Fs>, info: MountInfo) {
    let listener = SocketAddr::from_abstract_name(socket_name(&info.mountpoint))
        .and_then(|addr| UnixListener::bind_addr(&addr))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::UnixListener::from_std);
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, mountpoint = %info.mountpoint.display(), "no control socket: `ssecfs sync` and `ssecfs status` will not reach this mount");
            return;
        }
    };
    let info = Arc::new(info);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (fs, info) = (fs.clone(), info.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &fs, &info).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
    });
}

async fn answer(
    stream: tokio::net::UnixStream,
    fs: &Arc<Fs>,
    info: &MountInfo,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if uid != 0 && uid != info.owner {
        let msg = format!(
            "error only the user who mounted it (uid {}) or root may use this mount's control socket\n",
            info.owner
        );
        return write.write_all(msg.as_bytes()).await;
    }
    let mut line = String::new();
    let mut read = tokio::io::BufReader::new(read).take(64);
    tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    match line.trim() {
        "status" => write.write_all(status(fs, info).as_bytes()).await,
        "sync" => {
            let uploading = fs.clone();
            let mut task = tokio::spawn(async move { uploading.upload_all(UploadAll::Sync).await });
            loop {
                tokio::select! {
                    failed = &mut task => {
                        let failed = failed.unwrap_or(usize::MAX);
                        return write.write_all(format!("done {failed}\n").as_bytes()).await;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        let p = fs.pending();
                        // a client that went away does not stop the sync
                        let _ = write.write_all(format!("pending {} {}\n", p.files + p.attributes + p.renames, p.bytes).as_bytes()).await;
                    }
                }
            }
        }
        other => {
            let msg = format!("error unknown command {other:?}\n");
            write.write_all(msg.as_bytes()).await
        }
    }
}

/// The `status` report: `name: value` lines.
fn status(fs: &Fs, info: &MountInfo) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let p = fs.pending();
    let arena = fs.arena();
    let up = SystemTime::now()
        .duration_since(info.started)
        .unwrap_or_default()
        .as_secs();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k}: {v}\n"));
    line("mountpoint", info.mountpoint.display().to_string());
    line("source", info.source.clone());
    line("endpoint", info.endpoint.clone());
    line("pid", std::process::id().to_string());
    line("up", format!("{up} s"));
    line(
        "mode",
        if info.write_back {
            "write-back (close returns before the upload)".into()
        } else {
            "durable on close".into()
        },
    );
    for (i, fp) in info.fingerprints.iter().enumerate() {
        let role = if i == 0 {
            "seals new writes"
        } else {
            "opens older objects"
        };
        line("key fingerprint", format!("{fp} ({role})"));
    }
    line(
        "cache",
        format!(
            "{} in use of {} (locked memory)",
            mib(arena.in_use() as u64),
            mib(arena.cap() as u64)
        ),
    );
    line(
        "memory locked",
        if crate::harden::all_memory_locked() {
            format!(
                "all of it (mlockall), {} resident",
                crate::arena::proc_status_bytes("VmRSS:").map_or("unknown".into(), mib)
            )
        } else {
            format!(
                "cache and key only (--no-mlockall), {} (VmLck)",
                crate::arena::vm_locked_bytes().map_or("unknown".into(), mib)
            )
        },
    );
    line(
        "pending uploads",
        format!("{} files, {} in memory", p.files, mib(p.bytes)),
    );
    line("pending attribute changes", p.attributes.to_string());
    line("pending renames", p.renames.to_string());
    line("failed uploads", p.failed.to_string());
    for (path, e) in fs.failures() {
        line("failed", format!("{path}: {e}"));
    }
    for e in crate::log::recent_problems() {
        line("recent", e);
    }
    out
}

/// A connection to the daemon serving `mountpoint`, with `command` sent.
pub fn request(mountpoint: &Path, command: &str) -> Result<BufReader<UnixStream>, String> {
    // A user the mount keeps out (no allow_other) cannot resolve the path through it, but
    // may still ask (and be refused by the daemon, which says why).
    let canonical = match std::fs::canonicalize(mountpoint) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            std::path::absolute(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?
        }
        Err(e) => return Err(format!("{}: {e}", mountpoint.display())),
    };
    let addr = SocketAddr::from_abstract_name(socket_name(&canonical))
        .map_err(|e| format!("control socket name: {e}"))?;
    let mut stream = UnixStream::connect_addr(&addr).map_err(|e| {
        format!(
            "no ssecfs mount at {} answers ({e}); is it mounted, by this version of ssecfs?",
            canonical.display()
        )
    })?;
    // A refusal arrives before the command is read (and may close the socket first): read
    // the answer even when sending failed.
    let sent = stream.write_all(format!("{command}\n").as_bytes());
    let mut reader = BufReader::new(stream);
    if let Err(e) = sent {
        let mut answer = String::new();
        let _ = reader.read_line(&mut answer);
        return match answer.trim_end().strip_prefix("error ") {
            Some(refusal) => Err(refusal.to_owned()),
            None => Err(format!("control socket of {}: {e}", canonical.display())),
        };
    }
    Ok(reader)
}

/// One answer line from the daemon; None at the end of the answer.
pub fn next_line(r: &mut BufReader<UnixStream>) -> Result<Option<String>, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(line.trim_end().to_owned())),
        Err(e) => Err(format!("control socket: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_differ_by_mountpoint_and_fit_the_limit() {
        let a = socket_name(Path::new("/mnt/a"));
        let b = socket_name(Path::new("/mnt/b"));
        assert_ne!(a, b);
        assert_eq!(a, socket_name(Path::new("/mnt/a")));
        // sun_path holds 108 bytes, the leading NUL of an abstract name included
        assert!(a.len() < 100, "{}", a.len());
    }
}
