//! The customer key: loaded from a file, checked, kept in locked memory, wiped on drop.
//!
//! The key is the user's only way back to their data, so this type is deliberately awkward to
//! leak: it is not `Clone`, its `Debug` prints only a fingerprint, and its bytes live in a
//! locked, non-dumpable mapping. The S3 client needs the base64 text and its MD5 on every
//! request; those derived strings are kept in zeroizing storage too.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::Mac;
use md5::Digest;
use zeroize::Zeroizing;

use crate::arena::{Arena, LockedBuf};

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
    #[error(
        "key file {path} line {line}: {found}; a key-ring file holds one base64 key \
         (44 characters) per line"
    )]
    BadRingLine {
        path: PathBuf,
        line: usize,
        found: String,
    },
    #[error(
        "the same key (fingerprint {fingerprint}) is given twice ({first} and {second}); \
         each key of the ring must be different"
    )]
    Duplicate {
        fingerprint: String,
        first: String,
        second: String,
    },
    #[error("a key file is required: --key-file PATH")]
    NoKey,
    #[error("too many keys ({0}); a key ring holds at most 255")]
    TooMany(usize),
}

/// An SSE-C customer key. Not `Clone`: there is one copy, in locked memory.
///
/// The raw key and the two header forms every request needs (its base64 and the base64 of its
/// MD5) share one locked, don't-dump page: none of them lives in the heap for the life of the
/// mount. Layout of `locked`: `[raw 32][base64 44][md5 base64 24]`.
pub struct CustomerKey {
    locked: LockedBuf,
    fingerprint: String,
}

/// Length of the base64 text of a 32-byte key.
const BASE64_LEN: usize = 44;
/// Length of the base64 text of a 16-byte MD5.
const MD5_BASE64_LEN: usize = 24;
const BASE64_AT: usize = KEY_LEN;
const MD5_AT: usize = BASE64_AT + BASE64_LEN;

impl CustomerKey {
    /// Build a key from 32 raw bytes (which the caller should wipe).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<CustomerKey, KeyError> {
        let arena = Arena::with_cap_unchecked(4096);
        let mut locked = arena
            .try_alloc(MD5_AT + MD5_BASE64_LEN)
            .expect("a fresh arena has room for the key")
            .map_err(|e| KeyError::Lock(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (raw, forms) = locked.split_at_mut(KEY_LEN);
        raw.copy_from_slice(bytes);
        let (text, md5_text) = forms.split_at_mut(BASE64_LEN);
        let written = b64
            .encode_slice(&raw[..], text)
            .expect("44 bytes hold the base64 of 32");
        debug_assert_eq!(written, BASE64_LEN);
        // the digest lives on the stack for a moment: wiped as it goes out of scope
        let digest = Zeroizing::new(<[u8; 16]>::from(md5::Md5::digest(&raw[..])));
        b64.encode_slice(&digest[..], md5_text)
            .expect("24 bytes hold the base64 of 16");
        let fingerprint = fingerprint_of(raw);
        Ok(CustomerKey {
            locked,
            fingerprint,
        })
    }

    /// Load a key file: 32 raw bytes, or base64 of 32 bytes with optional trailing whitespace.
    /// Refuses files readable by group or others, directories, and anything else.
    pub fn load(path: &Path) -> Result<CustomerKey, KeyError> {
        let content = read_key_file(path)?;
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

    /// Interpret a key file that may be a key ring: one key (raw or base64, see
    /// [`CustomerKey::parse`]) or several base64 keys, one per line (blank lines and lines
    /// starting with `#` ignored), in ring order.
    pub fn parse_ring(content: &[u8], path: &Path) -> Result<Vec<CustomerKey>, KeyError> {
        let trimmed = trim_ascii_end(content);
        let textual = content
            .iter()
            .all(|c| c.is_ascii_graphic() || c.is_ascii_whitespace());
        if content.len() == KEY_LEN || !textual || !trimmed.contains(&b'\n') {
            return Ok(vec![Self::parse(content, path)?]);
        }
        let mut keys = Vec::new();
        for (i, line) in trimmed.split(|&c| c == b'\n').enumerate() {
            let line = trim_ascii_end(line);
            let start = line
                .iter()
                .position(|c| !c.is_ascii_whitespace())
                .unwrap_or(line.len());
            let line = &line[start..];
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let key = Self::parse(line, path).map_err(|e| match e {
                KeyError::BadFormat { found, .. } => KeyError::BadRingLine {
                    path: path.to_owned(),
                    line: i + 1,
                    found,
                },
                other => other,
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(keys)
    }

    /// Base64 of the key, for the `…-customer-key` header. Handle with care.
    pub fn base64(&self) -> &str {
        ascii(&self.locked[BASE64_AT..MD5_AT])
    }

    /// Base64 of the MD5 of the raw key, for the `…-customer-key-MD5` header.
    pub fn md5_base64(&self) -> &str {
        ascii(&self.locked[MD5_AT..MD5_AT + MD5_BASE64_LEN])
    }

    /// A fingerprint safe to print and store: HMAC-SHA256 of a fixed label under the key,
    /// truncated to 64 bits. Unlike the key MD5 the server sees, it cannot be checked against
    /// a guessed key without also knowing this scheme, and it reveals nothing of the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The raw 32 bytes (locked memory).
    pub fn raw(&self) -> &[u8] {
        &self.locked[..KEY_LEN]
    }
}

/// The keys of these files in order, each with where it came from (for error messages).
pub fn read_keys(paths: &[PathBuf]) -> Result<Vec<(CustomerKey, String)>, KeyError> {
    let mut keys = Vec::new();
    for path in paths {
        let content = read_key_file(path)?;
        let ring = CustomerKey::parse_ring(&content, path)?;
        let many = ring.len() > 1;
        for (i, k) in ring.into_iter().enumerate() {
            let origin = if many {
                format!("{} key {}", path.display(), i + 1)
            } else {
                path.display().to_string()
            };
            keys.push((k, origin));
        }
    }
    Ok(keys)
}

/// The most of a key file that is read: a ring of 255 keys with comments fits.
const MAX_KEY_FILE: usize = 64 * 1024;

/// Read a key file after checking it is a private regular file (at most [`MAX_KEY_FILE`]
/// bytes are read).
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
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
    // Room for the whole file up front: a growing Vec would free (unwiped) copies of the
    // key's first bytes on each reallocation.
    let mut content = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE + 1));
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_KEY_FILE as u64)
        .read_to_end(&mut content)
        .map_err(io)?;
    Ok(content)
}

/// The base64 text written by [`CustomerKey::from_bytes`] (ASCII by construction).
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("base64 text is ASCII")
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

/// The keys a mount may use: the first seals every new write, all of them open objects (so
/// objects written under an older key stay readable until `ssecfs rotate` re-encrypts them).
pub struct KeyRing {
    keys: Vec<CustomerKey>,
}

impl KeyRing {
    /// A ring of these keys, in order. Refuses an empty ring and the same key twice (it would
    /// make fingerprints ambiguous and is almost certainly a mistake in the command line).
    pub fn new(keys: Vec<(CustomerKey, String)>) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        if keys.len() > u8::MAX as usize {
            return Err(KeyError::TooMany(keys.len()));
        }
        for (i, (k, origin)) in keys.iter().enumerate() {
            if let Some((_, first)) = keys[..i]
                .iter()
                .find(|(o, _)| o.fingerprint() == k.fingerprint())
            {
                return Err(KeyError::Duplicate {
                    fingerprint: k.fingerprint().to_owned(),
                    first: first.clone(),
                    second: origin.clone(),
                });
            }
        }
        Ok(KeyRing {
            keys: keys.into_iter().map(|(k, _)| k).collect(),
        })
    }

    /// Load every key file in order (each one key or a key-ring file, see
    /// [`CustomerKey::parse_ring`]), with the same checks as [`CustomerKey::load`].
    pub fn load(paths: &[PathBuf]) -> Result<KeyRing, KeyError> {
        KeyRing::new(read_keys(paths)?)
    }

    /// A ring of one key.
    pub fn single(key: CustomerKey) -> KeyRing {
        KeyRing { keys: vec![key] }
    }

    /// The key new objects are written with.
    pub fn primary(&self) -> &CustomerKey {
        &self.keys[0]
    }

    /// The key at `index` (0 is the primary), if the ring has one there.
    pub fn get(&self, index: u8) -> Option<&CustomerKey> {
        self.keys.get(index as usize)
    }

    /// Where the key with this fingerprint sits in the ring.
    pub fn position(&self, fingerprint: &str) -> Option<u8> {
        self.keys
            .iter()
            .position(|k| k.fingerprint() == fingerprint)
            .map(|i| i as u8)
    }

    /// Number of keys (at least one).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring has at least one key (clippy's `len` without `is_empty`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys in ring order.
    pub fn iter(&self) -> impl Iterator<Item = &CustomerKey> {
        self.keys.iter()
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter()).finish()
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
    crate::sys::getrandom(&mut bytes[..]).map_err(io)?;
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

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn key_ring_file_holds_one_key_per_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "# new key first\n{}\n\n  {}  \n",
            b64(&[1u8; 32]),
            b64(&[2u8; 32])
        );
        let p = write_key(&dir, text.as_bytes(), 0o600);
        let ring = KeyRing::load(std::slice::from_ref(&p)).unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.primary().raw(), &[1u8; 32]);
        assert_eq!(ring.get(1).unwrap().raw(), &[2u8; 32]);
        assert!(ring.get(2).is_none());
        let fp = ring.get(1).unwrap().fingerprint().to_owned();
        assert_eq!(ring.position(&fp), Some(1));
        // a single-key file is a ring of one; several files add up in order
        let q = dir.path().join("third");
        std::fs::write(&q, format!("{}\n", b64(&[3u8; 32]))).unwrap();
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ring = KeyRing::load(&[q, p]).unwrap();
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.primary().raw(), &[3u8; 32]);
        assert!(!format!("{ring:?}").contains(&b64(&[3u8; 32])));
    }

    #[test]
    fn key_ring_refuses_duplicates_bad_lines_and_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{}\n{}\n", b64(&[1u8; 32]), b64(&[1u8; 32]));
        let p = write_key(&dir, text.as_bytes(), 0o600);
        let err = KeyRing::load(std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("same key") && err.contains("twice"), "{err}");
        assert!(!err.contains(&b64(&[1u8; 32])), "{err}");

        let text = format!("{}\n{}\n", b64(&[1u8; 32]), b64(&[2u8; 16]));
        std::fs::write(&p, text).unwrap();
        let err = KeyRing::load(std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("16 bytes"), "{err}");

        let err = KeyRing::load(&[]).unwrap_err().to_string();
        assert!(err.contains("--key-file"), "{err}");

        std::fs::write(&p, "# only a comment\n\n").unwrap();
        let err = KeyRing::load(std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key file") && err.contains("base64"), "{err}");
    }

    #[test]
    fn thirty_three_bytes_is_no_ring() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = vec![7u8; 33];
        raw[10] = b'\n';
        let p = write_key(&dir, &raw, 0o600);
        let err = KeyRing::load(std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("33 bytes"), "{err}");
    }
}
