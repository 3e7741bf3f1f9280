//! What the inference kernels of packed weights (NF4, sparse) share: the forward pass of a
//! candle op `y = x·Wᵀ` over a weight held outside candle, and the checks of its sizes.

use candle_core::{CpuStorage, Layout, Result, Shape};

use super::fused::slice;
use super::gemm::uninit_vec;

/// The forward pass of a linear op `name` with a packed `[n, k]` weight: checks that the input is
/// `[.., k]` f32, and lets `product(x, m, y)` fill `y` (`[m, n]`, uninitialised) for its `m` rows.
pub(crate) fn linear_forward(
    name: &str,
    s: &CpuStorage,
    l: &Layout,
    (n, k): (usize, usize),
    product: impl FnOnce(&[f32], usize, &mut [f32]),
) -> Result<(CpuStorage, Shape)> {
    let x = slice(s, l, name)?;
    let Some((&last, lead)) = l.dims().split_last() else {
        candle_core::bail!("{name}: a scalar input")
    };
    if last != k {
        candle_core::bail!("{name}: input width {last}, weight [{n}, {k}]")
    }
    let m: usize = lead.iter().product();
    let mut y = uninit_vec(m * n);
    product(x, m, &mut y);
    let mut out = lead.to_vec();
    out.push(n);
    Ok((CpuStorage::F32(y), Shape::from(out)))
}

/// Panics unless `x` is `[m, k]`, `y` `[m, n]` and `bias` (if any) `[n]` (a programming error:
/// [`linear_forward`] checks what comes from outside).
pub(crate) fn check_sizes(what: &str, x: &[f32], y: &[f32], bias: Option<&[f32]>, (m, n, k): (usize, usize, usize)) {
    assert_eq!(x.len(), m * k, "{what}: input size");
    assert_eq!(y.len(), m * n, "{what}: output size");
    assert!(bias.is_none_or(|b| b.len() == n), "{what}: bias size");
}

#[cfg(test)]
pub(crate) fn check_everywhere(want: &[f64], product: impl Fn(&mut [f32]) + Sync) {
    let mut first: Option<Vec<f32>> = None;
    super::isa::on_every_path(|path| {
        for threads in [1, 3] {
            let y = super::runtime::with_threads(threads, || {
                let mut y = vec![f32::NAN; want.len()];
                product(&mut y);
                y
            });
            for (a, b) in y.iter().zip(want) {
                let (a, name) = (f64::from(*a), path.name());
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{name}: {a} vs {b}");
            }
            match &first {
                Some(f) => assert_eq!(&y, f, "{} on {threads} threads", path.name()),
                None => first = Some(y),
            }
        }
    });
}
