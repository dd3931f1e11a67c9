//! End-to-end: `ssecfs rotate` re-encrypts a bucket server-side from one key to another,
//! resumably, and `--dry-run` changes nothing.

mod common;

use std::fs;

use common::*;

#[test]
fn rotate_reencrypts_server_side_and_resumes() {
    let bucket = TestBucket::new();
    let old = Key::random();
    let new = Key::random();
    let files = [
        ("a.txt", b"alpha".to_vec()),
        ("d/b.bin", vec![7u8; 3 << 20]),
    ];
    {
        let m = Mount::with_key(&bucket, &old, &[]);
        fs::create_dir(m.path("d")).unwrap();
        for (name, data) in &files {
            fs::write(m.path(name), data).unwrap();
        }
    }
    let keys = tempdir("e2e-rotate-");
    let (from, to) = (keys.path().join("old"), keys.path().join("new"));
    old.write_file(&from);
    new.write_file(&to);

    let dry = rotate(bucket.name(), &from, &to, &["--dry-run"]);
    assert!(dry.contains("would have rotated 3"), "{dry}");
    assert_stored(bucket.name(), "a.txt", &old, b"alpha");

    let out = rotate(bucket.name(), &from, &to, &[]);
    assert!(out.contains("rotated 3,"), "{out}");
    for (name, data) in &files {
        assert_stored(bucket.name(), name, &new, data);
        assert!(
            try_get(bucket.name(), name, Some(&old)).is_err(),
            "{name} still opens with the old key"
        );
    }
    // a second run finds everything done
    let again = rotate(bucket.name(), &from, &to, &[]);
    assert!(
        again.contains("rotated 0, already under the new key 3"),
        "{again}"
    );
    // and the mount with the new key shows the same tree and metadata
    let m = Mount::with_key(&bucket, &new, &[]);
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read(m.path("d/b.bin")).unwrap(), files[1].1);
}

/// `rotate --adopt-plain` re-encrypts objects stored without SSE-C (a migration from a plain
/// bucket, or objects the owner vouches for) under the new key, server-side; without it they
/// are left alone and counted. Afterwards a mount with the key serves them as its own.
#[test]
fn rotate_adopt_plain_seals_plain_objects_under_the_new_key() {
    let bucket = TestBucket::new();
    let old = Key::random();
    let new = Key::random();
    put(
        bucket.name(),
        "legacy.txt",
        b"from before ssecfs",
        None,
        &[],
    );
    put(bucket.name(), "d/big.bin", &vec![5u8; 2 << 20], None, &[]);
    put_with_key(bucket.name(), "keyed.txt", b"keyed", &old, &[]);
    let keys = tempdir("e2e-adopt-");
    let (from, to) = (keys.path().join("old"), keys.path().join("new"));
    old.write_file(&from);
    new.write_file(&to);

    let out = rotate(bucket.name(), &from, &to, &[]);
    assert!(out.contains("plain (not SSE-C) 2"), "{out}");
    assert!(get_without_key(bucket.name(), "legacy.txt").is_ok());

    let dry = rotate(bucket.name(), &from, &to, &["--adopt-plain", "--dry-run"]);
    assert!(
        dry.starts_with("dry run") && dry.contains("adopted 2"),
        "{dry}"
    );
    assert!(get_without_key(bucket.name(), "legacy.txt").is_ok());

    let out = rotate(bucket.name(), &from, &to, &["--adopt-plain"]);
    assert!(out.contains("adopted 2"), "{out}");
    assert_stored(bucket.name(), "legacy.txt", &new, b"from before ssecfs");
    assert_stored(bucket.name(), "d/big.bin", &new, &vec![5u8; 2 << 20]);
    assert!(get_without_key(bucket.name(), "legacy.txt").is_err());
    assert_stored(bucket.name(), "keyed.txt", &new, b"keyed");
    let m = Mount::with_key(&bucket, &new, &[]);
    assert_eq!(
        fs::read(m.path("legacy.txt")).unwrap(),
        b"from before ssecfs"
    );
}
