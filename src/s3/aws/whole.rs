//! GetObject of a whole small object, attributes and body in one round trip: what a cold
//! read of a small file, and the prefetch of a directory's small files, cost instead of HEAD
//! then GET.

use super::error::sdk_error;
use super::{fill_bufs, malformed, object_metadata, to_system_time, AwsStore, BodyFailure};
use crate::s3::{ObjectInfo, Request, S3Error, S3Result, Sealing};

impl AwsStore {
    /// See [`crate::s3::ObjectStore::get_whole`].
    pub(super) async fn whole(&self, key: &str, buf: &mut [u8]) -> S3Result<Option<ObjectInfo>> {
        let k = self.key();
        let req = self.client.get_object().bucket(&self.bucket).key(key);
        let out = match with_key!(req, k).send().await {
            Ok(out) => out,
            Err(e) => {
                return match sdk_error(Request::object("GetObject", key), e) {
                    // another key of the ring (or none) may open it: HEAD finds out
                    S3Error::WrongKey | S3Error::AccessDenied(_) => Ok(None),
                    e => Err(e),
                };
            }
        };
        self.confirm_sse_c(
            "GetObject",
            key,
            k,
            out.sse_customer_algorithm(),
            out.sse_customer_key_md5(),
        )?;
        if out.content_length() != Some(buf.len() as i64) {
            return Ok(None); // changed since the listing (the body is not read)
        }
        let info = ObjectInfo {
            size: buf.len() as u64,
            etag: out.e_tag().unwrap_or("").to_owned(),
            last_modified: to_system_time(out.last_modified()),
            metadata: object_metadata(out.metadata()),
            sealing: Sealing::PRIMARY,
        };
        let filled = match fill_bufs(out.body, &mut [buf]).await {
            Ok(n) => n,
            Err(BodyFailure(e)) => return Err(e),
        };
        if filled != buf.len() {
            return Err(malformed(
                Request::object("GetObject", key),
                format!(
                    "the body held {filled} bytes; Content-Length said {}",
                    buf.len()
                ),
            ));
        }
        Ok(Some(info))
    }
}
