//! Randomized model test: the same seeded sequence of operations is applied to a real mount
//! and to a plain in-memory model (files: bytes, mode, mtime; directories: mode); contents
//! and attributes are compared along the way, after remounts, and on the server. Operations:
//! whole writes, pwrite, append, truncate, reads, rename, unlink, mkdir, rmdir (refused while
//! not empty), chmod of files and directories, utimens, and unmount/remount. An mtime the model
//! cannot predict (set by a write) must fall within the operation's time window, and from its
//! first observation on it must stay put (across renames, chmod and remounts).
//! Reproduce a failure with SSECFS_MODEL_SEED=<seed> (SSECFS_MODEL_STEPS=<n> to shorten).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 8] = ["a", "b", "c", "d/x", "d/y", "e/f/g", "h/z", "h/w"];
/// Directories the model may create and remove (`d`, `e`, `e/f` exist from the start).
const DIRS: [&str; 4] = ["d", "e", "e/f", "h"];
const MODES: [u32; 6] = [0o644, 0o600, 0o640, 0o755, 0o444, 0o700];
const DIR_MODES: [u32; 3] = [0o755, 0o750, 0o700];
const PART: u64 = 5 << 20;

/// What the model knows of a file's mtime (whole seconds: what the server keeps).
#[derive(Clone, Debug)]
enum Mtime {
    /// Set by utimens, or pinned at its first observation.
    Exact(i64),
    /// Set by a write between these two instants; pinned when first checked.
    Within(i64, i64),
}

#[derive(Clone, Debug)]
struct File {
    data: Vec<u8>,
    mode: u32,
    mtime: Mtime,
    /// The last operations applied to it (for failure messages).
    history: Vec<String>,
}

#[derive(Default)]
struct Model {
    files: BTreeMap<&'static str, File>,
    /// Directory → mode.
    dirs: BTreeMap<&'static str, u32>,
}

impl Model {
    fn parent_exists(&self, name: &str) -> bool {
        match name.rsplit_once('/') {
            None => true,
            Some((dir, _)) => self.dirs.contains_key(dir),
        }
    }

    fn has_children(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.files.keys().any(|f| f.starts_with(&prefix))
            || self.dirs.keys().any(|d| d.starts_with(&prefix))
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Mark `f` as written now-ish: its mtime lies within [`lo`, now].
fn touched(f: &mut File, lo: i64) {
    f.mtime = Mtime::Within(lo - 1, now_secs() + 1);
}

fn check_all(m: &Mount, model: &mut Model, step: usize, seed: u64) {
    for name in NAMES {
        let got = fs::read(m.path(name)).ok();
        let want = model.files.get_mut(name);
        assert_eq!(
            got.as_ref().map(|v| (v.len(), sha256_hex(v))),
            want.as_ref().map(|f| (f.data.len(), sha256_hex(&f.data))),
            "{name} differs at step {step}, after {:?} (SSECFS_MODEL_SEED={seed})",
            want.as_ref().map(|f| &f.history)
        );
        let Some(want) = want else { continue };
        let md = fs::metadata(m.path(name)).unwrap();
        assert_eq!(
            md.mode() & 0o7777,
            want.mode,
            "mode of {name} at step {step} (SSECFS_MODEL_SEED={seed})"
        );
        assert_eq!(
            md.len(),
            want.data.len() as u64,
            "size of {name} at step {step} (SSECFS_MODEL_SEED={seed})"
        );
        let mtime = md.mtime();
        match want.mtime {
            Mtime::Exact(t) => assert_eq!(
                mtime, t,
                "mtime of {name} at step {step}, after {:?} (SSECFS_MODEL_SEED={seed})",
                want.history
            ),
            Mtime::Within(lo, hi) => {
                assert!(
                    (lo..=hi).contains(&mtime),
                    "mtime of {name} at step {step}: {mtime} not within the write's \
                     window {lo}..={hi}, after {:?} (SSECFS_MODEL_SEED={seed})",
                    want.history
                );
                want.mtime = Mtime::Exact(mtime);
                want.history.push(format!("pinned {mtime} at step {step}"));
            }
        }
    }
    for dir in DIRS {
        let got = fs::metadata(m.path(dir)).ok();
        assert_eq!(
            got.as_ref().map(|md| (md.is_dir(), md.mode() & 0o7777)),
            model.dirs.get(dir).map(|mode| (true, *mode)),
            "directory {dir} at step {step} (SSECFS_MODEL_SEED={seed})"
        );
    }
}

fn run_model(seed: u64, steps: usize) {
    let bucket = TestBucket::new();
    // new files are 0666 & ~umask: make that 0644 whatever the caller's umask
    // SAFETY: umask(2) only sets this process's file mode creation mask.
    unsafe { libc::umask(0o022) };
    let mut m = Mount::new(&bucket, &["--part-size", "5M"]);
    let mut model = Model::default();
    for d in ["d", "e", "e/f"] {
        fs::create_dir(m.path(d)).unwrap();
        fs::set_permissions(m.path(d), fs::Permissions::from_mode(0o755)).unwrap();
        model.dirs.insert(d, 0o755);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for step in 0..steps {
        let name = NAMES[rng.gen_range(0..NAMES.len())];
        let path = m.path(name);
        let t0 = now_secs();
        let roll = rng.gen_range(0..112);
        if roll < 100 && !model.parent_exists(name) {
            // its directory is gone: creating it fails, and nothing else applies
            if roll <= 14 {
                let e = fs::write(&path, b"x").unwrap_err();
                assert_eq!(errno(&e), libc::ENOENT, "write {name} with no parent");
                *ops.entry("enoent").or_default() += 1;
            }
            continue;
        }
        let before = model.files.get(name).map(|f| f.data.len());
        match roll {
            // whole-file write
            0..=14 => {
                let len = if rng.gen_bool(0.2) {
                    rng.gen_range(0..3 * PART as usize)
                } else {
                    rng.gen_range(0..20_000)
                };
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                write_closed(&path, &data).unwrap();
                let f = model.files.entry(name).or_insert_with(|| File {
                    data: Vec::new(),
                    mode: 0o644,
                    mtime: Mtime::Exact(0),
                    history: Vec::new(),
                });
                f.data = data;
                touched(f, t0);
                *ops.entry("write").or_default() += 1;
            }
            // pwrite at a random offset (may extend, may leave a hole)
            15..=44 => {
                let Some(file) = model.files.get_mut(name) else {
                    continue;
                };
                let cur = &mut file.data;
                let off = rng.gen_range(0..=(cur.len() as u64 + 100_000).min(3 * PART));
                let len = rng.gen_range(1..200_000usize);
                let byte: u8 = rng.gen();
                let data = vec![byte; len];
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all_at(&data, off).unwrap();
                close(f).unwrap();
                let end = off as usize + len;
                if cur.len() < end {
                    cur.resize(end, 0);
                }
                cur[off as usize..end].copy_from_slice(&data);
                touched(file, t0);
                *ops.entry("pwrite").or_default() += 1;
            }
            // append
            45..=54 => {
                let Some(file) = model.files.get_mut(name) else {
                    continue;
                };
                let data: Vec<u8> = (0..rng.gen_range(1..50_000)).map(|_| rng.gen()).collect();
                let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                f.write_all(&data).unwrap();
                close(f).unwrap();
                file.data.extend_from_slice(&data);
                touched(file, t0);
                *ops.entry("append").or_default() += 1;
            }
            // truncate
            55..=64 => {
                let Some(file) = model.files.get_mut(name) else {
                    continue;
                };
                let n = rng.gen_range(0..=file.data.len() as u64 + 50_000);
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(n).unwrap();
                close(f).unwrap();
                file.data.resize(n as usize, 0);
                touched(file, t0);
                *ops.entry("truncate").or_default() += 1;
            }
            // read a range and compare
            65..=79 => {
                let Some(cur) = model.files.get(name).map(|f| &f.data) else {
                    continue;
                };
                let off = rng.gen_range(0..=cur.len() as u64);
                let len = rng.gen_range(0..300_000usize);
                let mut f = fs::File::open(&path).unwrap();
                f.seek(SeekFrom::Start(off)).unwrap();
                let mut buf = vec![0u8; len];
                let n = f.read_at(&mut buf, off).unwrap();
                let want = &cur[off as usize..(off as usize + len).min(cur.len())];
                assert_eq!(
                    &buf[..n],
                    want,
                    "{name} read {off}+{len} at step {step} (SSECFS_MODEL_SEED={seed})"
                );
                *ops.entry("read").or_default() += 1;
            }
            // rename onto another name
            80..=87 => {
                let to = NAMES[rng.gen_range(0..NAMES.len())];
                let Some(file) = model.files.get(name).cloned() else {
                    continue;
                };
                if to == name || !model.parent_exists(to) {
                    continue;
                }
                fs::rename(&path, m.path(to)).unwrap();
                model.files.remove(name);
                let mut file = file;
                file.history
                    .push(format!("step {step}: renamed from {name}"));
                model.files.insert(to, file);
                *ops.entry("rename").or_default() += 1;
            }
            // unlink
            88..=93 => {
                if model.files.remove(name).is_some() {
                    fs::remove_file(&path).unwrap();
                    *ops.entry("unlink").or_default() += 1;
                }
            }
            // remount (everything must survive)
            94..=95 => {
                m.remount();
                check_all(&m, &mut model, step, seed);
                *ops.entry("remount").or_default() += 1;
            }
            96..=99 => check_all(&m, &mut model, step, seed),
            // chmod a file
            100..=102 => {
                let Some(file) = model.files.get_mut(name) else {
                    continue;
                };
                let mode = MODES[rng.gen_range(0..MODES.len())];
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                file.mode = mode;
                *ops.entry("chmod").or_default() += 1;
            }
            // utimens: an mtime in the past (whole seconds are what the server keeps)
            103..=105 => {
                let Some(file) = model.files.get_mut(name) else {
                    continue;
                };
                let secs = rng.gen_range(1_000_000_000..1_700_000_000i64);
                let nanos = rng.gen_range(0..1_000_000_000u32);
                let when = UNIX_EPOCH + Duration::new(secs as u64, nanos);
                let f = fs::OpenOptions::new().read(true).open(&path).unwrap();
                f.set_times(fs::FileTimes::new().set_modified(when))
                    .unwrap();
                drop(f);
                file.mtime = Mtime::Exact(secs);
                *ops.entry("utimens").or_default() += 1;
            }
            // mkdir, or chmod of an existing directory
            106..=108 => {
                let dir = DIRS[rng.gen_range(0..DIRS.len())];
                let mode = DIR_MODES[rng.gen_range(0..DIR_MODES.len())];
                if model.dirs.contains_key(dir) {
                    fs::set_permissions(m.path(dir), fs::Permissions::from_mode(mode)).unwrap();
                    *ops.entry("chmod dir").or_default() += 1;
                } else if model.parent_exists(dir) {
                    fs::create_dir(m.path(dir)).unwrap();
                    fs::set_permissions(m.path(dir), fs::Permissions::from_mode(mode)).unwrap();
                    *ops.entry("mkdir").or_default() += 1;
                } else {
                    let e = fs::create_dir(m.path(dir)).unwrap_err();
                    assert_eq!(errno(&e), libc::ENOENT, "mkdir {dir} with no parent");
                    continue;
                }
                model.dirs.insert(dir, mode);
            }
            // rmdir: refused while not empty
            _ => {
                let dir = DIRS[rng.gen_range(0..DIRS.len())];
                if !model.dirs.contains_key(dir) {
                    continue;
                }
                match fs::remove_dir(m.path(dir)) {
                    Ok(()) => {
                        assert!(
                            !model.has_children(dir),
                            "rmdir {dir} succeeded but it held {:?} (step {step}, \
                             SSECFS_MODEL_SEED={seed})",
                            model.files.keys().collect::<Vec<_>>()
                        );
                        model.dirs.remove(dir);
                        *ops.entry("rmdir").or_default() += 1;
                    }
                    Err(e) => {
                        assert!(
                            model.has_children(dir),
                            "rmdir {dir} failed on an empty directory: {e} (step {step}, \
                             SSECFS_MODEL_SEED={seed})"
                        );
                        assert_eq!(errno(&e), libc::ENOTEMPTY, "rmdir {dir}");
                        *ops.entry("rmdir refused").or_default() += 1;
                    }
                }
            }
        }
        if let Some(f) = model.files.get_mut(name) {
            if f.history.len() > 8 {
                f.history.remove(0);
            }
            f.history.push(format!(
                "step {step} op {roll}: {before:?} -> {} bytes, mtime {:?}",
                f.data.len(),
                f.mtime
            ));
        }
    }
    check_all(&m, &mut model, steps, seed);
    m.remount();
    check_all(&m, &mut model, steps, seed);
    for (name, file) in &model.files {
        assert_stored(bucket.name(), name, m.key(), &file.data);
    }
    let names: BTreeSet<&str> = model.files.keys().copied().collect();
    eprintln!(
        "model: {steps} steps (seed {seed}): {ops:?}; at the end {} files {names:?}, \
         directories {:?}",
        names.len(),
        model
            .dirs
            .iter()
            .map(|(d, m)| format!("{d}:{m:o}"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn random_operations_match_an_in_memory_model() {
    let seed = std::env::var("SSECFS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0055_ecf5);
    let steps = std::env::var("SSECFS_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    run_model(seed, steps);
}
