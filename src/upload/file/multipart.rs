//! The multipart upload of a [`FileContent`]: parts streamed while the application writes,
//! and at flush the [`plan_parts`] plan carried out (upload from memory or the spill tier,
//! copy server-side, zeros), then completion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::{body_of, open_sealed, FileContent, Target, WriteContext};
use crate::arena::LockedBuf;
use crate::error::{FsError, FsResult};
use crate::s3::{CompletedPart, Metadata, PartSource, S3Error};
use crate::upload::plan::{plan_parts, Held, PartPlan, PlanState};

/// A part upload's outcome; the buffer comes back only when it failed (on success it is
/// released at once, not when the writer next settles: small caches would pin it).
type PartResult = (u64, Result<CompletedPart, S3Error>, Option<Arc<LockedBuf>>);

/// A multipart upload under way: started while the application is still writing (its parts
/// stream), or whose parts are all uploaded but whose completion failed (kept, so that the
/// retry completes this upload instead of building a new one from data no longer held).
pub(super) struct Streaming {
    pub(super) key: String,
    meta: Metadata,
    pub(super) upload_id: String,
    in_flight: BTreeMap<u64, JoinHandle<PartResult>>,
    done: BTreeMap<u64, CompletedPart>,
    /// Every part was uploaded and completion was tried: the next change must finish this
    /// upload first (its last part may be short, which only the last part may be).
    pub(super) completing: bool,
}

impl Streaming {
    /// A new multipart upload under `target`'s key, with its metadata as it is now.
    pub(super) async fn begin(ctx: &WriteContext, target: &Target) -> FsResult<Streaming> {
        let upload_id = ctx
            .store
            .create_multipart(&target.key, &target.meta)
            .await?;
        Ok(Streaming {
            key: target.key.clone(),
            meta: target.meta.clone(),
            upload_id,
            in_flight: BTreeMap::new(),
            done: BTreeMap::new(),
            completing: false,
        })
    }

    pub(super) fn holds(&self, idx: u64) -> bool {
        self.in_flight.contains_key(&idx) || self.done.contains_key(&idx)
    }

    /// Wait until at most `keep` parts are in flight; failed parts give their buffer back. A part whose task died
    /// (panicked) took its only copy of the data with it: that is returned as the poison.
    pub(super) async fn settle(
        &mut self,
        chunks: &mut BTreeMap<u64, Arc<LockedBuf>>,
        keep: usize,
    ) -> Option<String> {
        let mut poison = None;
        while self.in_flight.len() > keep {
            // whichever part finishes first frees its place, not the oldest: waiting for the
            // oldest would let the whole window drain behind one slow part (at 60 ms RTT,
            // a round trip of idle link per window)
            let (joined, at, _) = futures::future::select_all(self.in_flight.values_mut()).await;
            let idx = *self.in_flight.keys().nth(at).unwrap();
            self.in_flight.remove(&idx);
            match joined {
                Ok((i, Ok(part), _buf)) => {
                    self.done.insert(i, part);
                }
                Ok((i, Err(e), buf)) => {
                    tracing::warn!(part = i + 1, error = %e, "part upload failed; will retry at close");
                    if let Some(buf) = buf {
                        chunks.insert(i, buf);
                    }
                }
                Err(e) => {
                    tracing::error!(object = %self.key, part = idx + 1, error = %e, "part upload task died with the part's data; the file fails with EIO until it is rewritten");
                    poison = Some(format!("the upload of part {} died ({e})", idx + 1));
                }
            }
        }
        poison
    }
}

/// A part ready to upload: a [`PartPlan`] with the data it names in hand.
enum Plan {
    /// Already uploaded (streamed, or by an earlier attempt of this upload).
    Done(CompletedPart),
    /// A chunk in memory, exactly the part's length.
    Upload(Arc<LockedBuf>),
    /// Sealed in the spill tier: opened only when its turn to upload comes.
    Sealed(u64, usize),
    /// Untouched bytes of the base: UploadPartCopy, server-side.
    Copy(u64, u64),
    /// A hole: zeros, from one shared buffer.
    Zeros(usize),
}

/// `len` zero bytes as an upload body. Zeros are no secret, so they need no locked memory:
/// one buffer is shared by every hole part, however many a sparse file has.
fn zero_body(len: usize) -> Bytes {
    static ZEROS: std::sync::Mutex<Bytes> = std::sync::Mutex::new(Bytes::new());
    let mut zeros = ZEROS.lock().unwrap();
    if zeros.len() < len {
        *zeros = Bytes::from(vec![0u8; len]);
    }
    zeros.slice(..len)
}

impl FileContent {
    /// Send the full chunks before chunk `below` as parts of a streaming upload.
    pub(super) async fn stream_chunks_below(
        &mut self,
        ctx: &WriteContext,
        target: &Target,
        below: u64,
    ) -> FsResult<()> {
        let ready: Vec<u64> = self
            .chunks
            .range(..below)
            .filter(|(_, b)| b.len() as u64 == self.part)
            .map(|(&i, _)| i)
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        if self.streaming.is_none() {
            self.streaming = Some(Streaming::begin(ctx, target).await?);
        }
        let stream = self.streaming.as_mut().unwrap();
        for idx in ready {
            let buf = self.chunks.remove(&idx).unwrap();
            let store = ctx.store.clone();
            let slots = ctx.upload_slots.clone();
            let (key, upload_id) = (stream.key.clone(), stream.upload_id.clone());
            stream.in_flight.insert(
                idx,
                tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    tracing::debug!(part = idx + 1, "part upload starts");
                    let r = store
                        .upload_part(&key, &upload_id, idx as i32 + 1, body_of(&buf))
                        .await;
                    tracing::debug!(part = idx + 1, ok = r.is_ok(), "part upload done");
                    let keep = r.is_err().then_some(buf);
                    (idx, r, keep)
                }),
            );
        }
        // Backpressure: a writer never has more than `part_concurrency` parts in flight.
        if let Some(why) = stream
            .settle(&mut self.chunks, ctx.config.part_concurrency)
            .await
        {
            self.poisoned = Some(why.clone());
            return Err(FsError::Lost(why));
        }
        Ok(())
    }

    /// The planner's view of this file: which parts hold changed data, and where.
    fn plan_state<'a>(
        &self,
        done: &'a BTreeSet<u64>,
        held: &'a BTreeMap<u64, Held>,
    ) -> PlanState<'a> {
        PlanState {
            part: self.part,
            size: self.size,
            base_valid: self.base_valid,
            done,
            held,
        }
    }

    /// What the file holds for each part, for [`plan_parts`].
    fn held(&self) -> BTreeMap<u64, Held> {
        let chunks = self.chunks.iter().map(|(&i, c)| (i, Held::Chunk(c.len())));
        let sealed = self.sealed.keys().map(|&i| (i, Held::Sealed));
        // (never both for one part; were it so, sealed wins, as it always has)
        chunks.chain(sealed).collect()
    }

    /// Part `idx` as planned, with its data in hand: a part to build is built now, as memory
    /// allows (holes are not: zeros need no memory).
    async fn prepare(
        &mut self,
        ctx: &WriteContext,
        idx: u64,
        plan: PartPlan,
        done: &BTreeMap<u64, CompletedPart>,
    ) -> FsResult<Plan> {
        let (start, end) = self.chunk_range(idx);
        let in_memory = matches!(plan, PartPlan::Memory | PartPlan::Build { .. });
        if in_memory && self.sealed.contains_key(&idx) {
            // planned in memory but sealed since (building an earlier part made room): it is
            // opened at its turn, not brought back now to sit in memory until then
            return Ok(Plan::Sealed(idx, (end - start) as usize));
        }
        Ok(match plan {
            PartPlan::Done => Plan::Done(done[&idx].clone()),
            PartPlan::Memory => Plan::Upload(self.chunks[&idx].clone()),
            PartPlan::Sealed { len } => Plan::Sealed(idx, len),
            PartPlan::Copy { range } => Plan::Copy(range.start, range.end),
            PartPlan::Zeros { len } => Plan::Zeros(len),
            PartPlan::Build { len } => Plan::Upload(self.materialize(ctx, idx, len).await?),
        })
    }

    /// Upload every part (streamed, from memory, copied server-side, or built when its turn
    /// comes) and complete the upload; returns the key, ETag and metadata it completed with.
    /// Parts are planned first and only those in flight are built, so a file of any size and
    /// sparseness uploads in at most `part_concurrency` parts of memory beyond what it holds.
    pub(super) async fn upload_multipart(
        &mut self,
        ctx: &WriteContext,
        target: &Target,
    ) -> FsResult<(String, String, Metadata)> {
        self.ready_upload(ctx, target).await?;
        let s = self.streaming.as_ref().expect("set above");
        let (key, upload_id, meta) = (s.key.clone(), s.upload_id.clone(), s.meta.clone());
        let plans = self.plan_all(ctx).await?;
        let results = self.send_parts(ctx, &key, &upload_id, plans).await;
        let parts = self.keep_uploaded(results)?;
        self.streaming.as_mut().expect("set above").completing = true;
        match ctx.store.complete_multipart(&key, &upload_id, parts).await {
            Ok(etag) => Ok((key, etag, meta)),
            Err(e) => {
                if matches!(&e, S3Error::Other { code, .. } if code == "NoSuchUpload") {
                    // The upload is gone and not as ours completed: what it held exists no
                    // more. Parts still in memory can go into a new one; streamed ones cannot.
                    self.upload_vanished();
                }
                Err(e.into())
            }
        }
    }

    /// Before planning: the streamed parts settled (a failed one gives its chunk back, to be
    /// planned again), room for one sealed part to be opened, and an upload to add parts to.
    async fn ready_upload(&mut self, ctx: &WriteContext, target: &Target) -> FsResult<()> {
        if let Some(s) = &mut self.streaming {
            if let Some(why) = s.settle(&mut self.chunks, 0).await {
                self.poisoned = Some(why.clone());
                return Err(FsError::Lost(why));
            }
        }
        if !self.sealed.is_empty() {
            // sealed parts are opened one part at a time below: make sure one fits
            self.make_room(ctx, self.part as usize, (u64::MAX, 0)).await;
        }
        if self.streaming.is_none() {
            self.streaming = Some(Streaming::begin(ctx, target).await?);
        }
        Ok(())
    }

    /// Every part of the file planned against what the upload already holds, with the data
    /// each needs in hand (see [`FileContent::prepare`]).
    async fn plan_all(&mut self, ctx: &WriteContext) -> FsResult<Vec<Plan>> {
        let done = self.streaming.as_ref().expect("set above").done.clone();
        let done_set: BTreeSet<u64> = done.keys().copied().collect();
        let held = self.held();
        let planned = plan_parts(&self.plan_state(&done_set, &held));
        let mut plans = Vec::with_capacity(planned.len());
        for (idx, plan) in (0..).zip(planned) {
            plans.push(self.prepare(ctx, idx, plan, &done).await?);
        }
        Ok(plans)
    }

    /// Carry out the plans, `part_concurrency` at a time and in part order; one result per
    /// part, so that the parts that made it can be kept whatever else failed.
    async fn send_parts(
        &self,
        ctx: &WriteContext,
        key: &str,
        upload_id: &str,
        plans: Vec<Plan>,
    ) -> Vec<FsResult<CompletedPart>> {
        futures::stream::iter(
            (1..)
                .zip(plans)
                .map(|(number, plan)| self.send_part(ctx, key, upload_id, number, plan)),
        )
        .buffered(ctx.config.part_concurrency.max(1))
        .collect()
        .await
    }

    /// Part `number` as planned: already done, uploaded, or copied from the base. Its upload
    /// slot is taken before its body is made (a sealed part is opened only then), so no more
    /// than `part_concurrency` bodies exist at once.
    async fn send_part(
        &self,
        ctx: &WriteContext,
        key: &str,
        upload_id: &str,
        number: i32,
        plan: Plan,
    ) -> FsResult<CompletedPart> {
        if let Plan::Done(p) = plan {
            return Ok(p);
        }
        let _slot = ctx.upload_slots.acquire().await;
        let body = match plan {
            Plan::Done(_) => unreachable!("returned above"),
            Plan::Upload(buf) => body_of(&buf),
            Plan::Zeros(len) => zero_body(len),
            Plan::Sealed(idx, len) => {
                body_of(&Arc::new(open_sealed(&self.sealed[&idx], ctx, len).await?))
            }
            Plan::Copy(s, e) => {
                let base = self.base.as_ref().expect("copy plan implies a base");
                let part = ctx
                    .store
                    .upload_part_copy(
                        key,
                        upload_id,
                        number,
                        &PartSource {
                            key: &base.key,
                            range: s..e,
                            sealing: base.sealing,
                            etag: Some(&base.etag),
                        },
                    )
                    .await?;
                return Ok(part);
            }
        };
        let part = ctx.store.upload_part(key, upload_id, number, body).await?;
        debug_assert_eq!(part.number, number);
        Ok(part)
    }

    /// The parts that made it are kept: a retry after a later failure uploads only the rest.
    /// All of them, in order, when every part made it; else the first failure.
    fn keep_uploaded(
        &mut self,
        results: Vec<FsResult<CompletedPart>>,
    ) -> FsResult<Vec<CompletedPart>> {
        let mut parts = Vec::with_capacity(results.len());
        let mut first_err = None;
        let s = self.streaming.as_mut().expect("set above");
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(p) => {
                    s.done.insert(i as u64, p.clone());
                    parts.push(p);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(parts),
        }
    }

    /// The multipart upload under way no longer exists on the server (aborted elsewhere).
    fn upload_vanished(&mut self) {
        let Some(s) = self.streaming.take() else {
            return;
        };
        let lost: Vec<u64> = s
            .done
            .keys()
            .copied()
            .filter(|i| {
                // a part copied from the base can be copied again
                !self.chunks.contains_key(i) && !self.sealed.contains_key(i) && !self.copyable(*i)
            })
            .collect();
        if let Some(first) = lost.first() {
            let why = format!(
                "multipart upload of {} vanished from the server with {} streamed parts (first: part {})",
                s.key,
                lost.len(),
                first + 1
            );
            tracing::error!(object = %s.key, "{why}; the file fails with EIO until it is rewritten");
            self.poisoned = Some(why);
        }
    }
}
