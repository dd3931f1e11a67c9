//! What a cold read of a directory of small files costs (the in-memory store counts requests).

use super::*;
use crate::cache::blocks::SMALL_BLOCK;
use crate::s3::mem::MemStore;
use crate::s3::Metadata;

/// `cp -r` out of a directory of small files: the listing fetches each file whole, with its
/// attributes, so each costs one GET and no HEAD, and the reads find their data cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_small_files_costs_one_get_per_file() {
    let mem = MemStore::new("k");
    let mut meta = Metadata::new();
    meta.insert("mode".into(), "33188".into());
    for i in 0..20 {
        let body = Bytes::from(vec![i as u8 + 1; 1000 + i * 300]);
        mem.put(&format!("d/f{i:02}"), body, &meta).await.unwrap();
    }
    let big = Bytes::from(vec![7u8; (SMALL_BLOCK + 1) as usize]);
    mem.put("d/big", big, &meta).await.unwrap();
    let fs = Fs::new(
        FsConfig::new("", 1000, 1000),
        Arc::new(mem.clone()),
        Arena::with_cap_unchecked(64 << 20),
    );
    let before = mem.counts();
    let (d, _) = fs.lookup(ROOT, "d").await.unwrap();
    let fh = fs.opendir(d).await.unwrap();
    let entries = fs.readdir(fh, 0).unwrap();
    fs.releasedir(fh);
    assert_eq!(entries.len(), 23);
    for i in 0..20 {
        let (ino, attr) = fs.lookup(d, &format!("f{i:02}")).await.unwrap();
        assert_eq!((attr.size, attr.perm), (1000 + i as u64 * 300, 0o644));
        let fh = fs.open(ino, false, false).await.unwrap();
        let data = fs.read(ino, fh, 0, 128 << 10).await.unwrap();
        fs.release(ino, fh).await.unwrap();
        assert_eq!(data.len(), 1000 + i * 300);
        assert!(data.iter().all(|&b| b == i as u8 + 1));
    }
    let after = mem.counts();
    let spent = |op: &str| after.get(op).unwrap_or(&0) - before.get(op).unwrap_or(&0);
    // the small files are one GET each and no HEAD; HEADs at most of the directory's name,
    // its marker (when the lookup asks before the listing answers) and the big file
    assert_eq!(spent("get"), 20, "{after:?}");
    assert!(spent("head") <= 3, "{after:?}");
}
