//! The `rkd` command line.

mod bench;
mod check;
mod graph;
mod ops;
mod plan;

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

const ABOUT: &str = "A declarative experiment language and workflow engine for compressing transformer models.";

const LONG_ABOUT: &str = "\
A declarative experiment language and workflow engine for compressing transformer models.

You describe an experiment in a .rkd file - teacher, students, distillation strategy, QLoRA,
pruning, report - and rkd compiles it into a DAG of content-hashed stages. Each stage's key is a
hash of its op, its parameters (defaults filled in), its upstream stages' keys and the content of
its input files, so after an edit only what changed has to run again.

    use std::bert
    use std::strategies::{successive}

    let sst2 = glue_sst2(path: \"data/SST-2\", max_len: 64)
    stage teacher = train(model: bert::base, data: sst2, epochs: 3)
    let chain = successive(teacher: teacher, students: [bert::medium, bert::mini], data: sst2)

Start with `rkd check FILE` (errors, with the source span and a hint), then `rkd plan FILE`
(every stage with its key and whether it would run). `rkd ops` lists every op and its parameters.";

/// The `rkd` command line.
#[derive(Parser, Debug)]
#[command(name = "rkd", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check pipeline files for errors without running anything.
    ///
    /// Parses each file, resolves names and `use`, expands functions and sweeps, and checks every
    /// op call against its schema (types, ranges, required arguments). All problems are reported,
    /// each with its source span and a hint. Exits with 1 if any file has a problem. Input files
    /// are not read: `rkd plan` does that.
    Check {
        /// The .rkd files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Show every stage with its key and whether it would run.
    ///
    /// Compiles the pipeline, fingerprints its input files (content hashes, with a stat cache in
    /// the store so unchanged files are not re-read), computes every stage's key and looks each up
    /// in the store.
    Plan {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the stage DAG as Graphviz dot or Mermaid.
    ///
    /// Example: `rkd graph pipelines/sst2.rkd | dot -Tsvg > sst2.svg`.
    Graph {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "dot")]
        format: crate::plan::graph::Format,
    },
    /// The reference of ops, constructors and built-in functions.
    ///
    /// Without NAME, lists them all; with NAME, shows its parameters with types, defaults,
    /// allowed ranges and docs.
    Ops {
        /// An op, constructor or function name.
        name: Option<String>,
    },
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Print a shell completion script.
    ///
    /// Example: `rkd completions bash > ~/.local/share/bash-completion/completions/rkd`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check::run(&files),
        Command::Plan { file, store, json } => plan::run(&file, store.as_deref(), json),
        Command::Graph { file, format } => graph::run(&file, format),
        Command::Ops { name } => ops::run(name.as_deref()),
        Command::Bench(b) => bench::run(b),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rkd", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// Whether stderr should get colours.
fn color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Compiles a file; on problems prints them and returns `None`.
fn compile_or_report(file: &std::path::Path) -> Option<crate::compile::Compiled> {
    let compiled = crate::compile::compile_file(file);
    if compiled.diags.is_empty() {
        Some(compiled)
    } else {
        report(&compiled.diags, &compiled.sources, file);
        None
    }
}

/// Prints diagnostics and a count line to stderr.
fn report(diags: &[crate::diagnostic::Diag], sources: &crate::source::Sources, file: &std::path::Path) {
    eprint!("{}", crate::diagnostic::render_all(diags, sources, color()));
    let n = diags.len();
    eprintln!(
        "error: {} has {n} problem{}",
        file.display(),
        if n == 1 { "" } else { "s" }
    );
}
