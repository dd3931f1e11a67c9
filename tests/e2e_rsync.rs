//! End-to-end: rsync into a mount. The first `rsync -a` copies a tree exactly; the next ones
//! (before and after a remount) must find nothing to do: sizes, mtimes, modes and symlinks all
//! read back as written. `--delete` removes what the source lost.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use rand::Rng;

/// ~300 files of 1–16 KiB in 10 directories (some nested), a few symlinks, assorted modes and
/// mtimes (some with sub-second parts, as real files have).
fn make_tree(root: &Path) -> usize {
    let mut rng = rand::thread_rng();
    let dirs = [
        "d0",
        "d1",
        "d2",
        "d3",
        "d4",
        "d5/nested",
        "d6",
        "d7/a/b",
        "d8",
        "d9",
    ];
    let modes = [0o644, 0o600, 0o640, 0o755, 0o444, 0o700];
    let mut n = 0;
    for (i, d) in dirs.iter().enumerate() {
        let dir = root.join(d);
        fs::create_dir_all(&dir).unwrap();
        for j in 0..30 {
            let p = dir.join(format!("file-{j:02}.dat"));
            fs::write(&p, random_bytes(rng.gen_range(1024..=16 * 1024))).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(modes[(i + j) % modes.len()]))
                .unwrap();
            n += 1;
        }
        if i % 3 == 0 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        }
    }
    // a few files with whole-second mtimes in the past, and one with a fraction
    run(
        "touch",
        &[
            "-d",
            "2019-03-04 05:06:07",
            root.join("d0/file-00.dat").to_str().unwrap(),
        ],
    );
    run(
        "touch",
        &[
            "-d",
            "2018-01-01 00:00:00.5",
            root.join("d1/file-01.dat").to_str().unwrap(),
        ],
    );
    std::os::unix::fs::symlink("d0/file-00.dat", root.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink("../d2", root.join("d3/link-to-dir")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("d4/dangling")).unwrap();
    fs::write(root.join("top.txt"), b"top level\n").unwrap();
    n + 1
}

fn rsync(args: &[&str], src: &Path, dst: &Path) -> String {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.push(format!("{}/", src.display()));
    a.push(format!("{}/", dst.display()));
    run("rsync", &a)
}

#[track_caller]
fn assert_nothing_transferred(what: &str, itemized: &str) {
    assert!(
        itemized.trim().is_empty(),
        "{what}: `rsync -a --itemize-changes` should transfer nothing, but it itemized {} \
         lines:\n{}",
        itemized.lines().count(),
        itemized.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn rsync_copies_exactly_and_then_has_nothing_to_do() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    let local = tempdir("e2e-rsync-");
    let src = local.path().join("src");
    let files = make_tree(&src);
    assert!(files >= 300);
    let dst = m.path("dst");

    let t = std::time::Instant::now();
    rsync(&["-a"], &src, &dst);
    eprintln!("first rsync -a of {files} files: {:?}", t.elapsed());
    run(
        "diff",
        &[
            "-r",
            "--no-dereference",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
    );
    assert_same_tree("rsync -a", &snapshot(&src), &snapshot(&dst));

    // every file is on the server under its key, readable only with it
    let keys = list(b.name(), "dst/");
    let file_keys: Vec<&String> = keys.iter().filter(|k| k.ends_with(".dat")).collect();
    assert_eq!(file_keys.len(), 300, "objects under dst/");
    for rel in [
        "d0/file-00.dat",
        "d5/nested/file-17.dat",
        "d7/a/b/file-29.dat",
        "top.txt",
    ] {
        let expected = fs::read(src.join(rel)).unwrap();
        assert_stored(b.name(), &format!("dst/{rel}"), m.key(), &expected);
    }
    assert!(
        !keys.iter().any(|k| k.contains("/.") && k.contains(".dat.")),
        "rsync temporary files left on the server: {:?}",
        keys.iter().filter(|k| k.contains("/.")).collect::<Vec<_>>()
    );

    let t = std::time::Instant::now();
    let again = rsync(&["-a", "--itemize-changes"], &src, &dst);
    eprintln!("second rsync (no changes): {:?}", t.elapsed());
    assert_nothing_transferred("second run, same mount", &again);

    m.remount();
    let t = std::time::Instant::now();
    let third = rsync(&["-a", "--itemize-changes"], &src, &dst);
    eprintln!("third rsync after remount (no changes): {:?}", t.elapsed());
    assert_nothing_transferred("third run, after a remount", &third);
    assert_same_tree("after remount", &snapshot(&src), &snapshot(&dst));

    // a change in the source is picked up, and only that change
    fs::write(src.join("d6/file-03.dat"), b"changed").unwrap();
    let fourth = rsync(&["-a", "--itemize-changes"], &src, &dst);
    let changed: Vec<&str> = fourth.lines().collect();
    assert!(
        changed.len() <= 2 && changed.iter().any(|l| l.ends_with("d6/file-03.dat")),
        "after changing one file: {fourth}"
    );
    assert_stored(b.name(), "dst/d6/file-03.dat", m.key(), b"changed");
    let fifth = rsync(&["-a", "--itemize-changes"], &src, &dst);
    assert_nothing_transferred("after syncing one change", &fifth);
}

#[test]
fn rsync_delete_removes_from_the_mount() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &[]);
    let local = tempdir("e2e-rsync-");
    let src = local.path().join("src");
    fs::create_dir_all(src.join("keep/sub")).unwrap();
    fs::create_dir_all(src.join("gone-dir/inner")).unwrap();
    for (p, body) in [
        ("keep/a.txt", &b"a"[..]),
        ("keep/sub/b.txt", b"b"),
        ("victim.txt", b"delete me"),
        ("gone-dir/inner/c.txt", b"c"),
        ("stay.txt", b"stay"),
    ] {
        fs::write(src.join(p), body).unwrap();
    }
    let dst = m.path("dst");
    rsync(&["-a"], &src, &dst);
    assert_same_tree("rsync -a", &snapshot(&src), &snapshot(&dst));
    assert_stored(b.name(), "dst/victim.txt", m.key(), b"delete me");

    fs::remove_file(src.join("victim.txt")).unwrap();
    fs::remove_dir_all(src.join("gone-dir")).unwrap();
    let out = rsync(&["-a", "--delete", "--itemize-changes"], &src, &dst);
    assert!(
        out.contains("*deleting") && out.contains("victim.txt"),
        "{out}"
    );
    assert!(!dst.join("victim.txt").exists());
    assert!(!dst.join("gone-dir").exists());
    assert_same_tree("rsync -a --delete", &snapshot(&src), &snapshot(&dst));
    let keys = list(b.name(), "dst/");
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("victim") || k.contains("gone-dir")),
        "deleted files still on the server: {keys:?}"
    );

    m.remount();
    assert_same_tree("after remount", &snapshot(&src), &snapshot(&dst));
    let again = rsync(&["-a", "--delete", "--itemize-changes"], &src, &dst);
    assert_nothing_transferred("after --delete and a remount", &again);
}

/// The same with `--write-back` (close returns before the upload; rsync's utimens and rename
/// fold into it): nothing to do on the second run, and everything on the server after the
/// unmount, with the right attributes.
#[test]
fn rsync_with_write_back_then_remount() {
    let b = TestBucket::new();
    let mut m = Mount::new(&b, &["--write-back"]);
    let local = tempdir("e2e-rsync-");
    let src = local.path().join("src");
    make_tree(&src);
    let dst = m.path("dst");
    rsync(&["-a"], &src, &dst);
    let again = rsync(&["-a", "--itemize-changes"], &src, &dst);
    assert_nothing_transferred("second run, write-back mount", &again);

    // the unmount uploads whatever is still pending
    m.remount();
    let keys = list(b.name(), "dst/");
    assert_eq!(
        keys.iter().filter(|k| k.ends_with(".dat")).count(),
        300,
        "objects under dst/ after the unmount"
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.rsplit('/').next().unwrap().starts_with('.')),
        "rsync temporary names on the server: {:?}",
        keys.iter()
            .filter(|k| k.rsplit('/').next().unwrap().starts_with('.'))
            .collect::<Vec<_>>()
    );
    for rel in ["d1/file-01.dat", "d5/nested/file-00.dat", "top.txt"] {
        let expected = fs::read(src.join(rel)).unwrap();
        assert_stored(b.name(), &format!("dst/{rel}"), m.key(), &expected);
    }
    let third = rsync(&["-a", "--itemize-changes"], &src, &dst);
    assert_nothing_transferred("after a remount, write-back mount", &third);
    assert_same_tree("after remount", &snapshot(&src), &snapshot(&dst));
}
