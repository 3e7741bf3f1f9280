//! The heap's free memory goes back to the system when the memory check asks (before it refuses
//! a model, the memory an earlier stage freed counts as the process's). Measured as the
//! process's resident memory, so this test has its binary to itself: tests running beside it
//! in one process would move the figure.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_heap_memory_goes_back_to_the_system() {
    use rkd::ml::kernels::host_memory::{proc_kib, release_free_heap};
    let rss_bytes = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        proc_kib(&status, "VmRSS:").unwrap() * 1024
    };
    // 160 MB in blocks small enough for the heap, each written, then all freed but the last
    // (which keeps the heap from shrinking on its own): the heap holds them until released.
    let mut blocks: Vec<Vec<u8>> = (0..2560).map(|_| vec![1u8; 64 << 10]).collect();
    let last = blocks.pop();
    drop(blocks);
    let held = rss_bytes();
    release_free_heap();
    let after = rss_bytes();
    drop(last);
    assert!(
        held.saturating_sub(after) >= 80 << 20,
        "RSS {held} before and {after} after releasing"
    );
}
