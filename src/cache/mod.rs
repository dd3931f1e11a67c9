//! Memory that holds plaintext: the locked arena and the block cache built on it.

pub mod arena;
pub mod blocks;
pub mod spill;
