//! The parameter store: every trainable variable of a model, by Hugging Face name.
//!
//! A [`ParamStore`] wraps a `candle_nn::VarMap` and is the backend of the `VarBuilder`
//! that models are built with. When a model asks for a variable it is taken, in order,
//! from the map (already created), from the source tensors (a checkpoint), or created from
//! the seeded initialiser. Each variable is drawn from its own random stream, derived from
//! the seed and the variable's name, so the same seed gives bit-identical weights whatever
//! the construction order, and adding a head never changes the encoder's initial weights.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::ml::kernels::rng::Rng;

/// Where each variable of a model came from, after building it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables copied from the source tensors.
    pub loaded: Vec<String>,
    /// Variables absent from the source and freshly initialised (e.g. a new classifier).
    pub initialised: Vec<String>,
    /// Source tensors that no variable used (e.g. a masked-LM head).
    pub unused: Vec<String>,
}

#[derive(Default)]
struct Source {
    tensors: HashMap<String, Tensor>,
    loaded: HashSet<String>,
    initialised: HashSet<String>,
}

/// Trainable variables by name: a `VarMap` plus a seeded initialiser and an optional source.
#[derive(Clone)]
pub struct ParamStore {
    varmap: VarMap,
    seed: u64,
    source: Arc<Mutex<Source>>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.varmap.data().lock().map(|d| d.len()).unwrap_or(0);
        f.debug_struct("ParamStore")
            .field("seed", &self.seed)
            .field("vars", &n)
            .finish()
    }
}

impl ParamStore {
    /// An empty store whose variables will be initialised from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            varmap: VarMap::new(),
            seed,
            source: Arc::new(Mutex::new(Source::default())),
        }
    }

    /// A store whose variables are taken from `tensors` where present (by exact name),
    /// and initialised from `seed` otherwise.
    pub fn with_source(seed: u64, tensors: HashMap<String, Tensor>) -> Self {
        let s = Self::new(seed);
        s.source.lock().expect("source lock").tensors = tensors;
        s
    }

    /// The seed of the initialiser.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A `VarBuilder` backed by this store (f32 unless `dtype` says otherwise).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// A `VarBuilder` over detached views of the current variables: a model built from it
    /// shares their storage (it sees every optimiser update) but records no autograd graph,
    /// for evaluation and for frozen teachers. Unknown names are an error.
    pub fn frozen_var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let map: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().detach()))
            .collect();
        VarBuilder::from_tensors(map, dtype, device)
    }

    /// The underlying `VarMap` (e.g. for `candle_nn::AdamW::new(varmap.all_vars(), ..)`).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// All variables, sorted by name (a deterministic order for optimisers and reports).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// All variables, sorted by name.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Detached copies of the current values, by name.
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        self.named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().detach().copy()?)))
            .collect()
    }

    /// Writes all variables to a safetensors file (deterministic bytes for equal values).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self.tensors()?.into_iter().collect();
        candle_core::safetensors::save(&map, path)
    }

    /// Where the variables came from; call after building the model.
    pub fn report(&self) -> LoadReport {
        let src = self.source.lock().expect("source lock");
        let mut loaded: Vec<String> = src.loaded.iter().cloned().collect();
        let mut initialised: Vec<String> = src.initialised.iter().cloned().collect();
        let mut unused: Vec<String> = src
            .tensors
            .keys()
            .filter(|k| !src.loaded.contains(*k))
            .cloned()
            .collect();
        loaded.sort();
        initialised.sort();
        unused.sort();
        LoadReport {
            loaded,
            initialised,
            unused,
        }
    }

    /// Drops the source tensors (frees a checkpoint's memory once the model is built).
    pub fn release_source(&self) {
        self.source.lock().expect("source lock").tensors.clear();
    }
}

/// Creates the initial value of variable `name` from its own random stream.
pub fn init_tensor(seed: u64, name: &str, shape: &Shape, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = Rng::for_stream(seed, name);
    let values = match init {
        Init::Const(c) => return Tensor::full(c as f32, shape, dev)?.to_dtype(dtype),
        Init::Randn { mean, stdev } => rng.normal_vec(n, mean, stdev),
        Init::Uniform { lo, up } => rng.uniform_vec(n, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape);
            let gain = non_linearity.gain();
            let std = gain / (fan.max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => rng.normal_vec(n, 0.0, std),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    rng.uniform_vec(n, -bound, bound)
                }
            }
        }
    };
    Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "variable `{name}` already exists with shape {:?}, asked for {s:?}",
                    var.shape()
                )
            }
            return Ok(var.as_tensor().clone());
        }
        let mut src = self.source.lock().expect("source lock");
        let value = match src.tensors.get(name) {
            Some(t) => {
                if t.shape() != &s {
                    candle_core::bail!(
                        "checkpoint tensor `{name}` has shape {:?} but the model (from its config) expects {s:?}",
                        t.shape()
                    )
                }
                let t = t.to_device(dev)?.to_dtype(dtype)?;
                src.loaded.insert(name.to_string());
                t
            }
            None => {
                src.initialised.insert(name.to_string());
                init_tensor(self.seed, name, &s, h, dtype, dev)?
            }
        };
        let var = Var::from_tensor(&value)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(var) = self.varmap.data().lock().expect("varmap lock").get(name) {
            return var.as_tensor().to_dtype(dtype)?.to_device(dev);
        }
        match self.source.lock().expect("source lock").tensors.get(name) {
            Some(t) => t.to_device(dev)?.to_dtype(dtype),
            None => candle_core::bail!("no tensor named `{name}` (unknown shape, cannot initialise it)"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().expect("varmap lock").contains_key(name)
            || self.source.lock().expect("source lock").tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_init_is_bit_identical_and_order_independent() {
        let dev = Device::Cpu;
        let build = |seed: u64, reverse: bool| {
            let store = ParamStore::new(seed);
            let vb = store.var_builder(DType::F32, &dev);
            let mut names = vec!["a.weight", "b.weight"];
            if reverse {
                names.reverse();
            }
            for n in names {
                vb.get_with_hints((4, 3), n, Init::Randn { mean: 0.0, stdev: 0.02 })
                    .unwrap();
            }
            vb.get_with_hints(3, "c.bias", Init::Const(0.5)).unwrap();
            store.tensors().unwrap()
        };
        let a = build(7, false);
        let b = build(7, true);
        let c = build(8, false);
        let vals = |m: &BTreeMap<String, Tensor>, k: &str| m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(vals(&a, "a.weight"), vals(&b, "a.weight"));
        assert_eq!(vals(&a, "b.weight"), vals(&b, "b.weight"));
        assert_ne!(vals(&a, "a.weight"), vals(&c, "a.weight"));
        assert_ne!(vals(&a, "a.weight"), vals(&a, "b.weight"));
        assert_eq!(vals(&a, "c.bias"), vec![0.5; 3]);
    }

    #[test]
    fn source_tensors_are_used_and_reported() {
        let dev = Device::Cpu;
        let mut src = HashMap::new();
        src.insert("x.weight".to_string(), Tensor::ones((2, 2), DType::F32, &dev).unwrap());
        src.insert("unused".to_string(), Tensor::ones(1, DType::F32, &dev).unwrap());
        let store = ParamStore::with_source(1, src);
        let vb = store.var_builder(DType::F32, &dev);
        let x = vb.get((2, 2), "x.weight").unwrap();
        assert_eq!(x.sum_all().unwrap().to_scalar::<f32>().unwrap(), 4.0);
        vb.get(2, "y.bias").unwrap();
        let err = vb.get((3, 2), "x.weight").unwrap_err().to_string();
        assert!(err.contains("x.weight"), "{err}");
        let r = store.report();
        assert_eq!(r.loaded, vec!["x.weight"]);
        assert_eq!(r.initialised, vec!["y.bias"]);
        assert_eq!(r.unused, vec!["unused"]);
        assert_eq!(store.num_parameters(), 6);
        // Loaded values are copies: training the var does not touch the source.
        let store2 = ParamStore::with_source(
            1,
            HashMap::from([("z".to_string(), Tensor::ones(2, DType::F32, &dev).unwrap())]),
        );
        let bad = store2
            .var_builder(DType::F32, &dev)
            .get(3, "z")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("checkpoint tensor `z` has shape"), "{bad}");
    }

    #[test]
    fn frozen_views_share_storage_without_gradients() {
        let dev = Device::Cpu;
        let store = ParamStore::new(3);
        let w = store
            .var_builder(DType::F32, &dev)
            .get_with_hints(3, "w", Init::Const(2.0))
            .unwrap();
        let frozen = store.frozen_var_builder(DType::F32, &dev).get(3, "w").unwrap();
        let grads = frozen.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w).is_none(), "a frozen view must not reach the variable");
        store.named_vars()[0]
            .1
            .set(&Tensor::new(&[5f32, 5., 5.], &dev).unwrap())
            .unwrap();
        assert_eq!(frozen.to_vec1::<f32>().unwrap(), vec![5.0; 3], "the view sees updates");
    }
}
