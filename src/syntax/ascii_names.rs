//! Names are ASCII: a letter outside ASCII in the code (not in a string or comment) gets its own
//! diagnostic, at that letter, instead of the parser's confused one.

use crate::diagnostic::{Diag, Kind};
use crate::source::{FileId, Span};

/// The characters of `text[..upto]` outside strings and comments, with their byte positions.
pub(super) fn code_chars(text: &str, upto: usize) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut in_string = false;
    let mut in_comment = false;
    let mut escaped = false;
    text[..upto].char_indices().filter(move |&(_, c)| {
        if in_comment {
            in_comment = c != '\n';
            return false;
        }
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' | '\n' => in_string = false,
                _ => {}
            }
            return false;
        }
        match c {
            '#' => in_comment = true,
            '"' => in_string = true,
            _ => {}
        }
        true
    })
}

/// A letter or digit that could be meant as part of a name but is not ASCII.
fn is_foreign_letter(c: char) -> bool {
    !c.is_ascii() && c.is_alphanumeric()
}

/// The first non-ASCII letter in the code, and `text` with every such letter replaced by as many
/// `_` as it has bytes (so that the rest of the file parses as if the names were ASCII, at the
/// same byte positions).
pub(super) fn first_foreign_letter(text: &str) -> Option<(usize, String)> {
    let mut first = None;
    let mut ascii = text.to_string();
    for (i, c) in code_chars(text, text.len()).filter(|&(_, c)| is_foreign_letter(c)) {
        first.get_or_insert(i);
        ascii.replace_range(i..i + c.len_utf8(), &"_".repeat(c.len_utf8()));
    }
    first.map(|i| (i, ascii))
}

/// Longest name quoted in the message; a longer one is described, not quoted.
const MAX_QUOTED: usize = 40;

/// The diagnostic for the non-ASCII letter at byte `at`: the message names the word it is in,
/// the help suggests an ASCII spelling where accents are all that is wrong.
pub(super) fn foreign_letter_diag(file: FileId, text: &str, at: usize) -> Diag {
    let c = text[at..].chars().next().expect("a letter at `at`");
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let start = text[..at]
        .char_indices()
        .rev()
        .take_while(|&(_, c)| is_word(c))
        .last()
        .map_or(at, |(i, _)| i);
    let end = text[at..].find(|c: char| !is_word(c)).map_or(text.len(), |i| at + i);
    let word = &text[start..end];
    let message = if word.chars().count() <= MAX_QUOTED {
        format!("syntax error: `{c}` in the name `{word}`: names are ASCII letters, digits and `_`")
    } else {
        format!("syntax error: `{c}` in a name: names are ASCII letters, digits and `_`")
    };
    let spelled: Option<String> = word.chars().map(ascii_spelling).collect();
    let help = match spelled {
        Some(s) if word.chars().count() <= MAX_QUOTED => format!("spell it in ASCII, e.g. `{s}`"),
        _ => "rename it with ASCII letters, digits and `_`; other text can go in strings and comments".into(),
    };
    Diag::new(Kind::Syntax, Span::new(file, at, at + c.len_utf8()), message)
        .label("not an ASCII letter")
        .help(help)
}

/// `c` itself when it is ASCII, else its ASCII spelling when it is a Latin letter with an accent
/// (or a ligature); `None` for anything else.
fn ascii_spelling(c: char) -> Option<String> {
    if c.is_ascii() {
        return Some(c.to_string());
    }
    let s = match c {
        'à'..='å' | 'ā' | 'ă' | 'ą' => "a",
        'À'..='Å' | 'Ā' | 'Ă' | 'Ą' => "A",
        'æ' => "ae",
        'Æ' => "AE",
        'ç' | 'ć' | 'č' => "c",
        'Ç' | 'Ć' | 'Č' => "C",
        'ď' | 'đ' => "d",
        'Ď' | 'Đ' => "D",
        'è'..='ë' | 'ē' | 'ę' | 'ě' => "e",
        'È'..='Ë' | 'Ē' | 'Ę' | 'Ě' => "E",
        'ğ' => "g",
        'Ğ' => "G",
        'ì'..='ï' | 'ī' | 'ı' => "i",
        'Ì'..='Ï' | 'Ī' | 'İ' => "I",
        'ł' | 'ľ' => "l",
        'Ł' | 'Ľ' => "L",
        'ñ' | 'ń' | 'ň' => "n",
        'Ñ' | 'Ń' | 'Ň' => "N",
        'ò'..='ö' | 'ø' | 'ō' | 'ő' => "o",
        'Ò'..='Ö' | 'Ø' | 'Ō' | 'Ő' => "O",
        'œ' => "oe",
        'Œ' => "OE",
        'ř' => "r",
        'Ř' => "R",
        'ś' | 'š' | 'ş' => "s",
        'Ś' | 'Š' | 'Ş' => "S",
        'ß' => "ss",
        'ť' | 'ţ' => "t",
        'Ť' | 'Ţ' => "T",
        'ù'..='ü' | 'ū' | 'ů' | 'ű' => "u",
        'Ù'..='Ü' | 'Ū' | 'Ů' | 'Ű' => "U",
        'ý' | 'ÿ' => "y",
        'Ý' | 'Ÿ' => "Y",
        'ź' | 'ż' | 'ž' => "z",
        'Ź' | 'Ż' | 'Ž' => "Z",
        _ => return None,
    };
    Some(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_in_strings_and_comments_are_not_names() {
        assert!(first_foreign_letter("let s = \"données\" # modèle\nlet t = \"\\\"é\"").is_none());
    }

    #[test]
    fn the_first_letter_in_code_is_found_and_replaced() {
        let (at, ascii) = first_foreign_letter("# é\nlet données = \"é\"").unwrap();
        assert_eq!(at, 13);
        assert_eq!(ascii, "# é\nlet donn__es = \"é\"");
    }

    #[test]
    fn accents_are_spelled_out_other_scripts_are_not() {
        let d = foreign_letter_diag(FileId(0), "let données = 1", 8);
        assert_eq!(d.help.as_deref(), Some("spell it in ASCII, e.g. `donnees`"));
        let d = foreign_letter_diag(FileId(0), "stage 模型 = 1", 6);
        assert!(d.message.contains("`模型`"), "{}", d.message);
        assert!(d.help.unwrap().starts_with("rename it"));
    }
}
