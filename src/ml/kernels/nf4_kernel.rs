//! Products with 4-bit NF4 weights that stay 4-bit: `y = x·Wᵀ + b` where `W` is held as packed
//! codes and one f32 absmax per block, and dequantized panel by panel inside the product.
//!
//! The weight `[out, in]` is cut into panels of whole rows that fit the L2 cache (about 64 KiB
//! of f32). Each panel is decoded into a buffer of its own thread (`NF4_CODE[q] · absmax`, the
//! same f32 product the dequantizer computes, so the values are bit-identical to a dense copy),
//! column by column — the layout `gemm` multiplies without copying it first — and multiplied by
//! the `gemm` kernel into its columns of `y`; panels run in parallel. So the memory held is the
//! packed weight (4 bits per parameter plus 32 bits per block), and the
//! largest transient buffer is one panel per thread. Decoding uses AVX-512 (`vpermps` over the
//! whole 16-entry codebook), AVX2 (two 8-entry halves and a blend) or plain code, chosen at run
//! time ([`super::isa`]); all three give the same bits. Where every row holds whole blocks, the
//! AVX-512 and AVX2 paths decode a panel straight into columns instead of decoding rows and
//! transposing them (the transposes took 3× the decoding's time; NF4 BERT-mini at batch 1 went
//! from 3.43 to 2.94 ms on a Xeon): AVX-512 gathers 16 rows' next 8 codes at a time, AVX2 (whose
//! gathers are slow) loads 8 rows' next 64 codes plainly and transposes them in registers. Few-row
//! products below AVX-512 decode panels small enough for L1 (`FEW_ROWS_PANEL_FLOATS`).
//!
//! The candle ops on NF4 layers (with a bias and a LoRA adapter) are in [`super::nf4_layer`]. The
//! products compute the forward pass only; where gradients must reach the input (QLoRA
//! training), [`super::frozen_grad`] carries them through the same weight.

use candle_core::Result;

use super::gemm::{matmul_panels, Mat, MatMut, RhsPanels};
use super::isa::{self, Isa};
use super::packed_op::check_sizes;
use super::side_by_side::fill_biases;
use super::transpose::{self, GROUP};

/// The bitsandbytes NF4 codebook, in bnb index order (functional.py `get_4bit_type("nf4")`).
// bnb's digits verbatim (they are the f32 values printed as doubles), so they can be compared.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Floats per decoded panel (256 KiB): it stays in L2 while `gemm` reads it.
const PANEL_FLOATS: usize = 64 * 1024;

/// Floats per decoded panel for a product of few rows below AVX-512 (16 KiB, so 16 weight rows
/// of up to 256 columns): it stays in L1 between its decoding and `gemm`'s reading it, which
/// matters where every decoded value is used by few rows. NF4 BERT-mini at batch 1 (64 rows) on
/// AVX2 code went from 0.97–1.00× to 0.90–0.92× the dense model's latency (3 runs of 300
/// interleaved pairs, Xeon). On AVX-512 the same panels made it slower (0.86× → 1.08×), and so
/// did they at batch 32 (2,048 rows) on either path, so those keep [`PANEL_FLOATS`].
const FEW_ROWS_PANEL_FLOATS: usize = 4 * 1024;

/// Products of up to this many rows take [`FEW_ROWS_PANEL_FLOATS`] (below AVX-512).
const FEW_ROWS: usize = 128;

/// `gemm` reads a column-major panel as it is when its rows are a multiple of its vector width
/// (up to 16 floats, on AVX-512); panels are cut to such heights.
const WHOLE_VECTORS: usize = 16;

/// A weight matrix `[rows, cols]` in NF4: packed codes (two per byte, the first element in the
/// high nibble, row-major over the flattened matrix) and one absmax per `block` elements.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedNf4 {
    packed: Vec<u8>,
    absmax: Vec<f32>,
    block: usize,
    rows: usize,
    cols: usize,
}

impl PackedNf4 {
    /// Checks that the parts describe a `[rows, cols]` matrix: `block` even and nonzero,
    /// `(rows·cols + 1) / 2` bytes and one absmax per block.
    pub fn new(packed: Vec<u8>, absmax: Vec<f32>, block: usize, rows: usize, cols: usize) -> Result<Self> {
        let Some(n) = rows.checked_mul(cols) else {
            candle_core::bail!("NF4 weight [{rows}, {cols}] has more elements than this machine can address")
        };
        if block == 0 || !block.is_multiple_of(2) {
            candle_core::bail!("NF4 block size {block} is not a positive even number")
        }
        if packed.len() != n.div_ceil(2) || absmax.len() != n.div_ceil(block) {
            candle_core::bail!(
                "NF4 weight [{rows}, {cols}] with block {block} needs {} bytes and {} scales, got {} and {}",
                n.div_ceil(2),
                n.div_ceil(block),
                packed.len(),
                absmax.len()
            )
        }
        Ok(Self {
            packed,
            absmax,
            block,
            rows,
            cols,
        })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The packed codes, the scales and the block size.
    pub fn parts(&self) -> (&[u8], &[f32], usize) {
        (&self.packed, &self.absmax, self.block)
    }

    /// Bytes held: the packed codes and the f32 scales.
    pub fn bytes(&self) -> usize {
        self.packed.len() + 4 * self.absmax.len()
    }

    /// Decodes the elements `[start, start + out.len())` of the flattened matrix into `out`.
    pub fn decode(&self, start: usize, out: &mut [f32]) {
        assert!(
            start + out.len() <= self.rows * self.cols,
            "decode past the end of the weight"
        );
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `active` never names an instruction set the CPU lacks.
            match isa::active() {
                Isa::Avx512 => return unsafe { x86::decode_all_avx512(self, start, out) },
                Isa::Avx2 => return unsafe { x86::decode_all_avx2(self, start, out) },
                Isa::Baseline => {}
            }
        }
        self.for_each_run(start, out, |bytes, scale, dst| decode_scalar(bytes, scale, dst, 0));
    }

    /// Calls `run(bytes, scale, dst)` for each block's part of `[start, start + out.len())`:
    /// `dst` to be filled from the codes in `bytes` (high nibble first) times the block's scale.
    #[inline(always)]
    fn for_each_run(&self, start: usize, out: &mut [f32], mut run: impl FnMut(&[u8], f32, &mut [f32])) {
        let end = start + out.len();
        let mut at = start;
        while at < end {
            let b = at / self.block;
            let run_end = ((b + 1) * self.block).min(end);
            let scale = self.absmax[b];
            let dst = &mut out[at - start..run_end - start];
            let mut from = at;
            if !from.is_multiple_of(2) {
                // An odd start: the low nibble of its byte.
                dst[0] = NF4_CODE[usize::from(self.packed[from / 2] & 0x0f)] * scale;
                from += 1;
            }
            let skip = from - at;
            run(&self.packed[from / 2..run_end.div_ceil(2)], scale, &mut dst[skip..]);
            at = run_end;
        }
    }

    /// The whole matrix, dense (for tests and for devices without this kernel).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.decode(0, &mut out);
        out
    }

    /// `y = x·Wᵀ (+ bias)` for `x` `[m, cols]` row-major; `y` `[m, rows]` is overwritten.
    pub fn matmul_t(&self, x: &[f32], m: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        let (n, k) = (self.rows, self.cols);
        check_sizes("nf4 matmul", x, y, bias, (m, n, k));
        fill_biases(y, &[bias], &[n]);
        self.product_t(x, m, MatMut::rows(y, m, n), bias.is_some());
    }

    /// `dst = x·Wᵀ`, or `dst += x·Wᵀ` with `accumulate` (`x` `[m, cols]`, `dst` `[m, rows]`,
    /// any strides).
    pub(crate) fn product_t(&self, x: &[f32], m: usize, dst: MatMut<'_>, accumulate: bool) {
        let k = self.cols;
        assert_eq!(x.len(), m * k, "nf4 matmul: input size");
        assert_eq!((dst.rows, dst.cols), (m, self.rows), "nf4 matmul: output shape");
        // Panel rows: 64 (as the dense few-row products), fewer where a panel would outgrow L2
        // (L1 for few rows below AVX-512); a multiple of 16, so that panels are column-major.
        let floats = match isa::active() {
            Isa::Avx2 | Isa::Baseline if m <= FEW_ROWS => FEW_ROWS_PANEL_FLOATS,
            _ => PANEL_FLOATS,
        };
        let nb = (floats / k.max(1)).clamp(WHOLE_VECTORS, 64) / WHOLE_VECTORS * WHOLE_VECTORS;
        let buffer = nb * k + GROUP * k;
        matmul_panels(
            dst,
            Mat::rows(x, m, k),
            nb,
            (1.0, accumulate),
            buffer,
            &Transposed(self),
        );
    }

    /// Whether panels of `rows` rows can be decoded straight into columns by gathering `lanes`
    /// rows' codes at once (16 on AVX-512, 8 on AVX2: [`x86::decode_columns_avx512`]): rows in
    /// `lanes`, every row starting on a 4-byte boundary (`cols` a multiple of 8), whole blocks per
    /// row, no index past `i32`.
    fn gathers(&self, rows: usize, lanes: usize) -> bool {
        rows.is_multiple_of(lanes)
            && self.cols.is_multiple_of(8)
            && self.block.is_multiple_of(8)
            && self.cols.is_multiple_of(self.block)
            && self.rows * self.cols / 8 < i32::MAX as usize
    }

    /// Decodes rows `r0..r0 + rows` (`rows` a multiple of [`GROUP`]) column by column:
    /// `out[c·rows + i] = W[r0 + i, c]`, through `scratch` (`GROUP · cols` floats).
    fn decode_columns(&self, r0: usize, rows: usize, out: &mut [f32], scratch: &mut [f32]) {
        let k = self.cols;
        assert!(
            rows.is_multiple_of(GROUP) && r0 + rows <= self.rows,
            "decode_columns: rows"
        );
        #[cfg(target_arch = "x86_64")]
        match isa::active() {
            // SAFETY (both): the CPU has the instruction set (`active` says so); `gathers`
            // checked the layout.
            Isa::Avx512 if self.gathers(rows, 16) => {
                return unsafe { x86::decode_columns_avx512(self, r0, rows, &mut out[..rows * k]) }
            }
            Isa::Avx2 if self.gathers(rows, 8) => {
                return unsafe { x86::decode_columns_avx2(self, r0, rows, &mut out[..rows * k]) }
            }
            _ => {}
        }
        let (out, scratch) = (&mut out[..rows * k], &mut scratch[..GROUP * k]);
        for g in (0..rows).step_by(GROUP) {
            self.decode((r0 + g) * k, scratch);
            transpose::group(scratch, k, &mut out[g..], rows);
        }
    }
}

/// `Wᵀ`, panel by panel: rows `r0..r0 + rows` of `W` dequantized into the task's buffer and
/// read as a `cols × rows` matrix. Where `rows` is a multiple of [`WHOLE_VECTORS`] the panel is
/// decoded column by column, the layout `gemm`'s kernel reads as it is (it copies other layouts
/// into one first, as it does for a dense weight); otherwise row by row.
struct Transposed<'a>(&'a PackedNf4);

impl RhsPanels for Transposed<'_> {
    fn panel<'s>(&'s self, r0: usize, rows: usize, buffer: &'s mut [f32]) -> Mat<'s> {
        let k = self.0.cols;
        let (w, scratch) = buffer.split_at_mut(rows * k);
        if rows.is_multiple_of(WHOLE_VECTORS) {
            self.0.decode_columns(r0, rows, w, scratch);
            return Mat::strided(w, k, rows, rows, 1);
        }
        self.0.decode(r0 * k, w);
        Mat::strided(w, k, rows, 1, k)
    }
}

/// The plain decoder, from element `from` of the run on.
fn decode_scalar(bytes: &[u8], scale: f32, out: &mut [f32], from: usize) {
    for (i, o) in out.iter_mut().enumerate().skip(from) {
        let b = bytes[i / 2];
        let q = if i % 2 == 0 { b >> 4 } else { b & 0x0f };
        *o = NF4_CODE[usize::from(q)] * scale;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{decode_scalar, transpose, PackedNf4, NF4_CODE};
    use std::arch::x86_64::*;

    /// Within a little-endian dword of packed codes, where code `j` of its 8 sits (high nibble
    /// first).
    const NIBBLE_SHIFTS: [i32; 8] = [4, 0, 12, 8, 20, 16, 28, 24];

    /// Rows `r0..r0 + rows` decoded column by column (`out[c·rows + i] = W[r0 + i, c]`) without
    /// a transpose: for 16 rows and 8 columns at a time, one gather loads each row's 4 bytes (8
    /// codes), and at the start of each block another loads the rows' scales; each column is then
    /// a shift, a mask, a codebook lookup (`vpermps`) and a multiply — the same f32 product as
    /// [`PackedNf4::decode`].
    ///
    /// # Safety
    /// The CPU must have AVX-512; `w.gathers(rows, 16)`, `r0 + rows ≤ w.rows` and
    /// `out.len() == rows · w.cols` must hold.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn decode_columns_avx512(w: &PackedNf4, r0: usize, rows: usize, out: &mut [f32]) {
        let (k, per_row) = (w.cols, w.cols / w.block);
        assert!(w.gathers(rows, 16) && r0 + rows <= w.rows && out.len() == rows * k);
        let table = _mm512_loadu_ps(NF4_CODE.as_ptr());
        let fifteen = _mm512_set1_epi32(15);
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let (codes, scales) = (w.packed.as_ptr().cast::<i32>(), w.absmax.as_ptr());
        for t in (0..rows).step_by(16) {
            let row = _mm512_add_epi32(_mm512_set1_epi32((r0 + t) as i32), lanes);
            // Dword index of each row's start, block index of each row's first block.
            let row_dword = _mm512_mullo_epi32(row, _mm512_set1_epi32((k / 8) as i32));
            let row_block = _mm512_mullo_epi32(row, _mm512_set1_epi32(per_row as i32));
            let mut s = _mm512_setzero_ps();
            for c in (0..k).step_by(8) {
                // SAFETY: rows r0 + t .. + 16 exist, so their dwords c/8 (within the row: c + 8 ≤
                // k) and their blocks lie inside `packed` and `absmax` (the caller's promise).
                if c.is_multiple_of(w.block) {
                    // A new block (blocks are whole multiples of 8 columns): its 16 scales.
                    let at = _mm512_add_epi32(row_block, _mm512_set1_epi32((c / w.block) as i32));
                    s = unsafe { _mm512_i32gather_ps::<4>(at, scales) };
                }
                let at = _mm512_add_epi32(row_dword, _mm512_set1_epi32((c / 8) as i32));
                let v = unsafe { _mm512_i32gather_epi32::<4>(at, codes) };
                for (j, shift) in NIBBLE_SHIFTS.into_iter().enumerate() {
                    let idx = _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(shift)), fifteen);
                    let values = _mm512_mul_ps(_mm512_permutexvar_ps(idx, table), s);
                    // SAFETY: (c + j)·rows + t + 16 ≤ rows·k = out.len().
                    unsafe { _mm512_storeu_ps(out.as_mut_ptr().add((c + j) * rows + t), values) };
                }
            }
        }
    }

    /// [`decode_columns_avx512`] on AVX2: 8 rows at a time, the codebook looked up in two
    /// 8-entry halves and blended on bit 3 (as [`decode_avx2`]). AVX2's gathers are slow (the
    /// first use of a gathered vector was a quarter of this function's time on a Xeon), so for
    /// 64 columns at a time the 8 rows' 32 bytes are loaded plainly and transposed as an 8 × 8
    /// matrix of dwords, which gives the same 8 vectors 8 gathers would, and all the panel's rows
    /// are decoded before the next 64 columns, so that each output line is written whole while
    /// it is in L1; columns past the last whole 64 are gathered.
    ///
    /// # Safety
    /// The CPU must have AVX2; `w.gathers(rows, 8)`, `r0 + rows ≤ w.rows` and
    /// `out.len() == rows · w.cols` must hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn decode_columns_avx2(w: &PackedNf4, r0: usize, rows: usize, out: &mut [f32]) {
        let (k, per_row) = (w.cols, w.cols / w.block);
        assert!(w.gathers(rows, 8) && r0 + rows <= w.rows && out.len() == rows * k);
        let lo = _mm256_loadu_ps(NF4_CODE.as_ptr());
        let hi = _mm256_loadu_ps(NF4_CODE.as_ptr().add(8));
        let fifteen = _mm256_set1_epi32(15);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let (codes, scales) = (w.packed.as_ptr().cast::<i32>(), w.absmax.as_ptr());
        // Per group of 8 rows from `t`: their index, their first dword and their first block.
        let group = |t: usize| {
            let row = _mm256_add_epi32(_mm256_set1_epi32((r0 + t) as i32), lanes);
            let row_dword = _mm256_mullo_epi32(row, _mm256_set1_epi32((k / 8) as i32));
            (row_dword, _mm256_mullo_epi32(row, _mm256_set1_epi32(per_row as i32)))
        };
        // The scales of the 8 rows' block holding column `c`.
        let block_scales = |row_block: __m256i, c: usize| {
            let at = _mm256_add_epi32(row_block, _mm256_set1_epi32((c / w.block) as i32));
            // SAFETY: rows r0 + t .. + 8 exist, so their blocks lie inside `absmax`.
            unsafe { _mm256_i32gather_ps::<4>(scales, at) }
        };
        // Columns c..c + 8 of the 8 rows from `t`, from `v` (dword c/8 of each row), scaled by `s`.
        let mut columns = |t: usize, c: usize, v: __m256i, s: __m256| {
            for (j, shift) in NIBBLE_SHIFTS.into_iter().enumerate() {
                let idx = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_set1_epi32(shift)), fifteen);
                let low = _mm256_permutevar8x32_ps(lo, idx);
                let high = _mm256_permutevar8x32_ps(hi, idx);
                let code = _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
                // SAFETY: (c + j)·rows + t + 8 ≤ rows·k = out.len().
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((c + j) * rows + t), _mm256_mul_ps(code, s)) };
            }
        };
        let whole = k / 64 * 64;
        for c0 in (0..whole).step_by(64) {
            for t in (0..rows).step_by(8) {
                let (_, row_block) = group(t);
                // SAFETY: rows r0 + t .. + 8 exist and every row starts on a dword (k a multiple
                // of 8), so each row's dwords c0/8 .. c0/8 + 8 (c0 + 64 ≤ k) lie inside `packed`.
                let r: [__m256; 8] = std::array::from_fn(|i| unsafe {
                    _mm256_loadu_ps(codes.add((r0 + t + i) * (k / 8) + c0 / 8).cast())
                });
                let mut s = block_scales(row_block, c0);
                let dwords = transpose::x86::in_registers(r).map(|v| _mm256_castps_si256(v));
                for (d, v) in dwords.into_iter().enumerate() {
                    let c = c0 + 8 * d;
                    if d > 0 && c.is_multiple_of(w.block) {
                        s = block_scales(row_block, c);
                    }
                    columns(t, c, v, s);
                }
            }
        }
        for t in (0..rows).step_by(8) {
            let (row_dword, row_block) = group(t);
            let mut s = _mm256_setzero_ps();
            for c in (whole..k).step_by(8) {
                if c == whole || c.is_multiple_of(w.block) {
                    s = block_scales(row_block, c);
                }
                let at = _mm256_add_epi32(row_dword, _mm256_set1_epi32((c / 8) as i32));
                // SAFETY: as in `decode_columns_avx512`, for 8 rows.
                columns(t, c, unsafe { _mm256_i32gather_epi32::<4>(codes, at) }, s);
            }
        }
    }

    /// [`PackedNf4::decode`] on the AVX2 path (one call: the block loop is compiled with AVX2 too).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn decode_all_avx2(w: &PackedNf4, start: usize, out: &mut [f32]) {
        // SAFETY: this function runs only where the CPU has AVX2 (its caller checks).
        w.for_each_run(start, out, |bytes, scale, dst| unsafe {
            decode_avx2(bytes, scale, dst, 0)
        });
    }

    /// [`PackedNf4::decode`] on the AVX-512 path.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn decode_all_avx512(w: &PackedNf4, start: usize, out: &mut [f32]) {
        // SAFETY: this function runs only where the CPU has AVX-512 (its caller checks).
        w.for_each_run(start, out, |bytes, scale, dst| unsafe {
            decode_avx512(bytes, scale, dst)
        });
    }

    /// 8 codes per 4 bytes: each byte twice, shifted by 4 and 0, masked; the codebook looked up
    /// in two 8-entry halves and blended on bit 3.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn decode_avx2(bytes: &[u8], scale: f32, out: &mut [f32], from: usize) {
        let lo = _mm256_loadu_ps(NF4_CODE.as_ptr());
        let hi = _mm256_loadu_ps(NF4_CODE.as_ptr().add(8));
        let s = _mm256_set1_ps(scale);
        let shifts = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
        let fifteen = _mm256_set1_epi32(15);
        let eight = |idx: __m256i| {
            let low = _mm256_permutevar8x32_ps(lo, idx);
            let high = _mm256_permutevar8x32_ps(hi, idx);
            _mm256_mul_ps(
                _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))),
                s,
            )
        };
        let mut i = from;
        // 16 codes per step: 8 bytes read at once, each byte twice (shifted by 4 and 0).
        while i + 16 <= out.len() && i / 2 + 8 <= bytes.len() {
            // SAFETY: bytes i/2 .. i/2 + 8 exist (checked by the loop condition).
            let b = _mm_loadl_epi64(bytes.as_ptr().add(i / 2).cast());
            let twice = _mm_unpacklo_epi8(b, b);
            let first = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(twice), shifts), fifteen);
            let second = _mm256_and_si256(
                _mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(twice, twice)), shifts),
                fifteen,
            );
            // SAFETY: out[i .. i + 16] exists (checked by the loop condition).
            _mm256_storeu_ps(out.as_mut_ptr().add(i), eight(first));
            _mm256_storeu_ps(out.as_mut_ptr().add(i + 8), eight(second));
            i += 16;
        }
        decode_scalar(bytes, scale, out, i);
    }

    /// 16 codes per 8 bytes, the whole codebook in one register (`vpermps`).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    #[inline]
    unsafe fn decode_avx512(bytes: &[u8], scale: f32, out: &mut [f32]) {
        let table = _mm512_loadu_ps(NF4_CODE.as_ptr());
        let s = _mm512_set1_ps(scale);
        let shifts = _mm512_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
        let fifteen = _mm512_set1_epi32(15);
        let mut i = 0;
        while i + 16 <= out.len() {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(&bytes[i / 2..i / 2 + 8]);
            let b = _mm_cvtsi64_si128(i64::from_le_bytes(eight));
            let twice = _mm_unpacklo_epi8(b, b);
            let idx = _mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(twice), shifts), fifteen);
            let v = _mm512_permutexvar_ps(idx, table);
            _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(v, s));
            i += 16;
        }
        decode_avx2(bytes, scale, out, i);
    }
}

/// Packs random codes for a `[rows, cols]` matrix with random positive scales (for tests).
#[cfg(test)]
pub(crate) fn random(rows: usize, cols: usize, block: usize, seed: u64) -> PackedNf4 {
    let mut rng = super::rng::Rng::new(seed);
    let n = rows * cols;
    let packed: Vec<u8> = (0..n.div_ceil(2)).map(|_| rng.below(256) as u8).collect();
    let absmax: Vec<f32> = (0..n.div_ceil(block))
        .map(|_| 0.1 + rng.below(1000) as f32 / 500.0)
        .collect();
    PackedNf4::new(packed, absmax, block, rows, cols).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::kernels::packed_op::check_everywhere;
    use crate::ml::kernels::rng::Rng;

    /// The definition: element `i` is `NF4_CODE[code i] · absmax[i / block]`.
    fn reference(w: &PackedNf4) -> Vec<f32> {
        (0..w.rows * w.cols)
            .map(|i| {
                let b = w.packed[i / 2];
                let q = if i % 2 == 0 { b >> 4 } else { b & 15 };
                NF4_CODE[usize::from(q)] * w.absmax[i / w.block]
            })
            .collect()
    }

    #[test]
    fn every_path_decodes_every_range_bit_for_bit() {
        // 37 × 29: odd sizes, blocks that straddle rows, a partial last block.
        let w = random(37, 29, 64, 1);
        let want = reference(&w);
        isa::on_every_path(|path| {
            assert_eq!(w.dequantize(), want, "{}", path.name());
            for (start, len) in [(0, 1), (1, 40), (63, 2), (64, 64), (100, 500), (1, 37 * 29 - 1)] {
                let mut out = vec![f32::NAN; len];
                w.decode(start, &mut out);
                assert_eq!(out, want[start..start + len], "{} [{start}, +{len})", path.name());
            }
        });
    }

    #[test]
    fn every_path_decodes_panels_column_by_column_bit_for_bit() {
        // 29 columns: three 8 × 8 blocks and five left over; blocks straddle rows. 96 columns in
        // blocks of 32 (and 192 in blocks of 64): whole blocks per row, the rows' codes gathered
        // 16 at a time on AVX-512 ([`PackedNf4::gathers`]) where a panel has 16s of rows.
        for (n, k, block) in [(48, 29, 64), (48, 96, 32), (64, 192, 64), (48, 256, 128), (48, 200, 8)] {
            let w = random(n, k, block, 4);
            assert_eq!(w.gathers(16, 16), k % block == 0);
            check_panels(&w);
        }
    }

    fn check_panels(w: &PackedNf4) {
        let k = w.cols;
        let want = reference(w);
        isa::on_every_path(|path| {
            for (r0, rows) in [(0, 16), (8, 32), (32, 16), (8, 40)] {
                let (mut out, mut scratch) = (vec![f32::NAN; rows * k], vec![f32::NAN; GROUP * k]);
                w.decode_columns(r0, rows, &mut out, &mut scratch);
                for c in 0..k {
                    for i in 0..rows {
                        let (got, want) = (out[c * rows + i], want[(r0 + i) * k + c]);
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{} row {} column {c}",
                            path.name(),
                            r0 + i
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn the_product_matches_the_dense_product_on_every_path() {
        let (n, k, m) = (70, 96, 13);
        let w = random(n, k, 32, 2);
        let dense = reference(&w);
        let mut rng = Rng::new(3);
        let x: Vec<f32> = rng.normal_vec(m * k, 0.0, 1.0);
        let bias: Vec<f32> = rng.normal_vec(n, 0.0, 1.0);
        let mut want = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| f64::from(x[i * k + p]) * f64::from(dense[j * k + p]))
                    .sum();
                want[i * n + j] = dot + f64::from(bias[j]);
            }
        }
        check_everywhere(&want, |y| w.matmul_t(&x, m, Some(&bias), y));
    }

    #[test]
    fn mismatched_parts_are_errors() {
        assert!(PackedNf4::new(vec![0; 3], vec![1.0], 64, 2, 3).is_ok());
        assert!(PackedNf4::new(vec![0; 2], vec![1.0], 64, 2, 3).is_err());
        assert!(PackedNf4::new(vec![0; 3], vec![1.0, 2.0], 64, 2, 3).is_err());
        assert!(PackedNf4::new(vec![0; 3], vec![1.0], 0, 2, 3).is_err());
    }
}
