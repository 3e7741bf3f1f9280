//! A label column that is really an ID or text column: when more than half of the training rows
//! have a label of their own, the call almost certainly names the wrong column (`label: "id"`),
//! and training would learn nothing while every validation label is one the training split
//! lacks. It is refused before anything is trained, naming a column that looks like the label.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::rows::{self, Cell, Flow};
use super::{Format, Label};
use crate::data::error::DataError;

/// Fewer training rows than this are too few to tell an ID column from a small table with many
/// classes: they are never refused.
pub const MIN_ROWS: usize = 20;

/// Whether `classes` distinct labels over `rows` training rows look like IDs: at least
/// [`MIN_ROWS`] rows, and more classes than half the rows (most classes have one example).
pub fn looks_like_ids(classes: usize, rows: usize) -> bool {
    rows >= MIN_ROWS && classes * 2 > rows
}

/// Refuses the label column `column` of the training split (`files`, `rows` rows with `classes`
/// distinct labels) when its labels look like IDs; the error names the columns of the training
/// file that look like a label (few distinct values, each shared by many rows), if there are any.
/// `used` are the call's other columns (text, image), never suggested.
pub fn check(
    column: &str,
    classes: usize,
    rows: usize,
    files: &[PathBuf],
    format: Option<Format>,
    used: &[&str],
) -> Result<(), DataError> {
    if !looks_like_ids(classes, rows) {
        return Ok(());
    }
    let first = files.first().map(PathBuf::as_path).unwrap_or(Path::new("."));
    let what = if classes == rows {
        format!("every one of the {rows} training rows has a label of its own")
    } else {
        format!("{classes} distinct labels in {rows} training rows")
    };
    let found = candidates(files, format, column, used, rows).unwrap_or_default();
    let hint = match found.as_slice() {
        [] => {
            "name the column that holds each row's class: a few distinct values, each shared by many rows".to_string()
        }
        [(name, n)] => {
            format!("the column `{name}` has {n} distinct values: if it holds the classes, write `label: \"{name}\"`")
        }
        [(name, _), ..] => {
            let listed: Vec<String> = found
                .iter()
                .map(|(c, n)| format!("`{c}` ({n} distinct values)"))
                .collect();
            format!(
                "the columns that could hold the classes are {}: write the one that does, e.g. `label: \"{name}\"`",
                listed.join(", ")
            )
        }
    };
    Err(DataError::file(
        first,
        format!("the label column `{column}` looks like an ID or text column, not classes ({what}); {hint}"),
    ))
}

/// Columns [`candidates`] names, at most.
const SUGGESTED: usize = 3;

/// The training file's columns that look like a label, at most [`SUGGESTED`] of them: not
/// `column` or one of `used`, every cell a label, at least 2 distinct values but not so many that
/// they look like IDs too; columns named like a label (`label`, `class`, `target`, `category`)
/// first, then in the file's order; `None` when the files cannot be read again.
fn candidates(
    files: &[PathBuf],
    format: Option<Format>,
    column: &str,
    used: &[&str],
    rows: usize,
) -> Option<Vec<(String, usize)>> {
    let first = files.first()?;
    let names: Vec<String> = rows::column_names(first, Format::for_file(first, format))
        .ok()?
        .into_iter()
        .filter(|n| n != column && !used.contains(&n.as_str()))
        .collect();
    if names.is_empty() {
        return Some(Vec::new());
    }
    let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    // `None` once a column has a cell that is no label, or too many values to be classes.
    let mut seen: Vec<Option<BTreeSet<Label>>> = vec![Some(BTreeSet::new()); names.len()];
    for path in files {
        let read = rows::read_rows(path, Format::for_file(path, format), &wanted, &mut |_, cells| {
            for (set, cell) in seen.iter_mut().zip(cells) {
                let Some(values) = set else { continue };
                match label_of(cell) {
                    Some(l) => {
                        values.insert(l);
                        if looks_like_ids(values.len(), rows) {
                            *set = None;
                        }
                    }
                    None => *set = None,
                }
            }
            Ok(if seen.iter().all(Option::is_none) {
                Flow::Break(())
            } else {
                Flow::Continue(())
            })
        });
        read.ok()?;
    }
    let named = |n: &str| {
        let n = n.to_ascii_lowercase();
        ["label", "class", "target", "category"].iter().any(|w| n.contains(w))
    };
    let mut found: Vec<(String, usize)> = names
        .into_iter()
        .zip(seen)
        .filter_map(|(name, set)| Some((name, set?.len())))
        .filter(|(_, n)| *n >= 2)
        .collect();
    // Stable: the file's order among equals.
    found.sort_by_key(|(name, _)| !named(name));
    found.truncate(SUGGESTED);
    Some(found)
}

/// A cell as a label, if it is one (an integer, or short text: a sentence is no class name).
fn label_of(cell: Cell) -> Option<Label> {
    match cell {
        Cell::Text(t) if t.chars().count() > 64 => None,
        c => Label::from_cell(c).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A CSV of `n` rows: id, review text, sentiment (3 values), source (2 values).
    fn reviews(n: usize) -> String {
        let mut s = String::from("id,review,sentiment,source\n");
        for i in 0..n {
            s.push_str(&format!(
                "{i},text number {i},{},{}\n",
                ["neg", "neu", "pos"][i % 3],
                i % 2
            ));
        }
        s
    }

    #[test]
    fn only_labels_that_are_mostly_unique_over_enough_rows_look_like_ids() {
        assert!(!looks_like_ids(19, 19), "too few rows to tell");
        assert!(looks_like_ids(20, 20));
        assert!(looks_like_ids(11, 20));
        assert!(
            !looks_like_ids(10, 20),
            "two examples per class is a (small) classification task"
        );
        assert!(!looks_like_ids(3, 1000));
    }

    #[test]
    fn an_id_column_is_refused_naming_the_column_that_looks_like_the_label() {
        let tmp = tempfile::tempdir().unwrap();
        let files = [write(tmp.path(), "train.csv", &reviews(30))];
        let f = &files[0];
        let e = check("id", 30, 30, &files, None, &["review"]).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(f.as_path()));
        assert_eq!(
            e.message,
            "the label column `id` looks like an ID or text column, not classes (every one of the 30 training rows has a label of its own); \
             the columns that could hold the classes are `sentiment` (3 distinct values), `source` (2 distinct values): \
             write the one that does, e.g. `label: \"sentiment\"`"
        );
        // A column named like a label comes first.
        let named = write(tmp.path(), "named.csv", &reviews(30).replace("source", "class_name"));
        let e = check("id", 30, 30, &[named], None, &["review"]).unwrap_err();
        assert!(
            e.message
                .contains("are `class_name` (2 distinct values), `sentiment` (3"),
            "{e}"
        );
        // One candidate: named alone.
        let e = check("id", 30, 30, &files, None, &["review", "source"]).unwrap_err();
        assert!(
            e.message.ends_with(
                "the column `sentiment` has 3 distinct values: if it holds the classes, write `label: \"sentiment\"`"
            ),
            "{e}"
        );
        // Fewer labels than rows, but more than half.
        let e = check("id", 16, 30, &files, None, &["review"]).unwrap_err();
        assert!(e.message.contains("(16 distinct labels in 30 training rows)"), "{e}");
        // The text column is no label either, and no other column looks like one.
        let only = write(tmp.path(), "only.csv", "id,review\n1,a\n");
        let e = check("review", 30, 30, &[only], None, &["id"]).unwrap_err();
        assert!(
            e.message.ends_with(
                "name the column that holds each row's class: a few distinct values, each shared by many rows"
            ),
            "{e}"
        );
        // A real label column passes without reading anything.
        check(
            "sentiment",
            3,
            30,
            &[PathBuf::from("/nonexistent/train.csv")],
            None,
            &["review"],
        )
        .unwrap();
    }
}
