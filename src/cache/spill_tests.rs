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
    fn files(&self) -> Vec<Arc<File>> {
        let st = self.inner.state.lock().unwrap();
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
    let r = spill.open_into(sealed, part_aad(1, 0, 1), buf).await;
    assert!(matches!(r, Err(SpillError::Tampered)));
    let buf = arena.alloc(100).await.unwrap();
    let r = spill.open_into(sealed, part_aad(2, 0, 0), buf).await;
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
        for off in (10..len).step_by((4096 + TAG_LEN) as usize) {
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
    for _ in 0..10_000 {
        assert!(seen.insert(spill.next_nonce()));
    }
    // a second tier (another mount) has another key and prefix
    let (_d2, _a2, other) = tier(1 << 20);
    assert_ne!(&other.inner.key[..], &spill.inner.key[..]);
}

#[tokio::test]
async fn capacity_is_bounded_and_dirty_parts_are_never_dropped() {
    let stride = 4096 + TAG_LEN;
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
    assert_eq!(spill.stats().bytes, 8192 + TAG_LEN);
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
