//! Tests of the sealed spill tier.

use super::*;

fn tier(cap: u64) -> (tempfile::TempDir, Arena, Spill) {
    let dir = tempfile::tempdir().unwrap();
    let arena = Arena::with_cap_unchecked(8 << 20);
    let spill = Spill::create(dir.path(), cap, &arena).unwrap();
    (dir, arena, spill)
}

async fn filled(arena: &Arena, len: usize, byte: u8) -> LockedBuf {
    let mut b = arena.alloc(len).await.unwrap();
    b.fill(byte);
    b
}

impl Spill {
    /// The spill files of this tier (as /proc/PID/fd would give them to an attacker).
    pub(crate) fn files(&self) -> Vec<Arc<File>> {
        let st = self.inner.state.lock();
        st.classes.values().map(|c| c.file.clone()).collect()
    }
}

#[tokio::test]
async fn round_trip_leaves_nothing_in_the_directory() {
    let (dir, arena, spill) = tier(1 << 20);
    let aad = block_aad("k", "e", 4096, 3);
    spill
        .put_clean(aad.clone(), 4096, filled(&arena, 4000, 0x5a).await)
        .await;
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let got = spill.get_clean(&aad, &arena).await.unwrap();
    assert_eq!(got.len(), 4000);
    assert!(got.iter().all(|&b| b == 0x5a));
    assert!(spill
        .get_clean(&block_aad("k", "e", 4096, 4), &arena)
        .await
        .is_none());
    // dirty parts too
    let part = spill
        .seal_part(part_aad(1, 2, 3), filled(&arena, 5000, 7).await)
        .await
        .unwrap();
    let back = part.open(&arena, 8192).await.unwrap();
    assert_eq!(back.len(), 5000);
    assert!(back.capacity() >= 8192);
    assert!(back.iter().all(|&b| b == 7));
}

#[tokio::test]
async fn wrong_associated_data_fails() {
    let (_d, arena, spill) = tier(1 << 20);
    let part = spill
        .seal_part(part_aad(1, 0, 0), filled(&arena, 100, 1).await)
        .await
        .unwrap();
    let sealed = part.sealed;
    let buf = arena.alloc(100).await.unwrap();
    let r = spill.open_into(sealed, part_aad(1, 0, 1), 0..1, buf).await;
    assert!(matches!(r, Err(SpillError::Tampered)));
    let buf = arena.alloc(100).await.unwrap();
    let r = spill.open_into(sealed, part_aad(2, 0, 0), 0..1, buf).await;
    assert!(matches!(r, Err(SpillError::Tampered)));
    assert!(part.open(&arena, 100).await.is_ok());
}

#[tokio::test]
async fn tampered_byte_fails_and_clean_block_is_dropped() {
    let (_d, arena, spill) = tier(1 << 20);
    let aad = block_aad("obj", "etag", 4096, 0);
    spill
        .put_clean(aad.clone(), 4096, filled(&arena, 4096, 9).await)
        .await;
    let part = spill
        .seal_part(part_aad(5, 0, 0), filled(&arena, 4096, 3).await)
        .await
        .unwrap();
    let files = spill.files();
    assert_eq!(files.len(), 1);
    for f in &files {
        // one flipped bit in every slot
        let len = f.metadata().unwrap().len();
        for off in (10..len).step_by(slot_len(4096) as usize) {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off).unwrap();
            b[0] ^= 0x01;
            f.write_all_at(&b, off).unwrap();
        }
    }
    assert!(spill.get_clean(&aad, &arena).await.is_none());
    assert_eq!(spill.stats().clean_blocks, 0, "a failed block is dropped");
    assert!(matches!(
        part.open(&arena, 4096).await,
        Err(SpillError::Tampered)
    ));
}

#[tokio::test]
async fn nonces_are_unique() {
    let (_d, _arena, spill) = tier(1 << 20);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1_000 {
        // a buffer of n chunks takes n counter values
        let first = spill.reserve_nonces(10);
        for i in 0..10 {
            assert!(seen.insert(spill.nonce(first + i)));
        }
    }
    // a second tier (another mount) has another key and prefix
    let (_d2, _a2, other) = tier(1 << 20);
    assert_ne!(&other.inner.key[..], &spill.inner.key[..]);
}

#[tokio::test]
async fn capacity_is_bounded_and_dirty_parts_are_never_dropped() {
    let stride = slot_len(4096);
    let (_d, arena, spill) = tier(3 * stride);
    for i in 0..3 {
        let aad = block_aad("o", "e", 4096, i);
        spill
            .put_clean(aad, 4096, filled(&arena, 4096, i as u8).await)
            .await;
    }
    assert_eq!(spill.stats().bytes, 3 * stride);
    // a fourth clean block evicts the least recently used (block 0)
    spill
        .put_clean(
            block_aad("o", "e", 4096, 3),
            4096,
            filled(&arena, 4096, 3).await,
        )
        .await;
    assert_eq!(spill.stats().clean_blocks, 3);
    assert!(spill
        .get_clean(&block_aad("o", "e", 4096, 0), &arena)
        .await
        .is_none());
    // dirty parts push clean blocks out…
    let mut parts = Vec::new();
    for i in 0..3 {
        parts.push(
            spill
                .seal_part(part_aad(1, i, 0), filled(&arena, 4096, 0xd0).await)
                .await
                .unwrap(),
        );
    }
    assert_eq!(spill.stats().clean_blocks, 0);
    assert_eq!(spill.stats().dirty_parts, 3);
    // …but never each other: the tier is full, the buffer comes back intact
    let (e, buf) = spill
        .seal_part(part_aad(1, 9, 0), filled(&arena, 4096, 0xee).await)
        .await
        .unwrap_err();
    assert!(matches!(e, SpillError::Full { .. }));
    assert!(buf.iter().all(|&b| b == 0xee));
    assert!(spill.stats().bytes <= 3 * stride);
    // a clean block does not fit either, and is simply not kept
    spill
        .put_clean(
            block_aad("o", "e", 4096, 7),
            4096,
            filled(&arena, 4096, 1).await,
        )
        .await;
    assert_eq!(spill.stats().clean_blocks, 0);
    for p in &parts {
        assert!(p
            .open(&arena, 4096)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0xd0));
    }
    // dropping parts frees their slots and shrinks the file
    drop(parts);
    assert_eq!(spill.stats().bytes, 0);
    assert_eq!(spill.stats().dirty_parts, 0);
    // different size classes share the bound
    let big = spill
        .seal_part(part_aad(2, 0, 0), filled(&arena, 8192, 2).await)
        .await
        .unwrap();
    assert_eq!(spill.stats().bytes, slot_len(8192));
    drop(big);
}

#[tokio::test]
async fn invalidation_frees_an_objects_blocks() {
    let (_d, arena, spill) = tier(1 << 20);
    for i in 0..3 {
        spill
            .put_clean(
                block_aad("a", "e", 4096, i),
                4096,
                filled(&arena, 10, 1).await,
            )
            .await;
    }
    spill
        .put_clean(
            block_aad("ab", "e", 4096, 0),
            4096,
            filled(&arena, 10, 1).await,
        )
        .await;
    spill.forget_clean("a");
    assert_eq!(spill.stats().clean_blocks, 1, "only `ab` is left");
}

#[tokio::test]
async fn ciphertext_does_not_contain_the_plaintext_or_the_key() {
    let (_d, arena, spill) = tier(1 << 20);
    let mut b = arena.alloc(4096).await.unwrap();
    for (i, c) in b.chunks_mut(16).enumerate() {
        c.copy_from_slice(format!("MARKER-{i:09}").as_bytes());
    }
    let _p = spill.seal_part(part_aad(1, 1, 1), b).await.unwrap();
    let key = spill.inner.key[..KEY_LEN].to_vec();
    for f in spill.files() {
        let mut data = vec![0u8; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut data, 0).unwrap();
        assert!(!data.windows(7).any(|w| w == b"MARKER-"));
        assert!(!data.windows(KEY_LEN).any(|w| w == key));
    }
}

/// A block of `len` bytes whose byte `i` is `i % 251`.
async fn counting(arena: &Arena, len: usize) -> LockedBuf {
    let mut b = arena.alloc(len).await.unwrap();
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i % 251) as u8;
    }
    b
}

#[tokio::test]
async fn a_range_opens_only_the_chunks_it_needs() {
    let (_d, arena, spill) = tier(1 << 20);
    let len = 3 * CHUNK as usize + 100;
    let aad = block_aad("o", "e", 4 * CHUNK, 0);
    spill
        .put_clean(aad.clone(), 4 * CHUNK, counting(&arena, len).await)
        .await;
    let at = |b: &LockedBuf, r: std::ops::Range<usize>| b[r].to_vec();
    let want = |r: std::ops::Range<usize>| r.map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    // across the boundary of chunks 1 and 2: two chunks opened
    let from = CHUNK as usize + 10;
    let (b, r) = spill
        .read_clean(&aad, from as u64..from as u64 + 5000, &arena)
        .await
        .unwrap();
    assert_eq!(at(&b, r), want(from..from + 5000));
    assert_eq!(spill.stats().opened_bytes, 2 * CHUNK);
    // clamped to the block's length, in its short last chunk
    let (b, r) = spill
        .read_clean(&aad, len as u64 - 50..len as u64 + 50, &arena)
        .await
        .unwrap();
    assert_eq!(at(&b, r), want(len - 50..len));
    assert_eq!(spill.stats().opened_bytes, 2 * CHUNK + 100);
    // and the whole block still opens
    let all = spill.get_clean(&aad, &arena).await.unwrap();
    assert_eq!(all.to_vec(), want(0..len));
}

#[tokio::test]
async fn a_tampered_moved_or_swapped_chunk_is_refused() {
    let (_d, arena, spill) = tier(1 << 20);
    let class = 4 * CHUNK;
    let [a, b, c] = [0, 1, 2].map(|i| block_aad("o", "e", class, i));
    for aad in [&a, &b, &c] {
        let buf = counting(&arena, class as usize).await;
        spill.put_clean(aad.clone(), class, buf).await;
    }
    let file = spill.files().pop().unwrap();
    let slot = |aad: &[u8]| spill.inner.state.lock().clean[aad].0.offset();
    let chunk = |at: u64| {
        let mut c = vec![0u8; STRIDE as usize];
        file.read_exact_at(&mut c, at).unwrap();
        c
    };
    let (sa, sb, sc) = (slot(&a), slot(&b), slot(&c));
    // chunks 0 and 1 of `a` swapped (same block, so only their index tells them apart)
    let (c0, c1) = (chunk(sa), chunk(sa + STRIDE));
    file.write_all_at(&c1, sa).unwrap();
    file.write_all_at(&c0, sa + STRIDE).unwrap();
    // chunk 2 of `b` copied over its chunk 0; one bit of `c`'s chunk 0 flipped
    file.write_all_at(&chunk(sb + 2 * STRIDE), sb).unwrap();
    let mut flipped = chunk(sc);
    flipped[7] ^= 0x10;
    file.write_all_at(&flipped, sc).unwrap();
    for aad in [&a, &b, &c] {
        // an untouched chunk still opens on its own…
        let r = 3 * CHUNK..3 * CHUNK + 10;
        assert!(spill.read_clean(aad, r, &arena).await.is_some());
        // …a damaged one is refused, and its block dropped
        assert!(spill.read_clean(aad, 0..10, &arena).await.is_none());
        assert!(spill.get_clean(aad, &arena).await.is_none(), "dropped");
    }
    assert_eq!(spill.stats().clean_blocks, 0);
}
