//! Seeds: sweep points that differ only in `seed` (`student[seed=1]`, `student[seed=2]`, …) are
//! one model trained several times. The report summarises each such group by the mean, the
//! sample standard deviation (n − 1) and a 95% confidence interval of the mean (Student's t with
//! n − 1 degrees of freedom), so that strategies are compared by more than one draw each.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// The sweep variable that names a seed.
pub const SEED: &str = "seed";

/// One figure over a group's seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// How many seeds.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Sample standard deviation (divided by n − 1); `None` for one seed.
    pub std: Option<f64>,
    /// 95% confidence interval of the mean, `[low, high]` (in a report, cut to the figure's
    /// range); `None` for one seed.
    pub ci95: Option<[f64; 2]>,
}

impl Spread {
    /// The spread of `values` (at least one).
    pub fn of(values: &[f64]) -> Spread {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return Spread {
                n,
                mean,
                std: None,
                ci95: None,
            };
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let std = var.sqrt();
        let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
            .expect("n − 1 ≥ 1 degrees of freedom")
            .inverse_cdf(0.975);
        let half = t * std / (n as f64).sqrt();
        Spread {
            n,
            mean,
            std: Some(std),
            ci95: Some([mean - half, mean + half]),
        }
    }

    /// The same spread with its confidence interval cut to what the figure can be (`[0, 1]` for
    /// accuracy, `[-1, 1]` for a correlation): a t interval of few seeds can reach past them.
    fn within(mut self, lo: f64, hi: f64) -> Spread {
        self.ci95 = self.ci95.map(|[a, b]| [a.max(lo), b.min(hi)]);
        self
    }
}

/// One model trained with several seeds: the rows that differ only in their seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedGroup {
    /// The rows' name without the seed (`student`, `tuned[t=2.0]`).
    pub name: String,
    /// The seeds, in row order.
    pub seeds: Vec<String>,
    /// The rows' names, in the report's order.
    pub rows: Vec<String>,
    /// The quality (accuracy, or Pearson's r) over the seeds.
    pub quality: Spread,
    /// The task's metric over the seeds, when every row has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<Spread>,
}

/// `name[seed=…,…]` → (the name without the seed, the seed); `None` when it has no seed.
fn without_seed(name: &str) -> Option<(String, String)> {
    let own = name.split_once(" (= ").map_or(name, |(first, _)| first);
    let (base, coords) = crate::text::sweep_point(own)?;
    let seed = coords.iter().find(|(k, _)| *k == SEED)?.1.to_string();
    let rest: Vec<String> = coords
        .iter()
        .filter(|(k, _)| *k != SEED)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let name = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}[{}]", rest.join(","))
    };
    Some((name, seed))
}

/// One report row as the seed groups see it: its name, quality and score.
pub type SeedRow<'a> = (&'a str, f64, Option<f64>);

/// The seed groups of a report's rows, in order of first appearance (none when no row has a
/// `seed` sweep variable). `quality_floor` is the lowest the quality can be (0 for accuracy, −1
/// for a correlation).
pub fn seed_groups(rows: &[SeedRow], quality_floor: f64) -> Vec<SeedGroup> {
    let mut groups: Vec<(String, Vec<(String, &SeedRow)>)> = Vec::new();
    for row in rows {
        let Some((name, seed)) = without_seed(row.0) else {
            continue;
        };
        match groups.iter_mut().find(|g| g.0 == name) {
            Some(g) => g.1.push((seed, row)),
            None => groups.push((name, vec![(seed, row)])),
        }
    }
    groups
        .into_iter()
        .map(|(name, members)| {
            let quality: Vec<f64> = members.iter().map(|(_, r)| r.1).collect();
            let scores: Option<Vec<f64>> = members.iter().map(|(_, r)| r.2).collect();
            SeedGroup {
                name,
                seeds: members.iter().map(|(s, _)| s.clone()).collect(),
                rows: members.iter().map(|(_, r)| r.0.to_string()).collect(),
                quality: Spread::of(&quality).within(quality_floor, 1.0),
                // MCC, F1, Spearman: each at most 1, none below −1.
                score: scores.map(|s| Spread::of(&s).within(-1.0, 1.0)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_seeds_by_hand() {
        // mean 0.84; deviations −0.02, 0, +0.02; sample variance 0.0008 / 2 = 0.0004; std 0.02;
        // t(0.975, 2) = 4.302653; half-width 4.302653 · 0.02 / √3 = 0.049683.
        let s = Spread::of(&[0.82, 0.84, 0.86]);
        assert_eq!(s.n, 3);
        assert!((s.mean - 0.84).abs() < 1e-12);
        assert!((s.std.unwrap() - 0.02).abs() < 1e-12);
        let [lo, hi] = s.ci95.unwrap();
        assert!((hi - 0.84 - 0.049683).abs() < 1e-6, "{hi}");
        assert!((0.84 - lo - 0.049683).abs() < 1e-6, "{lo}");
        let one = Spread::of(&[0.9]);
        assert_eq!((one.n, one.mean, one.std, one.ci95), (1, 0.9, None, None));
    }

    #[test]
    fn names_lose_their_seed_and_keep_the_other_variables() {
        assert_eq!(without_seed("student[seed=2]"), Some(("student".into(), "2".into())));
        assert_eq!(
            without_seed("tuned[t=2.0,seed=3]"),
            Some(("tuned[t=2.0]".into(), "3".into()))
        );
        assert_eq!(without_seed("tuned[t=2.0]"), None);
        assert_eq!(without_seed("teacher"), None);
    }
}
