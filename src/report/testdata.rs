//! A hand-made report shared by the tests: an SST-2-like run with every strategy.

use super::{ReportData, ReportRow};

#[allow(clippy::too_many_arguments)]
fn row(
    name: &str,
    strategy: &str,
    op: &str,
    accuracy: f64,
    parameters: u64,
    nonzeros: u64,
    nf4_bytes: Option<u64>,
    disk_bytes: u64,
    latency_ms: f64,
) -> ReportRow {
    ReportRow {
        name: name.into(),
        key: Some(format!("key-of-{name}")),
        strategy: strategy.into(),
        op: op.into(),
        accuracy,
        score: None,
        parameters,
        nonzeros,
        dense_bytes: parameters * 4,
        nf4_bytes,
        sparse_bytes: parameters.div_ceil(8) + nonzeros * 4,
        disk_bytes,
        latency_ms,
    }
}

/// Eight models: teacher, a successive chain, a sweep copy, fusion, QLoRA, pruning and a chance-level run.
pub fn sample() -> ReportData {
    ReportData {
        title: "BERT on SST-2".into(),
        dataset: "sst2".into(),
        split: "validation".into(),
        examples: Some(872),
        selection: vec!["epochs selected on 80 held-out training examples".into()],
        chance_level: 0.509,
        score_name: None,
        baseline: "teacher".into(),
        rows: vec![
            row(
                "teacher",
                "teacher",
                "train",
                0.917,
                110_000_000,
                110_000_000,
                None,
                440_000_000,
                12.5,
            ),
            row(
                "medium",
                "successive",
                "distill",
                0.896,
                41_400_000,
                41_400_000,
                None,
                165_600_000,
                4.75,
            ),
            row(
                "mini",
                "successive",
                "distill",
                0.851,
                11_200_000,
                11_200_000,
                None,
                44_800_000,
                1.25,
            ),
            row(
                "mini[t=2.0,a=0.5]",
                "straightforward",
                "distill",
                0.842,
                11_200_000,
                11_200_000,
                None,
                44_800_000,
                1.25,
            ),
            row(
                "fused",
                "multi_agent",
                "fuse",
                0.856,
                11_200_000,
                11_200_000,
                None,
                44_800_000,
                1.3,
            ),
            row(
                "q",
                "qlora",
                "qlora",
                0.848,
                11_200_000,
                11_200_000,
                Some(5_800_000),
                6_100_000,
                2.0,
            ),
            row(
                "p",
                "prune",
                "prune",
                0.839,
                11_200_000,
                7_840_000,
                Some(5_800_000),
                6_100_000,
                2.0,
            ),
            row(
                "tiny-raw", "train", "train", 0.505, 4_400_000, 4_400_000, None, 17_600_000, 0.5,
            ),
        ],
        curves: Vec::new(),
    }
}
