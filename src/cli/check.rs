//! `rkd check`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Checks each file; 0 when all are clean.
pub fn run(files: &[PathBuf]) -> ExitCode {
    let mut failed = 0;
    for file in files {
        match super::compile_or_report(file) {
            Some(c) => {
                if let Err(problems) = crate::engine::data_check::check(&c.stages, false) {
                    super::report(&problems, &c.sources, file);
                    failed += 1;
                    continue;
                }
                let n = c.stages.len();
                println!("ok: {} ({n} stage{})", file.display(), if n == 1 { "" } else { "s" });
            }
            None => failed += 1,
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
