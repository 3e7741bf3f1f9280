//! The process's resident memory, as Linux reports it (`/proc/self/status`): the peak since
//! start or since [`reset_peak_rss`], for `eval`'s memory figure and `rkd bench infer`.
//!
//! The figure is the whole process's: with `-j 2`, a stage running beside an `eval` adds its
//! own memory to that eval's peak (and an eval that starts resets the other's).

/// Resets the peak resident set size to the current one (`/proc/self/clear_refs`, value 5);
/// false where the system has no such file (not Linux) or refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident set size in bytes (`VmHWM`), if the system tells it.
pub fn peak_rss() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// The current resident set size in bytes (`VmRSS`), if the system tells it.
pub fn current_rss() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    crate::ml::kernels::host_memory::proc_kib(&status, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_a_large_allocation_and_resets() {
        if !reset_peak_rss() {
            crate::say!("no /proc/self/clear_refs here: nothing to test");
            return;
        }
        let before = peak_rss().unwrap();
        // 64 MiB, touched so that it is resident.
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let during = peak_rss().unwrap();
        assert!(during >= before + (60 << 20), "{before} → {during}");
        assert!(current_rss().unwrap() >= 64 << 20);
        drop(big);
    }
}
