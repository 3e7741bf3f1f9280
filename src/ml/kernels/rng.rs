//! A small, seeded, portable random number generator (xoshiro256**).
//!
//! candle's CPU device cannot be seeded (`Device::set_seed` bails on CPU), so weight
//! initialisation and dropout masks draw from this generator instead. Its algorithm is
//! fixed here, so the same seed gives the same numbers on every platform and every
//! version of the dependencies.

/// Seeded xoshiro256** generator.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64's output function (a bijective 64-bit mix).
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A dropout mask that is a pure function of a seed and the element index: element `i` is
/// kept iff the top 32 bits of `mix64(key + (i + 1)·φ)` (SplitMix64's `i`-th output from a
/// state `key` mixed from the seed) are at least `p·2³²`, and kept elements are scaled by
/// `1/(1 − p)`. Any range can be generated on its own, so masks are filled in parallel and come
/// out the same on any number of threads, and a backward pass can regenerate instead of store.
#[derive(Debug, Clone, Copy)]
pub struct CounterMask {
    key: u64,
    threshold: u64,
    inv_keep: f32,
}

/// Elements per parallel task when filling a whole mask.
const MASK_BLOCK: usize = 16384;

impl CounterMask {
    /// The mask of drop probability `p` for `seed`; `None` when nothing is dropped (`p ≤ 0`).
    /// `p` must be below 1.
    pub fn new(p: f64, seed: u64) -> Option<Self> {
        (p > 0.0).then(|| Self {
            key: mix64(seed ^ 0x6174_7465_6e74_696f),
            threshold: (p * 4_294_967_296.0).ceil() as u64,
            inv_keep: (1.0 / (1.0 - p)) as f32,
        })
    }

    /// The multipliers (`0` or `1/(1 − p)`) of elements `start..start + dst.len()`.
    #[inline]
    pub fn fill(&self, start: u64, dst: &mut [f32]) {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let base = self.key.wrapping_add(start.wrapping_add(1).wrapping_mul(GOLDEN));
        for (j, o) in dst.iter_mut().enumerate() {
            let h = mix64(base.wrapping_add((j as u64).wrapping_mul(GOLDEN))) >> 32;
            *o = if h >= self.threshold { self.inv_keep } else { 0.0 };
        }
    }

    /// The multipliers of elements `0..n`, filled in parallel on the current rayon pool.
    pub fn values(&self, n: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let mut out = super::gemm::uninit_vec(n);
        out.par_chunks_mut(MASK_BLOCK)
            .enumerate()
            .for_each(|(i, block)| self.fill((i * MASK_BLOCK) as u64, block));
        out
    }
}

/// Derives an independent seed for a named stream (e.g. one tensor) from a base seed.
///
/// Each variable gets its own stream, so adding or reordering variables never changes
/// the initial values of the others.
pub fn derive_seed(seed: u64, name: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"rkd-ml-seed-v1");
    h.update(&seed.to_le_bytes());
    h.update(name.as_bytes());
    let bytes = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(out)
}

impl Rng {
    /// A generator whose whole state is expanded from `seed` with SplitMix64.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self { s }
    }

    /// A generator for the stream `name` derived from `seed` (see [`derive_seed`]).
    pub fn for_stream(seed: u64, name: &str) -> Self {
        Self::new(derive_seed(seed, name))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform integer in [0, n) (n > 0), by rejection so there is no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let zone = u64::MAX - (u64::MAX - n + 1) % n;
        loop {
            let v = self.next_u64();
            if v <= zone {
                return v % n;
            }
        }
    }

    /// Standard normal samples (Box–Muller in f64), `n` of them, scaled and shifted.
    pub fn normal_vec(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            // u1 in (0, 1] so that ln(u1) is finite.
            let u1 = 1.0 - self.uniform_f64();
            let u2 = self.uniform_f64();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            out.push((mean + std * r * theta.cos()) as f32);
            if out.len() < n {
                out.push((mean + std * r * theta.sin()) as f32);
            }
        }
        out
    }

    /// Normal samples truncated to `[mean - bound·std, mean + bound·std]` by resampling.
    pub fn truncated_normal_vec(&mut self, n: usize, mean: f64, std: f64, bound: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let u1 = 1.0 - self.uniform_f64();
            let u2 = self.uniform_f64();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            for z in [r * theta.cos(), r * theta.sin()] {
                if z.abs() <= bound && out.len() < n {
                    out.push((mean + std * z) as f32);
                }
            }
        }
        out
    }

    /// Uniform samples in [lo, hi).
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| (lo + (hi - lo) * self.uniform_f64()) as f32).collect()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn counter_masks_are_a_function_of_seed_and_index() {
        let m = CounterMask::new(0.25, 9).unwrap();
        let all = m.values(100_000);
        let kept = all.iter().filter(|&&v| v > 0.0).count() as f64 / all.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(all.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
        // Any range on its own equals the same range of the whole mask (what parallel filling
        // and regenerating in a backward pass rely on).
        let mut part = vec![0.0; 777];
        m.fill(50_000, &mut part);
        assert_eq!(part, all[50_000..50_777]);
        assert_eq!(CounterMask::new(0.25, 9).unwrap().values(1000), all[..1000]);
        assert_ne!(CounterMask::new(0.25, 10).unwrap().values(1000), all[..1000]);
        assert!(CounterMask::new(0.0, 9).is_none());
    }

    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut c = Rng::new(8);
        assert_ne!(a[0], c.next_u64());
        assert_ne!(derive_seed(7, "a.weight"), derive_seed(7, "b.weight"));
        assert_ne!(derive_seed(7, "a.weight"), derive_seed(8, "a.weight"));
    }

    #[test]
    fn normal_moments_are_plausible() {
        let mut r = Rng::new(1);
        let v = r.normal_vec(20_000, 0.0, 2.0);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "std {}", var.sqrt());
        let t = r.truncated_normal_vec(5_000, 0.0, 1.0, 2.0);
        assert!(t.iter().all(|x| x.abs() <= 2.0));
        let u = r.uniform_f32();
        assert!((0.0..1.0).contains(&u));
        assert!(r.below(3) < 3);
    }
}
