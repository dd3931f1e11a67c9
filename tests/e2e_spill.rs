//! End-to-end: the sealed spill tier (`--spill-dir`). With a tiny locked cache, evicted blocks
//! and write chunks go to the spill files, sealed: plaintext never reaches them (or any other
//! local disk), a flipped byte is caught and the data fetched again, random writes of twice
//! the cache and `rsync --inplace` of three times it complete, and nothing is left in the directory.
//!
//! The spill files are unlinked from the start, so the tests reach them the way an attacker
//! with the daemon's rights would during the mount: through `/proc/<daemon pid>/fd/N` (the
//! tests run as root; the daemon is non-dumpable, which closes /proc/PID/fd to other users).

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;

/// Options of a mount whose cache is far smaller than the data, with a spill tier in `dir`.
fn spill_args(dir: &Path) -> Vec<String> {
    [
        "--cache-size",
        "24M",
        "--part-size",
        "5M",
        "--spill-dir",
        dir.to_str().unwrap(),
        "--spill-size",
        "512M",
        "--log-level",
        "debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn mount_with_spill(bucket: &TestBucket, dir: &Path) -> Mount {
    let args = spill_args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Mount::new(bucket, &args)
}

/// The daemon's open files that live in `dir` (the unlinked spill files).
fn spill_fds(pid: u32, dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&dir)))
        .map(|e| e.path())
        .collect()
}

/// A small deterministic generator (xorshift) for offsets.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random 64 KiB-aligned reads of all of `path` (each offset once, shuffled), checked.
fn read_randomly(path: &Path, expect: &[u8], seed: u64) {
    let f = fs::File::open(path).unwrap();
    let piece = 64 << 10;
    let mut order: Vec<usize> = (0..expect.len().div_ceil(piece)).collect();
    let mut rng = Rng(seed | 1);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut buf = vec![0u8; piece];
    for i in order {
        let off = i * piece;
        let want = &expect[off..(off + piece).min(expect.len())];
        f.read_exact_at(&mut buf[..want.len()], off as u64).unwrap();
        assert!(buf[..want.len()] == *want, "wrong data at offset {off}");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn plaintext_never_reaches_the_spill_files_or_any_disk_and_nothing_is_left() {
    let bucket = TestBucket::new();
    let spill = tempdir("e2e-spill-");
    let mut m = mount_with_spill(&bucket, spill.path());
    let marker = format!(
        "SSECFS-SPILL-MARKER-{:016x}-{:08x}",
        rand_u64(),
        std::process::id()
    );
    let mut data = Vec::with_capacity(64 << 20);
    let mut n = 0u64;
    while data.len() < 64 << 20 {
        data.extend_from_slice(marker.as_bytes());
        data.extend_from_slice(format!("{n:012}").as_bytes());
        data.extend_from_slice(&[b'.'; 980]);
        n += 1;
    }
    data.truncate(64 << 20);
    // sequential write (streams), then a file written at random offsets: 48 MiB with a
    // 24 MiB cache, so write chunks have to be sealed to the spill tier
    fs::write(m.path("seq.bin"), &data).unwrap();
    let random = &data[..48 << 20];
    {
        let f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(m.path("random.bin"))
            .unwrap();
        let piece = 1 << 20;
        let mut order: Vec<usize> = (0..random.len() / piece).collect();
        let mut rng = Rng(0x5eed);
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        for i in order {
            f.write_all_at(&random[i * piece..(i + 1) * piece], (i * piece) as u64)
                .unwrap();
        }
        f.sync_all().unwrap();
    }
    let log = m.log();
    assert!(
        log.contains("write chunk sealed to the spill tier"),
        "the random writes did not use the spill tier; log:\n{}",
        log_excerpt(m.log_path())
    );
    // read both, twice, at random: the working set is 4.5× the cache
    for seed in [1, 2] {
        read_randomly(&m.path("seq.bin"), &data, seed);
        read_randomly(&m.path("random.bin"), random, seed + 10);
    }
    let pid = m.pid().expect("daemon pid");
    let fds = spill_fds(pid, spill.path());
    assert!(
        !fds.is_empty(),
        "the daemon has no spill file open in {}",
        spill.path().display()
    );
    // nothing is linked in the directory, even while mounted
    assert_eq!(fs::read_dir(spill.path()).unwrap().count(), 0);
    // what an attacker copying the spill files during the mount gets: ciphertext only
    let copy_dir = tempdir("e2e-spill-copy-");
    let mut spilled = 0u64;
    for (i, fd) in fds.iter().enumerate() {
        let bytes = fs::read(fd).unwrap();
        spilled += bytes.len() as u64;
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "plaintext marker found in spill file {}",
            fd.display()
        );
        fs::write(copy_dir.path().join(format!("copy-{i}")), &bytes).unwrap();
    }
    assert!(
        spilled > 8 << 20,
        "only {spilled} bytes were spilled: the tier was not used"
    );
    // and the server holds exactly what was written
    assert_stored(bucket.name(), "random.bin", m.key(), random);
    m.unmount();
    assert_eq!(
        fs::read_dir(spill.path()).unwrap().count(),
        0,
        "the spill directory is empty after unmount"
    );
    // The copies outlive the mount, but their key died with it: without it they are
    // 64 MiB+ of AES-GCM ciphertext (no plaintext, no key in them: see SECURITY.md).
    for e in fs::read_dir(copy_dir.path()).unwrap().flatten() {
        assert!(!contains(&fs::read(e.path()).unwrap(), marker.as_bytes()));
    }
    drop(copy_dir);

    // the same scan as e2e_security: no plaintext on any local disk
    let hits = local_files_containing(marker.as_bytes(), &[spill.path().to_owned()]);
    assert!(
        hits.is_empty(),
        "plaintext marker found on local disk: {hits:?}"
    );
}

#[test]
fn a_flipped_byte_in_a_spill_file_is_caught_and_reads_stay_correct() {
    let bucket = TestBucket::new();
    let spill = tempdir("e2e-spill-");
    let mut m = mount_with_spill(&bucket, spill.path());
    let data: Vec<u8> = (0..(64u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    fs::write(m.path("f"), &data).unwrap();
    m.remount();
    read_randomly(&m.path("f"), &data, 7);
    let pid = m.pid().expect("daemon pid");
    // let background sealing finish, then flip one bit in every 4 KiB of every spill file
    std::thread::sleep(std::time::Duration::from_millis(500));
    let fds = spill_fds(pid, spill.path());
    assert!(!fds.is_empty(), "nothing was spilled");
    let mut flipped = 0;
    for fd in &fds {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fd)
            .unwrap();
        let len = f.metadata().unwrap().len();
        for off in (100..len).step_by(4096) {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off).unwrap();
            b[0] ^= 0x10;
            f.write_all_at(&b, off).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped > 100, "only {flipped} bytes flipped");
    // every read is still right: failed blocks are dropped and fetched from S3 again
    read_randomly(&m.path("f"), &data, 8);
    read_randomly(&m.path("f"), &data, 9);
    m.unmount();
    let log = m.log();
    let reports = log.matches("failed its integrity check").count();
    assert_eq!(
        reports,
        1,
        "tampering is logged once; log:\n{}",
        log_excerpt(m.log_path())
    );
    assert_eq!(fs::read_dir(spill.path()).unwrap().count(), 0);
}

#[test]
fn spill_options_are_checked_before_mounting() {
    let bucket = TestBucket::new();
    let key = Key::random();
    let missing = tmp_base().join("no-such-spill-dir");
    let err = Mount::try_with_source(
        bucket.name(),
        &key,
        &["--spill-dir", missing.to_str().unwrap()],
    )
    .err()
    .expect("a missing spill directory is refused");
    assert!(err.contains("--spill-dir"), "{err}");
    let dir = tempdir("e2e-spill-");
    let err = Mount::try_with_source(
        bucket.name(),
        &key,
        &[
            "-o",
            &format!("spill_dir={},spill_size=1M", dir.path().display()),
        ],
    )
    .err()
    .expect("a spill tier smaller than two parts is refused");
    assert!(err.contains("--spill-size"), "{err}");
}

#[test]
fn rsync_inplace_of_a_file_three_times_the_cache() {
    let bucket = TestBucket::new();
    let spill = tempdir("e2e-spill-");
    let mut m = mount_with_spill(&bucket, spill.path());
    let src = tempdir("e2e-spill-src-");
    let mut data: Vec<u8> = (0..(72u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(src.path().join("f"), &data).unwrap();
    let rsync = |extra: &[&str]| {
        let out = std::process::Command::new("rsync")
            .args(["-a"])
            .args(extra)
            .arg(src.path().join("f"))
            .arg(m.path("f"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    rsync(&[]);
    // scattered changes, a few in each third of the file, and a longer tail
    for k in [3u32, 17, 29, 41, 53, 66, 71] {
        let at = ((k << 20) + 4321) as usize;
        for b in &mut data[at..at + 10_000] {
            *b ^= 0x5a;
        }
    }
    data.extend_from_slice(&[7u8; 3 << 20]);
    fs::write(src.path().join("f"), &data).unwrap();
    rsync(&["--inplace", "--no-whole-file", "--checksum"]);
    m.remount();
    read_randomly(&m.path("f"), &data, 3);
    assert_stored(bucket.name(), "f", m.key(), &data);
    m.unmount();
    assert_eq!(fs::read_dir(spill.path()).unwrap().count(), 0);
}
