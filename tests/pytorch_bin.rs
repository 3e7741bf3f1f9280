//! `pretrained(path:)` reads a `pytorch_model.bin` (torch.save zip) exactly like `model.safetensors`.
//! The .bin is written from a safetensors file by tests/fixtures/safetensors_to_pth.py (python3,
//! no torch needed).

use candle_core::Device;
use rkd::ml::checkpoint::{load_pretrained, LoadOptions, Pretrained};
use rkd::ml::{BertConfig, ModelConfig};

#[test]
fn a_pytorch_bin_checkpoint_loads_like_its_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    let bin = dir.path().join("bin");
    let mut cfg = BertConfig::new(50, 16, 2, 2, 32, 3);
    cfg.max_position_embeddings = 16;
    Pretrained::random(&ModelConfig::Bert(cfg), 7, &Device::Cpu)
        .unwrap()
        .save(&st)
        .unwrap();

    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(st.join("config.json"), bin.join("config.json")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/safetensors_to_pth.py");
    let status = std::process::Command::new("python3")
        .arg(script)
        .arg(st.join("model.safetensors"))
        .arg(bin.join("pytorch_model.bin"))
        .status()
        .expect("python3 is needed to write the pytorch_model.bin fixture");
    assert!(status.success());
    assert!(!bin.join("model.safetensors").exists());

    let a = load_pretrained(&st, &LoadOptions::default()).unwrap();
    let b = load_pretrained(&bin, &LoadOptions::default()).unwrap();
    // Every variable came from the file (nothing re-initialised), with identical values.
    assert_eq!(a.report.initialised, b.report.initialised);
    assert!(b.report.initialised.is_empty(), "{:?}", b.report.initialised);
    let ta = a.params.tensors().unwrap();
    let tb = b.params.tensors().unwrap();
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (name, x) in &ta {
        let y = &tb[name];
        let (x, y) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(x, y, "{name}");
    }
}
