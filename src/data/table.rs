//! Tables of labelled text in the formats people keep them in: CSV, TSV and JSON Lines, one file
//! (or several shards) per split, named by the split as the Hugging Face Hub lays them out.
//!
//! A directory holds `train.*`, `validation.*` (or `dev.*`) and `test.*` — directly or in a
//! `data/` subfolder — each possibly sharded (`train-00000-of-00002.csv`, shards read in name
//! order). The format comes from the extension (`.csv`, `.tsv`, `.jsonl`/`.json`) unless given.
//! Labels may be integers or strings; the classes are the training split's distinct labels in
//! sorted order (numerically for integers), so the same table always gives the same class ids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::error::DataError;
use super::SplitName;

/// How a table file is written (`format:`; declared with the constructor's arguments).
pub use crate::registry::TableFormat as Format;

impl Format {
    /// The format a file's extension says, if any.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            "jsonl" | "json" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// A label as a table writes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Label {
    /// An integer class (`0`, `1`, ...).
    Int(i64),
    /// A named class (`"positive"`).
    Str(String),
}

/// One split of a table: its texts and labels, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableSplit {
    /// The text column.
    pub texts: Vec<String>,
    /// The label column.
    pub labels: Vec<Label>,
}

/// Which columns to read.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    /// The text column's name.
    pub text: &'a str,
    /// The label column's name.
    pub label: &'a str,
}

/// The files of each split in a table directory (shards in name order).
pub fn split_files(dir: &Path) -> Result<BTreeMap<SplitName, Vec<PathBuf>>, DataError> {
    if !dir.is_dir() {
        let why = if dir.exists() {
            "not a directory"
        } else {
            "missing directory"
        };
        return Err(DataError::file(
            dir,
            format!(
                "{why} (text_table expects a directory with train.csv, validation.csv, test.csv, or the same in data/)"
            ),
        ));
    }
    let mut found: BTreeMap<SplitName, Vec<PathBuf>> = BTreeMap::new();
    for folder in [dir.to_path_buf(), dir.join("data")] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_file() || Format::of(&path).is_none() {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            // `train`, or a shard `train-00000-of-00002`.
            let name = stem.split_once('-').map_or(stem, |(n, _)| n);
            let split = match name {
                "train" => SplitName::Train,
                "validation" | "dev" | "valid" => SplitName::Validation,
                "test" => SplitName::Test,
                _ => continue,
            };
            found.entry(split).or_default().push(path);
        }
    }
    for files in found.values_mut() {
        files.sort();
    }
    if !found.contains_key(&SplitName::Train) {
        let names: Vec<String> = found.values().flatten().map(|p| p.display().to_string()).collect();
        return Err(DataError::file(
            dir,
            format!(
                "no training split: expected a file named train.csv, train.tsv or train.jsonl (or train-*-of-*) here or in data/{}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!("; found {}", names.join(", "))
                }
            ),
        ));
    }
    Ok(found)
}

/// Reads one split from its files (`format` overrides the extensions).
pub fn read_split(files: &[PathBuf], format: Option<Format>, columns: Columns) -> Result<TableSplit, DataError> {
    let mut split = TableSplit::default();
    for path in files {
        let format = format.or_else(|| Format::of(path)).unwrap_or(Format::Csv);
        match format {
            Format::Csv => read_delimited(path, b',', columns, &mut split)?,
            Format::Tsv => read_delimited(path, b'\t', columns, &mut split)?,
            Format::Jsonl => read_jsonl(path, columns, &mut split)?,
        }
    }
    if split.texts.is_empty() {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        return Err(DataError::new(format!("{}: empty split (no rows)", names.join(", "))));
    }
    Ok(split)
}

/// A label cell of a CSV/TSV file: an integer, or else a string.
fn cell_label(cell: &str) -> Option<Label> {
    let cell = cell.trim();
    if cell.is_empty() {
        return None;
    }
    Some(match cell.parse::<i64>() {
        Ok(i) => Label::Int(i),
        Err(_) => Label::Str(cell.to_string()),
    })
}

fn read_delimited(path: &Path, delimiter: u8, columns: Columns, out: &mut TableSplit) -> Result<(), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let index = |name: &str| -> Result<usize, DataError> {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
            let have: Vec<&str> = headers.iter().collect();
            DataError::at(
                path,
                1,
                format!("no column `{name}`; the columns are {}", have.join(", ")),
            )
        })
    };
    let (text, label) = (index(columns.text)?, index(columns.label)?);
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let text = record.get(text).unwrap_or_default();
        let label = cell_label(record.get(label).unwrap_or_default())
            .ok_or_else(|| DataError::at(path, line, format!("column `{}`: empty label", columns.label)))?;
        out.texts.push(text.to_string());
        out.labels.push(label);
    }
    Ok(())
}

/// A CSV reader's error, with the file and line.
fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line() as usize);
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("a row with {len} fields, where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8 text".to_string(),
        csv::ErrorKind::Io(io) => return DataError::io(path, io),
        _ => e.to_string(),
    };
    match line {
        Some(l) => DataError::at(path, l, message),
        None => DataError::file(path, message),
    }
}

fn read_jsonl(path: &Path, columns: Columns, out: &mut TableSplit) -> Result<(), DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => DataError::file(path, "not valid UTF-8 text"),
        _ => DataError::io(path, &e),
    })?;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| DataError::at(path, n, format!("not a JSON object: {e}")))?;
        let field = |name: &str| {
            row.get(name).ok_or_else(|| {
                let have: Vec<&str> = row.keys().map(String::as_str).collect();
                DataError::at(path, n, format!("no field `{name}`; the row has {}", have.join(", ")))
            })
        };
        let text = match field(columns.text)? {
            serde_json::Value::String(s) => s.clone(),
            other => {
                return Err(DataError::at(
                    path,
                    n,
                    format!("field `{}` must be a string, got {other}", columns.text),
                ))
            }
        };
        let label = match field(columns.label)? {
            serde_json::Value::Number(x) if x.as_i64().is_some() => Label::Int(x.as_i64().unwrap_or_default()),
            serde_json::Value::String(s) if !s.is_empty() => Label::Str(s.clone()),
            other => {
                return Err(DataError::at(
                    path,
                    n,
                    format!(
                        "field `{}` must be an integer or a string label, got {other}",
                        columns.label
                    ),
                ))
            }
        };
        out.texts.push(text);
        out.labels.push(label);
    }
    Ok(())
}

/// The classes of a table: the training split's distinct labels, sorted (integers numerically,
/// strings by bytes); a table must not mix the two.
pub fn classes(train: &TableSplit, where_: &Path) -> Result<Vec<Label>, DataError> {
    let set: BTreeSet<&Label> = train.labels.iter().collect();
    let ints = set.iter().filter(|l| matches!(l, Label::Int(_))).count();
    if ints > 0 && ints < set.len() {
        return Err(DataError::file(
            where_,
            "the training labels mix integers and strings: use one or the other",
        ));
    }
    if set.len() < 2 {
        return Err(DataError::file(
            where_,
            format!(
                "the training split has {} distinct label(s): a classifier needs at least 2",
                set.len()
            ),
        ));
    }
    Ok(set.into_iter().cloned().collect())
}

/// A split's labels as class ids; a label the training split does not have is an error.
pub fn label_ids(split: &TableSplit, classes: &[Label], name: SplitName, where_: &Path) -> Result<Vec<u32>, DataError> {
    split
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            classes.binary_search(l).map(|id| id as u32).map_err(|_| {
                DataError::file(
                    where_,
                    format!(
                        "row {} of the {name} split has label {} that the training split does not have",
                        i + 1,
                        label_name(l)
                    ),
                )
            })
        })
        .collect()
}

/// A class's name (config.json's `id2label`).
pub fn label_name(l: &Label) -> String {
    match l {
        Label::Int(i) => i.to_string(),
        Label::Str(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: Columns = Columns {
        text: "sentence",
        label: "label",
    };

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn splits_are_found_by_name_in_the_folder_or_data_and_shards_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "data/train-00001-of-00002.csv", "x");
        write(tmp.path(), "data/train-00000-of-00002.csv", "x");
        write(tmp.path(), "dev.tsv", "x");
        write(tmp.path(), "test.jsonl", "x");
        write(tmp.path(), "README.md", "x");
        let found = split_files(tmp.path()).unwrap();
        let names = |s: SplitName| -> Vec<String> {
            found[&s]
                .iter()
                .map(|p| p.strip_prefix(tmp.path()).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(
            names(SplitName::Train),
            ["data/train-00000-of-00002.csv", "data/train-00001-of-00002.csv"]
        );
        assert_eq!(names(SplitName::Validation), ["dev.tsv"]);
        assert_eq!(names(SplitName::Test), ["test.jsonl"]);
        let empty = tempfile::tempdir().unwrap();
        write(empty.path(), "valid.csv", "x");
        let e = split_files(empty.path()).unwrap_err().to_string();
        assert!(e.contains("no training split") && e.contains("valid.csv"), "{e}");
    }

    #[test]
    fn csv_tsv_and_json_lines_give_the_same_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = write(
            tmp.path(),
            "a.csv",
            "id,sentence,label\n1,\"a, quoted \"\"line\"\"\",pos\n2,plain,neg\n",
        );
        let tsv = write(
            tmp.path(),
            "a.tsv",
            "sentence\tlabel\na, quoted \"line\"\tpos\nplain\tneg\n",
        );
        let jsonl = write(
            tmp.path(),
            "a.jsonl",
            "{\"sentence\": \"a, quoted \\\"line\\\"\", \"label\": \"pos\"}\n\n{\"label\": \"neg\", \"sentence\": \"plain\"}\n",
        );
        let read = |p: &PathBuf| read_split(std::slice::from_ref(p), None, COLS).unwrap();
        let a = read(&csv);
        assert_eq!(a.texts, ["a, quoted \"line\"", "plain"]);
        assert_eq!(a.labels, [Label::Str("pos".into()), Label::Str("neg".into())]);
        assert_eq!(read(&tsv), a);
        assert_eq!(read(&jsonl), a);
        let classes = classes(&a, tmp.path()).unwrap();
        assert_eq!(classes, [Label::Str("neg".into()), Label::Str("pos".into())]);
        assert_eq!(label_ids(&a, &classes, SplitName::Train, tmp.path()).unwrap(), [1, 0]);
    }

    #[test]
    fn integer_labels_sort_numerically() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "t.csv", "sentence,label\na,10\nb,2\nc,10\n");
        let s = read_split(&[p], None, COLS).unwrap();
        let c = classes(&s, tmp.path()).unwrap();
        assert_eq!(c, [Label::Int(2), Label::Int(10)]);
        assert_eq!(label_ids(&s, &c, SplitName::Train, tmp.path()).unwrap(), [1, 0, 1]);
        assert_eq!(c.iter().map(label_name).collect::<Vec<_>>(), ["2", "10"]);
    }

    #[test]
    fn bad_tables_name_the_file_the_row_and_what_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let err = |name: &str, text: &str| {
            let p = write(tmp.path(), name, text);
            read_split(&[p], None, COLS).unwrap_err().to_string()
        };
        let e = err("a.csv", "text,label\nx,1\n");
        assert!(
            e.contains("a.csv:1") && e.contains("no column `sentence`; the columns are text, label"),
            "{e}"
        );
        let e = err("b.csv", "sentence,label\nx,1\ny\n");
        assert!(
            e.contains("b.csv:3") && e.contains("a row with 1 fields, where the header has 2"),
            "{e}"
        );
        let e = err("c.csv", "sentence,label\n");
        assert!(e.contains("empty split"), "{e}");
        let e = err("d.jsonl", "{\"sentence\": \"x\", \"label\": 1.5}\n");
        assert!(
            e.contains("d.jsonl:1") && e.contains("must be an integer or a string label"),
            "{e}"
        );
        let e = err("e.jsonl", "{\"text\": \"x\", \"label\": 1}\n");
        assert!(e.contains("no field `sentence`; the row has label, text"), "{e}");
        let e = err("f.jsonl", "[1, 2]\n");
        assert!(e.contains("f.jsonl:1") && e.contains("not a JSON object"), "{e}");
        let e = err("g.csv", "sentence,label\nx,\n");
        assert!(e.contains("g.csv:2") && e.contains("empty label"), "{e}");
        let mixed = TableSplit {
            texts: vec!["a".into(), "b".into()],
            labels: vec![Label::Int(1), Label::Str("x".into())],
        };
        assert!(classes(&mixed, tmp.path()).unwrap_err().to_string().contains("mix"));
        let one = TableSplit {
            texts: vec!["a".into()],
            labels: vec![Label::Int(1)],
        };
        let c = classes(
            &TableSplit {
                texts: vec!["a".into(), "b".into()],
                labels: vec![Label::Int(0), Label::Int(1)],
            },
            tmp.path(),
        )
        .unwrap();
        let unseen = TableSplit {
            texts: vec!["a".into()],
            labels: vec![Label::Int(7)],
        };
        let e = label_ids(&unseen, &c, SplitName::Validation, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1 of the validation split has label 7"), "{e}");
        assert!(classes(&one, tmp.path())
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
    }
}
