//! Tables of labelled examples in the formats people keep them in: CSV, TSV, JSON Lines and
//! Parquet, one file (or several shards) per split, named by the split as the Hugging Face Hub
//! lays them out.
//!
//! A directory holds `train.*`, `validation.*` (or `dev.*`) and `test.*` — directly or in a
//! `data/` subfolder — each possibly sharded (`train-00000-of-00002.parquet`, shards read in name
//! order). The format comes from the extension (`.csv`, `.tsv`, `.jsonl`/`.json`, `.parquet`)
//! unless given. Labels may be integers or strings; the classes are the training split's distinct
//! labels in sorted order (numerically for integers), so the same table always gives the same
//! class ids.

pub mod cells;
pub mod id_labels;
pub mod parquet;
pub mod rows;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::error::DataError;
use super::SplitName;
use rows::{Cell, Flow};

/// How a table file is written (`format:`; declared with the constructor's arguments).
pub use crate::registry::TableFormat as Format;

impl Format {
    /// The format a file's extension says, if any.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            "jsonl" | "json" | "ndjson" => Some(Format::Jsonl),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The format of `path`: `given` (`format:`), else its extension's, else CSV.
    pub fn for_file(path: &Path, given: Option<Format>) -> Format {
        given.or_else(|| Format::of(path)).unwrap_or(Format::Csv)
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

impl Label {
    /// A label cell: an integer (a boolean counts as 0/1), or text (that reads as an integer
    /// when it is one, so the same rows as CSV and as JSON Lines give the same classes).
    pub fn from_cell(cell: Cell) -> Result<Label, String> {
        match cell {
            Cell::Int(i) => Ok(Label::Int(i)),
            Cell::Bool(b) => Ok(Label::Int(i64::from(b))),
            Cell::Text(s) => {
                let s = s.trim();
                if s.is_empty() {
                    return Err("empty label".to_string());
                }
                Ok(s.parse::<i64>().map_or_else(|_| Label::Str(s.to_string()), Label::Int))
            }
            Cell::Null => Err("empty label (null)".to_string()),
            other => Err(format!(
                "must be an integer or a string label, got {}",
                other.describe()
            )),
        }
    }
}

/// A text cell: text, or bytes that are UTF-8. Empty text is allowed; a null is not.
pub fn text_of(cell: Cell) -> Result<String, String> {
    match cell {
        Cell::Text(s) => Ok(s),
        Cell::Bytes(b) => String::from_utf8(b).map_err(|_| "not valid UTF-8 text".to_string()),
        other => Err(format!("must be text, got {}", other.describe())),
    }
}

/// One split of a table: its texts (and second texts of a pair) and labels, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableSplit {
    /// The text column.
    pub texts: Vec<String>,
    /// The second text of each example (`text_pair:`), else empty.
    pub pairs: Vec<String>,
    /// The label column.
    pub labels: Vec<Label>,
}

/// Which columns to read.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    /// The text column's name.
    pub text: &'a str,
    /// The second text column of sentence-pair input.
    pub pair: Option<&'a str>,
    /// The label column's name.
    pub label: &'a str,
}

impl Columns<'_> {
    fn names(&self) -> Vec<&str> {
        let mut v = vec![self.text, self.label];
        v.extend(self.pair);
        v
    }
}

/// The split a table file's name gives: its stem up to a shard suffix (`train` for `train.csv`
/// and for `train-00000-of-00002.parquet`); `None` for a file that is not a table format's.
pub fn split_stem(path: &Path) -> Option<&str> {
    Format::of(path)?;
    let stem = path.file_stem()?.to_str()?;
    Some(stem.split_once('-').map_or(stem, |(name, _)| name))
}

/// The table files (by extension) directly in `dir` and in its `data/`, in name order.
pub fn table_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = [dir.to_path_buf(), dir.join("data")]
        .iter()
        .filter_map(|folder| std::fs::read_dir(folder).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|path| path.is_file() && Format::of(path).is_some())
        .collect();
    found.sort();
    found
}

/// The files of each split in a table directory (shards in name order).
pub fn split_files(dir: &Path) -> Result<BTreeMap<SplitName, Vec<PathBuf>>, DataError> {
    DataError::unless_dir(
        dir,
        "a table is a directory with train.csv, validation.csv, test.csv — or .tsv, .jsonl, .parquet — or the same in data/",
    )?;
    let mut found: BTreeMap<SplitName, Vec<PathBuf>> = BTreeMap::new();
    for path in table_files(dir) {
        // The names `SplitName::parse` takes, as the stage key's file list does (see `reads`).
        let Some(split) = split_stem(&path).and_then(SplitName::parse) else {
            continue;
        };
        found.entry(split).or_default().push(path);
    }
    for (split, files) in &found {
        one_set_of_files(dir, *split, files)?;
    }
    if !found.contains_key(&SplitName::Train) {
        let names: Vec<String> = found.values().flatten().map(|p| p.display().to_string()).collect();
        return Err(DataError::file(
            dir,
            format!(
                "no training split: expected a file named train.csv, train.tsv, train.jsonl or train.parquet (or train-*-of-*) here or in data/{}",
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

/// Refuses a split of the table in `dir` whose files are not one set of shards: files in both
/// the folder and its `data/`, of two formats, or under two names (`validation.csv` and
/// `dev.csv`) would each be read, and the split silently hold its rows twice.
fn one_set_of_files(dir: &Path, split: SplitName, files: &[PathBuf]) -> Result<(), DataError> {
    let set = |p: &PathBuf| {
        (
            p.parent().map(Path::to_path_buf),
            Format::of(p),
            split_stem(p).map(str::to_string),
        )
    };
    let Some(first) = files.first() else {
        return Ok(());
    };
    if files.iter().all(|p| set(p) == set(first)) {
        return Ok(());
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    Err(DataError::file(
        dir,
        format!(
            "the {split} split is in more than one set of files ({}), each of which would be read: keep one (shards of one split share its name, format and folder, as train-00000-of-00002.csv and train-00001-of-00002.csv)",
            names.join(", ")
        ),
    ))
}

/// One row of a text table.
#[derive(Debug, Clone, PartialEq)]
pub struct TextRow {
    /// The text.
    pub text: String,
    /// The second text of a sentence pair (`text_pair:`).
    pub pair: Option<String>,
    /// The label.
    pub label: Label,
}

/// Calls `f` with every row of a split's files, in order, as they are read (`format` overrides
/// the extensions); a cell that is not text, or a label that is neither an integer nor a string,
/// is an error naming the file, row and column.
pub fn for_each_row(
    files: &[PathBuf],
    format: Option<Format>,
    columns: Columns,
    f: &mut dyn FnMut(TextRow) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let names = columns.names();
    for path in files {
        let format = Format::for_file(path, format);
        rows::read_rows(path, format, &names, &mut |place, cells| {
            let mut cells = cells.into_iter();
            let mut next = |column: &str| (cells.next().unwrap_or(Cell::Null), column.to_string());
            let bad = |column: &str, e: String| place.error(path, format!("column `{column}`: {e}"));
            let (text, c) = next(columns.text);
            let text = text_of(text).map_err(|e| bad(&c, e))?;
            let (label, c) = next(columns.label);
            let label = Label::from_cell(label).map_err(|e| bad(&c, e))?;
            let pair = match columns.pair {
                Some(p) => {
                    let (cell, c) = next(p);
                    Some(text_of(cell).map_err(|e| bad(&c, e))?)
                }
                None => None,
            };
            f(TextRow { text, pair, label })?;
            Ok(Flow::Continue(()))
        })?;
    }
    Ok(())
}

/// The error for a split whose files hold no rows.
pub fn empty_split(files: &[PathBuf]) -> DataError {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    DataError::new(format!("{}: empty split (no rows)", names.join(", ")))
}

/// A check of a row's cells: `Err((column index, why))` for a bad one; given the table file
/// (an image path is relative to it).
pub type RowCheck<'a> = &'a dyn Fn(&Path, Vec<Cell>) -> Result<(), (usize, String)>;

/// Checks a split without loading it: its files open, have the columns, and their rows pass
/// `row` — the first row of each file, or every row when `all_rows`. What `rkd check` (first
/// rows) and `rkd run` (every row, before any stage starts) do.
pub fn check_split(
    files: &[PathBuf],
    format: Option<Format>,
    columns: &[&str],
    all_rows: bool,
    row: RowCheck,
) -> Result<(), DataError> {
    let mut any = false;
    for path in files {
        let format = Format::for_file(path, format);
        rows::read_rows(path, format, columns, &mut |place, cells| {
            any = true;
            row(path, cells).map_err(|(i, e)| place.error(path, format!("column `{}`: {e}", columns[i])))?;
            Ok(if all_rows { Flow::Continue(()) } else { Flow::Break(()) })
        })?;
    }
    if !any {
        return Err(empty_split(files));
    }
    Ok(())
}

/// The classes of a table: the training split's distinct labels, sorted (integers numerically,
/// strings by bytes); a table must not mix the two.
pub fn classes(train: &[Label], where_: &Path) -> Result<Vec<Label>, DataError> {
    let set: BTreeSet<&Label> = train.iter().collect();
    let ints = set.iter().filter(|l| matches!(l, Label::Int(_))).count();
    if ints > 0 && ints < set.len() {
        return Err(DataError::file(
            where_,
            "the training labels mix integers and strings: use one or the other",
        ));
    }
    if set.len() < 2 {
        let only = set.first().map_or("none".to_string(), |l| shown(l));
        return Err(DataError::file(
            where_,
            format!("every training row has the label {only}: a classifier needs at least 2 classes"),
        ));
    }
    Ok(set.into_iter().cloned().collect())
}

/// A split's labels as class ids; a label the training split does not have is an error.
pub fn label_ids(labels: &[Label], classes: &[Label], name: SplitName, where_: &Path) -> Result<Vec<u32>, DataError> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            classes.binary_search(l).map(|id| id as u32).map_err(|_| {
                DataError::file(
                    where_,
                    format!(
                        "row {} of the {name} split has the label {}, which the training split does not have",
                        i + 1,
                        shown(l)
                    ),
                )
            })
        })
        .collect()
}

/// A table's classes and every split's labels as class ids.
pub struct ClassIds {
    /// The training split's distinct labels, sorted: class `i` is `classes[i]`.
    pub classes: Vec<Label>,
    /// Each split's labels as class ids, in row order.
    pub ids: BTreeMap<SplitName, Vec<u32>>,
}

/// Every split's labels as a classifier needs them: the classes are the training split's
/// distinct labels ([`classes`]), its label column (`column`) must not look like an ID column
/// ([`id_labels::check`]; `used` are the call's other columns), and every other split's labels
/// must be among them ([`label_ids`]).
pub fn class_ids(
    labels: &BTreeMap<SplitName, Vec<Label>>,
    files: &BTreeMap<SplitName, Vec<PathBuf>>,
    column: &str,
    format: Option<Format>,
    used: &[&str],
) -> Result<ClassIds, DataError> {
    let train_files = &files[&SplitName::Train];
    let train = labels.get(&SplitName::Train).map_or(&[][..], Vec::as_slice);
    let classes = classes(train, &train_files[0])?;
    id_labels::check(column, classes.len(), train.len(), train_files, format, used)?;
    let ids = labels
        .iter()
        .map(|(name, l)| Ok((*name, label_ids(l, &classes, *name, &files[name][0])?)))
        .collect::<Result<_, DataError>>()?;
    Ok(ClassIds { classes, ids })
}

/// A label as an error message shows it: an integer as it is, a name quoted.
fn shown(l: &Label) -> String {
    match l {
        Label::Int(i) => i.to_string(),
        Label::Str(s) => format!("{s:?}"),
    }
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

    /// One split read into memory (the loaders stream instead).
    fn read_split(files: &[PathBuf], format: Option<Format>, columns: Columns) -> Result<TableSplit, DataError> {
        let mut split = TableSplit::default();
        for_each_row(files, format, columns, &mut |row| {
            split.texts.push(row.text);
            split.pairs.extend(row.pair);
            split.labels.push(row.label);
            Ok(())
        })?;
        if split.texts.is_empty() {
            return Err(empty_split(files));
        }
        Ok(split)
    }

    const COLS: Columns = Columns {
        text: "sentence",
        pair: None,
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
        let val = tempfile::tempdir().unwrap();
        write(val.path(), "train.csv", "x");
        write(val.path(), "val.csv", "x");
        assert_eq!(split_files(val.path()).unwrap()[&SplitName::Validation].len(), 1);
        let empty = tempfile::tempdir().unwrap();
        write(empty.path(), "valid.csv", "x");
        let e = split_files(empty.path()).unwrap_err().to_string();
        assert!(e.contains("no training split") && e.contains("valid.csv"), "{e}");
    }

    #[test]
    fn a_split_in_two_sets_of_files_is_refused_not_read_twice() {
        for (a, b) in [
            ("train.csv", "train.jsonl"),
            ("train.csv", "data/train.csv"),
            ("dev.csv", "validation.csv"),
            ("train-00000-of-00001.csv", "data/train-00000-of-00001.csv"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            write(tmp.path(), "train.csv", "x");
            write(tmp.path(), a, "x");
            write(tmp.path(), b, "x");
            let e = split_files(tmp.path()).unwrap_err().to_string();
            assert!(
                e.contains("split is in more than one set of files") && e.contains(a) && e.contains(b),
                "{a} {b}: {e}"
            );
        }
        let shards = tempfile::tempdir().unwrap();
        write(shards.path(), "data/train-00000-of-00002.csv", "x");
        write(shards.path(), "data/train-00001-of-00002.csv", "x");
        write(shards.path(), "test.csv", "x");
        assert_eq!(split_files(shards.path()).unwrap()[&SplitName::Train].len(), 2);
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
        // A byte order mark before the first line is no part of the data, in CSV or JSON Lines.
        let bom = |name: &str, p: &PathBuf| {
            write(
                tmp.path(),
                name,
                &format!("\u{feff}{}", std::fs::read_to_string(p).unwrap()),
            )
        };
        assert_eq!(read(&bom("b.csv", &csv)), a);
        assert_eq!(read(&bom("b.jsonl", &jsonl)), a);
        let classes = classes(&a.labels, tmp.path()).unwrap();
        assert_eq!(classes, [Label::Str("neg".into()), Label::Str("pos".into())]);
        assert_eq!(
            label_ids(&a.labels, &classes, SplitName::Train, tmp.path()).unwrap(),
            [1, 0]
        );
    }

    #[test]
    fn integer_labels_sort_numerically() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "t.csv", "sentence,label\na,10\nb,2\nc,10\n");
        let s = read_split(&[p], None, COLS).unwrap();
        let c = classes(&s.labels, tmp.path()).unwrap();
        assert_eq!(c, [Label::Int(2), Label::Int(10)]);
        assert_eq!(
            label_ids(&s.labels, &c, SplitName::Train, tmp.path()).unwrap(),
            [1, 0, 1]
        );
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
            e.contains("b.csv:3") && e.contains("a row with 1 field, where the header has 2"),
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
        let e = err("h.csv", "");
        assert!(e.contains("h.csv: empty file (no header row"), "{e}");
        let e = err("i.csv", "sentence,label,sentence\nx,1,y\n");
        assert!(
            e.contains("i.csv:1") && e.contains("names the column `sentence` more than once"),
            "{e}"
        );
        let e = err("j.json", "[{\"sentence\": \"x\", \"label\": 1}]\n");
        assert!(e.contains("j.json:1: not a JSON object but a JSON array"), "{e}");
        let e = err("k.jsonl", "{\n  \"sentence\": \"x\",\n  \"label\": 1\n}\n");
        assert!(
            e.contains("k.jsonl:1") && e.contains("does not end on this line"),
            "{e}"
        );
        let e = err("l.jsonl", "{\"sentence\": \"x\", \"label\": 1}\n{\"sentence\": x}\n");
        assert!(
            e.contains("l.jsonl:2: not a JSON object: expected value (column 14)"),
            "{e}"
        );
        let mixed = TableSplit {
            texts: vec!["a".into(), "b".into()],
            labels: vec![Label::Int(1), Label::Str("x".into())],
            ..Default::default()
        };
        assert!(classes(&mixed.labels, tmp.path())
            .unwrap_err()
            .to_string()
            .contains("mix"));
        let one = TableSplit {
            texts: vec!["a".into()],
            labels: vec![Label::Int(1)],
            ..Default::default()
        };
        let c = classes(&[Label::Int(0), Label::Int(1)], tmp.path()).unwrap();
        let unseen = TableSplit {
            texts: vec!["a".into()],
            labels: vec![Label::Int(7)],
            ..Default::default()
        };
        let e = label_ids(&unseen.labels, &c, SplitName::Validation, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1 of the validation split has the label 7,"), "{e}");
        assert!(classes(&one.labels, tmp.path())
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
    }
}
