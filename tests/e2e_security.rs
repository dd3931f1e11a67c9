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
    // every page of the daemon is locked (mlockall): what is resident is locked
    let before = proc_status_kb(pid, "VmRSS:");
    assert_eq!(fs::read(m.path("f")).unwrap(), data);
    let after = proc_status_kb(pid, "VmRSS:");
    // the read cache holds (most of) what was read, all of it locked
    assert!(
        after >= before + 24 * 1024,
        "VmRSS {before} kB -> {after} kB after a 48 MiB read"
    );
    assert!(
        after <= before + 130 * 1024,
        "VmRSS {before} kB -> {after} kB: beyond the 128M cap"
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
    // …and so is everything else the daemon maps: heap, stacks, the HTTP stack's buffers
    // (smaps: a header line `ADDR PERMS OFFSET DEV INODE [NAME]` opens each mapping, its
    // VmFlags line closes it; the kernel's own vvar/vdso/vsyscall pages cannot be locked)
    let mut name = "";
    let mut unlocked = Vec::new();
    for l in smaps.lines() {
        if l.split_whitespace().next().is_some_and(|a| {
            a.contains('-') && a.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        }) {
            name = l.split_whitespace().nth(5).unwrap_or("[anonymous]");
        } else if l.starts_with("VmFlags:")
            && !l.contains(" lo")
            && !matches!(name, "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[vsyscall]")
        {
            unlocked.push(name);
        }
    }
    assert!(
        unlocked.is_empty(),
        "mappings of the daemon that are not locked: {unlocked:?}"
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

/// Copies of `needle` in `hay`.
fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// The memory a core dump holds: its PT_LOAD segments. Left out: the notes, which hold each
/// thread's registers; an idle thread's vector registers keep what its last `memcpy` moved
/// (seen here: the key's MD5, a request header's value, in three threads' XSAVE areas). They
/// are no memory any allocator could wipe, and reach no swap or file but a core dump, which
/// the daemon forbids (non-dumpable) to all but root.
fn memory_of(core: &[u8]) -> Vec<&[u8]> {
    let u16_at = |o: usize| u16::from_le_bytes(core[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(core[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&core[..5], b"\x7fELF\x02", "not a 64-bit ELF core");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32::from_le_bytes(core[ph..ph + 4].try_into().unwrap()) == 1)
        .map(|ph| {
            let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
            &core[off.min(core.len())..(off + size).min(core.len())]
        })
        .collect()
}

/// Dump the daemon `pid` (gcore, as root: it bypasses the non-dumpable flag) and count the
/// copies of each form of the key and of `marker` in it. gcore leaves out don't-dump mappings
/// (the key's page, the cache): what it finds lives elsewhere, in the heap and stacks.
fn core_counts(pid: u32, k: &Key, marker: &str) -> Vec<(&'static str, usize)> {
    // tmpfs: the dump holds whatever plaintext the daemon has, and is deleted at once
    let dir = std::path::Path::new("/dev/shm").join(format!("ssecfs-core-{}", rand_u64()));
    fs::create_dir(&dir).unwrap();
    let prefix = dir.join("core");
    let out = sh_output(&format!("gcore -o '{}' {pid}", prefix.display()));
    let core = fs::read(dir.join(format!("core.{pid}")));
    if std::env::var_os("SSECFS_KEEP_CORE").is_none() {
        let _ = fs::remove_dir_all(&dir);
    } else {
        eprintln!("core kept in {} (SSECFS_KEEP_CORE)", dir.display());
    }
    let core = core.unwrap_or_else(|e| {
        panic!(
            "gcore wrote no core ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(core.len() > 1 << 20, "a core of {} bytes", core.len());
    let memory = memory_of(&core);
    let in_memory = |needle: &[u8]| memory.iter().map(|m| count(m, needle)).sum::<usize>();
    let counts = vec![
        ("raw key", in_memory(k.bytes())),
        ("base64 key", in_memory(k.base64().as_bytes())),
        ("key MD5", in_memory(k.md5_base64().as_bytes())),
        ("plaintext marker", in_memory(marker.as_bytes())),
    ];
    eprintln!(
        "core of {} MiB: {}",
        core.len() >> 20,
        counts
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    counts
}

/// A core dump of a daemon after a workload that makes every kind of keyed request and moves
/// plaintext both ways, once it has been idle a while: no copy of the key in any form, and no
/// plaintext, outside the locked don't-dump pages. The wiping allocator clears what the SDK,
/// the signer and hyper free, and idle connections (whose buffers keep their last request
/// head and answer) are closed after `IDLE_CONNECTION`. What remains is in fuser's request
/// buffers, which ssecfs cannot reach: each worker thread's last write(2) until its next
/// request overwrites it (locked, so never in swap; SECURITY.md says so).
#[test]
fn a_core_dump_of_an_idle_daemon_holds_no_key_and_no_plaintext() {
    if !sh_output("command -v gcore").status.success() {
        panic!("gcore (gdb) is missing: scripts/setup.sh installs it");
    }
    // longer than the idle-connection timeout, and hyper's reaper runs at that interval
    let idle = std::time::Duration::from_secs(12);
    let bucket = TestBucket::new();
    let mut m = Mount::new(&bucket, &[]);
    let marker = format!("SSECFS-CORE-{:016x}-{:08x}", rand_u64(), std::process::id());
    let small = format!("small {marker} end").into_bytes();
    let mut big = Vec::with_capacity(12 << 20);
    while big.len() < 12 << 20 {
        big.extend_from_slice(marker.as_bytes());
        big.extend_from_slice(&[b'.'; 4000]);
    }
    keyed_workload(&m, &small, &big);
    // the last write(2) carried no marker: fuser's request buffer holds only "E" now…
    fs::write(m.path("last"), b"no secret here").unwrap();
    std::thread::sleep(idle);
    let writer = core_counts(m.pid().expect("daemon pid"), m.key(), &marker);

    // …and a fresh daemon that only reads: GETs, not the cache the writes left
    m.remount();
    assert_eq!(fs::read(m.path("b")).unwrap(), small);
    assert_eq!(fs::read(m.path("big")).unwrap()[4000..], big[4000..]);
    drop(big);
    std::thread::sleep(idle);
    let reader = core_counts(m.pid().expect("daemon pid"), m.key(), &marker);
    // fuser's 16 worker threads each keep the last request they read in their own buffer:
    // at most one write(2) of max_write (1 MiB) each, 4036-byte marker spacing
    let in_fuser_buffers = 16 * ((1 << 20) / 4036 + 1);
    for (who, counts) in [("writing daemon", writer), ("reading daemon", reader)] {
        for (what, n) in counts {
            let allowed = match (who, what) {
                ("writing daemon", "plaintext marker") => in_fuser_buffers,
                _ => 0,
            };
            assert!(
                n <= allowed,
                "{who}: {n} copies of the {what} in its core dump, outside locked don't-dump \
                 pages (at most {allowed})"
            );
        }
    }
}

/// Without CAP_IPC_LOCK and with a finite RLIMIT_MEMLOCK, a mount cannot lock all of its
/// memory: it is refused before anything is mounted, with a message that says what to set and
/// how to opt out. `--no-mlockall` mounts with only the cache and the key locked, and
/// `ssecfs status` says which it is.
#[test]
fn a_mount_that_cannot_lock_all_its_memory_says_what_to_set() {
    let bucket = TestBucket::new();
    let key = Key::random();
    let dir = tempdir("lock-all");
    let key_file = dir.path().join("key");
    key.write_file(&key_file);
    let mnt = tempdir("lock-all-mnt");
    // (lowering a limit needs no privilege; setpriv drops CAP_IPC_LOCK for the child)
    let out = output_of(
        std::process::Command::new("prlimit")
            .arg("--memlock=8388608:8388608")
            .args(["setpriv", "--bounding-set", "-ipc_lock", SSECFS, "mount"])
            .args(["--endpoint", &endpoint(), "--allow-http", "--key-file"])
            .arg(&key_file)
            .arg(bucket.name())
            .arg(mnt.path()),
        std::time::Duration::from_secs(60),
    );
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted without locking: {msg}");
    assert!(!is_fuse_mount(mnt.path()));
    for needle in [
        "RLIMIT_MEMLOCK",
        "LimitMEMLOCK=infinity",
        "ulimit -l",
        "--no-mlockall",
    ] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }

    let m = Mount::with_key(&bucket, &key, &["--no-mlockall"]);
    fs::write(m.path("f"), b"x").unwrap();
    let out = output_of(
        std::process::Command::new(SSECFS)
            .arg("status")
            .arg(m.root()),
        std::time::Duration::from_secs(30),
    );
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("memory locked: cache and key only (--no-mlockall)"),
        "{status}"
    );
}
