//! Rendering the DAG as Graphviz dot or Mermaid.

use crate::compile::StageDef;

/// Graph output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Graphviz (`dot -Tsvg`).
    Dot,
    /// Mermaid flowchart (renders in GitHub Markdown).
    Mermaid,
}

/// The DAG of compiled stages in the given format (no keys needed, so no input files either).
pub fn render(stages: &[StageDef], format: Format) -> String {
    let edges = || {
        stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.inputs.iter().map(move |up| (up.0 as usize, i)))
    };
    let mut out = String::new();
    match format {
        Format::Dot => {
            out.push_str("digraph rkd {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
            for (i, s) in stages.iter().enumerate() {
                out.push_str(&format!(
                    "  n{i} [label=\"{}\\n{}\"];\n",
                    escape_dot(&s.name),
                    s.op.name
                ));
            }
            for (a, b) in edges() {
                out.push_str(&format!("  n{a} -> n{b};\n"));
            }
            out.push_str("}\n");
        }
        Format::Mermaid => {
            out.push_str("flowchart LR\n");
            for (i, s) in stages.iter().enumerate() {
                out.push_str(&format!(
                    "  n{i}[\"{}<br/><i>{}</i>\"]\n",
                    escape_mermaid(&s.name),
                    s.op.name
                ));
            }
            for (a, b) in edges() {
                out.push_str(&format!("  n{a} --> n{b}\n"));
            }
        }
    }
    out
}

/// A stage name as a dot label: on one line (control characters escaped, as in tables), quotes
/// and backslashes escaped.
fn escape_dot(s: &str) -> String {
    crate::text::cell(s).replace('\\', "\\\\").replace('"', "\\\"")
}

/// A stage name as a Mermaid label: on one line, and the characters Mermaid or its HTML labels
/// would read (quotes, brackets, `<`, `>`, `&`) as entity codes.
fn escape_mermaid(s: &str) -> String {
    crate::text::cell(s)
        .replace('&', "#38;")
        .replace('"', "#quot;")
        .replace('[', "#91;")
        .replace(']', "#93;")
        .replace('<', "#60;")
        .replace('>', "#62;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_one_line_labels_that_cannot_break_out() {
        assert_eq!(escape_dot("a\"b\nc\\"), "a\\\"b\\\\nc\\\\");
        assert_eq!(escape_mermaid("x[<b>&\"]\n"), "x#91;#60;b#62;#38;#quot;#93;\\n");
    }
}
