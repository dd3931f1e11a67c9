//! Concurrency stress through one mount: several threads run a seeded mix of writes, reads,
//! renames (also across directories), listings, unlinks and mkdir/rmdir in overlapping
//! directories. Nothing may deadlock (the test has a deadline), the daemon may not panic or
//! die, and no file may ever be corrupt.
//!
//! Every file is self-describing: a header line names its writer, sequence number, length and
//! the SHA-256 of the body, so any file read at any time can be checked to be one version
//! written whole. Shared names are only ever installed by rename of a closed private file
//! (concurrent in-place writers may legitimately interleave, on any filesystem); each thread
//! also overwrites its own files in place and must read back exactly what it wrote.
//!
//! SSECFS_STRESS_SEED, SSECFS_STRESS_THREADS and SSECFS_STRESS_OPS (per thread) reproduce or
//! scale a run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const DIRS: usize = 4;
const SHARED: usize = 6;
const OWN: usize = 2;
const DEADLINE: Duration = Duration::from_secs(420);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A whole version: header + body; the body is derived from (seed, writer, seq).
fn version(seed: u64, writer: usize, seq: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((writer as u64) << 48) ^ seq);
    let body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    let mut out = format!(
        "SSECFS-STRESS writer={writer:02} seq={seq:06} len={len} sha256={}\n",
        sha256_hex(&body)
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// `Ok((writer, seq))` when `data` is one version written whole.
fn check_version(data: &[u8]) -> Result<(usize, u64), String> {
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("no header line in {} bytes", data.len()))?;
    let header = std::str::from_utf8(&data[..nl]).map_err(|_| "header is not UTF-8")?;
    let fields: BTreeMap<&str, &str> = header
        .strip_prefix("SSECFS-STRESS ")
        .ok_or_else(|| format!("bad header {header:?}"))?
        .split(' ')
        .filter_map(|f| f.split_once('='))
        .collect();
    let get = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| format!("header {header:?} lacks {k}"))
    };
    let body = &data[nl + 1..];
    let len: usize = get("len")?.parse().map_err(|_| "bad len")?;
    if body.len() != len {
        return Err(format!("{header}: body is {} bytes", body.len()));
    }
    if sha256_hex(body) != get("sha256")? {
        return Err(format!("{header}: body checksum mismatch"));
    }
    Ok((
        get("writer")?.parse().map_err(|_| "bad writer")?,
        get("seq")?.parse().map_err(|_| "bad seq")?,
    ))
}

#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    writes: AtomicU64,
    reads_checked: AtomicU64,
    renames: AtomicU64,
    listings: AtomicU64,
    unlinks: AtomicU64,
    dirs: AtomicU64,
    /// ENOENT from a race with another thread's rename/unlink (expected).
    raced: AtomicU64,
    /// ESTALE: an object replaced while a reader had it open (documented).
    stale: AtomicU64,
}

/// Tolerate the errors another thread's concurrent rename/unlink explains; fail on others.
fn tolerated(e: &std::io::Error, what: &str, c: &Counts) {
    match e.raw_os_error() {
        Some(libc::ENOENT) => c.raced.fetch_add(1, Ordering::Relaxed),
        Some(libc::ESTALE) => c.stale.fetch_add(1, Ordering::Relaxed),
        _ => panic!("{what}: unexpected error {e}"),
    };
}

fn len_for(rng: &mut impl Rng) -> usize {
    match rng.gen_range(0..20) {
        0 => rng.gen_range(256 << 10..1536 << 10),
        1..=3 => 0,
        _ => rng.gen_range(1..48 << 10),
    }
}

/// One thread's workload; returns its own files (path → last content written).
fn worker(root: &Path, seed: u64, t: usize, ops: usize, c: &Counts) -> BTreeMap<String, Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(t as u64 * 7919));
    let mut own: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut seq = 0u64;
    for _ in 0..ops {
        let d = rng.gen_range(0..DIRS);
        let k = rng.gen_range(0..SHARED);
        let shared = root.join(format!("s{d}/f{k}"));
        match rng.gen_range(0..100) {
            // publish a new version of a shared name: private file, then rename over
            0..=29 => {
                seq += 1;
                let data = version(seed, t, seq, len_for(&mut rng));
                let tmp = root.join(format!("s{d}/.tmp-{t}-{seq}"));
                fs::write(&tmp, &data).unwrap_or_else(|e| panic!("write {tmp:?}: {e}"));
                fs::rename(&tmp, &shared)
                    .unwrap_or_else(|e| panic!("rename {tmp:?} -> {shared:?}: {e}"));
                c.writes.fetch_add(1, Ordering::Relaxed);
            }
            // read a shared name: absent, or one whole version
            30..=54 => match fs::read(&shared) {
                Ok(data) => {
                    if let Err(e) = check_version(&data) {
                        panic!("CORRUPT read of {shared:?}: {e}");
                    }
                    c.reads_checked.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tolerated(&e, &format!("read {shared:?}"), c),
            },
            // list a directory and stat what it shows
            55..=66 => {
                let dir = root.join(format!("s{d}"));
                let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"));
                for ent in rd {
                    let ent = ent.unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"));
                    let name = ent.file_name().to_string_lossy().into_owned();
                    assert!(
                        name.starts_with('f')
                            || name.starts_with(".tmp-")
                            || name.starts_with("own-")
                            || name.starts_with("sub-"),
                        "unexpected name {name:?} in {dir:?}"
                    );
                    if let Err(e) = fs::symlink_metadata(ent.path()) {
                        tolerated(&e, &format!("stat {:?}", ent.path()), c);
                    }
                }
                c.listings.fetch_add(1, Ordering::Relaxed);
            }
            // unlink a shared name
            67..=72 => match fs::remove_file(&shared) {
                Ok(()) => {
                    c.unlinks.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tolerated(&e, &format!("unlink {shared:?}"), c),
            },
            // rename a shared name onto another (maybe in another directory)
            73..=80 => {
                let to = root.join(format!(
                    "s{}/f{}",
                    rng.gen_range(0..DIRS),
                    rng.gen_range(0..SHARED)
                ));
                match fs::rename(&shared, &to) {
                    Ok(()) => {
                        c.renames.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tolerated(&e, &format!("rename {shared:?} -> {to:?}"), c),
                }
            }
            // overwrite one of our own files in place; read-after-write must be exact
            81..=92 => {
                seq += 1;
                let rel = format!("s{d}/own-{t}-{}", rng.gen_range(0..OWN));
                let data = version(seed, t, seq, len_for(&mut rng));
                let p = root.join(&rel);
                fs::write(&p, &data).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
                let back = fs::read(&p).unwrap_or_else(|e| panic!("read back {p:?}: {e}"));
                assert!(
                    back == data,
                    "read-after-write of {rel}: got {} bytes ({:?}), wrote {}",
                    back.len(),
                    check_version(&back),
                    data.len()
                );
                own.insert(rel, data);
                c.writes.fetch_add(1, Ordering::Relaxed);
                c.reads_checked.fetch_add(1, Ordering::Relaxed);
            }
            // a private subdirectory: mkdir, a file in it, list it, remove both
            _ => {
                let sub = root.join(format!("s{d}/sub-{t}"));
                fs::create_dir(&sub).unwrap_or_else(|e| panic!("mkdir {sub:?}: {e}"));
                seq += 1;
                let data = version(seed, t, seq, rng.gen_range(0..4096));
                fs::write(sub.join("x"), &data).unwrap();
                let names: Vec<_> = fs::read_dir(&sub)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert_eq!(
                    names,
                    vec![std::ffi::OsString::from("x")],
                    "listing of {sub:?}"
                );
                assert_eq!(fs::read(sub.join("x")).unwrap(), data);
                fs::remove_file(sub.join("x")).unwrap();
                fs::remove_dir(&sub).unwrap_or_else(|e| panic!("rmdir {sub:?}: {e}"));
                c.dirs.fetch_add(1, Ordering::Relaxed);
            }
        }
        c.ops.fetch_add(1, Ordering::Relaxed);
    }
    own
}

/// Check every file under the mount; returns how many were verified.
fn verify_tree(
    root: &Path,
    own: &BTreeMap<String, Vec<u8>>,
    bucket: &str,
    key: &Key,
    server: bool,
) -> usize {
    let mut n = 0;
    for d in 0..DIRS {
        let dir = root.join(format!("s{d}"));
        for ent in fs::read_dir(&dir).unwrap() {
            let ent = ent.unwrap();
            let name = ent.file_name().to_string_lossy().into_owned();
            let rel = format!("s{d}/{name}");
            assert!(
                !name.starts_with(".tmp-") && !name.starts_with("sub-"),
                "leftover {rel} (every private file was renamed or removed)"
            );
            let data = fs::read(ent.path()).unwrap_or_else(|e| panic!("read {rel}: {e}"));
            if let Err(e) = check_version(&data) {
                panic!("CORRUPT {rel}: {e}");
            }
            if name.starts_with("own-") {
                assert!(
                    own.get(&rel) == Some(&data),
                    "{rel} is not its last version"
                );
            }
            if server {
                assert_stored(bucket, &rel, key, &data);
            }
            n += 1;
        }
    }
    for rel in own.keys() {
        assert!(root.join(rel).exists(), "{rel} was lost");
    }
    n
}

#[test]
fn concurrent_mixed_operations_never_corrupt_or_deadlock() {
    let seed: u64 = env_or("SSECFS_STRESS_SEED", 0x5751_2e55);
    let threads: usize = env_or("SSECFS_STRESS_THREADS", 8);
    let ops: usize = env_or("SSECFS_STRESS_OPS", 250);
    let bucket = TestBucket::new();
    let mut m = Mount::new(&bucket, &[]);
    for d in 0..DIRS {
        fs::create_dir(m.path(&format!("s{d}"))).unwrap();
    }
    let counts = Arc::new(Counts::default());
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    for t in 0..threads {
        let root = m.root().to_owned();
        let c = counts.clone();
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("stress-{t}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker(&root, seed, t, ops, &c)
                }));
                let _ = tx.send((t, r));
            })
            .unwrap();
    }
    drop(tx);
    let mut own = BTreeMap::new();
    for _ in 0..threads {
        let left = DEADLINE.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok((_, Ok(files))) => own.extend(files),
            Ok((t, Err(p))) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("thread {t} failed (SSECFS_STRESS_SEED={seed}): {msg}");
            }
            Err(_) => panic!(
                "DEADLOCK? not all threads finished within {DEADLINE:?} ({} of {} ops done; \
                 SSECFS_STRESS_SEED={seed})",
                counts.ops.load(Ordering::Relaxed),
                threads * ops
            ),
        }
    }
    let elapsed = t0.elapsed();
    assert!(m.is_mounted(), "the mount went away");
    let log = m.log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");

    let live = verify_tree(m.root(), &own, bucket.name(), m.key(), false);
    m.remount();
    let after = verify_tree(m.root(), &own, bucket.name(), m.key(), true);
    assert_eq!(live, after, "files before and after the remount");
    m.unmount();
    assert!(!m.log().contains("panicked"), "the daemon panicked");
    let c = &*counts;
    eprintln!(
        "stress: {threads} threads x {ops} ops in {elapsed:?}: {} ops ({} writes, {} checked \
         reads, {} renames, {} listings, {} unlinks, {} mkdir/rmdir), raced ENOENT {}, ESTALE \
         {}; {after} files verified whole after remount and on the server (seed {seed})",
        c.ops.load(Ordering::Relaxed),
        c.writes.load(Ordering::Relaxed),
        c.reads_checked.load(Ordering::Relaxed),
        c.renames.load(Ordering::Relaxed),
        c.listings.load(Ordering::Relaxed),
        c.unlinks.load(Ordering::Relaxed),
        c.dirs.load(Ordering::Relaxed),
        c.raced.load(Ordering::Relaxed),
        c.stale.load(Ordering::Relaxed),
    );
}
