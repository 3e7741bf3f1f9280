//! Text from users' files as the terminal shows it: names in tables (on one line, at a bounded
//! width), messages and quoted sources (control characters escaped).

/// Widest a name is shown in a table, in characters; longer names end in `…`.
pub const NAME_WIDTH: usize = 60;

/// A metric's value in a table: whole numbers (counts, bytes, epochs) without decimals, others
/// with four.
pub fn metric_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// `name` for one table cell: control characters escaped (`\n`, `\t`, `\u{1b}`) and cut to
/// [`NAME_WIDTH`] characters, the last of them `…`. Only the first few hundred bytes are read.
pub fn cell(name: &str) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for c in name.chars() {
        let piece = escape(c);
        shown += piece.chars().count();
        if shown > NAME_WIDTH {
            let keep: String = out.chars().take(NAME_WIDTH - 1).collect();
            return keep + "…";
        }
        out.push_str(&piece);
    }
    out
}

/// `text` with control characters escaped except its line breaks and tabs: for a whole message
/// that may span lines, so that text it quotes cannot move the cursor or restyle the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let shown = |c: char| c == '\n' || c == '\t' || !hidden(c);
    if text.chars().all(shown) {
        return text.into();
    }
    text.chars()
        .map(|c| if shown(c) { c.to_string() } else { escape(c) })
        .collect::<String>()
        .into()
}

/// A source file's text as a diagnostic quotes it: control characters escaped as in
/// [`printable`], and `\r` too unless it ends a line (`\r\n`); with the byte offsets mapped.
pub struct ShownSource {
    /// The text to show.
    pub text: String,
    /// (offset in the original text just past an escaped character, bytes added up to there).
    shifts: Vec<(usize, usize)>,
}

impl ShownSource {
    /// The shown text of `text`; `None` when it has nothing to escape (show it as it is).
    pub fn of(text: &str) -> Option<ShownSource> {
        let bytes = text.as_bytes();
        let escaped = |i: usize, c: char| match c {
            '\n' | '\t' => false,
            '\r' => bytes.get(i + 1) != Some(&b'\n'),
            c => hidden(c),
        };
        if !text.char_indices().any(|(i, c)| escaped(i, c)) {
            return None;
        }
        let mut shown = ShownSource {
            text: String::with_capacity(text.len() + 16),
            shifts: Vec::new(),
        };
        let mut added = 0;
        for (i, c) in text.char_indices() {
            if escaped(i, c) {
                let piece = escape(c);
                added += piece.len() - c.len_utf8();
                shown.text.push_str(&piece);
                shown.shifts.push((i + c.len_utf8(), added));
            } else {
                shown.text.push(c);
            }
        }
        Some(shown)
    }

    /// Where byte `at` of the original text is in the shown text.
    pub fn at(&self, at: usize) -> usize {
        let before = self.shifts.partition_point(|&(end, _)| end <= at);
        at + before.checked_sub(1).map_or(0, |i| self.shifts[i].1)
    }
}

/// `word` as a shell reads it back: as it is when it holds nothing a shell treats specially
/// (`runs/p.rkd`), else [`shell_quoted`].
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-+:,@%=".contains(c));
    if plain {
        word.to_string()
    } else {
        shell_quoted(word)
    }
}

/// `name` quoted for a POSIX shell, whole, so that it can be copied into a command line:
/// `'head[n=it'\''s]'`; with control characters in it, ANSI-C quoted (`$'a\x1bb'`, which bash
/// and zsh read).
pub fn shell_quoted(name: &str) -> String {
    if !name.chars().any(hidden) {
        return format!("'{}'", name.replace('\'', "'\\''"));
    }
    let mut out = String::from("$'");
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A sweep point's name, `tuned[t=2.0,a=0.5]`, as its stage name and coordinates (`tuned`,
/// `[(t, 2.0), (a, 0.5)]`); `None` for any other name (`chain/step[1]`).
pub fn sweep_point(name: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let inner = name.strip_suffix(']')?;
    let open = inner.rfind('[')?;
    let coords = inner[open + 1..]
        .split(',')
        .map(|kv| kv.split_once('='))
        .collect::<Option<Vec<_>>>()?;
    (open > 0).then(|| (&inner[..open], coords))
}

/// The width of the widest cell, at least the header's.
pub fn width<'a>(cells: impl Iterator<Item = &'a String>, header: &str) -> usize {
    cells
        .map(|c| c.chars().count())
        .fold(header.chars().count(), usize::max)
}

/// One character as it is shown: itself, or an escape for characters that move the cursor,
/// change the terminal's state or reorder text (bidirectional overrides).
fn escape(c: char) -> String {
    match c {
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        c if hidden(c) => format!("\\u{{{:x}}}", c as u32),
        c => c.to_string(),
    }
}

/// Whether a character is never shown as it is: a control character (it moves the cursor or
/// changes the terminal's state) or one of the invisible marks that reorder the text around it.
fn hidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_shell_word_is_quoted_only_when_a_shell_would_split_or_expand_it() {
        assert_eq!(shell_word("unb/c/c.rkd"), "unb/c/c.rkd");
        assert_eq!(shell_word("ü ñ/ü ñ.rkd"), "'ü ñ/ü ñ.rkd'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn short_plain_names_are_unchanged() {
        assert_eq!(cell("mini[t=2.0,a=0.5]"), "mini[t=2.0,a=0.5]");
        assert_eq!(cell("chain/step[1] (= tuned[t=4.0])"), "chain/step[1] (= tuned[t=4.0])");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(cell("e[s=a\nb]"), "e[s=a\\nb]");
        assert_eq!(cell("a\tb\r\u{1b}[31m"), "a\\tb\\r\\u{1b}[31m");
        assert_eq!(cell("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn quoted_text_is_escaped_but_not_cut() {
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed("plain")));
        assert_eq!(printable(&"s".repeat(100)), "s".repeat(100));
        assert_eq!(printable("line 1\n\tline 2\r\u{1b}"), "line 1\n\tline 2\\r\\u{1b}");
    }

    #[test]
    fn a_quoted_source_escapes_control_characters_and_maps_offsets() {
        assert!(ShownSource::of("let a = 1\r\n\tb\n").is_none());
        let text = "x = \"a\u{1b}[2Jb\"\ry";
        let shown = ShownSource::of(text).unwrap();
        assert_eq!(shown.text, "x = \"a\\u{1b}[2Jb\"\\ry");
        for (i, _) in text.char_indices() {
            let c = &text[i..i + 1];
            if c != "\u{1b}" && c != "\r" {
                assert_eq!(&shown.text[shown.at(i)..shown.at(i) + 1], c, "at {i}");
            }
        }
        assert_eq!(shown.at(text.len()), shown.text.len());
    }

    #[test]
    fn shell_quoting_keeps_the_whole_name() {
        let long = format!("head[n={}]", "v".repeat(80));
        assert_eq!(shell_quoted(&long), format!("'{long}'"));
        assert_eq!(shell_quoted("a[s=it's]"), "'a[s=it'\\''s]'");
        assert_eq!(shell_quoted("a[s=x\ny\\'\u{202e}]"), "$'a[s=x\\x0ay\\\\\\'\\u202e]'");
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        let long = "s".repeat(65_536);
        let shown = cell(&long);
        assert_eq!(shown.chars().count(), NAME_WIDTH);
        assert!(shown.ends_with('…'), "{shown}");
        assert_eq!(cell(&"s".repeat(NAME_WIDTH)), "s".repeat(NAME_WIDTH));
    }

    #[test]
    fn width_is_at_least_the_header() {
        let cells = ["ab".to_string(), "abcdefg".to_string()];
        assert_eq!(width(cells.iter(), "STAGE"), 7);
        assert_eq!(width(cells[..1].iter(), "STAGE"), 5);
    }

    proptest! {
        #[test]
        fn a_cell_is_one_line_of_bounded_width(name in any::<String>()) {
            let shown = cell(&name);
            prop_assert!(shown.chars().count() <= NAME_WIDTH);
            prop_assert!(!shown.chars().any(hidden), "{shown:?}");
            if name.chars().count() <= NAME_WIDTH && !name.chars().any(hidden) {
                prop_assert_eq!(shown, name);
            }
        }
    }
}
