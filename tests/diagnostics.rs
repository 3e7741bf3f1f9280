//! Snapshot tests of the diagnostics `rkd check` prints, one per kind of error.

mod common;
use common::Test;

const HEADER: &str =
    "use std::bert\nlet data = synthetic_text(seed: 1)\nstage teacher = train(model: bert::mini, data: data)\n";

/// `rkd check main.rkd` on `src`, which must fail; returns stderr.
fn check(src: &str) -> String {
    let out = Test::new().file("main.rkd", src).args(&["check", "main.rkd"]).expect(1);
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for a failing check: {}",
        out.stdout
    );
    out.stderr
}

fn with_header(rest: &str) -> String {
    format!("{HEADER}{rest}")
}

#[test]
fn syntax_error() {
    insta::assert_snapshot!(check(
        "use std::bert\nstage t = train(model: bert::mini, data: d,, epochs: 3)\n"
    ));
}

/// Control characters in a string of the file (an ESC that would restyle the terminal, a lone
/// CR that would overwrite the line) are escaped in the message and in the quoted source, and
/// the label still points at the string.
#[test]
fn control_characters_from_the_file_are_escaped() {
    let out = check(&with_header(
        "stage c = exec(cmd: \"true\", inputs: [\"no\u{1b}[2Jpe\"])\n# a lone\rCR\n",
    ));
    assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
    insta::assert_snapshot!(out);
}

#[test]
fn syntax_error_unclosed_call() {
    insta::assert_snapshot!(check(
        "let d = synthetic_text(seed: 1\nstage t = train(model: x, data: d)\n"
    ));
}

#[test]
fn unknown_op_suggests_the_closest() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = distil(teacher: teacher, student: bert::tiny, data: data)\n"
    )));
}

#[test]
fn unknown_parameter_suggests_the_closest() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = distill(teacher: teacher, student: bert::tiny, data: data, temprature: 2.0)\n"
    )));
}

#[test]
fn unknown_name_suggests_the_closest() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = distill(teacher: teachr, student: bert::tiny, data: data)\n"
    )));
}

#[test]
fn unknown_module_member() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = distill(teacher: teacher, student: bert::mnii, data: data)\n"
    )));
}

#[test]
fn unknown_module() {
    insta::assert_snapshot!(check("use std::bret\n"));
}

#[test]
fn module_not_imported() {
    insta::assert_snapshot!(check(
        "let d = synthetic_text(seed: 1)\nstage t = train(model: vit::l3, data: d)\n"
    ));
}

#[test]
fn wrong_type() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = train(model: bert::tiny, data: data, epochs: \"three\")\n"
    )));
}

#[test]
fn untrained_architecture_as_teacher() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = distill(teacher: bert::base, student: bert::tiny, data: data)\n"
    )));
}

#[test]
fn stage_as_student() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = distill(teacher: teacher, student: teacher, data: data)\n"
    )));
}

#[test]
fn missing_required_argument() {
    insta::assert_snapshot!(check(&with_header("stage s = distill(teacher: teacher, data: data)\n")));
}

#[test]
fn sparsity_out_of_range() {
    insta::assert_snapshot!(check(&with_header("stage p = prune(model: teacher, sparsity: 1.3)\n")));
}

#[test]
fn temperature_zero() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = distill(teacher: teacher, student: bert::tiny, data: data, temperature: 0)\n"
    )));
}

#[test]
fn out_of_range_through_a_stdlib_function_points_at_the_call_site() {
    insta::assert_snapshot!(check(&with_header(
        "use std::strategies::{successive}\nlet chain = successive(teacher: teacher, students: [bert::tiny], data: data, alpha: 1.5)\n"
    )));
}

#[test]
fn duplicate_name() {
    insta::assert_snapshot!(check(&with_header(
        "stage teacher = train(model: bert::tiny, data: data)\n"
    )));
}

#[test]
fn shadowing_in_a_block() {
    insta::assert_snapshot!(check(&with_header(
        "sweep seed in [1, 2] {\n  let data = synthetic_text(seed: seed)\n}\n"
    )));
}

#[test]
fn import_cycle() {
    let out = Test::new()
        .file("main.rkd", "use \"lib/a.rkd\" as a\n")
        .file("lib/a.rkd", "use \"b.rkd\" as b\n")
        .file("lib/b.rkd", "use \"a.rkd\" as a\n")
        .args(&["check", "main.rkd"])
        .expect(1);
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn used_before_declared() {
    insta::assert_snapshot!(check(
        "use std::bert\nstage t = train(model: bert::mini, data: data)\nlet data = synthetic_text(seed: 1)\n"
    ));
}

#[test]
fn empty_sweep() {
    insta::assert_snapshot!(check(&with_header(
        "sweep t in [] {\n  stage s = distill(teacher: teacher, student: bert::tiny, data: data, temperature: t)\n}\n"
    )));
}

/// Values already reported (here a division by zero) are not reported again as a repeated
/// sweep value: they all show as `?`.
#[test]
fn a_sweep_over_invalid_values_reports_them_once() {
    let err = check("sweep d in [1 / 0, 2 / 0] {\n  stage s = exec(cmd: \"true\", params: {d: d})\n}\n");
    assert!(err.contains("has 2 problems"), "{err}");
    assert!(!err.contains("twice"), "{err}");
    insta::assert_snapshot!(err);
}

#[test]
fn positional_argument() {
    insta::assert_snapshot!(check(&with_header("stage p = prune(teacher, sparsity: 0.3)\n")));
}

#[test]
fn stage_must_be_one_stage() {
    insta::assert_snapshot!(check(&with_header("stage both = [teacher, teacher]\n")));
}

#[test]
fn index_out_of_range() {
    insta::assert_snapshot!(check(&with_header(
        "let xs = [teacher]\nstage p = prune(model: xs[3])\n"
    )));
}

#[test]
fn arguments_that_do_not_fit_together() {
    insta::assert_snapshot!(check(&with_header(
        "stage f = fuse(teachers: [teacher], student: bert::tiny, data: data, fusion: \"weighted\", weights: [0.5, 0.4])\n"
    )));
}

#[test]
fn unknown_enum_value() {
    insta::assert_snapshot!(check(&with_header(
        "stage p = prune(model: teacher, method: \"l1_unstructed\")\n"
    )));
}

#[test]
fn recursion() {
    insta::assert_snapshot!(check("fn forever(x) { forever(x: x) }\nlet y = forever(x: 1)\n"));
}

#[test]
fn several_errors_are_all_reported() {
    let err = check(&with_header(
        "stage a = distill(teacher: teacher, student: bert::tiny, data: data, temperature: 0)\n\
         stage b = prune(model: teacher, sparsity: 1.3)\n\
         stage c = trian(model: bert::tiny, data: data)\n",
    ));
    assert!(err.contains("has 3 problems"), "{err}");
    insta::assert_snapshot!(err);
}

/// `let NAME0 = FIRST`, then `count` lines each doubling the previous value with `step`.
fn doubling(first: &str, step: &str, count: usize) -> String {
    let mut src = format!("let v0 = {first}\n");
    for i in 1..=count {
        src.push_str(&format!(
            "let v{i} = {}\n",
            step.replace("PREV", &format!("v{}", i - 1))
        ));
    }
    src
}

#[test]
fn sweep_with_too_many_points_is_refused_before_it_is_expanded() {
    insta::assert_snapshot!(check(
        "sweep a in range(end: 1000), b in range(end: 1000), c in range(end: 1000) {\n  stage s = exec(cmd: \"true\", params: {a: a, b: b, c: c})\n}\nstage all = exec(cmd: \"true\", inputs: s)\n"
    ));
}

#[test]
fn string_doubled_forty_times_is_refused_at_the_expression() {
    let err = check(&doubling("\"x\"", "PREV + PREV", 40));
    assert!(err.contains("has 1 problem"), "{err}");
    insta::assert_snapshot!(err);
}

#[test]
fn list_doubled_forty_times_is_refused_at_the_expression() {
    let err = check(&doubling("[1]", "[PREV] + [PREV]", 40));
    assert!(err.contains("has 1 problem"), "{err}");
    insta::assert_snapshot!(err);
}

#[test]
fn use_of_a_device_is_refused() {
    insta::assert_snapshot!(check("use \"/dev/zero\" as z\n"));
}

#[test]
fn use_of_a_file_over_the_size_cap_is_refused() {
    let t = Test::new()
        .file("main.rkd", "use \"big.rkd\" as big\n")
        .file("big.rkd", "");
    std::fs::File::options()
        .write(true)
        .open(t.path().join("big.rkd"))
        .unwrap()
        .set_len((16 << 20) + 1)
        .unwrap();
    insta::assert_snapshot!(t.args(&["check", "main.rkd"]).expect(1).stderr);
}

#[test]
fn use_of_a_fifo_is_refused_without_blocking() {
    let t = Test::new().file("main.rkd", "use \"pipe.rkd\" as p\n");
    let made = std::process::Command::new("mkfifo")
        .arg(t.path().join("pipe.rkd"))
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let err = t.args(&["check", "main.rkd"]).expect(1).stderr;
    assert!(
        err.contains("cannot read module \"pipe.rkd\": it is not a regular file"),
        "{err}"
    );
    assert!(err.contains("rkd::file"), "{err}");
}

#[test]
fn a_model_for_other_images_than_the_data_gives() {
    insta::assert_snapshot!(check(
        "use std::vit\nstage t = train(model: vit::l3, data: synthetic_images(seed: 1, classes: 3))\n"
    ));
}

#[test]
fn a_text_model_on_image_data() {
    insta::assert_snapshot!(check(&with_header(
        "stage s = train(model: bert::tiny, data: synthetic_images(seed: 1))\n"
    )));
}

#[test]
fn max_len_longer_than_the_models_positions() {
    insta::assert_snapshot!(check(
        "let long = synthetic_text(seed: 1, max_len: 128)\n\
         let small = bert(layers: 1, hidden: 32, heads: 2, intermediate: 64, max_position: 64)\n\
         stage t = train(model: small, data: long)\n"
    ));
}

#[test]
fn a_trained_model_on_data_with_other_classes() {
    insta::assert_snapshot!(check(&with_header(
        "stage e = eval(model: teacher, data: synthetic_text(seed: 2, classes: 3))\n"
    )));
}

#[test]
fn a_teacher_is_followed_back_to_its_architecture() {
    insta::assert_snapshot!(check(
        "use std::vit\nlet big = synthetic_images(seed: 1, image_size: 224)\n\
         let small = synthetic_images(seed: 1)\n\
         stage t = train(model: vit::l3, data: big)\n\
         stage s = distill(teacher: t, student: vit(layers: 1, hidden: 32, heads: 2, patch: 8, image_size: 32), data: small)\n"
    ));
}

#[test]
fn a_device_as_the_pipeline_file_is_refused() {
    let out = Test::new().args(&["check", "/dev/zero"]).expect(1);
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn missing_input_file_is_reported_by_plan() {
    let out = Test::new()
        .file(
            "main.rkd",
            "use std::bert\nlet sst2 = glue_sst2(path: \"data/SST-2\")\nstage t = train(model: bert::tiny, data: sst2)\n",
        )
        .args(&["plan", "main.rkd"])
        .expect(1);
    let stderr = out.stderr.replace(&*out_dir_marker(), "<tmp>");
    assert!(stderr.contains("data/SST-2 does not exist"), "{stderr}");
    assert!(stderr.contains("rkd::file"), "{stderr}");
}

/// A device or a FIFO named as an input is refused when `rkd plan` fingerprints it, instead of
/// being read for ever (`/dev/zero`) or blocking until a writer comes (a FIFO).
#[test]
fn a_device_or_fifo_as_an_input_file_is_refused_by_plan() {
    let t = Test::new().file(
        "main.rkd",
        "stage s = exec(cmd: \"true\", files: [\"/dev/zero\"])\nstage f = exec(cmd: \"true\", files: [\"pipe\"])\n",
    );
    let made = std::process::Command::new("mkfifo")
        .arg(t.path().join("pipe"))
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let err = t.args(&["plan", "main.rkd"]).expect(1).stderr;
    assert!(err.contains("/dev/zero is not a regular file or a folder"), "{err}");
    assert!(err.contains("pipe is not a regular file or a folder"), "{err}");
    assert!(err.contains("rkd::file"), "{err}");
}

fn out_dir_marker() -> String {
    std::env::temp_dir().display().to_string()
}

/// A name with a letter outside ASCII is reported at that letter (not at the start of the
/// item), with an ASCII spelling; the same letters in strings and comments are fine.
#[test]
fn a_name_with_a_letter_outside_ascii() {
    insta::assert_snapshot!(
        "accented_name_on_line_2",
        check("stage a = exec(cmd: \"echo hi\")\nlet données = 1\n")
    );
    insta::assert_snapshot!("accented_name_on_line_1", check("stage modèle = exec(cmd: \"x\")\n"));
    insta::assert_snapshot!("name_in_another_script", check("stage 模型 = exec(cmd: \"x\")\n"));
    Test::new()
        .file(
            "main.rkd",
            "# modèle, données, 模型\nstage m = exec(cmd: \"echo données 模型\")\n",
        )
        .args(&["check", "main.rkd"])
        .expect(0);
}

/// Habits from Python get a hint that says what rkd writes instead.
#[test]
fn python_habits_get_a_hint() {
    insta::assert_snapshot!(
        "python_equals_for_arguments",
        check("let d = synthetic_text(seed = 1)\n")
    );
    insta::assert_snapshot!(
        "python_single_quotes",
        check("let d = synthetic_text(seed: 1, name: 'x')\n")
    );
    insta::assert_snapshot!(
        "python_missing_comma",
        check("let d = synthetic_text(seed: 1 classes: 2)\n")
    );
    insta::assert_snapshot!(
        "python_capital_true",
        check(&with_header(
            "stage s = eval(model: teacher, data: data, split: True)\n"
        ))
    );
}

/// Sizes, dimensions and lengths have upper bounds: a value that would overflow or exhaust
/// memory when the stage runs is refused by `rkd check`, at the argument.
#[test]
fn size_parameters_past_their_bounds() {
    insta::assert_snapshot!(check(
        "let d = synthetic_text(seed: 0, train_size: 9223372036854775807, vocab_size: 1000, max_len: 16)\n\
         let m = bert(layers: 1, hidden: 32, heads: 2, intermediate: 9223372036854775807, vocab_size: 1000, max_position: 9223372036854775807)\n\
         stage u = train(model: m, data: d, epochs: 1)\n"
    ));
}

#[test]
fn models_past_the_parameter_limit() {
    // Every size within its own bounds, the whole far past 10 billion parameters.
    insta::assert_snapshot!(check(
        "let m = bert(layers: 48, hidden: 8192, heads: 64, intermediate: 65536)\n\
         let v = vit(layers: 48, hidden: 8192, heads: 64, patch: 16, image_size: 224)\n\
         let ok = bert(layers: 24, hidden: 1024, heads: 16, intermediate: 4096)\n"
    ));
}

#[test]
fn generated_data_past_the_memory_limit() {
    insta::assert_snapshot!(check(
        "let d = synthetic_images(seed: 0, train_size: 10_000_000, image_size: 1024)\n"
    ));
}

#[test]
fn integer_literal_past_64_bits() {
    insta::assert_snapshot!(check("let d = synthetic_text(seed: 99999999999999999999999999)\n"));
    // The smallest 64-bit integer is one.
    Test::new()
        .file("main.rkd", "let x = [-9223372036854775808, 9223372036854775807]\n")
        .args(&["check", "main.rkd"])
        .expect(0);
}

/// A diagnostic on a line too long to quote gives its location instead of the line (miette
/// panics on a label past column 65,535, and the line would flood the terminal): here an
/// unknown name at column 80,014, and the same behind a line of context.
#[test]
fn a_problem_on_a_very_long_line_is_located_without_quoting_it() {
    let long = format!("let x = \"{}\" + y\n", "a".repeat(80_000));
    insta::assert_snapshot!(check(&long));
    let err = check(&format!("{long}let z = w\n"));
    assert!(err.contains("main.rkd:2:9: not found in this scope"), "{err}");
    assert!(err.len() < 2000, "{err}");
    // A file whose lines end in a carriage return alone is one line to the renderer.
    let err = check(&format!("let x = \"{}\"\rlet z = w\r", "a".repeat(70_000)));
    assert!(err.contains("unknown name `w`"), "{err}");
    // A line of a thousand characters is still quoted.
    let err = check(&format!("let x = [{}] + w\n", "1, ".repeat(300)));
    assert!(err.contains("╰── not found in this scope"), "{err}");
}

#[test]
fn a_file_that_is_not_utf8() {
    let t = Test::new().args(&["check", "main.rkd"]);
    std::fs::write(t.path().join("main.rkd"), b"let x = \"\xff\"\n").unwrap();
    let out = t.expect(1);
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn a_leading_byte_order_mark_is_skipped() {
    Test::new()
        .file("main.rkd", "\u{feff}let d = synthetic_text(seed: 1)\n")
        .args(&["check", "main.rkd"])
        .expect(0);
    // Columns count from the first character after it.
    insta::assert_snapshot!(check("\u{feff}let d = synthetic_text(seed: -1)\n"));
}

#[test]
fn an_environment_variable_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let t = Test::new().file(
        "main.rkd",
        "let d = text_table(path: env(name: \"RKDX\"), text: \"t\", label: \"l\")\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rkd"))
        .args(["check", "main.rkd"])
        .current_dir(t.path())
        .env("NO_COLOR", "1")
        .env("RKDX", std::ffi::OsStr::from_bytes(b"echo \xff"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stderr));
}

/// A name no environment variable can have (empty, or with `=` or NUL) is an error, with or
/// without `default:`, rather than "not set" with a hint to `export =...`.
#[test]
fn a_name_no_environment_variable_can_have() {
    let err = check("let a = env(name: \"\", default: \"x\")\nlet b = env(name: \"DATA=x\")\n");
    assert!(err.contains("has 2 problems"), "{err}");
    insta::assert_snapshot!(err);
    let err = check("let c = env(name: \"A\0B\")\n");
    assert!(err.contains("\"A\\u{0}B\" cannot be the name"), "{err}");
}

/// Every ```rkd block of the README passes `rkd check`: a complete pipeline as it is, a fragment
/// (no `use` or `let` first) after the names the README's other examples define.
#[test]
fn readme_examples_check() {
    const FRAGMENT_NAMES: &str = "use std::bert\n\
        let sst2 = glue_sst2(path: \"data/SST-2\", holdout: 0.1)\n\
        stage teacher = train(model: bert::mini, data: sst2)\n\
        stage student = distill(teacher: teacher, student: bert::tiny, data: sst2)\n";
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let mut blocks: Vec<String> = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for line in readme.lines() {
        let trimmed = line.trim_start();
        match &mut open {
            None if trimmed == "```rkd" => open = Some((line.len() - trimmed.len(), String::new())),
            Some((_, text)) if trimmed == "```" => {
                blocks.push(std::mem::take(text));
                open = None;
            }
            Some((indent, text)) => {
                text.push_str(line.get(*indent..).unwrap_or(""));
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(blocks.len() >= 2, "{} rkd blocks", blocks.len());
    for block in blocks {
        let complete = block.starts_with("use ") || block.starts_with("let ");
        let src = if complete {
            block.clone()
        } else {
            format!("{FRAGMENT_NAMES}{block}")
        };
        // `rkd check` reads the data files: the examples' SST-2 folder holds two sentences each.
        let sst2 = "sentence\tlabel\na fine film \t1\na dull film \t0\n";
        let out = Test::new()
            .file("data/SST-2/train.tsv", sst2)
            .file("data/SST-2/dev.tsv", sst2)
            .file("main.rkd", &src)
            .args(&["check", "main.rkd"])
            .run();
        assert_eq!(out.code, 0, "{block}\n{}", out.stderr);
    }
}
