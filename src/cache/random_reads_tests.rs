//! Random 4 KiB reads of an object twice the cache, after one sequential pass has put half of
//! it in the spill tier (issue 20). A measurement, not a timed assertion: it prints reads/s,
//! GETs and spill work, and checks only that the bytes are right.
//!
//! `cargo test --release --lib random_reads_beyond_the_cache -- --ignored --nocapture`

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::*;
use crate::s3::mem::MemStore;
use crate::s3::Metadata;

const BUDGET: u64 = 32 << 20;
const READS: usize = 20_000;

/// One random read as the read path serves it (`Fs::read_object`).
async fn random_read(cache: &BlockCache, obj: &ObjectRef, offset: u64, out: &mut [u8]) {
    let (b, range) = cache
        .read_random(obj, offset, out.len() as u64)
        .await
        .unwrap()
        .unwrap();
    out.copy_from_slice(&b[range]);
}

/// Wait until the background seals of evicted blocks are done: each is a spawned task, so
/// until the runtime has none left (a seal in a debug build takes over 200 ms on a slow
/// machine: waiting for the count to stop moving for 100 ms returned before it was done).
pub(super) async fn settle() {
    let metrics = tokio::runtime::Handle::current().metrics();
    while metrics.num_alive_tasks() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn random_reads_beyond_the_cache() {
    let mem = MemStore::new("k");
    let size = 2 * BUDGET;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let obj = stored(&mem, &data).await;
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
    settle().await;
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
    settle().await;
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

/// A 4 MiB object read once in order through a 2 MiB cache: blocks 0 and 1 end in the spill
/// tier, 2 and 3 in the cache.
async fn half_spilled() -> (
    MemStore,
    ObjectRef,
    Vec<u8>,
    BlockCache,
    Spill,
    tempfile::TempDir,
) {
    let mem = MemStore::new("k");
    let data: Vec<u8> = (0..4 * LARGE_BLOCK).map(|i| (i % 253) as u8).collect();
    let obj = stored(&mem, &data).await;
    let arena = Arena::with_cap_unchecked(16 << 20);
    let dir = tempfile::tempdir().unwrap();
    let spill = Spill::create(dir.path(), 16 << 20, &arena).unwrap();
    let cache = BlockCache::new(Arc::new(mem.clone()), arena, 0).with_spill(Some(spill.clone()));
    let mut out = vec![0u8; LARGE_BLOCK as usize];
    for i in 0..4 {
        let off = i * LARGE_BLOCK;
        cache.read(&obj, off, &mut out, LARGE_BLOCK).await.unwrap();
    }
    settle().await;
    assert_eq!(spill.stats().seals, 2);
    assert_eq!(mem.counts()["get"], 4);
    (mem, obj, data, cache, spill, dir)
}

#[tokio::test]
async fn random_reads_of_spilled_blocks_neither_fetch_nor_cache_them() {
    let (mem, obj, data, cache, spill, _dir) = half_spilled().await;
    let mut out = [0u8; 4096];
    for off in [8192, LARGE_BLOCK + 122_880, 3 * LARGE_BLOCK + 8192] {
        random_read(&cache, &obj, off, &mut out).await;
        assert!(out[..] == data[off as usize..][..4096], "bytes at {off}");
    }
    settle().await;
    assert_eq!(mem.counts()["get"], 4, "no GET");
    assert_eq!(spill.stats().seals, 2, "nothing evicted, nothing sealed");
    assert_eq!(
        spill.stats().opened_bytes,
        2 * 4096,
        "one chunk per spilled read"
    );
    assert!(!cache.cached(&obj, LARGE_BLOCK, 0) && !cache.cached(&obj, SMALL_BLOCK, 0));
    // a read spanning two chunks opens both; one spanning blocks is copied together
    let mut out = vec![0u8; 6000];
    random_read(&cache, &obj, 4000, &mut out).await;
    assert!(out[..] == data[4000..10_000]);
    let off = LARGE_BLOCK - 3000;
    assert!(cache.read_random(&obj, off, 6000).await.unwrap().is_none());
    let block = cache.random_block_size(&obj, off);
    cache.read(&obj, off, &mut out, block).await.unwrap();
    assert!(out[..] == data[off as usize..][..6000]);
}

#[tokio::test]
async fn a_tampered_spill_falls_back_to_the_server() {
    let (mem, obj, data, cache, spill, _dir) = half_spilled().await;
    for f in spill.files() {
        let len = f.metadata().unwrap().len();
        f.write_all_at(&vec![0x55; len as usize], 0).unwrap();
    }
    let mut out = [0u8; 4096];
    let off = LARGE_BLOCK + 70_000;
    random_read(&cache, &obj, off, &mut out).await;
    assert!(out[..] == data[off as usize..][..4096]);
    assert_eq!(mem.counts()["get"], 5, "the small block was fetched");
    assert_eq!(
        spill.stats().clean_blocks,
        1,
        "the failed block was dropped"
    );
}

#[tokio::test]
async fn a_block_evicted_again_is_not_sealed_again() {
    let (mem, obj, data, cache, spill, _dir) = half_spilled().await;
    let mut out = vec![0u8; LARGE_BLOCK as usize];
    // 0 and 1 come back from the spill tier and push 2 and 3 out (sealed: 4 seals), then
    // 2 and 3 come back and push 0 and 1 out, which are sealed already
    for i in [0, 1, 2, 3, 0, 1] {
        let off = i * LARGE_BLOCK;
        cache.read(&obj, off, &mut out, LARGE_BLOCK).await.unwrap();
        assert!(out[..] == data[off as usize..][..out.len()]);
        settle().await;
    }
    assert_eq!(spill.stats().seals, 4, "each block sealed once");
    assert_eq!(mem.counts()["get"], 4, "and fetched once");
}

/// `data` stored in `mem` as object "o", and the reference a reader uses.
async fn stored(mem: &MemStore, data: &[u8]) -> ObjectRef {
    mem.put("o", bytes::Bytes::from(data.to_vec()), &Metadata::new())
        .await
        .unwrap();
    let info = mem.head("o").await.unwrap();
    ObjectRef {
        key: "o".into(),
        etag: info.etag,
        size: info.size,
        sealing: Sealing::PRIMARY,
    }
}
