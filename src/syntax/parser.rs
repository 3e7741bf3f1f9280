//! The pest parser and the conversion of its parse tree into the AST.

use super::ascii_names::{code_chars, first_foreign_letter, foreign_letter_diag};
use super::ast::*;
use crate::diagnostic::{Diag, Kind};
use crate::source::{FileId, Span};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/rkd.pest"]
struct RkdParser;

/// Deepest bracket nesting accepted; deeper input is rejected before parsing
/// so that a pathological file cannot overflow the parser's stack.
const MAX_NESTING: usize = 128;

/// Parses one file into its AST, or returns the syntax error.
pub fn parse(file: FileId, text: &str) -> Result<Module, Diag> {
    check_nesting(file, text)?;
    let mut pairs = RkdParser::parse(Rule::file, text)
        .map_err(|e| non_ascii_name(file, text).unwrap_or_else(|| syntax_error(file, text, e)))?;
    let root = pairs.next().expect("the file rule always yields one pair");
    check_depth(file, root.clone())?;
    let b = Builder { file };
    let items = root
        .into_inner()
        .filter(|p| p.as_rule() != Rule::EOI)
        .map(|p| b.item(p))
        .collect();
    Ok(Module { items })
}

/// The error for a name with a letter outside ASCII, when that is the first problem: the file
/// with those letters replaced parses, or fails only further on.
fn non_ascii_name(file: FileId, text: &str) -> Option<Diag> {
    let (at, ascii) = first_foreign_letter(text)?;
    match RkdParser::parse(Rule::file, &ascii) {
        // Before `at` the two texts are the same, so the position is one in `text` too.
        Err(e) if matches!(e.location, pest::error::InputLocation::Pos(p) if p < at) => {
            Some(syntax_error(file, text, e))
        }
        _ => Some(foreign_letter_diag(file, text, at)),
    }
}

fn check_nesting(file: FileId, text: &str) -> Result<(), Diag> {
    match bracket_stack(text, text.len(), MAX_NESTING) {
        Ok(_) => Ok(()),
        Err(i) => Err(
            Diag::new(Kind::Syntax, Span::new(file, i, i + 1), "nesting is too deep")
                .label(format!("more than {MAX_NESTING} open brackets"))
                .help("split the expression into `let` bindings"),
        ),
    }
}

/// Deepest syntax tree accepted, counting each operator, index, field access and minus of a
/// chain as one level (evaluation recurses once per level).
const MAX_DEPTH: usize = 2000;

fn check_depth(file: FileId, root: Pair<Rule>) -> Result<(), Diag> {
    let mut stack = vec![(root, 0usize)];
    while let Some((pair, depth)) = stack.pop() {
        let children: Vec<Pair<Rule>> = pair.clone().into_inner().collect();
        let weight = match pair.as_rule() {
            // Operands alternate with operators.
            Rule::expr | Rule::product => children.len().div_ceil(2),
            Rule::postfixed | Rule::unary => children.len().max(1),
            _ => 1,
        };
        let depth = depth + weight;
        if depth > MAX_DEPTH {
            let s = pair.as_span();
            return Err(Diag::new(
                Kind::Syntax,
                Span::new(file, s.start(), s.end()),
                "expression is too long or too deeply nested",
            )
            .label(format!("more than {MAX_DEPTH} levels"))
            .help("split it into several `let` bindings"));
        }
        stack.extend(children.into_iter().map(|c| (c, depth)));
    }
    Ok(())
}

/// The brackets still open at byte `upto` (position and character), skipping strings and
/// comments; `Err(position)` where the nesting first exceeds `max`.
fn bracket_stack(text: &str, upto: usize, max: usize) -> Result<Vec<(usize, char)>, usize> {
    let mut stack = Vec::new();
    for (i, c) in code_chars(text, upto) {
        match c {
            '(' | '[' | '{' => {
                stack.push((i, c));
                if stack.len() > max {
                    return Err(i);
                }
            }
            ')' | ']' | '}' => {
                stack.pop();
            }
            _ => {}
        }
    }
    Ok(stack)
}

fn describe(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::ident | Rule::path => "a name",
        Rule::expr | Rule::product | Rule::unary | Rule::postfixed | Rule::primary => "an expression",
        Rule::use_item | Rule::kw_use => "`use`",
        Rule::let_item | Rule::kw_let => "`let`",
        Rule::stage_item | Rule::kw_stage => "`stage`",
        Rule::fn_item | Rule::kw_fn => "`fn`",
        Rule::sweep_item | Rule::kw_sweep => "`sweep`",
        Rule::for_item | Rule::kw_for => "`for`",
        Rule::kw_in => "`in`",
        Rule::kw_as => "`as`",
        Rule::string => "a string",
        Rule::int | Rule::float => "a number",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::index => "`[`",
        Rule::field => "`.`",
        Rule::arg => "an argument",
        Rule::entry => "a record field",
        Rule::fn_param => "a parameter",
        Rule::block | Rule::fn_body => "`{`",
        Rule::use_group => "`{`",
        Rule::sweep_var => "a sweep variable",
        _ => return None,
    })
}

fn syntax_error(file: FileId, text: &str, e: pest::error::Error<Rule>) -> Diag {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    // Point at the offending character (or the end of the file).
    let end = if end > start {
        end
    } else {
        text[start..].chars().next().map_or(start, |c| start + c.len_utf8())
    };
    let found = match text[start..].chars().next() {
        None => "end of file".to_string(),
        Some(c) if c.is_whitespace() => "a line break or space".to_string(),
        Some(_) => {
            let word: String = text[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if word.is_empty() {
                format!("`{}`", &text[start..end])
            } else {
                format!("`{word}`")
            }
        }
    };
    let (message, label) = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut expected: Vec<&str> = positives.iter().filter_map(describe).collect();
            expected.sort();
            expected.dedup();
            let label = match expected.len() {
                0 => "unexpected here".to_string(),
                1 => format!("expected {}", expected[0]),
                _ => {
                    let (last, rest) = expected.split_last().unwrap();
                    format!("expected {} or {}", rest.join(", "), last)
                }
            };
            (format!("syntax error: unexpected {found}"), label)
        }
        ErrorVariant::CustomError { message } => (format!("syntax error: {message}"), message.clone()),
    };
    let mut d = Diag::new(Kind::Syntax, Span::new(file, start, end), message).label(label);
    let unclosed = bracket_stack(text, start, usize::MAX).unwrap_or_default();
    let item_start = ["`use`", "`let`", "`stage`", "`fn`", "`sweep`", "`for`"].contains(&found.as_str());
    if let (Some(&(at, open)), true) = (unclosed.last(), item_start || found == "end of file") {
        let close = match open {
            '(' => ')',
            '[' => ']',
            _ => '}',
        };
        d = d
            .note(Span::new(file, at, at + 1), format!("this `{open}` is never closed"))
            .help(format!("add the missing `{close}`"));
    } else if text[..start].trim_end().ends_with(',') && found == "`)`" {
        d = d.help("remove the trailing comma or add the missing argument");
    } else if text[start..].starts_with('=')
        && !text[start..].starts_with("==")
        && unclosed.last().is_some_and(|&(_, c)| c == '(')
    {
        d = d.help("arguments are written `name: value`, with a colon (`lr: 1e-3`, not `lr = 1e-3`)");
    } else if text[start..].starts_with('\'') {
        d = d.help("strings use double quotes: \"like this\"");
    } else if unclosed.last().is_some_and(|&(_, c)| c == '(' || c == '[')
        && found.starts_with('`')
        && found
            .chars()
            .nth(1)
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"')
        && text[..start]
            .trim_end()
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, ')' | ']' | '"' | '}'))
    {
        d = d.help("items are separated by commas: is one missing before this?");
    } else if found.starts_with("`use`") || found.starts_with("`let`") || found.starts_with("`stage`") {
        d = d.help("each item starts on its own; check the item before this one is complete");
    }
    d
}

struct Builder {
    file: FileId,
}

impl Builder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn item(&self, p: Pair<Rule>) -> Item {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::use_item => {
                let inner = p.into_inner().nth(1).expect("use has a body");
                match inner.as_rule() {
                    Rule::use_file => {
                        let mut it = inner.into_inner();
                        let s = it.next().unwrap();
                        let path_span = self.span(&s);
                        let path = unescape(s.into_inner().next().unwrap().as_str());
                        let alias = self.ident(it.nth(1).unwrap());
                        Item::Use(Use::File { path, path_span, alias })
                    }
                    _ => {
                        let mut path = Vec::new();
                        let mut group = None;
                        for q in inner.into_inner() {
                            match q.as_rule() {
                                Rule::ident => path.push(self.ident(q)),
                                _ => group = Some(q.into_inner().map(|i| self.ident(i)).collect()),
                            }
                        }
                        Item::Use(Use::Std { path, group, span })
                    }
                }
            }
            Rule::let_item | Rule::stage_item => {
                let is_stage = p.as_rule() == Rule::stage_item;
                let mut it = p.into_inner().skip(1);
                let name = self.ident(it.next().unwrap());
                let value = self.expr(it.next().unwrap());
                let b = Binding { name, value, span };
                if is_stage {
                    Item::Stage(b)
                } else {
                    Item::Let(b)
                }
            }
            Rule::fn_item => {
                let mut it = p.into_inner().skip(1);
                let name = self.ident(it.next().unwrap());
                let mut params = Vec::new();
                let mut rest = None;
                let mut body = Vec::new();
                let mut result = None;
                for q in it {
                    match q.as_rule() {
                        Rule::fn_param => {
                            let mut pi = q.into_inner();
                            let first = pi.next().unwrap();
                            if first.as_rule() == Rule::rest_param {
                                rest = Some(self.ident(first.into_inner().next().unwrap()));
                            } else {
                                params.push(Param {
                                    name: self.ident(first),
                                    default: pi.next().map(|e| self.expr(e)),
                                });
                            }
                        }
                        Rule::fn_body => {
                            for b in q.into_inner() {
                                if b.as_rule() == Rule::expr {
                                    result = Some(self.expr(b));
                                } else {
                                    body.push(self.item(b));
                                }
                            }
                        }
                        _ => unreachable!("unexpected {:?} in fn", q.as_rule()),
                    }
                }
                Item::Fn(FnDef {
                    name,
                    params,
                    rest,
                    body,
                    result: result.expect("fn body ends with an expression"),
                    span,
                })
            }
            Rule::sweep_item => {
                let mut vars = Vec::new();
                let mut body = Vec::new();
                let mut header = span;
                for q in p.into_inner().skip(1) {
                    match q.as_rule() {
                        Rule::sweep_var => {
                            header = header.to(self.span(&q));
                            let mut vi = q.into_inner();
                            let name = self.ident(vi.next().unwrap());
                            let list = self.expr(vi.nth(1).unwrap());
                            vars.push((name, list));
                        }
                        _ => body = self.block(q),
                    }
                }
                header.end = vars.last().map_or(header.end, |(_, e)| e.span.end);
                Item::Sweep(Sweep {
                    vars,
                    body,
                    span: header,
                })
            }
            Rule::for_item => {
                let mut it = p.into_inner().skip(1);
                let var = self.ident(it.next().unwrap());
                let list = self.expr(it.nth(1).unwrap());
                let body = self.block(it.next().unwrap());
                let header = Span {
                    end: list.span.end,
                    ..span
                };
                Item::For(For {
                    var,
                    list,
                    body,
                    span: header,
                })
            }
            r => unreachable!("unexpected item rule {r:?}"),
        }
    }

    fn block(&self, p: Pair<Rule>) -> Vec<Item> {
        p.into_inner().map(|i| self.item(i)).collect()
    }

    fn expr(&self, p: Pair<Rule>) -> Expr {
        match p.as_rule() {
            Rule::expr | Rule::product => {
                let mut it = p.into_inner();
                let mut lhs = self.expr(it.next().unwrap());
                while let Some(op) = it.next() {
                    let rhs = self.expr(it.next().unwrap());
                    let op = match op.as_str() {
                        "+" => BinOp::Add,
                        "-" => BinOp::Sub,
                        "*" => BinOp::Mul,
                        _ => BinOp::Div,
                    };
                    let span = lhs.span.to(rhs.span);
                    lhs = Expr {
                        kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                        span,
                    };
                }
                lhs
            }
            Rule::unary => {
                let span = self.span(&p);
                let mut negs = 0;
                let mut operand = None;
                for q in p.into_inner() {
                    if q.as_rule() == Rule::neg {
                        negs += 1;
                    } else {
                        operand = Some(self.expr(q));
                    }
                }
                let mut e = operand.unwrap();
                for _ in 0..negs {
                    e = match e.kind {
                        ExprKind::Int(i) if i != i64::MIN => Expr {
                            kind: ExprKind::Int(-i),
                            span,
                        },
                        ExprKind::BigInt(ref digits) if *digits == i64::MIN.unsigned_abs().to_string() => Expr {
                            kind: ExprKind::Int(i64::MIN),
                            span,
                        },
                        ExprKind::Float(f) => Expr {
                            kind: ExprKind::Float(-f),
                            span,
                        },
                        _ => Expr {
                            kind: ExprKind::Neg(Box::new(e)),
                            span,
                        },
                    };
                }
                e
            }
            Rule::postfixed => {
                let mut it = p.into_inner();
                let mut e = self.expr(it.next().unwrap());
                for q in it {
                    let qs = self.span(&q);
                    let span = e.span.to(qs);
                    e = match q.as_rule() {
                        Rule::index => {
                            let i = self.expr(q.into_inner().next().unwrap());
                            Expr {
                                kind: ExprKind::Index(Box::new(e), Box::new(i)),
                                span,
                            }
                        }
                        _ => {
                            let f = self.ident(q.into_inner().next().unwrap());
                            Expr {
                                kind: ExprKind::Field(Box::new(e), f),
                                span,
                            }
                        }
                    };
                }
                e
            }
            Rule::primary => {
                let inner = p.into_inner().next().unwrap();
                self.expr(inner)
            }
            Rule::call => {
                let span = self.span(&p);
                let mut it = p.into_inner();
                let callee = self.path(it.next().unwrap());
                let args = it
                    .map(|a| {
                        let mut ai = a.into_inner();
                        let first = ai.next().unwrap();
                        match first.as_rule() {
                            Rule::spread => Arg::Spread(self.expr(first.into_inner().next().unwrap())),
                            Rule::ident => Arg::Named(self.ident(first), self.expr(ai.next().unwrap())),
                            _ => Arg::Positional(self.expr(first)),
                        }
                    })
                    .collect();
                Expr {
                    kind: ExprKind::Call { callee, args },
                    span,
                }
            }
            Rule::path => {
                let span = self.span(&p);
                Expr {
                    kind: ExprKind::Path(self.path(p)),
                    span,
                }
            }
            Rule::list => {
                let span = self.span(&p);
                Expr {
                    kind: ExprKind::List(p.into_inner().map(|e| self.expr(e)).collect()),
                    span,
                }
            }
            Rule::record => {
                let span = self.span(&p);
                let entries = p
                    .into_inner()
                    .map(|en| {
                        let mut ei = en.into_inner();
                        let k = self.ident(ei.next().unwrap());
                        (k, self.expr(ei.next().unwrap()))
                    })
                    .collect();
                Expr {
                    kind: ExprKind::Record(entries),
                    span,
                }
            }
            Rule::int => self.number(p),
            Rule::float => {
                let span = self.span(&p);
                let text = p.as_str().replace('_', "");
                Expr {
                    kind: ExprKind::Float(text.parse().unwrap_or(f64::INFINITY)),
                    span,
                }
            }
            Rule::string => {
                let span = self.span(&p);
                Expr {
                    kind: ExprKind::Str(unescape(p.into_inner().next().unwrap().as_str())),
                    span,
                }
            }
            Rule::boolean => Expr {
                span: self.span(&p),
                kind: ExprKind::Bool(p.as_str() == "true"),
            },
            r => unreachable!("unexpected expression rule {r:?}"),
        }
    }

    fn number(&self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        let text = p.as_str().replace('_', "");
        // An integer too large for i64 is reported where it is evaluated (as out of range, not as
        // a float); `-9223372036854775808` becomes i64::MIN where the minus is applied.
        let kind = match text.parse::<i64>() {
            Ok(i) => ExprKind::Int(i),
            Err(_) => ExprKind::BigInt(text),
        };
        Expr { kind, span }
    }

    fn path(&self, p: Pair<Rule>) -> Vec<Ident> {
        p.into_inner().map(|i| self.ident(i)).collect()
    }
}

/// Resolves the escapes `\n`, `\t`, `\\` and `\"`; any other escaped character stands for itself.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(src: &str) -> Module {
        parse(FileId(0), src).unwrap_or_else(|d| panic!("{}: {}", d.message, d.label))
    }

    #[test]
    fn parses_the_language_tour() {
        let m = parse_ok(
            r#"
use std::bert
use std::strategies::{successive, multi_agent}
use "lib/more.rkd" as more
let sst2 = glue_sst2(path: "data/SST-2", max_len: 64)   # trailing comment
stage teacher = train(model: bert::base, data: sst2, epochs: 3, lr: 2e-5, seed: 7)
let chain = successive(teacher: teacher, students: [bert::medium, bert::small], data: sst2)
sweep t in [2.0, 4.0], a in [0.5, 0.9] {
  stage mini = distill(teacher: chain[-1], student: bert::mini, data: sst2, temperature: t, alpha: a)
}
fn pair(x, y: 2, ..rest) { let z = x; [z, y] }
stage results = report(models: [teacher] + chain + mini, data: sst2)
"#,
        );
        assert_eq!(m.items.len(), 9);
        assert!(matches!(m.items[3], Item::Let(_)));
        assert!(matches!(m.items[6], Item::Sweep(ref s) if s.vars.len() == 2));
        match &m.items[7] {
            Item::Fn(f) => {
                assert_eq!(f.params.len(), 2);
                assert_eq!(f.rest.as_ref().unwrap().name, "rest");
                assert!(matches!(f.result.kind, ExprKind::List(_)));
            }
            other => panic!("expected fn, got {other:?}"),
        }
    }

    #[test]
    fn a_list_on_its_own_line_is_not_an_index() {
        let m = parse_ok("fn f(x) {\n  let y = x\n  [y]\n}");
        let Item::Fn(f) = &m.items[0] else { panic!() };
        assert_eq!(f.body.len(), 1);
        assert!(matches!(f.result.kind, ExprKind::List(_)));
    }

    #[test]
    fn numbers() {
        let m = parse_ok("let a = [2e-5, 0.3, 1_000, -1, 4.0]");
        let Item::Let(b) = &m.items[0] else { panic!() };
        let ExprKind::List(xs) = &b.value.kind else { panic!() };
        assert!(matches!(xs[0].kind, ExprKind::Float(f) if f == 2e-5));
        assert!(matches!(xs[2].kind, ExprKind::Int(1000)));
        assert!(matches!(xs[3].kind, ExprKind::Int(-1)));
        assert!(matches!(xs[4].kind, ExprKind::Float(f) if f == 4.0));
    }

    #[test]
    fn integers_past_64_bits_stay_integers_and_the_smallest_one_parses() {
        let m = parse_ok("let a = [99_999_999_999_999_999_999_999_999, -9223372036854775808, 9223372036854775808]");
        let Item::Let(b) = &m.items[0] else { panic!() };
        let ExprKind::List(xs) = &b.value.kind else { panic!() };
        assert!(matches!(&xs[0].kind, ExprKind::BigInt(d) if d == "99999999999999999999999999"));
        assert!(matches!(xs[1].kind, ExprKind::Int(i64::MIN)));
        assert!(matches!(&xs[2].kind, ExprKind::BigInt(d) if d == "9223372036854775808"));
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        let e = parse(FileId(0), "let x = train(model: )").unwrap_err();
        assert_eq!(e.kind, Kind::Syntax);
        assert_eq!(e.span.unwrap().start, 21);
        assert!(e.label.contains("expression"), "{}", e.label);
    }

    #[test]
    fn keywords_are_not_names() {
        assert!(parse(FileId(0), "let stage = 1").is_err());
        assert!(parse(FileId(0), "let index = 1").is_ok());
    }

    #[test]
    fn a_letter_outside_ascii_is_reported_in_the_name_not_before_it() {
        let e = parse(FileId(0), "stage a = exec(cmd: \"echo hi\")\nlet données = 1").unwrap_err();
        assert_eq!(
            e.span.unwrap().start as usize,
            "stage a = exec(cmd: \"echo hi\")\nlet donn".len()
        );
        assert!(e.message.contains("ASCII"), "{}", e.message);
        // An earlier, unrelated error is still the one reported.
        let e = parse(FileId(0), "let x = (1\nlet données = 1").unwrap_err();
        assert!(!e.message.contains("ASCII"), "{}", e.message);
        parse_ok("let s = \"données\" # modèle, 模型\nstage m = exec(cmd: \"echo 模型\")");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("let x = {}", "[".repeat(100_000));
        assert!(parse(FileId(0), &src).is_err());
    }
}
