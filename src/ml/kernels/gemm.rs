//! Matrix products on strided f32 views, through the `gemm` crate (candle's own CPU kernel).
//!
//! candle's `matmul` zero-fills a fresh output and cannot accumulate into an existing buffer or
//! read a sub-matrix with arbitrary strides; the fused ops ([`super::fused_linear`],
//! [`super::fused_attention`]) call this instead.

use gemm::Parallelism;
use rayon::prelude::*;

/// A read-only `rows × cols` matrix inside `data`: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    /// The backing slice.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix (`rs = cols`, `cs = 1`).
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A matrix with explicit strides.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The transpose (a view: swaps the shape and the strides).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn check(&self, what: &str) {
        check_view(self.data.len(), self.rows, self.cols, self.rs, self.cs, what);
    }
}

/// Panics unless every element of the view lies inside a slice of `len` (no overflow, strides
/// that fit an `isize`).
fn check_view(len: usize, rows: usize, cols: usize, rs: usize, cs: usize, what: &str) {
    assert!(
        rs <= isize::MAX as usize && cs <= isize::MAX as usize,
        "{what}: stride too large"
    );
    if rows > 0 && cols > 0 {
        let last = (rows - 1)
            .checked_mul(rs)
            .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)));
        assert!(last.is_some_and(|l| l < len), "{what}: view past the end of its slice");
    }
}

/// A writable `rows × cols` matrix inside `data` (same layout rules as [`Mat`]).
#[derive(Debug)]
pub struct MatMut<'a> {
    /// The backing slice.
    pub data: &'a mut [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

impl<'a> MatMut<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A matrix with explicit strides.
    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }
}

/// Products with this many rows run as one block of rows per thread, each block one
/// single-threaded `gemm` call ([`matmul`]): on BERT-mini's 2,048-row products that made
/// inference 7–9 % faster than `gemm`'s own threading (2 threads, AVX-512); splitting the ViT's
/// 6,304-row products as well did not pay.
const ROW_SPLIT: std::ops::RangeInclusive<usize> = 512..=4096;
/// `gemm` takes other code (another inner-dimension blocking, a matrix-vector routine) for
/// products of at most this many rows and columns, or of one row: row blocks never make one.
const SMALL_GEMM: usize = 64;
/// Products with at most this many rows are split into column panels ([`matmul`]).
const FEW_ROWS: usize = 128;
/// Columns per panel of a few-row product.
const PANEL_COLS: usize = 64;

/// A pointer into one output buffer, shared by tasks that write disjoint elements of it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(*mut f32);

// SAFETY: only used for writes to elements that no other task touches (see each use).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A pointer to the start of `buf`.
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        Self(buf.as_mut_ptr())
    }

    /// The element at `offset`.
    ///
    /// # Safety
    /// `offset` must lie inside the buffer.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's promise.
        unsafe { self.0.add(offset) }
    }
}

/// Whether a product runs on one thread or on the current rayon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (for products already inside a parallel loop).
    One,
    /// All threads of the current rayon pool.
    Pool,
}

/// `dst = scale·lhs·rhs`, or `dst += scale·lhs·rhs` with `accumulate`; `dst` need not be
/// initialised when not accumulating. Panics if the shapes disagree or a view leaves its slice
/// (a programming error, not an input error).
pub(crate) fn matmul(mut dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, scale: f32, accumulate: bool, threads: Threads) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: inner dimensions differ");
    assert_eq!((dst.rows, dst.cols), (m, n), "matmul: destination shape");
    lhs.check("lhs");
    rhs.check("rhs");
    check_dst(&dst);
    if no_product(&mut dst, k, accumulate) {
        return;
    }
    if threads == Threads::Pool && m <= FEW_ROWS && n >= 2 * PANEL_COLS {
        // Few rows, many columns (inference at batch 1, a classifier's head): gemm's own
        // threading splits such shapes poorly (BERT-mini at batch 1 took 30 % longer). The split
        // does not depend on the thread count, so neither do the results.
        in_panels(dst, lhs, (n, PANEL_COLS), (scale, accumulate), 0, &rhs);
        return;
    }
    let nt = rayon::current_num_threads();
    if threads == Threads::Pool && nt > 1 && ROW_SPLIT.contains(&m) && n > SMALL_GEMM {
        in_row_blocks(dst, lhs, rhs, (scale, accumulate), nt);
        return;
    }
    let parallelism = match threads {
        Threads::Pool if nt > 1 => Parallelism::Rayon(nt),
        _ => Parallelism::None,
    };
    // SAFETY: every element the kernel touches lies inside the slices (checked above); `dst`
    // is borrowed mutably, so nothing else reads or writes it meanwhile.
    unsafe {
        call_gemm(
            dst.data.as_mut_ptr(),
            (m, n, k),
            (dst.rs, dst.cs),
            lhs,
            rhs,
            (accumulate, scale),
            parallelism,
        )
    }
}

/// Panics unless every element of the destination view lies inside its slice and distinct
/// elements do not share memory (threads write them at once).
fn check_dst(dst: &MatMut<'_>) {
    let (m, n) = (dst.rows, dst.cols);
    check_view(dst.data.len(), m, n, dst.rs, dst.cs, "dst");
    let one_row_ok = m <= 1 && (n <= 1 || dst.cs > 0);
    let one_column_ok = n <= 1 && dst.rs > 0;
    let rows_apart = dst.cs > 0 && dst.rs >= n * dst.cs;
    let columns_apart = dst.rs > 0 && dst.cs >= m * dst.rs;
    let disjoint = one_row_ok || one_column_ok || rows_apart || columns_apart;
    assert!(disjoint, "dst: elements of the view overlap");
}

/// Settles a product with nothing to multiply (an empty destination, or `k = 0`: zeros unless
/// accumulating); says whether it did.
fn no_product(dst: &mut MatMut<'_>, k: usize, accumulate: bool) -> bool {
    if dst.rows == 0 || dst.cols == 0 {
        return true;
    }
    if k > 0 {
        return false;
    }
    if !accumulate {
        for i in 0..dst.rows {
            for j in 0..dst.cols {
                dst.data[i * dst.rs + j * dst.cs] = 0.0;
            }
        }
    }
    true
}

/// `gemm::gemm` on the views: `dst = (dst if accumulate) + scale·lhs·rhs`.
///
/// # Safety
/// `dst` with the strides `(rs, cs)` must address `m × n` distinct elements valid for writes,
/// written by no one else meanwhile; `lhs` and `rhs` are checked views of `m × k` and `k × n`.
unsafe fn call_gemm(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    (rs, cs): (usize, usize),
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    (accumulate, scale): (bool, f32),
    parallelism: Parallelism,
) {
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            cs as isize,
            rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The right-hand side of a product taken panel by panel ([`matmul_panels`]).
pub(crate) trait RhsPanels: Sync {
    /// Columns `j0..j0 + w` (`k × w`): a view of its own, or of `buffer` (a scratch buffer of
    /// the task), which it fills first.
    fn panel<'s>(&'s self, j0: usize, w: usize, buffer: &'s mut [f32]) -> Mat<'s>;
}

impl RhsPanels for Mat<'_> {
    fn panel<'s>(&'s self, j0: usize, w: usize, _: &'s mut [f32]) -> Mat<'s> {
        Mat::strided(&self.data[j0 * self.cs..], self.rows, w, self.rs, self.cs)
    }
}

/// `dst = scale·lhs·rhs` (`+ dst` with `accumulate`) as panels of `width` columns of `rhs`, in
/// parallel, each product on one thread; each task has a scratch buffer of `buffer_len` floats
/// for `rhs` to fill (the NF4 kernel dequantizes its weight there). Same checks as [`matmul`].
pub(crate) fn matmul_panels(
    mut dst: MatMut<'_>,
    lhs: Mat<'_>,
    width: usize,
    (scale, accumulate): (f32, bool),
    buffer_len: usize,
    rhs: &impl RhsPanels,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, dst.cols);
    assert_eq!(dst.rows, m, "matmul: destination shape");
    assert!(width > 0, "matmul: empty panels");
    lhs.check("lhs");
    check_dst(&dst);
    if no_product(&mut dst, k, accumulate) {
        return;
    }
    in_panels(dst, lhs, (n, width), (scale, accumulate), buffer_len, rhs);
}

/// The panels of [`matmul_panels`], on a checked destination and a nonempty product.
fn in_panels(
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    (n, width): (usize, usize),
    (scale, accumulate): (f32, bool),
    buffer_len: usize,
    rhs: &impl RhsPanels,
) {
    let (m, k) = (lhs.rows, lhs.cols);
    let (rs, cs) = (dst.rs, dst.cs);
    let out = SendPtr::new(dst.data);
    (0..n.div_ceil(width)).into_par_iter().for_each_init(
        || uninit_vec(buffer_len),
        |buffer, p| {
            let (j0, w) = (p * width, width.min(n - p * width));
            let rhs = rhs.panel(j0, w, buffer);
            assert_eq!((rhs.rows, rhs.cols), (k, w), "matmul: panel shape");
            rhs.check("rhs panel");
            // SAFETY: the destination view was checked by the caller; this task writes its
            // columns j0..j0 + w only, which no other task writes.
            unsafe {
                call_gemm(
                    out.at(j0 * cs),
                    (m, w, k),
                    (rs, cs),
                    lhs,
                    rhs,
                    (accumulate, scale),
                    Parallelism::None,
                )
            }
        },
    );
}

/// The product as `threads` blocks of rows (heights multiples of 64; a last block of fewer
/// rows joins the one before), each computed by one single-threaded `gemm` call in parallel.
/// `gemm` blocks the inner dimension by `k` and the cache sizes alone except on small products
/// (at most [`SMALL_GEMM`] rows and columns, or one row), which [`matmul`] (more than
/// [`SMALL_GEMM`] columns) and the heights rule out; so each output element is the same sum in
/// the same order as in one call, and results do not depend on the thread count.
fn in_row_blocks(dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, (scale, accumulate): (f32, bool), threads: usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let height = m.div_ceil(threads).div_ceil(SMALL_GEMM) * SMALL_GEMM;
    let mut blocks = m.div_ceil(height);
    if blocks > 1 && m - (blocks - 1) * height < SMALL_GEMM {
        blocks -= 1;
    }
    let (rs, cs) = (dst.rs, dst.cs);
    let out = SendPtr::new(dst.data);
    (0..blocks).into_par_iter().for_each(|b| {
        let i0 = b * height;
        let h = if b + 1 == blocks { m - i0 } else { height };
        let block = Mat {
            data: &lhs.data[i0 * lhs.rs..],
            rows: h,
            ..lhs
        };
        block.check("lhs row block");
        // SAFETY: the destination view was checked by the caller; this task writes its rows
        // i0..i0 + h only, which no other task writes.
        unsafe {
            call_gemm(
                out.at(i0 * rs),
                (h, n, k),
                (rs, cs),
                block,
                rhs,
                (accumulate, scale),
                Parallelism::None,
            )
        }
    });
}

/// A `Vec` of `n` floats whose contents will all be overwritten (no zero-filling pass); its
/// elements hold arbitrary values until written.
pub(crate) fn uninit_vec(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: callers write every element before anything reads it (each caller's own loop or
    // a non-accumulating `gemm` call, which never reads its destination), so no uninitialised
    // value is ever read; f32 has no invalid bit patterns once written.
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_match_the_definition_with_transposes_scale_and_accumulation() {
        let (m, k, n) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = uninit_vec(m * n);
        matmul(
            MatMut::rows(&mut c, m, n),
            Mat::rows(&a, m, k),
            Mat::rows(&b, k, n),
            1.0,
            false,
            Threads::Pool,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // bᵀ stored as [n, k] and read through a transposed view; result scaled by 2 and added.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        matmul(
            MatMut::rows(&mut c, m, n),
            Mat::rows(&a, m, k),
            Mat::rows(&bt, n, k).t(),
            2.0,
            true,
            Threads::One,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 3.0 * y).abs() < 1e-4);
        }
    }

    #[test]
    fn products_in_row_blocks_give_the_bits_of_one_call_on_any_thread_count() {
        // Shapes whose blocks would otherwise reach gemm's small-product code: a 1-row last block
        // (513 rows), short last blocks, and outputs of at most 64 columns (a classifier head).
        for (m, k, n) in [
            (513, 256, 256),
            (514, 768, 128),
            (600, 768, 40),
            (600, 64, 2),
            (4096, 96, 65),
        ] {
            assert!(ROW_SPLIT.contains(&m));
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let run = |threads: usize| {
                crate::ml::kernels::runtime::with_threads(threads, || {
                    let mut c = vec![0.5f32; m * n];
                    let (dst, lhs, rhs) = (
                        MatMut::rows(&mut c, m, n),
                        Mat::rows(&a, m, k),
                        Mat::rows(&bt, n, k).t(),
                    );
                    matmul(dst, lhs, rhs, 1.0, true, Threads::Pool);
                    c
                })
            };
            let one = run(1);
            for threads in [2, 3, 4, 5, 8, 10, 16] {
                let other = run(threads);
                let differ = one
                    .iter()
                    .zip(&other)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "{m}×{k}×{n} on {threads} threads: {differ} outputs differ from 1 thread"
                );
            }
        }
    }

    #[test]
    fn products_in_row_blocks_match_and_ignore_the_thread_count() {
        // 600 rows (blocks of 320 + 280 on 2 threads, 5 × 128 on 5), an inner dimension of 700
        // (two of gemm's k blocks), the weight read transposed, scale and accumulation.
        let (m, k, n) = (600, 700, 40);
        assert!(ROW_SPLIT.contains(&m));
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want = naive(&a, &b, m, k, n);
        let run = |threads: usize| {
            crate::ml::kernels::runtime::with_threads(threads, || {
                let mut c = vec![1.0f32; m * n];
                matmul(
                    MatMut::rows(&mut c, m, n),
                    Mat::rows(&a, m, k),
                    Mat::rows(&bt, n, k).t(),
                    2.0,
                    true,
                    Threads::Pool,
                );
                c
            })
        };
        let one = run(1);
        for (x, y) in one.iter().zip(&want) {
            assert!(
                (x - (1.0 + 2.0 * y)).abs() < 1e-3 * (1.0 + y.abs()),
                "{x} vs {}",
                1.0 + 2.0 * y
            );
        }
        assert_eq!(one, run(2));
        assert_eq!(one, run(5));
    }

    #[test]
    fn few_row_products_split_into_column_panels_match_and_ignore_the_thread_count() {
        // 5 rows × 200 columns: four panels (the last partial), the weight read transposed, a
        // column-major destination, scale and accumulation.
        let (m, k, n) = (5, 33, 200);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want = naive(&a, &b, m, k, n);
        let run = |threads: usize| {
            crate::ml::kernels::runtime::with_threads(threads, || {
                let mut c = vec![1.0f32; m * n];
                matmul(
                    MatMut::strided(&mut c, m, n, 1, m),
                    Mat::rows(&a, m, k),
                    Mat::rows(&bt, n, k).t(),
                    2.0,
                    true,
                    Threads::Pool,
                );
                c
            })
        };
        let one = run(1);
        for i in 0..m {
            for j in 0..n {
                assert!((one[j * m + i] - (1.0 + 2.0 * want[i * n + j])).abs() < 1e-4);
            }
        }
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn an_overlapping_destination_is_refused() {
        let a = vec![0.0; 4];
        let mut c = vec![0.0; 4];
        matmul(
            MatMut::strided(&mut c, 2, 2, 1, 1),
            Mat::rows(&a, 2, 2),
            Mat::rows(&a, 2, 2),
            1.0,
            false,
            Threads::One,
        );
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn an_overflowing_stride_is_refused() {
        let a = vec![0.0; 4];
        let mut c = vec![0.0; 4];
        let huge = Mat::strided(&a, 3, 1, 1 << 62, 1);
        matmul(
            MatMut::rows(&mut c, 3, 1),
            huge,
            Mat::rows(&a, 1, 1),
            1.0,
            false,
            Threads::One,
        );
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn a_view_outside_its_slice_is_refused() {
        let a = vec![0.0; 6];
        let mut c = vec![0.0; 4];
        matmul(
            MatMut::rows(&mut c, 2, 2),
            Mat::rows(&a, 2, 4),
            Mat::rows(&a, 4, 2),
            1.0,
            false,
            Threads::One,
        );
    }
}
