//! Names as terminal tables show them: on one line, at a bounded width.

/// Widest a name is shown in a table, in characters; longer names end in `…`.
pub const NAME_WIDTH: usize = 60;

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
        c if c.is_control() || is_bidi_control(c) => format!("\\u{{{:x}}}", c as u32),
        c => c.to_string(),
    }
}

/// The invisible marks that reorder the text around them.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            prop_assert!(!shown.chars().any(|c| c.is_control() || is_bidi_control(c)), "{shown:?}");
            if name.chars().count() <= NAME_WIDTH && !name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
                prop_assert_eq!(shown, name);
            }
        }
    }
}
