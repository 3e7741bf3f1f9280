//! Tests of `Dataset`: loading through the constructor arguments, and batching.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use super::*;
use crate::ml::ModelInput;
use crate::value::{PathValue, Value};

fn path_value(p: &Path) -> Value {
    Value::Path(Arc::new(PathValue {
        written: p.display().to_string(),
        resolved: p.to_path_buf(),
        span: crate::source::Span::new(crate::source::FileId(0), 0, 0),
    }))
}

fn params(pairs: &[(&str, Value)]) -> Params {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn text_parts(b: &Batch) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let ModelInput::Text {
        input_ids,
        attention_mask,
        ..
    } = &b.input
    else {
        panic!("expected a text batch")
    };
    (
        input_ids.to_vec2().unwrap(),
        attention_mask.as_ref().unwrap().to_vec2().unwrap(),
    )
}

fn pixels(b: &Batch) -> Vec<f32> {
    let ModelInput::Images { pixel_values } = &b.input else {
        panic!("expected an image batch")
    };
    pixel_values.flatten_all().unwrap().to_vec1().unwrap()
}

fn synthetic_text() -> Dataset {
    synthetic_text_with(&[])
}

/// The small synthetic text set, with `extra` arguments added.
fn synthetic_text_with(extra: &[(&str, Value)]) -> Dataset {
    let mut p = params(&[
        ("seed", Value::Int(3)),
        ("train_size", Value::Int(50)),
        ("val_size", Value::Int(20)),
        ("test_size", Value::Int(20)),
        ("max_len", Value::Int(16)),
        ("vocab_size", Value::Int(100)),
    ]);
    p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Dataset::load("synthetic_text", &p, &LoadOptions::default()).unwrap()
}

#[test]
fn holdout_moves_a_stratified_fixed_part_of_train_and_leaves_the_other_splits() {
    let plain = synthetic_text();
    assert_eq!(plain.selection_split(), SplitName::Validation);
    let with = |h: f64| synthetic_text_with(&[("holdout", Value::Float(h))]);
    let d = with(0.2);
    assert_eq!(d.selection_split(), SplitName::Holdout);
    assert_eq!(d.len(SplitName::Train) + d.len(SplitName::Holdout), 50);
    // Stratified: each class gives a fifth of its training examples.
    for class in 0..2u32 {
        let count = |s: SplitName, d: &Dataset| d.labels(s).iter().filter(|&&l| l == class).count();
        let before = count(SplitName::Train, &plain);
        assert_eq!(count(SplitName::Holdout, &d), (0.2 * before as f64).round() as usize);
    }
    // Validation and test are untouched, and the carve is the same on every load.
    for s in [SplitName::Validation, SplitName::Test] {
        assert_eq!(d.token_ids(s), plain.token_ids(s));
    }
    let again = with(0.2);
    assert_eq!(again.token_ids(SplitName::Holdout), d.token_ids(SplitName::Holdout));
    assert_eq!(again.token_ids(SplitName::Train), d.token_ids(SplitName::Train));
    // Every held-out example came from train.
    let train: Vec<&Vec<u32>> = plain.token_ids(SplitName::Train).unwrap().iter().collect();
    for ids in d.token_ids(SplitName::Holdout).unwrap() {
        assert!(train.contains(&ids));
    }
}

fn synthetic_images() -> Dataset {
    let p = params(&[
        ("seed", Value::Int(3)),
        ("train_size", Value::Int(12)),
        ("val_size", Value::Int(6)),
        ("image_size", Value::Int(16)),
    ]);
    Dataset::load("synthetic_images", &p, &LoadOptions::default()).unwrap()
}

#[test]
fn text_batches_pad_dynamically_with_a_mask() {
    let d = synthetic_text();
    assert_eq!(d.kind, DataKind::Text { max_len: 16 });
    assert_eq!(
        (
            d.len(SplitName::Train),
            d.len(SplitName::Validation),
            d.len(SplitName::Test)
        ),
        (50, 20, 20)
    );
    assert_eq!(d.classes, ["class_0", "class_1"]);
    assert_eq!(d.tokenizer.as_ref().unwrap().vocab_size(), 100);
    let bs = d.batches(SplitName::Train, 16, None, false, &Device::Cpu).unwrap();
    assert_eq!(bs.iter().map(Batch::len).collect::<Vec<_>>(), [16, 16, 16, 2]);
    let ids = d.token_ids(SplitName::Train).unwrap();
    for b in &bs {
        let (x, m) = text_parts(b);
        let longest = b.indices.iter().map(|&i| ids[i].len()).max().unwrap();
        assert_eq!(x[0].len(), longest);
        assert!(longest <= 16);
        for (row, (&i, mask)) in x.iter().zip(b.indices.iter().zip(&m)) {
            let n = ids[i].len();
            assert_eq!(&row[..n], &ids[i][..]);
            assert!(row[n..].iter().all(|&t| t == 0));
            assert_eq!(mask.iter().sum::<u32>() as usize, n);
            assert!(mask[..n].iter().all(|&v| v == 1));
        }
        let labels: Vec<u32> = b.labels.to_vec1().unwrap();
        let want: Vec<u32> = b.indices.iter().map(|&i| d.labels(SplitName::Train)[i]).collect();
        assert_eq!(labels, want);
    }
    assert_eq!(bs[0].indices, (0..16).collect::<Vec<_>>());
    assert!(d
        .batches(SplitName::Holdout, 8, None, false, &Device::Cpu)
        .unwrap()
        .is_empty());
    assert!(d.batches(SplitName::Train, 0, None, false, &Device::Cpu).is_err());
    assert!(d.labels(SplitName::Holdout).is_empty());
}

#[test]
fn shuffle_is_seeded() {
    let d = synthetic_text();
    let order = |seed| -> Vec<usize> {
        d.batches(SplitName::Train, 7, seed, false, &Device::Cpu)
            .unwrap()
            .iter()
            .flat_map(|b| b.indices.clone())
            .collect()
    };
    assert_eq!(order(Some(1)), order(Some(1)));
    assert_ne!(order(Some(1)), order(Some(2)));
    assert_ne!(order(Some(1)), order(None));
    let mut all = order(Some(1));
    all.sort();
    assert_eq!(all, (0..50).collect::<Vec<_>>());
}

#[test]
fn image_batches_augment_only_when_asked() {
    let d = synthetic_images();
    assert!(d.augments());
    assert_eq!(
        d.kind,
        DataKind::Images {
            image_size: 16,
            channels: 3
        }
    );
    let dev = Device::Cpu;
    let plain = d.batches(SplitName::Train, 5, Some(9), false, &dev).unwrap();
    let ModelInput::Images { pixel_values } = &plain[0].input else {
        panic!()
    };
    assert_eq!(pixel_values.dims(), [5, 3, 16, 16]);
    assert_eq!(plain.last().unwrap().len(), 2);
    let again = d.batches(SplitName::Train, 5, Some(9), false, &dev).unwrap();
    assert_eq!(pixels(&plain[0]), pixels(&again[0]));
    let aug = d.batches(SplitName::Train, 5, Some(9), true, &dev).unwrap();
    let aug2 = d.batches(SplitName::Train, 5, Some(9), true, &dev).unwrap();
    assert_eq!(aug[0].indices, plain[0].indices);
    assert_ne!(pixels(&aug[0]), pixels(&plain[0]));
    assert_eq!(pixels(&aug[0]), pixels(&aug2[0]));
    // Never on other splits.
    let v = d.batches(SplitName::Validation, 6, None, false, &dev).unwrap();
    let va = d.batches(SplitName::Validation, 6, None, true, &dev).unwrap();
    assert_eq!(pixels(&v[0]), pixels(&va[0]));
}

#[test]
fn image_folder_loads_and_respects_its_augment_argument() {
    let dir = images::tests::tiny_folder();
    let p = params(&[
        ("path", path_value(dir.path())),
        ("image_size", Value::Int(8)),
        ("augment", Value::Bool(false)),
    ]);
    let d = Dataset::load("image_folder", &p, &LoadOptions::default()).unwrap();
    assert_eq!(d.classes, ["a_cls", "b_cls"]);
    assert_eq!((d.len(SplitName::Train), d.len(SplitName::Validation)), (4, 2));
    assert!(d.tokenizer.is_none() && !d.augments());
    let dev = Device::Cpu;
    let a = d.batches(SplitName::Train, 4, Some(1), true, &dev).unwrap();
    let b = d.batches(SplitName::Train, 4, Some(1), false, &dev).unwrap();
    assert_eq!(pixels(&a[0]), pixels(&b[0]));
    // The red channel of class a_cls is 20/255 everywhere.
    let b0 = d.batches(SplitName::Train, 4, None, false, &dev).unwrap();
    let px = pixels(&b0[0]);
    let want = (20.0 / 255.0 - pixels::IMAGENET_MEAN[0]) / pixels::IMAGENET_STD[0];
    assert!((px[0] - want).abs() < 1e-5);
}

#[test]
fn image_folder_with_a_cache_dir_gives_the_same_batches() {
    let dir = images::tests::tiny_folder();
    let cache = tempfile::tempdir().unwrap();
    let p = params(&[
        ("path", path_value(dir.path())),
        ("image_size", Value::Int(8)),
        ("augment", Value::Bool(false)),
    ]);
    let opts = LoadOptions {
        cache_dir: Some(cache.path().join("cache")),
        ..LoadOptions::default()
    };
    let plain = Dataset::load("image_folder", &p, &LoadOptions::default()).unwrap();
    let first = Dataset::load("image_folder", &p, &opts).unwrap();
    let files = std::fs::read_dir(cache.path().join("cache")).unwrap().count();
    assert_eq!(files, 1, "one cache file written");
    let second = Dataset::load("image_folder", &p, &opts).unwrap();
    let dev = Device::Cpu;
    for split in [SplitName::Train, SplitName::Validation] {
        let want = plain.batches(split, 3, Some(5), false, &dev).unwrap();
        for d in [&first, &second] {
            assert_eq!(d.classes, plain.classes);
            assert_eq!(d.labels(split), plain.labels(split));
            let got = d.batches(split, 3, Some(5), false, &dev).unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(pixels(g), pixels(w));
            }
        }
    }
}

#[test]
fn glue_sst2_with_trained_and_given_tokenizers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("train.tsv"),
        "sentence\tlabel\na charming , moving film \t1\nbleak and tedious \t0\na moving journey \t1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("dev.tsv"), "sentence\tlabel\ntedious film \t0\n").unwrap();
    let p = params(&[("path", path_value(dir.path())), ("vocab_size", Value::Int(100))]);
    let d = Dataset::load("glue_sst2", &p, &LoadOptions::default()).unwrap();
    assert_eq!(d.classes, ["negative", "positive"]);
    assert_eq!(d.labels(SplitName::Train), [1, 0, 1]);
    assert_eq!(d.kind, DataKind::Text { max_len: 64 });
    let tk = d.tokenizer.clone().unwrap();
    assert_eq!(
        d.token_ids(SplitName::Validation).unwrap()[0],
        tk.encode("tedious film", 64)
    );

    // The saved tokenizer, given back as a pretrained directory, gives the same ids.
    let tdir = tempfile::tempdir().unwrap();
    tk.save(tdir.path()).unwrap();
    let opts = LoadOptions {
        tokenizer_dir: Some(tdir.path().to_path_buf()),
        ..LoadOptions::default()
    };
    let d2 = Dataset::load("glue_sst2", &p, &opts).unwrap();
    assert_eq!(d2.token_ids(SplitName::Train), d.token_ids(SplitName::Train));

    std::fs::write(dir.path().join("dev.tsv"), "sentence\tlabel\nfine \t1\nbroken row\n").unwrap();
    let e = Dataset::load("glue_sst2", &p, &LoadOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("dev.tsv:3: malformed row (no tab between sentence and label): `broken row`"),
        "{e}"
    );
    assert!(Dataset::load("bert", &p, &LoadOptions::default()).is_err());
}

#[test]
fn shared_sst2_sample() {
    let Some(dir) = testdata::shared_data("sst2-sample") else {
        return;
    };
    let p = params(&[("path", path_value(&dir)), ("max_len", Value::Int(64))]);
    let d = Dataset::load("glue_sst2", &p, &LoadOptions::default()).unwrap();
    assert_eq!((d.len(SplitName::Train), d.len(SplitName::Validation)), (2000, 200));
    assert_eq!(d.labels(SplitName::Train).iter().filter(|&&l| l == 1).count(), 1130);
    assert_eq!(d.labels(SplitName::Validation).iter().filter(|&&l| l == 0).count(), 92);
    assert_eq!(d.classes, ["negative", "positive"]);
    let vocab = d.tokenizer.as_ref().unwrap().vocab_size();
    assert!(vocab > 1000 && vocab <= 8000, "trained vocabulary of {vocab}");
    let unk = d.tokenizer.as_ref().unwrap().unk_id();
    let ids = d.token_ids(SplitName::Train).unwrap();
    let unks = ids.iter().flatten().filter(|&&i| i == unk).count();
    assert_eq!(unks, 0, "training sentences should need no [UNK]");

    if let Some(model) = testdata::models_dir("all-MiniLM-L6-v2") {
        let opts = LoadOptions {
            tokenizer_dir: Some(model),
            ..LoadOptions::default()
        };
        let d = Dataset::load("glue_sst2", &p, &opts).unwrap();
        assert_eq!(d.tokenizer.as_ref().unwrap().vocab_size(), 30522);
        let b = &d.batches(SplitName::Validation, 32, None, false, &Device::Cpu).unwrap()[0];
        let (x, _) = text_parts(b);
        assert!(x.iter().all(|r| r[0] == 101));
    }
}

#[test]
fn shared_beans_sample() {
    let Some(dir) = testdata::shared_data("beans-sample") else {
        return;
    };
    let p = params(&[("path", path_value(&dir)), ("image_size", Value::Int(32))]);
    let d = Dataset::load("image_folder", &p, &LoadOptions::default()).unwrap();
    assert_eq!(d.classes, ["angular_leaf_spot", "bean_rust", "healthy"]);
    assert_eq!(
        (
            d.len(SplitName::Train),
            d.len(SplitName::Validation),
            d.len(SplitName::Test)
        ),
        (90, 30, 0)
    );
    for c in 0..3u32 {
        assert_eq!(d.labels(SplitName::Train).iter().filter(|&&l| l == c).count(), 30);
    }
    let bs = d.batches(SplitName::Train, 32, Some(0), true, &Device::Cpu).unwrap();
    assert_eq!(bs.len(), 3);
    let ModelInput::Images { pixel_values } = &bs[0].input else {
        panic!()
    };
    assert_eq!(pixel_values.dims(), [32, 3, 32, 32]);
}

/// Load options that keep prepared datasets in the store `store`.
fn kept_in(store: &tempfile::TempDir) -> LoadOptions {
    LoadOptions {
        cache_dir: Some(store.path().join("cache")),
        ..LoadOptions::default()
    }
}

/// A small sentence-pair table with string labels in `dir`.
fn write_pair_table(dir: &Path) {
    std::fs::write(
        dir.join("train.csv"),
        "a,b,label\nthe cat sat,a cat sat down,same\nrain today,sunny skies,different\nhe left early,he went early,same\n",
    )
    .unwrap();
    std::fs::write(dir.join("validation.csv"), "a,b,label\ncats sit,a cat sits,same\n").unwrap();
}

fn pair_table_params(dir: &Path) -> Params {
    params(&[
        ("path", path_value(dir)),
        ("text", Value::str("a")),
        ("text_pair", Value::str("b")),
        ("label", Value::str("label")),
        ("max_len", Value::Int(16)),
        ("vocab_size", Value::Int(60)),
    ])
}

/// Everything a stage sees of a text dataset: classes, ids, token types, labels, vocabulary.
fn text_view(d: &Dataset) -> (Vec<String>, Vec<Batch>, Vec<u32>, usize) {
    let batches = d.batches(SplitName::Train, 8, None, false, &Device::Cpu).unwrap();
    (
        d.classes.clone(),
        batches,
        d.labels(SplitName::Train).to_vec(),
        d.tokenizer.as_ref().unwrap().vocab_size(),
    )
}

fn same_batches(a: &[Batch], b: &[Batch]) -> bool {
    let parts = |b: &Batch| {
        let ModelInput::Text {
            input_ids,
            token_type_ids,
            ..
        } = &b.input
        else {
            panic!("expected a text batch")
        };
        let types: Option<Vec<Vec<u32>>> = token_type_ids.as_ref().map(|t| t.to_vec2().unwrap());
        (input_ids.to_vec2::<u32>().unwrap(), types)
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| parts(x) == parts(y))
}

#[test]
fn a_table_is_tokenised_once_and_read_prepared_by_the_next_load_even_after_a_move() {
    let store = tempfile::tempdir().unwrap();
    let opts = kept_in(&store);
    let data = tempfile::tempdir().unwrap();
    let first_dir = data.path().join("pairs");
    std::fs::create_dir(&first_dir).unwrap();
    write_pair_table(&first_dir);

    let fresh = Dataset::load("text_table", &pair_table_params(&first_dir), &opts).unwrap();
    let prepared::Prepared::Written(key) = fresh.prepared.clone() else {
        panic!("the first load prepares: {:?}", fresh.prepared)
    };
    let again = Dataset::load("text_table", &pair_table_params(&first_dir), &opts).unwrap();
    assert_eq!(again.prepared, prepared::Prepared::Read(key.clone()));
    let (a, b) = (text_view(&fresh), text_view(&again));
    assert_eq!((&a.0, &a.2, a.3), (&b.0, &b.2, b.3));
    assert!(
        same_batches(&a.1, &b.1),
        "prepared token ids and token types equal fresh ones"
    );
    assert_eq!(
        again.tokenizer.as_ref().unwrap().encode_pair("the cat", "a cat", 16),
        fresh.tokenizer.as_ref().unwrap().encode_pair("the cat", "a cat", 16)
    );
    // The tokenizer a model saves is byte for byte the same, prepared or fresh.
    let json = |d: &Dataset| d.tokenizer.as_ref().unwrap().inner().to_string(true).unwrap();
    assert_eq!(json(&again), json(&fresh));

    // Moved, with a README beside it: the same files are read, the prepared copy serves.
    let moved = data.path().join("moved");
    std::fs::rename(&first_dir, &moved).unwrap();
    std::fs::write(moved.join("README.md"), "notes").unwrap();
    let after_move = Dataset::load("text_table", &pair_table_params(&moved), &opts).unwrap();
    assert_eq!(after_move.prepared, prepared::Prepared::Read(key.clone()));

    // A changed row, or another max_len, is prepared anew.
    std::fs::write(
        moved.join("validation.csv"),
        "a,b,label\ncats sit,a dog sits,different\n",
    )
    .unwrap();
    let edited = Dataset::load("text_table", &pair_table_params(&moved), &opts).unwrap();
    assert!(matches!(edited.prepared, prepared::Prepared::Written(ref k) if *k != key));
    let mut shorter = pair_table_params(&moved);
    shorter.insert("max_len".into(), Value::Int(8));
    let shorter = Dataset::load("text_table", &shorter, &opts).unwrap();
    assert!(matches!(shorter.prepared, prepared::Prepared::Written(_)));

    // The tokenizer is part of the key. The vocabulary trained here was kept under its
    // tokenizer's key too: a model that brings that tokenizer (a student) reads it prepared.
    let with_tokenizer = |d: &Dataset, dir: &Path| {
        d.tokenizer.as_ref().unwrap().save(dir).unwrap();
        LoadOptions {
            tokenizer_dir: Some(dir.to_path_buf()),
            ..opts.clone()
        }
    };
    let same = tempfile::tempdir().unwrap();
    let given = Dataset::load(
        "text_table",
        &pair_table_params(&moved),
        &with_tokenizer(&fresh, same.path()),
    )
    .unwrap();
    assert!(
        matches!(given.prepared, prepared::Prepared::Read(_)),
        "{:?}",
        given.prepared
    );
    assert!(same_batches(&text_view(&given).1, &text_view(&edited).1));
    // Another tokenizer prepares anew.
    let other = tempfile::tempdir().unwrap();
    Tokenizer::train_wordpiece(&["an entirely different corpus of words"], 40)
        .unwrap()
        .save(other.path())
        .unwrap();
    let other_opts = LoadOptions {
        tokenizer_dir: Some(other.path().to_path_buf()),
        ..opts.clone()
    };
    let by_other = Dataset::load("text_table", &pair_table_params(&moved), &other_opts).unwrap();
    assert!(
        matches!(by_other.prepared, prepared::Prepared::Written(_)),
        "{:?}",
        by_other.prepared
    );
}

#[test]
fn a_damaged_prepared_copy_is_never_used_and_is_replaced() {
    let store = tempfile::tempdir().unwrap();
    let opts = kept_in(&store);
    let dir = tempfile::tempdir().unwrap();
    write_pair_table(dir.path());
    let fresh = Dataset::load("text_table", &pair_table_params(dir.path()), &opts).unwrap();
    let prepared::Prepared::Written(key) = fresh.prepared.clone() else {
        panic!("prepared: {:?}", fresh.prepared)
    };
    let file = store
        .path()
        .join("cache")
        .join(prepared::FOLDER)
        .join(format!("{key}.safetensors"));
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    let reloaded = Dataset::load("text_table", &pair_table_params(dir.path()), &opts).unwrap();
    assert_eq!(reloaded.prepared, prepared::Prepared::Replaced(key.clone()));
    assert!(same_batches(&text_view(&fresh).1, &text_view(&reloaded).1));
    let healed = Dataset::load("text_table", &pair_table_params(dir.path()), &opts).unwrap();
    assert_eq!(healed.prepared, prepared::Prepared::Read(key));
}

#[test]
fn a_regression_task_keeps_its_targets_prepared() {
    let store = tempfile::tempdir().unwrap();
    let opts = kept_in(&store);
    let dir = tempfile::tempdir().unwrap();
    let header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
    std::fs::write(
        dir.path().join("train.tsv"),
        format!("{header}0\tmain\tf\t2012\t0\tnone\tnone\ta man plays\ta man is playing\t4.5\n1\tmain\tf\t2012\t1\tnone\tnone\ta dog runs\tthe sky is blue\t0.25\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dev.tsv"),
        format!("{header}0\tmain\tf\t2012\t0\tnone\tnone\ta cat sits\ta cat is sitting\t3.8\n"),
    )
    .unwrap();
    let p = params(&[
        ("task", Value::str("stsb")),
        ("path", path_value(dir.path())),
        ("max_len", Value::Int(16)),
        ("vocab_size", Value::Int(50)),
    ]);
    let fresh = Dataset::load("glue", &p, &opts).unwrap();
    let read = Dataset::load("glue", &p, &opts).unwrap();
    assert!(
        matches!(read.prepared, prepared::Prepared::Read(_)),
        "{:?}",
        read.prepared
    );
    assert!(read.is_regression());
    assert_eq!(read.targets(SplitName::Train), [4.5, 0.25]);
    assert_eq!(
        read.targets(SplitName::Validation),
        fresh.targets(SplitName::Validation)
    );
    assert_eq!(read.token_ids(SplitName::Train), fresh.token_ids(SplitName::Train));
}

#[test]
fn an_image_table_is_decoded_once_and_its_images_must_stay_inside_its_folder() {
    let folder = images::tests::tiny_folder();
    let root = folder.path();
    std::fs::write(
        root.join("train.csv"),
        "file,label\ntrain/a_cls/a_cls_0.png,dark\ntrain/b_cls/b_cls_0.png,light\ntrain/a_cls/a_cls_1.png,dark\n",
    )
    .unwrap();
    std::fs::write(
        root.join("validation.csv"),
        "file,label\nvalidation/b_cls/b_cls_0.png,light\n",
    )
    .unwrap();
    let p = params(&[
        ("path", path_value(root)),
        ("image", Value::str("file")),
        ("label", Value::str("label")),
        ("image_size", Value::Int(8)),
        ("augment", Value::Bool(false)),
    ]);
    let store = tempfile::tempdir().unwrap();
    let opts = kept_in(&store);
    let fresh = Dataset::load("image_table", &p, &opts).unwrap();
    assert!(matches!(fresh.prepared, prepared::Prepared::Written(_)));
    let read = Dataset::load("image_table", &p, &opts).unwrap();
    assert!(matches!(read.prepared, prepared::Prepared::Read(_)));
    assert_eq!(read.classes, ["dark", "light"]);
    for split in [SplitName::Train, SplitName::Validation] {
        let (a, b) = (
            fresh.batches(split, 2, None, false, &Device::Cpu).unwrap(),
            read.batches(split, 2, None, false, &Device::Cpu).unwrap(),
        );
        assert_eq!(read.labels(split), fresh.labels(split));
        assert!(a.iter().zip(&b).all(|(x, y)| pixels(x) == pixels(y)));
    }

    // An image file that is read is part of the key.
    images::tests::write_png(&root.join("train/a_cls/a_cls_1.png"), 12, 90);
    let redrawn = Dataset::load("image_table", &p, &opts).unwrap();
    assert!(matches!(redrawn.prepared, prepared::Prepared::Written(_)));

    // An image outside the folder would not be: refused, naming the row.
    std::fs::write(root.join("validation.csv"), "file,label\n../elsewhere.png,light\n").unwrap();
    let e = Dataset::load("image_table", &p, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("validation.csv:2") && e.contains("leads outside the dataset folder"),
        "{e}"
    );
}

#[test]
fn a_text_table_whose_label_column_holds_ids_is_refused_naming_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,a,b,label\n");
    for i in 0..24 {
        csv.push_str(&format!("{i},text {i},other {i},{}\n", ["no", "yes"][i % 2]));
    }
    std::fs::write(dir.path().join("train.csv"), &csv).unwrap();
    let mut p = pair_table_params(dir.path());
    p.insert("label".into(), Value::str("id"));
    let e = Dataset::load("text_table", &p, &LoadOptions::default()).unwrap_err();
    assert_eq!(e.path.as_deref(), Some(dir.path().join("train.csv").as_path()));
    assert!(
        e.message
            .starts_with("the label column `id` looks like an ID or text column, not classes"),
        "{e}"
    );
    assert!(e.message.ends_with("write `label: \"label\"`"), "{e}");
    // The column it names loads.
    let d = Dataset::load("text_table", &pair_table_params(dir.path()), &LoadOptions::default()).unwrap();
    assert_eq!(d.classes, ["no", "yes"]);
}
