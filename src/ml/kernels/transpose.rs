//! Transposes of groups of 8 rows: the layout changes the packed-weight kernels make between
//! row-major data and the column-major panels and tiles their products read or write.
//!
//! On AVX2 and AVX-512 machines each 8 × 8 block is transposed in registers (unpack, shuffle,
//! swap 128-bit lanes); elsewhere, and for the columns left over, by plain loops. Values are only
//! moved, so every path gives the same bits.

#[cfg(target_arch = "x86_64")]
use super::isa::{self, Isa};

/// Rows transposed together (one 256-bit register of f32).
pub(crate) const GROUP: usize = 8;

/// `out[c·stride + i] = rows[i·k + c]` for the [`GROUP`] rows of `k` floats in `rows`
/// (`stride ≥ GROUP`, so that the columns written do not overlap).
pub(crate) fn group(rows: &[f32], k: usize, out: &mut [f32], stride: usize) {
    if k == 0 {
        return;
    }
    assert!(out.len() >= (k - 1) * stride + GROUP, "transpose: output too short");
    // SAFETY: every element written lies inside `out` (checked above), which is borrowed
    // mutably for the call.
    unsafe { group_raw(rows, k, out.as_mut_ptr(), stride) }
}

/// [`group`] into an output shared by tasks that write disjoint elements of it.
///
/// # Safety
/// Elements `c·stride + i` (`c < k`, `i < GROUP`) of `out` must be valid for writes and written
/// by no one else during the call.
pub(crate) unsafe fn group_raw(rows: &[f32], k: usize, out: *mut f32, stride: usize) {
    assert!(rows.len() >= GROUP * k, "transpose: input too short");
    assert!(stride >= GROUP, "transpose: columns {stride} apart overlap");
    let mut c = 0;
    #[cfg(target_arch = "x86_64")]
    if isa::active() >= Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (`active` says so); the sizes are the caller's promise and
        // were checked above.
        c = unsafe { x86::blocks(rows.as_ptr(), k, out, stride) };
    }
    for c in c..k {
        for i in 0..GROUP {
            // SAFETY: the caller's promise (c < k, i < GROUP).
            unsafe { *out.add(c * stride + i) = rows[i * k + c] };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// The full 8-column blocks of [`super::group_raw`]; returns the first column not moved.
    ///
    /// # Safety
    /// The CPU must have AVX2; `src` holds 8 rows of `k` floats; `out` as in `group_raw`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn blocks(src: *const f32, k: usize, out: *mut f32, stride: usize) -> usize {
        let mut c = 0;
        while c + 8 <= k {
            // SAFETY: rows i·k + c .. + 8 and out (c + j)·stride .. + 8 lie inside the caller's
            // buffers (its promise, c + 8 ≤ k).
            unsafe {
                let cols = in_registers(std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * k + c))));
                for (j, col) in cols.into_iter().enumerate() {
                    _mm256_storeu_ps(out.add((c + j) * stride), col);
                }
            }
            c += 8;
        }
        c
    }

    /// The 8 × 8 transpose of 32-bit elements in registers: output `d` holds element `d` of each
    /// input, in input order.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) fn in_registers(r: [__m256; 8]) -> [__m256; 8] {
        // Pairs of rows interleaved (within 128-bit lanes), then pairs of pairs, then lanes swapped.
        let t = |a, b| (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let ((t0, t1), (t2, t3)) = (t(r[0], r[1]), t(r[2], r[3]));
        let ((t4, t5), (t6, t7)) = (t(r[4], r[5]), t(r[6], r[7]));
        let u = |a, b| (_mm256_shuffle_ps::<0x44>(a, b), _mm256_shuffle_ps::<0xEE>(a, b));
        let ((u0, u1), (u2, u3)) = (u(t0, t2), u(t1, t3));
        let ((u4, u5), (u6, u7)) = (u(t4, t6), u(t5, t7));
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_moves_every_element_to_its_place() {
        // 29 columns: three 8 × 8 blocks and five left over; columns 11 apart in the output.
        let (k, stride) = (29, 11);
        let rows: Vec<f32> = (0..GROUP * k).map(|i| i as f32 + 0.5).collect();
        isa::on_every_path(|path| {
            let mut out = vec![f32::NAN; (k - 1) * stride + GROUP + 3];
            group(&rows, k, &mut out, stride);
            for c in 0..k {
                for i in 0..GROUP {
                    assert_eq!(out[c * stride + i], rows[i * k + c], "{} ({i}, {c})", path.name());
                }
                for gap in (c * stride + GROUP..(c + 1) * stride).filter(|&e| e < out.len()) {
                    assert!(out[gap].is_nan(), "{}: wrote between columns", path.name());
                }
            }
        });
    }
}
