//! The check `rkd check` and `rkd run` make of the tables a pipeline reads (`text_table`,
//! `image_table`, `glue` with a `path:`, an `hf_dataset` already in the Hugging Face cache) before
//! any stage starts: each table's split files are found, open as their
//! format, have the columns the call names, and their rows read — the first row of each file for
//! `rkd check`, every row for `rkd run` (of the tables that stages about to run read), whose
//! labels are then checked as loading checks them. A problem is
//! reported at the call's `path:` in the `.rkd` file, naming the file, row and column.

use std::collections::HashSet;

use crate::compile::StageDef;
use crate::diagnostic::{Diag, Kind};
use crate::source::Span;
use crate::value::{Spec, Value};

/// Whether any stage reads a table (so that [`check`] has something to do).
pub fn reads_tables<'a>(mut stages: impl Iterator<Item = &'a StageDef>) -> bool {
    stages.any(|s| {
        let mut any = false;
        s.params.values().for_each(|v| each_table(v, &mut |_| any = true));
        any
    })
}

/// The tables of these stages, each checked once (the first row of each file, or every row
/// with `all_rows`); their problems in source order.
pub fn check<'a>(stages: impl IntoIterator<Item = &'a StageDef>, all_rows: bool) -> Result<(), Vec<Diag>> {
    let mut seen = HashSet::new();
    let mut diags: Vec<Diag> = Vec::new();
    for stage in stages {
        for (param, value) in &stage.params {
            let at = stage.arg_spans.get(param).copied().unwrap_or(stage.span);
            each_table(value, &mut |spec| {
                let span = match spec.params.get("path") {
                    Some(Value::Path(p)) => p.span,
                    _ => at,
                };
                let id = format!("{}{:?}", spec.ctor.name, spec.params);
                if !seen.insert(id) {
                    return;
                }
                if let Err(e) = crate::data::Dataset::check(spec.ctor.name, &spec.params, all_rows) {
                    diags.push(diag(spec, span, e));
                }
            });
        }
    }
    if diags.is_empty() {
        return Ok(());
    }
    diags.sort_by_key(|d| d.span.map(|s: Span| (s.file, s.start)));
    Err(diags)
}

/// Calls `f` on every table dataset in a value.
fn each_table(v: &Value, f: &mut impl FnMut(&Spec)) {
    match v {
        Value::Spec(s) if matches!(s.ctor.name, "text_table" | "image_table" | "glue" | "hf_dataset") => f(s),
        Value::Spec(s) => s.params.values().for_each(|x| each_table(x, f)),
        Value::List(xs) => xs.iter().for_each(|x| each_table(x, f)),
        Value::Record(r) => r.values().for_each(|x| each_table(x, f)),
        _ => {}
    }
}

/// What to do about a table problem, by what the message says.
fn hint(message: &str) -> &'static str {
    const HINTS: [(&str, &str); 15] = [
        (
            "empty split",
            "every split file needs at least one row under its header",
        ),
        (
            "must be an integer or a string label",
            "the label column holds classes: integers (0, 1, ...) or names (\"positive\")",
        ),
        (
            "not a readable Parquet file",
            "the file may have been cut short (an interrupted download?): fetch or write it again",
        ),
        (
            "cannot decode the image",
            "an image must be a whole JPEG, PNG, BMP, GIF, TIFF or WebP file",
        ),
        (
            "where the header has",
            "quote fields that hold the delimiter, or fix the row",
        ),
        ("not valid UTF-8", "save the file as UTF-8 text"),
        (
            "more than one set of files",
            "move or rename the extra files, so that each split is read from one file or one set of shards",
        ),
        ("more than once", "give each column its own name in the header row"),
        ("empty file", "a table file starts with a header row naming its columns"),
        (
            "JSON Lines holds",
            "write the rows as JSON Lines: one object per line, as `df.to_json(orient=\"records\", lines=True)` does",
        ),
        (
            "which the training split does not have",
            "a classifier learns only the classes its training split has: add rows of that class to it, or correct the label",
        ),
        (
            "mix integers and strings",
            "write every label the same way: all integers (0, 1, ...) or all names",
        ),
        (
            "a classifier needs at least 2 classes",
            "the training split needs rows of at least two classes",
        ),
        (
            "looks like an ID or text column",
            "`label:` names the column that holds each row's class",
        ),
        (
            "no training split",
            "name the training file train.<ext> (or train-00000-of-00001.<ext>)",
        ),
    ];
    HINTS
        .iter()
        .find(|(says, _)| message.contains(says))
        .map_or("the table's split files are read from this directory", |(_, hint)| hint)
}

fn diag(spec: &Spec, span: Span, e: crate::data::DataError) -> Diag {
    let columns: Vec<String> = ["text", "text_pair", "image", "label"]
        .iter()
        .filter_map(|c| match spec.params.get(*c) {
            Some(Value::Str(s)) => Some(format!("{c}: \"{s}\"")),
            _ => None,
        })
        .collect();
    let help = if e.message.contains("no column `") || e.message.contains("no field `") {
        format!(
            "{}(...) reads the columns {}; name the ones the file has",
            spec.ctor.name,
            columns.join(", ")
        )
    } else {
        hint(&e.message).to_string()
    };
    // Name the files as the pipeline does: under the `path:` as written.
    let mut message = e.to_string();
    if let Some(Value::Path(p)) = spec.params.get("path") {
        message = message.replace(&p.resolved.display().to_string(), &p.written);
    }
    Diag::new(Kind::File, span, message)
        .label("the table this dataset reads")
        .help(help)
}
