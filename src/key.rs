//! The customer key: loaded from a file, checked, kept in locked memory, wiped on drop.
//!
//! The key is the user's only way back to their data, so this type is deliberately awkward to
//! leak: it is not `Clone`, its `Debug` prints only a fingerprint, and its bytes live in a
//! locked, non-dumpable mapping. The S3 client needs the base64 text and its MD5 on every
//! request; those derived strings are kept in zeroizing storage too.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::Mac;
use md5::Digest;
use zeroize::Zeroizing;

use crate::cache::arena::{Arena, LockedBuf};

/// Length of an AES-256 key in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key file was refused. Messages never contain key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: cannot read it: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is a directory; expected a file holding a 32-byte key")]
    IsDirectory { path: PathBuf },
    #[error(
        "key file {path} is readable by group or others (mode {mode:04o}); the key must be \
         private: run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "key file {path} is empty; expected 32 raw bytes or the base64 text of 32 bytes \
         (`ssecfs keygen {path}` or `openssl rand -base64 32 > {path}`)"
    )]
    Empty { path: PathBuf },
    #[error(
        "key file {path} holds {found}; expected 32 raw bytes or the base64 text of 32 bytes \
         (44 characters, as `openssl rand -base64 32` writes)"
    )]
    BadFormat { path: PathBuf, found: String },
    #[error("cannot lock memory for the key: {0}")]
    Lock(String),
}

/// An SSE-C customer key. Not `Clone`: there is one copy, in locked memory.
pub struct CustomerKey {
    raw: LockedBuf,
    base64: Zeroizing<String>,
    md5_base64: String,
    fingerprint: String,
}

impl CustomerKey {
    /// Build a key from 32 raw bytes (which the caller should wipe).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<CustomerKey, KeyError> {
        let arena = Arena::with_cap_unchecked(4096);
        let mut raw = arena
            .try_alloc(KEY_LEN)
            .expect("a fresh arena has room for the key")
            .map_err(|e| KeyError::Lock(e.to_string()))?;
        raw.copy_from_slice(bytes);
        let b64 = base64::engine::general_purpose::STANDARD;
        let base64 = Zeroizing::new(b64.encode(&raw[..]));
        let md5_base64 = b64.encode(md5::Md5::digest(&raw[..]));
        let fingerprint = fingerprint_of(&raw);
        Ok(CustomerKey {
            raw,
            base64,
            md5_base64,
            fingerprint,
        })
    }

    /// Load a key file: 32 raw bytes, or base64 of 32 bytes with optional trailing whitespace.
    /// Refuses files readable by group or others, directories, and anything else.
    pub fn load(path: &Path) -> Result<CustomerKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Err(KeyError::IsDirectory {
                path: path.to_owned(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let _ = meta.uid();
        let mut content = Zeroizing::new(Vec::with_capacity(64));
        std::fs::File::open(path)
            .map_err(io)?
            .take(4096)
            .read_to_end(&mut content)
            .map_err(io)?;
        Self::parse(&content, path)
    }

    /// Interpret the bytes of a key file (see [`CustomerKey::load`]).
    pub fn parse(content: &[u8], path: &Path) -> Result<CustomerKey, KeyError> {
        if content.is_empty() {
            return Err(KeyError::Empty {
                path: path.to_owned(),
            });
        }
        if content.len() == KEY_LEN {
            let mut k = Zeroizing::new([0u8; KEY_LEN]);
            k.copy_from_slice(content);
            return Self::from_bytes(&k);
        }
        let trimmed = trim_ascii_end(content);
        let looks_textual = trimmed
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
        if !looks_textual {
            return Err(KeyError::BadFormat {
                path: path.to_owned(),
                found: format!(
                    "{} bytes that are neither a raw 32-byte key nor base64 text",
                    content.len()
                ),
            });
        }
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(trimmed)
                .map_err(|_| KeyError::BadFormat {
                    path: path.to_owned(),
                    found: format!(
                        "{} characters of text that is not valid base64",
                        trimmed.len()
                    ),
                })?,
        );
        if decoded.len() != KEY_LEN {
            return Err(KeyError::BadFormat {
                path: path.to_owned(),
                found: format!("base64 text that decodes to {} bytes", decoded.len()),
            });
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&decoded);
        Self::from_bytes(&k)
    }

    /// Base64 of the key, for the `…-customer-key` header. Handle with care.
    pub fn base64(&self) -> &str {
        &self.base64
    }

    /// Base64 of the MD5 of the raw key, for the `…-customer-key-MD5` header.
    pub fn md5_base64(&self) -> &str {
        &self.md5_base64
    }

    /// A fingerprint safe to print and store: HMAC-SHA256 of a fixed label under the key,
    /// truncated to 64 bits. Unlike the key MD5 the server sees, it cannot be checked against
    /// a guessed key without also knowing this scheme, and it reveals nothing of the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The raw 32 bytes (locked memory).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

fn fingerprint_of(raw: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(raw).expect("HMAC takes any key");
    mac.update(b"ssecfs key fingerprint v1");
    let out = mac.finalize().into_bytes();
    out[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn trim_ascii_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &s[..end]
}

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerKey(fingerprint {})", self.fingerprint)
    }
}

/// Generate a new key file at `path` (mode 0600, refusing to overwrite); returns the key.
pub fn generate_key_file(path: &Path) -> Result<CustomerKey, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    getrandom_fill(&mut bytes[..]).map_err(io)?;
    let key = CustomerKey::from_bytes(&bytes)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let text = Zeroizing::new(format!("{}\n", key.base64()));
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(key)
}

/// Fill from the OS RNG (getrandom(2)).
fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_key(dir: &tempfile::TempDir, content: &[u8], mode: u32) -> PathBuf {
        let p = dir.path().join("key");
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn accepts_raw_and_base64_with_newline() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [7u8; 32];
        let a = CustomerKey::load(&write_key(&dir, &raw, 0o600)).unwrap();
        let text = format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        let b = CustomerKey::load(&write_key(&dir, text.as_bytes(), 0o400)).unwrap();
        assert_eq!(a.raw(), b.raw());
        assert_eq!(a.md5_base64(), b.md5_base64());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
    }

    #[test]
    fn md5_is_of_raw_bytes() {
        let k = CustomerKey::from_bytes(&[0u8; 32]).unwrap();
        // MD5 of 32 zero bytes, base64
        assert_eq!(k.md5_base64(), "cLyPS3KoaSFGi/joRB3OUQ==");
    }

    #[test]
    fn refuses_bad_files_with_clear_messages() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(Vec<u8>, u32, &str)> = vec![
            (vec![], 0o600, "is empty"),
            (vec![1u8; 16], 0o600, "neither a raw 32-byte key"),
            (vec![1u8; 33], 0o600, "neither a raw 32-byte key"),
            (b"not*base64!\n".to_vec(), 0o600, "neither a raw"),
            (b"AAAA\n".to_vec(), 0o600, "decodes to 3 bytes"),
            (b"AAA\n".to_vec(), 0o600, "not valid base64"),
            (vec![1u8; 32], 0o640, "chmod 600"),
            (vec![1u8; 32], 0o604, "chmod 600"),
        ];
        for (content, mode, expect) in cases {
            let p = write_key(&dir, &content, mode);
            let err = CustomerKey::load(&p).unwrap_err().to_string();
            assert!(err.contains(expect), "{err:?} should contain {expect:?}");
            std::fs::remove_file(&p).unwrap();
        }
        let err = CustomerKey::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let err = CustomerKey::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn debug_shows_only_the_fingerprint() {
        let k = CustomerKey::from_bytes(&[0x41u8; 32]).unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(k.base64()));
        assert!(!dbg.contains("AAAA"));
        assert!(dbg.contains(k.fingerprint()));
    }

    #[test]
    fn keygen_writes_private_base64_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.key");
        let k = generate_key_file(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = CustomerKey::load(&p).unwrap();
        assert_eq!(again.raw(), k.raw());
        assert!(generate_key_file(&p).is_err());
    }
}
