//! Random 4 KiB reads of an object twice the cache, after one sequential pass has put half of
//! it in the spill tier (issue 20). A measurement, not a timed assertion: it prints reads/s,
//! GETs and spill work, and checks only that the bytes are right.
//!
//! `cargo test --release --lib random_reads_beyond_the_cache -- --ignored --nocapture`

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::*;
use crate::s3::mem::MemStore;
use crate::s3::Metadata;

const BUDGET: u64 = 32 << 20;
const READS: usize = 20_000;

/// One random read as the read path serves it (`Fs::read_object` after `Fs::block_for`).
async fn random_read(cache: &BlockCache, obj: &ObjectRef, offset: u64, out: &mut [u8]) {
    let block = if cache.has_large(obj, offset) {
        LARGE_BLOCK
    } else {
        SMALL_BLOCK
    };
    let (b, range) = cache
        .within_one_block(obj, offset, out.len() as u64, block)
        .await
        .unwrap()
        .unwrap();
    out.copy_from_slice(&b[range]);
}

/// Wait until the background seals of evicted blocks are done.
async fn settle(spill: &Spill) {
    let mut last = u64::MAX;
    while spill.stats().seals != last {
        last = spill.stats().seals;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn random_reads_beyond_the_cache() {
    let mem = MemStore::new("k");
    let size = 2 * BUDGET;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    mem.put("o", bytes::Bytes::from(data.clone()), &Metadata::new())
        .await
        .unwrap();
    let info = mem.head("o").await.unwrap();
    let obj = ObjectRef {
        key: "o".into(),
        etag: info.etag,
        size: info.size,
        sealing: Sealing::PRIMARY,
    };
    let arena = Arena::with_cap_unchecked(BUDGET as usize + (32 << 20));
    let dir = tempfile::tempdir().unwrap();
    let spill = Spill::create(dir.path(), 4 * BUDGET, &arena).unwrap();
    let cache =
        BlockCache::new(Arc::new(mem.clone()), arena, BUDGET).with_spill(Some(spill.clone()));
    // one sequential pass, as `cat` or `fio --rw=read` would make it
    let mut buf = vec![0u8; 128 << 10];
    for off in (0..size).step_by(buf.len()) {
        cache.read(&obj, off, &mut buf, LARGE_BLOCK).await.unwrap();
    }
    settle(&spill).await;
    let (gets0, s0) = (mem.counts()["get"], spill.stats());
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut out = [0u8; 4096];
    let started = Instant::now();
    for _ in 0..READS {
        let off = rng.gen_range(0..size / 4096) * 4096;
        random_read(&cache, &obj, off, &mut out).await;
        assert!(out[..] == data[off as usize..][..4096], "bytes at {off}");
    }
    let secs = started.elapsed().as_secs_f64();
    settle(&spill).await;
    let s1 = spill.stats();
    let gets = mem.counts()["get"] - gets0;
    println!(
        "random 4 KiB reads: {:.0}/s ({:.0}/s if each GET took the 3.6 ms of the measured \
         mount); GETs {}; spill seals {}, decrypted {} MiB ({} reads, object {} MiB, cache {} MiB)",
        READS as f64 / secs,
        READS as f64 / (secs + gets as f64 * 0.0036),
        gets,
        s1.seals - s0.seals,
        (s1.opened_bytes - s0.opened_bytes) >> 20,
        READS,
        size >> 20,
        BUDGET >> 20,
    );
}
