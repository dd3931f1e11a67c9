//! The sealed spill tier: ciphertext on local disk for data that no longer fits in the arena.
//!
//! Why: the locked arena is small (it is RAM the kernel may never swap), so a working set
//! larger than `--cache-size` is refetched from S3 again and again, and a file written at
//! random offsets that is larger than the cap cannot be buffered at all. The spill tier (opt-in,
//! `--spill-dir`/`--spill-size`) keeps such data on a local disk, but only sealed: AES-256-GCM
//! under a key made fresh at mount time that lives only in the arena and dies with the process
//! (crypto-shredding: nothing on disk can ever be opened once the mount is gone).
//!
//! Design:
//! - **Files**: one file per slot size (cache blocks and write parts differ), created with mode
//!   0600 as `O_TMPFILE` (never linked) or, where the filesystem lacks it, created and unlinked
//!   at once. Nothing is left in the directory, even after a crash.
//! - **Slots**: fixed-size ([`slot_len`]: the ciphertext in [`CHUNK`]-byte chunks, each
//!   followed by its 16-byte tag), a free list per file, positional I/O (`pread`/`pwrite`)
//!   outside the lock. Space is bounded by `--spill-size`:
//!   the sum of file lengths never exceeds it; trailing free slots are truncated away.
//! - **Sealing in place**: a buffer is encrypted inside its own [`LockedBuf`] and written out;
//!   opening reads into a fresh `LockedBuf` and decrypts there (the tag is checked first), so
//!   plaintext never exists outside locked memory (ciphertext is staged in ordinary memory).
//!   Each chunk is its own AEAD message, so a small read opens only the chunks it needs
//!   ([`Spill::read_clean`]). Nonces are 4 random bytes and a 64-bit counter, one counter
//!   value per chunk: never reused under one key. The identity of the data (object key, ETag,
//!   block; or file, part, generation), its length and the chunk's index are the associated
//!   data, so a chunk or slot moved, swapped or replayed on disk fails its tag like a flipped
//!   bit does.
//! - **Two kinds of data**: *clean* cache blocks can be refetched, so they sit in an LRU and
//!   are dropped when space is needed or their tag fails. *Dirty* write parts exist nowhere
//!   else: each is a [`SealedPart`] owned by its file, never evicted; when the tier is full of
//!   them, sealing fails and the writer waits for memory as it does without a spill tier.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use crate::arena::{Arena, LockedBuf};
use crate::sync::{rank, Mutex};

/// Bytes of the GCM tag stored after each slot's ciphertext.
pub const TAG_LEN: u64 = 16;
/// Key length (AES-256).
const KEY_LEN: usize = 32;
/// Plaintext bytes per AEAD chunk. Why: a 4 KiB random read of a spilled 1 MiB block must not
/// read and decrypt the whole block (issue 20: that, and refetching, held such reads to a few
/// hundred a second). 4 KiB is the kernel's read size for random reads; a tag per chunk
/// costs 0.4 % of the disk space.
pub const CHUNK: u64 = 4096;
/// Bytes on disk per chunk: its ciphertext, then its tag.
const STRIDE: u64 = CHUNK + TAG_LEN;

/// Bytes on disk of a slot holding up to `class` bytes (the unit `--spill-size` counts).
pub fn slot_len(class: u64) -> u64 {
    class.div_ceil(CHUNK).max(1) * STRIDE
}

// (defined with the other errors the layers share; named here as the tier's own)
pub use crate::error::SpillError;

/// Where one sealed buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Ciphertext capacity of the slot's file (its size class).
    class: u64,
    index: u64,
}

/// What is needed to open a slot again, besides the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sealed {
    slot: Slot,
    len: usize,
    /// Nonce counter of chunk 0; chunk `i` uses `first + i`.
    first: u64,
}

impl Sealed {
    /// Where the slot starts in its file.
    fn offset(&self) -> u64 {
        self.slot.index * slot_len(self.slot.class)
    }
}

/// The associated data of each chunk of one sealed buffer: the buffer's identity, its length
/// and the chunk's index (built once per buffer, the index rewritten per chunk).
struct ChunkAad {
    bytes: Vec<u8>,
    base: usize,
}

impl ChunkAad {
    fn new(aad: &[u8], len: usize) -> ChunkAad {
        let mut bytes = aad.to_vec();
        bytes.extend_from_slice(b"\0chunk\0");
        bytes.extend_from_slice(&(len as u64).to_le_bytes());
        let base = bytes.len();
        ChunkAad { bytes, base }
    }

    fn at(&mut self, index: u64) -> &[u8] {
        self.bytes.truncate(self.base);
        self.bytes.extend_from_slice(&index.to_le_bytes());
        &self.bytes
    }
}

/// One spill file: all slots of one size.
struct Class {
    file: Arc<File>,
    slots: u64,
    free: BTreeSet<u64>,
}

struct State {
    classes: HashMap<u64, Class>,
    /// Sum of file lengths (what `--spill-size` bounds).
    bytes: u64,
    /// Clean cache blocks by their associated data, with their LRU tick.
    clean: HashMap<Vec<u8>, (Sealed, u64)>,
    lru: BTreeMap<u64, Vec<u8>>,
    tick: u64,
    /// Slots held by dirty write parts.
    dirty: u64,
}

struct Inner {
    dir: PathBuf,
    cap: u64,
    /// The only copy of the key: one locked, non-dumpable page, wiped when the tier is dropped.
    key: LockedBuf,
    nonce_prefix: [u8; 4],
    counter: AtomicU64,
    state: Mutex<State, { rank::SPILL }>,
    tamper_logged: AtomicBool,
    seals: AtomicU64,
    opened_bytes: AtomicU64,
}

/// Handle to the spill tier of one mount; cheap to clone.
#[derive(Clone)]
pub struct Spill {
    inner: Arc<Inner>,
}

impl fmt::Debug for Spill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the key
        let s = self.stats();
        f.debug_struct("Spill")
            .field("dir", &self.inner.dir)
            .field("cap", &self.inner.cap)
            .field("bytes", &s.bytes)
            .field("clean", &s.clean_blocks)
            .field("dirty", &s.dirty_parts)
            .finish()
    }
}

/// Counters for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpillStats {
    /// Bytes of spill files (slots, used or free).
    pub bytes: u64,
    /// Clean cache blocks held.
    pub clean_blocks: usize,
    /// Dirty write parts held.
    pub dirty_parts: u64,
    /// Buffers sealed and written since the tier was made (disk writes, for tests and logs).
    pub seals: u64,
    /// Bytes decrypted since the tier was made (what reads cost in AES work).
    pub opened_bytes: u64,
}

/// Associated data of a clean cache block: its full identity, length-prefixed.
pub fn block_aad(key: &str, etag: &str, block_size: u64, index: u64) -> Vec<u8> {
    let mut aad = block_key_prefix(key);
    push_field(&mut aad, etag.as_bytes());
    aad.extend_from_slice(&block_size.to_le_bytes());
    aad.extend_from_slice(&index.to_le_bytes());
    aad
}

/// The start of [`block_aad`] shared by every block of one object key (for invalidation).
fn block_key_prefix(key: &str) -> Vec<u8> {
    let mut aad = b"ssecfs-block\0".to_vec();
    push_field(&mut aad, key.as_bytes());
    aad
}

/// Associated data of a dirty write part: file identity, part index and seal generation.
pub fn part_aad(file: u64, part: u64, generation: u64) -> Vec<u8> {
    let mut aad = b"ssecfs-part\0".to_vec();
    aad.extend_from_slice(&file.to_le_bytes());
    aad.extend_from_slice(&part.to_le_bytes());
    aad.extend_from_slice(&generation.to_le_bytes());
    aad
}

fn push_field(aad: &mut Vec<u8>, field: &[u8]) {
    aad.extend_from_slice(&(field.len() as u64).to_le_bytes());
    aad.extend_from_slice(field);
}

/// Create an anonymous 0600 file in `dir`: `O_TMPFILE`, else create-and-unlink.
fn anonymous_file(dir: &Path) -> std::io::Result<File> {
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir);
    match tmp {
        Ok(f) => return Ok(f),
        Err(e)
            if !matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
            ) =>
        {
            return Err(e)
        }
        Err(_) => {}
    }
    for attempt in 0..16u32 {
        let mut r = [0u8; 8];
        aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut OsRng, &mut r);
        let path = dir.join(format!(
            ".ssecfs-spill-{}-{:016x}-{attempt}",
            std::process::id(),
            u64::from_le_bytes(r)
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no unused spill file name"))
}

impl Spill {
    /// Set up a spill tier of at most `cap` bytes in `dir`, with a fresh key in `arena`.
    ///
    /// The directory must exist; a probe file is created (and unlinked) so a bad directory
    /// fails the mount instead of the first eviction.
    pub fn create(dir: &Path, cap: u64, arena: &Arena) -> Result<Spill, SpillError> {
        let meta = std::fs::metadata(dir).map_err(|source| SpillError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(SpillError::Dir {
                dir: dir.to_owned(),
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        drop(anonymous_file(dir).map_err(|source| SpillError::Dir {
            dir: dir.to_owned(),
            source,
        })?);
        let mut key = match arena.try_alloc(KEY_LEN) {
            Some(r) => r?,
            None => return Err(SpillError::Full { cap: 0 }),
        };
        aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut OsRng, &mut key);
        let mut nonce_prefix = [0u8; 4];
        aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut OsRng, &mut nonce_prefix);
        Ok(Spill {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                cap,
                key,
                nonce_prefix,
                counter: AtomicU64::new(0),
                state: Mutex::new(State {
                    classes: HashMap::new(),
                    bytes: 0,
                    clean: HashMap::new(),
                    lru: BTreeMap::new(),
                    tick: 0,
                    dirty: 0,
                }),
                tamper_logged: AtomicBool::new(false),
                seals: AtomicU64::new(0),
                opened_bytes: AtomicU64::new(0),
            }),
        })
    }

    /// The configured bound in bytes.
    pub fn cap(&self) -> u64 {
        self.inner.cap
    }

    /// Current counters.
    pub fn stats(&self) -> SpillStats {
        let st = self.inner.state.lock();
        SpillStats {
            bytes: st.bytes,
            clean_blocks: st.clean.len(),
            dirty_parts: st.dirty,
            seals: self.inner.seals.load(Ordering::Relaxed),
            opened_bytes: self.inner.opened_bytes.load(Ordering::Relaxed),
        }
    }

    /// Keep a clean cache block evicted from the arena (best effort: a full tier or an I/O
    /// error just drops it, S3 still has it). `class` is the block size.
    pub async fn put_clean(&self, aad: Vec<u8>, class: u64, buf: LockedBuf) {
        {
            let mut st = self.inner.state.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some((_, old)) = st.clean.get(&aad).map(|(s, t)| (*s, *t)) {
                // already sealed from an earlier eviction: the data cannot have changed
                st.lru.remove(&old);
                st.lru.insert(tick, aad.clone());
                st.clean.get_mut(&aad).unwrap().1 = tick;
                return;
            }
        }
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let sealed = me.seal_blocking(&aad, class, buf, false);
            (me, aad, sealed)
        })
        .await;
        match r {
            Ok((me, aad, Ok(sealed))) => {
                let mut st = me.inner.state.lock();
                st.tick += 1;
                let tick = st.tick;
                if let Some((dup, old)) = st.clean.insert(aad.clone(), (sealed, tick)) {
                    // a concurrent eviction of the same block won: keep one
                    st.lru.remove(&old);
                    me.free_slot(&mut st, dup.slot);
                }
                st.lru.insert(tick, aad);
            }
            Ok((_, _, Err((e, _buf)))) => tracing::trace!(error = %e, "block not spilled"),
            Err(e) => tracing::warn!(error = %e, "spill task failed"),
        }
    }

    /// A clean block from the tier, opened into the arena; `None` when it is not there or
    /// failed its check (then it is dropped, logged once, and the caller refetches it).
    pub async fn get_clean(&self, aad: &[u8], arena: &Arena) -> Option<LockedBuf> {
        let sealed = self.lookup(aad)?;
        let buf = arena.alloc(sealed.len).await.ok()?;
        let all = 0..sealed.len.div_ceil(CHUNK as usize) as u64;
        match self.open_into(sealed, aad.to_vec(), all, buf).await {
            Ok(buf) => Some(buf),
            Err(e) => self.failed(aad, sealed, &e),
        }
    }

    /// Does the tier hold clean block `aad`? (A hint: it may be dropped before it is read.)
    pub fn holds_clean(&self, aad: &[u8]) -> bool {
        self.inner.state.lock().clean.contains_key(aad)
    }

    /// Bytes `range` of a clean block (clamped to its length), opening only the chunks that
    /// hold them: the buffer and where the range lies in it. `None` as for [`Self::get_clean`].
    /// Why: a random read needs 4 KiB of a 1 MiB block, and the block stays sealed here rather
    /// than being promoted into the arena, where it would push another block out (issue 20).
    pub async fn read_clean(
        &self,
        aad: &[u8],
        range: std::ops::Range<u64>,
        arena: &Arena,
    ) -> Option<(LockedBuf, std::ops::Range<usize>)> {
        let sealed = self.lookup(aad)?;
        let end = range.end.min(sealed.len as u64);
        let start = range.start.min(end);
        let chunks = start / CHUNK..end.div_ceil(CHUNK);
        let buf = arena
            .alloc(((chunks.end - chunks.start) * CHUNK) as usize)
            .await
            .ok()?;
        let base = chunks.start * CHUNK;
        match self.open_into(sealed, aad.to_vec(), chunks, buf).await {
            Ok(buf) => Some((buf, (start - base) as usize..(end - base) as usize)),
            Err(e) => self.failed(aad, sealed, &e),
        }
    }

    /// Where the clean block `aad` is sealed, marking it recently used.
    fn lookup(&self, aad: &[u8]) -> Option<Sealed> {
        let mut st = self.inner.state.lock();
        let (sealed, old) = *st.clean.get(aad)?;
        st.tick += 1;
        let tick = st.tick;
        st.lru.remove(&old);
        st.lru.insert(tick, aad.to_vec());
        st.clean.get_mut(aad).unwrap().1 = tick;
        Some(sealed)
    }

    /// Opening `sealed` (block `aad`) failed: drop it and report why. When the block was
    /// dropped or resealed meanwhile, its slot may hold another block now, so the failure
    /// says nothing about the disk and is not reported.
    fn failed<T>(&self, aad: &[u8], sealed: Sealed, e: &SpillError) -> Option<T> {
        let mut st = self.inner.state.lock();
        if let Some((s, t)) = st.clean.get(aad).copied() {
            if s == sealed {
                st.clean.remove(aad);
                st.lru.remove(&t);
                self.free_slot(&mut st, s.slot);
                drop(st);
                self.report_failure(e);
            }
        }
        None
    }

    /// Drop every clean block of object `key` (it was overwritten or deleted).
    pub fn forget_clean(&self, key: &str) {
        let prefix = block_key_prefix(key);
        let mut st = self.inner.state.lock();
        let victims: Vec<Vec<u8>> = st
            .clean
            .keys()
            .filter(|a| a.starts_with(&prefix))
            .cloned()
            .collect();
        for aad in victims {
            if let Some((s, t)) = st.clean.remove(&aad) {
                st.lru.remove(&t);
                self.free_slot(&mut st, s.slot);
            }
        }
    }

    /// Seal a dirty write part (its only copy) to disk, releasing its locked memory. On
    /// failure the buffer comes back intact (decrypted again if it was already sealed).
    pub async fn seal_part(
        &self,
        aad: Vec<u8>,
        buf: LockedBuf,
    ) -> Result<SealedPart, (SpillError, LockedBuf)> {
        let me = self.clone();
        let class = buf.capacity() as u64;
        let joined = tokio::task::spawn_blocking(move || {
            let r = me.seal_blocking(&aad, class, buf, true);
            (me, aad, r)
        })
        .await
        .expect("spill seal task does not panic");
        match joined {
            (me, aad, Ok(sealed)) => Ok(SealedPart {
                spill: me,
                sealed,
                aad,
            }),
            (_, _, Err(e)) => Err(e),
        }
    }

    fn report_failure(&self, e: &SpillError) {
        if matches!(e, SpillError::Tampered) {
            if !self.inner.tamper_logged.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    dir = %self.inner.dir.display(),
                    "a spilled block failed its integrity check: the spill file was tampered \
                     with or the disk corrupted it; the block is dropped and fetched again \
                     (logged once)"
                );
            }
        } else {
            tracing::warn!(error = %e, "reading the spill tier failed; fetching again");
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        // The expanded key lives on this thread's stack for one operation and is wiped on drop
        // (aes/aes-gcm `zeroize`); the key itself stays in the locked page.
        Aes256Gcm::new_from_slice(&self.inner.key[..KEY_LEN]).expect("a 32-byte key")
    }

    /// Reserve `n` consecutive nonce counter values; the first is returned.
    fn reserve_nonces(&self, n: u64) -> u64 {
        let first = self.inner.counter.fetch_add(n, Ordering::Relaxed);
        assert!(
            first.checked_add(n).is_some_and(|e| e < u64::MAX / 2),
            "spill nonce counter exhausted"
        );
        first
    }

    /// The nonce of counter value `n`.
    fn nonce(&self, n: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.inner.nonce_prefix);
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        nonce
    }

    /// Reserve a slot of `class` bytes: a free one, a new one within the bound, or one freed
    /// by dropping least-recently-used clean blocks.
    fn reserve(&self, class: u64) -> Result<(Slot, Arc<File>), SpillError> {
        let stride = slot_len(class);
        let mut st = self.inner.state.lock();
        loop {
            if let Some(c) = st.classes.get_mut(&class) {
                if let Some(index) = c.free.pop_first() {
                    return Ok((Slot { class, index }, c.file.clone()));
                }
            }
            if st.bytes + stride <= self.inner.cap {
                if let std::collections::hash_map::Entry::Vacant(e) = st.classes.entry(class) {
                    e.insert(Class {
                        file: Arc::new(anonymous_file(&self.inner.dir)?),
                        slots: 0,
                        free: BTreeSet::new(),
                    });
                }
                st.bytes += stride;
                let c = st.classes.get_mut(&class).unwrap();
                let index = c.slots;
                c.slots += 1;
                return Ok((Slot { class, index }, c.file.clone()));
            }
            let Some((_, victim)) = st.lru.pop_first() else {
                return Err(SpillError::Full {
                    cap: self.inner.cap,
                });
            };
            if let Some((s, _)) = st.clean.remove(&victim) {
                self.free_slot(&mut st, s.slot);
            }
        }
    }

    /// Return a slot; trailing free slots are cut off the file so the space goes back.
    fn free_slot(&self, st: &mut State, slot: Slot) {
        let stride = slot_len(slot.class);
        let Some(c) = st.classes.get_mut(&slot.class) else {
            return;
        };
        c.free.insert(slot.index);
        let before = c.slots;
        while c.slots > 0 && c.free.remove(&(c.slots - 1)) {
            c.slots -= 1;
        }
        if c.slots < before {
            if let Err(e) = c.file.set_len(c.slots * stride) {
                tracing::debug!(error = %e, "could not shrink a spill file");
            }
            st.bytes -= (before - c.slots) * stride;
        }
    }

    /// Encrypt `buf` in place, chunk by chunk, and write the ciphertext to a new slot. On
    /// error, `buf` is returned with its plaintext restored.
    fn seal_blocking(
        &self,
        aad: &[u8],
        class: u64,
        mut buf: LockedBuf,
        dirty: bool,
    ) -> Result<Sealed, (SpillError, LockedBuf)> {
        let len = buf.len();
        if len as u64 > class {
            return Err((SpillError::Full { cap: class }, buf));
        }
        let (slot, file) = match self.reserve(class) {
            Ok(r) => r,
            Err(e) => return Err((e, buf)),
        };
        let chunks = len.div_ceil(CHUNK as usize);
        let sealed = Sealed {
            slot,
            len,
            first: self.reserve_nonces(chunks as u64),
        };
        let cipher = self.cipher();
        let mut aads = ChunkAad::new(aad, len);
        // ciphertext and tags only: this buffer needs no locking
        let mut out = vec![0u8; chunks * STRIDE as usize];
        for ((i, chunk), at) in buf
            .chunks_mut(CHUNK as usize)
            .enumerate()
            .zip((0..).step_by(STRIDE as usize))
        {
            let nonce = self.nonce(sealed.first + i as u64);
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), aads.at(i as u64), chunk)
                .expect("chunks are far below the GCM length limit");
            out[at..at + chunk.len()].copy_from_slice(chunk);
            out[at + CHUNK as usize..at + STRIDE as usize].copy_from_slice(&tag);
        }
        if let Err(e) = file.write_all_at(&out, sealed.offset()) {
            self.decrypt_chunks(&cipher, sealed, aad, 0, &out, &mut buf)
                .expect("our own ciphertext opens");
            let mut st = self.inner.state.lock();
            self.free_slot(&mut st, slot);
            return Err((e.into(), buf));
        }
        if dirty {
            self.inner.state.lock().dirty += 1;
        }
        self.inner.seals.fetch_add(1, Ordering::Relaxed);
        // `buf` now holds ciphertext; dropping it wipes it and returns the memory.
        Ok(sealed)
    }

    /// Open chunks `chunks` of a slot into `buf`, which gets their plaintext (its capacity
    /// must hold them); every chunk's tag is checked before it is decrypted.
    async fn open_into(
        &self,
        sealed: Sealed,
        aad: Vec<u8>,
        chunks: std::ops::Range<u64>,
        mut buf: LockedBuf,
    ) -> Result<LockedBuf, SpillError> {
        let file = {
            let st = self.inner.state.lock();
            st.classes
                .get(&sealed.slot.class)
                .map(|c| c.file.clone())
                .ok_or(SpillError::Tampered)?
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let end = (chunks.end * CHUNK).min(sealed.len as u64);
            buf.set_len(end.saturating_sub(chunks.start * CHUNK) as usize);
            let mut raw = vec![0u8; (chunks.end.saturating_sub(chunks.start) * STRIDE) as usize];
            file.read_exact_at(&mut raw, sealed.offset() + chunks.start * STRIDE)?;
            me.decrypt_chunks(&me.cipher(), sealed, &aad, chunks.start, &raw, &mut buf)?;
            me.inner
                .opened_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            Ok(buf)
        })
        .await
        .expect("spill open task does not panic")
    }

    /// Decrypt into `buf` the chunks from `first_chunk` on whose ciphertext and tags `raw`
    /// holds (as laid out on disk), as many as `buf` is long.
    fn decrypt_chunks(
        &self,
        cipher: &Aes256Gcm,
        sealed: Sealed,
        aad: &[u8],
        first_chunk: u64,
        raw: &[u8],
        buf: &mut LockedBuf,
    ) -> Result<(), SpillError> {
        let mut aads = ChunkAad::new(aad, sealed.len);
        for ((k, chunk), at) in buf
            .chunks_mut(CHUNK as usize)
            .enumerate()
            .zip((0..).step_by(STRIDE as usize))
        {
            let i = first_chunk + k as u64;
            let nonce = self.nonce(sealed.first + i);
            chunk.copy_from_slice(&raw[at..at + chunk.len()]);
            let tag = Tag::from_slice(&raw[at + CHUNK as usize..at + STRIDE as usize]);
            cipher
                .decrypt_in_place_detached(Nonce::from_slice(&nonce), aads.at(i), chunk, tag)
                .map_err(|_| SpillError::Tampered)?;
        }
        Ok(())
    }
}

/// A dirty write part sealed in the spill tier: the only copy of that data. Dropping it frees
/// the slot (after the part was uploaded, truncated away or discarded).
pub struct SealedPart {
    spill: Spill,
    sealed: Sealed,
    aad: Vec<u8>,
}

impl fmt::Debug for SealedPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedPart({} bytes)", self.sealed.len)
    }
}

impl SealedPart {
    /// Bytes of data sealed.
    pub fn len(&self) -> usize {
        self.sealed.len
    }

    /// Whether no bytes were sealed.
    pub fn is_empty(&self) -> bool {
        self.sealed.len == 0
    }

    /// Open a copy into a new locked buffer of at least `capacity` bytes (the slot stays
    /// reserved until this handle is dropped, so a failed upload loses nothing). A failed
    /// check is an error: there is no other copy of dirty data.
    pub async fn open(&self, arena: &Arena, capacity: usize) -> Result<LockedBuf, SpillError> {
        let buf = arena.alloc(capacity.max(self.sealed.len)).await?;
        let all = 0..self.sealed.len.div_ceil(CHUNK as usize) as u64;
        let r = self
            .spill
            .open_into(self.sealed, self.aad.clone(), all, buf)
            .await;
        if let Err(e) = &r {
            tracing::error!(error = %e, "a sealed write part could not be opened: its data is lost");
        }
        r
    }
}

impl Drop for SealedPart {
    fn drop(&mut self) {
        let mut st = self.spill.inner.state.lock();
        st.dirty -= 1;
        self.spill.free_slot(&mut st, self.sealed.slot);
    }
}

#[cfg(test)]
#[path = "spill_tests.rs"]
mod tests;
