//! Student initialisation from a teacher's weights (DistilBERT-style layer selection).
//!
//! The student copies the teacher's embeddings, pooler / final LayerNorm and (when the label
//! count matches) classifier, and takes a subset of the teacher's encoder layers. Both must
//! have the same width: when hidden or intermediate sizes differ there is nothing to copy,
//! and the error says so.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::ml::models::config::ModelConfig;
use crate::ml::models::model::Pretrained;
use crate::ml::models::params::ParamStore;

/// Evenly spaced teacher layers for a student of `student` layers, first and last included
/// (12 → 6 gives DistilBERT's `[0, 2, 4, 7, 9, 11]`; a 1-layer student takes layer 0).
pub fn every_k_layers(teacher: usize, student: usize) -> Vec<usize> {
    if student <= 1 || teacher <= 1 {
        return vec![0; student.min(1)];
    }
    (0..student)
        .map(|i| ((i * (teacher - 1)) as f64 / (student - 1) as f64).round() as usize)
        .collect()
}

fn widths(c: &ModelConfig) -> (&'static str, usize, usize, usize) {
    match c {
        ModelConfig::Bert(b) => ("bert", b.hidden_size, b.intermediate_size, b.num_hidden_layers),
        ModelConfig::Vit(v) => ("vit", v.hidden_size, v.intermediate_size, v.num_hidden_layers),
    }
}

/// The student's initial tensors, by name, taken from the teacher's: student layer `i` gets
/// teacher layer `layers[i]`. Tensors the student lacks here are initialised from the seed.
pub fn student_tensors(
    teacher_cfg: &ModelConfig,
    teacher: &HashMap<String, Tensor>,
    student_cfg: &ModelConfig,
    layers: &[usize],
) -> candle_core::Result<HashMap<String, Tensor>> {
    let (tf, th, ti, tl) = widths(teacher_cfg);
    let (sf, sh, si, sl) = widths(student_cfg);
    if tf != sf {
        return Err(candle_core::Error::msg(format!(
            "cannot initialise a {sf} student from a {tf} teacher"
        )));
    }
    if th != sh {
        return Err(candle_core::Error::msg(format!(
            "cannot initialise the student from the teacher's layers: hidden_size differs \
             (student {sh}, teacher {th}); use random initialisation, or a student as wide as the teacher"
        )));
    }
    if ti != si {
        return Err(candle_core::Error::msg(format!(
            "cannot initialise the student from the teacher's layers: intermediate_size differs \
             (student {si}, teacher {ti}); use random initialisation, or the teacher's intermediate_size"
        )));
    }
    if layers.len() != sl {
        return Err(candle_core::Error::msg(format!(
            "{} teacher layers chosen for a {sl}-layer student",
            layers.len()
        )));
    }
    if let Some(&bad) = layers.iter().find(|&&l| l >= tl) {
        return Err(candle_core::Error::msg(format!(
            "teacher layer {bad} does not exist (the teacher has {tl} layers)"
        )));
    }
    let layer_prefix = format!("{tf}.encoder.layer.");
    let mut out = HashMap::new();
    for (name, t) in teacher {
        if let Some(rest) = name.strip_prefix(&layer_prefix) {
            let (idx, tail) = rest
                .split_once('.')
                .ok_or_else(|| candle_core::Error::msg(format!("odd tensor name `{name}`")))?;
            let idx: usize = idx
                .parse()
                .map_err(|_| candle_core::Error::msg(format!("odd tensor name `{name}`")))?;
            for (s, _) in layers.iter().enumerate().filter(|(_, &l)| l == idx) {
                out.insert(format!("{layer_prefix}{s}.{tail}"), t.clone());
            }
        } else if name.starts_with("classifier.") {
            if teacher_cfg.num_labels() == student_cfg.num_labels() {
                out.insert(name.clone(), t.clone());
            }
        } else {
            out.insert(name.clone(), t.clone());
        }
    }
    Ok(out)
}

crate::keywords! {
    /// How a student's weights start (`init:`).
    pub enum StudentInit {
        /// From the seed, like any architecture.
        Random = "random",
        /// Every k-th teacher layer, its embeddings and head (see [`every_k_layers`]).
        TeacherLayers = "teacher_layers",
    }
}

/// Builds a student from `teacher` with the given layer selection (see [`every_k_layers`]).
pub fn init_student_from_teacher(
    teacher: &Pretrained,
    student_cfg: &ModelConfig,
    layers: &[usize],
    seed: u64,
    device: &Device,
) -> candle_core::Result<Pretrained> {
    let tensors: HashMap<String, Tensor> = teacher.params.tensors()?.into_iter().collect();
    let source = student_tensors(&teacher.model.config(), &tensors, student_cfg, layers)?;
    Pretrained::build(student_cfg, ParamStore::with_source(seed, source), DType::F32, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::testutil::*;

    #[test]
    fn every_k_matches_distilbert() {
        assert_eq!(every_k_layers(12, 6), vec![0, 2, 4, 7, 9, 11]);
        assert_eq!(every_k_layers(4, 2), vec![0, 3]);
        assert_eq!(every_k_layers(4, 4), vec![0, 1, 2, 3]);
        assert_eq!(every_k_layers(6, 1), vec![0]);
    }

    #[test]
    fn student_copies_selected_layers_and_rejects_other_widths() {
        let mut tcfg = tiny_bert(2);
        tcfg.num_hidden_layers = 4;
        let teacher = Pretrained::random(&ModelConfig::Bert(tcfg.clone()), 1, &Device::Cpu).unwrap();
        let mut scfg = tcfg.clone();
        scfg.num_hidden_layers = 2;
        let layers = every_k_layers(4, 2);
        let student =
            init_student_from_teacher(&teacher, &ModelConfig::Bert(scfg.clone()), &layers, 2, &Device::Cpu).unwrap();
        assert!(
            student.report.initialised.is_empty(),
            "{:?}",
            student.report.initialised
        );
        let t = teacher.params.tensors().unwrap();
        let s = student.params.tensors().unwrap();
        let v = |m: &std::collections::BTreeMap<String, Tensor>, k: &str| {
            m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let w = "attention.self.query.weight";
        assert_eq!(
            v(&s, &format!("bert.encoder.layer.1.{w}")),
            v(&t, &format!("bert.encoder.layer.3.{w}"))
        );
        assert_eq!(
            v(&s, &format!("bert.encoder.layer.0.{w}")),
            v(&t, &format!("bert.encoder.layer.0.{w}"))
        );
        let e = "bert.embeddings.word_embeddings.weight";
        assert_eq!(v(&s, e), v(&t, e));

        let mut narrow = scfg.clone();
        narrow.hidden_size = 8;
        let err = init_student_from_teacher(&teacher, &ModelConfig::Bert(narrow), &layers, 2, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("hidden_size differs (student 8, teacher 16)"), "{err}");
        let mut three = scfg;
        three.labels = crate::ml::models::config::Labels::default_names(3);
        let s3 = init_student_from_teacher(&teacher, &ModelConfig::Bert(three), &layers, 2, &Device::Cpu).unwrap();
        assert_eq!(s3.report.initialised, vec!["classifier.bias", "classifier.weight"]);
    }
}
