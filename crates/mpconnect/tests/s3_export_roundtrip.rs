//! What the S3 export destination writes, the S3 source reads back: mParticle's own layout
//! both ways, through a real bucket on moto.

use std::time::Duration;

use delivery::Driver;
use delivery::s3::{S3Driver, S3ExportSettings};
use ingest::s3::{ObjectRef, S3Source, S3SourceSettings};
use prost::Message as _;
use runtime::AnyStore;
use runtime::queue::{EmbeddedSync, embedded_stage_queue, local_data};
use runtime::store::S3Store;
use schema::v1::RoutedBatch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_source_reads_back_what_the_s3_destination_wrote() {
    let (_, s3) = runtime::testing::moto_clients().await;
    let bucket = runtime::testing::unique("roundtrip");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let driver = S3Driver::new(
        AnyStore::S3(S3Store::new(s3.clone(), bucket.clone())),
        S3ExportSettings {
            gzip: true,
            date_folders: true,
            max_age: Duration::from_millis(100),
            ..S3ExportSettings::default()
        },
    );
    let mut sent = Vec::new();
    let routed: Vec<RoutedBatch> = (0..4)
        .flat_map(|seed| {
            schema::decode_batches(&schema::testing::bulk_request(seed, true)).unwrap()
        })
        .enumerate()
        .map(|(i, mut batch)| {
            batch.source_request_id = Some(format!("rt-{i}"));
            sent.push(batch.clone());
            RoutedBatch {
                key: i.to_string(),
                batch: Some(batch),
                ..Default::default()
            }
        })
        .collect();
    let answers = driver
        .send(&routed, std::time::Instant::now() + Duration::from_secs(10))
        .await;
    assert!(answers.iter().all(|a| *a == delivery::Answer::Delivered));

    let dir = tempfile::tempdir().unwrap();
    let (db, store) = local_data(dir.path(), EmbeddedSync::Normal).unwrap();
    let queue = embedded_stage_queue(&db, "ingest", &store);
    let source =
        S3Source::for_backfill(S3SourceSettings::default(), s3.clone(), queue.clone(), None);
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    for object in listed.contents() {
        let summary = source
            .read_object(&ObjectRef {
                bucket: bucket.clone(),
                key: object.key().unwrap().to_owned(),
                etag: object.e_tag().map(str::to_owned),
                size: object.size().map(|s| s as u64),
            })
            .await
            .unwrap();
        assert_eq!(summary.bad_lines, 0);
    }
    let mut received: Vec<schema::v1::Batch> =
        runtime::testing::drain(&queue, Duration::from_millis(100))
            .await
            .iter()
            .map(|m| schema::v1::Batch::decode(m.body.as_ref()).unwrap())
            .collect();
    received.sort_by_key(|b| b.source_request_id.clone());
    sent.sort_by_key(|b| b.source_request_id.clone());
    assert_eq!(received.len(), sent.len());
    assert_eq!(received, sent, "every batch, field for field");
}
