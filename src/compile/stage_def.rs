//! A stage as the compiler produced it: what the plan and the ops read.

use crate::registry::OpSchema;
use crate::source::Span;
use crate::value::{Params, StageId};
use std::collections::BTreeMap;

/// A stage as the compiler produced it.
#[derive(Clone, Debug)]
pub struct StageDef {
    /// Display name (`teacher`, `chain/step[1]`, `mini[t=2.0,a=0.5]`).
    pub name: String,
    /// Other names the same stage was given (identical stages are merged).
    pub aliases: Vec<String>,
    /// The op.
    pub op: &'static OpSchema,
    /// Checked arguments, defaults filled in.
    pub params: Params,
    /// Upstream stages, in order of first mention.
    pub inputs: Vec<StageId>,
    /// The op call.
    pub span: Span,
    /// Where each argument was written (for errors found later, such as missing files).
    pub arg_spans: BTreeMap<String, Span>,
    /// Hash of the stage's definition with paths instead of file contents: equal for identical stages.
    pub identity: [u8; 32],
}

impl StageDef {
    /// The name with the other names the same stage was given: `chain/step[2] (= tuned[t=4.0,a=0.5])`.
    pub fn shown(&self) -> String {
        if self.aliases.is_empty() {
            self.name.clone()
        } else {
            format!("{} (= {})", self.name, self.aliases.join(", "))
        }
    }
}
