//! `rkd ops`: the reference, generated from the registry.

use crate::diagnostic::suggestion;
use crate::registry::{lookup, OpKind, OpSchema, REGISTRY};
use std::process::ExitCode;

/// Lists every entry, or documents one.
pub fn run(name: Option<&str>) -> ExitCode {
    match name {
        None => {
            print!("{}", overview());
            ExitCode::SUCCESS
        }
        Some(n) => match lookup(n) {
            Some(op) => {
                print!("{}", document(op));
                ExitCode::SUCCESS
            }
            None => {
                let help =
                    suggestion(n, REGISTRY.iter().map(|s| s.name)).unwrap_or_else(|| "`rkd ops` lists them all".into());
                crate::say!("error: no op, constructor or function named `{n}`\n  help: {help}");
                ExitCode::FAILURE
            }
        },
    }
}

fn group(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::Stage(_) => "Stage ops (each call is one cached stage)",
        OpKind::Model => "Models",
        OpKind::Dataset => "Datasets",
        OpKind::Function => "Functions",
    }
}

/// The list of all entries, grouped by kind.
pub fn overview() -> String {
    let mut out = String::new();
    let width = REGISTRY.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut last = "";
    for op in REGISTRY {
        let g = group(&op.kind);
        if g != last {
            if !last.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("{g}:\n"));
            last = g;
        }
        out.push_str(&format!("  {:width$}  {}\n", op.name, op.doc));
    }
    out.push_str("\n`rkd ops NAME` shows the parameters of one.\n");
    let runs: Vec<&str> = crate::ops::OPS.iter().map(|o| o.name).collect();
    out.push_str(&format!("Every stage op runs: {}.\n", runs.join(", ")));
    out
}

/// The full documentation of one entry.
pub fn document(op: &OpSchema) -> String {
    let mut out = String::new();
    let sig: Vec<String> = op.params.iter().map(|p| format!("{}:", p.name)).collect();
    out.push_str(&format!("{}({})\n\n{}\n\n", op.name, sig.join(", "), op.doc));
    match op.kind {
        OpKind::Stage(o) => out.push_str(&format!(
            "Creates a stage whose output is {}. Op version {}.\n\n",
            o.name(),
            op.version
        )),
        OpKind::Model => out.push_str(&format!(
            "Describes a model (version {}); pass it to train, distill, fuse.\n\n",
            op.version
        )),
        OpKind::Dataset => out.push_str(&format!(
            "Describes a dataset (version {}); pass it as `data:`.\n\n",
            op.version
        )),
        OpKind::Function => out.push_str("Evaluated while compiling.\n\n"),
    }
    let rows: Vec<[String; 5]> = op
        .params
        .iter()
        .map(|p| {
            [
                p.name.to_string(),
                p.ty.describe(),
                p.default.describe(),
                p.range.map(|r| r.describe()).unwrap_or_default(),
                p.doc.to_string(),
            ]
        })
        .collect();
    let header = ["PARAMETER", "TYPE", "DEFAULT", "RANGE", "DESCRIPTION"];
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 5]| {
        let mut l = String::from(" ");
        for i in 0..4 {
            l.push_str(&format!(" {:w$} ", cells[i], w = widths[i]));
        }
        l.push_str(&format!(" {}\n", cells[4]));
        l
    };
    out.push_str(&line(header));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_listed_and_documented() {
        let all = overview();
        for op in REGISTRY {
            assert!(all.contains(op.name), "{} missing from the overview", op.name);
            let doc = document(op);
            for p in op.params {
                assert!(
                    doc.contains(p.name) && doc.contains(p.doc),
                    "{}.{} undocumented",
                    op.name,
                    p.name
                );
            }
        }
    }
}
