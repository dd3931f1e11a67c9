//! The write path: file contents being changed, and how they become an object again.
//!
//! A written file is a [`FileContent`]: the object it started from (the *base*, on the server),
//! plus changed chunks held in locked memory. Chunks are aligned to the multipart part size,
//! so at upload time every part is either a changed chunk (UploadPart from the arena) or an
//! untouched range of the base (UploadPartCopy, server-side, both key trios): an in-place edit
//! of one byte of a 100 MiB file uploads one part, and nothing unchanged is downloaded except
//! the rest of the one part that was touched. Small files are one PutObject.
//!
//! Sequential writes of a new file stream: each chunk that fills up is uploaded as a part in
//! the background while the application keeps writing, and its memory is released when the
//! part is acknowledged, so a file far larger than the cache writes in bounded memory.
//!
//! [`plan`] decides, without I/O, what each part of an upload is made of; `file` holds the
//! state and carries the plan out.

pub mod file;
pub mod plan;

pub use file::{FileContent, UploadConfig};
