//! A deterministic WordPiece vocabulary trainer.
//!
//! The `tokenizers` crate's `WordPieceTrainer` breaks ties between equally frequent merges by
//! symbol ids that it assigns in hash-map order, so two trainings on the same texts can give
//! different vocabularies (seen in tests). Stage artifacts are content-hashed, so this trainer
//! does the same thing (BPE-style merges of the most frequent adjacent pair, `##` marking
//! word-internal pieces, as the crate's trainer does) with a fixed order everywhere: the
//! alphabet sorted, ties broken by the earlier-created pair. Normalisation and
//! pre-tokenisation are the `tokenizers` crate's uncased BERT ones, so the vocabulary fits the
//! WordPiece model that then uses it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use super::error::DataError;

/// The prefix of word-internal pieces.
pub const CONTINUATION: &str = "##";

/// Merges seen fewer times than this are not made.
pub const MIN_PAIR_COUNT: i64 = 2;

/// Word counts of texts added one at a time (streamed from a file), after BERT normalisation
/// and pre-tokenisation: what a vocabulary is trained on.
pub struct WordCounts {
    normalizer: BertNormalizer,
    counts: BTreeMap<String, u64>,
}

impl WordCounts {
    /// No words yet; `lowercase` for an uncased vocabulary.
    pub fn new(lowercase: bool) -> Self {
        WordCounts {
            normalizer: BertNormalizer::new(true, true, None, lowercase),
            counts: BTreeMap::new(),
        }
    }

    /// Counts the words of one text.
    pub fn add(&mut self, text: &str) -> Result<(), DataError> {
        count_words(&self.normalizer, text, &mut self.counts)
    }

    /// Counts the words of many texts, in parallel (the counts do not depend on the order).
    pub fn add_all(&mut self, texts: &[String]) -> Result<(), DataError> {
        use rayon::prelude::*;
        let normalizer = &self.normalizer;
        let counted = texts
            .par_iter()
            .try_fold(BTreeMap::new, |mut counts, t| {
                count_words(normalizer, t, &mut counts).map(|()| counts)
            })
            .try_reduce(BTreeMap::new, |mut a, b| {
                for (w, n) in b {
                    *a.entry(w).or_insert(0) += n;
                }
                Ok(a)
            })?;
        for (w, n) in counted {
            *self.counts.entry(w).or_insert(0) += n;
        }
        Ok(())
    }

    /// The counts, by word.
    pub fn into_counts(self) -> BTreeMap<String, u64> {
        self.counts
    }
}

/// Adds the words of `text` (BERT-normalised and pre-tokenised) to `counts`.
fn count_words(normalizer: &BertNormalizer, text: &str, counts: &mut BTreeMap<String, u64>) -> Result<(), DataError> {
    let mut n = NormalizedString::from(text);
    normalizer
        .normalize(&mut n)
        .map_err(|e| DataError::new(format!("normalising a training text failed: {e}")))?;
    let mut pre = PreTokenizedString::from(n);
    BertPreTokenizer
        .pre_tokenize(&mut pre)
        .map_err(|e| DataError::new(format!("pre-tokenising a training text failed: {e}")))?;
    for (w, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
        *counts.entry(w.to_string()).or_insert(0) += 1;
    }
    Ok(())
}

/// Word counts of `texts` after uncased BERT normalisation and pre-tokenisation.
pub fn word_counts<S: AsRef<str>>(texts: &[S], lowercase: bool) -> Result<BTreeMap<String, u64>, DataError> {
    let mut counts = WordCounts::new(lowercase);
    for t in texts {
        counts.add(t.as_ref())?;
    }
    Ok(counts.into_counts())
}

/// The tokens of a vocabulary of at most `vocab_size` entries (more only when the special
/// tokens and the alphabet alone exceed it), in id order: `specials`, the alphabet (each first
/// character of a word, then each `##`-prefixed inner character, sorted), then the merges in
/// the order they were made.
pub fn train_vocab(words: &BTreeMap<String, u64>, vocab_size: usize, specials: &[&str]) -> Vec<String> {
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let mut alphabet = BTreeSet::new();
    for w in words.keys() {
        for (i, c) in w.chars().enumerate() {
            alphabet.insert(if i == 0 {
                c.to_string()
            } else {
                format!("{CONTINUATION}{c}")
            });
        }
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    for t in alphabet {
        if !specials.contains(&t.as_str()) {
            tokens.push(t);
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        ids.insert(t.clone(), i as u32);
    }

    // Words as symbol ids, with their counts.
    let mut seqs: Vec<(Vec<u32>, i64)> = words
        .iter()
        .map(|(w, &n)| {
            let syms = w
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    let t = if i == 0 {
                        c.to_string()
                    } else {
                        format!("{CONTINUATION}{c}")
                    };
                    ids[&t]
                })
                .collect();
            (syms, n as i64)
        })
        .collect();

    type Pair = (u32, u32);
    let mut counts: HashMap<Pair, i64> = HashMap::new();
    let mut users: HashMap<Pair, Vec<usize>> = HashMap::new();
    for (wi, (syms, n)) in seqs.iter().enumerate() {
        for p in syms.windows(2) {
            let pair = (p[0], p[1]);
            *counts.entry(pair).or_insert(0) += n;
            let u = users.entry(pair).or_default();
            if u.last() != Some(&wi) {
                u.push(wi);
            }
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> = counts.iter().map(|(&p, &c)| (c, Reverse(p))).collect();

    while tokens.len() < vocab_size {
        let Some((c, Reverse(pair))) = heap.pop() else { break };
        let now = counts.get(&pair).copied().unwrap_or(0);
        if now != c {
            if now > 0 {
                heap.push((now, Reverse(pair)));
            }
            continue;
        }
        if c < MIN_PAIR_COUNT {
            break;
        }
        let (a, b) = pair;
        let piece = tokens[b as usize]
            .strip_prefix(CONTINUATION)
            .unwrap_or(&tokens[b as usize]);
        let merged = format!("{}{}", tokens[a as usize], piece);
        let new_id = match ids.get(&merged) {
            Some(&id) => id,
            None => {
                let id = tokens.len() as u32;
                ids.insert(merged.clone(), id);
                tokens.push(merged);
                id
            }
        };
        let mut touched: HashSet<Pair> = HashSet::new();
        let mut word_list = users.remove(&pair).unwrap_or_default();
        word_list.sort_unstable();
        word_list.dedup();
        for wi in word_list {
            let (syms, n) = &mut seqs[wi];
            if !syms.windows(2).any(|p| (p[0], p[1]) == pair) {
                continue;
            }
            for p in syms.windows(2) {
                let q = (p[0], p[1]);
                *counts.get_mut(&q).expect("counted") -= *n;
                touched.insert(q);
            }
            let mut out = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && syms[i] == a && syms[i + 1] == b {
                    out.push(new_id);
                    i += 2;
                } else {
                    out.push(syms[i]);
                    i += 1;
                }
            }
            *syms = out;
            for p in syms.windows(2) {
                let q = (p[0], p[1]);
                *counts.entry(q).or_insert(0) += *n;
                touched.insert(q);
                if q != pair {
                    let u = users.entry(q).or_default();
                    if u.last() != Some(&wi) {
                        u.push(wi);
                    }
                }
            }
        }
        for q in touched {
            let c = counts[&q];
            if c > 0 {
                heap.push((c, Reverse(q)));
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_the_most_frequent_pairs_first() {
        let words: BTreeMap<String, u64> = [("low", 5), ("lower", 2), ("newest", 6), ("widest", 3)]
            .into_iter()
            .map(|(w, n)| (w.to_string(), n))
            .collect();
        let v = train_vocab(&words, 100, &["[UNK]"]);
        assert_eq!(v[0], "[UNK]");
        assert!(v.contains(&"l".to_string()) && v.contains(&"##o".to_string()));
        // "##e"+"##s" and "##s"+"##t" occur 9 times: the earlier-created pair wins the tie.
        let alphabet_end = v.iter().position(|t| t == "w").unwrap() + 1;
        assert_eq!(alphabet_end, 12);
        assert_eq!(v[alphabet_end], "##es");
        assert!(v.contains(&"newest".to_string()) && v.contains(&"low".to_string()));
        assert_eq!(train_vocab(&words, 100, &["[UNK]"]), v);
        let small = train_vocab(&words, alphabet_end + 2, &["[UNK]"]);
        assert_eq!(small.len(), alphabet_end + 2);
    }

    #[test]
    fn counts_use_bert_normalisation() {
        let c = word_counts(&["Café, CAFÉ!", "don't"], true).unwrap();
        let keys: Vec<&str> = c.keys().map(|s| s.as_str()).collect();
        assert_eq!(keys, ["!", "'", ",", "cafe", "don", "t"]);
        assert_eq!(c["cafe"], 2);
    }
}
