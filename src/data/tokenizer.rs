//! The text tokenizer: an uncased BERT WordPiece, loaded from a pretrained directory, trained on
//! a training split, or an identity vocabulary for the synthetic text sets.
//!
//! It wraps the `tokenizers` crate. [`Tokenizer::encode`] adds `[CLS]` and `[SEP]` itself (the
//! wrapped tokenizer's own truncation and padding are switched off), so every source of
//! vocabulary gives the same layout: `[CLS] pieces… [SEP]`, at most `max_len` ids.

use std::path::Path;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::AddedToken;

use super::error::DataError;
use super::wordpiece;

/// The special tokens of an uncased BERT vocabulary, in the order a new vocabulary lists them.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A WordPiece tokenizer with BERT's special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad: u32,
    unk: u32,
    cls: u32,
    sep: u32,
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> DataError {
    DataError::new(format!("{what}: {e}"))
}

/// An uncased BERT tokenizer around `model` (normaliser, pre-tokeniser, decoder).
fn bert_pipeline(model: WordPiece, lowercase: bool) -> tokenizers::Tokenizer {
    let mut tk = tokenizers::Tokenizer::new(model);
    tk.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .expect("setting a normalizer cannot fail");
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    tk.with_decoder(Some(WordPieceDecoder::default()));
    tk
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer, switching off its truncation and padding.
    pub fn from_inner(mut inner: tokenizers::Tokenizer) -> Result<Tokenizer, DataError> {
        inner
            .with_truncation(None)
            .map_err(|e| tk_err("cannot switch off truncation", e))?;
        inner.with_padding(None);
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let missing = |name: &str| DataError::new(format!("the tokenizer's vocabulary has no {name} token"));
        let pad = find(&["[PAD]", "<pad>"]).ok_or_else(|| missing("[PAD]"))?;
        let unk = find(&["[UNK]", "<unk>"]).ok_or_else(|| missing("[UNK]"))?;
        let cls = find(&["[CLS]", "<s>"]).ok_or_else(|| missing("[CLS]"))?;
        let sep = find(&["[SEP]", "</s>"]).ok_or_else(|| missing("[SEP]"))?;
        Ok(Tokenizer {
            inner,
            pad,
            unk,
            cls,
            sep,
        })
    }

    /// An uncased BERT WordPiece tokenizer from a `vocab.txt` (one token per line, id = line).
    pub fn from_vocab_txt(path: &Path, lowercase: bool) -> Result<Tokenizer, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, &e))?;
        let vocab = WordPiece::read_bytes(&bytes).map_err(|e| DataError::file(path, format!("bad vocabulary: {e}")))?;
        if vocab.is_empty() {
            return Err(DataError::file(path, "empty vocabulary"));
        }
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| DataError::file(path, format!("bad vocabulary: {e}")))?;
        Self::finish_bert(model, lowercase).map_err(|e| DataError::file(path, e.message))
    }

    /// Adds BERT's special tokens and post-processor to a WordPiece model.
    fn finish_bert(model: WordPiece, lowercase: bool) -> Result<Tokenizer, DataError> {
        let mut tk = bert_pipeline(model, lowercase);
        let present: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .filter(|t| tk.token_to_id(t).is_some())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        tk.add_special_tokens(present)
            .map_err(|e| tk_err("cannot add the special tokens", e))?;
        let tk = Tokenizer::from_inner(tk)?;
        let mut inner = tk.inner;
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), tk.sep),
            ("[CLS]".into(), tk.cls),
        )));
        Ok(Tokenizer { inner, ..tk })
    }

    /// Loads `tokenizer.json` from `dir`, else `vocab.txt` as an uncased BERT WordPiece
    /// (cased when `tokenizer_config.json` says `"do_lower_case": false`).
    pub fn from_dir(dir: &Path) -> Result<Tokenizer, DataError> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let inner = tokenizers::Tokenizer::from_file(&json)
                .map_err(|e| DataError::file(&json, format!("cannot load the tokenizer: {e}")))?;
            return Tokenizer::from_inner(inner).map_err(|e| DataError::file(&json, e.message));
        }
        let vocab = dir.join("vocab.txt");
        if vocab.is_file() {
            return Tokenizer::from_vocab_txt(&vocab, do_lower_case(dir));
        }
        let why = if dir.is_dir() {
            "no tokenizer here (expected tokenizer.json or vocab.txt)"
        } else {
            "missing tokenizer directory"
        };
        Err(DataError::file(dir, why))
    }

    /// Trains an uncased WordPiece vocabulary of at most `vocab_size` tokens (special tokens
    /// included) on `texts`; the same texts give the same vocabulary, byte for byte
    /// (see [`super::wordpiece`] for why it does not use the crate's trainer).
    pub fn train_wordpiece<S: AsRef<str>>(texts: &[S], vocab_size: usize) -> Result<Tokenizer, DataError> {
        Tokenizer::from_word_counts(&wordpiece::word_counts(texts, true)?, vocab_size)
    }

    /// Trains an uncased WordPiece vocabulary of at most `vocab_size` tokens on word counts
    /// ([`wordpiece::WordCounts`], gathered while a table is streamed).
    pub fn from_word_counts(
        words: &std::collections::BTreeMap<String, u64>,
        vocab_size: usize,
    ) -> Result<Tokenizer, DataError> {
        if words.is_empty() {
            return Err(DataError::new(
                "cannot train a vocabulary: the training texts have no words",
            ));
        }
        let tokens = wordpiece::train_vocab(words, vocab_size, &SPECIAL_TOKENS);
        Tokenizer::from_tokens(&tokens, true)
    }

    /// An uncased BERT WordPiece tokenizer whose token of id `i` is `tokens[i]`.
    fn from_tokens(tokens: &[String], lowercase: bool) -> Result<Tokenizer, DataError> {
        // `bpe::Vocab` is the token → id map type the WordPiece builder takes.
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tk_err("building the WordPiece model", e))?;
        Tokenizer::finish_bert(model, lowercase)
    }

    /// A vocabulary of exactly `vocab_size` ids: the five special tokens, then `t5`, `t6`, … so
    /// that the text `"t17 t42"` encodes to `[CLS] 17 42 [SEP]` (the synthetic text sets).
    pub fn identity(vocab_size: usize) -> Result<Tokenizer, DataError> {
        if vocab_size <= SPECIAL_TOKENS.len() {
            return Err(DataError::new(format!(
                "vocab_size {vocab_size} leaves no room beside the {} special tokens",
                SPECIAL_TOKENS.len()
            )));
        }
        let tokens: Vec<String> = SPECIAL_TOKENS
            .iter()
            .map(|t| t.to_string())
            .chain((SPECIAL_TOKENS.len()..vocab_size).map(|i| identity_token(i as u32)))
            .collect();
        Tokenizer::from_tokens(&tokens, true)
    }

    /// Number of ids (special and added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `[CLS] pieces… [SEP]`, truncated to at most `max_len` ids (`max_len` below 2 counts as 2).
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let max_len = max_len.max(2);
        let pieces = self.first_pieces(text, max_len - 2);
        let keep = pieces.len().min(max_len - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.cls);
        ids.extend_from_slice(&pieces[..keep]);
        ids.push(self.sep);
        ids
    }

    /// Sentence-pair input `[CLS] a… [SEP] b… [SEP]`, at most `max_len` ids (below 3 counts as
    /// 3), and where `b`'s segment starts (its token type is 1 from there). Too long a pair is
    /// cut from the end of the longer text, one token at a time (BERT's `longest_first`).
    pub fn encode_pair(&self, a: &str, b: &str, max_len: usize) -> (Vec<u32>, u32) {
        let max_len = max_len.max(3);
        let (mut pa, mut pb) = (self.first_pieces(a, max_len - 3), self.first_pieces(b, max_len - 3));
        while pa.len() + pb.len() > max_len - 3 {
            if pa.len() > pb.len() {
                pa.pop();
            } else {
                pb.pop();
            }
        }
        let mut ids = Vec::with_capacity(pa.len() + pb.len() + 3);
        ids.push(self.cls);
        ids.extend_from_slice(&pa);
        ids.push(self.sep);
        let start = ids.len() as u32;
        ids.extend_from_slice(&pb);
        ids.push(self.sep);
        (ids, start)
    }

    /// The WordPiece ids of `text`, at least its first `need` of them (all when it has fewer).
    ///
    /// A long text is encoded by its beginning only: every whitespace-separated word gives at
    /// least one piece, and normalisation and pre-tokenisation never join across whitespace, so
    /// the first `need` words give the same first pieces as the whole text. Should they give
    /// fewer (words that normalise to nothing), the whole text is encoded.
    fn first_pieces(&self, text: &str, need: usize) -> Vec<u32> {
        let encode = |t: &str| match self.inner.encode(t, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(_) => vec![self.unk],
        };
        // The end of the `need`-th word, if the text goes on after it.
        let mut words = 0;
        let mut in_word = false;
        let mut cut = None;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() {
                if in_word {
                    words += 1;
                    if words == need {
                        cut = Some(i);
                        break;
                    }
                }
                in_word = false;
            } else {
                in_word = true;
            }
        }
        if let Some(end) = cut {
            let pieces = encode(&text[..end]);
            if pieces.len() >= need {
                return pieces;
            }
        }
        encode(text)
    }

    /// The tokens of `ids` joined back into text (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The padding id (`[PAD]`).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The unknown-token id (`[UNK]`).
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The `[CLS]` id.
    pub fn cls_id(&self) -> u32 {
        self.cls
    }

    /// The `[SEP]` id.
    pub fn sep_id(&self) -> u32 {
        self.sep
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json` and, for a WordPiece model, `vocab.txt` into `dir` (created if
    /// needed). The bytes depend only on the vocabulary, so the files can be content-hashed.
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::file(dir, format!("cannot create it: {e}")))?;
        let json = dir.join("tokenizer.json");
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| DataError::file(&json, format!("cannot serialise the tokenizer: {e}")))?;
        std::fs::write(&json, text).map_err(|e| DataError::file(&json, format!("cannot write it: {e}")))?;
        if let ModelWrapper::WordPiece(_) = self.inner.get_model() {
            if let Some(lines) = self.vocab_lines() {
                let path = dir.join("vocab.txt");
                std::fs::write(&path, lines).map_err(|e| DataError::file(&path, format!("cannot write it: {e}")))?;
            }
        }
        Ok(())
    }

    /// The vocabulary as `vocab.txt` text (token of id i on line i), when the ids are contiguous.
    fn vocab_lines(&self) -> Option<String> {
        let vocab = self.inner.get_vocab(true);
        let mut by_id: Vec<Option<&str>> = vec![None; vocab.len()];
        for (tok, &id) in &vocab {
            *by_id.get_mut(id as usize)? = Some(tok.as_str());
        }
        let mut out = String::new();
        for tok in by_id {
            out.push_str(tok?);
            out.push('\n');
        }
        Some(out)
    }
}

/// The token string of id `i` in an [`Tokenizer::identity`] vocabulary (`i` ≥ 5).
pub fn identity_token(i: u32) -> String {
    format!("t{i}")
}

/// `tokenizer_config.json`'s `do_lower_case`, default true.
fn do_lower_case(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXTS: [&str; 6] = [
        "it 's a charming and often affecting journey",
        "unflinchingly bleak and desperate",
        "the movie is a charming , affecting film",
        "a bleak , desperate and unflinching journey",
        "Café crème is charming",
        "does n't work at all",
    ];

    #[test]
    fn trained_vocabulary_is_deterministic_and_round_trips() {
        let a = Tokenizer::train_wordpiece(&TEXTS, 120).unwrap();
        let b = Tokenizer::train_wordpiece(&TEXTS, 120).unwrap();
        assert!(a.vocab_size() <= 120 && a.vocab_size() > SPECIAL_TOKENS.len());
        assert_eq!(a.inner().get_vocab(true), b.inner().get_vocab(true));
        assert_eq!(a.token_to_id("[PAD]"), Some(0));
        let ids = a.encode("It 's a charming journey", 64);
        assert_eq!(ids[0], a.cls_id());
        assert_eq!(*ids.last().unwrap(), a.sep_id());
        assert!(a.decode(&ids).ends_with("charming journey"), "{}", a.decode(&ids));

        let dir = tempfile::tempdir().unwrap();
        a.save(dir.path()).unwrap();
        let bdir = tempfile::tempdir().unwrap();
        b.save(bdir.path()).unwrap();
        for f in ["tokenizer.json", "vocab.txt"] {
            let x = std::fs::read(dir.path().join(f)).unwrap();
            let y = std::fs::read(bdir.path().join(f)).unwrap();
            assert!(x == y, "{f} differs between two trainings on the same texts");
        }
        let reloaded = Tokenizer::from_dir(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let from_vocab = Tokenizer::from_dir(dir.path()).unwrap();
        for t in TEXTS.iter().chain(&["zzz unseen [CLS] words"]) {
            assert_eq!(reloaded.encode(t, 16), a.encode(t, 16), "{t}");
            assert_eq!(from_vocab.encode(t, 16), a.encode(t, 16), "{t}");
        }
        assert_eq!(reloaded.vocab_size(), a.vocab_size());
    }

    #[test]
    fn truncation_keeps_cls_and_sep() {
        let tk = Tokenizer::identity(50).unwrap();
        assert_eq!(tk.vocab_size(), 50);
        assert_eq!(tk.encode("t7 t8 t49", 64), vec![2, 7, 8, 49, 3]);
        assert_eq!(tk.encode("t7 t8 t49", 4), vec![2, 7, 8, 3]);
        assert_eq!(tk.encode("t7 t8 t49", 0), vec![2, 3]);
        assert_eq!(tk.encode("t50 [MASK]", 8), vec![2, 1, 4, 3]);
        assert_eq!(tk.pad_id(), 0);
        assert!(Tokenizer::identity(5).is_err());
    }

    #[test]
    fn a_pair_is_cut_from_the_longer_text_and_marks_where_the_second_starts() {
        let tk = Tokenizer::identity(50).unwrap();
        assert_eq!(tk.encode_pair("t7 t8", "t9", 16), (vec![2, 7, 8, 3, 9, 3], 4));
        // 8 ids: 5 pieces fit; the longer first text loses its tail.
        assert_eq!(
            tk.encode_pair("t10 t11 t12 t13 t14", "t20 t21", 8),
            (vec![2, 10, 11, 12, 3, 20, 21, 3], 5)
        );
        assert_eq!(
            tk.encode_pair("t10 t11", "t20 t21 t22 t23", 7),
            (vec![2, 10, 11, 3, 20, 21, 3], 4)
        );
    }

    #[test]
    fn a_long_text_cut_to_max_len_gives_the_ids_of_the_whole_text_cut() {
        let tk = Tokenizer::train_wordpiece(&TEXTS, 120).unwrap();
        let long: String = (0..300)
            .map(|i| match i % 7 {
                0 => "Café, crème!".to_string(),
                1 => "unflinchingly".to_string(),
                2 => "\u{7}\u{8}".to_string(), // control characters only: normalised away
                3 => "漢字".to_string(),
                4 => "does n't".to_string(),
                5 => "(bleak)".to_string(),
                _ => format!("w{i}"),
            })
            .collect::<Vec<_>>()
            .join(" \t ");
        for max_len in [2, 3, 5, 16, 64, 512, 4096] {
            let whole = match tk.inner().encode(long.as_str(), false) {
                Ok(e) => e.get_ids().to_vec(),
                Err(_) => panic!("encodes"),
            };
            let keep = whole.len().min(max_len.max(2) - 2);
            let mut expected = vec![tk.cls_id()];
            expected.extend_from_slice(&whole[..keep]);
            expected.push(tk.sep_id());
            assert_eq!(tk.encode(&long, max_len), expected, "max_len {max_len}");
        }
        // Pairs: longest_first on the cut texts ends where it ends on the whole ones.
        let whole = |t: &str| tk.inner().encode(t, false).unwrap().get_ids().to_vec();
        let short = "a bleak journey , desperate";
        for (a, b) in [
            (long.as_str(), short),
            (short, long.as_str()),
            (long.as_str(), long.as_str()),
        ] {
            for max_len in [3, 8, 61, 300] {
                let (mut pa, mut pb) = (whole(a), whole(b));
                while pa.len() + pb.len() > max_len - 3 {
                    if pa.len() > pb.len() {
                        pa.pop();
                    } else {
                        pb.pop();
                    }
                }
                let mut ids = vec![tk.cls_id()];
                ids.extend(&pa);
                ids.push(tk.sep_id());
                let at = ids.len() as u32;
                ids.extend(&pb);
                ids.push(tk.sep_id());
                assert_eq!(tk.encode_pair(a, b, max_len), (ids, at), "max_len {max_len}");
            }
        }
        // Words that normalise to nothing: fewer pieces than words, so the whole text is read.
        let blanks = format!("{} real words here", "\u{7} ".repeat(10));
        assert_eq!(tk.encode(&blanks, 5).len(), 5);
    }

    #[test]
    fn missing_tokenizer_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Tokenizer::from_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("expected tokenizer.json or vocab.txt"), "{e}");
        std::fs::write(dir.path().join("vocab.txt"), "a\nb\n").unwrap();
        let e = Tokenizer::from_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("vocab.txt"), "{e}");
    }

    #[test]
    fn pretrained_minilm_tokenizer() {
        let Some(dir) = crate::data::testdata::models_dir("all-MiniLM-L6-v2") else {
            return;
        };
        let tk = Tokenizer::from_dir(&dir).unwrap();
        assert_eq!(tk.vocab_size(), 30522);
        assert_eq!((tk.pad_id(), tk.unk_id(), tk.cls_id(), tk.sep_id()), (0, 100, 101, 102));
        assert_eq!(tk.encode("Hello, world!", 64), vec![101, 7592, 1010, 2088, 999, 102]);
        assert_eq!(
            tk.encode("it 's a charming journey", 64),
            vec![101, 2009, 1005, 1055, 1037, 11951, 4990, 102]
        );
        // vocab.txt alone gives the same ids.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("vocab.txt"), tmp.path().join("vocab.txt")).unwrap();
        let from_vocab = Tokenizer::from_dir(tmp.path()).unwrap();
        for t in [
            "Hello, world!",
            "does n't feel like a crème brûlée",
            "unaffected [SEP] words",
        ] {
            assert_eq!(from_vocab.encode(t, 32), tk.encode(t, 32), "{t}");
        }
    }
}
