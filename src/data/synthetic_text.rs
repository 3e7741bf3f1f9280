//! A generated text classification task: learnable, not trivial, the same for the same seed.
//!
//! The vocabulary is [`Tokenizer::identity`]'s: ids 0–4 are the special tokens and every other id
//! `i` is the word `t{i}`. Each class owns a few *indicative* words; an example is a run of words
//! in which each position is, independently, an indicative word of its own class (15%), an
//! indicative word of another class (5%, a distractor) or a noise word (80%). A bag-of-words
//! model thus does well but some examples stay ambiguous, and a `noise` fraction of labels is
//! then replaced by another class at random, so accuracy stays below 100%.

use super::error::DataError;
use super::tokenizer::{identity_token, Tokenizer, SPECIAL_TOKENS};
use crate::ml::Rng;
use crate::registry::bounds;

/// Probability that a word is an indicative word of the example's class.
pub const P_INDICATIVE: f64 = 0.15;
/// Probability that a word is an indicative word of another class.
pub const P_DISTRACTOR: f64 = 0.05;
/// Most indicative words per class.
pub const MAX_INDICATIVE: usize = 4;

/// The generator's settings (the `synthetic_text` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct TextSpec {
    /// Generator seed.
    pub seed: u64,
    /// Number of classes (≥ 2).
    pub classes: usize,
    /// Training examples.
    pub train_size: usize,
    /// Validation examples.
    pub val_size: usize,
    /// Test examples (generated after the validation ones, so adding them changes neither).
    pub test_size: usize,
    /// Ids per example, `[CLS]` and `[SEP]` included (≥ 3).
    pub max_len: usize,
    /// Vocabulary size, special tokens included.
    pub vocab_size: usize,
    /// Fraction of labels replaced by another class.
    pub noise: f64,
}

/// One generated split.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSplit {
    /// The examples as text (`"t17 t42 …"`), which the identity tokenizer maps back to ids.
    pub texts: Vec<String>,
    /// The examples as ids, `[CLS] … [SEP]`.
    pub ids: Vec<Vec<u32>>,
    /// The (possibly flipped) labels.
    pub labels: Vec<u32>,
}

/// The generated data set.
#[derive(Debug, Clone)]
pub struct SyntheticText {
    /// Class names `class_0`, `class_1`, ….
    pub classes: Vec<String>,
    /// The identity tokenizer of `vocab_size` ids.
    pub tokenizer: Tokenizer,
    /// Training split.
    pub train: TextSplit,
    /// Validation split.
    pub validation: TextSplit,
    /// Test split.
    pub test: TextSplit,
}

/// `n` labels, as balanced as possible over `classes`, in a random order.
pub(crate) fn balanced_labels(n: usize, classes: usize, rng: &mut Rng) -> Vec<u32> {
    let mut labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    shuffle(&mut labels, rng);
    labels
}

/// Fisher–Yates shuffle.
pub(crate) fn shuffle<T>(xs: &mut [T], rng: &mut Rng) {
    for i in (1..xs.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        xs.swap(i, j);
    }
}

/// A class other than `c`, uniformly.
fn other_class(c: u32, classes: usize, rng: &mut Rng) -> u32 {
    let k = rng.below(classes as u64 - 1) as u32;
    if k >= c {
        k + 1
    } else {
        k
    }
}

/// Generates the data set.
pub fn generate(spec: &TextSpec) -> Result<SyntheticText, DataError> {
    let first = SPECIAL_TOKENS.len();
    let words = spec.vocab_size.saturating_sub(first);
    if spec.classes < 2 {
        return Err(DataError::new(format!(
            "synthetic_text: needs at least 2 classes, got {}",
            spec.classes
        )));
    }
    if words < 2 * spec.classes {
        return Err(DataError::new(format!(
            "synthetic_text: vocab_size {} is too small for {} classes (needs at least {})",
            spec.vocab_size,
            spec.classes,
            first + 2 * spec.classes
        )));
    }
    if spec.max_len < 3 {
        return Err(DataError::new(
            "synthetic_text: max_len must be at least 3 ([CLS], a word, [SEP])",
        ));
    }
    if spec.train_size == 0 || spec.val_size == 0 || spec.test_size == 0 {
        return Err(DataError::new(
            "synthetic_text: empty split (train_size, val_size and test_size must be positive)",
        ));
    }
    let splits = [spec.train_size, spec.val_size, spec.test_size].map(|n| n as u64);
    let (examples, over) = bounds::generated_over_limit(splits, bounds::text_example_bytes(spec.max_len as u64));
    if over {
        return Err(DataError::new(format!(
            "synthetic_text: {examples} examples of up to {} tokens would take more than {} of memory",
            spec.max_len,
            bounds::generated_limit()
        )));
    }
    let tokenizer = Tokenizer::identity(spec.vocab_size)?;
    let mut rng = Rng::for_stream(spec.seed, "rkd-synthetic-text");
    let per_class = MAX_INDICATIVE.min(words / (2 * spec.classes)).max(1);
    let mut perm: Vec<u32> = (first as u32..spec.vocab_size as u32).collect();
    shuffle(&mut perm, &mut rng);
    let indicative: Vec<&[u32]> = perm[..spec.classes * per_class].chunks(per_class).collect();
    let noise_words = &perm[spec.classes * per_class..];

    let hi = spec.max_len - 2;
    let lo = (hi / 2).max(1);
    let mut make = |n: usize| {
        let truth = balanced_labels(n, spec.classes, &mut rng);
        let mut split = TextSplit {
            texts: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
        };
        for &y in &truth {
            let len = lo + rng.below((hi - lo + 1) as u64) as usize;
            let mut ids = Vec::with_capacity(len + 2);
            ids.push(tokenizer.cls_id());
            for _ in 0..len {
                let u = rng.uniform_f64();
                let pool: &[u32] = if u < P_INDICATIVE {
                    indicative[y as usize]
                } else if u < P_INDICATIVE + P_DISTRACTOR {
                    indicative[other_class(y, spec.classes, &mut rng) as usize]
                } else {
                    noise_words
                };
                ids.push(pool[rng.below(pool.len() as u64) as usize]);
            }
            ids.push(tokenizer.sep_id());
            let label = if rng.uniform_f64() < spec.noise {
                other_class(y, spec.classes, &mut rng)
            } else {
                y
            };
            let text: Vec<String> = ids[1..ids.len() - 1].iter().map(|&i| identity_token(i)).collect();
            split.texts.push(text.join(" "));
            split.ids.push(ids);
            split.labels.push(label);
        }
        split
    };
    let train = make(spec.train_size);
    let validation = make(spec.val_size);
    let test = make(spec.test_size);
    Ok(SyntheticText {
        classes: (0..spec.classes).map(|c| format!("class_{c}")).collect(),
        tokenizer,
        train,
        validation,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> TextSpec {
        TextSpec {
            seed,
            classes: 3,
            train_size: 600,
            val_size: 90,
            test_size: 90,
            max_len: 24,
            vocab_size: 200,
            noise: 0.1,
        }
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = generate(&spec(1)).unwrap();
        let b = generate(&spec(1)).unwrap();
        let c = generate(&spec(2)).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.validation, b.validation);
        assert_ne!(a.train.ids, c.train.ids);
        assert_eq!(a.train.ids.len(), 600);
        assert_eq!(a.validation.labels.len(), 90);
        assert!(a
            .train
            .ids
            .iter()
            .all(|s| s.len() <= 24 && s.len() >= 3 && s[0] == 2 && *s.last().unwrap() == 3));
        assert!(a.train.ids.iter().flatten().all(|&i| (i as usize) < 200));
    }

    #[test]
    fn labels_are_balanced_and_texts_match_ids() {
        let d = generate(&spec(3)).unwrap();
        for c in 0..3u32 {
            let n = d.train.labels.iter().filter(|&&l| l == c).count();
            assert!((150..=250).contains(&n), "class {c}: {n} of 600");
        }
        for (t, ids) in d.train.texts.iter().zip(&d.train.ids).take(20) {
            assert_eq!(&d.tokenizer.encode(t, 24), ids);
        }
    }

    #[test]
    fn learnable_but_not_trivial() {
        // Count-based classifier: the class whose indicative words occur most. Estimate each
        // class's indicative words from the training set, then score the validation set.
        let s = TextSpec {
            train_size: 2000,
            val_size: 1000,
            test_size: 1000,
            ..spec(4)
        };
        let d = generate(&s).unwrap();
        let mut counts = vec![[0usize; 3]; 200];
        for (ids, &l) in d.train.ids.iter().zip(&d.train.labels) {
            for &i in ids {
                counts[i as usize][l as usize] += 1;
            }
        }
        let owner = |i: u32| {
            let c = counts[i as usize];
            let total: usize = c.iter().sum();
            let (best, &n) = c.iter().enumerate().max_by_key(|x| x.1).unwrap();
            (total > 20 && n * 2 > total).then_some(best)
        };
        let mut right = 0;
        for (ids, &l) in d.validation.ids.iter().zip(&d.validation.labels) {
            let mut votes = [0usize; 3];
            for &i in ids {
                if let Some(c) = owner(i) {
                    votes[c] += 1;
                }
            }
            let pred = (0..3).max_by_key(|&c| (votes[c], 3 - c)).unwrap();
            right += (pred as u32 == l) as usize;
        }
        let acc = right as f64 / 1000.0;
        assert!(acc > 0.6 && acc < 0.95, "bag-of-words accuracy {acc}");
    }

    #[test]
    fn impossible_settings_are_errors() {
        let e = generate(&TextSpec {
            vocab_size: 16,
            classes: 10,
            ..spec(0)
        })
        .unwrap_err();
        assert!(e.to_string().contains("too small for 10 classes"), "{e}");
        assert!(generate(&TextSpec { max_len: 2, ..spec(0) }).is_err());
    }
}
