//! What each part of a multipart upload is made of, decided from the file's state alone (no
//! I/O), so the choice is tested apart from the requests that carry it out (`file::multipart`).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// What the file holds for one part in changed data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A chunk in locked memory with this many valid bytes (zeros after, up to the size).
    Chunk(usize),
    /// A chunk sealed in the spill tier.
    Sealed,
}

/// The state a plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct PlanState<'a> {
    /// Part (and chunk) size.
    pub part: u64,
    /// File size.
    pub size: u64,
    /// Bytes of the base object still part of the file.
    pub base_valid: u64,
    /// Parts already uploaded to this upload (streamed, or by an earlier attempt).
    pub done: &'a BTreeSet<u64>,
    /// Changed chunks, by part index.
    pub held: &'a BTreeMap<u64, Held>,
}

/// How one part is uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartPlan {
    /// Already uploaded: its acknowledgement is reused.
    Done,
    /// A chunk in memory, exactly the part's length: UploadPart from it.
    Memory,
    /// A sealed chunk: opened only when its turn comes, so a file larger than the arena
    /// uploads in bounded memory.
    Sealed { len: usize },
    /// Untouched bytes of the base: UploadPartCopy of this range, server-side.
    Copy { range: Range<u64> },
    /// A hole past what the base still holds: zeros, which need no locked memory.
    Zeros { len: usize },
    /// Built when its turn comes from what the file holds, the base and zeros: a chunk
    /// shorter than its part, or the one part that straddles the end of the base's bytes.
    Build { len: usize },
}

impl PlanState<'_> {
    /// Parts in the upload (an empty file is one empty part).
    pub fn parts(&self) -> u64 {
        self.size.div_ceil(self.part).max(1)
    }

    /// Bytes of the file in part `idx`.
    pub fn range(&self, idx: u64) -> Range<u64> {
        let start = idx * self.part;
        start..(start + self.part).min(self.size.max(start))
    }
}

/// The plan of part `idx`.
pub fn plan_part(s: &PlanState<'_>, idx: u64) -> PartPlan {
    let range = s.range(idx);
    let len = (range.end - range.start) as usize;
    if s.done.contains(&idx) {
        return PartPlan::Done;
    }
    match s.held.get(&idx) {
        Some(Held::Sealed) => PartPlan::Sealed { len },
        Some(&Held::Chunk(n)) if n == len => PartPlan::Memory,
        Some(Held::Chunk(_)) => PartPlan::Build { len },
        None if range.end <= s.base_valid && range.end > range.start => PartPlan::Copy { range },
        None if range.start >= s.base_valid => PartPlan::Zeros { len },
        None => PartPlan::Build { len },
    }
}

/// The plan of every part, in order.
pub fn plan_parts(s: &PlanState<'_>) -> Vec<PartPlan> {
    (0..s.parts()).map(|idx| plan_part(s, idx)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 10;

    fn plan(size: u64, base_valid: u64, done: &[u64], held: &[(u64, Held)]) -> Vec<PartPlan> {
        let done = done.iter().copied().collect();
        let held = held.iter().copied().collect();
        plan_parts(&PlanState {
            part: P,
            size,
            base_valid,
            done: &done,
            held: &held,
        })
    }

    #[test]
    fn an_edit_of_one_part_uploads_it_and_copies_the_rest() {
        use PartPlan::*;
        assert_eq!(
            plan(35, 35, &[], &[(1, Held::Chunk(10))]),
            [
                Copy { range: 0..10 },
                Memory,
                Copy { range: 20..30 },
                Copy { range: 30..35 },
            ]
        );
    }

    #[test]
    fn short_chunks_and_the_part_across_the_base_end_are_built() {
        use PartPlan::*;
        // base truncated to 15, file grown to 40 with a write in part 3 that is not full
        assert_eq!(
            plan(40, 15, &[], &[(3, Held::Chunk(4))]),
            [
                Copy { range: 0..10 },
                Build { len: 10 },
                Zeros { len: 10 },
                Build { len: 10 },
            ]
        );
        // the last, short part held whole is uploaded as it is
        assert_eq!(
            plan(25, 0, &[], &[(2, Held::Chunk(5))])[2],
            PartPlan::Memory
        );
    }

    #[test]
    fn done_and_sealed_parts_are_not_rebuilt() {
        use PartPlan::*;
        assert_eq!(
            plan(30, 0, &[0], &[(0, Held::Chunk(10)), (1, Held::Sealed)]),
            [Done, Sealed { len: 10 }, Zeros { len: 10 }]
        );
    }

    #[test]
    fn an_empty_file_is_one_empty_part() {
        assert_eq!(plan(0, 0, &[], &[]), [PartPlan::Zeros { len: 0 }]);
    }
}
