//! `rkd graph`.

use crate::plan::graph::{render, Format};
use std::path::Path;
use std::process::ExitCode;

/// Prints the DAG.
pub fn run(file: &Path, format: Format) -> ExitCode {
    let Some(compiled) = super::compile_or_report(file) else {
        return ExitCode::FAILURE;
    };
    print!("{}", render(&compiled.stages, format));
    ExitCode::SUCCESS
}
