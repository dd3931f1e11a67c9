//! End-to-end: mount(8) and /etc/fstab-style mounts through fuse3's helper, failures reported
//! by mount(8), and nothing lost on umount or SIGTERM right after a large write.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// mount(8) runs helpers with a sanitized PATH, so fuse3's helper only finds `ssecfs` in a
/// system directory: point /usr/local/bin/ssecfs at the binary under test (as
/// scripts/install.sh would), unless a real installed binary is there.
fn install_for_mount_helper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let link = Path::new("/usr/local/bin/ssecfs");
        match fs::symlink_metadata(link) {
            Ok(m) if !m.file_type().is_symlink() => {
                eprintln!(
                    "note: using the installed {}, not the binary under test",
                    link.display()
                );
            }
            _ => {
                let _ = fs::remove_file(link);
                std::os::unix::fs::symlink(SSECFS, link).expect("link /usr/local/bin/ssecfs");
            }
        }
    });
}

/// A directory holding `ssecfs` (for mount.fuse3, which runs it from PATH) and a key file.
struct Setup {
    dir: tempfile::TempDir,
    key: Key,
}

impl Setup {
    fn new() -> Setup {
        install_for_mount_helper();
        let dir = tempdir("e2e-mount8-");
        fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(SSECFS, dir.path().join("bin/ssecfs")).unwrap();
        let key = Key::random();
        key.write_file(&dir.path().join("key"));
        Setup { dir, key }
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn options(&self) -> String {
        format!(
            "key_file={},endpoint={},allow_http,_netdev,nosuid,nodev,x-systemd.automount",
            self.dir.path().join("key").display(),
            endpoint()
        )
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p.canonicalize().unwrap()
    }

    fn mount_cmd(&self) -> Command {
        let mut c = Command::new("mount");
        c.env("PATH", self.path_env());
        c
    }
}

fn wait_gone(mp: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ssecfs_pids_for(mp).is_empty() {
        assert!(
            Instant::now() < deadline,
            "daemon for {} did not exit",
            mp.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mount_t_fuse_ssecfs_and_fstab_file() {
    let bucket = TestBucket::new();
    let s = Setup::new();
    // mount -t fuse.ssecfs
    let mp = s.mountpoint("m1");
    let _guard = DaemonMount {
        mountpoint: mp.clone(),
    };
    let out = output_of(
        s.mount_cmd()
            .args(["-t", "fuse.ssecfs", bucket.name()])
            .arg(&mp)
            .args(["-o", &s.options()]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "mount -t fuse.ssecfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_fuse_mount(&mp));
    fs::write(mp.join("hello"), b"via mount(8)").unwrap();
    let out = output_of(Command::new("umount").arg(&mp), Duration::from_secs(60));
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_gone(&mp);
    assert_stored(bucket.name(), "hello", &s.key, b"via mount(8)");

    // the same through an fstab file: mount -T FSTAB MOUNTPOINT
    let mp2 = s.mountpoint("m2");
    let _guard2 = DaemonMount {
        mountpoint: mp2.clone(),
    };
    let fstab = s.dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{}  {}  fuse.ssecfs  {}  0 0\n",
            bucket.name(),
            mp2.display(),
            s.options()
        ),
    )
    .unwrap();
    let out = output_of(
        s.mount_cmd().arg("-T").arg(&fstab).arg(&mp2),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "mount -T failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(mp2.join("hello")).unwrap(), b"via mount(8)");
    let out = output_of(Command::new("umount").arg(&mp2), Duration::from_secs(60));
    assert!(out.status.success());
    wait_gone(&mp2);
}

#[test]
fn mount8_reports_failures_with_the_message() {
    let s = Setup::new();
    let mp = s.mountpoint("m");
    let _guard = DaemonMount {
        mountpoint: mp.clone(),
    };
    let out = output_of(
        s.mount_cmd()
            .args(["-t", "fuse.ssecfs", "no-such-bucket-ssecfs-e2e"])
            .arg(&mp)
            .args(["-o", &s.options()]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "mounting a missing bucket succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "message: {err}");
    assert!(!is_fuse_mount(&mp));
}

fn big_write_then(stop: impl FnOnce(&Path, i32)) {
    let bucket = TestBucket::new();
    let s = Setup::new();
    let mp = s.mountpoint("m");
    let _guard = DaemonMount {
        mountpoint: mp.clone(),
    };
    let out = output_of(
        s.mount_cmd()
            .args(["-t", "fuse.ssecfs", bucket.name()])
            .arg(&mp)
            .args(["-o", &format!("{},write_back", s.options())]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data: Vec<u8> = (0..(64u32 << 20))
        .map(|i| (i.wrapping_mul(31) >> 7) as u8)
        .collect();
    fs::write(mp.join("big"), &data).unwrap();
    for i in 0..50 {
        fs::write(mp.join(format!("small{i}")), format!("small file {i}")).unwrap();
    }
    let pid = *ssecfs_pids_for(&mp).first().expect("daemon running");
    stop(&mp, pid);
    wait_gone(&mp);
    assert!(!is_fuse_mount(&mp));
    assert_stored(bucket.name(), "big", &s.key, &data);
    for i in 0..50 {
        assert_stored(
            bucket.name(),
            &format!("small{i}"),
            &s.key,
            format!("small file {i}").as_bytes(),
        );
    }
}

#[test]
fn umount_right_after_a_large_write_loses_nothing() {
    big_write_then(|mp, _| {
        let out = output_of(Command::new("umount").arg(mp), Duration::from_secs(120));
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn sigterm_right_after_a_large_write_loses_nothing() {
    big_write_then(|_, pid| {
        // SAFETY: sending a signal to a pid we just looked up.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    });
}
