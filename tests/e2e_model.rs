//! Randomized model test: the same seeded sequence of operations is applied to a real mount
//! and to a plain in-memory model (path → bytes); contents are compared along the way, after
//! a remount, and on the server. Reproduce a failure with SSECFS_MODEL_SEED=<seed>.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use common::*;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 6] = ["a", "b", "c", "d/x", "d/y", "e/f/g"];
const PART: u64 = 5 << 20;

fn check_all(m: &Mount, model: &BTreeMap<&str, Vec<u8>>, step: usize, seed: u64) {
    for name in NAMES {
        let got = fs::read(m.path(name)).ok();
        let want = model.get(name);
        assert_eq!(
            got.as_ref().map(|v| (v.len(), sha256_hex(v))),
            want.map(|v| (v.len(), sha256_hex(v))),
            "{name} differs at step {step} (SSECFS_MODEL_SEED={seed})"
        );
    }
}

fn run_model(seed: u64, steps: usize) {
    let bucket = TestBucket::new();
    let mut m = Mount::new(&bucket, &["--part-size", "5M"]);
    fs::create_dir_all(m.path("d")).unwrap();
    fs::create_dir_all(m.path("e/f")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for step in 0..steps {
        let name = NAMES[rng.gen_range(0..NAMES.len())];
        let path = m.path(name);
        match rng.gen_range(0..100) {
            // whole-file write
            0..=14 => {
                let len = if rng.gen_bool(0.2) {
                    rng.gen_range(0..3 * PART as usize)
                } else {
                    rng.gen_range(0..20_000)
                };
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                fs::write(&path, &data).unwrap();
                model.insert(name, data);
            }
            // pwrite at a random offset (may extend, may leave a hole)
            15..=44 => {
                let Some(cur) = model.get_mut(name) else {
                    continue;
                };
                let off = rng.gen_range(0..=(cur.len() as u64 + 100_000).min(3 * PART));
                let len = rng.gen_range(1..200_000usize);
                let byte: u8 = rng.gen();
                let data = vec![byte; len];
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all_at(&data, off).unwrap();
                drop(f);
                let end = off as usize + len;
                if cur.len() < end {
                    cur.resize(end, 0);
                }
                cur[off as usize..end].copy_from_slice(&data);
            }
            // append
            45..=54 => {
                let Some(cur) = model.get_mut(name) else {
                    continue;
                };
                let data: Vec<u8> = (0..rng.gen_range(1..50_000)).map(|_| rng.gen()).collect();
                let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                f.write_all(&data).unwrap();
                drop(f);
                cur.extend_from_slice(&data);
            }
            // truncate
            55..=64 => {
                let Some(cur) = model.get_mut(name) else {
                    continue;
                };
                let n = rng.gen_range(0..=cur.len() as u64 + 50_000);
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(n).unwrap();
                drop(f);
                cur.resize(n as usize, 0);
            }
            // read a range and compare
            65..=79 => {
                let Some(cur) = model.get(name) else { continue };
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
            }
            // rename onto another name
            80..=87 => {
                let to = NAMES[rng.gen_range(0..NAMES.len())];
                let Some(data) = model.get(name).cloned() else {
                    continue;
                };
                if to == name {
                    continue;
                }
                fs::rename(&path, m.path(to)).unwrap();
                model.remove(name);
                model.insert(to, data);
            }
            // unlink
            88..=93 => {
                if model.remove(name).is_some() {
                    fs::remove_file(&path).unwrap();
                }
            }
            // remount (everything must survive)
            94..=95 => {
                m.remount();
                check_all(&m, &model, step, seed);
            }
            _ => check_all(&m, &model, step, seed),
        }
    }
    check_all(&m, &model, steps, seed);
    m.remount();
    check_all(&m, &model, steps, seed);
    for (name, data) in &model {
        assert_stored(bucket.name(), name, m.key(), data);
    }
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
