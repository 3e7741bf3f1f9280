//! The teacher predictions behind `distill` and `fuse`: one `predict` stage per (teacher,
//! dataset), shared by every student of that teacher.
//!
//! A distillation stage whose teachers are only needed for their logits on the training split
//! reads them from `predict` stages that the compiler adds. Identical stages merge, so a sweep
//! of twenty students over one teacher runs the teacher's forward passes once, and a change to
//! a student's settings never reruns them. Stages that need more of the teacher than its
//! logits — intermediate-layer losses, or augmented data (the teacher must see the same
//! augmented inputs) — run the teacher themselves and get no `predict` stage.

use super::Compiler;
use crate::registry::PREDICT;
use crate::source::Span;
use crate::value::{Params, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The parameter that carries the `predict` stages (one per teacher, in the teachers' order).
pub const PREDICTIONS: &str = "predictions";

/// Whether a distillation stage with these parameters learns from stored predictions.
pub fn uses_predictions(params: &Params) -> bool {
    let augments = match params.get("data") {
        Some(Value::Spec(s)) => crate::data::spec_augments(s.ctor.name, &s.params),
        _ => false,
    };
    !params.contains_key("intermediate") && !augments
}

impl Compiler {
    /// Adds the `predictions` parameter to a checked `distill` or `fuse` call when its teachers
    /// are needed only for their logits, creating (or reusing) their `predict` stages.
    pub(super) fn add_predictions(
        &mut self,
        op: &str,
        mut params: Params,
        spans: &BTreeMap<String, Span>,
        span: Span,
    ) -> Params {
        if !uses_predictions(&params) {
            return params;
        }
        let (teachers, teacher_span) = match (op, params.get("teacher"), params.get("teachers")) {
            ("distill", Some(t), _) => (vec![t.clone()], spans.get("teacher")),
            ("fuse", _, Some(Value::List(ts))) => (ts.to_vec(), spans.get("teachers")),
            _ => return params,
        };
        let Some(data) = params.get("data").cloned() else {
            return params;
        };
        let call = teacher_span.copied().unwrap_or(span);
        let mut arg_spans = BTreeMap::new();
        arg_spans.insert("model".to_string(), call);
        if let Some(s) = spans.get("data") {
            arg_spans.insert("data".to_string(), *s);
        }
        let mut stages = Vec::with_capacity(teachers.len());
        for teacher in teachers {
            let mut p = Params::new();
            p.insert("model".into(), teacher.clone());
            p.insert("data".into(), data.clone());
            for param in PREDICT.params {
                if !p.contains_key(param.name) {
                    if let Some(v) = Value::from_default(&param.default) {
                        p.insert(param.name.to_string(), v);
                    }
                }
            }
            let before = self.stages.len();
            let id = self.create_stage(&PREDICT, p, arg_spans.clone(), call, None);
            if id.0 as usize == before {
                let name = match &teacher {
                    Value::Stage(t) => format!("{}/predictions", self.stages[t.0 as usize].name),
                    _ => self.fresh("predictions"),
                };
                self.rename_stage(id, name);
            }
            stages.push(Value::Stage(id));
        }
        params.insert(PREDICTIONS.into(), Value::List(Arc::new(stages)));
        params
    }
}

#[cfg(test)]
mod tests {
    fn predict_stages(data: &str) -> usize {
        let m = if data.contains("image") { "v" } else { "m" };
        let src = format!(
            "let d = {data}\nlet m = bert(layers: 1, hidden: 16, heads: 2, intermediate: 32)\n\
             let v = vit(layers: 1, hidden: 16, heads: 2, patch: 4, image_size: 16)\n\
             stage t = train(model: pretrained(path: \"x\"), data: d)\n\
             stage s = distill(teacher: t, student: {m}, data: d)\n\
             stage u = distill(teacher: t, student: {m}, data: d, temperature: 2.0)\n"
        );
        let c = crate::compile::compile_source("p.rkd", std::path::Path::new("p.rkd"), src);
        assert!(c.diags.is_empty(), "{:?}", c.diags);
        c.stages.iter().filter(|s| s.op.name == "predict").count()
    }

    #[test]
    fn students_share_stored_predictions_unless_the_data_augments() {
        assert_eq!(predict_stages("synthetic_text(seed: 1)"), 1);
        assert_eq!(
            predict_stages("image_folder(path: \"imgs\", image_size: 16, augment: false)"),
            1
        );
        assert_eq!(predict_stages("image_folder(path: \"imgs\", image_size: 16)"), 0);
        assert_eq!(
            predict_stages("synthetic_images(seed: 1, classes: 2, image_size: 16)"),
            0
        );
    }
}
