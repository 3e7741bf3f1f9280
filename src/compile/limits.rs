//! Limits on what one pipeline may build, so that a mistaken or hostile file ends in a diagnostic
//! at its source instead of exhausting memory. Every compile-time limit is defined here (the
//! longest `range` is `crate::registry::MAX_RANGE`).

use crate::value::Value;
use std::io::Read;
use std::path::Path;

/// Most stages one pipeline may have. A 1,000,000-stage sweep compiles in about 11 s and 2.4 GB.
pub const MAX_STAGES: usize = 2_000_000;

/// Most loop rounds (sweep points and `for` iterations) one pipeline may run, all loops together.
pub const MAX_LOOP_ROUNDS: usize = 2_000_000;

/// Most items one list or record may hold, counting nested items each time they appear.
pub const MAX_ITEMS: usize = 10_000_000;

/// Most bytes of text one value may hold: one string, or all the strings in a list or record.
pub const MAX_TEXT_BYTES: usize = 16 << 20;

/// Largest pipeline or module file, in bytes.
pub const MAX_SOURCE_BYTES: u64 = 16 << 20;

/// Deepest chain of function calls before recursion is reported.
pub const MAX_CALL_DEPTH: usize = 64;

/// Most characters of a swept value shown in its stages' names (`mini[t=...]`).
pub const MAX_NAME_VALUE_CHARS: usize = 100;

/// The stage and loop-round limits one compilation enforces (smaller in tests).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Most stages, [`MAX_STAGES`] by default.
    pub stages: usize,
    /// Most loop rounds, [`MAX_LOOP_ROUNDS`] by default.
    pub rounds: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            stages: MAX_STAGES,
            rounds: MAX_LOOP_ROUNDS,
        }
    }
}

/// Which size limit a value goes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// More than [`MAX_ITEMS`] items.
    Items,
    /// More than [`MAX_TEXT_BYTES`] of text.
    Text,
}

impl Over {
    /// The diagnostic's message for a value that goes over.
    pub fn message(self, what: &str) -> String {
        match self {
            Over::Items => format!("{what} would hold more than {} items", thousands(MAX_ITEMS as u64)),
            Over::Text => format!("{what} would hold more than {} of text", mib(MAX_TEXT_BYTES as u64)),
        }
    }

    /// The diagnostic's help line.
    pub fn help(self) -> String {
        match self {
            Over::Items => format!(
                "a value holds at most {} items, counting those of nested lists and records each time they \
                 appear; build smaller lists, or split the study into several pipeline files",
                thousands(MAX_ITEMS as u64)
            ),
            Over::Text => format!(
                "a value holds at most {} of text (one string, or all the strings of a list or record); \
                 use shorter strings",
                mib(MAX_TEXT_BYTES as u64)
            ),
        }
    }
}

/// What is left of the size limits while a value is measured.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    items: usize,
    text: usize,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new(MAX_ITEMS, MAX_TEXT_BYTES)
    }
}

impl Budget {
    /// A budget of `items` items and `text` bytes of text.
    pub fn new(items: usize, text: usize) -> Budget {
        Budget { items, text }
    }

    /// Takes `v` out of the budget; stops at the first limit it goes over, so the cost is bounded
    /// by the budget, not by the value (shared lists count each time they appear).
    pub fn take(&mut self, v: &Value) -> Result<(), Over> {
        match v {
            Value::Str(s) => self.text_bytes(s.len()),
            Value::List(xs) => self.items_of(xs.iter()),
            Value::Record(r) => self.items_of(r.values()),
            Value::Spec(s) => self.items_of(s.params.values()),
            _ => Ok(()),
        }
    }

    /// Takes `n` bytes of text.
    pub fn text_bytes(&mut self, n: usize) -> Result<(), Over> {
        self.text = self.text.checked_sub(n).ok_or(Over::Text)?;
        Ok(())
    }

    fn items_of<'a>(&mut self, mut xs: impl ExactSizeIterator<Item = &'a Value>) -> Result<(), Over> {
        self.items = self.items.checked_sub(xs.len()).ok_or(Over::Items)?;
        xs.try_for_each(|x| self.take(x))
    }
}

/// Checks `v` against [`MAX_ITEMS`] and [`MAX_TEXT_BYTES`].
pub fn check_size(v: &Value) -> Result<(), Over> {
    Budget::default().take(v)
}

/// The product of loop list lengths, or `None` past `usize::MAX`.
pub fn product(lengths: &[usize]) -> Option<usize> {
    lengths.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n))
}

/// Reads a source file: a regular file of at most [`MAX_SOURCE_BYTES`], in UTF-8. Devices and
/// FIFOs are refused before they are opened (reading them may never end, or block).
pub fn read_source(path: &Path) -> Result<String, SourceError> {
    let meta = std::fs::metadata(path).map_err(SourceError::Io)?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile);
    }
    if meta.len() > MAX_SOURCE_BYTES {
        return Err(SourceError::TooLarge(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(SourceError::Io)?;
    let mut bytes = Vec::new();
    // The file may have grown since its size was read.
    file.take(MAX_SOURCE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(SourceError::Io)?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(SourceError::TooLarge(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let offset = e.utf8_error().valid_up_to();
        let before = &bytes[..offset];
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        SourceError::NotUtf8 {
            byte: bytes[offset],
            offset,
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            // The bytes before `offset` are valid UTF-8.
            column: String::from_utf8_lossy(&before[line_start..]).chars().count() + 1,
        }
    })
}

/// Why a source file was not read.
#[derive(Debug)]
pub enum SourceError {
    /// The file system said no.
    Io(std::io::Error),
    /// A directory, device, FIFO or socket.
    NotAFile,
    /// Over [`MAX_SOURCE_BYTES`] (at least this many bytes).
    TooLarge(u64),
    /// Not UTF-8: where the first invalid byte is.
    NotUtf8 {
        /// The byte.
        byte: u8,
        /// Its offset in the file.
        offset: usize,
        /// Its 1-based line.
        line: usize,
        /// Its 1-based column, in characters.
        column: usize,
    },
}

impl SourceError {
    /// Whether it is a limit of rkd's rather than an error of the file system.
    pub fn is_limit(&self) -> bool {
        matches!(self, SourceError::TooLarge(_))
    }

    /// The label under the `use` that names the file.
    pub fn label(&self) -> &'static str {
        match self {
            SourceError::Io(_) => "here",
            SourceError::NotAFile => "not a regular file",
            SourceError::TooLarge(_) => "too large",
            SourceError::NotUtf8 { .. } => "not UTF-8",
        }
    }

    /// How to fix it.
    pub fn help(&self) -> &'static str {
        match self {
            SourceError::Io(_) => "check the path and its permissions",
            SourceError::NotAFile => {
                "pipelines and modules are regular `.rkd` files, not devices, FIFOs or directories"
            }
            SourceError::TooLarge(_) => "split it into several files joined with `use \"file.rkd\" as NAME`",
            SourceError::NotUtf8 { .. } => {
                "rkd reads .rkd files as UTF-8: save the file in that encoding (e.g. `iconv -f latin1 -t utf-8`)"
            }
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Io(e) => write!(f, "{e}"),
            SourceError::NotAFile => f.write_str("it is not a regular file"),
            SourceError::NotUtf8 {
                byte,
                offset,
                line,
                column,
            } => write!(
                f,
                "it is not UTF-8 text: byte 0x{byte:02X} at line {line}, column {column} (byte offset {offset}) is not valid UTF-8"
            ),
            SourceError::TooLarge(n) => write!(
                f,
                "it is {} bytes, over the limit of {}",
                thousands(*n),
                mib(MAX_SOURCE_BYTES)
            ),
        }
    }
}

/// `n` with thousands separators: `2,000,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in MiB: `16 MiB`, `32.5 MiB`.
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1u64 << 20) as f64;
    if m.fract() == 0.0 {
        format!("{m} MiB")
    } else {
        format!("{m:.1} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn ints(n: usize) -> Value {
        Value::list((0..n as i64).map(Value::Int).collect())
    }

    #[test]
    fn nested_items_count_each_time_they_appear() {
        let inner = ints(10);
        let outer = Value::list(vec![inner.clone(), inner.clone(), inner]);
        assert_eq!(Budget::new(33, 0).take(&outer), Ok(()));
        assert_eq!(Budget::new(32, 0).take(&outer), Err(Over::Items));
    }

    #[test]
    fn a_list_doubled_forty_times_is_refused_quickly() {
        let mut v = ints(1);
        for _ in 0..40 {
            v = Value::list(vec![v.clone(), v]);
        }
        assert_eq!(check_size(&v), Err(Over::Items));
    }

    #[test]
    fn strings_count_their_bytes_each_time() {
        let s = Value::Str(Arc::from("x".repeat(1000)));
        let list = Value::list(vec![s.clone(); 4]);
        assert_eq!(Budget::new(100, 4000).take(&list), Ok(()));
        assert_eq!(Budget::new(100, 3999).take(&list), Err(Over::Text));
        assert_eq!(check_size(&s), Ok(()));
    }

    #[test]
    fn devices_and_directories_are_not_read() {
        assert!(matches!(
            read_source(Path::new("/dev/zero")),
            Err(SourceError::NotAFile)
        ));
        assert!(matches!(read_source(Path::new("/")), Err(SourceError::NotAFile)));
        let missing = read_source(Path::new("/nonexistent/x.rkd")).unwrap_err();
        assert!(!missing.is_limit(), "{missing}");
    }

    #[test]
    fn a_file_that_is_not_utf8_is_refused_with_where_and_how() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.rkd");
        std::fs::write(&path, b"# caf\xc3\xa9\nlet x = \"\xff\"\n").unwrap();
        let err = read_source(&path).unwrap_err();
        assert!(!err.is_limit());
        assert_eq!(
            err.to_string(),
            "it is not UTF-8 text: byte 0xFF at line 2, column 10 (byte offset 17) is not valid UTF-8"
        );
        assert!(err.help().contains("UTF-8"), "{}", err.help());
        assert!(!err.help().contains("permissions"), "{}", err.help());
    }

    #[test]
    fn a_file_over_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.rkd");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_SOURCE_BYTES + 1).unwrap();
        let err = read_source(&path).unwrap_err();
        assert!(err.is_limit(), "{err}");
        assert_eq!(err.to_string(), "it is 16,777,217 bytes, over the limit of 16 MiB");
    }

    #[test]
    fn numbers_are_written_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(2_000_000), "2,000,000");
        assert_eq!(mib(16 << 20), "16 MiB");
        assert_eq!(mib(3 << 19), "1.5 MiB");
    }

    fn compile(src: &str, stages: usize, rounds: usize) -> super::super::Compiled {
        let caps = Caps { stages, rounds };
        super::super::compile_source_with("main.rkd", Path::new("main.rkd"), src.to_string(), caps)
    }

    fn messages(c: &super::super::Compiled) -> Vec<String> {
        c.diags
            .iter()
            .map(|d| format!("{}: {}", d.kind.name(), d.message))
            .collect()
    }

    #[test]
    fn stages_past_the_limit_are_one_diagnostic_and_stop_the_loop() {
        let c = compile(
            "sweep i in range(end: 10) {\n  stage s = exec(cmd: \"true\", params: {i: i})\n}\n\
             stage all = exec(cmd: \"true\", inputs: s)\n",
            5,
            100,
        );
        assert_eq!(
            messages(&c),
            ["limit: this call would make stage 6 of a pipeline that may have 5"]
        );
        assert_eq!(c.stages.len(), 5);
    }

    #[test]
    fn loop_rounds_count_across_nested_loops() {
        let c = compile(
            "sweep a in [1, 2, 3] {\n  for x in range(end: 6) {\n    let y = x\n  }\n}\n",
            100,
            20,
        );
        assert_eq!(
            messages(&c),
            ["limit: this `for` has 6 rounds, too many for one pipeline"]
        );
        assert!(
            c.diags[0].help.as_deref().unwrap().contains("15 ran before this one"),
            "{:?}",
            c.diags[0].help
        );
        let fits = compile(
            "sweep a in [1, 2, 3] {\n  for x in range(end: 5) {\n    let y = x\n  }\n}\n",
            100,
            18,
        );
        assert!(fits.diags.is_empty(), "{:?}", messages(&fits));
    }

    #[test]
    fn a_refused_sweep_leaves_no_follow_on_errors() {
        let c = compile(
            "sweep a in range(end: 5), b in range(end: 5) {\n  stage s = exec(cmd: \"true\", params: {a: a, b: b})\n}\n\
             stage all = exec(cmd: \"true\", inputs: s)\n",
            100,
            24,
        );
        assert_eq!(
            messages(&c),
            ["limit: this `sweep` has 25 points (5 × 5), too many for one pipeline"]
        );
    }

    #[test]
    fn values_doubled_through_rest_arguments_are_refused() {
        let mut src = String::from("fn pair(..r) { r }\nlet v0 = [1]\n");
        for i in 1..=40 {
            src.push_str(&format!("let v{i} = pair(a: v{0}, b: v{0})\n", i - 1));
        }
        let c = compile(&src, 100, 100);
        assert_eq!(
            messages(&c),
            ["limit: the record of other arguments would hold more than 10,000,000 items"]
        );
    }

    #[test]
    fn a_range_of_extreme_bounds_is_a_diagnostic_not_an_overflow() {
        let c = compile(
            "let r = range(start: -9000000000000000000, end: 9000000000000000000)\n",
            100,
            100,
        );
        assert_eq!(c.diags.len(), 1, "{:?}", messages(&c));
        assert!(
            c.diags[0].message.contains("9223372036854775807 integers"),
            "{:?}",
            messages(&c)
        );
    }

    proptest! {
        #[test]
        fn product_is_exact_or_none(lengths in proptest::collection::vec(0usize..5000, 0..6)) {
            let exact = lengths.iter().map(|&n| n as u128).product::<u128>();
            match product(&lengths) {
                Some(p) => prop_assert_eq!(p as u128, exact),
                None => prop_assert!(exact > usize::MAX as u128),
            }
        }

        #[test]
        fn a_budget_counts_every_item(n in 0usize..200, m in 0usize..20) {
            let v = Value::list(vec![ints(n); m]);
            let items = m + n * m;
            prop_assert_eq!(Budget::new(items, 0).take(&v), Ok(()));
            prop_assert_eq!(Budget::new(items.wrapping_sub(1), 0).take(&v).is_err(), items > 0);
        }
    }
}
