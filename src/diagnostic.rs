//! Compiler diagnostics: collected while compiling, rendered with miette.

use crate::source::{Sources, Span};
use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};
use std::fmt;
use std::sync::Arc;

/// What went wrong; its name is the diagnostic code `rkd::<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The text does not parse.
    Syntax,
    /// A name that is not in scope.
    UnknownName,
    /// A call of a function or op that does not exist.
    UnknownOp,
    /// A keyword argument the op or function does not take.
    UnknownParam,
    /// `use` of a module that does not exist.
    UnknownModule,
    /// A value of the wrong type.
    Type,
    /// A required argument is missing.
    MissingArg,
    /// A value outside its allowed range.
    Range,
    /// A name declared twice in one scope.
    DuplicateName,
    /// A name that would hide one from an enclosing scope.
    Shadowing,
    /// Modules that import each other.
    ImportCycle,
    /// A name used before its declaration.
    UsedBeforeDeclared,
    /// A sweep over an empty list.
    EmptySweep,
    /// A positional argument where keywords are required.
    PositionalArg,
    /// `stage NAME = EXPR` where EXPR is not one stage.
    NotAStage,
    /// An index out of range, or indexing something that is not a list.
    Index,
    /// Functions calling themselves too deeply.
    Recursion,
    /// An input file or directory that cannot be read.
    File,
    /// Arguments that are individually fine but do not fit together.
    Invalid,
    /// Over one of the compiler's limits (stages, loop rounds, value or file size).
    Limit,
}

impl Kind {
    /// The code's name, as shown in `rkd::<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Syntax => "syntax",
            Kind::UnknownName => "unknown_name",
            Kind::UnknownOp => "unknown_op",
            Kind::UnknownParam => "unknown_param",
            Kind::UnknownModule => "unknown_module",
            Kind::Type => "type",
            Kind::MissingArg => "missing_arg",
            Kind::Range => "range",
            Kind::DuplicateName => "duplicate_name",
            Kind::Shadowing => "shadowing",
            Kind::ImportCycle => "import_cycle",
            Kind::UsedBeforeDeclared => "used_before_declared",
            Kind::EmptySweep => "empty_sweep",
            Kind::PositionalArg => "positional_arg",
            Kind::NotAStage => "not_a_stage",
            Kind::Index => "index",
            Kind::Recursion => "recursion",
            Kind::File => "file",
            Kind::Invalid => "invalid",
            Kind::Limit => "limit",
        }
    }
}

/// One problem found in the sources, with where it is and how to fix it.
#[derive(Clone, Debug)]
pub struct Diag {
    /// What kind of problem.
    pub kind: Kind,
    /// The one-line message.
    pub message: String,
    /// The main location and its label.
    pub span: Option<Span>,
    /// The label under the main location.
    pub label: String,
    /// Other locations worth showing.
    pub notes: Vec<(Span, String)>,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diag {
    /// A diagnostic at `span`.
    pub fn new(kind: Kind, span: Span, message: impl Into<String>) -> Diag {
        Diag {
            kind,
            message: message.into(),
            span: Some(span),
            label: "here".into(),
            notes: Vec::new(),
            help: None,
        }
    }

    /// A diagnostic with no location.
    pub fn global(kind: Kind, message: impl Into<String>) -> Diag {
        Diag {
            kind,
            message: message.into(),
            span: None,
            label: String::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    /// Sets the label under the main span.
    pub fn label(mut self, label: impl Into<String>) -> Diag {
        self.label = label.into();
        self
    }

    /// Adds a help line.
    pub fn help(mut self, help: impl Into<String>) -> Diag {
        self.help = Some(help.into());
        self
    }

    /// Adds a help line when there is one.
    pub fn maybe_help(mut self, help: Option<String>) -> Diag {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    /// Adds a secondary location.
    pub fn note(mut self, span: Span, label: impl Into<String>) -> Diag {
        self.notes.push((span, label.into()));
        self
    }

    /// Makes it renderable by attaching the source text it points into. Spans on (or beside)
    /// a line too long to quote are given as `file:line:column` in the message instead.
    /// Text from the user's file in the message, labels and help is shown with its control
    /// characters escaped ([`crate::text::printable`]): it cannot restyle the terminal.
    pub fn render(&self, sources: &Sources) -> Rendered {
        use crate::text::printable;
        let label = printable(&self.label);
        let notes: Vec<_> = self.notes.iter().map(|(span, l)| (*span, printable(l))).collect();
        let mut here: Vec<(Span, &str)> = Vec::new();
        let mut related = Vec::new();
        if let Some(span) = self.span {
            here.push((span, &label));
        }
        for (span, label) in &notes {
            if Some(span.file) == self.span.map(|s| s.file) {
                here.push((*span, label));
            } else {
                related.push(quoted(sources, format!("note: {label}"), &[(*span, label)]));
            }
        }
        let mut rendered = quoted(sources, printable(&self.message).into_owned(), &here);
        rendered.code = Some(format!("rkd::{}", self.kind.name()));
        rendered.help = self.help.as_deref().map(|h| printable(h).into_owned());
        rendered.related = related;
        rendered
    }
}

/// Longest line, in characters, that a diagnostic quotes. Beside a longer one, spans are given
/// as `file:line:column` instead: miette cannot draw a label past column 65,535, and such a
/// line would flood the terminal.
const MAX_QUOTED_LINE: usize = 1000;

/// `message` with its labelled spans (the first is the primary one): quoted from their source
/// file, or as locations in the message when a line around them is too long to quote.
fn quoted(sources: &Sources, message: String, spans: &[(Span, &str)]) -> Rendered {
    let mut rendered = Rendered {
        code: None,
        message,
        source: None,
        labels: Vec::new(),
        help: None,
        related: Vec::new(),
    };
    let Some(&(first, _)) = spans.first() else {
        return rendered;
    };
    let file = sources.get(first.file);
    // A file with control characters is quoted with them escaped, and the spans moved to match.
    let shown = crate::text::ShownSource::of(&file.text);
    let (text, at) = match shown {
        Some(shown) => (Arc::new(shown.text.clone()), Some(shown)),
        None => (file.text.clone(), None),
    };
    let moved = |span: Span| match &at {
        Some(at) => Span {
            start: at.at(span.start as usize) as u32,
            end: at.at(span.end as usize) as u32,
            ..span
        },
        None => span,
    };
    if quotable(&text, spans.iter().map(|(s, _)| moved(*s))) {
        rendered.source = Some(NamedSource::new(file.name.clone(), text.clone()));
        rendered.labels = spans
            .iter()
            .enumerate()
            .map(|(i, (span, label))| {
                let label = Some(label.to_string());
                let span = moved(*span).miette();
                match i {
                    0 => LabeledSpan::new_primary_with_span(label, span),
                    _ => LabeledSpan::new_with_span(label, span),
                }
            })
            .collect();
    } else {
        for (span, label) in spans {
            let (line, column) = sources.line_col(*span);
            rendered.message += &format!("\n{}:{line}:{column}: {label}", file.name);
        }
        rendered.message += &format!("\n(the line is too long to quote: over {MAX_QUOTED_LINE} characters)");
    }
    rendered
}

/// Whether the lines miette quotes for `spans` (theirs, and one line of context on each side)
/// are all at most [`MAX_QUOTED_LINE`] characters long.
fn quotable(text: &str, spans: impl Iterator<Item = Span> + Clone) -> bool {
    let (Some(start), Some(end)) = (
        spans.clone().map(|s| s.start as usize).min(),
        spans.map(|s| s.end as usize).max(),
    ) else {
        return true;
    };
    let line_start = |at: usize| text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = |at: usize| text[at..].find('\n').map_or(text.len(), |i| at + i);
    let first = line_start(line_start(start).saturating_sub(1));
    let last = line_end((line_end(end) + 1).min(text.len()));
    text[first..last]
        .split('\n')
        .all(|line| line.chars().count() <= MAX_QUOTED_LINE)
}

/// A diagnostic with its source attached, ready for miette's report handlers.
#[derive(Debug)]
pub struct Rendered {
    code: Option<String>,
    message: String,
    source: Option<NamedSource<Arc<String>>>,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
    related: Vec<Rendered>,
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code.as_ref().map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(self.related.iter().map(|r| r as &dyn Diagnostic)))
        }
    }
}

/// Renders diagnostics as text: colours only when `color` is set.
pub fn render_all(diags: &[Diag], sources: &Sources, color: bool) -> String {
    use miette::{GraphicalReportHandler, GraphicalTheme};
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    for d in diags {
        let rendered = d.render(sources);
        if handler.render_report(&mut out, &rendered).is_err() {
            out.push_str(&format!("error: {}\n", crate::text::printable(&d.message)));
        }
        out.push('\n');
    }
    out
}

/// Returns the closest candidate to `name`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(1))
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// "did you mean `x`?" for the closest candidate, if any.
pub fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    did_you_mean(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let ops = ["train", "distill", "fuse", "qlora", "prune"];
        assert_eq!(did_you_mean("distil", ops), Some("distill"));
        assert_eq!(did_you_mean("trian", ops), Some("train"));
        assert_eq!(did_you_mean("xyzzy", ops), None);
    }
}
