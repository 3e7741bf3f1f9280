//! RGB pixel buffers (8-bit, `[height, width, 3]`, row-major): ImageNet normalisation into
//! `[3, height, width]` floats, and the training augmentation (random flips and crops).

use image::imageops::FilterType;
use image::RgbImage;

use crate::ml::Rng;

/// ImageNet channel means (RGB), on the 0–1 scale.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB), on the 0–1 scale.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The resampling filter for every resize (bilinear, as Hugging Face's ViT image processor).
pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// Smallest crop side, as a fraction of the image side, in [`augment`].
pub const MIN_CROP: f64 = 0.8;

/// Appends the ImageNet-normalised `[3, side, side]` floats of an RGB buffer to `out`.
pub fn normalise_into(rgb: &[u8], out: &mut Vec<f32>) {
    let n = rgb.len() / 3;
    for c in 0..3 {
        let lut: Vec<f32> = (0..256u32)
            .map(|v| (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
            .collect();
        out.extend((0..n).map(|i| lut[rgb[3 * i + c] as usize]));
    }
}

/// Resizes an RGB image to `side`×`side` (a no-op copy when it already is).
pub fn resize_square(img: &RgbImage, side: u32) -> RgbImage {
    if img.width() == side && img.height() == side {
        img.clone()
    } else {
        image::imageops::resize(img, side, side, RESIZE_FILTER)
    }
}

/// A randomly augmented copy of a square RGB buffer: a crop of side in [0.8, 1]× at a random
/// place, resized back to `side`, then flipped left–right with probability ½.
pub fn augment(rgb: &[u8], side: usize, rng: &mut Rng) -> Vec<u8> {
    let img = RgbImage::from_raw(side as u32, side as u32, rgb.to_vec()).expect("buffer is side×side×3");
    let scale = MIN_CROP + (1.0 - MIN_CROP) * rng.uniform_f64();
    let crop = ((side as f64 * scale).round() as u32).clamp(1, side as u32);
    let room = side as u32 - crop;
    let x = rng.below(room as u64 + 1) as u32;
    let y = rng.below(room as u64 + 1) as u32;
    let flip = rng.below(2) == 1;
    let mut out = if crop == side as u32 {
        img
    } else {
        let cropped = image::imageops::crop_imm(&img, x, y, crop, crop).to_image();
        image::imageops::resize(&cropped, side as u32, side as u32, RESIZE_FILTER)
    };
    if flip {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    out.into_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_is_channel_major() {
        let rgb = [255u8, 0, 128, 0, 255, 128];
        let mut out = Vec::new();
        normalise_into(&rgb, &mut out);
        assert_eq!(out.len(), 6);
        let r0 = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
        let g0 = (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1];
        assert!((out[0] - r0).abs() < 1e-6 && (out[2] - g0).abs() < 1e-6);
        assert!((out[4] - out[5]).abs() < 1e-6);
    }

    #[test]
    fn augment_is_seeded_and_keeps_the_size() {
        let side = 16;
        let rgb: Vec<u8> = (0..side * side * 3).map(|i| (i * 7 % 251) as u8).collect();
        let a = augment(&rgb, side, &mut Rng::new(1));
        let b = augment(&rgb, side, &mut Rng::new(1));
        assert_eq!(a, b);
        assert_eq!(a.len(), rgb.len());
        let differs = (0..20).any(|s| augment(&rgb, side, &mut Rng::new(s)) != rgb);
        assert!(differs);
    }
}
