//! Creating stages from op calls: naming, upstream links, and merging identical stages.

use super::stage_def::StageDef;
use super::Compiler;
use crate::registry::OpSchema;
use crate::source::Span;
use crate::store::key::{self, Resolve};
use crate::value::{Params, PathValue, StageId};
use std::collections::BTreeMap;

/// Identity hashing: upstream stages by identity, paths by their resolved location.
struct Identity<'a>(&'a [StageDef]);

impl Resolve for Identity<'_> {
    type Error = std::convert::Infallible;
    fn stage(&mut self, id: StageId) -> Result<[u8; 32], Self::Error> {
        Ok(self.0[id.0 as usize].identity)
    }
    fn path(&mut self, path: &PathValue, _: Option<crate::data::reads::Reads>) -> Result<[u8; 32], Self::Error> {
        Ok(*blake3::hash(
            crate::value::normalize_path(&path.resolved)
                .to_string_lossy()
                .as_bytes(),
        )
        .as_bytes())
    }
}

impl Compiler {
    /// Creates the stage for a checked op call, or returns the existing identical one.
    pub(super) fn create_stage(
        &mut self,
        op: &'static OpSchema,
        params: Params,
        arg_spans: BTreeMap<String, Span>,
        span: Span,
        bind: Option<&str>,
    ) -> StageId {
        let Ok(identity) = key::stage_key(op, &params, &mut Identity(&self.stages));
        if let Some(id) = self.dedup.get(&identity) {
            return *id;
        }
        let mut inputs = Vec::new();
        for v in params.values() {
            v.for_each_stage(&mut |id| {
                if !inputs.contains(&id) {
                    inputs.push(id)
                }
            });
        }
        let name = match bind {
            Some(n) => self.qualify(n),
            None => self.fresh(op.name),
        };
        let name = self.unique(name);
        let id = StageId(self.stages.len() as u32);
        self.stages.push(StageDef {
            name,
            aliases: Vec::new(),
            op,
            params,
            inputs,
            span,
            arg_spans,
            identity,
        });
        self.dedup.insert(identity, id);
        id
    }

    /// Gives a stage created by the current `stage NAME = ...` its declared name.
    pub(super) fn rename_stage(&mut self, id: StageId, name: String) {
        let old = std::mem::take(&mut self.stages[id.0 as usize].name);
        self.names.remove(&old);
        let name = self.unique(name);
        self.stages[id.0 as usize].name = name;
    }

    /// Records another name for an existing stage.
    pub(super) fn alias_stage(&mut self, id: StageId, name: String) {
        let stage = &self.stages[id.0 as usize];
        if stage.name != name && !stage.aliases.contains(&name) {
            self.stages[id.0 as usize].aliases.push(name);
        }
    }

    /// `name`, or `name~2`, `name~3`, ... if it is taken.
    fn unique(&mut self, name: String) -> String {
        let mut candidate = name.clone();
        let mut n = 1;
        while self.names.contains(&candidate) {
            n += 1;
            candidate = format!("{name}~{n}");
        }
        self.names.insert(candidate.clone());
        candidate
    }
}
