//! ssecfs: a FUSE filesystem over an S3 bucket where every object is stored with SSE-C and
//! plaintext lives only in locked, non-dumpable memory.
//!
//! Layers, from the kernel down: [`fuse`] (thin adapter) → [`fs`] (inodes, handles,
//! attributes, renames) → [`upload`] (write path) and [`cache`] (block cache, spill tier) →
//! [`error`] (the errors they share, and errno) → [`s3`] (the only code that builds requests)
//! → [`key`] (the customer key) → [`arena`] (locked memory). `tests/layers.rs` checks that
//! no layer reaches back up. [`cli`]
//! parses the command line and mount options; [`run`] wires it all together, [`log`] says
//! what happened and [`control`] answers `ssecfs sync` and `ssecfs status`; [`harden`] keeps
//! the process's memory out of swap and core files, through [`sys`] (the system calls);
//! [`sync`] holds the ranked mutexes that check the lock order in debug builds.

// unsafe only where a module allows it: arena (memory) and sys (system calls)
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arena;
pub mod cache;
pub mod cli;
pub mod control;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod harden;
pub mod key;
pub mod log;
pub mod run;
pub mod s3;
pub mod sync;
pub mod sys;
pub mod upload;
