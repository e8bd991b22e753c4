//! A gzip bomb is refused without the process ever holding its inflated size: this test
//! binary counts every byte allocated while the request is served.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_without_inflating_it() {
    let server = start(settings()).await;
    // 200 KB that inflates to 200 MB.
    let inflated = 200 * 1024 * 1024;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![b' '; 1024 * 1024];
    for _ in 0..inflated / chunk.len() {
        encoder.write_all(&chunk).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    drop(chunk);
    assert!(
        bomb.len() < 256 * 1024,
        "the compressed bomb fits the request limit: {}",
        bomb.len()
    );

    let client = client();
    let request = client
        .post(server.url("/v2/bulkevents"))
        .basic_auth(KEY, Some(SECRET))
        .header("content-encoding", "gzip")
        .body(bomb);
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let response = request.send().await.unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_eq!(response.status(), 413);
    assert!(
        peak < 16 * 1024 * 1024,
        "serving the bomb allocated {peak} bytes at its peak"
    );
    server.stop().await;
}
