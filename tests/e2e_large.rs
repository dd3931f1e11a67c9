//! End-to-end: large files under a small memory cap, and in-place edits of large files.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn four_gib_sequential_write_under_a_64m_cap() {
    let bucket = TestBucket::new();
    let m = Mount::new(
        &bucket,
        &[
            "--cache-size",
            "64M",
            "--part-size",
            "8M",
            "--upload-concurrency",
            "4",
        ],
    );
    let pid = m.pid().unwrap();
    let path = m.path("big");
    // Every page of the daemon is locked (mlockall), so its resident memory is what it locks:
    // what it holds before the workload, plus at most the cache.
    let idle = proc_status_kb(pid, "VmRSS:");
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || {
            let mut peak = 0;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_status_kb(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        (stop, h)
    };
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=1M",
            "count=4096",
            "conv=fsync",
            "status=none",
        ])
        .arg(format!("of={}", path.display()))
        .status()
        .unwrap();
    assert!(status.success(), "dd failed");
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.1.join().unwrap();
    eprintln!("resident memory: {idle} kB idle, {peak} kB at the peak of a 4 GiB write");
    assert!(
        peak <= idle + 66 * 1024,
        "resident (locked) memory peaked at {peak} kB, {idle} kB before: over a 64M cap"
    );
    let h = head(bucket.name(), "big", Some(m.key())).expect("object on the server");
    assert_eq!(h.size, 4 << 30);
    // spot-check a few ranges through the mount
    let f = fs::File::open(&path).unwrap();
    for off in [0u64, (1 << 30) + 12345, (4 << 30) - 4096] {
        let mut buf = vec![1u8; 4096];
        let n = f.read_at(&mut buf, off).unwrap();
        assert_eq!(n, 4096);
        assert!(buf.iter().all(|&b| b == 0));
    }
    drop(f);
    fs::remove_file(&path).unwrap();
}

#[test]
fn rsync_inplace_of_a_changed_large_file() {
    let bucket = TestBucket::new();
    let mut m = Mount::new(&bucket, &["--part-size", "5M"]);
    let src = tempdir("e2e-inplace-");
    let data: Vec<u8> = (0..(40u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(src.path().join("f"), &data).unwrap();
    let out = Command::new("rsync")
        .args(["-a"])
        .arg(src.path().join("f"))
        .arg(m.path("f"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // change a few bytes in the middle and at the end
    let mut changed = data.clone();
    changed[17 << 20] ^= 0xff;
    changed.extend_from_slice(b"appended tail");
    fs::write(src.path().join("f"), &changed).unwrap();
    let out = Command::new("rsync")
        .args(["-a", "--inplace", "--no-whole-file", "--checksum"])
        .arg(src.path().join("f"))
        .arg(m.path("f"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.remount();
    let got = fs::read(m.path("f")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&changed));
    assert_stored(bucket.name(), "f", m.key(), &changed);
}

/// Keys of the bucket's incomplete multipart uploads.
fn pending_uploads(bucket: &str) -> Vec<String> {
    let out = rt()
        .block_on(client().list_multipart_uploads().bucket(bucket).send())
        .expect("ListMultipartUploads");
    let mut keys: Vec<String> = out
        .uploads()
        .iter()
        .filter_map(|u| u.key().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

#[test]
fn a_mount_aborts_stale_incomplete_uploads_under_its_prefix_only() {
    let bucket = TestBucket::new();
    let key = Key::random();
    // what a crashed daemon leaves: an SSE-C multipart upload with a part, never completed;
    // one inside the mount's prefix, one outside it
    for object in ["inside/crashed.bin", "outside/other.bin"] {
        rt().block_on(async {
            let up = client()
                .create_multipart_upload()
                .bucket(bucket.name())
                .key(object)
                .sse_customer_algorithm("AES256")
                .sse_customer_key(key.base64())
                .sse_customer_key_md5(key.md5_base64())
                .send()
                .await
                .expect("CreateMultipartUpload");
            client()
                .upload_part()
                .bucket(bucket.name())
                .key(object)
                .upload_id(up.upload_id().unwrap())
                .part_number(1)
                .body(vec![7u8; 1 << 20].into())
                .sse_customer_algorithm("AES256")
                .sse_customer_key(key.base64())
                .sse_customer_key_md5(key.md5_base64())
                .send()
                .await
                .expect("UploadPart");
        });
    }
    let both = ["inside/crashed.bin", "outside/other.bin"];
    assert_eq!(pending_uploads(bucket.name()), both);

    // `check` tells of them
    let dir = tempdir("abort-uploads");
    let key_file = dir.path().join("key");
    key.write_file(&key_file);
    let check = output_of(
        Command::new(SSECFS)
            .args([
                "check",
                "--endpoint",
                &endpoint(),
                "--allow-http",
                "--key-file",
            ])
            .arg(&key_file)
            .arg(bucket.name()),
        Duration::from_secs(60),
    );
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "check failed: {said}");
    assert!(
        said.contains("2 incomplete multipart upload(s)"),
        "check did not tell of the uploads: {said}"
    );

    // the default age (7 days): nothing this young is touched
    let source = format!("{}:inside", bucket.name());
    let mut m = Mount::with_source(&source, &key, &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pending_uploads(bucket.name()), both);
    m.unmount();

    // older than the age given: the upload under the prefix goes, the other stays
    let mut m = Mount::with_source(&source, &key, &["-o", "abort_uploads_after=1s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pending_uploads(bucket.name()).len() > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(pending_uploads(bucket.name()), ["outside/other.bin"]);
    // and the mount works as ever
    fs::write(m.path("after.txt"), b"still fine").unwrap();
    assert_eq!(fs::read(m.path("after.txt")).unwrap(), b"still fine");
    m.unmount();
}

/// An edit of a big file uploads the parts it changed and copies the others server-side
/// (UploadPartCopy), only from the version the edit was based on: Garage checks
/// `x-amz-copy-source-if-match` on the SSE-C source. When another client replaced the object
/// meanwhile, fsync fails with ESTALE and the server keeps that client's version whole,
/// never a mix of both.
#[test]
fn an_edit_of_a_big_file_copies_parts_only_from_its_own_version() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    let size = 20 << 20; // three 8 MiB parts
    let mut data = random_bytes(size);
    fs::write(m.path("big"), &data).unwrap();
    // nobody else writing: the edit lands
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("big"))
        .unwrap();
    f.write_all_at(b"E", 1).unwrap();
    f.sync_all()
        .expect("fsync of an edit with nobody else writing");
    data[1] = b'E';
    assert_stored(b.name(), "big", m.key(), &data);
    // another client replaces the object before this edit is uploaded
    f.write_all_at(b"F", 2).unwrap();
    let theirs = random_bytes(size);
    put_with_key(b.name(), "big", &theirs, m.key(), &[]);
    let e = f.sync_all().expect_err("fsync must not mix two versions");
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
    drop(f);
    assert_stored(b.name(), "big", m.key(), &theirs);
    // the edit that could not be stored is reported at unmount too, not dropped silently
    let stopped = m.stop().expect("the mount was running");
    assert!(
        !stopped.clean(),
        "unmount must report the edit it could not store"
    );
    assert_stored(b.name(), "big", m.key(), &theirs);
}
