//! Gradients through a frozen weight that autograd does not hold.
//!
//! A layer whose weight `W` (`[n, k]`) is held packed (NF4 codes, sparse rows) computes
//! `y = x·Wᵀ` from a detached input, so the graph keeps neither `x`'s product nor the dense
//! weight that a product on another device makes. [`attach`] then joins `y` to `x` for the
//! backward pass: its forward pass returns `y`'s values, its backward pass gives `x` the gradient
//! `g·W` with `W` made dense again only for that product (as bitsandbytes' 4-bit matmul does).
//! The weight itself gets no gradient: it is frozen.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};

use super::fused::slice;

/// Makes the dense weight `[n, k]` on the device asked for.
pub type DenseWeight = Arc<dyn Fn(&Device) -> Result<Tensor> + Send + Sync>;

/// `y` (`[m, n]`, computed from `x` detached) with `x` (`[m, k]`) as its input for the backward
/// pass: `dL/dx = dL/dy · W`, `W` from `dense`.
pub fn attach(x: &Tensor, y: &Tensor, dense: DenseWeight) -> Result<Tensor> {
    let y = y.contiguous()?;
    x.apply_op2(&y, FrozenProduct { dense })
}

/// The candle op of [`attach`].
struct FrozenProduct {
    dense: DenseWeight,
}

impl CustomOp2 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-product"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = slice(s2, l2, self.name())?;
        Ok((CpuStorage::F32(y.to_vec()), l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        // `attach` passes a contiguous `y`; a copy of its buffer is then exactly its values.
        if !l2.is_contiguous() || l2.start_offset() != 0 {
            candle_core::bail!("{}: the product must be contiguous from its start", self.name())
        }
        Ok((s2.try_clone(l2)?, l2.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let w = (self.dense)(grad.device())?;
        let dx = grad.to_dtype(w.dtype())?.matmul(&w)?.to_dtype(x.dtype())?;
        Ok((Some(dx), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn the_input_gets_the_gradient_of_the_dense_product_and_the_weight_is_not_kept() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2., 3.], [-1., 0.5, 2.]], &dev).unwrap();
        let x = Var::new(&[[0.5f32, -1., 2.], [3., 1., -2.]], &dev).unwrap();
        let bias = Var::new(&[0.25f32, -0.5], &dev).unwrap();
        // The reference: autograd through the dense product.
        let want = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
        let want_loss = want.sqr().unwrap().sum_all().unwrap();
        let want_grads = want_loss.backward().unwrap();
        // The frozen form: the product of the detached input, joined to it.
        let y = x.as_tensor().detach().matmul(&w.t().unwrap()).unwrap();
        let dense_w = w.clone();
        let joined = attach(x.as_tensor(), &y, Arc::new(move |d: &Device| dense_w.to_device(d))).unwrap();
        let got = joined.broadcast_add(&bias).unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
        let grads = got.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [x.as_tensor(), bias.as_tensor()] {
            let (a, b) = (grads.get(v).unwrap(), want_grads.get(v).unwrap());
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (a, b) in a.iter().zip(&b) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}
