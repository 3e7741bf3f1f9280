//! `report.csv`: raw numbers, one row per model, with a header row (RFC 4180 quoting). The
//! quality column is `accuracy`, or `pearson` for a regression; `score` is the task's own metric
//! (`report.json`'s `score_name`: MCC, F1, Spearman), empty where it has none.

use super::Report;

/// The CSV header, in column order.
pub const CSV_HEADER: &[&str] = &[
    "name",
    "strategy",
    "op",
    "accuracy",
    "score",
    "parameters",
    "nonzeros",
    "dense_bytes",
    "nf4_bytes",
    "sparse_bytes",
    "disk_bytes",
    "latency_ms",
    "compression_disk",
    "compression_params",
    "retention",
];

/// Quotes a field that holds a comma, a quote or a line break (sweep names hold commas).
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// The whole `report.csv`; a missing value is an empty field, floats print in shortest round-trip form.
pub fn render_csv(report: &Report) -> String {
    // The quality column is named for what it holds: `accuracy`, or `pearson` for a regression.
    let header: Vec<&str> = CSV_HEADER
        .iter()
        .map(|&h| {
            if h == "accuracy" {
                report.quality_name.as_str()
            } else {
                h
            }
        })
        .collect();
    let mut out = header.join(",");
    out.push('\n');
    for e in &report.rows {
        let (r, d) = (&e.row, &e.derived);
        let cells = [
            field(&r.name),
            field(&r.strategy),
            field(&r.op),
            r.quality.to_string(),
            opt(r.score),
            r.parameters.to_string(),
            r.nonzeros.to_string(),
            r.dense_bytes.to_string(),
            opt(r.nf4_bytes),
            r.sparse_bytes.to_string(),
            r.disk_bytes.to_string(),
            r.latency_ms.to_string(),
            opt(d.compression_disk),
            opt(d.compression_params),
            opt(d.retention),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::*;

    #[test]
    fn csv_rows() {
        insta::assert_snapshot!(render_csv(&sample().derive().unwrap()));
    }

    #[test]
    fn fields_with_commas_and_quotes_are_quoted() {
        assert_eq!(field("mini[t=2.0,a=0.5]"), "\"mini[t=2.0,a=0.5]\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("plain"), "plain");
    }
}
