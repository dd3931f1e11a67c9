//! End-to-end: plaintext never reaches a local disk, the cache is locked memory, and the key
//! never appears in logs, argv or the environment of the daemon.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use common::*;

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
            // never descend into a FUSE mount (ours or another test's): we scan disks
            if !is_fuse_mount(&p) {
                find_in_tree(&p, needle, skip, hits);
            }
        } else if ft.is_file() && file_contains(&p, needle) {
            hits.push(p);
        }
    }
}

fn file_contains(p: &Path, needle: &[u8]) -> bool {
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

#[test]
fn plaintext_written_through_the_mount_never_reaches_a_local_disk() {
    let bucket = TestBucket::new();
    std::env::set_var("SSECFS_LOG", "trace");
    let mut m = Mount::new(&bucket, &["--log-level", "trace"]);
    // A marker that exists nowhere else: built at run time, never written anywhere but the mount.
    let marker = format!(
        "SSECFS-MARKER-{:016x}-{:08x}",
        rand_u64(),
        std::process::id()
    );
    let small = format!("small file {marker} end").into_bytes();
    let mut big = Vec::with_capacity(20 << 20);
    while big.len() < 20 << 20 {
        big.extend_from_slice(marker.as_bytes());
        big.extend_from_slice(&[b'.'; 1000]);
    }
    fs::write(m.path("small.txt"), &small).unwrap();
    fs::write(m.path("big.bin"), &big).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::copy(m.path("small.txt"), m.path("d/copy.txt")).unwrap();
    assert_eq!(fs::read(m.path("big.bin")).unwrap(), big);
    m.remount();
    assert_eq!(fs::read(m.path("d/copy.txt")).unwrap(), small);
    drop(big);

    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let xdg_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"));
    let roots = [
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
        PathBuf::from("/dev/shm"),
        std::env::current_dir().unwrap(),
        xdg_cache.clone(),
        home.clone(),
        tmp_base(),
    ];
    // Build trees and toolchains are not written by the daemon and are large; skip them.
    let mut skip = vec![
        home.join(".cargo"),
        home.join(".rustup"),
        xdg_cache.join("ssecfs-target"),
    ];
    // other build trees next to ours (worktrees, CI runs): ssecfs-target-*
    if let Ok(rd) = std::fs::read_dir(&xdg_cache) {
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
        find_in_tree(r, marker.as_bytes(), &skip, &mut hits);
    }
    hits.sort();
    hits.dedup();
    assert!(
        hits.is_empty(),
        "plaintext marker found on local disk in: {hits:?}"
    );
    // …and the server stores it only encrypted: readable with the key alone.
    assert_stored(bucket.name(), "small.txt", m.key(), &small);
    assert!(get_without_key(bucket.name(), "small.txt").is_err());
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn cache_in_use_is_locked_memory_and_process_is_not_dumpable() {
    let bucket = TestBucket::new();
    let mut m = Mount::new(&bucket, &["--cache-size", "128M"]);
    let data: Vec<u8> = (0..(48u32 << 20)).map(|i| (i % 253) as u8).collect();
    fs::write(m.path("f"), &data).unwrap();
    m.remount();
    let pid = m.pid().expect("daemon pid");
    let before = proc_status_kb(pid, "VmLck:");
    assert_eq!(fs::read(m.path("f")).unwrap(), data);
    let after = proc_status_kb(pid, "VmLck:");
    // the read cache holds (most of) what was read, all of it locked
    assert!(
        after >= before + 24 * 1024,
        "VmLck {before} kB -> {after} kB after a 48 MiB read"
    );
    assert!(
        after <= 130 * 1024 + 1024,
        "VmLck {after} kB beyond the 128M cap"
    );
    // The arena is mlocked (`lo`) and MADV_DONTDUMP (`dd`): visible in smaps.
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let locked_dd = smaps
        .split("\n")
        .filter(|l| l.starts_with("VmFlags:") && l.contains(" lo") && l.contains(" dd"))
        .count();
    assert!(
        locked_dd > 0,
        "no mapping is both locked (lo) and don't-dump (dd)"
    );
}

#[test]
fn key_never_appears_in_logs_argv_or_environment() {
    let bucket = TestBucket::new();
    std::env::set_var("SSECFS_LOG", "trace");
    let mut m = Mount::new(&bucket, &["--log-level", "trace"]);
    fs::write(m.path("a"), b"hello").unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    let _ = fs::read(m.path("b")).unwrap();
    let pid = m.pid().expect("daemon pid");
    let b64 = m.key().base64();
    let md5 = m.key().md5_base64();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    for (what, hay) in [("argv", &cmdline), ("environment", &environ)] {
        assert!(
            !hay.windows(b64.len()).any(|w| w == b64.as_bytes()),
            "key found in the daemon's {what}"
        );
    }
    m.unmount();
    let log = m.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log was written at trace level"
    );
    if let Some(i) = log.find(&b64) {
        let from = log[..i].rfind('\n').unwrap_or(0);
        panic!("the key is in the log: {}", &log[from..i]);
    }
    assert!(!log.contains(&md5), "the key MD5 is in the log");
}
