//! Source text to syntax tree.

mod ascii_names;
pub mod ast;
mod parser;

pub use parser::parse;
