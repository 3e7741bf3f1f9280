//! A generated image classification task: learnable, not trivial, the same for the same seed.
//!
//! Every image is a sinusoidal grating over a grey background. The class sets the grating's
//! orientation (classes beyond six also move to a higher frequency band); the phase, exact
//! frequency, contrast, colour, brightness and a small orientation jitter are random per image,
//! and Gaussian pixel noise of standard deviation `noise` (on the 0–1 scale) is added. The
//! images are 8-bit RGB like decoded files, so they are normalised and augmented the same way.

use super::error::DataError;
use super::synthetic_text::balanced_labels;
use crate::ml::Rng;
use crate::registry::bounds;

/// Orientations per frequency band.
pub const ORIENTATIONS: usize = 6;

/// The generator's settings (the `synthetic_images` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    /// Generator seed.
    pub seed: u64,
    /// Number of classes (≥ 2).
    pub classes: usize,
    /// Training images.
    pub train_size: usize,
    /// Validation images.
    pub val_size: usize,
    /// Test examples (generated after the validation ones, so adding them changes neither).
    pub test_size: usize,
    /// Image side in pixels.
    pub image_size: usize,
    /// Standard deviation of the pixel noise (0–1 scale).
    pub noise: f64,
}

/// One generated split.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImages {
    /// RGB bytes, `[side, side, 3]` each.
    pub images: Vec<Vec<u8>>,
    /// Class of each image.
    pub labels: Vec<u32>,
}

/// The generated data set.
#[derive(Debug, Clone)]
pub struct SyntheticImages {
    /// Class names `class_0`, `class_1`, ….
    pub classes: Vec<String>,
    /// Training split.
    pub train: GeneratedImages,
    /// Validation split.
    pub validation: GeneratedImages,
    /// Test split.
    pub test: GeneratedImages,
}

fn grating(class: u32, classes: usize, side: usize, noise: f64, rng: &mut Rng) -> Vec<u8> {
    use std::f64::consts::PI;
    let k = classes.min(ORIENTATIONS);
    let (slot, band) = (class as usize % k, class as usize / k);
    let jitter = (rng.uniform_f64() - 0.5) * 0.5 * PI / k as f64;
    let theta = PI * slot as f64 / k as f64 + jitter;
    let cycles = 1.5 + 2.5 * band as f64 + 1.5 * rng.uniform_f64();
    let phase = 2.0 * PI * rng.uniform_f64();
    let contrast = 0.15 + 0.2 * rng.uniform_f64();
    let background = 0.35 + 0.3 * rng.uniform_f64();
    let tint: Vec<f64> = (0..3).map(|_| 0.5 + 0.5 * rng.uniform_f64()).collect();
    let noise = rng.normal_vec(side * side * 3, 0.0, noise);
    let (c, s) = (theta.cos(), theta.sin());
    let freq = 2.0 * PI * cycles / side as f64;
    let mut out = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            let wave = (freq * (x as f64 * c + y as f64 * s) + phase).sin();
            for t in &tint {
                let v = background + contrast * t * wave + noise[out.len()] as f64;
                out.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
    }
    out
}

/// Generates the data set.
pub fn generate(spec: &ImageSpec) -> Result<SyntheticImages, DataError> {
    if spec.classes < 2 {
        return Err(DataError::new(format!(
            "synthetic_images: needs at least 2 classes, got {}",
            spec.classes
        )));
    }
    if spec.train_size == 0 || spec.val_size == 0 || spec.test_size == 0 {
        return Err(DataError::new(
            "synthetic_images: empty split (train_size, val_size and test_size must be positive)",
        ));
    }
    if spec.image_size < 2 {
        return Err(DataError::new("synthetic_images: image_size must be at least 2"));
    }
    let splits = [spec.train_size, spec.val_size, spec.test_size].map(|n| n as u64);
    let (examples, over) = bounds::generated_over_limit(splits, bounds::image_example_bytes(spec.image_size as u64));
    if over {
        return Err(DataError::new(format!(
            "synthetic_images: {examples} images of {0}x{0} pixels would take more than {1} of memory",
            spec.image_size,
            bounds::generated_limit()
        )));
    }
    let mut rng = Rng::for_stream(spec.seed, "rkd-synthetic-images");
    let mut make = |n: usize| {
        let labels = balanced_labels(n, spec.classes, &mut rng);
        let images = labels
            .iter()
            .map(|&l| grating(l, spec.classes, spec.image_size, spec.noise, &mut rng))
            .collect();
        GeneratedImages { images, labels }
    };
    let train = make(spec.train_size);
    let validation = make(spec.val_size);
    let test = make(spec.test_size);
    Ok(SyntheticImages {
        classes: (0..spec.classes).map(|c| format!("class_{c}")).collect(),
        train,
        validation,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> ImageSpec {
        ImageSpec {
            seed,
            classes: 3,
            train_size: 60,
            val_size: 30,
            test_size: 30,
            image_size: 16,
            noise: 0.2,
        }
    }

    #[test]
    fn deterministic_per_seed_and_balanced() {
        let a = generate(&spec(1)).unwrap();
        let b = generate(&spec(1)).unwrap();
        let c = generate(&spec(2)).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.validation, b.validation);
        assert_ne!(a.train.images, c.train.images);
        assert!(a.train.images.iter().all(|i| i.len() == 16 * 16 * 3));
        for k in 0..3u32 {
            assert_eq!(a.train.labels.iter().filter(|&&l| l == k).count(), 20);
        }
    }

    #[test]
    fn classes_differ_in_orientation_not_in_colour() {
        // Mean brightness says nothing about the class; the direction of the strongest
        // gradient does (horizontal vs. vertical differences), on noise-free images.
        let d = generate(&ImageSpec {
            noise: 0.0,
            train_size: 300,
            image_size: 24,
            ..spec(5)
        })
        .unwrap();
        let side = 24;
        let mut mean = [0.0f64; 3];
        let mut gx_share = [0.0f64; 3];
        let mut n = [0.0f64; 3];
        for (img, &l) in d.train.images.iter().zip(&d.train.labels) {
            let px = |x: usize, y: usize| img[(y * side + x) * 3] as f64;
            let (mut gx, mut gy) = (0.0, 0.0);
            for y in 0..side - 1 {
                for x in 0..side - 1 {
                    gx += (px(x + 1, y) - px(x, y)).abs();
                    gy += (px(x, y + 1) - px(x, y)).abs();
                }
            }
            mean[l as usize] += img.iter().map(|&v| v as f64).sum::<f64>() / img.len() as f64;
            gx_share[l as usize] += gx / (gx + gy + 1e-9);
            n[l as usize] += 1.0;
        }
        let mean: Vec<f64> = (0..3).map(|c| mean[c] / n[c]).collect();
        let gx: Vec<f64> = (0..3).map(|c| gx_share[c] / n[c]).collect();
        assert!(mean.iter().all(|m| (m - mean[0]).abs() < 12.0), "{mean:?}");
        // Class 0 (vertical stripes, theta = 0) changes mostly along x; class 1 and 2 less so.
        assert!(gx[0] > gx[1] + 0.1 && gx[0] > gx[2] + 0.1, "{gx:?}");
    }
}
