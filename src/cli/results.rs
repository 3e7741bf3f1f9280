//! `rkd report` and `rkd export`: reading results out of the store.

use crate::plan::Plan;
use crate::registry::{OpKind, Output};
use crate::report::{render_text, Report};
use crate::store::Store;
use std::path::Path;
use std::process::ExitCode;

/// Prints the table of each `report` stage of the pipeline that has run, and its files.
pub fn report(file: &Path, store: Option<&Path>) -> ExitCode {
    let Some((_, plan, store)) = super::load_plan(file, store) else {
        return ExitCode::FAILURE;
    };
    let reports: Vec<_> = plan.stages().filter(|s| s.def.op.name == "report").collect();
    if reports.is_empty() {
        crate::say!(
            "error: {} has no `report` stage\n  help: add one, e.g. `stage results = report(models: [teacher, student], data: data)`",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let mut missing = Vec::new();
    for (i, s) in reports.iter().enumerate() {
        let dir = store.out_dir(&s.key);
        if !store.contains(&s.key) {
            missing.push(s.def.name.clone());
            continue;
        }
        // What is printed is what the stage stored: its files are hashed first (a report is small).
        if let Err(e) = verified(&store, &s.key, &s.def.name, file, "nothing is shown") {
            crate::say!("error: {e}");
            return ExitCode::FAILURE;
        }
        match Report::load(&dir.join("report.json")) {
            Ok(mut r) => {
                // Names are not part of keys: show each model under its name in the file now.
                let names: std::collections::HashMap<String, String> = plan
                    .stages()
                    .map(|st| (crate::store::key::hex(&st.key), st.def.shown()))
                    .collect();
                let renamed = r.relabel(&|k| names.get(k).cloned());
                if i > 0 {
                    println!();
                }
                println!("{}", s.def.name);
                print!("{}", render_text(&r));
                if renamed > 0 {
                    println!(
                        "({renamed} model{} shown under {} current name; the stored report files keep the names of \
                         when it ran)",
                        if renamed == 1 { "" } else { "s" },
                        if renamed == 1 { "its" } else { "their" }
                    );
                }
                println!();
                let mut files: Vec<_> = std::fs::read_dir(&dir)
                    .map(|d| d.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                files.sort();
                for f in files {
                    println!("  {}", f.display());
                }
            }
            Err(e) => {
                crate::say!("error: {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if !missing.is_empty() {
        crate::say!(
            "error: not run yet (or changed since): {}\n  help: `rkd run {}` first",
            missing.join(", "),
            file.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `Err` saying what is damaged (and that `outcome` followed) when the stored result of the
/// stage `name` of `file` fails its hash check.
fn verified(store: &Store, key: &crate::store::key::Key, name: &str, file: &Path, outcome: &str) -> Result<(), String> {
    let problems = crate::store::manifest::Manifest::verify(&store.entry_dir(key));
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the stored result of `{name}` is damaged ({}): {outcome}\n  help: `rkd run {}` moves it aside and runs the stage again",
        problems.join("; "),
        file.display()
    ))
}

/// Copies a model stage's output into `out` as a Hugging Face directory.
pub fn export(file: &Path, name: &str, out: &Path, store: Option<&Path>) -> ExitCode {
    let Some((_, plan, store)) = super::load_plan(file, store) else {
        return ExitCode::FAILURE;
    };
    match export_stage(&plan, &store, file, name, out) {
        Ok(files) => {
            println!("exported `{name}` to {} ({} files)", out.display(), files.len());
            for f in files {
                println!("  {f}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::say!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn export_stage(plan: &Plan, store: &Store, file: &Path, name: &str, out: &Path) -> Result<Vec<String>, String> {
    let Some(stage) = plan.find(name) else {
        return Err(crate::engine::select::not_one_stage(plan, file, name));
    };
    if stage.def.op.kind != OpKind::Stage(Output::Model) {
        return Err(format!(
            "stage `{name}` (op `{}`) has no model to export: export a train, distill, fuse, qlora or prune stage",
            stage.def.op.name
        ));
    }
    if !store.contains(&stage.key) {
        return Err(format!(
            "`{name}` has not run yet (or changed since)\n  help: `rkd run {} --only {name}` first",
            file.display()
        ));
    }
    verified(store, &stage.key, name, file, "nothing was exported")?;
    let src = store.out_dir(&stage.key);
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(format!("{} exists and is not empty", out.display()));
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut copied = Vec::new();
    copy_model_files(&src, out, Path::new(""), &mut copied)?;
    point_adapter_at(out, &store.root)?;
    let config = crate::ml::checkpoint::read_config(out).map_err(|e| e.to_string())?;
    if let crate::ml::ModelConfig::Vit(v) = config {
        let pre = out.join("preprocessor_config.json");
        if !pre.exists() {
            std::fs::write(&pre, preprocessor_config(v.image_size)).map_err(|e| format!("{}: {e}", pre.display()))?;
            copied.push("preprocessor_config.json".into());
        }
    }
    copied.sort();
    Ok(copied)
}

/// A QLoRA stage's `adapter_config.json` names its base by where the base was when it trained,
/// often inside the store; the export holds that base itself (the NF4 weights beside the adapter),
/// so a path into the store becomes the export's own directory. A Hub id is kept.
fn point_adapter_at(out: &Path, store_root: &Path) -> Result<(), String> {
    let path = out.join(crate::ml::compress::lora::ADAPTER_CONFIG);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = v["base_model_name_or_path"].as_str().map(Path::new);
    if base.is_some_and(|b| b.starts_with(store_root)) {
        let here = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
        v["base_model_name_or_path"] = serde_json::Value::from(here.display().to_string());
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Copies what makes up the model (not the op's metrics, logs or predictions), subdirectories
/// (a QLoRA stage's `merged/`) included.
fn copy_model_files(src: &Path, dst: &Path, rel: &Path, copied: &mut Vec<String>) -> Result<(), String> {
    let entries = std::fs::read_dir(src).map_err(|e| format!("{}: {e}", src.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if !crate::ops::eval::is_model_file(&name) {
            continue;
        }
        if path.is_dir() {
            std::fs::create_dir_all(dst.join(&name)).map_err(|e| e.to_string())?;
            copy_model_files(&path, &dst.join(&name), &rel.join(&name), copied)?;
        } else {
            let to = dst.join(&name);
            std::fs::copy(&path, &to).map_err(|e| format!("{}: {e}", path.display()))?;
            // Stored files are read-only; the exported copy is the user's to change.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| format!("{}: {e}", to.display()))?;
            copied.push(rel.join(&name).display().to_string());
        }
    }
    Ok(())
}

/// The `ViTImageProcessor` settings of rkd's image pipeline: resize to the model's size, scale
/// to [0, 1], normalise with the ImageNet mean and standard deviation.
fn preprocessor_config(size: usize) -> String {
    let mean = crate::data::pixels::IMAGENET_MEAN;
    let std = crate::data::pixels::IMAGENET_STD;
    let v = serde_json::json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": {"height": size, "width": size},
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": mean,
        "image_std": std,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}
