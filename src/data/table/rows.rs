//! Reading a table file row by row, whatever its format: the cells of the columns asked for.
//!
//! Files are streamed (a CSV or JSON Lines file line by line, a Parquet file row group by row
//! group, only the columns asked for), so a large table never sits in memory as text.

use std::io::BufRead;
use std::path::Path;

pub use super::cells::{column_positions, no_column, Cell, Flow, Place};
use super::parquet;
use crate::data::error::DataError;
use crate::registry::TableFormat as Format;

/// Calls `row` with the cells of `columns` (in that order) for each row of the file, in order,
/// until it returns [`Flow::Break`]. A missing column is an error naming the columns there are.
pub fn read_rows(
    path: &Path,
    format: Format,
    columns: &[&str],
    row: &mut dyn FnMut(Place, Vec<Cell>) -> Result<Flow, DataError>,
) -> Result<(), DataError> {
    match format {
        Format::Csv => read_delimited(path, b',', columns, row),
        Format::Tsv => read_delimited(path, b'\t', columns, row),
        Format::Jsonl => read_jsonl(path, columns, row),
        Format::Parquet => parquet::read_rows(path, columns, row),
    }
}

/// The names of a table file's columns: a CSV or TSV file's header, the fields of a JSON Lines
/// file's first object, a Parquet file's top-level columns.
pub fn column_names(path: &Path, format: Format) -> Result<Vec<String>, DataError> {
    match format {
        Format::Csv | Format::Tsv => {
            let delimiter = if matches!(format, Format::Tsv) { b'\t' } else { b',' };
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter)
                .from_path(path)
                .map_err(|e| csv_error(path, e))?;
            let headers = reader.headers().map_err(|e| csv_error(path, e))?;
            Ok(headers.iter().map(|h| h.trim().to_string()).collect())
        }
        Format::Jsonl => {
            let file = std::fs::File::open(path).map_err(|e| DataError::io(path, &e))?;
            for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|e| DataError::io(path, &e))?;
                let text = line.trim().trim_start_matches('\u{feff}');
                if text.is_empty() {
                    continue;
                }
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(text).map_err(|e| DataError::at(path, n + 1, json_line_error(text, &e)))?;
                return Ok(object.keys().cloned().collect());
            }
            Ok(Vec::new())
        }
        Format::Parquet => parquet::column_names(path),
    }
}

fn read_delimited(
    path: &Path,
    delimiter: u8,
    columns: &[&str],
    row: &mut dyn FnMut(Place, Vec<Cell>) -> Result<Flow, DataError>,
) -> Result<(), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    if headers.is_empty() {
        return Err(DataError::file(path, "empty file (no header row naming the columns)"));
    }
    let have: Vec<&str> = headers.iter().map(str::trim).collect();
    let index = column_positions(path, &have, columns)?;
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(|e| csv_error(path, e))? {
        let line = record.position().map_or(0, |p| p.line() as usize);
        let cells = index
            .iter()
            .map(|&i| Cell::Text(record.get(i).unwrap_or_default().to_string()))
            .collect();
        if row(Place::Line(line), cells)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// A CSV reader's error, with the file and line.
fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line() as usize);
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            let fields = if *len == 1 { "field" } else { "fields" };
            format!("a row with {len} {fields}, where the header has {expected_len}")
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

fn json_cell(v: &serde_json::Value) -> Cell {
    use serde_json::Value as J;
    match v {
        J::Null => Cell::Null,
        J::Bool(b) => Cell::Bool(*b),
        J::Number(x) => match x.as_i64() {
            Some(i) => Cell::Int(i),
            None => Cell::Float(x.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Cell::Text(s.clone()),
        J::Array(_) => Cell::Other("list"),
        // An image given by its file, as the Hub writes an image without embedded bytes.
        J::Object(o) => match o.get("path").and_then(J::as_str) {
            Some(p) if o.keys().all(|k| k == "path" || k == "bytes") => Cell::Image {
                bytes: None,
                path: Some(p.to_string()),
            },
            _ => Cell::Other("JSON object"),
        },
    }
}

/// Why a JSON Lines line is no object, in words: a JSON array (a `.json` file holding one list
/// of rows) and an object spread over several lines (pretty-printed JSON) say so.
fn json_line_error(line: &str, e: &serde_json::Error) -> String {
    const ONE_PER_LINE: &str = "JSON Lines holds one object per line, each whole on its line";
    if line.trim_start().starts_with('[') {
        return format!("not a JSON object but a JSON array: {ONE_PER_LINE}");
    }
    if e.is_eof() {
        return format!("not a JSON object: it does not end on this line: {ONE_PER_LINE}");
    }
    // serde's "at line 1 column N" counts within the line; the line is the file's.
    let why = e.to_string();
    let why = why.rsplit_once(" at line ").map_or(why.as_str(), |(w, _)| w);
    format!("not a JSON object: {why} (column {})", e.column())
}

fn read_jsonl(
    path: &Path,
    columns: &[&str],
    row: &mut dyn FnMut(Place, Vec<Cell>) -> Result<Flow, DataError>,
) -> Result<(), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, &e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        n += 1;
        let read = reader.read_line(&mut line).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => DataError::at(path, n, "not valid UTF-8 text"),
            _ => DataError::io(path, &e),
        })?;
        if read == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        // A byte order mark, as some Windows editors write, starts the first line.
        let text = if n == 1 {
            line.trim_start_matches('\u{feff}')
        } else {
            &line
        };
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| DataError::at(path, n, json_line_error(text, &e)))?;
        let cells = columns
            .iter()
            .map(|name| {
                object.get(*name).map(json_cell).ok_or_else(|| {
                    let have: Vec<&str> = object.keys().map(String::as_str).collect();
                    DataError::at(path, n, format!("no field `{name}`; the row has {}", have.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?;
        if row(Place::Line(n), cells)?.is_break() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_keep_their_types() {
        let cell = |s: &str| json_cell(&serde_json::from_str(s).unwrap());
        assert_eq!(cell("3"), Cell::Int(3));
        assert_eq!(cell("1.5"), Cell::Float(1.5));
        assert_eq!(cell("\"x\""), Cell::Text("x".into()));
        assert_eq!(cell("null"), Cell::Null);
        assert_eq!(
            cell(r#"{"path": "a.png", "bytes": null}"#),
            Cell::Image {
                bytes: None,
                path: Some("a.png".into())
            }
        );
        assert_eq!(cell(r#"{"x": 1}"#), Cell::Other("JSON object"));
        assert_eq!(cell("[1]").describe(), "a list");
        assert_eq!(Cell::Float(0.25).describe(), "a float (0.25)");
    }

    #[test]
    fn column_names_come_from_each_format() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("a.csv");
        std::fs::write(&csv, "id, text ,label\n1,x,0\n").unwrap();
        assert_eq!(column_names(&csv, Format::Csv).unwrap(), ["id", "text", "label"]);
        let tsv = tmp.path().join("a.tsv");
        std::fs::write(&tsv, "a\tb\n1\t2\n").unwrap();
        assert_eq!(column_names(&tsv, Format::Tsv).unwrap(), ["a", "b"]);
        let jsonl = tmp.path().join("a.jsonl");
        std::fs::write(&jsonl, "\n{\"x\": 1, \"y\": \"z\"}\n").unwrap();
        let mut names = column_names(&jsonl, Format::Jsonl).unwrap();
        names.sort();
        assert_eq!(names, ["x", "y"]);
    }

    #[test]
    fn reading_stops_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.csv");
        std::fs::write(&p, "a,b\n1,x\n2,y\n3,z\n").unwrap();
        let mut seen = Vec::new();
        read_rows(&p, Format::Csv, &["b"], &mut |place, cells| {
            seen.push((place, cells));
            Ok(if seen.len() == 2 {
                Flow::Break(())
            } else {
                Flow::Continue(())
            })
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (Place::Line(2), vec![Cell::Text("x".into())]),
                (Place::Line(3), vec![Cell::Text("y".into())])
            ]
        );
    }
}
