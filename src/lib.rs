//! ssecfs: a FUSE filesystem over an S3 bucket where every object is stored with SSE-C and
//! plaintext lives only in locked, non-dumpable memory.
//!
//! Layers, from the kernel down: [`fuse`] (thin adapter) → [`fs`] (inodes, handles,
//! attributes, errno) → [`upload`] (write path) and [`cache`] (locked arena, block cache) →
//! [`s3`] (the only code that builds requests). [`key`] holds the customer key; [`cli`]
//! parses the command line and mount options; [`run`] wires it all together, [`log`] says
//! what happened and [`control`] answers `ssecfs sync` and `ssecfs status`; [`harden`] keeps
//! the process's memory out of swap and core files, through [`sys`] (the system calls).

// unsafe only where a module allows it: cache::arena (memory) and sys (system calls)
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cache;
pub mod cli;
pub mod control;
pub mod fs;
pub mod fuse;
pub mod harden;
pub mod key;
pub mod log;
pub mod run;
pub mod s3;
pub mod sys;
pub mod upload;
