//! The object store contract, on a local directory and on S3 (moto).

mod common;

use bytes::Bytes;
use mpconnect_runtime::store::{LocalStore, S3Store};
use mpconnect_runtime::{AnyStore, ObjectStore, StoreError};
use tokio::io::AsyncReadExt;

async fn contract(store: AnyStore) {
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    store
        .put(
            "in/2026-11-29/a.txt",
            Bytes::from_static(b"line 1\nline 2\n"),
        )
        .await
        .unwrap();
    store
        .put("in/b.txt.gz", Bytes::from(big.clone()))
        .await
        .unwrap();
    store
        .put("other/c.txt", Bytes::from_static(b"c"))
        .await
        .unwrap();

    assert_eq!(
        store.get_bytes("in/2026-11-29/a.txt").await.unwrap(),
        Bytes::from_static(b"line 1\nline 2\n")
    );
    // Streamed, in pieces.
    let mut reader = store.get("in/b.txt.gz").await.unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut read = Vec::new();
    loop {
        let n = reader.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        read.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(read, big);

    let listed = store.list("in/").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["in/2026-11-29/a.txt", "in/b.txt.gz"]);
    assert_eq!(listed[1].size, big.len() as u64);
    assert!(listed.iter().all(|o| o.etag.is_some()));

    store
        .put("in/2026-11-29/a.txt", Bytes::from_static(b"replaced"))
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes("in/2026-11-29/a.txt").await.unwrap(),
        Bytes::from_static(b"replaced")
    );

    store.delete("in/b.txt.gz").await.unwrap();
    store.delete("in/b.txt.gz").await.unwrap(); // deleting what is gone succeeds
    assert!(matches!(
        store.get("in/b.txt.gz").await.err(),
        Some(StoreError::NotFound(_))
    ));
    assert_eq!(store.list("in/").await.unwrap().len(), 1);
    assert!(store.list("nothing/").await.unwrap().is_empty());
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    contract(AnyStore::Local(LocalStore::new(dir.path()))).await;
}

#[tokio::test]
async fn local_directory_refuses_keys_that_leave_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("root"));
    for key in ["../escape", "/etc/passwd", "a/../../b", ""] {
        let err = store.put(key, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey(_)), "{key}: {err}");
    }
}

/// A write that fails leaves nothing behind: no half-written `.partial-` file to fill the disk
/// or be mistaken for data.
#[tokio::test]
async fn a_failed_local_write_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    // The key's place is taken by a directory that is not empty: the final rename fails.
    std::fs::create_dir_all(dir.path().join("in/taken/inside")).unwrap();
    let err = store
        .put("in/taken", Bytes::from_static(b"body"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let left: Vec<String> = std::fs::read_dir(dir.path().join("in"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["taken"], "a partial file was left behind");
}

/// Listing while objects are written and deleted never fails: an entry gone between reading
/// the directory and looking at it (a temporary file renamed into place) is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_listing_during_writes_and_deletes_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                let key = format!("letters/{i}.json");
                store
                    .put(&key, Bytes::from(vec![b'x'; 4096]))
                    .await
                    .unwrap();
                if i % 2 == 0 {
                    store.delete(&key).await.unwrap();
                }
            }
        })
    };
    while !writer.is_finished() {
        store.list("letters/").await.expect("a listing mid-write");
    }
    writer.await.unwrap();
    assert_eq!(store.list("letters/").await.unwrap().len(), 200);
}

#[tokio::test]
async fn s3() {
    let (config, settings) = common::aws().await;
    let client = mpconnect_runtime::aws::s3_client(&config, &settings);
    let bucket = common::unique("store");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    contract(AnyStore::S3(S3Store::new(client, bucket))).await;
}
