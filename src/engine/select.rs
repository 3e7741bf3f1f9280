//! `--only`: the stages a run or a pull takes (those named, and what they need).

use crate::plan::{Plan, PlanStage};
use crate::value::StageId;
use std::collections::HashMap;

/// Splits `--only` values at the commas outside brackets: `a,tuned[t=2.0,a=0.5]` is two names.
pub fn split_names(values: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for value in values {
        let (mut depth, mut start) = (0usize, 0);
        for (i, c) in value.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    out.push(value[start..i].trim().to_string());
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(value[start..].trim().to_string());
    }
    out.retain(|n| !n.is_empty());
    out
}

/// `--only` names no stage.
#[derive(Debug, thiserror::Error)]
pub enum NoSuchStage {
    /// A name that is no stage's.
    #[error("--only: there is no stage `{name}`{hint}; `rkd plan` lists the stages")]
    Unknown {
        /// The name given.
        name: String,
        /// " (did you mean ...)", or empty.
        hint: String,
    },
    /// Only empty names (`--only ""`, `--only ,`), which would select nothing.
    #[error(
        "--only: no stage name given, so nothing would run; name a stage (`rkd plan` lists them) or leave out --only"
    )]
    Empty,
}

/// A stage's name and aliases.
fn names(s: &PlanStage) -> impl Iterator<Item = &String> {
    std::iter::once(&s.def.name).chain(&s.def.aliases)
}

/// Whether `name` is a member of the list or call named `list`: a sweep point or list item
/// (`tuned[t=2.0,a=0.5]`, `xs[0]`) or a stage a function call made (`chain/step[1]`).
fn member_of(name: &str, list: &str) -> bool {
    name.strip_prefix(list)
        .is_some_and(|rest| rest.starts_with('/') || (rest.starts_with('[') && rest.ends_with(']')))
}

/// The stages of the sweep, list or call named `name` (`tuned`, `chain`), in plan order.
fn members(plan: &Plan, name: &str) -> Vec<usize> {
    plan.stages()
        .enumerate()
        .filter(|(_, s)| names(s).any(|m| member_of(m, name)))
        .map(|(i, _)| i)
        .collect()
}

/// "did you mean `x`?" with the stage, sweep or call name closest to `name`, if one is close.
fn closest(plan: &Plan, name: &str) -> Option<String> {
    let all: Vec<&str> = plan
        .stages()
        .flat_map(|s| {
            let n = s.def.name.as_str();
            let list = crate::text::sweep_point(n)
                .map(|(base, _)| base)
                .or(n.split_once('/').map(|p| p.0));
            std::iter::once(n).chain(list)
        })
        .collect();
    crate::diagnostic::suggestion(name, all.iter().copied())
}

/// For a command that takes one stage (`explain`, `export`): why `name`, which names none, is
/// not one — the error line and a hint (the stages of a sweep or call by that name, or the
/// closest name).
pub fn not_one_stage(plan: &Plan, file: &std::path::Path, name: &str) -> String {
    let members = members(plan, name);
    if members.is_empty() {
        let hint = closest(plan, name).unwrap_or_else(|| "`rkd plan` lists the stages".into());
        return format!("{} has no stage `{name}`\n  help: {hint}", file.display());
    }
    let shown: Vec<String> = members
        .iter()
        .take(5)
        .map(|&i| crate::text::cell(&plan.stage(StageId(i as u32)).def.name))
        .collect();
    let more = members.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    // The name to copy is whole (the list's may be cut at the table width).
    let first = crate::text::shell_quoted(&plan.stage(StageId(members[0] as u32)).def.name);
    format!(
        "`{name}` is {} stages, not one: {}{more}\n  help: name one of them (quoted for the shell: {first})",
        members.len(),
        shown.join(", "),
    )
}

/// The selection of `only` (names as given on the command line, see [`split_names`]): each
/// named stage and what it needs; a sweep's or call's name selects all its stages. Every stage
/// when `only` is empty.
pub fn select(plan: &Plan, only: &[String]) -> Result<Vec<bool>, NoSuchStage> {
    let n = plan.len();
    if only.is_empty() {
        return Ok(vec![true; n]);
    }
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, s) in plan.stages().enumerate() {
        for name in names(s) {
            by_name.entry(name.as_str()).or_insert(i);
        }
    }
    let names_given = split_names(only);
    if names_given.is_empty() {
        return Err(NoSuchStage::Empty);
    }
    let mut selected = vec![false; n];
    let mut stack = Vec::new();
    for name in names_given {
        if let Some(&i) = by_name.get(name.as_str()) {
            stack.push(i);
            continue;
        }
        let members = members(plan, &name);
        if members.is_empty() {
            let hint = closest(plan, &name).map(|s| format!(" ({s})")).unwrap_or_default();
            return Err(NoSuchStage::Unknown { name, hint });
        }
        stack.extend(members);
    }
    while let Some(i) = stack.pop() {
        if !selected[i] {
            selected[i] = true;
            stack.extend(plan.stage(StageId(i as u32)).def.inputs.iter().map(|id| id.0 as usize));
        }
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(xs: &[&str]) -> Vec<String> {
        split_names(&xs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn commas_inside_brackets_do_not_split() {
        assert_eq!(split(&["a,tuned[t=2.0,a=0.5]", "b"]), ["a", "tuned[t=2.0,a=0.5]", "b"]);
        assert_eq!(split(&["x[0],y, z", ""]), ["x[0]", "y", "z"]);
    }

    #[test]
    fn members_are_points_items_and_the_stages_a_call_made() {
        assert!(member_of("tuned[t=2.0,a=0.5]", "tuned"));
        assert!(member_of("chain/step[1]", "chain"));
        assert!(!member_of("tuned2", "tuned"));
        assert!(!member_of("tuned", "tuned"));
    }
}
