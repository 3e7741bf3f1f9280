//! Property tests of the compiler and of stage keys.
//!
//! 1. The parser and checker never panic, whatever the input, and their diagnostics render.
//! 2. Keys ignore stage names, comments, formatting, argument order and declaration order.
//! 3. Changing one parameter changes the key of that stage and of its descendants, and only those.
//! 4. Keys are deterministic; writing a default (or `4` for `4.0`) changes no key.
//! 5. Input files count by content: editing data changes the keys of the stages that read it,
//!    moving it changes nothing.

use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::test_runner::TestCaseError;
use rkd::compile::{compile_file, compile_source, Compiled};
use rkd::diagnostic::render_all;
use rkd::plan::fingerprint::Fingerprinter;
use rkd::plan::key::hex;
use rkd::plan::Plan;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;

/// Where in-memory sources pretend to live; the directory does not exist.
const FAKE_PATH: &str = "/nonexistent-dir/t.rkd";

fn compile(text: &str) -> Compiled {
    compile_source("t.rkd", Path::new(FAKE_PATH), text.to_string())
}

/// Renders diagnostics, which must not panic and must say something when there are any.
fn render(c: &Compiled, diags: &[rkd::diagnostic::Diag]) -> String {
    let plain = render_all(diags, &c.sources, false);
    let coloured = render_all(diags, &c.sources, true);
    assert_eq!(
        diags.is_empty(),
        plain.trim().is_empty(),
        "diagnostics render to nothing (or nothing renders to something)"
    );
    assert_eq!(plain.is_empty(), coloured.is_empty());
    plain
}

/// Compiles `text`, which must be clean, and returns (stage name, key) in plan order.
fn keys_of(text: &str) -> Result<Vec<(String, String)>, TestCaseError> {
    let c = compile(text);
    keys_of_compiled(&c, text)
}

fn keys_of_compiled(c: &Compiled, text: &str) -> Result<Vec<(String, String)>, TestCaseError> {
    if !c.diags.is_empty() {
        return Err(TestCaseError::fail(format!(
            "generated pipeline does not compile:\n{text}\n{}",
            render(c, &c.diags)
        )));
    }
    let plan = Plan::build(c, &mut Fingerprinter::default())
        .map_err(|d| TestCaseError::fail(format!("plan failed:\n{text}\n{}", render(c, &d))))?;
    Ok(user_stages(&plan).map(|s| (s.def.name.clone(), hex(&s.key))).collect())
}

/// The plan's stages without the `predict` stages the compiler adds for each distillation
/// teacher: they follow from their teacher and data, and the generator's model does not name
/// them (tests/distill.rs covers them).
fn user_stages(plan: &Plan) -> impl Iterator<Item = &rkd::plan::PlanStage> {
    plan.stages().filter(|s| s.def.op.name != "predict")
}

fn sorted_keys(keys: &[(String, String)]) -> Vec<String> {
    let mut k: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
    k.sort();
    k
}

// ---------------------------------------------------------------------------------------------
// 1. No panics
// ---------------------------------------------------------------------------------------------

/// Compiles anything; if it is clean, also builds the plan. Checks what must hold either way.
fn compile_anything(text: &str) {
    let c = compile(text);
    render(&c, &c.diags);
    // Stages come in a topological order, and names and aliases are unique.
    let mut names = HashSet::new();
    for (i, s) in c.stages.iter().enumerate() {
        for up in &s.inputs {
            assert!(
                (up.0 as usize) < i,
                "stage {} ({i}) has input {} that does not come before it\n{text}",
                s.name,
                up.0
            );
        }
        for n in std::iter::once(&s.name).chain(&s.aliases) {
            assert!(names.insert(n.clone()), "stage name {n} used twice\n{text}");
        }
    }
    if c.diags.is_empty() {
        // Paths point into a directory that does not exist: an error, not a panic.
        if let Err(d) = Plan::build(&c, &mut Fingerprinter::default()) {
            assert!(!d.is_empty());
            render(&c, &d);
        }
    }
}

const SOUP: &[&str] = &[
    "use",
    "let",
    "stage",
    "fn",
    "sweep",
    "for",
    "in",
    "as",
    "true",
    "false",
    "a",
    "b",
    "x",
    "t",
    "teacher",
    "data",
    "step",
    "options",
    "f",
    "::",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "..",
    "+",
    "-",
    "*",
    "/",
    "=",
    ";",
    ".",
    "#",
    "\"",
    "2e-5",
    "0.3",
    "-1",
    "0",
    "1",
    "3",
    "99999999999999999999",
    "1e999",
    "0.0",
    "\"data\"",
    "\"mean\"",
    "\"x.rkd\"",
    "\"\\\"\"",
    "train",
    "distill",
    "fuse",
    "qlora",
    "prune",
    "eval",
    "report",
    "exec",
    "bert",
    "vit",
    "glue_sst2",
    "synthetic_text",
    "range",
    "len",
    "env",
    "std::bert",
    "std::vit",
    "std::strategies::{successive}",
    "std::strategies",
    "bert::mini",
    "bert::base",
    "successive",
    "multi_agent",
    "straightforward",
    "model:",
    "data:",
    "teacher:",
    "student:",
    "seed:",
    "temperature:",
    "cmd:",
    "inputs:",
    "params:",
    "end:",
    "of:",
    "name:",
    "\n",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec((select(SOUP), select(&[" ", " ", "\n", ""][..])), 0..80)
        .prop_map(|toks| toks.into_iter().map(|(t, sep)| format!("{t}{sep}")).collect())
}

// A generator of mostly well-formed programs with random meaning, so that the checker and the
// evaluator (not only the parser) see strange input.

const NAMES: &[&str] = &[
    "a",
    "b",
    "x",
    "t",
    "s",
    "teacher",
    "data",
    "step",
    "options",
    "rest",
    "f",
    "g",
    "bert",
    "mini",
    "std",
    "successive",
    "train",
    "range",
    "l",
];
const CALLEES: &[&str] = &[
    "train",
    "distill",
    "fuse",
    "qlora",
    "prune",
    "eval",
    "report",
    "exec",
    "bert",
    "vit",
    "glue_sst2",
    "synthetic_text",
    "synthetic_images",
    "image_folder",
    "pretrained",
    "hf",
    "range",
    "len",
    "env",
    "f",
    "g",
    "successive",
    "straightforward",
    "multi_agent",
    "bert::bert",
    "std::bert",
    "bert::mini",
    "x",
    "strategies::successive",
];
const PARAMS: &[&str] = &[
    "model",
    "data",
    "teacher",
    "student",
    "teachers",
    "students",
    "temperature",
    "alpha",
    "epochs",
    "seed",
    "lr",
    "cmd",
    "inputs",
    "files",
    "params",
    "path",
    "layers",
    "hidden",
    "heads",
    "intermediate",
    "end",
    "start",
    "of",
    "name",
    "default",
    "fusion",
    "weights",
    "models",
    "base",
    "sparsity",
    "method",
    "rank",
    "block_size",
    "split",
    "x",
    "a",
];
const LEAVES: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "-1",
    "2e-5",
    "0.3",
    "0.5",
    "4.0",
    "99999999999999999999",
    "1e999",
    "9223372036854775807",
    "true",
    "false",
    "\"mean\"",
    "\"data\"",
    "\"\"",
    "\"a\\\"b\"",
    "\"weighted\"",
    "bert::mini",
    "bert::base",
    "std::bert",
    "a",
    "b",
    "x",
    "t",
    "teacher",
    "data",
    "step",
    "f",
    "train",
    "options",
    "rest",
    "[]",
    "{}",
    "synthetic_text(seed: 1)",
    "bert(layers: 2, hidden: 128, heads: 2, intermediate: 512)",
    "train(model: bert::tiny, data: synthetic_text(seed: 2))",
    "train(model: bert::mini, data: synthetic_text(), epochs: 1)",
    "range(end: 3)",
];

fn expr() -> impl Strategy<Value = String> {
    select(LEAVES).prop_map(String::from).prop_recursive(4, 40, 4, |inner| {
        let arg = prop_oneof![
            4 => (select(PARAMS), inner.clone()).prop_map(|(k, v)| format!("{k}: {v}")),
            1 => inner.clone().prop_map(|v| format!("..{v}")),
            1 => inner.clone(),
        ];
        prop_oneof![
            4 => (select(CALLEES), prop::collection::vec(arg, 0..5))
                .prop_map(|(c, args)| format!("{c}({})", args.join(", "))),
            2 => prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|xs| format!("[{}]", xs.join(", "))),
            1 => prop::collection::vec((select(PARAMS), inner.clone()), 0..3).prop_map(|es| {
                let es: Vec<String> = es.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", es.join(", "))
            }),
            2 => (inner.clone(), select(&["+", "-", "*", "/"][..]), inner.clone())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            2 => (inner.clone(), inner.clone()).prop_map(|(a, i)| format!("({a})[{i}]")),
            1 => (inner.clone(), select(PARAMS)).prop_map(|(a, f)| format!("({a}).{f}")),
            1 => inner.clone().prop_map(|a| format!("-({a})")),
        ]
    })
}

fn items() -> impl Strategy<Value = String> {
    let simple = prop_oneof![
        1 => select(&[
            "use std::bert",
            "use std::vit",
            "use std::strategies::{successive, multi_agent}",
            "use std::strategies::{nope}",
            "use std::bert::mini",
            "use std::bert::mini::x",
            "use std",
            "use std::nope",
            "use nope::bert",
            "use \"lib.rkd\" as lib",
        ][..])
        .prop_map(String::from),
        3 => (select(NAMES), expr()).prop_map(|(n, e)| format!("let {n} = {e}")),
        3 => (select(NAMES), expr()).prop_map(|(n, e)| format!("stage {n} = {e}")),
    ];
    let item = simple.prop_recursive(2, 12, 4, |inner| {
        let block = prop::collection::vec(inner.clone(), 0..4).prop_map(|xs| xs.join("\n"));
        prop_oneof![
            (select(NAMES), select(NAMES), expr(), block.clone())
                .prop_map(|(v, w, e, b)| format!("sweep {v} in {e}, {w} in [1, 2] {{\n{b}\n}}")),
            (select(NAMES), expr(), block.clone()).prop_map(|(v, e, b)| format!("for {v} in {e} {{\n{b}\n}}")),
            (
                select(NAMES),
                prop::collection::vec(select(NAMES), 0..3),
                any::<bool>(),
                block,
                expr()
            )
                .prop_map(|(n, ps, rest, b, e)| {
                    let mut ps = ps.join(", ");
                    if rest {
                        ps.push_str(if ps.is_empty() { "..rest" } else { ", ..rest" });
                    }
                    format!("fn {n}({ps}) {{\n{b}\n{e}\n}}")
                }),
        ]
    });
    (any::<bool>(), prop::collection::vec(item, 0..8)).prop_map(|(header, xs)| {
        let header = if header {
            "use std::bert\nuse std::strategies::{successive, multi_agent}\n"
        } else {
            ""
        };
        format!("{header}{}", xs.join("\n"))
    })
}

/// A valid pipeline that exercises most of the language; mutated below.
const SAMPLE: &str = r#"
use std::bert
use std::strategies::{successive, straightforward, multi_agent}
let sst2 = synthetic_text(seed: 1)
fn pair(teacher, student, ..opts) {
  stage d = distill(teacher: teacher, student: student, data: sst2, ..opts)
  [d, eval(model: d, data: sst2)]
}
stage teacher = train(model: bert::base, data: sst2, epochs: 3, lr: 2e-5, seed: 7)
let chain = successive(teacher: teacher, students: [bert::medium, bert::small, bert::mini], data: sst2)
let direct = straightforward(teacher: teacher, students: [bert::medium, bert::small], data: sst2, temperature: 2.0)
stage fused = multi_agent(teachers: [teacher, chain[0], chain[1]], student: bert::mini, data: sst2, fusion: "weighted", weights: [0.5, 0.25, 0.25])
sweep t in [2.0, 4.0, 8.0], a in [0.5, 0.9] {
  stage mini = distill(teacher: chain[1], student: bert::mini, data: sst2, temperature: t, alpha: a)
}
for s in range(end: 2) {
  let p = pair(teacher: teacher, student: bert::tiny, seed: s * 2 + 1)
}
stage q = qlora(base: chain[-1], data: sst2, rank: 8, alpha: 16, double_quant: true)
stage p = prune(model: q, sparsity: 0.3, method: "l1_unstructured")
stage x = exec(cmd: "echo " + env(name: "RKD_NOPE", default: "hi"), inputs: [p, fused], params: {n: len(of: chain), r: {a: [1, 2.5]}})
stage results = report(models: [teacher] + chain + [fused] + mini + [q, p], data: sst2, baseline: teacher)
"#;

/// Splits source text into tokens (comments dropped, strings kept whole).
fn lex(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let cs: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        } else if c == '#' {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
            continue;
        } else if c == '"' {
            i += 1;
            while i < cs.len() && cs[i] != '"' {
                i += if cs[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(cs.len());
        } else if c.is_ascii_digit() {
            // Numbers: `2`, `2.5`, `2e-5`, `1_000`.
            i += 1;
            while i < cs.len()
                && (cs[i].is_ascii_alphanumeric()
                    || matches!(cs[i], '_' | '.')
                    || (matches!(cs[i], '+' | '-') && matches!(cs[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            // Paths (`bert::mini`) are one token: the grammar allows no space inside.
            while i < cs.len()
                && (cs[i].is_alphanumeric()
                    || cs[i] == '_'
                    || (cs[i] == ':'
                        && cs.get(i + 1) == Some(&':')
                        && cs.get(i + 2).is_some_and(|c| c.is_alphabetic() || *c == '_')))
            {
                i += if cs[i] == ':' { 2 } else { 1 };
            }
        } else if (c == ':' || c == '.') && cs.get(i + 1) == Some(&c) {
            i += 2;
        } else {
            i += 1;
        }
        out.push(cs[start..i].iter().collect());
    }
    out
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "8",
    "16",
    "31",
    "64",
    "513",
    "0.0",
    "0.5",
    "1.0",
    "1.5",
    "2e-5",
    "1e999",
    "99999999999999999999",
    "9223372036854775807",
];
const STRINGS: &[&str] = &[
    "\"\"",
    "\"mean\"",
    "\"weighted\"",
    "\"confidence\"",
    "\"heads\"",
    "\"test\"",
    "\"train\"",
    "\"random\"",
    "\"data\"",
    "\"RKD_NOPE\"",
    "\"HOME\"",
    "\"../x\"",
];
const IDENTS: &[&str] = &[
    "teacher",
    "chain",
    "direct",
    "fused",
    "mini",
    "q",
    "p",
    "x",
    "results",
    "sst2",
    "pair",
    "d",
    "opts",
    "s",
    "t",
    "a",
    "student",
    "data",
    "seed",
    "epochs",
    "alpha",
    "temperature",
    "model",
    "models",
    "base",
    "teachers",
    "students",
    "weights",
    "fusion",
    "sparsity",
    "method",
    "inputs",
    "params",
    "files",
    "end",
    "start",
    "of",
    "name",
    "default",
    "train",
    "distill",
    "fuse",
    "qlora",
    "prune",
    "eval",
    "report",
    "exec",
    "bert::mini",
    "bert::base",
    "bert::nope",
    "std::bert",
    "successive",
    "straightforward",
    "multi_agent",
    "range",
    "len",
    "env",
    "true",
    "false",
    "nope",
];

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Replace(usize, &'static str),
    /// Another token of the same kind: a number for a number, a name for a name.
    ReplaceLike(usize, usize),
    Swap(usize, usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let m = prop_oneof![
        1 => any::<usize>().prop_map(Mutation::Delete),
        1 => any::<usize>().prop_map(Mutation::Duplicate),
        1 => (any::<usize>(), select(SOUP)).prop_map(|(i, t)| Mutation::Replace(i, t)),
        12 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::ReplaceLike(i, j)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::Swap(i, j)),
    ];
    prop::collection::vec(m, 1..4)
}

fn mutate(toks: &[String], ms: &[Mutation]) -> String {
    let mut toks = toks.to_vec();
    for m in ms {
        if toks.is_empty() {
            break;
        }
        let n = toks.len();
        match m {
            Mutation::Delete(i) => {
                toks.remove(i % n);
            }
            Mutation::Duplicate(i) => {
                let t = toks[i % n].clone();
                toks.insert(i % n, t);
            }
            Mutation::Replace(i, t) => toks[i % n] = t.to_string(),
            Mutation::ReplaceLike(i, j) => {
                // A number, string or name (not punctuation, which mostly breaks the syntax).
                let pool_of = |t: &str| -> Option<&'static [&'static str]> {
                    match t.chars().next() {
                        Some('0'..='9') => Some(NUMBERS),
                        Some('"') => Some(STRINGS),
                        Some(c) if c.is_alphabetic() || c == '_' => Some(IDENTS),
                        _ => None,
                    }
                };
                let words: Vec<usize> = (0..n).filter(|&k| pool_of(&toks[k]).is_some()).collect();
                if let Some(&k) = words.get(i % words.len().max(1)) {
                    let pool = pool_of(&toks[k]).unwrap();
                    toks[k] = pool[j % pool.len()].to_string();
                }
            }
            Mutation::Swap(i, j) => toks.swap(i % n, j % n),
        }
    }
    toks.join(" ")
}

#[test]
fn the_sample_compiles_and_survives_lexing() {
    let keys = keys_of(SAMPLE).unwrap();
    assert!(keys.len() > 15, "{keys:?}");
    let relexed = lex(SAMPLE).join(" ");
    assert_eq!(keys_of(&relexed).unwrap(), keys);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        compile_anything(&text);
    }

    #[test]
    fn printable_text_never_panics(text in "[ -~\n]{0,200}") {
        compile_anything(&text);
    }

    #[test]
    fn token_soup_never_panics(text in soup()) {
        compile_anything(&text);
    }

    #[test]
    fn random_programs_never_panic(text in items()) {
        compile_anything(&text);
    }

    #[test]
    fn mutated_pipelines_never_panic(ms in mutations()) {
        let toks = lex(SAMPLE);
        compile_anything(&mutate(&toks, &ms));
    }
}

// ---------------------------------------------------------------------------------------------
// A generator of valid pipelines, rendered in many equivalent ways.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Arch {
    Tiny,
    Mini,
    Small,
    Medium,
}

impl Arch {
    const ALL: [Arch; 4] = [Arch::Tiny, Arch::Mini, Arch::Small, Arch::Medium];

    fn label(self) -> &'static str {
        match self {
            Arch::Tiny => "bert::tiny",
            Arch::Mini => "bert::mini",
            Arch::Small => "bert::small",
            Arch::Medium => "bert::medium",
        }
    }

    /// (layers, hidden, heads, intermediate), as in std::bert.
    fn dims(self) -> [i64; 4] {
        match self {
            Arch::Tiny => [2, 128, 2, 512],
            Arch::Mini => [4, 256, 4, 1024],
            Arch::Small => [4, 512, 8, 2048],
            Arch::Medium => [8, 512, 8, 2048],
        }
    }

    fn next(self) -> Arch {
        let i = Arch::ALL.iter().position(|a| *a == self).unwrap();
        Arch::ALL[(i + 1) % 4]
    }
}

/// A reference from one node to an earlier one: node index, and which of its stages.
#[derive(Clone, Copy, Debug)]
struct Ref {
    node: usize,
    sub: usize,
}

#[derive(Clone, Debug)]
enum Node {
    Train {
        arch: Arch,
        epochs: Option<i64>,
        lr: Option<f64>,
    },
    Distill {
        teacher: Ref,
        student: Arch,
        temperature: Option<f64>,
        alpha: Option<f64>,
        epochs: Option<i64>,
    },
    Sweep {
        teacher: Ref,
        student: Arch,
        temps: Vec<f64>,
        alphas: Vec<f64>,
        epochs: Option<i64>,
    },
    Chain {
        teacher: Ref,
        students: Vec<Arch>,
        temperature: Option<f64>,
    },
    Prune {
        model: Ref,
        sparsity: f64,
    },
    Eval {
        model: Ref,
        split: Option<&'static str>,
    },
    Exec {
        inputs: Vec<Ref>,
        params: Vec<(&'static str, i64)>,
        cmd: u32,
    },
}

impl Node {
    /// How many stages the node creates.
    fn count(&self) -> usize {
        match self {
            Node::Sweep { temps, alphas, .. } => temps.len() * alphas.len(),
            Node::Chain { students, .. } => students.len(),
            _ => 1,
        }
    }

    fn is_model(&self) -> bool {
        !matches!(self, Node::Eval { .. } | Node::Exec { .. })
    }

    fn uses_data(&self) -> bool {
        !matches!(self, Node::Prune { .. } | Node::Exec { .. })
    }

    fn refs(&self) -> Vec<Ref> {
        match self {
            Node::Train { .. } => vec![],
            Node::Distill { teacher, .. } | Node::Sweep { teacher, .. } | Node::Chain { teacher, .. } => vec![*teacher],
            Node::Prune { model, .. } | Node::Eval { model, .. } => vec![*model],
            Node::Exec { inputs, .. } => inputs.clone(),
        }
    }

    fn refs_mut(&mut self) -> Vec<(&mut Ref, bool)> {
        match self {
            Node::Train { .. } => vec![],
            Node::Distill { teacher, .. } | Node::Sweep { teacher, .. } | Node::Chain { teacher, .. } => {
                vec![(teacher, true)]
            }
            Node::Prune { model, .. } | Node::Eval { model, .. } => vec![(model, true)],
            Node::Exec { inputs, .. } => inputs.iter_mut().map(|r| (r, false)).collect(),
        }
    }
}

#[derive(Clone, Debug)]
struct Pipe {
    data_seed: i64,
    data_classes: Option<i64>,
    /// `nodes[0]` is a `train`: every pipeline has a teacher.
    nodes: Vec<Node>,
    /// Added to every stage's seed (and the like), to make an edited stage unlike any other.
    bumps: Vec<i64>,
}

const TEMPS: &[f64] = &[0.5, 1.0, 2.0, 2.5, 3.0, 4.0, 8.0];
const ALPHAS: &[f64] = &[0.0, 0.1, 0.25, 0.5, 0.9, 1.0];
const LRS: &[f64] = &[1e-4, 2e-5, 5e-5, 3e-4, 1e-3];
const SPARSITIES: &[f64] = &[0.1, 0.3, 0.5, 0.75];
const EXEC_PARAMS: &[&str] = &["lr", "n", "size", "mode", "z"];

fn arch() -> impl Strategy<Value = Arch> {
    select(&Arch::ALL[..])
}

fn raw_ref() -> impl Strategy<Value = Ref> {
    (any::<usize>(), any::<usize>()).prop_map(|(node, sub)| Ref { node, sub })
}

fn node() -> impl Strategy<Value = Node> {
    let opt_epochs = prop::option::of(1i64..6);
    prop_oneof![
        3 => (raw_ref(), arch(), prop::option::of(select(TEMPS)), prop::option::of(select(ALPHAS)), opt_epochs.clone())
            .prop_map(|(teacher, student, temperature, alpha, epochs)| Node::Distill { teacher, student, temperature, alpha, epochs }),
        2 => (raw_ref(), arch(), subsequence(TEMPS.to_vec(), 1..=3), subsequence(ALPHAS.to_vec(), 1..=2), opt_epochs.clone())
            .prop_map(|(teacher, student, temps, alphas, epochs)| Node::Sweep { teacher, student, temps, alphas, epochs }),
        1 => (raw_ref(), prop::collection::vec(arch(), 1..=3), prop::option::of(select(TEMPS)))
            .prop_map(|(teacher, students, temperature)| Node::Chain { teacher, students, temperature }),
        1 => (raw_ref(), select(SPARSITIES)).prop_map(|(model, sparsity)| Node::Prune { model, sparsity }),
        1 => (raw_ref(), prop::option::of(select(&["auto", "validation", "test", "train"][..])))
            .prop_map(|(model, split)| Node::Eval { model, split }),
        1 => (prop::collection::vec(raw_ref(), 0..3), subsequence(EXEC_PARAMS.to_vec(), 0..3), prop::collection::vec(-5i64..50, 3), 0u32..1000)
            .prop_map(|(inputs, names, values, cmd)| Node::Exec {
                inputs,
                params: names.into_iter().zip(values).collect(),
                cmd,
            }),
        1 => (arch(), opt_epochs, prop::option::of(select(LRS)))
            .prop_map(|(arch, epochs, lr)| Node::Train { arch, epochs, lr }),
    ]
}

/// Points every raw reference at an earlier node of the right kind.
fn resolve(mut nodes: Vec<Node>) -> Vec<Node> {
    for i in 0..nodes.len() {
        let (before, rest) = nodes.split_at_mut(i);
        let models: Vec<usize> = (0..i).filter(|&j| before[j].is_model()).collect();
        for (r, model_only) in rest[0].refs_mut() {
            let node = if model_only {
                models[r.node % models.len()]
            } else {
                r.node % i
            };
            *r = Ref {
                node,
                sub: r.sub % before[node].count(),
            };
        }
    }
    nodes
}

fn pipe() -> impl Strategy<Value = Pipe> {
    (
        0i64..1000,
        prop::option::of(2i64..5),
        arch(),
        prop::option::of(1i64..6),
        prop::option::of(select(LRS)),
        prop::collection::vec(node(), 0..7),
    )
        .prop_map(|(data_seed, data_classes, arch, epochs, lr, rest)| {
            let mut nodes = vec![Node::Train { arch, epochs, lr }];
            nodes.extend(rest);
            let nodes = resolve(nodes);
            Pipe {
                data_seed,
                data_classes,
                bumps: vec![0; nodes.len()],
                nodes,
            }
        })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum FloatStyle {
    /// `4.0`, `2e-5`
    Debug,
    /// `4`, `2e-5`: integral values without the decimal point.
    Int,
    /// `4e0`, `2e-5`
    Sci,
}

/// How to write a pipeline; every style must give the same keys.
#[derive(Clone, Debug)]
struct Style {
    prefix: &'static str,
    /// Name numbers: item i (0 = the dataset, 1.. = nodes) is `{prefix}{perm[i]}`.
    perm: Vec<usize>,
    loop_vars: (&'static str, &'static str),
    /// Separators between tokens, cycled (indices into [`SEPS`]).
    seps: Vec<usize>,
    /// Priorities for the topological order of the items.
    priority: Vec<u32>,
    /// Rotation of each call's argument list.
    arg_rotation: usize,
    semicolons: bool,
    explicit_defaults: bool,
    explicit_arch: bool,
    floats: FloatStyle,
}

const SEPS: &[&str] = &[
    " ",
    " ",
    " ",
    "\n",
    "\t",
    "  \n    ",
    " # a comment, with (brackets] and \"quotes\n",
    "\n# a line comment\n\n",
    "\r\n",
];
const PREFIXES: &[&str] = &["s", "stage_", "_x", "teacherModel", "n", "Q_"];
const LOOP_VARS: &[(&str, &str)] = &[("t", "a"), ("temp", "alpha"), ("x", "y"), ("tt", "aa")];

impl Style {
    fn plain(items: usize) -> Style {
        Style {
            prefix: "s",
            perm: (0..items).collect(),
            loop_vars: ("t", "a"),
            seps: vec![0],
            priority: vec![0; items],
            arg_rotation: 0,
            semicolons: false,
            explicit_defaults: false,
            explicit_arch: false,
            floats: FloatStyle::Debug,
        }
    }
}

/// Names, formatting and order: what property 2 varies.
fn layout(items: usize) -> impl Strategy<Value = Style> {
    (
        select(PREFIXES),
        Just((0..items).collect::<Vec<_>>()).prop_shuffle(),
        select(LOOP_VARS),
        prop::collection::vec(0..SEPS.len(), 1..40),
        prop::collection::vec(any::<u32>(), items),
        0usize..8,
        any::<bool>(),
    )
        .prop_map(
            move |(prefix, perm, loop_vars, seps, priority, arg_rotation, semicolons)| Style {
                prefix,
                perm,
                loop_vars,
                seps,
                priority,
                arg_rotation,
                semicolons,
                ..Style::plain(items)
            },
        )
}

/// A value as written in a call.
#[derive(Clone, Debug)]
enum Val {
    Tok(String),
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Arch(Arch),
    List(Vec<Val>),
    Record(Vec<(&'static str, Val)>),
}

fn float_text(f: f64, style: FloatStyle) -> String {
    match style {
        FloatStyle::Debug => format!("{f:?}"),
        FloatStyle::Int if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        FloatStyle::Int => format!("{f:?}"),
        FloatStyle::Sci => format!("{f:e}"),
    }
}

struct Writer<'a> {
    style: &'a Style,
    toks: Vec<String>,
}

impl Writer<'_> {
    fn t(&mut self, s: impl Into<String>) {
        self.toks.push(s.into());
    }

    fn val(&mut self, v: &Val) {
        match v {
            Val::Tok(s) => self.t(s.clone()),
            Val::Int(i) => self.t(i.to_string()),
            Val::Float(f) => self.t(float_text(*f, self.style.floats)),
            Val::Str(s) => self.t(format!("\"{s}\"")),
            Val::Bool(b) => self.t(b.to_string()),
            Val::Arch(a) if self.style.explicit_arch => {
                let [l, h, n, i] = a.dims();
                let mut args = vec![
                    ("layers", Val::Int(l)),
                    ("hidden", Val::Int(h)),
                    ("heads", Val::Int(n)),
                    ("intermediate", Val::Int(i)),
                ];
                if self.style.explicit_defaults {
                    args.extend([
                        ("vocab_size", Val::Int(30522)),
                        ("max_position", Val::Int(512)),
                        ("dropout", Val::Float(0.1)),
                        ("attention_dropout", Val::Float(0.1)),
                    ]);
                }
                self.call("bert", args);
            }
            Val::Arch(a) => self.t(a.label()),
            Val::List(xs) => {
                self.t("[");
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        self.t(",");
                    }
                    self.val(x);
                }
                self.t("]");
            }
            Val::Record(fields) => {
                self.t("{");
                for (i, (k, x)) in fields.iter().enumerate() {
                    if i > 0 {
                        self.t(",");
                    }
                    self.t(*k);
                    self.t(":");
                    self.val(x);
                }
                self.t("}");
            }
        }
    }

    fn call(&mut self, callee: &str, mut args: Vec<(&'static str, Val)>) {
        if !args.is_empty() {
            let n = args.len();
            args.rotate_left(self.style.arg_rotation % n);
        }
        self.t(callee);
        self.t("(");
        for (i, (k, v)) in args.iter().enumerate() {
            if i > 0 {
                self.t(",");
            }
            self.t(*k);
            self.t(":");
            self.val(v);
        }
        self.t(")");
    }

    fn end_item(&mut self) {
        if self.style.semicolons {
            self.t(";");
        }
    }

    /// Joins the tokens with the style's separators.
    fn finish(self) -> String {
        let mut out = String::new();
        for (i, t) in self.toks.iter().enumerate() {
            if i > 0 {
                out.push_str(SEPS[self.style.seps[i % self.style.seps.len()]]);
            }
            out.push_str(t);
        }
        out.push('\n');
        out
    }
}

/// Arguments with defaults appended when the style writes them out.
fn with_defaults(
    style: &Style,
    mut args: Vec<(&'static str, Val)>,
    defaults: &[(&'static str, Val)],
) -> Vec<(&'static str, Val)> {
    if style.explicit_defaults {
        for (k, v) in defaults {
            if !args.iter().any(|(a, _)| a == k) {
                args.push((k, v.clone()));
            }
        }
    }
    args
}

/// The defaults of a model trained from random weights: every trained model and student the
/// generator writes is an architecture (`lr` and `epochs` differ for checkpoints).
fn training_defaults() -> Vec<(&'static str, Val)> {
    vec![
        ("epochs", Val::Int(5)),
        ("batch_size", Val::Int(32)),
        ("lr", Val::Float(3e-4)),
        ("weight_decay", Val::Float(0.01)),
        ("warmup", Val::Float(0.1)),
        ("grad_clip", Val::Float(1.0)),
    ]
}

fn distill_defaults() -> Vec<(&'static str, Val)> {
    let mut d = vec![
        ("temperature", Val::Float(4.0)),
        ("alpha", Val::Float(0.5)),
        ("t2_scale", Val::Bool(true)),
        ("init", Val::Str("random".into())),
    ];
    d.extend(training_defaults());
    d
}

fn push_opt<T>(args: &mut Vec<(&'static str, Val)>, k: &'static str, v: Option<T>, f: fn(T) -> Val) {
    if let Some(v) = v {
        args.push((k, f(v)));
    }
}

impl Pipe {
    fn item_count(&self) -> usize {
        self.nodes.len() + 1
    }

    fn seed(&self, i: usize) -> i64 {
        100 + i as i64 + 1000 * self.bumps[i]
    }

    /// Items each item depends on (0 = the dataset, node i = item i + 1).
    fn deps(&self, item: usize) -> Vec<usize> {
        if item == 0 {
            return vec![];
        }
        let node = &self.nodes[item - 1];
        let mut d: Vec<usize> = node.refs().iter().map(|r| r.node + 1).collect();
        if node.uses_data() {
            d.push(0);
        }
        d
    }

    /// A topological order of the items: the available item of least priority first.
    fn order(&self, style: &Style) -> Vec<usize> {
        let n = self.item_count();
        let mut done = vec![false; n];
        let mut out = Vec::new();
        while out.len() < n {
            let next = (0..n)
                .filter(|&i| !done[i] && self.deps(i).iter().all(|&d| done[d]))
                .min_by_key(|&i| (style.priority[i], i))
                .expect("the references point backwards");
            done[next] = true;
            out.push(next);
        }
        out
    }

    fn name(&self, style: &Style, item: usize) -> String {
        format!("{}{}", style.prefix, style.perm[item])
    }

    fn reference(&self, style: &Style, r: Ref) -> Val {
        let name = self.name(style, r.node + 1);
        match self.nodes[r.node] {
            Node::Sweep { .. } | Node::Chain { .. } => Val::Tok(format!("{name}[{}]", r.sub)),
            _ => Val::Tok(name),
        }
    }

    fn render(&self, style: &Style) -> String {
        let mut w = Writer {
            style,
            toks: Vec::new(),
        };
        for u in [["use", "std::bert"], ["use", "std::strategies::{successive}"]] {
            w.t(u[0]);
            w.t(u[1]);
            w.end_item();
        }
        let data = Val::Tok(self.name(style, 0));
        for item in self.order(style) {
            let name = self.name(style, item);
            if item == 0 {
                let mut args = vec![("seed", Val::Int(self.data_seed))];
                push_opt(&mut args, "classes", self.data_classes, Val::Int);
                let args = with_defaults(
                    style,
                    args,
                    &[
                        ("classes", Val::Int(2)),
                        ("train_size", Val::Int(2000)),
                        ("val_size", Val::Int(500)),
                        ("max_len", Val::Int(32)),
                        ("vocab_size", Val::Int(1000)),
                        ("noise", Val::Float(0.1)),
                    ],
                );
                w.t("let");
                w.t(name);
                w.t("=");
                w.call("synthetic_text", args);
                w.end_item();
                continue;
            }
            let i = item - 1;
            let seed = ("seed", Val::Int(self.seed(i)));
            match &self.nodes[i] {
                Node::Train { arch, epochs, lr } => {
                    let mut args = vec![("model", Val::Arch(*arch)), ("data", data.clone()), seed];
                    push_opt(&mut args, "epochs", *epochs, Val::Int);
                    push_opt(&mut args, "lr", *lr, Val::Float);
                    let args = with_defaults(style, args, &training_defaults());
                    w.t("stage");
                    w.t(name);
                    w.t("=");
                    w.call("train", args);
                }
                Node::Distill {
                    teacher,
                    student,
                    temperature,
                    alpha,
                    epochs,
                } => {
                    let mut args = vec![
                        ("teacher", self.reference(style, *teacher)),
                        ("student", Val::Arch(*student)),
                        ("data", data.clone()),
                        seed,
                    ];
                    push_opt(&mut args, "temperature", *temperature, Val::Float);
                    push_opt(&mut args, "alpha", *alpha, Val::Float);
                    push_opt(&mut args, "epochs", *epochs, Val::Int);
                    let args = with_defaults(style, args, &distill_defaults());
                    w.t("stage");
                    w.t(name);
                    w.t("=");
                    w.call("distill", args);
                }
                Node::Sweep {
                    teacher,
                    student,
                    temps,
                    alphas,
                    epochs,
                } => {
                    let (tv, av) = style.loop_vars;
                    w.t("sweep");
                    w.t(tv);
                    w.t("in");
                    w.val(&Val::List(temps.iter().map(|t| Val::Float(*t)).collect()));
                    w.t(",");
                    w.t(av);
                    w.t("in");
                    w.val(&Val::List(alphas.iter().map(|a| Val::Float(*a)).collect()));
                    w.t("{");
                    let mut args = vec![
                        ("teacher", self.reference(style, *teacher)),
                        ("student", Val::Arch(*student)),
                        ("data", data.clone()),
                        ("temperature", Val::Tok(tv.into())),
                        ("alpha", Val::Tok(av.into())),
                        seed,
                    ];
                    push_opt(&mut args, "epochs", *epochs, Val::Int);
                    let args = with_defaults(style, args, &distill_defaults());
                    w.t("stage");
                    w.t(name);
                    w.t("=");
                    w.call("distill", args);
                    w.end_item();
                    w.t("}");
                }
                Node::Chain {
                    teacher,
                    students,
                    temperature,
                } => {
                    let mut args = vec![
                        ("teacher", self.reference(style, *teacher)),
                        ("students", Val::List(students.iter().map(|a| Val::Arch(*a)).collect())),
                        ("data", data.clone()),
                        seed,
                    ];
                    push_opt(&mut args, "temperature", *temperature, Val::Float);
                    let args = with_defaults(style, args, &distill_defaults());
                    w.t("let");
                    w.t(name);
                    w.t("=");
                    w.call("successive", args);
                }
                Node::Prune { model, sparsity } => {
                    let args = vec![
                        ("model", self.reference(style, *model)),
                        ("sparsity", Val::Float(*sparsity)),
                        seed,
                    ];
                    let args = with_defaults(
                        style,
                        args,
                        &[
                            ("method", Val::Str("l1_unstructured".into())),
                            ("scope", Val::Str("linear".into())),
                            ("finetune_epochs", Val::Int(0)),
                            ("lr", Val::Float(1e-4)),
                        ],
                    );
                    w.t("stage");
                    w.t(name);
                    w.t("=");
                    w.call("prune", args);
                }
                Node::Eval { model, split } => {
                    let mut args = vec![
                        ("model", self.reference(style, *model)),
                        ("data", data.clone()),
                        ("batch_size", Val::Int(8 + i as i64 + 1000 * self.bumps[i])),
                    ];
                    push_opt(&mut args, "split", *split, |s| Val::Str(s.into()));
                    let args = with_defaults(style, args, &[("split", Val::Str("auto".into()))]);
                    w.t("stage");
                    w.t(name);
                    w.t("=");
                    w.call("eval", args);
                }
                Node::Exec { inputs, params, cmd } => {
                    let mut record = vec![("id", Val::Int(self.seed(i)))];
                    record.extend(params.iter().map(|(k, v)| (*k, Val::Int(*v))));
                    let mut args = vec![
                        ("cmd", Val::Str(format!("echo {cmd} > $RKD_OUT/x"))),
                        ("params", Val::Record(record)),
                    ];
                    if !inputs.is_empty() {
                        args.push((
                            "inputs",
                            Val::List(inputs.iter().map(|r| self.reference(style, *r)).collect()),
                        ));
                    }
                    let args = with_defaults(
                        style,
                        args,
                        &[("inputs", Val::List(vec![])), ("files", Val::List(vec![]))],
                    );
                    w.t("stage");
                    w.t(name);
                    w.t("=");
                    w.call("exec", args);
                }
            }
            w.end_item();
        }
        w.finish()
    }

    /// The display names of the stages node `i` creates, found in a plan's names.
    fn stage_names<'a>(&self, style: &Style, i: usize, names: &'a [String]) -> Vec<&'a String> {
        let name = self.name(style, i + 1);
        let found: Vec<&String> = match self.nodes[i] {
            Node::Sweep { .. } => names.iter().filter(|n| n.starts_with(&format!("{name}["))).collect(),
            Node::Chain { .. } => names.iter().filter(|n| n.starts_with(&format!("{name}/"))).collect(),
            _ => names.iter().filter(|n| **n == name).collect(),
        };
        assert_eq!(found.len(), self.nodes[i].count(), "stages of {name} in {names:?}");
        found
    }
}

fn pipe_and_two_layouts() -> impl Strategy<Value = (Pipe, Style, Style)> {
    pipe().prop_flat_map(|p| {
        let n = p.item_count();
        (Just(p), layout(n), layout(n))
    })
}

#[test]
fn the_generator_writes_what_it_means() {
    let p = Pipe {
        data_seed: 3,
        data_classes: None,
        nodes: vec![
            Node::Train {
                arch: Arch::Mini,
                epochs: None,
                lr: Some(2e-5),
            },
            Node::Sweep {
                teacher: Ref { node: 0, sub: 0 },
                student: Arch::Tiny,
                temps: vec![2.0, 4.0],
                alphas: vec![0.5],
                epochs: None,
            },
            Node::Exec {
                inputs: vec![Ref { node: 1, sub: 1 }],
                params: vec![("n", 3)],
                cmd: 7,
            },
        ],
        bumps: vec![0; 3],
    };
    let text = p.render(&Style::plain(4));
    assert_eq!(
        text,
        "use std::bert use std::strategies::{successive} \
         let s0 = synthetic_text ( seed : 3 ) \
         stage s1 = train ( model : bert::mini , data : s0 , seed : 100 , lr : 2e-5 ) \
         sweep t in [ 2.0 , 4.0 ] , a in [ 0.5 ] { stage s2 = distill ( teacher : s1 , \
         student : bert::tiny , data : s0 , temperature : t , alpha : a , seed : 101 ) } \
         stage s3 = exec ( cmd : \"echo 7 > $RKD_OUT/x\" , params : { id : 102 , n : 3 } , \
         inputs : [ s2[1] ] )\n"
    );
    let keys = keys_of(&text).unwrap();
    let names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["s1", "s2[t=2.0,a=0.5]", "s2[t=4.0,a=0.5]", "s3"]);
}

// ---------------------------------------------------------------------------------------------
// 2. Keys ignore names, comments, formatting and declaration order
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn keys_ignore_names_formatting_and_order((p, s1, s2) in pipe_and_two_layouts()) {
        let a = p.render(&s1);
        let b = p.render(&s2);
        let ka = keys_of(&a)?;
        let kb = keys_of(&b)?;
        let expected: usize = p.nodes.iter().map(Node::count).sum();
        prop_assert_eq!(ka.len(), expected, "{}", a);
        prop_assert_eq!(sorted_keys(&ka), sorted_keys(&kb), "\n--- a ---\n{}\n--- b ---\n{}", a, b);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. One edit changes exactly the edited stage and its descendants
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Edit {
    /// The dataset's seed.
    Data,
    /// Node i's seed (or what stands in for it).
    Bump(usize),
    /// Node i's op-specific parameter.
    Param(usize),
    /// Node i's model architecture.
    Arch(usize),
}

/// Applies the edit; returns the nodes edited (`None`: the dataset).
fn apply(p: &mut Pipe, edit: Edit) -> Option<usize> {
    let bigger = |t: Option<f64>| Some(t.unwrap_or(4.0) + 1.5);
    match edit {
        Edit::Data => {
            p.data_seed += 1;
            None
        }
        Edit::Bump(i) => {
            p.bumps[i] += 1;
            Some(i)
        }
        Edit::Param(i) => {
            match &mut p.nodes[i] {
                Node::Train { epochs, .. } | Node::Distill { epochs, .. } | Node::Sweep { epochs, .. } => {
                    *epochs = Some(epochs.unwrap_or(5) + 7)
                }
                Node::Chain { temperature, .. } => *temperature = bigger(*temperature),
                Node::Prune { sparsity, .. } => *sparsity = (*sparsity + 0.05) % 1.0,
                Node::Eval { split, .. } => {
                    *split = Some(match split.unwrap_or("auto") {
                        "validation" => "test",
                        _ => "validation",
                    })
                }
                Node::Exec { cmd, .. } => *cmd += 1,
            }
            Some(i)
        }
        Edit::Arch(i) => {
            match &mut p.nodes[i] {
                Node::Train { arch, .. } => *arch = arch.next(),
                Node::Distill { student, .. } | Node::Sweep { student, .. } => *student = student.next(),
                // The first step changes, and the later ones learn from it.
                Node::Chain { students, .. } => students[0] = students[0].next(),
                Node::Exec { params, .. } => params.push(("extra", 1)),
                Node::Prune { .. } | Node::Eval { .. } => p.bumps[i] += 1,
            }
            Some(i)
        }
    }
}

fn pipe_and_edit() -> impl Strategy<Value = (Pipe, Style, Edit)> {
    pipe().prop_flat_map(|p| {
        let n = p.nodes.len();
        let edit = prop_oneof![
            1 => Just(Edit::Data),
            2 => (0..n).prop_map(Edit::Bump),
            3 => (0..n).prop_map(Edit::Param),
            2 => (0..n).prop_map(Edit::Arch),
        ];
        (Just(p.clone()), layout(p.item_count()), edit)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn an_edit_changes_exactly_the_stage_and_its_descendants((p, style, edit) in pipe_and_edit()) {
        let before_text = p.render(&style);
        let mut q = p.clone();
        let edited = apply(&mut q, edit);
        let after_text = q.render(&style);
        prop_assert_ne!(&before_text, &after_text);

        let c = compile(&before_text);
        let before = keys_of_compiled(&c, &before_text)?;
        let after = keys_of(&after_text)?;
        let names: Vec<String> = before.iter().map(|(n, _)| n.clone()).collect();
        let after_names: Vec<String> = after.iter().map(|(n, _)| n.clone()).collect();
        prop_assert_eq!(&names, &after_names, "an edit of a parameter renames nothing");
        // Every stage is distinct, so none was merged into another.
        prop_assert!(c.stages.iter().all(|s| s.aliases.is_empty()));

        let direct: BTreeSet<&String> = match edited {
            Some(i) => p.stage_names(&style, i, &names).into_iter().collect(),
            None => c
                .stages
                .iter()
                .filter(|s| s.params.contains_key("data") && s.op.name != "prune")
                .map(|s| &s.name)
                .collect(),
        };
        prop_assert!(!direct.is_empty());
        let mut changed = vec![false; c.stages.len()];
        for (i, s) in c.stages.iter().enumerate() {
            changed[i] = direct.contains(&s.name) || s.inputs.iter().any(|u| changed[u.0 as usize]);
        }
        let changed: BTreeMap<&String, bool> = c.stages.iter().map(|s| &s.name).zip(changed).collect();
        for ((name, k0), (_, k1)) in before.iter().zip(&after) {
            prop_assert_eq!(
                changed[name],
                k0 != k1,
                "stage {} should {}change after {:?}\n--- before ---\n{}\n--- after ---\n{}",
                name,
                if changed[name] { "" } else { "not " },
                edit,
                before_text,
                after_text
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Determinism, explicit defaults, `4` for `4.0`
// ---------------------------------------------------------------------------------------------

fn pipe_and_spellings() -> impl Strategy<Value = (Pipe, Style, bool, bool, FloatStyle)> {
    pipe().prop_flat_map(|p| {
        let n = p.item_count();
        (
            Just(p),
            layout(n),
            any::<bool>(),
            any::<bool>(),
            select(&[FloatStyle::Debug, FloatStyle::Int, FloatStyle::Sci][..]),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn keys_are_deterministic_and_ignore_spelled_out_defaults(
        (p, style, defaults, arch, floats) in pipe_and_spellings()
    ) {
        let text = p.render(&style);
        let once = keys_of(&text)?;
        let twice = keys_of(&text)?;
        prop_assert_eq!(&once, &twice, "the same text gives the same keys in the same order");

        let spelled = Style {
            explicit_defaults: defaults,
            explicit_arch: arch,
            floats,
            ..style.clone()
        };
        let text2 = p.render(&spelled);
        let other = keys_of(&text2)?;
        let ko: Vec<&String> = once.iter().map(|(_, k)| k).collect();
        let k2: Vec<&String> = other.iter().map(|(_, k)| k).collect();
        prop_assert_eq!(ko, k2, "\n--- plain ---\n{}\n--- spelled out ---\n{}", text, text2);
    }
}

#[test]
fn a_default_written_out_or_as_an_integer_changes_no_key() {
    let head = "use std::bert\nlet d = synthetic_text(seed: 1)\n\
                stage t = train(model: bert::mini, data: d)\n";
    let variants = [
        "stage s = distill(teacher: t, student: bert::tiny, data: d)",
        "stage s = distill(teacher: t, student: bert::tiny, data: d, temperature: 4.0)",
        "stage s = distill(teacher: t, student: bert::tiny, data: d, temperature: 4)",
        "stage s = distill(teacher: t, student: bert::tiny, data: d, alpha: 0.5, temperature: 4e0)",
        "stage s = distill(teacher: t, student: bert::tiny, data: d, temperature: 8 / 2)",
        "stage s = distill(teacher: t, student: bert::tiny, data: d, temperature: 2.0 + 2)",
        "stage s = distill(alpha: 0.50, data: d, student: bert(layers: 2, hidden: 128, heads: 2, intermediate: 512), teacher: t)",
    ];
    let base = keys_of(&format!("{head}{}", variants[0])).unwrap();
    for v in &variants[1..] {
        assert_eq!(keys_of(&format!("{head}{v}")).unwrap(), base, "{v}");
    }
    let changed = keys_of(&format!(
        "{head}stage s = distill(teacher: t, student: bert::tiny, data: d, temperature: 4.5)"
    ))
    .unwrap();
    assert_eq!(changed[0], base[0]);
    assert_ne!(changed[1], base[1]);
}

// ---------------------------------------------------------------------------------------------
// 5. Input files: content counts, location does not
// ---------------------------------------------------------------------------------------------

/// A pipeline reading `{dir}/` as GLUE data and `{dir}/train.tsv` as a plain input file.
fn file_pipeline(dir: &str) -> String {
    format!(
        r#"use std::bert
let sst = glue_sst2(path: "{dir}")
let syn = synthetic_text(seed: 1)
stage t_glue = train(model: bert::tiny, data: sst, seed: 1)
stage t_syn = train(model: bert::tiny, data: syn, seed: 2)
stage d_glue = distill(teacher: t_syn, student: bert::tiny, data: sst)
stage d_syn = distill(teacher: t_glue, student: bert::tiny, data: syn)
stage d_pure = distill(teacher: t_syn, student: bert::tiny, data: syn, seed: 5)
stage x = exec(cmd: "wc -l", files: ["{dir}/train.tsv"])
stage y = exec(cmd: "cat", inputs: [d_pure])
stage z = exec(cmd: "cat", inputs: [x, d_pure])
"#
    )
}

/// Stages that read the dataset's files in the directory (directly or through an upstream stage).
const READS_DIR: &[&str] = &["t_glue", "d_glue", "d_syn"];
/// Stages that read train.tsv alone.
const READS_TRAIN_FILE: &[&str] = &["x", "z"];

struct DataDir {
    tmp: tempfile::TempDir,
    dir: String,
}

impl DataDir {
    fn new(dir: &str, train: &str, dev: &str) -> DataDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(dir)).unwrap();
        let d = DataDir {
            tmp,
            dir: dir.to_string(),
        };
        d.write("train.tsv", train);
        d.write("dev.tsv", dev);
        d
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.tmp.path().join(&self.dir).join(file), text).unwrap();
    }

    /// Writes the pipeline for the current directory name and plans it.
    fn keys(&self, fp: &mut Fingerprinter) -> BTreeMap<String, String> {
        let file = self.tmp.path().join("main.rkd");
        std::fs::write(&file, file_pipeline(&self.dir)).unwrap();
        let c = compile_file(&file);
        assert!(c.diags.is_empty(), "{}", render(&c, &c.diags));
        let plan = Plan::build(&c, fp).unwrap_or_else(|d| panic!("{}", render(&c, &d)));
        user_stages(&plan).map(|s| (s.def.name.clone(), hex(&s.key))).collect()
    }

    fn fresh_keys(&self) -> BTreeMap<String, String> {
        self.keys(&mut Fingerprinter::default())
    }

    fn rename(&mut self, to: &str) {
        let root = self.tmp.path();
        std::fs::rename(root.join(&self.dir), root.join(to)).unwrap();
        self.dir = to.to_string();
    }
}

/// Asserts that exactly the stages in `expected` changed.
fn assert_changed(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    expected: &[&str],
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(before.len(), 8);
    prop_assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for (name, k) in before {
        prop_assert_eq!(
            expected.contains(&name.as_str()),
            &after[name] != k,
            "after {}, stage {} should {}change",
            what,
            name,
            if expected.contains(&name.as_str()) { "" } else { "not " }
        );
    }
    Ok(())
}

fn tsv() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z ]{1,12}\t[01]", 0..6).prop_map(|lines| {
        let mut s = String::from("sentence\tlabel\n");
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        s
    })
}

/// Another text of the same length (one character changed).
fn same_length_change(text: &str, at: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let i = at % bytes.len();
    bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
    String::from_utf8(bytes).unwrap()
}

const DIR_NAMES: &[&str] = &["data", "SST-2", "glue data", "d/e", "x.y", "ünï"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn input_files_count_by_content_not_by_location(
        train in tsv(),
        dev in tsv(),
        extra in "[a-z]{0,8}",
        at in any::<usize>(),
        to in select(DIR_NAMES),
    ) {
        let mut d = DataDir::new("data", &train, &dev);
        let k0 = d.fresh_keys();
        prop_assert_eq!(&d.fresh_keys(), &k0, "planning twice");

        // A hidden file is not part of the directory's fingerprint.
        d.write(".hidden", &extra);
        assert_changed(&k0, &d.fresh_keys(), &[], "adding a hidden file")?;

        // Moving the data and updating the path changes nothing.
        if to.contains('/') {
            std::fs::create_dir_all(d.tmp.path().join(to).parent().unwrap()).unwrap();
        }
        d.rename(to);
        assert_changed(&k0, &d.fresh_keys(), &[], "moving the data")?;

        // Changing dev.tsv changes what reads the directory, not what reads train.tsv alone.
        d.write("dev.tsv", &format!("{dev}{extra}\tx\n"));
        let k1 = d.fresh_keys();
        assert_changed(&k0, &k1, READS_DIR, "editing dev.tsv")?;

        // Changing train.tsv changes both.
        d.write("train.tsv", &format!("{train}{extra}\tx\n"));
        let k2 = d.fresh_keys();
        let both: Vec<&str> = READS_DIR.iter().chain(READS_TRAIN_FILE).copied().collect();
        assert_changed(&k1, &k2, &both, "editing train.tsv")?;

        // As `rkd plan` does: a stat cache that is saved and loaded between plans. A quick
        // rewrite with the same length must still be seen.
        let cache = d.tmp.path().join("stat-cache.json");
        let mut fp = Fingerprinter::load(&cache);
        let k3 = d.keys(&mut fp);
        fp.save(&cache).unwrap();
        prop_assert_eq!(&k3, &k2);
        let train2 = format!("{train}{extra}\tx\n");
        d.write("train.tsv", &same_length_change(&train2, at));
        let mut fp = Fingerprinter::load(&cache);
        let k4 = d.keys(&mut fp);
        assert_changed(&k3, &k4, &both, "rewriting train.tsv with the same length")?;

        // A file the dataset does not read (glue_sst2 reads train.tsv and dev.tsv) changes
        // nothing: a test split, a README.
        d.write("test.tsv", &extra);
        d.write("README.md", &extra);
        assert_changed(&k4, &d.fresh_keys(), &[], "adding files it does not read")?;
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests for bugs these properties led to (each a minimal reproducer)
// ---------------------------------------------------------------------------------------------

/// Compiles `text` on a thread with the main thread's usual 8 MiB stack; `None` if it takes
/// longer than `secs` (the thread is left behind).
fn compile_with_timeout(text: String, secs: u64) -> Option<Compiled> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(compile(&text));
        })
        .unwrap();
    rx.recv_timeout(std::time::Duration::from_secs(secs)).ok()
}

#[test]
fn a_long_operator_chain_is_not_a_stack_overflow() {
    // Evaluation recurses through Binary, Index, Field and Neg nodes: an over-long chain must
    // be a diagnostic, not a stack overflow that aborts the process.
    for text in [
        format!("let x = 1{}\n", " + 1".repeat(50_000)),
        format!("let x = [[1]]{}\n", "[0]".repeat(50_000)),
        format!("let x = {}1\n", "-".repeat(50_000)),
    ] {
        let c = compile_with_timeout(text, 60).expect("compiles within 60 s");
        assert!(
            c.diags.iter().any(|d| d.kind.name() == "syntax"),
            "{:?}",
            c.diags.first().map(|d| &d.message)
        );
    }
    // A long but reasonable chain still compiles.
    let c = compile_with_timeout(format!("let x = 1{}\n", " + 1".repeat(1_000)), 60).unwrap();
    assert!(c.diags.is_empty());
}

#[test]
fn branching_recursion_is_reported_promptly() {
    let text = "fn f(x) {\n  let a = f(x: x)\n  let b = f(x: x)\n  x\n}\nlet y = f(x: 1)\n";
    let c = compile_with_timeout(text.to_string(), 10).expect("compiles within 10 s");
    assert!(c.diags.iter().any(|d| d.kind.name() == "recursion"));
}

#[test]
fn negating_the_smallest_integer_is_an_overflow() {
    let text = "let big = -9223372036854775807 - 1\n\
                stage e = exec(cmd: \"true\", params: {n: -big})\n";
    let c = compile(text);
    // `-big` is reported as "integer overflow", like `0 - big`.
    assert!(
        c.diags.iter().any(|d| d.message == "integer overflow"),
        "-big compiled to {:?}",
        c.stages.first().map(|s| &s.params)
    );
}

#[test]
fn one_directory_spelled_two_ways_is_one_stage() {
    let d = DataDir::new("data", "sentence\tlabel\na\t1\n", "sentence\tlabel\nb\t0\n");
    let file = d.tmp.path().join("main.rkd");
    std::fs::write(
        &file,
        "use std::bert\n\
         stage a = train(model: bert::tiny, data: glue_sst2(path: \"data\"))\n\
         stage b = train(model: bert::tiny, data: glue_sst2(path: \"./data\"))\n\
         stage c = train(model: bert::tiny, data: glue_sst2(path: \"data/\"))\n",
    )
    .unwrap();
    let c = compile_file(&file);
    let plan = Plan::build(&c, &mut Fingerprinter::default()).unwrap();
    let keys: BTreeSet<String> = plan.stages().map(|s| hex(&s.key)).collect();
    assert_eq!(keys.len(), 1, "one key");
    // Identical stages are one node (with aliases), so the engine runs the key once.
    assert_eq!(plan.len(), 1, "one node");
}

#[test]
fn resources_say_where_a_stage_runs_not_what_it_computes() {
    let head = "use std::bert\nlet d = synthetic_text(seed: 1)\n";
    let plain = keys_of(&format!("{head}stage t = train(model: bert::tiny, data: d)\n")).unwrap();
    let sized = keys_of(&format!(
        "{head}stage t = train(model: bert::tiny, data: d, resources: {{cpus: 8, mem: \"16G\", time: \"2h\"}})\n"
    ))
    .unwrap();
    assert_eq!(plain, sized, "resources changed the key");
}
