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
