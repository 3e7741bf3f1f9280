//! Heap tuning for training: freed tensor buffers stay in the process for the next step.
//!
//! Every training step allocates and frees the same few hundred multi-megabyte buffers. glibc's
//! malloc serves large blocks with `mmap` and gives them back with `munmap` on free, so each
//! step pays page faults, zeroing of fresh pages by the kernel and TLB shoot-downs across cores
//! (about a seventh of a BERT-mini step on 2 cores, measured with `perf`). Raising the mmap
//! threshold to its maximum (32 MiB) and the trim threshold keeps those buffers in the heap.

/// Serves blocks up to 32 MiB from the heap and keeps up to 1 GiB of freed memory for reuse
/// (glibc on Linux; elsewhere the allocator's defaults stand).
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
