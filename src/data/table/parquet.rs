//! Parquet tables (the Hugging Face Hub's format), read with the `parquet` crate's record API:
//! only the columns asked for, one row group at a time.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use super::cells::{no_column, Cell, Flow, Place};
use crate::data::error::DataError;

/// Opens a Parquet file; a file that is not Parquet (or is cut short) is a clear error.
fn open(path: &Path) -> Result<SerializedFileReader<std::fs::File>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, &e))?;
    SerializedFileReader::new(file).map_err(|e| {
        DataError::file(
            path,
            format!("not a readable Parquet file (corrupt or truncated?): {e}"),
        )
    })
}

/// The names of a Parquet file's top-level columns.
pub fn column_names(path: &Path) -> Result<Vec<String>, DataError> {
    let reader = open(path)?;
    let root = reader.metadata().file_metadata().schema();
    Ok(root.get_fields().iter().map(|f| f.name().to_string()).collect())
}

/// Calls `row` with the cells of `columns` for each row (see [`super::rows::read_rows`]).
pub fn read_rows(
    path: &Path,
    columns: &[&str],
    row: &mut dyn FnMut(Place, Vec<Cell>) -> Result<Flow, DataError>,
) -> Result<(), DataError> {
    let reader = open(path)?;
    let root = reader.metadata().file_metadata().schema();
    let fields = root.get_fields();
    let have: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    for name in columns {
        if !have.contains(name) {
            return Err(no_column(path, Place::Row(1), name, &have));
        }
    }
    // Read only the columns asked for (in the file's order, as a projection must be).
    let wanted = fields.iter().filter(|f| columns.contains(&f.name())).cloned().collect();
    let projection = Type::group_type_builder(root.name())
        .with_fields(wanted)
        .build()
        .map_err(|e| DataError::file(path, format!("cannot select the columns: {e}")))?;
    let rows = reader
        .get_row_iter(Some(projection))
        .map_err(|e| DataError::file(path, format!("cannot read the rows: {e}")))?;
    for (i, read) in rows.enumerate() {
        let place = Place::Row(i + 1);
        let record = read.map_err(|e| place.error(path, format!("corrupt Parquet data: {e}")))?;
        let cells = columns
            .iter()
            .map(|name| {
                record
                    .get_column_iter()
                    .find(|(n, _)| n == name)
                    .map_or(Cell::Null, |(_, f)| cell(f))
            })
            .collect();
        if row(place, cells)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// A Parquet value as a cell.
fn cell(f: &Field) -> Cell {
    match f {
        Field::Null => Cell::Null,
        Field::Bool(b) => Cell::Bool(*b),
        Field::Byte(x) => Cell::Int(i64::from(*x)),
        Field::Short(x) => Cell::Int(i64::from(*x)),
        Field::Int(x) => Cell::Int(i64::from(*x)),
        Field::Long(x) => Cell::Int(*x),
        Field::UByte(x) => Cell::Int(i64::from(*x)),
        Field::UShort(x) => Cell::Int(i64::from(*x)),
        Field::UInt(x) => Cell::Int(i64::from(*x)),
        Field::ULong(x) => i64::try_from(*x).map_or(Cell::Other("64-bit unsigned integer over 2^63"), Cell::Int),
        Field::Float16(x) => Cell::Float(f64::from(*x)),
        Field::Float(x) => Cell::Float(f64::from(*x)),
        Field::Double(x) => Cell::Float(*x),
        Field::Str(s) => Cell::Text(s.clone()),
        Field::Bytes(b) => Cell::Bytes(b.data().to_vec()),
        Field::Group(g) => {
            let mut bytes = None;
            let mut path = None;
            let mut other = false;
            for (name, value) in g.get_column_iter() {
                match (name.as_str(), value) {
                    ("bytes", Field::Bytes(b)) => bytes = Some(b.data().to_vec()),
                    ("path", Field::Str(s)) => path = Some(s.clone()),
                    ("bytes" | "path", Field::Null) => {}
                    _ => other = true,
                }
            }
            if other || (bytes.is_none() && path.is_none()) {
                Cell::Other("struct")
            } else {
                Cell::Image { bytes, path }
            }
        }
        Field::ListInternal(_) => Cell::Other("list"),
        Field::MapInternal(_) => Cell::Other("map"),
        Field::Decimal(_) => Cell::Other("decimal"),
        _ => Cell::Other("date or time"),
    }
}
