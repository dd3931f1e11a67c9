//! End-to-end write-path integrity (issue 15), on Garage through a real FUSE mount: a refused
//! step of a flush never destroys data, and no request waits forever for memory.
//!
//! - A big file streamed while written, chmodded while open, whose closing CopyObject is
//!   refused once (403): close() fails, the kernel's release retries, and the object is
//!   either the complete new file or the failure is reported with the old state, never a
//!   file whose streamed parts became zeros.
//! - A sparse file (one byte at 1 GiB, and at 2 GiB) closes within seconds through the
//!   default 256 MiB cache; eight concurrent 40 MiB writers and four readers finish through a 32 MiB
//!   cache with every file correct, and the mount stays usable.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::faultproxy::{FaultProxy, Faults};
use common::*;

/// Bytes of file `id`: no run of zeros, different for every file.
fn content(id: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (i as u64 ^ id << 48).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (x >> 56) as u8 | 1
        })
        .collect()
}

#[test]
fn a_refused_copy_after_a_streamed_upload_never_turns_the_object_into_zeros() {
    let bucket = TestBucket::new();
    let key = Key::random();
    let proxy = FaultProxy::start(&endpoint(), 15, Faults::default());
    let mut m = Mount::through(bucket.name(), &key, &proxy.endpoint(), &[]);
    let data = content(1, 24 << 20);
    let path = m.path("big.bin");
    let mut f = fs::File::create(&path).unwrap();
    for piece in data.chunks(1 << 20) {
        f.write_all(piece).unwrap();
    }
    // fchmod while open: the metadata fixed when the streaming upload began is stale, so
    // close() completes the upload and then fixes the metadata with a CopyObject
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    proxy.refuse_copies(1);
    let closed = close(f);
    eprintln!(
        "close: {closed:?}; copies left to refuse: {}",
        proxy.copies_left_to_refuse()
    );
    assert_eq!(
        proxy.copies_left_to_refuse(),
        0,
        "the closing CopyObject was never made"
    );
    assert!(closed.is_err(), "close() must report the refused copy");
    // the kernel's release retries the flush at once; give it time to finish
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = head(bucket.name(), "big.bin", Some(&key))
            .is_ok_and(|h| h.metadata.get("mode").is_some_and(|m| m.ends_with("600")));
        if ok || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stored = get_with_key(bucket.name(), "big.bin", &key);
    let zeros = stored.iter().filter(|&&b| b == 0).count();
    assert_eq!(stored.len(), data.len(), "stored size ({zeros} zero bytes)");
    assert!(
        stored == data,
        "the object is not the file written: {zeros} zero bytes\n{}",
        log_excerpt(m.log_path())
    );
    // and the mount still serves it, with the mode the application set
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(fs::read(&path).unwrap() == data);
    m.unmount();
}

#[test]
fn a_one_byte_file_at_one_gib_closes_quickly_through_the_default_cache() {
    sparse_file_closes_through_256m(1 << 30);
}

/// pjdfstest's open/25.t makes one of 2 GiB.
#[test]
fn a_one_byte_file_at_two_gib_closes_quickly_through_the_default_cache() {
    sparse_file_closes_through_256m(2 << 30);
}

fn sparse_file_closes_through_256m(seek: u64) {
    let bucket = TestBucket::new();
    let mut m = Mount::new(&bucket, &["--cache-size", "256M"]);
    let path = m.path("sparse");
    let t = Instant::now();
    let out = output_of(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", path.display()))
            .args(["bs=1", "count=1", &format!("seek={seek}")]),
        Duration::from_secs(180),
    );
    let took = t.elapsed();
    eprintln!("dd seek={seek}: {took:?}, exit {:?}", out.status.code());
    assert!(
        out.status.success(),
        "dd failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_excerpt(m.log_path())
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), seek + 1);
    let h = head(bucket.name(), "sparse", Some(m.key())).unwrap();
    assert_eq!(h.size, seek + 1);
    // the mount is still usable: another file, and the sparse one reads as zeros at its end
    fs::write(m.path("after"), b"still usable").unwrap();
    let mut tail = vec![0xffu8; 4097];
    {
        let mut r = fs::File::open(&path).unwrap();
        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(seek - 4096)).unwrap();
        r.read_exact(&mut tail).unwrap();
    }
    assert!(
        tail[..4096].iter().all(|&b| b == 0),
        "the hole reads as zeros"
    );
    m.unmount();
}

#[test]
fn eight_writers_and_four_readers_finish_through_a_32_mib_cache() {
    let bucket = TestBucket::new();
    let key = Key::random();
    // files to read while the writers run
    let readers: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("r{i}.bin"), content(100 + i, 12 << 20)))
        .collect();
    for (name, data) in &readers {
        put_with_key(bucket.name(), name, data, &key, &[]);
    }
    let src = tempdir("e2e-integrity-src-");
    let sources: Vec<(std::path::PathBuf, Vec<u8>)> = (0..8)
        .map(|i| {
            let data = content(i, 40 << 20);
            let p = src.path().join(format!("w{i}.bin"));
            fs::write(&p, &data).unwrap();
            (p, data)
        })
        .collect();
    let mut m = Mount::with_key(&bucket, &key, &["--cache-size", "32M"]);
    let t = Instant::now();
    std::thread::scope(|s| {
        let mut jobs = Vec::new();
        for (i, (p, _)) in sources.iter().enumerate() {
            let dst = m.path(&format!("w{i}.bin"));
            jobs.push(s.spawn(move || {
                output_of(
                    Command::new("cp").arg(p).arg(&dst),
                    Duration::from_secs(600),
                )
            }));
        }
        for (name, data) in &readers {
            let path = m.path(name);
            s.spawn(move || {
                for _ in 0..3 {
                    assert!(fs::read(&path).unwrap() == *data, "{name} read back wrong");
                }
            });
        }
        for (i, j) in jobs.into_iter().enumerate() {
            let out = j.join().unwrap();
            assert!(
                out.status.success(),
                "cp of w{i}.bin failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    eprintln!(
        "8 writers of 40 MiB + 4 readers through 32 MiB: {:?}",
        t.elapsed()
    );
    for (i, (_, data)) in sources.iter().enumerate() {
        assert_stored(bucket.name(), &format!("w{i}.bin"), &key, data);
    }
    fs::write(m.path("after"), b"still usable").unwrap();
    assert_eq!(fs::read(m.path("after")).unwrap(), b"still usable");
    m.unmount();
}
