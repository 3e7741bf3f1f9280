//! NF4 weights held on any device (a GPU above all) as tensors, 4-bit there too: the packed
//! codes (`u8`, two per byte, high nibble first) and one f32 scale per block. A product
//! dequantizes the weight on the device with two tensor ops — a lookup of each byte's two
//! codebook values (`index_select` over a 256 × 2 table) and a multiplication by the block
//! scales — so the same f32 products as [`PackedNf4::decode`] give the same bits on every
//! device (255 included: see [`DeviceNf4::dequantize`]). The dense copy lives only for the product that needs it (see
//! [`super::frozen_grad`] for the backward pass, which makes it again rather than keeping it).

use candle_core::{DType, Device, Result, Tensor};

use super::nf4_kernel::{PackedNf4, NF4_CODE};

/// An NF4 weight `[rows, cols]` whose parts live on a device.
#[derive(Debug, Clone)]
pub struct DeviceNf4 {
    /// `u8`, `(rows·cols + 1) / 2` bytes.
    codes: Tensor,
    /// `f32`, one per block.
    scales: Tensor,
    /// `f32` `[256, 2]`: byte `b` → `(NF4_CODE[b >> 4], NF4_CODE[b & 15])`.
    pairs: Tensor,
    block: usize,
    rows: usize,
    cols: usize,
}

impl DeviceNf4 {
    /// Copies the packed weight's codes and scales to `device`.
    pub fn upload(w: &PackedNf4, device: &Device) -> Result<Self> {
        let (packed, scales, block) = w.parts();
        let (rows, cols) = w.dims();
        let pairs: Vec<f32> = (0..=255u8)
            .flat_map(|b| [NF4_CODE[usize::from(b >> 4)], NF4_CODE[usize::from(b & 15)]])
            .collect();
        Ok(Self {
            codes: Tensor::from_slice(packed, packed.len(), device)?,
            scales: Tensor::from_slice(scales, scales.len(), device)?,
            pairs: Tensor::from_vec(pairs, (256, 2), device)?,
            block,
            rows,
            cols,
        })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes held on the device: the codes and the scales (the 2 KiB table aside).
    pub fn bytes(&self) -> usize {
        self.codes.elem_count() + 4 * self.scales.elem_count()
    }

    /// The dense weight `[rows, cols]` (f32, on the weight's device).
    pub fn dequantize(&self) -> Result<Tensor> {
        let n = self.rows * self.cols;
        let blocks = self.scales.elem_count();
        // Two values per byte; the block size is even, so whole blocks cover them. The bytes
        // index as u32: candle's `index_select` reads an index of the type's maximum (255 for
        // u8) as padding and gives zeros.
        let values = self
            .pairs
            .index_select(&self.codes.to_dtype(DType::U32)?, 0)?
            .flatten_all()?;
        let padded = blocks * self.block;
        let values = values.pad_with_zeros(0, 0, padded - values.elem_count())?;
        let scaled = values
            .reshape((blocks, self.block))?
            .broadcast_mul(&self.scales.reshape((blocks, 1))?)?;
        scaled.flatten_all()?.narrow(0, 0, n)?.reshape((self.rows, self.cols))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::kernels::fused_linear::product_t;
    use crate::ml::kernels::nf4_kernel::random;
    use crate::ml::kernels::rng::Rng;

    #[test]
    fn every_byte_value_decodes() {
        // All 256 bytes once, in order (byte 255 is candle's u8 padding index).
        let packed: Vec<u8> = (0..=255u8).collect();
        let w = PackedNf4::new(packed, vec![2.0; 8], 64, 2, 256).unwrap();
        let d = DeviceNf4::upload(&w, &Device::Cpu).unwrap();
        let got = d.dequantize().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, w.dequantize());
        assert_eq!(got[510..], [2.0, 2.0], "byte 255: code 15 twice");
    }

    #[test]
    fn the_device_dequantization_gives_the_cpu_kernels_bits() {
        // Whole blocks, a padded last block, and an odd element count.
        for (rows, cols, block) in [(8, 64, 64), (5, 24, 32), (3, 7, 4), (1, 1, 2), (16, 16, 2)] {
            let w = random(rows, cols, block, (rows * cols) as u64);
            let d = DeviceNf4::upload(&w, &Device::Cpu).unwrap();
            let got = d.dequantize().unwrap();
            assert_eq!(got.dims(), [rows, cols]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, w.dequantize(), "[{rows}, {cols}] block {block}");
        }
    }

    #[test]
    fn it_holds_four_bits_per_weight_and_a_scale_per_block() {
        let w = random(64, 128, 64, 1);
        let d = DeviceNf4::upload(&w, &Device::Cpu).unwrap();
        assert_eq!(d.bytes(), w.bytes());
        assert_eq!(d.bytes(), 64 * 128 / 2 + 4 * (64 * 128 / 64));
    }

    #[test]
    fn its_product_is_the_dense_product() {
        let w = random(6, 64, 64, 3);
        let d = DeviceNf4::upload(&w, &Device::Cpu).unwrap();
        let mut rng = Rng::new(9);
        let x: Vec<f32> = (0..4 * 64).map(|_| rng.below(2000) as f32 / 1000.0 - 1.0).collect();
        let x = Tensor::from_vec(x, (4, 64), &Device::Cpu).unwrap();
        let dense = Tensor::from_vec(w.dequantize(), (6, 64), &Device::Cpu).unwrap();
        let want = x.matmul(&dense.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
        let product = |compute| product_t(&x, &d.dequantize().unwrap(), compute).unwrap();
        let got = product(DType::F32).to_vec2::<f32>().unwrap();
        assert_eq!(got, want);
        let half = product(DType::BF16);
        assert_eq!(half.dtype(), DType::F32);
        for (a, b) in half
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .flatten()
            .zip(want.iter().flatten())
        {
            assert!((a - b).abs() <= 3e-2 * b.abs().max(1.0), "bf16 {a} vs {b}");
        }
    }
}
