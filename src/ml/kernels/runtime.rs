//! Process-wide settings for fast CPU training, applied once at start-up ([`configure`]), the
//! shared pool of threads that running stages compute on ([`shared_threads`]), and rayon pools
//! of a chosen size ([`with_threads`], for benchmarks and tests).
//!
//! - Cores: every stage's parallel work (matrix products, fused kernels, the optimiser) runs on
//!   rayon's global pool, one thread per core (`RAYON_NUM_THREADS` overrides), shared by all the
//!   stages running at once, like make's jobserver tokens: a stage alone gets every core, two
//!   stages split them as their work comes, and when one ends the other has them all again.
//!   (Fixed per-stage pools of cores/-j threads left a core idle once a stage's neighbours had
//!   finished: a teacher's `predict` over 67k sentences ran on one core for 15 minutes.)
//!
//! - Heap: every training step allocates and frees the same few hundred multi-megabyte
//!   buffers. glibc's malloc serves large blocks with `mmap` and gives them back with `munmap`
//!   on free, so each step pays page faults, zeroing of fresh pages by the kernel and TLB
//!   shoot-downs across cores (about a seventh of a BERT-mini step on 2 cores, measured with
//!   `perf`). Raising the mmap threshold to its maximum (32 MiB) and the trim threshold keeps
//!   those buffers in the heap, and one arena for all threads (`M_ARENA_MAX = 1`) lets a
//!   buffer freed on one thread serve the next allocation on another: with per-thread arenas
//!   the ViT backward pass still faulted pages in and varied from 0.42 to 0.60 s between runs;
//!   with one arena it takes 0.41–0.43 s.
//! - Threads: candle 0.11 runs its element-wise ops on a pool of its own (`candle-bp-*`
//!   threads, pinned, spinning 25 000 times after each op) beside rayon's, which runs the
//!   matrix products and every fused kernel here. On a machine with as many rayon threads as
//!   cores the two pools fight for the cores: `rkd bench train` on 2 cores took 0.29 s (BERT-mini)
//!   and 0.80 s (ViT) per step with candle's pool and 0.24 s / 0.64–0.72 s without it. So
//!   candle's pool is limited to the calling thread (`CANDLE_NUM_THREADS=1`) unless the user
//!   set that variable (commands run by `exec` stages do not inherit it).

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether [`configure`] set `CANDLE_NUM_THREADS` (rather than the user).
static SET_CANDLE_THREADS: AtomicBool = AtomicBool::new(false);

/// Applies the settings above; call first thing in `main`, before any other thread starts.
pub fn configure() {
    keep_freed_buffers();
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Safe here: no other thread exists yet (see the doc comment), and candle reads the
        // variable when its pool is first used.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
        SET_CANDLE_THREADS.store(true, Ordering::Relaxed);
    }
}

/// Environment variables rkd set for itself, which commands it runs (`exec` stages) should
/// not inherit.
pub fn own_env_vars() -> Vec<&'static str> {
    if SET_CANDLE_THREADS.load(Ordering::Relaxed) {
        vec!["CANDLE_NUM_THREADS"]
    } else {
        Vec::new()
    }
}

/// Serves blocks up to 32 MiB from one shared heap and keeps up to 1 GiB of freed memory for
/// reuse (glibc on Linux; elsewhere the allocator's defaults stand).
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Threads of the shared pool that stages compute on (rayon's global pool: one per core, or
/// `RAYON_NUM_THREADS`).
pub fn shared_threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on a rayon pool of `threads` threads, so that candle's parallel kernels (matrix
/// products) and the optimiser use at most that many; falls back to the global pool when the
/// pool cannot be built.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}
