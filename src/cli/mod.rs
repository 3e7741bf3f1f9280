//! The `rkd` command line.

mod bench;
mod bench_infer;
mod bench_nf4;
mod bench_train;
mod bundle;
mod check;
mod compare;
mod exec_stage;
mod graph;
mod ops;
mod plan;
mod remote_cmds;
mod results;
mod run;
mod runs_table;
mod selftest;
mod status;
mod store_cmds;

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
(every stage with its key, and why it would run), then `rkd run FILE`. `rkd ops` lists every op
and its parameters.";

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
    /// each with its source span and a hint. Exits with 1 if any file has a problem. The
    /// datasets' files are checked too: each table's first rows read (`rkd run` reads every row
    /// and checks the labels) and each image folder listed, with its first images decoded.
    /// Other input files are not read: `rkd plan` fingerprints them.
    ///
    /// With --locked, each file is also planned (its inputs fingerprinted) and compared with its
    /// lock file (`exp.lock` beside `exp.rkd`): a Hub reference without a pin, a changed input,
    /// a stage whose key moved, or a missing lock file is an error. Nothing is resolved online.
    Check {
        /// The .rkd files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Fail when a file and its lock file disagree.
        #[arg(long)]
        locked: bool,
    },
    /// Move the lock file's pins to what the Hugging Face Hub names now.
    ///
    /// Every moving reference of the pipeline (`hf(repo:, revision: \"main\")`, `hf_dataset`,
    /// `glue(task:)` without path) is resolved at the Hub to its current commit, and the lock
    /// file (`exp.lock` beside `exp.rkd`) is rewritten with them, the inputs' content hashes and
    /// the stage keys. Stages of a moved pin get new keys, so the next run recomputes them.
    Update {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
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
        #[command(flatten)]
        remote: remote_cmds::RemoteArgs,
    },
    /// Run the stages whose results are not stored yet.
    ///
    /// Stages run in dependency order, up to `-j` at once. A stage's result enters the store only
    /// when the stage succeeds (written aside, then renamed into place), so Ctrl-C or a crash never
    /// leaves a half result. A failed stage's descendants are skipped; with --keep-going the stages
    /// that do not depend on it still run. Exit code: 0 when all selected stages ran or were
    /// cached, 1 when any failed, 130 when interrupted.
    ///
    /// Every stored result the run trusts is checked first (file sizes and modification times
    /// against its manifest; the files are hashed when these differ, or always with --verify);
    /// a damaged one is moved aside to <store>/damaged/ and runs again.
    ///
    /// With a remote cache (--remote, $RKD_REMOTE or rkd.toml), the stages this run needs that
    /// the store lacks are looked up there first; what the remote holds is downloaded, verified
    /// file by file, and not run. With --push (or `push = true` in rkd.toml), results stored
    /// here that the remote lacks are uploaded after the run.
    ///
    /// Memory: before a stage builds a model on the CPU, and before training batches, rkd checks
    /// that they fit in what the machine, the container or Slurm job, and $RKD_MEMORY_LIMIT
    /// (e.g. 12G) leave; stages side by side share that figure (also across your rkd runs on
    /// this machine), and one that is short waits for the others rather than failing.
    /// RKD_NO_MEMORY_CHECK=1 turns the checks off.
    Run {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Stages to run at once.
        #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = default_jobs())]
        jobs: usize,
        /// Run only these stages, and what they need (repeat, or separate with commas; a sweep's or
        /// call's name, e.g. `tuned`, selects all its stages).
        #[arg(long, value_name = "NAME")]
        only: Vec<String>,
        /// After a failure, keep running the stages that do not depend on it.
        #[arg(long)]
        keep_going: bool,
        /// Say what would run and why, and run nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Hash every stored result the run trusts, not only those whose sizes or times changed.
        #[arg(long)]
        verify: bool,
        /// Start every stage that runs at step 0: its in-stage checkpoints are removed, not resumed
        /// from (by default an interrupted training stage goes on from its last checkpoint).
        #[arg(long)]
        fresh: bool,
        /// Rerun a failed stage up to N times, from its last checkpoint, waiting --retry-delay,
        /// then twice that, ... (a stage's `retries:` argument overrides it). Failures that would
        /// fail again (bad data, a model that does not fit it, a diverging loss) are not retried.
        #[arg(long, value_name = "N", default_value_t = 0)]
        retries: usize,
        /// The wait before the first retry, e.g. `30s`, `2m`.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        retry_delay: humantime::Duration,
        /// Print `{"ran":[..],"cached":[..],"failed":[..],"skipped":[..]}` instead of a table.
        #[arg(long)]
        json: bool,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Where stages run: here, or as one Slurm job each (the store must be on a filesystem the
        /// nodes share).
        #[arg(long, value_enum, default_value = "local")]
        executor: Executor,
        /// Slurm partition (`sbatch --partition`).
        #[arg(long, value_name = "P")]
        partition: Option<String>,
        /// Slurm account (`sbatch --account`).
        #[arg(long, value_name = "A")]
        account: Option<String>,
        /// One more `sbatch` argument for every job (repeatable), e.g. `--sbatch-arg=--qos=short`.
        #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
        sbatch_args: Vec<String>,
        /// With --executor slurm: submit the jobs and return (`rkd status FILE` follows them).
        #[arg(long)]
        no_wait: bool,
        /// Where the ops compute: auto (a GPU when this rkd was built with `--features cuda` and one
        /// is there, else the CPU), cpu, cuda or cuda:N. Not part of any stage's key: a result
        /// computed on a GPU serves a CPU rerun and back.
        #[arg(long, value_name = "DEVICE", env = "RKD_DEVICE", default_value = "auto")]
        device: crate::ml::DeviceChoice,
        /// GPU slots, by ordinal (e.g. `--gpus 0,1`): each running stage that computes on a GPU
        /// holds one of its own, and an `exec` stage with `resources: {gpus: N}` holds N (its
        /// command sees them as CUDA_VISIBLE_DEVICES); CPU-only stages run beside them up to -j
        /// [default: every visible GPU when the device is a GPU, else none].
        #[arg(long, value_name = "N,...", value_delimiter = ',')]
        gpus: Option<Vec<usize>>,
        /// With --executor slurm: jobs are submitted requeueable and get SIGUSR1 this long before
        /// their time limit (`--signal=B:USR1@...`); the stage then checkpoints and requeues
        /// itself, and goes on from there when Slurm starts it again. `0s`: no signal.
        #[arg(long, value_name = "DURATION", default_value = "2m")]
        signal_lead: humantime::Duration,
        #[command(flatten)]
        remote: remote_cmds::RemoteArgs,
        /// Upload the results stored here that the remote lacks after the run (also when a
        /// stage failed: what finished is pushed).
        #[arg(long)]
        push: bool,
        /// Use the lock file as it is: fail (exit 1, nothing run) when the pipeline, its inputs
        /// or its Hub references disagree with it, instead of updating it.
        #[arg(long)]
        locked: bool,
    },
    /// Upload the pipeline's stored results that the remote cache lacks.
    ///
    /// Files go first, each stage's record last, so a reader never sees half a result; a
    /// result the remote holds already is not uploaded again, and blobs it has are skipped.
    /// Example: `rkd push exp.rkd --remote s3://team-bucket/rkd`.
    Push(remote_cmds::TransferArgs),
    /// Download the pipeline's results that the remote cache holds and the store lacks.
    ///
    /// Every file is checked against its recorded size and blake3 as it arrives; a result that
    /// does not match is reported and not stored. `rkd run` pulls by itself; this fetches
    /// results without running anything (to look at a colleague's report, say).
    Pull(remote_cmds::TransferArgs),
    /// Show how far each stage is: stored, training progress and checkpoints, Slurm jobs.
    ///
    /// STORED says whether the stage's result is in the store. PROGRESS, for an unfinished
    /// training stage: its step and epoch (written while it trains) and the step a rerun resumes
    /// from. For a pipeline run with
    /// --executor slurm, JOB and STATE come from `squeue`, then `scontrol show job` (Slurm keeps
    /// finished jobs for MinJobAge, 300 s by default); after that the state the waiting `rkd run`
    /// saw is shown.
    Status {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Run one stage whose spec `rkd run --executor slurm` wrote into the store (what each Slurm
    /// job runs).
    #[command(hide = true)]
    ExecStage {
        /// The store directory (on a filesystem shared with the submitting machine).
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// The stage key (hex).
        #[arg(value_name = "KEY")]
        key: String,
        /// Rerun a failed stage up to N times (its `retries:` argument wins).
        #[arg(long, value_name = "N", default_value_t = 0)]
        retries: usize,
        /// The wait before the first retry.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        retry_delay: humantime::Duration,
    },
    /// Explain one stage: its key, inputs, and whether and why it would run.
    Explain {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The stage's name, as `rkd plan` shows it (e.g. `mini[t=2.0,a=0.5]`).
        #[arg(value_name = "STAGE")]
        stage: String,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Check every stored result against its recorded blake3 hashes.
    ///
    /// Exits with 1 when any entry is damaged. A damaged entry is never used: the next run that
    /// needs it discards it and runs the stage again.
    Verify {
        /// A pipeline file: its store (.rkd/ beside it, as `rkd run` uses) is verified.
        file: Option<PathBuf>,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE, else in the current
        /// directory].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Compare two results of a pipeline, stage by stage: the parameters that changed, how
    /// every recorded metric moved (B − A), and for two evaluations of the same examples
    /// McNemar's exact test on per-example correctness.
    ///
    /// A and B are run records (a file in .rkd/runs/, or its name there), pipeline files (their
    /// current plan, with the results the store holds) or FILE@REV (a pipeline file at a git
    /// revision, e.g. `p.rkd@HEAD~1`). With only A, a pipeline file: its last two runs.
    ///
    /// Example: change a temperature, `rkd run p.rkd`, then `rkd compare p.rkd`.
    Compare {
        /// Side A (or, alone, a pipeline file whose last two runs are compared).
        #[arg(value_name = "A")]
        a: String,
        /// Side B.
        #[arg(value_name = "B")]
        b: Option<String>,
        /// Print JSON (stable: `a`, `b`, and `stages` with `name`, `op`, `status`, `changes`,
        /// `metrics` [{name, a, b, delta}], `mcnemar`).
        #[arg(long, conflicts_with = "md")]
        json: bool,
        /// Print a markdown table.
        #[arg(long)]
        md: bool,
        /// Also draw the `report` stages both sides hold into one pair of plots (A's models
        /// beside B's), written into DIR as SVG and PNG.
        #[arg(long, value_name = "DIR")]
        plot: Option<PathBuf>,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside a pipeline file, else in
        /// the current directory].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Every recorded run's metrics in one table: one row per stage that ran, one column per
    /// metric (the six most common, or `--metric`).
    ///
    /// Example: `rkd results p.rkd --stage score --sort accuracy` ranks every evaluation that
    /// was ever run by accuracy.
    Results {
        /// A pipeline file: the runs of its store (.rkd/ beside it) are listed.
        file: Option<PathBuf>,
        /// Only stages whose name contains this.
        #[arg(long, value_name = "TEXT")]
        stage: Option<String>,
        /// The metric columns, in order.
        #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
        metric: Vec<String>,
        /// Sort by this metric, highest first.
        #[arg(long, value_name = "METRIC")]
        sort: Option<String>,
        /// Print JSON: [{run, pipeline, stage, op, key, metrics}].
        #[arg(long)]
        json: bool,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE, else in the current
        /// directory].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// List the runs recorded in the store.
    Log {
        /// A pipeline file: the runs of its store (.rkd/ beside it, as `rkd run` uses) are listed.
        file: Option<PathBuf>,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE, else in the current
        /// directory].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Show the last N runs (at least 1).
        #[arg(short = 'n', long, default_value_t = 20, value_parser = at_least_one)]
        limit: usize,
    },
    /// Remove stored results that nothing you keep refers to, and print the bytes freed.
    ///
    /// Keeps the entries of the current plans of the `--keep` pipelines (and of their latest
    /// recorded runs, which may have seen other `env()` values), of the last `--keep-runs` runs,
    /// and of every pipeline running now; removes the rest, the damaged entries that runs
    /// moved aside, and the caches (prepared datasets, decoded images, manifest caches: the next
    /// stage or run that needs one rebuilds it). Runs that start while gc works wait for it.
    Gc {
        /// Keep every stage of this pipeline's current plan and of its latest run (repeatable).
        #[arg(long, value_name = "FILE")]
        keep: Vec<PathBuf>,
        /// Keep every stage named in the last N run records.
        #[arg(long, value_name = "N")]
        keep_runs: Option<usize>,
        /// Only say what would be removed.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// The store directory [default: $RKD_STORE, else the first --keep file's store, else .rkd/].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Pack a pipeline into one file a colleague or reviewer can rerun: the pipeline, the
    /// modules it `use`s, its lock file, and optionally its data and stored results.
    ///
    /// With --with-results the bundle holds every result of the pipeline stored here (verified
    /// first) and an rkd.toml naming them as its remote cache, so that `rkd unbundle exp.tar.zst
    /// && rkd run exp/exp.rkd` pulls them (checked against their hashes) instead of computing
    /// them. Keys still need the inputs: give --with-data, or the reviewer needs the same data at
    /// the same paths.
    Bundle {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The bundle to write (a zstd-compressed tar).
        #[arg(short = 'o', long = "out", value_name = "FILE.tar.zst")]
        out: PathBuf,
        /// Include the stored results the pipeline reaches.
        #[arg(long)]
        with_results: bool,
        /// Include the input files and folders it reads (they must be inside its folder).
        #[arg(long)]
        with_data: bool,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Unpack a bundle written by `rkd bundle` (then `rkd run` the pipeline inside).
    Unbundle {
        /// The bundle.
        #[arg(value_name = "FILE.tar.zst")]
        bundle: PathBuf,
        /// Where to unpack it.
        #[arg(short = 'C', long = "dir", value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Overwrite files in DIR that differ from the bundle's (without it, unbundling
        /// refuses, naming them, and writes nothing; identical files are fine).
        #[arg(long)]
        force: bool,
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
    /// Print the tables of the pipeline's `report` stages, and where their files are.
    ///
    /// The report (report.md, report.csv, report.json and the plots as SVG and PNG) is written by
    /// the `report` op when the pipeline runs; this prints it again from the store.
    Report {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Copy a trained model out of the store as a Hugging Face directory.
    ///
    /// Writes config.json, the weights, and the tokenizer files (text) or
    /// preprocessor_config.json (images); for a QLoRA stage the NF4 base, the PEFT adapter and,
    /// with `merge: true`, the merged model in merged/. The directory loads again with
    /// `pretrained(path: ...)`, and with Hugging Face transformers.
    Export {
        /// The pipeline file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The stage, as `rkd plan` names it.
        #[arg(value_name = "STAGE")]
        stage: String,
        /// Where to write (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The store directory [default: $RKD_STORE, else .rkd/ beside FILE].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Check that a device computes what the CPU computes, before running a study on it.
    ///
    /// Runs on the device: NF4 dequantization (against the CPU kernel, bit for bit) and one
    /// training step with dropout of a tiny BERT, a tiny ViT and a QLoRA model with an NF4 base
    /// (loss and every gradient against the fused CPU kernels, relative error at most 1e-4).
    /// With `--device cpu` the device side is the device-generic path (candle's ops, what a GPU
    /// runs). Exits with 1 when a check fails, 2 when the device cannot be opened.
    Selftest {
        /// Where to compute: auto, cpu, cuda or cuda:N.
        #[arg(long, value_name = "DEVICE", env = "RKD_DEVICE", default_value = "auto")]
        device: crate::ml::DeviceChoice,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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
    crate::ml::runtime::configure();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        quiet_on_closed_pipe();
    }
    match cli.command {
        Command::Check { files, locked } => check::run(&files, locked),
        Command::Update { file } => check::update(&file),
        Command::Plan {
            file,
            store,
            json,
            remote,
        } => plan::run(&file, store.as_deref(), json, &remote),
        Command::Push(args) => remote_cmds::push(&args),
        Command::Pull(args) => remote_cmds::pull(&args),
        Command::Run {
            file,
            jobs,
            only,
            keep_going,
            dry_run,
            verify,
            fresh,
            retries,
            retry_delay,
            json,
            store,
            executor,
            partition,
            account,
            sbatch_args,
            no_wait,
            device,
            gpus,
            signal_lead,
            remote,
            push,
            locked,
        } => {
            // A Slurm run resolves the device on each node (the submitting machine may have no GPU).
            let choice = device;
            let device = if executor == Executor::Slurm {
                candle_core::Device::Cpu
            } else {
                match open_device(device) {
                    Ok(d) => d,
                    Err(code) => return code,
                }
            };
            // `--device cuda:N` alone means that GPU only; `auto` or `cuda` on a GPU, every one.
            let gpus = gpus.unwrap_or_else(|| match choice {
                _ if device.is_cpu() => Vec::new(),
                crate::ml::DeviceChoice::Cuda(n) if n > 0 => vec![n],
                _ => crate::ml::kernels::device::visible_gpus(),
            });
            let opts = crate::engine::run::RunOptions {
                device,
                gpus,
                jobs,
                only,
                keep_going,
                dry_run,
                verify,
                fresh,
                retries,
                retry_delay: retry_delay.into(),
                from_remote: Default::default(),
                remote: None,
            };
            let slurm_only = partition.is_some() || account.is_some() || !sbatch_args.is_empty() || no_wait;
            if executor == Executor::Local && slurm_only {
                crate::say!("error: --partition, --account, --sbatch-arg and --no-wait go with --executor slurm");
                return ExitCode::from(2);
            }
            let slurm = (executor == Executor::Slurm).then_some(run::Slurm {
                options: crate::engine::slurm::SlurmOptions {
                    partition,
                    account,
                    sbatch_args,
                    device: choice,
                    signal_lead: signal_lead.into(),
                },
                wait: !no_wait,
            });
            let sharing = run::Sharing { remote, push, locked };
            run::run(&file, store.as_deref(), opts, json, slurm, &sharing)
        }
        Command::Status { file, store } => status::run(&file, store.as_deref()),
        Command::ExecStage {
            store,
            key,
            retries,
            retry_delay,
        } => exec_stage::run(&store, &key, retries, retry_delay.into()),
        Command::Explain { file, stage, store } => plan::explain(&file, &stage, store.as_deref()),
        Command::Verify { file, store } => store_cmds::verify(file.as_deref(), store.as_deref()),
        Command::Compare {
            a,
            b,
            json,
            md,
            plot,
            store,
        } => {
            let format = match (json, md) {
                (true, _) => compare::Format::Json,
                (_, true) => compare::Format::Markdown,
                _ => compare::Format::Text,
            };
            compare::run(&a, b.as_deref(), store.as_deref(), format, plot.as_deref())
        }
        Command::Results {
            file,
            stage,
            metric,
            sort,
            json,
            store,
        } => runs_table::run(
            file.as_deref(),
            store.as_deref(),
            &runs_table::Query {
                stage: stage.as_deref(),
                metrics: &metric,
                sort: sort.as_deref(),
                json,
            },
        ),
        Command::Log { file, store, limit } => store_cmds::log(file.as_deref(), store.as_deref(), limit),
        Command::Gc {
            keep,
            keep_runs,
            dry_run,
            store,
        } => store_cmds::gc(&keep, keep_runs, store.as_deref(), dry_run),
        Command::Bundle {
            file,
            out,
            with_results,
            with_data,
            store,
        } => bundle::run(
            &file,
            &out,
            store.as_deref(),
            &bundle::Extras {
                results: with_results,
                data: with_data,
            },
        ),
        Command::Unbundle { bundle: b, dir, force } => bundle::unbundle(&b, &dir, force),
        Command::Graph { file, format } => graph::run(&file, format),
        Command::Ops { name } => ops::run(name.as_deref()),
        Command::Report { file, store } => results::report(&file, store.as_deref()),
        Command::Export {
            file,
            stage,
            out,
            store,
        } => results::export(&file, &stage, &out, store.as_deref()),
        Command::Bench(b) => bench::run(b),
        Command::Selftest { device, json } => selftest::run(device, json),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rkd", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// Where `rkd run` runs stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Executor {
    /// On this machine, up to `-j` at once.
    Local,
    /// As one Slurm job per stage (`sbatch`), with dependencies between jobs.
    Slurm,
}

/// Default `-j`: the number of CPU cores.
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Compiles a pipeline, pins its moving references (the lock file's commits; one that cannot be
/// resolved is left as written, with a warning), fingerprints its inputs and builds its plan; on
/// problems prints them. The plan takes the compiled stages: the
/// returned `Compiled` keeps its sources, not its stages.
fn load_plan(
    file: &std::path::Path,
    store: Option<&std::path::Path>,
) -> Option<(crate::compile::Compiled, crate::plan::Plan, crate::store::Store)> {
    load_locked(file, store, crate::lockfile::Mode::Look).map(|(c, p, s, _)| (c, p, s))
}

/// [`load_plan`] with the references pinned as `mode` says; also returns the pins.
fn load_locked(
    file: &std::path::Path,
    store: Option<&std::path::Path>,
    mode: crate::lockfile::Mode,
) -> Option<(
    crate::compile::Compiled,
    crate::plan::Plan,
    crate::store::Store,
    crate::lockfile::Pinned,
)> {
    let mut compiled = compile_or_report(file)?;
    let store = crate::store::Store::for_pipeline(file, store);
    if let Err(e) = store.check_layout() {
        crate::say!("error: {e}");
        return None;
    }
    let pinned = match crate::lockfile::pin(file, &mut compiled.stages, mode) {
        Ok(p) => p,
        Err(problems) => {
            for p in &problems {
                crate::say!("error: {p}");
            }
            return None;
        }
    };
    if mode != crate::lockfile::Mode::Update {
        for line in &pinned.resolved {
            crate::say!("note: {line}");
        }
    }
    for line in &pinned.unpinned {
        crate::say!("warning: {line}");
    }
    let mut fingerprints = crate::plan::fingerprint::Fingerprinter::load(&store.stat_cache());
    // The plan takes the stages; callers use the compiled sources only.
    let stages = std::mem::take(&mut compiled.stages);
    let plan = match crate::plan::Plan::from_stages(stages, &mut fingerprints) {
        Ok(p) => p,
        Err(diags) => {
            report(&diags, &compiled.sources, file);
            return None;
        }
    };
    if let Err(e) = fingerprints.save(&store.stat_cache()) {
        crate::say!(
            "warning: could not save the fingerprint cache in {}: {e}",
            store.root.display()
        );
    }
    if plan.is_empty() {
        crate::say!(
            "warning: {} defines no stages: nothing to run (a stage is `stage NAME = OP(...)`)",
            file.display()
        );
    }
    Some((compiled, plan, store, pinned))
}

/// Lets a reporting command end quietly when its reader goes away (`rkd report f.rkd | head`),
/// as Unix tools do, instead of panicking on the failed write. (`rkd run` calls it only once
/// its stages are over: while they run it has children and a store to leave in order.)
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: `signal` only sets the process-wide disposition of SIGPIPE back to the default; it
    // is safe from any thread. Sockets are unaffected (std writes to them with MSG_NOSIGNAL).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A count of at least 1 (a command-line value).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
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
    crate::say::text(&crate::diagnostic::render_all(diags, sources, color()));
    let n = diags.len();
    crate::say!(
        "error: {} has {n} problem{}",
        file.display(),
        if n == 1 { "" } else { "s" }
    );
}

/// The device `choice` names; exit code 2 after saying why when it cannot be used.
fn open_device(choice: crate::ml::DeviceChoice) -> Result<candle_core::Device, ExitCode> {
    crate::ml::kernels::device::resolve(choice).map_err(|e| {
        crate::say!("error: {e}");
        ExitCode::from(2)
    })
}
