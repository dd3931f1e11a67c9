//! The read cache and the spill tier, built on the locked arena (`crate::arena`).

pub mod blocks;
pub mod spill;
