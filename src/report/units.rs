//! Human units for report cells: `11.2 M`, `42.1 MB`, `1.9×`, `97.3%`, `1.25 ms`.

/// What a table shows for a value that does not exist (no NF4 artifact, no ratio).
pub const MISSING: &str = "—";

/// Scales `n` by 1000 until it is below 1000 once rounded to one decimal, then prints one decimal.
fn scaled(n: u64, units: &[&str]) -> String {
    if n < 1000 {
        return if units[0].is_empty() {
            n.to_string()
        } else {
            format!("{n} {}", units[0])
        };
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 1;
    while unit + 1 < units.len() && (value * 10.0).round() / 10.0 >= 1000.0 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// A count in decimal units: `312`, `4.4 k`, `11.2 M`, `1.3 B`.
pub fn count(n: u64) -> String {
    scaled(n, &["", "k", "M", "B", "T"])
}

/// Bytes in decimal (SI) units: `512 B`, `4.4 kB`, `42.1 MB`, `1.3 GB`.
pub fn bytes(n: u64) -> String {
    scaled(n, &["B", "kB", "MB", "GB", "TB"])
}

/// Optional bytes, [`MISSING`] for `None`.
pub fn opt_bytes(n: Option<u64>) -> String {
    n.map_or_else(|| MISSING.to_string(), bytes)
}

/// A ratio with one decimal: `1.9×`; [`MISSING`] for `None`.
pub fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| MISSING.to_string(), |r| format!("{r:.1}×"))
}

/// A fraction as a percentage with one decimal: `0.973` → `97.3%`.
pub fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// An optional fraction as a percentage; [`MISSING`] for `None`.
pub fn opt_percent(fraction: Option<f64>) -> String {
    fraction.map_or_else(|| MISSING.to_string(), percent)
}

/// Milliseconds with two decimals: `1.25 ms`.
pub fn millis(ms: f64) -> String {
    format!("{ms:.2} ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bytes_use_decimal_units() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(4_400), "4.4 k");
        assert_eq!(count(11_170_000), "11.2 M");
        assert_eq!(count(999_960), "1.0 M");
        assert_eq!(count(109_482_240), "109.5 M");
        assert_eq!(count(7_000_000_000), "7.0 B");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(42_100_000), "42.1 MB");
        assert_eq!(bytes(1_300_000_000), "1.3 GB");
        assert_eq!(bytes(u64::MAX), "18446744.1 TB");
    }

    #[test]
    fn ratios_percentages_and_missing_values() {
        assert_eq!(ratio(Some(1.94)), "1.9×");
        assert_eq!(ratio(None), MISSING);
        assert_eq!(percent(0.973), "97.3%");
        assert_eq!(opt_percent(None), "—");
        assert_eq!(opt_bytes(None), "—");
        assert_eq!(opt_bytes(Some(6_100_000)), "6.1 MB");
        assert_eq!(millis(1.25), "1.25 ms");
    }
}
