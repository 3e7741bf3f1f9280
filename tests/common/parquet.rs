//! Writes small Parquet files for the tests, laid out as the Hugging Face Hub writes them
//! (UTF-8 strings, int64 labels, images as an optional `{bytes, path}` struct).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// One column of a table.
pub enum Col {
    /// UTF-8 text.
    Str(&'static str, Vec<String>),
    /// 64-bit integers.
    Int(&'static str, Vec<i64>),
    /// Doubles.
    Float(&'static str, Vec<f64>),
    /// The Hub's image struct: encoded bytes and a file name.
    Image(&'static str, Vec<(Vec<u8>, String)>),
}

impl Col {
    fn len(&self) -> usize {
        match self {
            Col::Str(_, v) => v.len(),
            Col::Int(_, v) => v.len(),
            Col::Float(_, v) => v.len(),
            Col::Image(_, v) => v.len(),
        }
    }

    fn schema(&self) -> String {
        match self {
            Col::Str(n, _) => format!("OPTIONAL BYTE_ARRAY {n} (UTF8);"),
            Col::Int(n, _) => format!("OPTIONAL INT64 {n};"),
            Col::Float(n, _) => format!("OPTIONAL DOUBLE {n};"),
            Col::Image(n, _) => {
                format!("OPTIONAL group {n} {{ OPTIONAL BYTE_ARRAY bytes; OPTIONAL BYTE_ARRAY path (UTF8); }}")
            }
        }
    }
}

/// Writes `cols` (all of one length) to `path`, `per_group` rows to a row group, snappy pages.
pub fn write(path: &Path, cols: &[Col], per_group: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let n = cols[0].len();
    let fields: String = cols.iter().map(Col::schema).collect::<Vec<_>>().join(" ");
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {fields} }}")).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for start in (0..n).step_by(per_group.max(1)) {
        let end = (start + per_group).min(n);
        let rows = end - start;
        let mut group = writer.next_row_group().unwrap();
        // Leaf columns in schema order: an image struct has two (bytes, path), each defined at
        // level 2 (the struct and the field both present).
        for col in cols {
            let leaves: Vec<Vec<ByteArray>> = match col {
                Col::Image(_, v) => vec![
                    v[start..end].iter().map(|(b, _)| ByteArray::from(b.clone())).collect(),
                    v[start..end].iter().map(|(_, p)| ByteArray::from(p.as_str())).collect(),
                ],
                _ => Vec::new(),
            };
            let mut column = group.next_column().unwrap().unwrap();
            match col {
                Col::Str(_, v) => {
                    let values: Vec<ByteArray> = v[start..end].iter().map(|s| ByteArray::from(s.as_str())).collect();
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&values, Some(&vec![1; rows]), None)
                        .unwrap();
                }
                Col::Int(_, v) => {
                    column
                        .typed::<Int64Type>()
                        .write_batch(&v[start..end], Some(&vec![1; rows]), None)
                        .unwrap();
                }
                Col::Float(_, v) => {
                    column
                        .typed::<DoubleType>()
                        .write_batch(&v[start..end], Some(&vec![1; rows]), None)
                        .unwrap();
                }
                Col::Image(..) => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&leaves[0], Some(&vec![2; rows]), None)
                        .unwrap();
                    column.close().unwrap();
                    column = group.next_column().unwrap().unwrap();
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&leaves[1], Some(&vec![2; rows]), None)
                        .unwrap();
                }
            }
            column.close().unwrap();
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
}
