//! Filesystem tests against the in-memory store (no FUSE, no server).
