//! The check `rkd check` and `rkd run` make of the files a pipeline's datasets read (tables:
//! `text_table`, `image_table`, `glue_sst2`, `glue` with a `path:`, an `hf_dataset` already in the Hugging
//! Face cache; and `image_folder`) before any stage starts. A table's split files are found,
//! open as their format, have the columns the call names, and their rows read — the first row
//! of each file for `rkd check`, every row for `rkd run` (of the tables that stages about to run
//! read), whose labels are then checked as loading checks them. An image folder's splits are
//! listed and the first image of each decoded. A problem is reported at the call's `path:` in
//! the `.rkd` file, naming the file, row and column; files that are not read are warnings.

use std::collections::HashSet;

use crate::compile::StageDef;
use crate::diagnostic::{Diag, Kind};
use crate::source::Span;
use crate::value::{Spec, Value};

/// Whether any stage reads a table or an image folder (so that [`check`] has something to do).
pub fn reads_data_files<'a>(mut stages: impl Iterator<Item = &'a StageDef>) -> bool {
    stages.any(|s| {
        let mut any = false;
        s.params.values().for_each(|v| each_table(v, &mut |_| any = true));
        any
    })
}

/// The tables and image folders of these stages, each checked once (the first row of each
/// file, or every row with `all_rows`): their warnings, or their problems in source order.
pub fn check<'a>(stages: impl IntoIterator<Item = &'a StageDef>, all_rows: bool) -> Result<Vec<String>, Vec<Diag>> {
    let mut seen = HashSet::new();
    let mut diags: Vec<Diag> = Vec::new();
    let mut warnings = Vec::new();
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
                match crate::data::Dataset::check(spec.ctor.name, &spec.params, all_rows) {
                    Ok(found) => warnings.extend(found.iter().map(|w| as_written(spec, w))),
                    Err(e) => diags.push(diag(spec, span, e)),
                }
            });
        }
    }
    if diags.is_empty() {
        return Ok(warnings);
    }
    diags.sort_by_key(|d| d.span.map(|s: Span| (s.file, s.start)));
    Err(diags)
}

/// Calls `f` on every dataset in a value that reads a table or an image folder.
fn each_table(v: &Value, f: &mut impl FnMut(&Spec)) {
    match v {
        Value::Spec(s)
            if matches!(
                s.ctor.name,
                "text_table" | "image_table" | "glue_sst2" | "glue" | "hf_dataset" | "image_folder"
            ) =>
        {
            f(s)
        }
        Value::Spec(s) => s.params.values().for_each(|x| each_table(x, f)),
        Value::List(xs) => xs.iter().for_each(|x| each_table(x, f)),
        Value::Record(r) => r.values().for_each(|x| each_table(x, f)),
        _ => {}
    }
}

/// What to do about a problem, by what the message says, if it says something known.
fn hint(message: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 16] = [
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
            "is not among the training classes",
            "every class of validation/ and test/ needs its folder in train/ too, with images to learn from",
        ),
        (
            "no training split",
            "name the training file train.<ext> (or train-00000-of-00001.<ext>)",
        ),
    ];
    HINTS
        .iter()
        .find(|(says, _)| message.contains(says))
        .map(|(_, hint)| *hint)
}

fn diag(spec: &Spec, span: Span, e: crate::data::DataError) -> Diag {
    let columns: Vec<String> = ["text", "text_pair", "image", "label"]
        .iter()
        .filter_map(|c| match spec.params.get(*c) {
            Some(Value::Str(s)) => Some(format!("{c}: \"{s}\"")),
            _ => None,
        })
        .collect();
    let folder = spec.ctor.name == "image_folder";
    let help = if e.message.contains("no column `") || e.message.contains("no field `") {
        format!(
            "{}(...) reads the columns {}; name the ones the file has",
            spec.ctor.name,
            columns.join(", ")
        )
    } else {
        let otherwise = match folder {
            true => "image_folder reads <path>/train/<class>/<image> (one folder per class, at least 2), and validation/ (or val/, dev/) and test/ alike",
            false => "the table's split files are read from this directory",
        };
        hint(&e.message).unwrap_or(otherwise).to_string()
    };
    let what = match folder {
        true => "the image folder this dataset reads",
        false => "the table this dataset reads",
    };
    Diag::new(Kind::File, span, as_written(spec, &e.to_string()))
        .label(what)
        .help(help)
}

/// `message` naming the files as the pipeline does: under the dataset's `path:` as written.
fn as_written(spec: &Spec, message: &str) -> String {
    match spec.params.get("path") {
        Some(Value::Path(p)) => message.replace(&p.resolved.display().to_string(), &p.written),
        _ => message.to_string(),
    }
}
