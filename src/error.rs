//! The errors the layers share (filesystem, spill tier) and the one place they become errno values.

use crate::arena::ArenaError;
use std::path::PathBuf;

use crate::s3::S3Error;

/// What went wrong in a filesystem operation.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("file name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("read-only mount")]
    ReadOnly,
    #[error("stale file handle")]
    BadHandle,
    #[error("file too large for S3 (over 10,000 parts)")]
    TooBig,
    /// An object stored without SSE-C: not served, or served read-only (`--allow-plain`).
    #[error("object stored without SSE-C (not sealed under this mount's key)")]
    PlainObject,
    #[error(transparent)]
    S3(S3Error),
    /// Written data was lost in memory (a part upload task died): the file fails with EIO
    /// until it is rewritten, rather than uploading zeros or old bytes in its place.
    #[error("{0}; the file's unsaved data is lost: rewrite it (truncate to 0)")]
    Lost(String),
    #[error(transparent)]
    Memory(#[from] ArenaError),
    /// Written data sealed in the spill tier could not be opened (tampered, or disk error).
    #[error("spill tier: {0}")]
    Spill(#[from] SpillError),
}

pub type FsResult<T> = Result<T, FsError>;

impl From<S3Error> for FsError {
    /// A missing object is a missing file: one variant, so callers match one thing.
    fn from(e: S3Error) -> FsError {
        match e {
            S3Error::NotFound => FsError::NotFound,
            other => FsError::S3(other),
        }
    }
}

impl FsError {
    /// The errno the kernel (and the application) sees.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Unsupported(_) => libc::ENOTSUP,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::TooBig => libc::EFBIG,
            FsError::PlainObject => libc::EACCES,
            FsError::Lost(_) => libc::EIO,
            FsError::Memory(ArenaError::TooLarge { .. }) => libc::EFBIG,
            FsError::Memory(_) => libc::ENOMEM,
            FsError::Spill(SpillError::Memory(_)) => libc::ENOMEM,
            FsError::Spill(_) => libc::EIO,
            FsError::S3(e) => match e {
                S3Error::NotFound => libc::ENOENT,
                S3Error::WrongKey | S3Error::AccessDenied(_) => libc::EACCES,
                S3Error::BadCredentials(_) => libc::EACCES,
                S3Error::NoSuchBucket => libc::ENODEV,
                S3Error::PreconditionFailed => libc::ESTALE,
                S3Error::Transport(_) | S3Error::SseIgnored { .. } => libc::EIO,
                S3Error::Other { status: 416, .. } => libc::EINVAL,
                S3Error::Other { .. } | S3Error::Unreadable { .. } => libc::EIO,
            },
        }
    }

    /// Errors that are part of normal life (ENOENT on lookup) and need no log line.
    pub fn is_quiet(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::S3(S3Error::NotFound)
                | FsError::Exists
                | FsError::NotEmpty
                | FsError::NameTooLong
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(FsError::S3(S3Error::NotFound).errno(), libc::ENOENT);
        assert_eq!(FsError::S3(S3Error::WrongKey).errno(), libc::EACCES);
        assert_eq!(
            FsError::S3(S3Error::AccessDenied("x".into())).errno(),
            libc::EACCES
        );
        assert_eq!(FsError::NotEmpty.errno(), libc::ENOTEMPTY);
        assert_eq!(FsError::NameTooLong.errno(), libc::ENAMETOOLONG);
        assert_eq!(
            FsError::S3(S3Error::Transport("x".into())).errno(),
            libc::EIO
        );
    }
}

/// Why the spill tier could not be set up, or could not seal or open something.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The directory could not be used.
    #[error("spill directory {dir}: {source}; pass an existing directory on a local disk that this user can write")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a spill file failed.
    #[error("spill file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No slot is free and no clean block can be dropped (the tier is full of dirty data).
    #[error("spill tier full ({cap} bytes)")]
    Full { cap: u64 },
    /// The tag did not verify: the file was tampered with or corrupted.
    #[error("spilled data failed its integrity check (tampering or disk corruption)")]
    Tampered,
    /// No locked memory for the key or for opening a slot.
    #[error(transparent)]
    Memory(#[from] ArenaError),
}
