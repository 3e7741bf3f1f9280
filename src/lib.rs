//! rkd: a declarative experiment language and workflow engine for compressing transformer models.

pub mod cli;
pub mod compile;
pub mod data;
pub mod diagnostic;
pub mod engine;
pub mod keyword;
pub mod lockfile;
pub mod ml;
pub mod ops;
pub mod plan;
pub mod process;
pub mod registry;
pub mod remote;
pub mod report;
pub mod say;
pub mod source;
pub mod store;
pub mod syntax;
pub mod text;
pub mod value;
