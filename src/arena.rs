//! The locked-memory arena: the only owner of memory that holds plaintext or key material.
//!
//! Design: every buffer is an anonymous private mapping that is `mlock`ed (never swapped),
//! `MADV_DONTDUMP` (never in a core file) and `MADV_DONTFORK` (never in a child). The arena
//! counts every byte against one cap (`--cache-size`); a caller that would exceed it waits
//! (backpressure) until another buffer is released, so plaintext memory is bounded and a
//! writer is slowed down rather than failed. Buffers are zeroed when released, and freed
//! mappings are kept in a small pool of common sizes so the hot path does not `mmap` each time.
//!
//! The memory `unsafe` of the project lives in this module (system calls in `crate::sys`);
//! each block says why it is sound.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// Accounting granularity: the cap is tracked in units of this many bytes.
const UNIT: usize = 4096;

/// How many freed mappings of one size are kept for reuse.
const POOL_PER_SIZE: usize = 16;

/// Why an arena could not be created or a buffer could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    /// RLIMIT_MEMLOCK is below the cap and could not be raised.
    #[error(
        "locked-memory limit is {limit} bytes but the cache needs {needed} bytes; raise it with \
         `ulimit -l unlimited` (shell), `LimitMEMLOCK=infinity` (systemd unit) or a memlock line \
         in /etc/security/limits.conf, or pass a smaller --cache-size (or --cache-size auto)"
    )]
    MemlockLimit { limit: u64, needed: u64 },
    /// mmap or mlock failed for one buffer.
    #[error("cannot lock {size} bytes of memory: {source}")]
    Lock {
        size: usize,
        #[source]
        source: std::io::Error,
    },
    /// A single request larger than the whole cap.
    #[error("a buffer of {size} bytes cannot fit in a cache of {cap} bytes")]
    TooLarge { size: usize, cap: usize },
    /// No memory came free in time: everything under the cap stayed held (by files being
    /// written, uploads and reads in flight). Bounded, so that no request waits forever.
    #[error(
        "no {size} bytes of locked memory came free within {waited_s} s (--cache-size {cap}          bytes is in use by files being written and reads); raise --cache-size or write fewer          files at once"
    )]
    Exhausted {
        size: usize,
        cap: usize,
        waited_s: u64,
    },
}

/// One mapped, locked region (no accounting: that lives in [`LockedBuf`]).
struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Region is a uniquely owned private mapping; moving it between threads is fine.
unsafe impl Send for Region {}
// SAFETY: shared access only hands out `&[u8]` (reads); mutation needs `&mut Region`.
unsafe impl Sync for Region {}

impl Region {
    fn map(len: usize) -> Result<Region, ArenaError> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ArenaError::Lock {
                size: len,
                source: std::io::Error::last_os_error(),
            });
        }
        let region = Region {
            ptr: ptr.cast(),
            len,
        };
        // SAFETY: ptr/len describe the mapping created above, owned by `region`.
        unsafe {
            // Advice failures are not fatal to confidentiality of the locked pages themselves;
            // DONTDUMP/DONTFORK are best effort on kernels that lack them.
            libc::madvise(ptr, len, libc::MADV_DONTDUMP);
            libc::madvise(ptr, len, libc::MADV_DONTFORK);
            if libc::mlock(ptr, len) != 0 {
                let source = std::io::Error::last_os_error();
                drop(region);
                return Err(ArenaError::Lock { size: len, source });
            }
        }
        Ok(region)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is len bytes, readable and writable, and uniquely borrowed here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is len bytes and readable; shared borrow of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Overwrite the first `n` bytes with zeros in a way the compiler cannot elide.
    fn wipe(&mut self, n: usize) {
        let n = n.min(self.len);
        zeroize::Zeroize::zeroize(&mut self.as_mut_slice()[..n]);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.wipe(self.len);
        // SAFETY: ptr/len are exactly the mapping made in `map`, unmapped once here.
        unsafe {
            libc::munlock(self.ptr.cast(), self.len);
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

struct Inner {
    cap: usize,
    permits: Semaphore,
    /// Freed, already-zeroed regions by size, reused before mapping new ones.
    pool: Mutex<HashMap<usize, Vec<Region>>>,
    /// Bytes currently handed out (for VmLck checks and stats).
    in_use: std::sync::atomic::AtomicUsize,
}

/// Shared handle to the arena; cheap to clone.
#[derive(Clone)]
pub struct Arena {
    inner: Arc<Inner>,
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("cap", &self.inner.cap)
            .field("in_use", &self.in_use())
            .finish()
    }
}

fn units(len: usize) -> usize {
    len.div_ceil(UNIT)
}

/// Round a request up to whole pages (the unit of mapping and locking).
fn round_len(len: usize) -> usize {
    units(len.max(1)) * UNIT
}

impl Arena {
    /// Create an arena that will hand out at most `cap` bytes of locked memory.
    ///
    /// Raises RLIMIT_MEMLOCK to the cap where the process may; fails with a message that says
    /// how to raise it when the limit is too low (never falls back to unlocked memory). With
    /// `shrink_to_limit` (the user's `--cache-size auto`), the cap shrinks to the limit instead.
    pub fn new(cap: usize, shrink_to_limit: bool) -> Result<Arena, ArenaError> {
        let cap = round_len(cap);
        // The key and small bookkeeping buffers also need locked memory: keep 1 MiB headroom.
        let needed = (cap + (1 << 20)) as u64;
        let limit = raise_memlock_limit(needed);
        let cap = if limit < needed && !has_cap_ipc_lock() {
            if shrink_to_limit && limit > (2 << 20) {
                round_len((limit - (1 << 20)) as usize) - UNIT
            } else {
                return Err(ArenaError::MemlockLimit { limit, needed });
            }
        } else {
            cap
        };
        Ok(Self::with_cap_unchecked(cap))
    }

    /// An arena without touching process limits (unit tests, small caps).
    pub fn with_cap_unchecked(cap: usize) -> Arena {
        let cap = round_len(cap);
        Arena {
            inner: Arc::new(Inner {
                cap,
                permits: Semaphore::new(units(cap)),
                pool: Mutex::new(HashMap::new()),
                in_use: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// The cap in bytes.
    pub fn cap(&self) -> usize {
        self.inner.cap
    }

    /// Bytes that can be allocated right now: neither handed out nor set aside in a reserve.
    pub fn free(&self) -> usize {
        self.inner.permits.available_permits() * UNIT
    }

    /// Bytes handed out right now.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Allocate a zeroed locked buffer of `len` bytes, waiting while the cap is reached.
    pub async fn alloc(&self, len: usize) -> Result<LockedBuf, ArenaError> {
        let size = round_len(len);
        if size > self.inner.cap {
            return Err(ArenaError::TooLarge {
                size,
                cap: self.inner.cap,
            });
        }
        let permit = self
            .inner
            .permits
            .acquire_many(units(size) as u32)
            .await
            .expect("arena semaphore is never closed");
        permit.forget();
        self.finish_alloc(size, len)
    }

    /// [`Arena::alloc`] waiting at most `limit` for memory to come free.
    pub async fn alloc_within(
        &self,
        len: usize,
        limit: std::time::Duration,
    ) -> Result<LockedBuf, ArenaError> {
        match tokio::time::timeout(limit, self.alloc(len)).await {
            Ok(r) => r,
            Err(_) => Err(self.exhausted(len, limit)),
        }
    }

    fn exhausted(&self, len: usize, limit: std::time::Duration) -> ArenaError {
        ArenaError::Exhausted {
            size: round_len(len),
            cap: self.inner.cap,
            waited_s: limit.as_secs(),
        }
    }

    /// Set `len` bytes aside for one writer, waiting at most `limit`. A writer takes its
    /// reserve *before* it holds any memory, and draws on it without waiting: writers that
    /// each held part of what they need while waiting for the rest could fill the cap
    /// together and wait forever.
    pub async fn reserve(
        &self,
        len: usize,
        limit: std::time::Duration,
    ) -> Result<Reserve, ArenaError> {
        let size = round_len(len).min(self.inner.cap);
        let acquire = self.inner.permits.acquire_many(units(size) as u32);
        match tokio::time::timeout(limit, acquire).await {
            Ok(permit) => {
                permit.expect("arena semaphore is never closed").forget();
                Ok(Reserve {
                    arena: self.clone(),
                    units: units(size),
                })
            }
            Err(_) => Err(self.exhausted(len, limit)),
        }
    }

    /// Allocate without waiting; `None` when the cap is reached right now.
    pub fn try_alloc(&self, len: usize) -> Option<Result<LockedBuf, ArenaError>> {
        let size = round_len(len);
        let permit = self
            .inner
            .permits
            .try_acquire_many(units(size) as u32)
            .ok()?;
        permit.forget();
        Some(self.finish_alloc(size, len))
    }

    fn finish_alloc(&self, size: usize, len: usize) -> Result<LockedBuf, ArenaError> {
        let pooled = self
            .inner
            .pool
            .lock()
            .unwrap()
            .get_mut(&size)
            .and_then(Vec::pop);
        let region = match pooled {
            Some(r) => r,
            None => match Region::map(size) {
                Ok(r) => r,
                Err(e) => {
                    self.inner.permits.add_permits(units(size));
                    return Err(e);
                }
            },
        };
        self.inner
            .in_use
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        Ok(LockedBuf {
            region: Some(region),
            len,
            dirty: 0,
            arena: self.clone(),
        })
    }

    fn release(&self, region: Region, dirty: usize) {
        let size = region.len;
        self.unmap_or_pool(region, dirty);
        self.inner.permits.add_permits(units(size));
    }

    /// Wipe and pool (or unmap) a region, keeping its permits with the caller.
    fn unmap_or_pool(&self, mut region: Region, dirty: usize) {
        region.wipe(dirty);
        let size = region.len;
        {
            let mut pool = self.inner.pool.lock().unwrap();
            let slot = pool.entry(size).or_default();
            if slot.len() < POOL_PER_SIZE {
                slot.push(region);
            } else {
                drop(region);
            }
        }
        self.inner
            .in_use
            .fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Locked memory set aside for one writer (see [`Arena::reserve`]); what is left goes back
/// to the arena when it is dropped.
pub struct Reserve {
    arena: Arena,
    units: usize,
}

impl Reserve {
    /// A buffer from the reserve, without waiting; `None` when the reserve is too small.
    pub fn take(&mut self, len: usize) -> Option<Result<LockedBuf, ArenaError>> {
        let size = round_len(len);
        let need = units(size);
        if need > self.units {
            return None;
        }
        self.units -= need;
        // on failure finish_alloc gives the permits back to the arena
        Some(self.arena.finish_alloc(size, len))
    }

    /// Free `buf` into the reserve (a chunk that grew: its old buffer).
    pub fn recycle(&mut self, mut buf: LockedBuf) {
        if let Some(region) = buf.region.take() {
            let size = region.len;
            self.arena.unmap_or_pool(region, buf.dirty);
            self.units += units(size);
        }
    }

    /// Bytes left to take.
    pub fn bytes(&self) -> usize {
        self.units * UNIT
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        self.arena.inner.permits.add_permits(self.units);
    }
}

impl fmt::Debug for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reserve({} bytes)", self.bytes())
    }
}

/// Try to raise RLIMIT_MEMLOCK (soft, and hard when privileged) to `needed`; return the soft
/// limit in force afterwards.
fn raise_memlock_limit(needed: u64) -> u64 {
    let Ok((soft, hard)) = crate::sys::memlock_limit() else {
        return 0;
    };
    if soft == libc::RLIM_INFINITY || soft >= needed {
        return soft;
    }
    // First try raising the hard limit too (works as root), then only the soft one.
    if crate::sys::set_memlock_limit(needed, needed.max(hard)).is_ok() {
        return needed;
    }
    let want = if hard == libc::RLIM_INFINITY || hard >= needed {
        needed
    } else {
        hard
    };
    if crate::sys::set_memlock_limit(want, hard).is_ok() {
        return want;
    }
    soft
}

/// CAP_IPC_LOCK lets a process lock memory beyond RLIMIT_MEMLOCK (root in most setups).
pub(crate) fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// A buffer of locked memory. Its bytes are zeroed before it is handed out again, and it
/// counts against the arena's cap until dropped. `len` is the usable length; the mapping may
/// be larger (rounded to pages).
pub struct LockedBuf {
    region: Option<Region>,
    len: usize,
    /// High-water mark of bytes exposed mutably: only these need wiping on release.
    dirty: usize,
    arena: Arena,
}

impl LockedBuf {
    /// Usable capacity of the underlying mapping (≥ `len`).
    pub fn capacity(&self) -> usize {
        self.region.as_ref().map_or(0, |r| r.len)
    }

    /// Change the usable length within the capacity; new bytes are zero.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "LockedBuf::set_len beyond capacity");
        // Keep the invariant that bytes past len are zero. Only bytes below `dirty` were ever
        // writable, so only those need zeroing (a fresh buffer cut to 0 costs nothing).
        if len < self.dirty {
            let dirty = self.dirty;
            self.region.as_mut().unwrap().as_mut_slice()[len..dirty].fill(0);
            self.dirty = len;
        }
        self.len = len;
    }

    /// The arena this buffer belongs to.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }
}

impl Deref for LockedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.region.as_ref().unwrap().as_slice()[..self.len]
    }
}

impl DerefMut for LockedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.dirty = self.dirty.max(self.len);
        let len = self.len;
        &mut self.region.as_mut().unwrap().as_mut_slice()[..len]
    }
}

impl AsRef<[u8]> for LockedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for LockedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the contents: they are plaintext
        write!(f, "LockedBuf({} bytes)", self.len)
    }
}

impl Drop for LockedBuf {
    fn drop(&mut self) {
        if let Some(region) = self.region.take() {
            self.arena.release(region, self.dirty);
        }
    }
}

/// Read VmLck (locked memory, bytes) of this process from /proc, for tests and stats.
pub fn vm_locked_bytes() -> Option<u64> {
    proc_status_bytes("VmLck:")
}

/// A `kB` field of /proc/self/status (`VmLck:`, `VmRSS:`), in bytes.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffers_are_zeroed_on_reuse_and_counted() {
        let arena = Arena::with_cap_unchecked(64 * 1024);
        {
            let mut b = arena.alloc(10_000).await.unwrap();
            assert_eq!(b.len(), 10_000);
            assert!(b.iter().all(|&x| x == 0));
            b.fill(0xAB);
            assert_eq!(arena.in_use(), 12 * 1024);
        }
        assert_eq!(arena.in_use(), 0);
        // the same-size region comes back from the pool, wiped
        let b = arena.alloc(10_000).await.unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }

    #[tokio::test]
    async fn cap_is_enforced_with_backpressure() {
        let arena = Arena::with_cap_unchecked(16 * 1024);
        let a = arena.alloc(12 * 1024).await.unwrap();
        assert!(arena.try_alloc(8 * 1024).is_none());
        assert!(matches!(
            arena.alloc(1 << 20).await,
            Err(ArenaError::TooLarge { .. })
        ));
        let arena2 = arena.clone();
        let waiter = tokio::spawn(async move { arena2.alloc(8 * 1024).await.map(|b| b.len()) });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "allocation must wait for memory");
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), 8 * 1024);
    }

    /// `Locked:` of the mapping that holds `addr`, in bytes, from /proc/self/smaps. Per
    /// mapping, so tests running alongside (allocating and freeing their own locked buffers)
    /// cannot disturb it, as they did a before/after reading of the process-wide VmLck.
    fn locked_bytes_at(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split(' ').next().and_then(|r| r.split_once('-'));
            if let Some((Ok(a), Ok(b))) =
                range.map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)))
            {
                inside = (a..b).contains(&addr);
            } else if let Some(kb) = line.strip_prefix("Locked:").filter(|_| inside) {
                return kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .map(|k| k << 10);
            }
        }
        None
    }

    #[tokio::test]
    async fn memory_is_locked() {
        let arena = Arena::with_cap_unchecked(4 << 20);
        let b = arena.alloc(2 << 20).await.unwrap();
        let locked = locked_bytes_at(b.as_ptr() as usize).expect("the buffer's mapping in smaps");
        assert!(
            locked >= 2 << 20,
            "{locked} bytes of a 2 MiB buffer are locked"
        );
        assert!(
            vm_locked_bytes().unwrap_or(0) >= 2 << 20,
            "VmLck does not count it"
        );
    }

    #[tokio::test]
    async fn set_len_zeroes_the_tail() {
        let arena = Arena::with_cap_unchecked(64 * 1024);
        let mut b = arena.alloc(8192).await.unwrap();
        b.fill(7);
        b.set_len(100);
        b.set_len(8192);
        assert!(b[100..].iter().all(|&x| x == 0));
        assert!(b[..100].iter().all(|&x| x == 7));
    }

    #[test]
    fn debug_never_shows_contents() {
        let arena = Arena::with_cap_unchecked(8192);
        let mut b = arena.try_alloc(16).unwrap().unwrap();
        b.copy_from_slice(b"SECRETSECRETSECR");
        assert!(!format!("{b:?}").contains("SECRET"));
    }
}
