//! End-to-end: `ssecfs sync MOUNTPOINT` and `ssecfs status MOUNTPOINT` against a live mount
//! on Garage — what a backup script runs before it reports success, and what a user reads
//! when something is stuck.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::faultproxy::{FaultProxy, Faults};
use common::*;

fn ssecfs(args: &[&str]) -> std::process::Output {
    output_of(Command::new(SSECFS).args(args), Duration::from_secs(300))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Write-back mode: files are closed before they are uploaded. `ssecfs sync` returns 0 only
/// once every one of them is on the server (checked with the key, the mount still up), and
/// `status` then shows nothing pending and the key's fingerprint, never the key.
#[test]
fn sync_returns_when_everything_is_stored_and_status_reports_it() {
    let b = TestBucket::new();
    let m = Mount::new(&b, &["--write-back"]);
    let big = random_bytes(12 << 20);
    fs::write(m.path("big"), &big).unwrap();
    for i in 0..20 {
        fs::write(m.path(&format!("small-{i}")), format!("file {i}")).unwrap();
    }
    let out = ssecfs(&["sync", m.root().to_str().unwrap()]);
    assert!(out.status.success(), "sync failed: {}", text(&out));
    assert_stored(b.name(), "big", m.key(), &big);
    for i in 0..20 {
        assert_stored(
            b.name(),
            &format!("small-{i}"),
            m.key(),
            format!("file {i}").as_bytes(),
        );
    }
    let out = ssecfs(&["status", m.root().to_str().unwrap()]);
    let status = text(&out);
    assert!(out.status.success(), "status failed: {status}");
    for want in [
        "pending uploads: 0 files",
        "failed uploads: 0",
        "mode: write-back",
        "key fingerprint: ",
        "memory locked: all of it (mlockall)",
    ] {
        assert!(status.contains(want), "status lacks {want:?}:\n{status}");
    }
    assert!(
        !status.contains(&m.key().base64()) && !status.contains(&m.key().md5_base64()),
        "status shows the key:\n{status}"
    );
    // not a mount of ssecfs: a clear error, exit 1
    let dir = tempdir("not-a-mount");
    let out = ssecfs(&["sync", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no ssecfs mount at"), "{}", text(&out));
}

/// The server refuses every PUT: `sync` exits 1 and says how many files it could not store,
/// `status` names them; the data stays in memory and the next `sync`, once the server takes
/// writes again, stores it.
#[test]
fn a_failed_sync_names_what_it_could_not_store_and_the_next_one_stores_it() {
    let b = TestBucket::new();
    let key = Key::random();
    let proxy = FaultProxy::start(&endpoint(), 5, Faults::default());
    let m = Mount::through(b.name(), &key, &proxy.endpoint(), &["--write-back"]);
    proxy.set(Faults {
        error_5xx: 1.0,
        only_methods: vec!["PUT"],
        ..Faults::default()
    });
    fs::write(m.path("refused"), b"kept in memory").unwrap();
    let out = ssecfs(&["sync", m.root().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("1 files could not be stored"),
        "{}",
        text(&out)
    );
    let status = text(&ssecfs(&["status", m.root().to_str().unwrap()]));
    assert!(status.contains("failed: refused: "), "{status}");
    assert!(status.contains("recent: "), "{status}");

    proxy.set(Faults::default());
    let out = ssecfs(&["sync", m.root().to_str().unwrap()]);
    assert!(out.status.success(), "second sync: {}", text(&out));
    assert_stored(b.name(), "refused", &key, b"kept in memory");
    let status = text(&ssecfs(&["status", m.root().to_str().unwrap()]));
    assert!(status.contains("failed uploads: 0"), "{status}");
}

/// The control socket answers only the user who mounted and root: another local user gets
/// a clear refusal and cannot make the daemon work.
#[test]
fn the_control_socket_refuses_other_users() {
    let b = TestBucket::new();
    let m = Mount::new(&b, &[]);
    // a copy of the binary that user `nobody` may run (the build tree may be private)
    let dir = tempdir("control-bin");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("ssecfs");
    copy_program(SSECFS, &bin);
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let out = output_of(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["status", m.root().to_str().unwrap()]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("only the user who mounted it"),
        "{}",
        text(&out)
    );
}
