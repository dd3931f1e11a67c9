//! An in-memory [`ObjectStore`] that enforces SSE-C like Garage, for fast filesystem tests.
//!
//! Objects remember the fingerprint of the key they were written with; a read or copy with
//! another key fails with `WrongKey`, as the real server does. Every call is counted per
//! operation so tests can assert how many requests a workload costs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CompletedPart, CopyRequest, ListPage, ListedObject, Metadata, ObjectInfo, ObjectStore,
    PartSource, PendingUpload, ReadSource, Request, S3Error, S3Result, Sealing,
    KEY_FINGERPRINT_META,
};

#[derive(Clone)]
struct Obj {
    data: Vec<u8>,
    meta: Metadata,
    etag: String,
    /// fingerprint of the key, None for a plain object
    key_fp: Option<String>,
    modified: SystemTime,
}

/// An open multipart upload.
struct Upload {
    key: String,
    meta: Metadata,
    parts: BTreeMap<i32, Vec<u8>>,
    initiated: SystemTime,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Obj>,
    uploads: HashMap<String, Upload>,
    /// Completed uploads and the ETag each produced: a Complete retried after its answer was
    /// lost finds the upload gone, and succeeds if the object is still that upload's (as
    /// AwsStore does by the multipart ETag).
    completed: HashMap<String, (String, String)>,
    next: u64,
    counts: BTreeMap<&'static str, u64>,
    /// How long a copy's reply takes after the copy took effect (see `delay_copy_replies`).
    copy_reply_delay: std::time::Duration,
    /// How long a delete's reply takes after the delete took effect (`delay_delete_replies`).
    delete_reply_delay: std::time::Duration,
    /// A part number whose uploads wait for a permit of this gate (see `hold_part`).
    held_part: Option<(i32, Arc<tokio::sync::Semaphore>)>,
    /// CopyObjects wait for a permit of this gate before they take effect (`hold_copies`).
    held_copies: Option<Arc<tokio::sync::Semaphore>>,
}

/// Shared in-memory bucket. Clone to get another client on the same data.
#[derive(Clone)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
    /// fingerprints of the key ring; the first seals writes
    ring: Vec<String>,
}

impl MemStore {
    /// A new empty bucket accessed with the key of this fingerprint.
    pub fn new(key_fp: &str) -> MemStore {
        MemStore {
            state: Arc::default(),
            ring: vec![key_fp.to_owned()],
        }
    }

    /// Another client on the same bucket with another key.
    pub fn with_key(&self, key_fp: &str) -> MemStore {
        self.with_ring(&[key_fp])
    }

    /// Another client on the same bucket with a key ring (the first key seals writes).
    pub fn with_ring(&self, fps: &[&str]) -> MemStore {
        MemStore {
            state: self.state.clone(),
            ring: fps.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// Make the uploads of part `number` wait until the returned gate gets a permit: a part
    /// slower than the ones after it, as on a real link.
    pub fn hold_part(&self, number: i32) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.state.lock().unwrap().held_part = Some((number, gate.clone()));
        gate
    }

    /// Make every CopyObject wait, before it takes effect, until the returned gate gets a
    /// permit (one per copy): a copy whose request is still on its way while other requests
    /// are answered.
    pub fn hold_copies(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.state.lock().unwrap().held_copies = Some(gate.clone());
        gate
    }

    /// Make every CopyObject answer `delay` after it took effect, as a real server's reply
    /// travels while the new object is already served: opens the window in which a request
    /// racing the copy meets the new object before the copier knows its ETag.
    pub fn delay_copy_replies(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().copy_reply_delay = delay;
    }

    /// Make every DeleteObject answer `delay` after it took effect: opens the window in
    /// which the deleted name is gone but the deleter has not heard so yet.
    pub fn delay_delete_replies(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delete_reply_delay = delay;
    }

    /// Fingerprint of the key an object is sealed with (None: plain or missing).
    pub fn sealed_with(&self, key: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(key)
            .and_then(|o| o.key_fp.clone())
    }

    /// Requests made so far, by operation name.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.state.lock().unwrap().counts.clone()
    }

    /// Bytes uploaded by PutObject and UploadPart so far.
    pub fn uploaded_bytes(&self) -> u64 {
        self.counts().get("bytes_up").copied().unwrap_or(0)
    }

    /// Store a plain (non SSE-C) object, as another tool would.
    pub fn insert_plain(&self, key: &str, data: &[u8]) {
        let mut st = self.state.lock().unwrap();
        st.next += 1;
        let etag = format!("\"plain{}\"", st.next);
        st.objects.insert(
            key.to_owned(),
            Obj {
                data: data.to_vec(),
                meta: Metadata::new(),
                etag,
                key_fp: None,
                modified: SystemTime::now(),
            },
        );
    }

    /// Raw object bytes (test inspection).
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(key)
            .map(|o| o.data.clone())
    }

    fn count(st: &mut State, op: &'static str) {
        *st.counts.entry(op).or_default() += 1;
    }

    fn check_key(&self, o: &Obj, sealing: Sealing) -> S3Result<()> {
        match (&o.key_fp, sealing) {
            (Some(fp), Sealing::Key(i)) if self.ring.get(i as usize) == Some(fp) => Ok(()),
            (None, Sealing::Plain) => Ok(()),
            _ => Err(S3Error::WrongKey),
        }
    }

    /// What HEAD finds: the ring key that opens `o`, or plain.
    fn sealing_of(&self, o: &Obj) -> S3Result<Sealing> {
        match &o.key_fp {
            None => Ok(Sealing::Plain),
            Some(fp) => self
                .ring
                .iter()
                .position(|r| r == fp)
                .map(|i| Sealing::Key(i as u8))
                .ok_or(S3Error::WrongKey),
        }
    }

    fn store(&self, st: &mut State, key: &str, data: Vec<u8>, mut meta: Metadata) -> String {
        meta.insert(KEY_FINGERPRINT_META.to_owned(), self.ring[0].clone());
        st.next += 1;
        let etag = format!("\"e{}\"", st.next);
        st.objects.insert(
            key.to_owned(),
            Obj {
                data,
                meta,
                etag: etag.clone(),
                key_fp: Some(self.ring[0].clone()),
                modified: SystemTime::now(),
            },
        );
        etag
    }
}

#[async_trait]
impl ObjectStore for MemStore {
    async fn head(&self, key: &str) -> S3Result<ObjectInfo> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "head");
        let o = st.objects.get(key).ok_or(S3Error::NotFound)?;
        let sealing = self.sealing_of(o)?;
        Ok(ObjectInfo {
            size: o.data.len() as u64,
            etag: o.etag.clone(),
            last_modified: o.modified,
            metadata: o.meta.clone(),
            sealing,
        })
    }

    async fn get_ranges(
        &self,
        src: &ReadSource<'_>,
        offset: u64,
        bufs: &mut [&mut [u8]],
    ) -> S3Result<usize> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "get");
        let o = st.objects.get(src.key).ok_or(S3Error::NotFound)?;
        self.check_key(o, src.sealing)?;
        if src.etag.is_some_and(|e| e != o.etag) {
            return Err(S3Error::PreconditionFailed);
        }
        let mut at = (offset as usize).min(o.data.len());
        let mut n = 0;
        for buf in bufs.iter_mut() {
            let end = (at + buf.len()).min(o.data.len());
            buf[..end - at].copy_from_slice(&o.data[at..end]);
            n += end - at;
            at = end;
        }
        *st.counts.entry("bytes_down").or_default() += n as u64;
        Ok(n)
    }

    async fn get_whole(&self, key: &str, buf: &mut [u8]) -> S3Result<Option<ObjectInfo>> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "get");
        let o = st.objects.get(key).ok_or(S3Error::NotFound)?;
        if o.data.len() != buf.len() || self.check_key(o, Sealing::PRIMARY).is_err() {
            return Ok(None);
        }
        buf.copy_from_slice(&o.data);
        let info = ObjectInfo {
            size: o.data.len() as u64,
            etag: o.etag.clone(),
            last_modified: o.modified,
            metadata: o.meta.clone(),
            sealing: Sealing::PRIMARY,
        };
        *st.counts.entry("bytes_down").or_default() += buf.len() as u64;
        Ok(Some(info))
    }

    async fn put(&self, key: &str, body: Bytes, meta: &Metadata) -> S3Result<String> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "put");
        *st.counts.entry("bytes_up").or_default() += body.len() as u64;
        Ok(self.store(&mut st, key, body.to_vec(), meta.clone()))
    }

    async fn copy(&self, req: &CopyRequest<'_>) -> S3Result<String> {
        let gate = self.state.lock().unwrap().held_copies.clone();
        if let Some(gate) = gate {
            gate.acquire().await.expect("never closed").forget();
        }
        let (etag, delay) = {
            let mut st = self.state.lock().unwrap();
            Self::count(&mut st, "copy");
            let o = st.objects.get(req.src).ok_or(S3Error::NotFound)?.clone();
            self.check_key(&o, req.src_sealing)?;
            let meta = req.meta.cloned().unwrap_or(o.meta);
            (
                self.store(&mut st, req.dst, o.data, meta),
                st.copy_reply_delay,
            )
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(etag)
    }

    async fn delete(&self, key: &str) -> S3Result<()> {
        let delay = {
            let mut st = self.state.lock().unwrap();
            Self::count(&mut st, "delete");
            st.objects.remove(key);
            st.delete_reply_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<ListPage> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "list");
        let max = max_keys.unwrap_or(1000).max(1) as usize;
        let mut page = ListPage::default();
        let mut seen_prefixes = std::collections::BTreeSet::new();
        let after = token.unwrap_or_default();
        let mut n = 0;
        for (k, o) in st.objects.range(prefix.to_owned()..) {
            if !k.starts_with(prefix) {
                break;
            }
            let rest = &k[prefix.len()..];
            let entry_name = match delimiter.and_then(|d| rest.find(d).map(|i| (i, d))) {
                Some((i, d)) => format!("{prefix}{}{d}", &rest[..i]),
                None => k.clone(),
            };
            if entry_name.as_str() <= after.as_str() && !after.is_empty() {
                continue;
            }
            if entry_name != *k {
                if seen_prefixes.insert(entry_name.clone()) {
                    if n == max {
                        page.next = Some(page_last(&page));
                        break;
                    }
                    page.prefixes.push(entry_name);
                    n += 1;
                }
                continue;
            }
            if n == max {
                page.next = Some(page_last(&page));
                break;
            }
            page.objects.push(ListedObject {
                key: k.clone(),
                size: o.data.len() as u64,
                etag: o.etag.clone(),
                last_modified: o.modified,
            });
            n += 1;
        }
        Ok(page)
    }

    async fn create_multipart(&self, key: &str, meta: &Metadata) -> S3Result<String> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "create_multipart");
        st.next += 1;
        let id = format!("upload{}", st.next);
        st.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_owned(),
                meta: meta.clone(),
                parts: BTreeMap::new(),
                initiated: SystemTime::now(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        _key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> S3Result<CompletedPart> {
        let gate = match &self.state.lock().unwrap().held_part {
            Some((n, gate)) if *n == number => Some(gate.clone()),
            _ => None,
        };
        if let Some(gate) = gate {
            drop(gate.acquire().await);
        }
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "upload_part");
        *st.counts.entry("bytes_up").or_default() += body.len() as u64;
        let up = st.uploads.get_mut(upload_id).ok_or(S3Error::NotFound)?;
        up.parts.insert(number, body.to_vec());
        Ok(CompletedPart {
            number,
            etag: format!("\"p{number}\""),
            crc32c: Some(super::crc32c_base64(&body)),
        })
    }

    async fn upload_part_copy(
        &self,
        _key: &str,
        upload_id: &str,
        number: i32,
        src: &PartSource<'_>,
    ) -> S3Result<CompletedPart> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "upload_part_copy");
        let o = st.objects.get(src.key).ok_or(S3Error::NotFound)?.clone();
        if src
            .if_match()
            .is_some_and(|e| e.trim_matches('"') != o.etag.trim_matches('"'))
        {
            return Err(S3Error::PreconditionFailed);
        }
        self.check_key(&o, src.sealing)?;
        let range = &src.range;
        let data = o
            .data
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| S3Error::Other {
                req: Request::object("UploadPartCopy", src.key),
                status: 416,
                code: "InvalidRange".into(),
                message: String::new(),
            })?
            .to_vec();
        let up = st.uploads.get_mut(upload_id).ok_or(S3Error::NotFound)?;
        up.parts.insert(number, data);
        Ok(CompletedPart {
            number,
            etag: format!("\"c{number}\""),
            crc32c: None,
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> S3Result<String> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "complete_multipart");
        let Some(upload) = st.uploads.get(upload_id) else {
            let done = st.completed.get(upload_id).cloned();
            return match done {
                Some((key, etag)) if st.objects.get(&key).is_some_and(|o| o.etag == etag) => {
                    Ok(etag)
                }
                _ => Err(S3Error::Other {
                    req: Request::object("CompleteMultipartUpload", key),
                    status: 404,
                    code: "NoSuchUpload".into(),
                    message: upload_id.into(),
                }),
            };
        };
        // checked before the upload is consumed: a refused Complete leaves it to retry
        let mut data = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let part = upload.parts.get(&p.number).ok_or_else(|| S3Error::Other {
                req: Request::object("CompleteMultipartUpload", key),
                status: 400,
                code: "InvalidPart".into(),
                message: format!("part {}", p.number),
            })?;
            if i + 1 < parts.len() && (part.len() as u64) < super::MIN_PART {
                return Err(S3Error::Other {
                    req: Request::object("CompleteMultipartUpload", key),
                    status: 400,
                    code: "EntityTooSmall".into(),
                    message: format!("part {} is {} bytes", p.number, part.len()),
                });
            }
            data.extend_from_slice(part);
        }
        let Upload { key, meta, .. } = st.uploads.remove(upload_id).expect("looked up above");
        let etag = self.store(&mut st, &key, data, meta);
        st.completed
            .insert(upload_id.to_owned(), (key.clone(), etag.clone()));
        Ok(etag)
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> S3Result<()> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "abort_multipart");
        st.uploads.remove(upload_id);
        Ok(())
    }

    async fn list_multipart(&self, prefix: &str) -> S3Result<Vec<PendingUpload>> {
        let mut st = self.state.lock().unwrap();
        Self::count(&mut st, "list_multipart");
        Ok(st
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| PendingUpload {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: u.initiated,
            })
            .collect())
    }
}

fn page_last(page: &ListPage) -> String {
    let o = page.objects.last().map(|o| o.key.clone());
    let p = page.prefixes.last().cloned();
    o.max(p).unwrap_or_default()
}
