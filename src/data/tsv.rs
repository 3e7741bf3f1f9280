//! GLUE TSV files (SST-2): a `sentence<TAB>label` header, then one example per line.
//!
//! Exactly as GLUE ships them: no quoting or escaping, so each line is split at its *last* tab
//! (a sentence may contain tabs in principle; a label never does), and the one space GLUE leaves
//! before the tab is trimmed. Labels are `0` (negative) or `1` (positive).

use std::path::Path;

use super::error::DataError;

/// The class names of SST-2, indexed by label.
pub const SST2_CLASSES: [&str; 2] = ["negative", "positive"];

/// One labelled sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsvRow {
    /// The sentence, trailing whitespace trimmed.
    pub sentence: String,
    /// The label, `0` or `1`.
    pub label: u32,
}

/// Reads a GLUE `sentence<TAB>label` file; errors name the file and line.
pub fn read_glue_tsv(path: &Path) -> Result<Vec<TsvRow>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, &e))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..upto].iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(DataError::at(path, line, "not valid UTF-8 text"));
        }
    };
    parse_glue_tsv(&text, path)
}

/// Parses the text of a GLUE `sentence<TAB>label` file; `path` is only used in errors.
pub fn parse_glue_tsv(text: &str, path: &Path) -> Result<Vec<TsvRow>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)));
    match lines.next() {
        Some((_, header)) if header.split('\t').map(str::trim).eq(["sentence", "label"]) => {}
        Some((n, header)) if !header.is_empty() => {
            return Err(DataError::at(
                path,
                n,
                format!("expected the header `sentence<TAB>label`, found `{}`", shorten(header)),
            ))
        }
        _ => {
            return Err(DataError::file(
                path,
                "empty file (expected a `sentence<TAB>label` header and rows)",
            ))
        }
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let Some((sentence, label)) = line.rsplit_once('\t') else {
            return Err(DataError::at(
                path,
                n,
                format!("malformed row (no tab between sentence and label): `{}`", shorten(line)),
            ));
        };
        let label = match label.trim() {
            "0" => 0,
            "1" => 1,
            other => {
                return Err(DataError::at(
                    path,
                    n,
                    format!("label `{}` is not 0 (negative) or 1 (positive)", shorten(other)),
                ))
            }
        };
        rows.push(TsvRow {
            sentence: sentence.trim_end().to_string(),
            label,
        });
    }
    if rows.is_empty() {
        return Err(DataError::file(path, "empty split: the file has a header but no rows"));
    }
    Ok(rows)
}

/// At most 60 characters of `s`, for error messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The files `glue_sst2` reads: training, then validation.
pub const SST2_FILES: [&str; 2] = ["train.tsv", "dev.tsv"];

/// The training and validation rows of a GLUE SST-2 directory (`train.tsv`, `dev.tsv`).
pub fn read_sst2_dir(dir: &Path) -> Result<(Vec<TsvRow>, Vec<TsvRow>), DataError> {
    DataError::unless_dir(dir, "glue_sst2 expects a directory with train.tsv and dev.tsv")?;
    let [train, dev] = SST2_FILES.map(|f| dir.join(f));
    let train = read_glue_tsv(&train)?;
    let dev = read_glue_tsv(&dev)?;
    Ok((train, dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<TsvRow>, DataError> {
        parse_glue_tsv(text, Path::new("t.tsv"))
    }

    #[test]
    fn splits_at_last_tab_and_trims_the_trailing_space() {
        let rows = parse("sentence\tlabel\nit 's a charming journey \t1\na\tb c \t0\r\n\nlast\t1").unwrap();
        assert_eq!(
            rows,
            vec![
                TsvRow {
                    sentence: "it 's a charming journey".into(),
                    label: 1
                },
                TsvRow {
                    sentence: "a\tb c".into(),
                    label: 0
                },
                TsvRow {
                    sentence: "last".into(),
                    label: 1
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("sentence\tlabel\nfine \t0\nno tab here 1\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().starts_with("t.tsv:3: malformed row"), "{e}");
        let e = parse("sentence\tlabel\nfine \t0\nbad label \t2\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().contains("label `2` is not 0"), "{e}");
        let e = parse("text\tgold\nx\t1\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.to_string().contains("expected the header"), "{e}");
        let e = parse("sentence\tlabel\n").unwrap_err();
        assert!(e.to_string().contains("empty split"), "{e}");
        assert!(parse("").unwrap_err().to_string().contains("empty file"));
    }

    #[test]
    fn missing_and_non_utf8_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_sst2_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("train.tsv: missing file"), "{e}");
        std::fs::write(dir.path().join("train.tsv"), "sentence\tlabel\nok \t1\n").unwrap();
        let e = read_sst2_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("dev.tsv: missing file"), "{e}");
        std::fs::write(dir.path().join("dev.tsv"), b"sentence\tlabel\nok \t1\nbad \xff\t0\n").unwrap();
        let e = read_sst2_dir(dir.path()).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().contains("UTF-8"), "{e}");
        let e = read_sst2_dir(&dir.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("missing directory"), "{e}");
    }
}
