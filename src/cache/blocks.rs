//! Read cache: fixed-size blocks of object data in locked memory, LRU, keyed by ETag.
//!
//! A block is identified by (object key, ETag, block size, index), so a changed object never
//! serves stale data: its new ETag names new blocks and the old ones age out. Two block sizes
//! exist: large blocks for sequential reads (fetched ahead, many at once) and small ones for
//! random reads, which fetch only about what they need. Concurrent readers of one block share
//! a single GET. The cache holds at most `budget` bytes; eviction drops the cache's reference
//! and the memory returns to the arena when the last reader is done with it.
//!
//! With a spill tier (`--spill-dir`), an evicted block that nobody is reading is sealed to
//! disk instead of dropped, and a miss looks there before asking S3.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::OnceCell;

use super::spill::{block_aad, Spill};
use crate::arena::{Arena, LockedBuf};
use crate::error::{FsError, FsResult};
use crate::s3::{ObjectInfo, ObjectStore, ReadSource, S3Error, S3Result, Sealing};
use crate::sync::{rank, Mutex};

/// Block size for sequential reads and read-ahead.
pub const LARGE_BLOCK: u64 = 1 << 20;
/// Read-ahead fetches up to this many consecutive large blocks with one GET (8 MiB): Garage
/// spent 363 CPU ticks serving 1 GiB as 1 MiB ranges and 321 as 8 MiB ones, on a machine where
/// it shares two cores with us.
pub const FETCH_RUN: u64 = 8;
/// Block size for random reads.
pub const SMALL_BLOCK: u64 = 64 << 10;

/// The object a block belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub sealing: Sealing,
}

impl ObjectRef {
    /// What a GET of a block reads: this version of the object, when its ETag is known.
    fn source(&self) -> ReadSource<'_> {
        ReadSource {
            key: &self.key,
            etag: (!self.etag.is_empty()).then_some(self.etag.as_str()),
            sealing: self.sealing,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BlockId {
    key: String,
    etag: String,
    block_size: u64,
    index: u64,
}

type Cell = Arc<OnceCell<Arc<LockedBuf>>>;

struct Lru {
    map: HashMap<BlockId, (Cell, u64)>,
    order: BTreeMap<u64, BlockId>,
    tick: u64,
    bytes: u64,
}

/// The block cache shared by every open file.
pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    arena: Arena,
    budget: u64,
    lru: Mutex<Lru, { rank::CACHE }>,
    spill: Option<Spill>,
}

impl BlockCache {
    /// A cache holding at most `budget` bytes of blocks.
    pub fn new(store: Arc<dyn ObjectStore>, arena: Arena, budget: u64) -> BlockCache {
        BlockCache {
            store,
            arena,
            budget: budget.max(2 * LARGE_BLOCK),
            lru: Mutex::new(Lru {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
            }),
            spill: None,
        }
    }

    /// How many small objects a directory read may fetch ahead: half the cache, counted in
    /// blocks of [`SMALL_BLOCK`] (what each of them takes).
    pub fn small_object_room(&self) -> usize {
        usize::try_from(self.budget / SMALL_BLOCK / 2).unwrap_or(usize::MAX)
    }

    /// Fetch all of the small object `key` (`size` bytes, at most [`SMALL_BLOCK`], as a
    /// listing says) with its attributes in one GET, and cache it as its one block of
    /// [`SMALL_BLOCK`] so the read that follows finds it. `None` when that cannot be done
    /// now (no locked memory free at once, another size, another key): ask HEAD instead.
    pub async fn fetch_whole(&self, key: &str, size: u64) -> Option<S3Result<ObjectInfo>> {
        if size == 0 || size > SMALL_BLOCK {
            return None;
        }
        let mut buf = self.arena.try_alloc(size as usize)?.ok()?;
        let info = match self.store.get_whole(key, &mut buf).await {
            Ok(Some(info)) => info,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        if !info.etag.is_empty() {
            let id = BlockId {
                key: key.to_owned(),
                etag: info.etag.clone(),
                block_size: SMALL_BLOCK,
                index: 0,
            };
            let (cell, victims) = self.cell(&id);
            self.spill_victims(victims);
            // (a reader that got there first fetched the same version)
            let _ = cell.set(Arc::new(buf));
        }
        Some(Ok(info))
    }

    /// Seal evicted blocks into `spill` and look there on a miss.
    pub fn with_spill(mut self, spill: Option<Spill>) -> BlockCache {
        self.spill = spill;
        self
    }

    /// Seal blocks just evicted, when no reader still holds them (best effort, background).
    fn spill_victims(&self, victims: Vec<(BlockId, Cell)>) {
        let Some(spill) = &self.spill else { return };
        for (id, cell) in victims {
            let Some(buf) = Arc::try_unwrap(cell)
                .ok()
                .and_then(OnceCell::into_inner)
                .and_then(|b| Arc::try_unwrap(b).ok())
            else {
                continue;
            };
            let aad = block_aad(&id.key, &id.etag, id.block_size, id.index);
            let spill = spill.clone();
            tokio::spawn(async move { spill.put_clean(aad, id.block_size, buf).await });
        }
    }

    /// The cell of `id` (new if absent) and the blocks evicted to make room for it.
    fn cell(&self, id: &BlockId) -> (Cell, Vec<(BlockId, Cell)>) {
        let mut lru = self.lru.lock();
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((cell, old)) = lru.map.get(id).map(|(c, t)| (c.clone(), *t)) {
            lru.order.remove(&old);
            lru.order.insert(tick, id.clone());
            lru.map.insert(id.clone(), (cell.clone(), tick));
            return (cell, Vec::new());
        }
        let cell: Cell = Arc::default();
        lru.map.insert(id.clone(), (cell.clone(), tick));
        lru.order.insert(tick, id.clone());
        lru.bytes += id.block_size;
        let mut victims = Vec::new();
        while lru.bytes > self.budget {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some((c, _)) = lru.map.remove(&victim) {
                lru.bytes -= victim.block_size;
                victims.push((victim, c));
            }
        }
        (cell, victims)
    }

    fn forget(&self, id: &BlockId) {
        let mut lru = self.lru.lock();
        if let Some((_, tick)) = lru.map.remove(id) {
            lru.order.remove(&tick);
            lru.bytes -= id.block_size;
        }
    }

    /// Drop every cached block of `key` (after we overwrote or deleted it).
    pub fn invalidate(&self, key: &str) {
        if let Some(spill) = &self.spill {
            spill.forget_clean(key);
        }
        let mut lru = self.lru.lock();
        let victims: Vec<BlockId> = lru.map.keys().filter(|id| id.key == key).cloned().collect();
        for id in victims {
            if let Some((_, tick)) = lru.map.remove(&id) {
                lru.order.remove(&tick);
                lru.bytes -= id.block_size;
            }
        }
    }

    /// One block of `obj`, fetched (once, however many readers ask) if not cached.
    pub async fn block(
        &self,
        obj: &ObjectRef,
        block_size: u64,
        index: u64,
    ) -> FsResult<Arc<LockedBuf>> {
        if obj.etag.is_empty() {
            // No version to name it by: a cached block could be served for another version
            // of the object later. Fetched for this read only.
            let start = index * block_size;
            let len = block_size.min(obj.size.saturating_sub(start)) as usize;
            let mut buf = self.arena.alloc(len).await?;
            let n = self
                .store
                .get_range(&ReadSource::latest(&obj.key, obj.sealing), start, &mut buf)
                .await?;
            buf.set_len(n);
            return Ok(Arc::new(buf));
        }
        let id = BlockId {
            key: obj.key.clone(),
            etag: obj.etag.clone(),
            block_size,
            index,
        };
        let (cell, victims) = self.cell(&id);
        self.spill_victims(victims);
        let result = cell
            .get_or_try_init(|| async {
                if let Some(spill) = &self.spill {
                    let aad = block_aad(&id.key, &id.etag, block_size, index);
                    if let Some(buf) = spill.get_clean(&aad, &self.arena).await {
                        return Ok(Arc::new(buf));
                    }
                }
                let start = index * block_size;
                let len = block_size.min(obj.size.saturating_sub(start)) as usize;
                let mut buf = self.arena.alloc(len).await?;
                let n = self.store.get_range(&obj.source(), start, &mut buf).await?;
                buf.set_len(n);
                Ok::<_, FsError>(Arc::new(buf))
            })
            .await;
        match result {
            Ok(b) => Ok(b.clone()),
            Err(e) => {
                self.forget(&id);
                Err(e)
            }
        }
    }

    /// Copy `obj[offset..offset+out.len())` into `out` (clamped to the object size) using
    /// blocks of `block_size`; returns bytes copied.
    pub async fn read(
        &self,
        obj: &ObjectRef,
        offset: u64,
        out: &mut [u8],
        block_size: u64,
    ) -> FsResult<usize> {
        let end = (offset + out.len() as u64).min(obj.size);
        if offset >= end {
            return Ok(0);
        }
        let first = offset / block_size;
        let last = (end - 1) / block_size;
        // Fetch all needed blocks concurrently.
        let blocks =
            futures::future::try_join_all((first..=last).map(|i| self.block(obj, block_size, i)))
                .await?;
        let mut copied = 0usize;
        for (i, b) in (first..=last).zip(blocks) {
            let bstart = i * block_size;
            let from = offset.max(bstart);
            let to = end.min(bstart + block_size);
            let src_from = (from - bstart) as usize;
            let src_to = ((to - bstart) as usize).min(b.len());
            if src_from >= src_to {
                break;
            }
            let dst = (from - offset) as usize;
            out[dst..dst + (src_to - src_from)].copy_from_slice(&b[src_from..src_to]);
            copied = dst + (src_to - src_from);
        }
        Ok(copied)
    }

    /// The block holding all of `obj[offset..offset+len)` (clamped to the object), fetched if
    /// needed, with the range inside it; `None` when the range spans blocks or is empty. Lets
    /// a read be answered straight from the cache, without a copy.
    pub async fn within_one_block(
        &self,
        obj: &ObjectRef,
        offset: u64,
        len: u64,
        block_size: u64,
    ) -> FsResult<Option<(Arc<LockedBuf>, std::ops::Range<usize>)>> {
        let end = (offset + len).min(obj.size);
        if offset >= end || offset / block_size != (end - 1) / block_size {
            return Ok(None);
        }
        let index = offset / block_size;
        let b = self.block(obj, block_size, index).await?;
        let from = ((offset - index * block_size) as usize).min(b.len());
        let to = ((end - index * block_size) as usize).min(b.len());
        Ok(Some((b, from..to)))
    }

    /// Start fetching blocks `[from, to)` in the background (read-ahead). Blocks are fetched
    /// in aligned runs of [`FETCH_RUN`], one GET per run; a run is started only once the
    /// window covers all of it (or the object's end), so a window that slides one block per
    /// read still sends large GETs.
    pub fn prefetch(self: &Arc<Self>, obj: &ObjectRef, block_size: u64, from: u64, to: u64) {
        if obj.etag.is_empty() {
            return; // never cached (see `block`)
        }
        let last = obj.size.div_ceil(block_size);
        // a small window (small cache) gets shorter runs, so it still holds two of them
        let run_len = FETCH_RUN.min((to.saturating_sub(from) / 2).max(1));
        let to = if to >= last {
            last
        } else {
            (to / run_len * run_len).max(from)
        };
        let start = |cells: Vec<(u64, Cell)>| {
            if !cells.is_empty() {
                let me = self.clone();
                let obj = obj.clone();
                tokio::spawn(async move { me.fetch_run(&obj, block_size, cells).await });
            }
        };
        let mut run: Vec<(u64, Cell)> = Vec::new();
        for i in from..to {
            let id = BlockId {
                key: obj.key.clone(),
                etag: obj.etag.clone(),
                block_size,
                index: i,
            };
            if self.lru.lock().map.contains_key(&id) {
                // a gap (a block already cached or coming) ends the run
                start(std::mem::take(&mut run));
                continue;
            }
            let (cell, victims) = self.cell(&id);
            self.spill_victims(victims);
            run.push((i, cell));
            // so do an aligned boundary and the window's end
            if (i + 1) % run_len == 0 || i + 1 == to {
                start(std::mem::take(&mut run));
            }
        }
    }

    /// Fill the consecutive blocks `cells` (index, cell): those the spill tier holds from it,
    /// the others with one ranged GET per stretch of consecutive ones, all at once. Why not
    /// block by block: with a spill tier that made a run of 8 blocks 8 GETs one after another,
    /// and a cold sequential read at 60 ms RTT 3.5 times slower than without the tier.
    async fn fetch_run(&self, obj: &ObjectRef, block_size: u64, cells: Vec<(u64, Cell)>) {
        let spilled = |i: u64| {
            self.spill
                .as_ref()
                .is_some_and(|s| s.holds_clean(&block_aad(&obj.key, &obj.etag, block_size, i)))
        };
        let (in_spill, missing): (Vec<_>, Vec<_>) = cells.into_iter().partition(|c| spilled(c.0));
        let from_spill = in_spill
            .iter()
            .map(|(i, _)| self.block(obj, block_size, *i));
        let mut stretches: Vec<Vec<(u64, Cell)>> = Vec::new();
        for c in missing {
            match stretches.last_mut() {
                Some(s) if s.last().is_some_and(|l| l.0 + 1 == c.0) => s.push(c),
                _ => stretches.push(vec![c]),
            }
        }
        let from_s3 = stretches
            .into_iter()
            .map(|s| self.get_stretch(obj, block_size, s));
        tokio::join!(
            futures::future::join_all(from_spill),
            futures::future::join_all(from_s3)
        );
    }

    /// Fill the consecutive blocks `cells` with one ranged GET. Each cell is initialised
    /// through its own `OnceCell`, so a reader waiting on any of them gets the block of this
    /// one request; a cell someone else filled first keeps its block. When the GET fails the
    /// cells are forgotten and a waiting reader fetches its block itself.
    async fn get_stretch(&self, obj: &ObjectRef, block_size: u64, cells: Vec<(u64, Cell)>) {
        if cells.len() == 1 {
            let _ = self.block(obj, block_size, cells[0].0).await; // one block is one GET anyway
            return;
        }
        let (txs, rxs): (Vec<_>, Vec<_>) = cells
            .iter()
            .map(|_| tokio::sync::oneshot::channel::<Arc<LockedBuf>>())
            .unzip();
        let fetch = async {
            let first = cells[0].0;
            let mut bufs = Vec::with_capacity(cells.len());
            for (i, _) in &cells {
                let start = i * block_size;
                let len = block_size.min(obj.size.saturating_sub(start)) as usize;
                bufs.push(self.arena.alloc(len).await?);
            }
            let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
            let mut n = self
                .store
                .get_ranges(&obj.source(), first * block_size, &mut slices)
                .await?;
            for (tx, mut b) in txs.into_iter().zip(bufs) {
                let len = n.min(b.len());
                b.set_len(len);
                n -= len;
                let _ = tx.send(Arc::new(b));
            }
            Ok::<_, FsError>(())
        };
        let fills = cells.iter().zip(rxs).map(|((_, cell), rx)| {
            cell.get_or_try_init(|| async move {
                rx.await
                    .map_err(|_| FsError::S3(S3Error::Transport("read-ahead GET failed".into())))
            })
        });
        let (_, filled) = tokio::join!(fetch, futures::future::join_all(fills));
        for ((i, _), r) in cells.iter().zip(filled) {
            if r.is_err() {
                self.forget(&BlockId {
                    key: obj.key.clone(),
                    etag: obj.etag.clone(),
                    block_size,
                    index: *i,
                });
            }
        }
    }

    /// Is block `index` of `block_size` bytes of `obj` cached (or being fetched)?
    fn cached(&self, obj: &ObjectRef, block_size: u64, index: u64) -> bool {
        let id = BlockId {
            key: obj.key.clone(),
            etag: obj.etag.clone(),
            block_size,
            index,
        };
        self.lru.lock().map.contains_key(&id)
    }

    /// The block size a random read at `offset` uses: the large block when it is cached
    /// already (sequential readers put it there), else a small one, fetching little.
    pub fn random_block_size(&self, obj: &ObjectRef, offset: u64) -> u64 {
        if self.cached(obj, LARGE_BLOCK, offset / LARGE_BLOCK) {
            LARGE_BLOCK
        } else {
            SMALL_BLOCK
        }
    }

    /// A random read of `obj[offset..offset+len)` (clamped) answered from one block: the
    /// cached block holding it; else the spilled one (large or small), of which only the
    /// chunks the read needs are opened, and which is not put back into the cache; else a
    /// small block, fetched. `None` when the range is empty or spans blocks (the caller
    /// copies it together, see [`Self::random_block_size`]).
    ///
    /// Why not promote a spill hit: a random reader touches each block rarely, and a 1 MiB
    /// block brought back for 4 KiB pushes another out of the cache, which costs a 1 MiB
    /// seal and write when it was not spilled yet (issue 20).
    pub async fn read_random(
        &self,
        obj: &ObjectRef,
        offset: u64,
        len: u64,
    ) -> FsResult<Option<(Arc<LockedBuf>, std::ops::Range<usize>)>> {
        let block = self.random_block_size(obj, offset);
        let end = (offset + len).min(obj.size);
        let Some(spill) = &self.spill else {
            return self.within_one_block(obj, offset, len, block).await;
        };
        if block == SMALL_BLOCK
            && offset < end
            && !obj.etag.is_empty()
            && !self.cached(obj, SMALL_BLOCK, offset / SMALL_BLOCK)
        {
            for size in [LARGE_BLOCK, SMALL_BLOCK] {
                let index = offset / size;
                if (end - 1) / size != index {
                    continue;
                }
                let aad = block_aad(&obj.key, &obj.etag, size, index);
                let base = index * size;
                let range = offset - base..end - base;
                if let Some((buf, r)) = spill.read_clean(&aad, range, &self.arena).await {
                    return Ok(Some((Arc::new(buf), r)));
                }
            }
        }
        self.within_one_block(obj, offset, len, block).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::mem::MemStore;
    use crate::s3::Metadata;

    /// Store `data` as object `o` and return its reference (as HEAD sees it).
    async fn put_object(mem: &MemStore, data: Vec<u8>) -> ObjectRef {
        mem.put("o", bytes::Bytes::from(data), &Metadata::new())
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

    #[tokio::test]
    async fn reads_across_blocks_and_shares_fetches() {
        let mem = MemStore::new("k");
        let data: Vec<u8> = (0..(3 * SMALL_BLOCK as usize + 100))
            .map(|i| i as u8)
            .collect();
        let obj = put_object(&mem, data.clone()).await;
        let cache = BlockCache::new(
            Arc::new(mem.clone()),
            Arena::with_cap_unchecked(16 << 20),
            8 << 20,
        );
        let mut out = vec![0u8; 2 * SMALL_BLOCK as usize];
        let n = cache
            .read(&obj, SMALL_BLOCK - 10, &mut out, SMALL_BLOCK)
            .await
            .unwrap();
        assert_eq!(n, out.len());
        assert_eq!(&out[..], &data[SMALL_BLOCK as usize - 10..][..out.len()]);
        // read again: served from cache
        let gets = mem.counts()["get"];
        cache.read(&obj, 0, &mut out, SMALL_BLOCK).await.unwrap();
        assert_eq!(mem.counts()["get"], gets, "blocks 0 and 1 were cached");
        // read at the tail is clamped
        let mut tail = vec![0u8; 1000];
        let n = cache
            .read(&obj, data.len() as u64 - 50, &mut tail, LARGE_BLOCK)
            .await
            .unwrap();
        assert_eq!(n, 50);
    }

    #[tokio::test]
    async fn read_ahead_fetches_runs_of_blocks_with_one_get_each() {
        let mem = MemStore::new("k");
        // 20.5 blocks: the last run is short and the last block partial
        let data: Vec<u8> = (0..(20 * LARGE_BLOCK as usize + 1000))
            .map(|i| (i % 253) as u8)
            .collect();
        let obj = put_object(&mem, data.clone()).await;
        let cache = Arc::new(BlockCache::new(
            Arc::new(mem.clone()),
            Arena::with_cap_unchecked(64 << 20),
            48 << 20,
        ));
        // a window of 16 blocks: runs of 8, aligned; blocks 1..8 and 8..16 in two GETs
        cache.prefetch(&obj, LARGE_BLOCK, 1, 17);
        // to the end of the object: 16..21 in one more
        cache.prefetch(&obj, LARGE_BLOCK, 16, 40);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut out = vec![0u8; data.len() - LARGE_BLOCK as usize];
        let n = cache
            .read(&obj, LARGE_BLOCK, &mut out, LARGE_BLOCK)
            .await
            .unwrap();
        assert_eq!(n, out.len());
        assert!(
            out == data[LARGE_BLOCK as usize..],
            "read-ahead data differs"
        );
        assert_eq!(mem.counts()["get"], 3, "one GET per run");
        // a small window gets runs of half its size, aligned: [1, 3) and [3, 6)
        cache.invalidate("o");
        cache.prefetch(&obj, LARGE_BLOCK, 1, 7);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(mem.counts()["get"], 5, "runs of 3 for a 6-block window");
    }

    #[tokio::test]
    async fn read_ahead_with_a_spill_tier_takes_what_it_holds_and_gets_the_rest_in_runs() {
        let mem = MemStore::new("k");
        let data: Vec<u8> = (0..(8 * LARGE_BLOCK as usize))
            .map(|i| (i % 241) as u8)
            .collect();
        let obj = put_object(&mem, data.clone()).await;
        let arena = Arena::with_cap_unchecked(64 << 20);
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::create(dir.path(), 16 << 20, &arena).unwrap();
        // block 2 sealed in the tier, as an eviction leaves it
        let block = |i: usize| &data[i * LARGE_BLOCK as usize..][..LARGE_BLOCK as usize];
        let mut buf = arena.alloc(LARGE_BLOCK as usize).await.unwrap();
        buf.copy_from_slice(block(2));
        let aad = block_aad(&obj.key, &obj.etag, LARGE_BLOCK, 2);
        spill.put_clean(aad, LARGE_BLOCK, buf).await;
        let cache = Arc::new(
            BlockCache::new(Arc::new(mem.clone()), arena, 48 << 20).with_spill(Some(spill)),
        );
        let gets = || mem.counts().get("get").copied().unwrap_or(0);
        cache.prefetch(&obj, LARGE_BLOCK, 0, 8);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // a window of 8 has runs of 4: [0, 4) less block 2 is two GETs (0..2 and 3), [4, 8)
        // one; before, each run took a GET per block, one after another (7 in all)
        assert_eq!(gets(), 3, "one GET per stretch the tier lacks");
        let mut out = vec![0u8; data.len()];
        cache.read(&obj, 0, &mut out, LARGE_BLOCK).await.unwrap();
        assert!(out == data, "read-ahead data differs");
        assert_eq!(gets(), 3, "every block came from the runs");
    }

    #[tokio::test]
    async fn evicted_blocks_come_back_from_the_spill_tier() {
        let mem = MemStore::new("k");
        let data: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
        let obj = put_object(&mem, data.clone()).await;
        let arena = Arena::with_cap_unchecked(16 << 20);
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::create(dir.path(), 8 << 20, &arena).unwrap();
        // the budget (2 MiB) holds half the object
        let cache =
            BlockCache::new(Arc::new(mem.clone()), arena, 0).with_spill(Some(spill.clone()));
        let mut out = vec![0u8; SMALL_BLOCK as usize];
        for _pass in 0..2 {
            for i in 0..(data.len() as u64 / SMALL_BLOCK) {
                cache
                    .read(&obj, i * SMALL_BLOCK, &mut out, SMALL_BLOCK)
                    .await
                    .unwrap();
                assert_eq!(&out[..], &data[(i * SMALL_BLOCK) as usize..][..out.len()]);
            }
            super::random_reads_tests::settle().await;
        }
        assert!(spill.stats().clean_blocks > 0);
        // first pass: 64 GETs; second: the evicted half came from the spill tier
        assert!(mem.counts()["get"] < 100, "{} GETs", mem.counts()["get"]);
        // an overwrite forgets the object's spilled blocks
        cache.invalidate("o");
        assert_eq!(spill.stats().clean_blocks, 0);
    }

    #[tokio::test]
    async fn changed_object_is_not_served_stale() {
        let mem = MemStore::new("k");
        mem.put("o", bytes::Bytes::from_static(b"old!"), &Metadata::new())
            .await
            .unwrap();
        let cache = BlockCache::new(Arc::new(mem.clone()), Arena::with_cap_unchecked(4 << 20), 0);
        let info = mem.head("o").await.unwrap();
        let obj = ObjectRef {
            key: "o".into(),
            etag: info.etag,
            size: 4,
            sealing: Sealing::PRIMARY,
        };
        let mut out = [0u8; 4];
        cache.read(&obj, 0, &mut out, SMALL_BLOCK).await.unwrap();
        mem.put("o", bytes::Bytes::from_static(b"new!"), &Metadata::new())
            .await
            .unwrap();
        let info = mem.head("o").await.unwrap();
        let obj2 = ObjectRef {
            key: "o".into(),
            etag: info.etag,
            size: 4,
            sealing: Sealing::PRIMARY,
        };
        cache.read(&obj2, 0, &mut out, SMALL_BLOCK).await.unwrap();
        assert_eq!(&out, b"new!");
        // the old ETag is refused by the server rather than served from a mix
        let err = cache
            .read(&obj, 0, &mut out, LARGE_BLOCK)
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE);
    }

    /// Many tasks read random ranges of several objects through a cache far smaller than
    /// they are, with block sizes mixed, while others invalidate keys and overwrite objects.
    /// Every successful read returns exactly the bytes of the version it asked for (an old
    /// version may only fail, with ESTALE), nothing hangs, and the LRU's accounting holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn many_tasks_with_evictions_and_overwrites_read_exact_bytes() {
        use rand::{Rng, SeedableRng};

        fn content(obj: usize, version: u64, len: usize) -> Vec<u8> {
            (0..len)
                .map(|i| (i as u64 * 31 + obj as u64 * 7 + version * 13) as u8)
                .collect()
        }
        const OBJECTS: usize = 4;
        let mem = MemStore::new("k");
        let versions: Arc<std::sync::Mutex<Vec<(ObjectRef, u64)>>> = Arc::default();
        for o in 0..OBJECTS {
            let len = (3 * LARGE_BLOCK as usize) + o * 10_000;
            mem.put(
                &format!("o{o}"),
                content(o, 0, len).into(),
                &Metadata::new(),
            )
            .await
            .unwrap();
            let info = mem.head(&format!("o{o}")).await.unwrap();
            versions.lock().unwrap().push((
                ObjectRef {
                    key: format!("o{o}"),
                    etag: info.etag,
                    size: info.size,
                    sealing: Sealing::PRIMARY,
                },
                0,
            ));
        }
        // budget: two large blocks, far below the 13+ MiB of data
        let cache = Arc::new(BlockCache::new(
            Arc::new(mem.clone()),
            Arena::with_cap_unchecked(64 << 20),
            2 * LARGE_BLOCK,
        ));
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let cache = cache.clone();
            let mem = mem.clone();
            let versions = versions.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0xb10c + t);
                let (mut ok, mut stale) = (0u32, 0u32);
                for _ in 0..150 {
                    let o = rng.gen_range(0..OBJECTS);
                    let (obj, version) = versions.lock().unwrap()[o].clone();
                    match rng.gen_range(0..20) {
                        0 => cache.invalidate(&obj.key),
                        1 if t % 4 == 0 => {
                            // a new version of the object
                            let v = version + 1;
                            let len = obj.size as usize;
                            mem.put(&obj.key, content(o, v, len).into(), &Metadata::new())
                                .await
                                .unwrap();
                            let info = mem.head(&obj.key).await.unwrap();
                            let mut vs = versions.lock().unwrap();
                            if vs[o].1 < v {
                                vs[o] = (
                                    ObjectRef {
                                        etag: info.etag,
                                        ..obj.clone()
                                    },
                                    v,
                                );
                            }
                        }
                        _ => {
                            let block = if rng.gen_bool(0.5) {
                                LARGE_BLOCK
                            } else {
                                SMALL_BLOCK
                            };
                            let off = rng.gen_range(0..obj.size + 1000);
                            let mut out = vec![0u8; rng.gen_range(1..300_000)];
                            match cache.read(&obj, off, &mut out, block).await {
                                Ok(n) => {
                                    let want = content(o, version, obj.size as usize);
                                    let from = (off as usize).min(want.len());
                                    let to = (from + out.len()).min(want.len());
                                    assert_eq!(n, to - from, "length of {} at {off}", obj.key);
                                    assert!(
                                        out[..n] == want[from..to],
                                        "bytes of {} v{version} at {off}",
                                        obj.key
                                    );
                                    ok += 1;
                                }
                                Err(e) => {
                                    assert_eq!(e.errno(), libc::ESTALE, "{e}");
                                    stale += 1;
                                }
                            }
                        }
                    }
                }
                (ok, stale)
            }));
        }
        let all = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            futures::future::join_all(tasks),
        )
        .await
        .expect("no deadlock");
        let ok: u32 = all.iter().map(|r| r.as_ref().unwrap().0).sum();
        assert!(ok > 1000, "only {ok} reads succeeded");
        let lru = cache.lru.lock();
        assert_eq!(lru.map.len(), lru.order.len());
        let held: u64 = lru.map.keys().map(|id| id.block_size).sum();
        assert_eq!(lru.bytes, held, "byte accounting");
        assert!(lru.bytes <= 2 * LARGE_BLOCK, "over budget: {}", lru.bytes);
        for (id, (_, tick)) in &lru.map {
            assert!(lru.order.get(tick) == Some(id), "order and map disagree");
        }
    }
}

#[cfg(test)]
#[path = "random_reads_tests.rs"]
mod random_reads_tests;
