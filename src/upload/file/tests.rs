use super::*;
use crate::s3::mem::MemStore;
use rand::{Rng, SeedableRng};

const P: u64 = 5 << 20;

fn ctx(mem: &MemStore) -> WriteContext {
    ctx_with(mem, 256 << 20, None)
}

/// A small arena with a spill tier of `spill` bytes in `dir`.
fn spill_ctx(mem: &MemStore, arena: usize, dir: &std::path::Path, spill: u64) -> WriteContext {
    ctx_with(mem, arena, Some((dir, spill)))
}

fn ctx_with(mem: &MemStore, cap: usize, spill: Option<(&std::path::Path, u64)>) -> WriteContext {
    let arena = Arena::with_cap_unchecked(cap);
    let spill = spill.map(|(d, n)| Spill::create(d, n, &arena).unwrap());
    let store: Arc<dyn ObjectStore> = Arc::new(mem.clone());
    WriteContext {
        // as in a mount, the read cache gets part of the arena, not more than all of it
        cache: Arc::new(BlockCache::new(
            store.clone(),
            arena.clone(),
            (cap as u64 / 4).min(32 << 20),
        )),
        store,
        arena,
        config: UploadConfig {
            part_size: P,
            part_concurrency: 4,
            ..UploadConfig::default()
        },
        upload_slots: Arc::new(Semaphore::new(8)),
        spill,
    }
}

fn target(key: &str) -> Target {
    Target {
        key: key.into(),
        meta: Metadata::new(),
    }
}

#[tokio::test]
async fn small_file_is_one_put() {
    let mem = MemStore::new("k");
    let c = ctx(&mem);
    let mut f = FileContent::new(None, &c.config);
    f.write(&c, &target("a"), 0, b"hello").await.unwrap();
    f.write(&c, &target("a"), 10, b"world").await.unwrap();
    f.flush(&c, &target("a")).await.unwrap();
    assert_eq!(mem.raw("a").unwrap(), b"hello\0\0\0\0\0world");
    assert_eq!(mem.counts()["put"], 1);
}

#[tokio::test]
async fn sequential_big_write_streams_parts() {
    let mem = MemStore::new("k");
    let c = ctx(&mem);
    let mut f = FileContent::new(None, &c.config);
    let block = vec![7u8; 1 << 20];
    for i in 0..23u64 {
        f.write(&c, &target("big"), i << 20, &block).await.unwrap();
    }
    // parts behind the writer left memory before close: at most the last chunk is held
    assert!(
        f.buffered_bytes() <= P as usize,
        "{} bytes held",
        f.buffered_bytes()
    );
    f.flush(&c, &target("big")).await.unwrap();
    let data = mem.raw("big").unwrap();
    assert_eq!(data.len(), 23 << 20);
    assert!(data.iter().all(|&b| b == 7));
}

/// A slow part holds only its own place among the parts in flight: the writer goes on while
/// later parts finish (waiting for the oldest part first left the window to drain behind it).
#[tokio::test]
async fn a_slow_part_does_not_stall_the_parts_after_it() {
    let mem = MemStore::new("k");
    let c = ctx(&mem);
    let gate = mem.hold_part(1);
    let mut f = FileContent::new(None, &c.config);
    let t = target("slow");
    let parts = 3 * c.config.part_concurrency as u64;
    let expect: Vec<u8> = (0..parts * P).map(|i| (i % 253) as u8).collect();
    let write = async {
        for (i, piece) in expect.chunks(1 << 20).enumerate() {
            f.write(&c, &t, (i as u64) << 20, piece).await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), write)
        .await
        .expect("the writer must not wait for part 1 while the later parts finish");
    gate.add_permits(1);
    f.flush(&c, &t).await.unwrap();
    assert_eq!(mem.raw("slow").unwrap(), expect);
}

#[tokio::test]
async fn one_byte_edit_of_big_object_uploads_one_part() {
    let mem = MemStore::new("k");
    let c = ctx(&mem);
    let original: Vec<u8> = (0..(20 * P as usize + 123))
        .map(|i| (i % 251) as u8)
        .collect();
    mem.put("big", Bytes::from(original.clone()), &Metadata::new())
        .await
        .unwrap();
    let info = mem.head("big").await.unwrap();
    let base = ObjectRef {
        key: "big".into(),
        etag: info.etag,
        size: info.size,
        sealing: Sealing::PRIMARY,
    };
    let before = mem.uploaded_bytes();
    let mut f = FileContent::new(Some(base), &c.config);
    f.write(&c, &target("big"), 7 * P + 5, b"X").await.unwrap();
    f.flush(&c, &target("big")).await.unwrap();
    let mut expect = original.clone();
    expect[(7 * P + 5) as usize] = b'X';
    assert_eq!(mem.raw("big").unwrap(), expect);
    let uploaded = mem.uploaded_bytes() - before;
    assert!(uploaded <= P, "uploaded {uploaded} bytes for a 1-byte edit");
    assert_eq!(mem.counts()["upload_part_copy"], 20);
}

/// A file 3× the arena written at random offsets: chunks are sealed to the spill tier
/// instead of the writer waiting forever for memory, and the upload is exact.
#[tokio::test]
async fn random_writes_larger_than_the_arena_go_through_the_spill_tier() {
    let mem = MemStore::new("k");
    let dir = tempfile::tempdir().unwrap();
    let c = spill_ctx(&mem, 4 * P as usize, dir.path(), 64 * P);
    let t = target("r");
    let total = 12 * P as usize;
    let piece = 1 << 20;
    let mut order: Vec<usize> = (0..total / piece).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
    let pattern = |i: usize| (i.wrapping_mul(2654435761) >> 7) as u8;
    let expect: Vec<u8> = (0..total).map(pattern).collect();
    let mut f = FileContent::new(None, &c.config);
    let write = async {
        for &p in &order {
            let off = p * piece;
            f.write(&c, &t, off as u64, &expect[off..off + piece])
                .await
                .unwrap();
        }
        // reads see sealed data too
        let mut out = vec![0u8; 3 << 20];
        let n = f.read(&c, &t, 7 << 20, &mut out).await.unwrap();
        assert_eq!(&out[..n], &expect[7 << 20..(7 << 20) + n]);
        f.flush(&c, &t).await.unwrap();
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), write)
        .await
        .expect("writes larger than the arena must not hang with a spill tier");
    assert_eq!(mem.raw("r").unwrap(), expect);
    assert!(c.arena.in_use() <= c.arena.cap());
    assert_eq!(
        c.spill.as_ref().unwrap().stats().dirty_parts,
        0,
        "slots freed"
    );
}

/// Random writes, truncates and reads against a plain Vec model.
#[tokio::test]
async fn random_operations_match_a_model() {
    model_test(&MemStore::new("k"), ctx).await;
}

/// The same with an arena of 3 parts and a spill tier: chunks move in and out of it.
#[tokio::test]
async fn random_operations_match_a_model_through_the_spill_tier() {
    let dir = tempfile::tempdir().unwrap();
    model_test(&MemStore::new("k"), |mem| {
        spill_ctx(mem, 3 * P as usize, dir.path(), 64 * P)
    })
    .await;
}

async fn model_test(mem: &MemStore, make: impl Fn(&MemStore) -> WriteContext) {
    let mem = mem.clone();
    let c = make(&mem);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x55ecf5);
    let mut model: Vec<u8> = Vec::new();
    let mut f = FileContent::new(None, &c.config);
    let t = target("m");
    for step in 0..300 {
        match rng.gen_range(0..10) {
            0..=4 => {
                let off = rng.gen_range(0..(3 * P));
                let len = rng.gen_range(1..200_000usize);
                let byte = rng.gen::<u8>();
                let data = vec![byte; len];
                f.write(&c, &t, off, &data).await.unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            5 => {
                let n = rng.gen_range(0..(3 * P));
                f.truncate(&c, &t, n).await.unwrap();
                model.resize(n as usize, 0);
            }
            6..=7 => {
                let off = rng.gen_range(0..(3 * P));
                let mut out = vec![0u8; rng.gen_range(1..300_000)];
                let n = f.read(&c, &t, off, &mut out).await.unwrap();
                let expect = model.get(off as usize..).unwrap_or(&[]);
                let expect = &expect[..expect.len().min(out.len())];
                assert_eq!(&out[..n], expect, "step {step}");
            }
            _ => {
                f.flush(&c, &t).await.unwrap();
                assert_eq!(mem.raw("m").unwrap(), model, "step {step}");
            }
        }
        assert_eq!(f.size(), model.len() as u64);
    }
    f.flush(&c, &t).await.unwrap();
    assert_eq!(mem.raw("m").unwrap(), model);
}
