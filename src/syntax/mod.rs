//! Source text to syntax tree.

pub mod ast;
mod parser;

pub use parser::parse;
