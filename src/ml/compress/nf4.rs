//! NF4 (4-bit NormalFloat) blockwise quantization, bit-compatible with bitsandbytes.
//!
//! # The format (bitsandbytes `quantize_4bit(quant_type="nf4")`)
//!
//! - The tensor is flattened (row-major) and cut into blocks of `block_size` values (64 by
//!   default; any power of two ≥ 32). A trailing partial block gets its own absmax.
//! - Per block, `absmax = max |x|` (f32), and every value is scaled with the reciprocal,
//!   `x · (1 / absmax)`, as the bitsandbytes kernels do (not a division).
//! - Each scaled value gets the index of the nearest entry of the fixed 16-value codebook
//!   [`NF4_CODE`] (bnb `get_4bit_type("nf4")`, index 0 = −1.0, 7 = 0.0, 15 = 1.0). Nearest is
//!   decided with the 15 thresholds of bnb's CUDA decision tree `dQuantizeNF4` (the midpoints
//!   between neighbours, as its f32 literals) and a strict `x > threshold`: a value exactly on
//!   a threshold takes the LOWER index, and values beyond ±1 clamp to index 0 / 15. A block whose
//!   absmax is 0 scales to NaN (0 · ∞) in bnb, which encodes as index 0 on its backends; the same
//!   happens here, and it still dequantizes to 0 (−1 · 0).
//! - Two 4-bit codes per byte, the FIRST element in the HIGH nibble (`q[0] << 4 | q[1]`). An odd
//!   element count is padded with the value 0.0 (not scaled), which encodes as index 7
//!   (`0b0111`), as in bnb's reference torch kernel. The packed weight is stored as uint8 with
//!   shape `[(n + 1) / 2, 1]` (bnb `Params4bit` with `quant_storage=uint8`).
//! - Dequantization is `NF4_CODE[q] · absmax` in f32, then a cast to the recorded dtype.
//!
//! # Double quantization (bnb `compress_statistics=True`)
//!
//! The f32 absmax values are replaced by 8-bit codes: `offset = mean(absmax)` (summed in f64,
//! rounded to f32), then
//! `absmax − offset` is quantized blockwise (256 values per block, its own f32 absmax per
//! block) with bitsandbytes' signed dynamic map ([`dynamic_map_signed`]), nearest entry with
//! ties to the lower index. The absmax of block `b` is recovered as
//! `quant_map[code[b]] · nested_absmax[b / 256] + offset` (f32, two roundings). Storage per
//! parameter: 4 + 32/64 = 4.5 bits without, 4 + 8/64 + 32/(64·256) ≈ 4.127 bits with it.
//!
//! # Serialization (bnb `QuantState.as_dict(packed=True)` under the `weight.` prefix)
//!
//! | suffix | dtype | shape |
//! |---|---|---|
//! | `weight` | uint8 | `[(n + 1) / 2, 1]` |
//! | `weight.absmax` | float32 (uint8 codes with double quant) | `[blocks]` |
//! | `weight.quant_map` | float32 | `[16]` |
//! | `weight.nested_absmax` (double quant) | float32 | `[ceil(blocks / 256)]` |
//! | `weight.nested_quant_map` (double quant) | float32 | `[256]` |
//! | `weight.quant_state.bitsandbytes__nf4` | uint8 (UTF-8 JSON) | `[len]` |
//!
//! The JSON blob is what Python's `json.dumps` writes for the non-tensor fields, in bnb's key
//! order: `{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [768, 768]}`,
//! plus `"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": <float>` with
//! double quantization (the offset is the f32 value written as Python's `repr` of the double).

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::ml::kernels::nf4_kernel::PackedNf4;
/// The bitsandbytes NF4 codebook (defined beside the kernel that multiplies with it).
pub use crate::ml::kernels::nf4_kernel::NF4_CODE;

/// The decision thresholds of bnb's CUDA `dQuantizeNF4` (csrc/kernels.cu), as its f32 literals:
/// the midpoints between neighbouring codebook entries. The code of `x` is `#{t : x > t}`.
///
/// Four of them (0|1, 8|9, 12|13, 14|15) are one ulp away from `(c[i] + c[i+1]) / 2` computed
/// in f32 (the literals were rounded from doubles), so they are kept verbatim, not computed.
#[allow(clippy::excessive_precision)]
const NF4_MID: [f32; 15] = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
];

/// The codebook index of 0.0 (the padding code).
pub const NF4_ZERO_INDEX: u8 = 7;

/// The default NF4 block size (QLoRA and bitsandbytes).
pub const DEFAULT_BLOCK_SIZE: usize = 64;

/// The second-level block size of double quantization (bitsandbytes' `blocksize=256`).
pub const NESTED_BLOCK_SIZE: usize = 256;

/// The suffix of the packed JSON quant-state tensor.
pub const QUANT_STATE_KEY: &str = "weight.quant_state.bitsandbytes__nf4";

/// Elements per parallel task (a multiple of every block size up to it).
const TASK_ELEMS: usize = 32 * 1024;

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`: 256 sorted values.
///
/// For `i` in 0..7 the fraction has `2^i` steps: `b = linspace(0.1, 1, 2^i + 1)` (f32, torch's
/// scalar formula: `start + step·k` below the halfway index, `end − step·(steps − 1 − k)` from
/// it), the `2^i` midpoints `(b[k] + b[k+1]) / 2` are scaled by `10^(i − 6)`, and both signs are
/// kept: 2·(1 + 2 + … + 64) = 254 values, plus 0 and 1.0, sorted. So index 0 is −0.99296875,
/// 127 is 0.0, 128 is +5.5e-7 and 255 is 1.0. All arithmetic is f32 like torch's; a PyTorch
/// build whose vectorised linspace rounds differently can differ by an ulp in a few entries,
/// which is harmless: the map is saved with every tensor and loading uses the saved one.
pub fn dynamic_map_signed() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        // Python's 10 ** (i - 6) (a double, or the int 1), cast to f32 by torch.
        const SCALE: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
        let mut data = Vec::with_capacity(256);
        for (i, &scale) in SCALE.iter().enumerate() {
            let steps = (1usize << i) + 1;
            let (start, end) = (0.1f32, 1.0f32);
            let step = (end - start) / (steps - 1) as f32;
            let half = steps / 2;
            let b: Vec<f32> = (0..steps)
                .map(|k| {
                    if k < half {
                        start + step * k as f32
                    } else {
                        end - step * (steps - 1 - k) as f32
                    }
                })
                .collect();
            let s = scale as f32;
            let means: Vec<f32> = b.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
            data.extend(means.iter().map(|&m| s * m));
            data.extend(means.iter().map(|&m| -s * m));
        }
        data.push(0.0);
        data.push(1.0);
        data.sort_by(f32::total_cmp);
        let mut map = [0.0f32; 256];
        map.copy_from_slice(&data);
        map
    })
}

/// The dtype an NF4 tensor came from and dequantizes to (bnb's `dtype` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nf4Dtype {
    /// float32.
    #[default]
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
}

impl Nf4Dtype {
    /// The name bitsandbytes writes (`str(torch.float16).strip("torch.")`).
    pub fn name(self) -> &'static str {
        match self {
            Nf4Dtype::F32 => "float32",
            Nf4Dtype::F16 => "float16",
            Nf4Dtype::BF16 => "bfloat16",
        }
    }

    /// Parses a bitsandbytes dtype name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(Nf4Dtype::F32),
            "float16" => Some(Nf4Dtype::F16),
            "bfloat16" => Some(Nf4Dtype::BF16),
            _ => None,
        }
    }

    /// The candle dtype.
    pub fn to_candle(self) -> DType {
        match self {
            Nf4Dtype::F32 => DType::F32,
            Nf4Dtype::F16 => DType::F16,
            Nf4Dtype::BF16 => DType::BF16,
        }
    }

    /// The NF4 dtype of a candle dtype (only the 16/32-bit floats bnb accepts).
    pub fn from_candle(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Nf4Dtype::F32),
            DType::F16 => Some(Nf4Dtype::F16),
            DType::BF16 => Some(Nf4Dtype::BF16),
            _ => None,
        }
    }
}

/// Why a tensor could not be quantized, dequantized, or read back from bitsandbytes tensors.
#[derive(Debug, thiserror::Error)]
pub enum Nf4Error {
    /// The block size is not a power of two ≥ 32.
    #[error("NF4 block size {0} is not a power of two >= 32")]
    BlockSize(usize),
    /// The number of values does not match the shape.
    #[error("shape {shape:?} has {expected} elements, but {got} values were given")]
    Shape {
        /// The shape.
        shape: Vec<usize>,
        /// Its element count.
        expected: usize,
        /// The number of values given.
        got: usize,
    },
    /// A value is NaN or infinite.
    #[error("cannot quantize a non-finite value: element {index} is {value}")]
    NonFinite {
        /// The flat index of the first such value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The tensor's dtype cannot be quantized (bnb takes f32, f16 and bf16).
    #[error("cannot NF4-quantize a tensor of dtype {0:?} (only f32, f16 and bf16)")]
    Dtype(DType),
    /// The bitsandbytes tensors are missing, inconsistent or not NF4.
    #[error("bitsandbytes NF4 state: {0}")]
    Format(String),
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Double-quantized absmax values (bnb's nested `QuantState`).
#[derive(Debug, Clone, PartialEq)]
pub struct NestedAbsmax {
    /// One 8-bit code per NF4 block: an index into `quant_map`.
    pub codes: Vec<u8>,
    /// One f32 absmax per `block_size` codes (of `absmax − offset`).
    pub absmax: Vec<f32>,
    /// The mean of the first-level absmax values, subtracted before quantizing them.
    pub offset: f32,
    /// Codes per second-level block (256 when quantized here).
    pub block_size: usize,
    /// The 256-entry 8-bit map ([`dynamic_map_signed`] when quantized here).
    pub quant_map: Vec<f32>,
}

impl NestedAbsmax {
    /// Quantizes first-level absmax values (bnb `quantize_blockwise(absmax − mean, blocksize=256)`).
    pub fn quantize(absmax: &[f32]) -> Self {
        let map = dynamic_map_signed();
        // 255 midpoints, padded with +∞ (never exceeded) for the branchless search.
        let mut mids = [f32::INFINITY; 256];
        for (m, w) in mids.iter_mut().zip(map.windows(2)) {
            *m = (w[0] + w[1]) * 0.5;
        }
        let offset = if absmax.is_empty() {
            0.0
        } else {
            (absmax.iter().map(|&a| f64::from(a)).sum::<f64>() / absmax.len() as f64) as f32
        };
        let bs = NESTED_BLOCK_SIZE;
        let mut codes = vec![0u8; absmax.len()];
        let mut nested = vec![0.0f32; absmax.len().div_ceil(bs)];
        codes
            .par_chunks_mut(bs)
            .zip(absmax.par_chunks(bs))
            .zip(nested.par_iter_mut())
            .for_each(|((codes, a), m)| {
                let mut mx = 0.0f32;
                for &v in a {
                    let d = (v - offset).abs();
                    if d > mx {
                        mx = d;
                    }
                }
                *m = mx;
                let inv = 1.0 / mx;
                for (c, &v) in codes.iter_mut().zip(a) {
                    let s = (v - offset) * inv;
                    // NaN (a block of equal values: 0 · ∞) compares false everywhere → index 0,
                    // as in bnb; it dequantizes to code · 0 + offset = offset.
                    *c = dynamic_code(&mids, s);
                }
            });
        NestedAbsmax {
            codes,
            absmax: nested,
            offset,
            block_size: bs,
            quant_map: map.to_vec(),
        }
    }

    /// The absmax of NF4 block `i`: `quant_map[code] · nested_absmax[i / block_size] + offset`.
    pub fn value(&self, i: usize) -> f32 {
        self.quant_map[self.codes[i] as usize] * self.absmax[i / self.block_size] + self.offset
    }

    /// All recovered absmax values.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.codes.len()];
        let bs = self.block_size;
        let map = &self.quant_map;
        out.par_chunks_mut(bs * 64)
            .zip(self.codes.par_chunks(bs * 64))
            .zip(self.absmax.par_chunks(64))
            .for_each(|((o, c), a)| {
                for ((ob, cb), &a2) in o.chunks_mut(bs).zip(c.chunks(bs)).zip(a) {
                    for (v, &code) in ob.iter_mut().zip(cb) {
                        *v = map[code as usize] * a2 + self.offset;
                    }
                }
            });
        out
    }

    /// Bytes of the stored state: the codes, the nested absmax values and the offset.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.absmax.len() + 4
    }
}

/// The index of the nearest dynamic-map entry to `s` given the 255 midpoints (+∞ padded):
/// `#{m : s > m}`, a branchless binary search. Ties go to the lower index; NaN gives 0.
#[inline]
fn dynamic_code(mids: &[f32; 256], s: f32) -> u8 {
    let mut base = 0usize;
    for step in [128, 64, 32, 16, 8, 4, 2, 1] {
        // Arithmetic, not a branch: the outcome is unpredictable.
        base += step & 0usize.wrapping_sub(usize::from(s > mids[base + step - 1]));
    }
    base as u8
}

/// The per-block scales of an NF4 tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Nf4Scales {
    /// One f32 absmax per block.
    Plain(Vec<f32>),
    /// Double-quantized absmax values.
    Nested(NestedAbsmax),
}

/// A tensor quantized to NF4: packed 4-bit codes, per-block scales, shape, block size and dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    packed: Vec<u8>,
    scales: Nf4Scales,
    shape: Vec<usize>,
    block_size: usize,
    dtype: Nf4Dtype,
}

/// Checks that `bs` is a power of two ≥ 32.
fn check_block_size(bs: usize) -> Result<(), Nf4Error> {
    if bs >= 32 && bs.is_power_of_two() {
        Ok(())
    } else {
        Err(Nf4Error::BlockSize(bs))
    }
}

/// Blocks of `block_size` per parallel task.
fn blocks_per_task(block_size: usize) -> usize {
    (TASK_ELEMS / block_size).max(1)
}

/// The absmax of a block (f32) and whether all its values are finite.
///
/// Eight independent lanes so that the max and the finiteness test vectorise (a NaN never wins
/// `a > m`, so the separate test is what catches it).
#[inline]
fn block_absmax(x: &[f32]) -> (f32, bool) {
    const L: usize = 8;
    let mut m = [0.0f32; L];
    let mut bad = [0u32; L];
    let mut lanes = x.chunks_exact(L);
    for c in &mut lanes {
        for l in 0..L {
            let a = c[l].abs();
            m[l] = if a > m[l] { a } else { m[l] };
            bad[l] |= u32::from(!c[l].is_finite());
        }
    }
    for (l, &v) in lanes.remainder().iter().enumerate() {
        let a = v.abs();
        m[l] = if a > m[l] { a } else { m[l] };
        bad[l] |= u32::from(!v.is_finite());
    }
    let max = m.iter().fold(0.0f32, |acc, &v| if v > acc { v } else { acc });
    (max, bad.iter().all(|&b| b == 0))
}

/// Values encoded together: a fixed-size stack buffer, so the inner loops have constant trip counts.
const CHUNK: usize = 16;

/// Encodes one block (`x.len()` ≤ block size) into `out` (`x.len().div_ceil(2)` bytes).
#[inline]
fn encode_block(x: &[f32], out: &mut [u8], inv: f32) {
    for (xc, oc) in x.chunks(CHUNK).zip(out.chunks_mut(CHUNK / 2)) {
        // A short chunk is padded with the value 0.0 (code 7); only its bytes are written.
        let mut s = [0.0f32; CHUNK];
        if let Ok(xc) = <&[f32; CHUNK]>::try_from(xc) {
            for j in 0..CHUNK {
                s[j] = xc[j] * inv;
            }
        } else {
            for (sj, &xj) in s.iter_mut().zip(xc) {
                *sj = xj * inv;
            }
        }
        let mut q = [0u32; CHUNK];
        for t in NF4_MID {
            for j in 0..CHUNK {
                q[j] += u32::from(s[j] > t);
            }
        }
        for (o, pair) in oc.iter_mut().zip(q.chunks_exact(2)) {
            *o = ((pair[0] << 4) | pair[1]) as u8;
        }
    }
}

/// Quantizes consecutive blocks (absmax into `a`, codes into `p`); whether all values were finite.
fn quantize_blocks(x: &[f32], p: &mut [u8], a: &mut [f32], block_size: usize) -> bool {
    let mut finite = true;
    for ((xb, pb), ab) in x.chunks(block_size).zip(p.chunks_mut(block_size / 2)).zip(a) {
        let (m, ok) = block_absmax(xb);
        finite &= ok;
        *ab = m;
        encode_block(xb, pb, 1.0 / m);
    }
    finite
}

/// Decodes one block's bytes into `out` with absmax `scale`.
#[inline]
fn decode_block(p: &[u8], out: &mut [f32], scale: f32) {
    let lut = NF4_CODE.map(|c| c * scale);
    let mut pairs = out.chunks_exact_mut(2);
    for (o, &b) in (&mut pairs).zip(p) {
        o[0] = lut[(b >> 4) as usize];
        o[1] = lut[(b & 0x0f) as usize];
    }
    if let [last] = pairs.into_remainder() {
        *last = lut[(p[p.len() - 1] >> 4) as usize];
    }
}

impl Nf4Tensor {
    /// Quantizes `data` (row-major, `shape`) to NF4 with `block_size`, optionally double-quantizing the absmax.
    ///
    /// Parallel over blocks (rayon's current pool); the result does not depend on the number of threads.
    pub fn quantize(data: &[f32], shape: &[usize], block_size: usize, double_quant: bool) -> Result<Self, Nf4Error> {
        check_block_size(block_size)?;
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Nf4Error::Shape {
                shape: shape.to_vec(),
                expected: n,
                got: data.len(),
            });
        }
        let blocks = n.div_ceil(block_size);
        let mut packed = vec![0u8; n.div_ceil(2)];
        let mut absmax = vec![0.0f32; blocks];
        let k = blocks_per_task(block_size);
        let finite = data
            .par_chunks(block_size * k)
            .zip(packed.par_chunks_mut(block_size / 2 * k))
            .zip(absmax.par_chunks_mut(k))
            .map(|((x, p), a)| quantize_blocks(x, p, a, block_size))
            .reduce(|| true, |a, b| a && b);
        if !finite {
            let index = data.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(Nf4Error::NonFinite {
                index,
                value: data[index],
            });
        }
        let scales = if double_quant {
            Nf4Scales::Nested(NestedAbsmax::quantize(&absmax))
        } else {
            Nf4Scales::Plain(absmax)
        };
        Ok(Nf4Tensor {
            packed,
            scales,
            shape: shape.to_vec(),
            block_size,
            dtype: Nf4Dtype::F32,
        })
    }

    /// Quantizes a candle tensor (f32, f16 or bf16, any shape); its dtype is recorded for dequantization.
    pub fn from_tensor(t: &Tensor, block_size: usize, double_quant: bool) -> Result<Self, Nf4Error> {
        let dtype = Nf4Dtype::from_candle(t.dtype()).ok_or(Nf4Error::Dtype(t.dtype()))?;
        let data = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(Self::quantize(&data, t.dims(), block_size, double_quant)?.with_dtype(dtype))
    }

    /// The same tensor with another recorded dtype (the dtype [`Self::to_tensor`] returns).
    pub fn with_dtype(mut self, dtype: Nf4Dtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// Dequantizes to f32 values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.numel()];
        self.dequantize_into(&mut out).expect("the output has numel() elements");
        out
    }

    /// Dequantizes into `out`, which must have [`Self::numel`] elements.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<(), Nf4Error> {
        if out.len() != self.numel() {
            return Err(Nf4Error::Shape {
                shape: self.shape.clone(),
                expected: self.numel(),
                got: out.len(),
            });
        }
        let nested;
        let absmax: &[f32] = match &self.scales {
            Nf4Scales::Plain(a) => a,
            Nf4Scales::Nested(q) => {
                nested = q.dequantize();
                &nested
            }
        };
        let bs = self.block_size;
        let k = blocks_per_task(bs);
        out.par_chunks_mut(bs * k)
            .zip(self.packed.par_chunks(bs / 2 * k))
            .zip(absmax.par_chunks(k))
            .for_each(|((o, p), a)| {
                for ((ob, pb), &s) in o.chunks_mut(bs).zip(p.chunks(bs / 2)).zip(a) {
                    decode_block(pb, ob, s);
                }
            });
        Ok(())
    }

    /// Dequantizes to a candle tensor of the original shape and the recorded dtype, on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor, Nf4Error> {
        let t = Tensor::from_vec(self.dequantize(), self.shape.as_slice(), device)?;
        Ok(t.to_dtype(self.dtype.to_candle())?)
    }

    /// The matrix as the inference kernel multiplies with it (the absmax decoded to f32 once, the
    /// codes as they are); `None` unless it is 2-D and dequantizes to f32.
    pub fn to_packed(&self) -> Option<PackedNf4> {
        let [rows, cols] = self.shape[..] else { return None };
        if self.dtype != Nf4Dtype::F32 {
            return None;
        }
        PackedNf4::new(self.packed.clone(), self.absmax(), self.block_size, rows, cols).ok()
    }

    /// The packed codes: two per byte, the first element in the high nibble.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The per-block scales.
    pub fn scales(&self) -> &Nf4Scales {
        &self.scales
    }

    /// The shape of the original tensor.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The number of blocks (the last may be partial).
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.block_size)
    }

    /// The recorded dtype.
    pub fn dtype(&self) -> Nf4Dtype {
        self.dtype
    }

    /// Whether the absmax values are double-quantized.
    pub fn is_double_quant(&self) -> bool {
        matches!(self.scales, Nf4Scales::Nested(_))
    }

    /// The codebook index of element `i`.
    pub fn code(&self, i: usize) -> u8 {
        let b = self.packed[i / 2];
        if i.is_multiple_of(2) {
            b >> 4
        } else {
            b & 0x0f
        }
    }

    /// The codebook indices of all elements (unpacked).
    pub fn codes(&self) -> Vec<u8> {
        (0..self.numel()).map(|i| self.code(i)).collect()
    }

    /// The absmax of every block (recovered from the 8-bit codes with double quantization).
    pub fn absmax(&self) -> Vec<f32> {
        match &self.scales {
            Nf4Scales::Plain(a) => a.clone(),
            Nf4Scales::Nested(q) => q.dequantize(),
        }
    }

    /// Stored bytes: the packed codes plus the scales (f32 absmax, or 8-bit codes + nested f32 absmax + offset).
    ///
    /// The two codebooks (16 and 256 f32 constants, the same for every tensor) are not counted;
    /// [`Self::serialized_bytes`] counts everything written to a file.
    pub fn bytes(&self) -> usize {
        self.packed.len()
            + match &self.scales {
                Nf4Scales::Plain(a) => 4 * a.len(),
                Nf4Scales::Nested(q) => q.bytes(),
            }
    }

    /// Bits per parameter: `8 · bytes() / numel()` (4.5 at block 64, ≈ 4.127 with double quantization).
    pub fn bits_per_parameter(&self) -> f64 {
        8.0 * self.bytes() as f64 / self.numel().max(1) as f64
    }

    /// Bytes of every tensor [`Self::bnb_tensors`] writes (codebooks and JSON included).
    pub fn serialized_bytes(&self) -> usize {
        let tensors = self.packed.len()
            + 4 * NF4_CODE.len()
            + match &self.scales {
                Nf4Scales::Plain(a) => 4 * a.len(),
                // The offset is not a tensor: it is written in the JSON.
                Nf4Scales::Nested(q) => q.codes.len() + 4 * q.absmax.len() + 4 * q.quant_map.len(),
            };
        tensors + self.bnb_quant_state_json().len()
    }

    /// The quant-state JSON exactly as bitsandbytes' `pack_dict_to_tensor` writes it (`json.dumps`).
    pub fn bnb_quant_state_json(&self) -> String {
        let shape = self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        let mut s = format!(
            "{{\"quant_type\": \"nf4\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
            self.block_size,
            self.dtype.name(),
            shape
        );
        if let Nf4Scales::Nested(q) = &self.scales {
            s.push_str(&format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                q.block_size,
                py_float_repr(f64::from(q.offset))
            ));
        }
        s.push('}');
        s
    }

    /// The bitsandbytes serialization of this weight: (name suffix, CPU tensor) pairs for safetensors.
    ///
    /// Prefix each suffix with the module path (`bert.encoder.layer.0.attention.self.query.`).
    pub fn bnb_tensors(&self) -> Result<Vec<(String, Tensor)>, Nf4Error> {
        let dev = Device::Cpu;
        let mut out = vec![(
            "weight".to_string(),
            Tensor::from_vec(self.packed.clone(), (self.packed.len(), 1), &dev)?,
        )];
        let nf4_map = Tensor::from_vec(NF4_CODE.to_vec(), NF4_CODE.len(), &dev)?;
        match &self.scales {
            Nf4Scales::Plain(a) => {
                out.push(("weight.absmax".into(), Tensor::from_vec(a.clone(), a.len(), &dev)?));
                out.push(("weight.quant_map".into(), nf4_map));
            }
            Nf4Scales::Nested(q) => {
                out.push((
                    "weight.absmax".into(),
                    Tensor::from_vec(q.codes.clone(), q.codes.len(), &dev)?,
                ));
                out.push(("weight.quant_map".into(), nf4_map));
                out.push((
                    "weight.nested_absmax".into(),
                    Tensor::from_vec(q.absmax.clone(), q.absmax.len(), &dev)?,
                ));
                out.push((
                    "weight.nested_quant_map".into(),
                    Tensor::from_vec(q.quant_map.clone(), q.quant_map.len(), &dev)?,
                ));
            }
        }
        let json = self.bnb_quant_state_json().into_bytes();
        let len = json.len();
        out.push((QUANT_STATE_KEY.to_string(), Tensor::from_vec(json, len, &dev)?));
        Ok(out)
    }

    /// Reads back the (name suffix, tensor) pairs of [`Self::bnb_tensors`].
    pub fn from_bnb_tensors(tensors: &[(String, Tensor)]) -> Result<Self, Nf4Error> {
        Self::from_bnb_lookup(|suffix| tensors.iter().find(|(k, _)| k == suffix).map(|(_, t)| t))
    }

    /// Reads one weight from a state dict whose keys are `prefix` + suffix (prefix ends with `.`, or is empty).
    pub fn from_state_dict(tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<Self, Nf4Error> {
        Self::from_bnb_lookup(|suffix| tensors.get(&format!("{prefix}{suffix}")))
    }

    /// Reads one weight given a lookup from suffix to tensor.
    fn from_bnb_lookup<'a>(get: impl Fn(&str) -> Option<&'a Tensor>) -> Result<Self, Nf4Error> {
        let fmt = |m: String| Nf4Error::Format(m);
        let need = |k: &str| get(k).ok_or_else(|| fmt(format!("missing tensor `{k}`")));
        let json = u8_vec(need(QUANT_STATE_KEY)?, QUANT_STATE_KEY)?;
        let state: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| fmt(format!("`{QUANT_STATE_KEY}` is not JSON: {e}")))?;
        let field = |k: &str| state.get(k).ok_or_else(|| fmt(format!("the quant state has no `{k}`")));
        let uint = |k: &str| {
            field(k)?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| fmt(format!("`{k}` is not a non-negative integer")))
        };
        let quant_type = field("quant_type")?.as_str().unwrap_or_default();
        if quant_type != "nf4" {
            return Err(fmt(format!("quant_type is `{quant_type}`, not `nf4`")));
        }
        let block_size = uint("blocksize")?;
        check_block_size(block_size)?;
        let dtype_name = field("dtype")?.as_str().unwrap_or_default();
        let dtype = Nf4Dtype::from_name(dtype_name).ok_or_else(|| fmt(format!("unsupported dtype `{dtype_name}`")))?;
        let shape = field("shape")?
            .as_array()
            .ok_or_else(|| fmt("`shape` is not a list".into()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| fmt("`shape` is not a list of sizes".into()))?;
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| {
            fmt(format!(
                "`shape` {shape:?} has more elements than this machine can address"
            ))
        })?;
        let blocks = n.div_ceil(block_size);

        let packed = u8_vec(need("weight")?, "weight")?;
        if packed.len() != n.div_ceil(2) {
            return Err(fmt(format!(
                "`weight` has {} bytes, shape {shape:?} needs {}",
                packed.len(),
                n.div_ceil(2)
            )));
        }
        let quant_map = f32_vec(need("weight.quant_map")?, "weight.quant_map")?;
        if quant_map.len() != 16 || quant_map.iter().zip(&NF4_CODE).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(fmt("`weight.quant_map` is not the NF4 codebook".into()));
        }
        let absmax_t = need("weight.absmax")?;
        let nested = state.get("nested_offset").is_some();
        let scales = if nested {
            let nested_block = uint("nested_blocksize")?;
            if nested_block == 0 {
                return Err(fmt("`nested_blocksize` is 0".into()));
            }
            let nested_dtype = field("nested_dtype")?.as_str().unwrap_or_default();
            if nested_dtype != "float32" {
                return Err(fmt(format!("nested_dtype is `{nested_dtype}`, expected `float32`")));
            }
            let offset = field("nested_offset")?
                .as_f64()
                .ok_or_else(|| fmt("`nested_offset` is not a number".into()))? as f32;
            let codes = u8_vec(absmax_t, "weight.absmax")?;
            let absmax = f32_vec(need("weight.nested_absmax")?, "weight.nested_absmax")?;
            let quant_map = f32_vec(need("weight.nested_quant_map")?, "weight.nested_quant_map")?;
            if codes.len() != blocks || absmax.len() != blocks.div_ceil(nested_block) || quant_map.len() != 256 {
                return Err(fmt(format!(
                    "double-quant sizes: {} codes, {} nested absmax, {} map entries; expected {blocks}, {}, 256",
                    codes.len(),
                    absmax.len(),
                    quant_map.len(),
                    blocks.div_ceil(nested_block)
                )));
            }
            Nf4Scales::Nested(NestedAbsmax {
                codes,
                absmax,
                offset,
                block_size: nested_block,
                quant_map,
            })
        } else {
            if get("weight.nested_absmax").is_some() {
                return Err(fmt(
                    "`weight.nested_absmax` without `nested_offset` in the quant state".into()
                ));
            }
            let absmax = f32_vec(absmax_t, "weight.absmax")?;
            if absmax.len() != blocks {
                return Err(fmt(format!(
                    "`weight.absmax` has {} values, expected {blocks}",
                    absmax.len()
                )));
            }
            Nf4Scales::Plain(absmax)
        };
        Ok(Nf4Tensor {
            packed,
            scales,
            shape,
            block_size,
            dtype,
        })
    }
}

/// The bytes of a uint8 tensor (any shape).
fn u8_vec(t: &Tensor, name: &str) -> Result<Vec<u8>, Nf4Error> {
    if t.dtype() != DType::U8 {
        return Err(Nf4Error::Format(format!("`{name}` is {:?}, expected uint8", t.dtype())));
    }
    Ok(t.flatten_all()?.to_vec1::<u8>()?)
}

/// The values of a float32 tensor (any shape).
fn f32_vec(t: &Tensor, name: &str) -> Result<Vec<f32>, Nf4Error> {
    if t.dtype() != DType::F32 {
        return Err(Nf4Error::Format(format!(
            "`{name}` is {:?}, expected float32",
            t.dtype()
        )));
    }
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Python's `repr(float)` (what `json.dumps` writes): shortest round-trip digits, scientific
/// notation below 1e-4 and from 1e16 (`1e-05`, `1.5e+16`), otherwise positional with a `.0`.
fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{sign}{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let mant = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::kernels::rng::Rng;

    /// The largest gap between neighbouring NF4 codebook entries (between indices 0 and 1).
    fn max_gap() -> f32 {
        NF4_CODE.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max)
    }

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        Rng::new(seed).normal_vec(n, 0.0, 0.02)
    }

    #[test]
    fn codebook_is_bnb_order_and_midpoints_match_the_cuda_tree() {
        assert_eq!(NF4_CODE[0], -1.0);
        assert_eq!(NF4_CODE[NF4_ZERO_INDEX as usize], 0.0);
        assert_eq!(NF4_CODE[15], 1.0);
        assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
        // The CUDA thresholds are the midpoints, to within one f32 ulp, strictly between neighbours.
        for (i, &t) in NF4_MID.iter().enumerate() {
            let m = (NF4_CODE[i] + NF4_CODE[i + 1]) * 0.5;
            assert!(
                t == m || t == m.next_up() || t == m.next_down(),
                "threshold {i}: {t} vs {m}"
            );
            assert!(NF4_CODE[i] < t && t < NF4_CODE[i + 1]);
        }
        // The reference values, as printed in ml-anchors §2.1 (f64 digits of the f32 values).
        assert_eq!(f64::from(NF4_CODE[1]), -0.6961928009986877);
        assert_eq!(f64::from(NF4_CODE[3]), -0.39491748809814453);
        assert_eq!(f64::from(NF4_CODE[11]), 0.33791524171829224);
        assert_eq!(f64::from(NF4_CODE[14]), 0.7229568362236023);
        assert!((max_gap() - 0.303_807_2).abs() < 1e-6); // between -1.0 and -0.696…
    }

    #[test]
    fn exact_codebook_values_give_their_indices_in_high_then_low_nibble() {
        // 64 values: the codebook four times, scaled by 2.5.
        let x: Vec<f32> = (0..64).map(|i| NF4_CODE[i % 16] * 2.5).collect();
        let q = Nf4Tensor::quantize(&x, &[64], 64, false).unwrap();
        assert_eq!(q.codes(), (0..64).map(|i| (i % 16) as u8).collect::<Vec<_>>());
        assert_eq!(&q.packed()[..8], &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(q.packed().len(), 32);
        assert_eq!(q.absmax(), vec![2.5]);
        let y = q.dequantize();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 1e-6 * 2.5, "{a} vs {b}");
        }
    }

    #[test]
    fn nibble_order_first_element_high() {
        let q = Nf4Tensor::quantize(&[1.0, -1.0], &[2], 32, false).unwrap();
        assert_eq!(q.packed(), &[0xf0]);
        let q = Nf4Tensor::quantize(&[-1.0, 1.0], &[1, 2], 32, false).unwrap();
        assert_eq!(q.packed(), &[0x0f]);
    }

    #[test]
    fn padded_last_block_has_its_own_absmax_and_a_zero_code_nibble() {
        let mut x = vec![0.5f32; 64];
        x[3] = -1.0;
        x.extend_from_slice(&[1.0, -0.5, 0.0, 0.25, -2.0]);
        let q = Nf4Tensor::quantize(&x, &[69], 64, false).unwrap();
        assert_eq!(q.num_blocks(), 2);
        assert_eq!(q.absmax(), vec![1.0, 2.0]);
        assert_eq!(q.packed().len(), 35);
        // Scaled by 1/2: [0.5, -0.25, 0, 0.125, -1] → 12, 4, 7, 9, 0; the pad is 0.0 → 7.
        assert_eq!(&q.packed()[32..], &[0xc4, 0x79, 0x07]);
        let y = q.dequantize();
        assert_eq!(y.len(), 69);
        assert_eq!(
            y[64..],
            [NF4_CODE[12] * 2.0, NF4_CODE[4] * 2.0, 0.0, NF4_CODE[9] * 2.0, -2.0]
        );
    }

    #[test]
    fn ties_go_to_the_lower_index_and_zero_blocks_encode_as_bnb_does() {
        // absmax 1, so the scaled value is the value itself.
        for (k, &m) in NF4_MID.iter().enumerate() {
            let q = Nf4Tensor::quantize(&[1.0, m, m.next_up(), m.next_down()], &[4], 32, false).unwrap();
            assert_eq!(q.codes(), vec![15, k as u8, k as u8 + 1, k as u8], "midpoint {k}");
        }
        // An all-zero block: 0 · (1/0) is NaN, which bnb encodes as index 0; it dequantizes to 0.
        let q = Nf4Tensor::quantize(&[0.0; 33], &[33], 32, false).unwrap();
        assert_eq!(q.absmax(), vec![0.0, 0.0]);
        assert_eq!(q.codes()[..32], [0u8; 32]);
        assert!(q.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn round_trip_error_is_within_half_the_largest_gap() {
        let (rows, cols) = (96, 130); // 12480 values: 195 blocks of 64; a partial last one at 128 and 4096
        let x = gaussian(rows * cols, 1);
        for bs in [32, 64, 128, 4096] {
            let q = Nf4Tensor::quantize(&x, &[rows, cols], bs, false).unwrap();
            let y = q.dequantize();
            let absmax = q.absmax();
            let mut sum_err = 0.0f64;
            let mut sum_abs = 0.0f64;
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                let am = absmax[i / bs];
                let err = (a - b).abs();
                assert!(
                    err <= max_gap() / 2.0 * am * (1.0 + 1e-5),
                    "bs {bs} element {i}: {a} vs {b}"
                );
                // And the code is the nearest codebook entry.
                let s = a * (1.0 / am);
                let c = q.code(i) as usize;
                assert!(NF4_CODE
                    .iter()
                    .all(|&v| (s - NF4_CODE[c]).abs() <= (s - v).abs() + 1e-6));
                sum_err += f64::from(err);
                sum_abs += f64::from(a.abs());
            }
            let rel = sum_err / sum_abs;
            // About 0.084 at block 32, 0.091 at 64, 0.096 at 128 and 0.118 at 4096 for this seed.
            let limit = if bs <= 64 { 0.1 } else { 0.13 };
            assert!(rel < limit, "bs {bs}: mean |error| / mean |x| = {rel}");
        }
    }

    #[test]
    fn quantization_is_deterministic_across_thread_counts() {
        let x = gaussian(100_000, 2);
        let one =
            crate::ml::kernels::runtime::with_threads(1, || Nf4Tensor::quantize(&x, &[100_000], 64, true).unwrap());
        let four =
            crate::ml::kernels::runtime::with_threads(4, || Nf4Tensor::quantize(&x, &[100_000], 64, true).unwrap());
        assert_eq!(one, four);
        assert_eq!(one.dequantize(), four.dequantize());
    }

    #[test]
    fn bits_per_parameter_are_counted_from_storage() {
        let (rows, cols) = (512, 512); // 4096 blocks of 64 = 16 nested blocks of 256
        let x = gaussian(rows * cols, 3);
        let n = (rows * cols) as f64;
        let plain = Nf4Tensor::quantize(&x, &[rows, cols], 64, false).unwrap();
        assert_eq!(plain.bytes(), rows * cols / 2 + 4 * rows * cols / 64);
        assert_eq!(plain.bits_per_parameter(), 4.5);
        let dq = Nf4Tensor::quantize(&x, &[rows, cols], 64, true).unwrap();
        assert_eq!(dq.bytes(), rows * cols / 2 + rows * cols / 64 + 4 * 16 + 4);
        let exact = 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0) + 32.0 / n;
        assert!((dq.bits_per_parameter() - exact).abs() < 1e-12);
        assert!((dq.bits_per_parameter() - 4.127).abs() < 1e-3);
        // What a file holds on top: the two codebooks and the JSON.
        let json = dq.bnb_quant_state_json().len();
        assert_eq!(dq.serialized_bytes(), dq.bytes() - 4 + 64 + 1024 + json);
    }

    #[test]
    fn dynamic_map_is_bnb_signed_dynamic_map() {
        let m = dynamic_map_signed();
        assert!(m.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(m[127], 0.0);
        assert_eq!(m[255], 1.0);
        assert_eq!(m[0], -0.992_968_75);
        assert!((m[128] - 5.5e-7).abs() < 1e-12);
        assert!((m[254] - 0.992_968_75).abs() < 1e-7);
        for k in 0..127 {
            assert_eq!(m[k], -m[254 - k], "entry {k}");
        }
        // 2^i values per decade 10^(i-6): 1 in [1e-7, 1e-6), …, 64 in [0.1, 1).
        for i in 0..7 {
            let (lo, hi) = (0.1 * 10f32.powi(i - 6), 10f32.powi(i - 6));
            let count = m.iter().filter(|&&v| v > lo * 0.999 && v < hi).count();
            assert_eq!(count, 1 << i, "decade {i}");
        }
    }

    #[test]
    fn dynamic_code_is_the_nearest_entry_with_ties_low() {
        let map = dynamic_map_signed();
        let mut mids = [f32::INFINITY; 256];
        for (m, w) in mids.iter_mut().zip(map.windows(2)) {
            *m = (w[0] + w[1]) * 0.5;
        }
        let mut probes: Vec<f32> = Rng::new(9).normal_vec(2000, 0.0, 0.3);
        probes.extend(map.iter().copied());
        probes.extend(mids[..255].iter().flat_map(|&m| [m, m.next_up(), m.next_down()]));
        probes.extend([-1.5, -1.0, 1.0, 1.5, f32::NAN]);
        for s in probes {
            let c = dynamic_code(&mids, s);
            assert_eq!(usize::from(c), mids[..255].partition_point(|&m| s > m), "{s}");
            if s.is_finite() {
                let d = (s - map[usize::from(c)]).abs();
                // Nearest up to the rounding of the f32 midpoint (ties are decided against it).
                assert!(
                    map.iter().all(|&v| d <= (s - v).abs() + f32::EPSILON * s.abs()),
                    "{s}: code {c}"
                );
            }
        }
        assert_eq!(dynamic_code(&mids, f32::NAN), 0);
        assert_eq!(dynamic_code(&mids, 0.0), 127);
        assert_eq!(dynamic_code(&mids, 2.0), 255);
    }

    #[test]
    fn double_quantized_absmax_is_close() {
        let x = gaussian(64 * 1000, 4);
        let plain = Nf4Tensor::quantize(&x, &[64 * 1000], 64, false).unwrap();
        let dq = Nf4Tensor::quantize(&x, &[64 * 1000], 64, true).unwrap();
        assert_eq!(plain.packed(), dq.packed());
        let (a, Nf4Scales::Nested(q)) = (plain.absmax(), dq.scales()) else {
            panic!("not nested")
        };
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        assert!((f64::from(q.offset) - mean).abs() < 1e-7);
        assert_eq!((q.codes.len(), q.absmax.len(), q.block_size), (1000, 4, 256));
        let half_gap = dynamic_map_signed().windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0;
        assert!((half_gap - 0.0140625 / 2.0).abs() < 1e-6);
        let b = dq.absmax();
        for (i, (u, v)) in a.iter().zip(&b).enumerate() {
            let bound = half_gap * q.absmax[i / 256] * 1.001 + 1e-7;
            assert!((u - v).abs() <= bound, "block {i}: {u} vs {v}");
            assert!((u - v).abs() / u < 0.01);
        }
        // The second-level absmax is the max |absmax - offset| of its 256 blocks.
        let want = a[..256].iter().map(|v| (v - q.offset).abs()).fold(0.0, f32::max);
        assert_eq!(q.absmax[0], want);
        // Dequantizing with the recovered absmax.
        let y = dq.dequantize();
        for (i, (u, v)) in x.iter().zip(&y).enumerate() {
            assert!((u - v).abs() <= max_gap() / 2.0 * b[i / 64] * 1.001 + (a[i / 64] - b[i / 64]).abs());
        }
    }

    #[test]
    fn equal_absmax_values_double_quantize_to_the_offset() {
        let x = vec![0.25f32; 64 * 3];
        let q = Nf4Tensor::quantize(&x, &[3, 64], 64, true).unwrap();
        assert_eq!(q.absmax(), vec![0.25; 3]);
        assert_eq!(q.dequantize(), x);
    }

    #[test]
    fn bnb_tensors_have_the_reference_names_shapes_and_json() {
        let x = gaussian(3 * 101, 5);
        let q = Nf4Tensor::quantize(&x, &[3, 101], 64, true).unwrap();
        let t = q.bnb_tensors().unwrap();
        let names: Vec<&str> = t.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "weight",
                "weight.absmax",
                "weight.quant_map",
                "weight.nested_absmax",
                "weight.nested_quant_map",
                "weight.quant_state.bitsandbytes__nf4"
            ]
        );
        let get = |k: &str| &t.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(get("weight").dims(), &[152, 1]);
        assert_eq!(get("weight").dtype(), DType::U8);
        assert_eq!(get("weight.absmax").dims(), &[5]);
        assert_eq!(get("weight.absmax").dtype(), DType::U8);
        assert_eq!(get("weight.quant_map").dims(), &[16]);
        assert_eq!(get("weight.nested_absmax").dims(), &[1]);
        assert_eq!(get("weight.nested_quant_map").dims(), &[256]);
        let Nf4Scales::Nested(n) = q.scales() else { panic!() };
        let json = format!(
            "{{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [3, 101], \
             \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": {}}}",
            py_float_repr(f64::from(n.offset))
        );
        assert_eq!(q.bnb_quant_state_json(), json);
        let bytes = get(QUANT_STATE_KEY).to_vec1::<u8>().unwrap();
        assert_eq!(bytes, json.as_bytes());
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["nested_offset"].as_f64().unwrap() as f32, n.offset);

        let plain = Nf4Tensor::quantize(&x, &[303], 64, false)
            .unwrap()
            .with_dtype(Nf4Dtype::BF16);
        let t = plain.bnb_tensors().unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].1.dtype(), DType::F32);
        assert_eq!(
            plain.bnb_quant_state_json(),
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [303]}"
        );
    }

    #[test]
    fn serialization_round_trips_through_safetensors() {
        let x = gaussian(40 * 77, 6);
        let dir = tempfile::tempdir().unwrap();
        for dq in [false, true] {
            let q = Nf4Tensor::quantize(&x, &[40, 77], 128, dq)
                .unwrap()
                .with_dtype(Nf4Dtype::F16);
            let back = Nf4Tensor::from_bnb_tensors(&q.bnb_tensors().unwrap()).unwrap();
            assert_eq!(back, q);
            let prefix = "bert.encoder.layer.0.attention.self.query.";
            let map: HashMap<String, Tensor> = q
                .bnb_tensors()
                .unwrap()
                .into_iter()
                .map(|(k, v)| (format!("{prefix}{k}"), v))
                .collect();
            let path = dir.path().join(format!("w{dq}.safetensors"));
            candle_core::safetensors::save(&map, &path).unwrap();
            let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            let back = Nf4Tensor::from_state_dict(&loaded, prefix).unwrap();
            assert_eq!(back, q);
            assert_eq!(back.dequantize(), q.dequantize());
            let t = back.to_tensor(&Device::Cpu).unwrap();
            assert_eq!((t.dims(), t.dtype()), (&[40usize, 77][..], DType::F16));
        }
    }

    #[test]
    fn loading_rejects_inconsistent_state() {
        let q = Nf4Tensor::quantize(&gaussian(128, 7), &[128], 64, false).unwrap();
        let mut t = q.bnb_tensors().unwrap();
        t.retain(|(k, _)| k != "weight.absmax");
        assert!(matches!(Nf4Tensor::from_bnb_tensors(&t), Err(Nf4Error::Format(_))));
        let mut t = q.bnb_tensors().unwrap();
        t[2].1 = Tensor::from_vec(NF4_CODE.map(|c| c * 0.5).to_vec(), 16, &Device::Cpu).unwrap();
        assert!(matches!(Nf4Tensor::from_bnb_tensors(&t), Err(Nf4Error::Format(_))));
        // A shape whose element count wraps around (2^61 · 8 = 0 mod 2^64) is refused, not read
        // as an empty weight.
        let mut t = q.bnb_tensors().unwrap();
        let (key, state) = t.iter_mut().find(|(k, _)| k == QUANT_STATE_KEY).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&u8_vec(state, key).unwrap()).unwrap();
        json["shape"] = serde_json::json!([1u64 << 61, 8]);
        let bytes = serde_json::to_vec(&json).unwrap();
        let len = bytes.len();
        *state = Tensor::from_vec(bytes, len, &Device::Cpu).unwrap();
        match Nf4Tensor::from_bnb_tensors(&t) {
            Err(Nf4Error::Format(m)) => assert!(m.contains("more elements"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn candle_tensor_helpers_round_trip_dtype_and_shape() {
        let x = gaussian(2 * 3 * 64, 8);
        let t = Tensor::from_vec(x.clone(), (2, 3, 64), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let q = Nf4Tensor::from_tensor(&t, 64, true).unwrap();
        assert_eq!((q.shape(), q.dtype()), (&[2usize, 3, 64][..], Nf4Dtype::BF16));
        let back = q.to_tensor(&Device::Cpu).unwrap();
        assert_eq!((back.dims(), back.dtype()), (&[2usize, 3, 64][..], DType::BF16));
        let i = Tensor::from_vec(vec![1u32, 2], 2, &Device::Cpu).unwrap();
        assert!(matches!(
            Nf4Tensor::from_tensor(&i, 64, false),
            Err(Nf4Error::Dtype(DType::U32))
        ));
    }

    #[test]
    fn invalid_inputs_are_errors() {
        assert!(matches!(
            Nf4Tensor::quantize(&[0.0; 4], &[4], 48, false),
            Err(Nf4Error::BlockSize(48))
        ));
        assert!(matches!(
            Nf4Tensor::quantize(&[0.0; 4], &[4], 16, false),
            Err(Nf4Error::BlockSize(16))
        ));
        assert!(matches!(
            Nf4Tensor::quantize(&[0.0; 4], &[5], 64, false),
            Err(Nf4Error::Shape { .. })
        ));
        let mut x = vec![0.1f32; 200];
        x[150] = f32::NAN;
        assert!(matches!(
            Nf4Tensor::quantize(&x, &[200], 64, false),
            Err(Nf4Error::NonFinite { index: 150, .. })
        ));
        let empty = Nf4Tensor::quantize(&[], &[0, 4], 64, true).unwrap();
        assert!(empty.dequantize().is_empty());
    }

    #[test]
    fn python_float_repr() {
        assert_eq!(py_float_repr(0.1), "0.1");
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(123.0), "123.0");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(0.00012), "0.00012");
        assert_eq!(py_float_repr(1e-5), "1e-05");
        assert_eq!(py_float_repr(1.5e-5), "1.5e-05");
        assert_eq!(py_float_repr(1e16), "1e+16");
        assert_eq!(py_float_repr(1234567890123456.0), "1234567890123456.0");
        assert_eq!(py_float_repr(-2.5), "-2.5");
        assert_eq!(py_float_repr(f64::from(0.1f32)), "0.10000000149011612");
    }
}
