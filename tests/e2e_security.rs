//! End-to-end: plaintext never reaches a local disk, the cache is locked memory, and the key
//! never appears in logs, argv or the environment of the daemon.

mod common;

use std::fs;

use common::*;

#[test]
fn plaintext_written_through_the_mount_never_reaches_a_local_disk() {
    let bucket = TestBucket::new();
    let mut m = Mount::with_log_filter(&bucket, "trace", &["--log-level", "trace"]);
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

    let hits = local_files_containing(marker.as_bytes(), &[]);
    assert!(
        hits.is_empty(),
        "plaintext marker found on local disk in: {hits:?}"
    );
    // …and the server stores it only encrypted: readable with the key alone.
    assert_stored(bucket.name(), "small.txt", m.key(), &small);
    assert!(get_without_key(bucket.name(), "small.txt").is_err());
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
    let mut m = Mount::with_log_filter(&bucket, "trace", &["--log-level", "trace"]);
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
