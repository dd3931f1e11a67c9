//! End-to-end key custody: a key ring opens objects written under older keys and seals every
//! write with its first key (named in `x-amz-meta-ssecfs-key`); an object no key opens is
//! EACCES with a log line; `rotate` takes a key-ring file; HTTPS with `--ca-bundle`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use ssecfs::key::CustomerKey;

fn fingerprint(k: &Key) -> String {
    CustomerKey::from_bytes(k.bytes())
        .unwrap()
        .fingerprint()
        .to_owned()
}

fn key_file(dir: &std::path::Path, name: &str, keys: &[&Key]) -> std::path::PathBuf {
    let p = dir.join(name);
    let text: String = keys.iter().map(|k| format!("{}\n", k.base64())).collect();
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn key_ring_opens_old_objects_and_seals_writes_with_the_first_key() {
    let bucket = TestBucket::new();
    let (old, new, stranger) = (Key::random(), Key::random(), Key::random());
    {
        let m = Mount::with_key(&bucket, &old, &[]);
        fs::create_dir(m.path("d")).unwrap();
        fs::write(m.path("kept.txt"), b"written under the old key").unwrap();
        fs::write(m.path("edited.txt"), b"old text").unwrap();
        fs::write(m.path("d/moved.txt"), b"moves with its directory").unwrap();
    }
    put_with_key(
        bucket.name(),
        "stranger.txt",
        b"nobody here",
        &stranger,
        &[],
    );
    let head_old = head(bucket.name(), "kept.txt", Some(&old)).unwrap();
    assert_eq!(head_old.metadata["ssecfs-key"], fingerprint(&old));

    let keys = tempdir("e2e-keys-");
    let old_path = key_file(keys.path(), "old", &[&old]);
    let m = Mount::with_key(
        &bucket,
        &new,
        &["--key-file", old_path.to_str().unwrap(), "--attr-ttl", "0"],
    );
    // old objects read through the ring
    assert_eq!(
        fs::read(m.path("kept.txt")).unwrap(),
        b"written under the old key"
    );
    // writes: a new file, an edit of an old one, a directory rename
    fs::write(m.path("fresh.txt"), b"new").unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(m.path("edited.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"NEW"))
        .unwrap();
    fs::rename(m.path("d"), m.path("e")).unwrap();
    // the stranger's object: EACCES and a log line, no garbage attributes
    let err = fs::metadata(m.path("stranger.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let err = fs::read(m.path("stranger.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let log = m.log();
    assert!(
        log.contains("stranger.txt") && log.contains("key"),
        "no log line names the object no key opens:\n{log}"
    );

    let fp_new = fingerprint(&new);
    for (name, data) in [
        ("fresh.txt", &b"new"[..]),
        ("edited.txt", b"NEW text"),
        ("e/moved.txt", b"moves with its directory"),
    ] {
        assert_stored(bucket.name(), name, &new, data);
        let h = head(bucket.name(), name, Some(&new)).unwrap();
        assert_eq!(h.metadata["ssecfs-key"], fp_new, "{name}");
    }
    // untouched objects stay under the old key
    assert_stored(
        bucket.name(),
        "kept.txt",
        &old,
        b"written under the old key",
    );
    drop(m);

    // rotate with a key-ring file of old keys (old and stranger) to the new key
    let ring = key_file(keys.path(), "ring", &[&old, &stranger]);
    let new_path = key_file(keys.path(), "new", &[&new]);
    let stdout = rotate(bucket.name(), &ring, &new_path, &[]);
    assert!(stdout.contains("rotated 2,"), "{stdout}");
    assert_stored(
        bucket.name(),
        "kept.txt",
        &new,
        b"written under the old key",
    );
    assert_stored(bucket.name(), "stranger.txt", &new, b"nobody here");
    let h = head(bucket.name(), "stranger.txt", Some(&new)).unwrap();
    assert_eq!(h.metadata["ssecfs-key"], fp_new);
}

#[test]
fn the_same_key_twice_is_refused() {
    let bucket = TestBucket::new();
    let k = Key::random();
    let keys = tempdir("e2e-keys-");
    let a = key_file(keys.path(), "a", &[&k]);
    let b = key_file(keys.path(), "b", &[&k]);
    let mnt = tempdir("e2e-mnt-");
    let out = output_of(
        Command::new(SSECFS)
            .args([
                "mount",
                "-f",
                "--endpoint",
                &endpoint(),
                "--allow-http",
                "--key-file",
            ])
            .arg(&a)
            .arg("--key-file")
            .arg(&b)
            .arg(bucket.name())
            .arg(mnt.path()),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("same key") && stderr.contains("twice"),
        "{stderr}"
    );
    assert!(!stderr.contains(&k.base64()), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    assert!(!is_fuse_mount(mnt.path()));
}

/// Mount over HTTPS through the test bed's TLS front-end (stunnel with a self-signed
/// certificate): refused without `--ca-bundle` with a message naming the certificate, works
/// with it.
#[test]
fn https_endpoint_with_a_private_ca() {
    let (Ok(tls), Ok(ca)) = (
        std::env::var("S3_ENDPOINT_TLS"),
        std::env::var("S3_CA_CERT"),
    ) else {
        panic!(
            "S3_ENDPOINT_TLS/S3_CA_CERT are not set: start the test server with \
             scripts/test-server.sh (it needs stunnel4 for the TLS front-end)"
        );
    };
    let bucket = TestBucket::new();
    let key = Key::random();
    let refused = Mount::try_with_source(bucket.name(), &key, &["--endpoint", &tls]);
    let err = refused
        .err()
        .expect("a self-signed server must not be trusted by default");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the refusal should name the certificate problem:\n{err}"
    );
    let m = Mount::with_key(&bucket, &key, &["--endpoint", &tls, "--ca-bundle", &ca]);
    let data = random_bytes(3 << 20);
    fs::write(m.path("over-tls.bin"), &data).unwrap();
    assert_eq!(fs::read(m.path("over-tls.bin")).unwrap(), data);
    assert_stored(bucket.name(), "over-tls.bin", &key, &data);
}
