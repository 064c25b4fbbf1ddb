//! Sharded safetensors: what `ShardedWriter` writes reads back through
//! `SafetensorsCheckpoint` (and Hugging Face's parser) value for value, in
//! shards of the planned size, with the index transformers expects.

use std::collections::BTreeMap;

use formats::safetensors::{read_checkpoint_dir, SafetensorsCheckpoint, ShardedWriter, StoredDtype, TensorLayout};

fn layout(name: &str, dtype: StoredDtype, shape: &[usize]) -> TensorLayout {
    TensorLayout { name: name.to_string(), dtype, shape: shape.to_vec() }
}

fn values(len: usize, seed: f32) -> Vec<f32> {
    (0..len).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
}

#[test]
fn shards_split_at_the_size_limit_and_read_back_value_for_value() {
    let dir = tempfile::tempdir().unwrap();
    // 128 bytes each for a, b and d (f32), 64 for c (bf16), 400 for e (f16):
    // a 256-byte limit puts a, b in one shard, c, d in the next, e in a third.
    let layouts = vec![
        layout("a", StoredDtype::F32, &[4, 8]),
        layout("b", StoredDtype::F32, &[32]),
        layout("c", StoredDtype::BF16, &[2, 16]),
        layout("d", StoredDtype::F32, &[4, 8]),
        layout("e", StoredDtype::F16, &[200]),
    ];
    let data: Vec<Vec<f32>> = layouts.iter().enumerate().map(|(i, l)| values(l.shape.iter().product(), i as f32)).collect();
    let mut writer = ShardedWriter::create(dir.path(), layouts.clone(), 256, BTreeMap::from([("format".into(), "pt".into())])).unwrap();
    // A tensor out of order is refused.
    assert!(writer.write("b", &data[1]).is_err());
    let mut writer = ShardedWriter::create(dir.path(), layouts.clone(), 256, BTreeMap::from([("format".into(), "pt".into())])).unwrap();
    for (l, d) in layouts.iter().zip(&data) {
        assert!(!dir.path().join("model.safetensors.index.json").exists(), "nothing final before finish");
        writer.write(&l.name, d).unwrap();
    }
    writer.finish().unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "model.safetensors.index.json"
        ]
    );
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["weight_map"]["a"], "model-00001-of-00003.safetensors");
    assert_eq!(index["weight_map"]["c"], "model-00002-of-00003.safetensors");
    assert_eq!(index["weight_map"]["e"], "model-00003-of-00003.safetensors");
    assert_eq!(index["metadata"]["total_size"], 128 + 128 + 64 + 128 + 400);

    let checkpoint = SafetensorsCheckpoint::open(dir.path()).unwrap();
    let all = read_checkpoint_dir(dir.path()).unwrap();
    for (l, d) in layouts.iter().zip(&data) {
        let info = checkpoint.info(&l.name).unwrap();
        assert_eq!((info.dtype, info.shape.clone()), (l.dtype, l.shape.clone()));
        let read = checkpoint.tensor_f32(&l.name).unwrap();
        // Each value is the stored type's rounding of what was written.
        let expected = l.dtype.decode(&l.dtype.encode(d));
        assert_eq!(read.data, expected, "{}", l.name);
        assert_eq!(all.get(&l.name).unwrap().data, expected);
    }
}

#[test]
fn one_shard_is_model_safetensors_and_an_unfinished_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layouts = vec![layout("x", StoredDtype::F32, &[3]), layout("y", StoredDtype::F32, &[2])];
    let mut writer = ShardedWriter::create(dir.path(), layouts.clone(), 1 << 20, BTreeMap::new()).unwrap();
    writer.write("x", &[1.0, 2.0, 3.0]).unwrap();
    // Finishing before every tensor is written is an error, and the
    // temporary shard goes with the writer.
    let err = writer.finish().unwrap_err().to_string();
    assert!(err.contains("only 1 of 2") && err.contains("`y`"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let mut writer = ShardedWriter::create(dir.path(), layouts, 1 << 20, BTreeMap::new()).unwrap();
    writer.write("x", &[1.0, 2.0, 3.0]).unwrap();
    writer.write("y", &[4.0, 5.0]).unwrap();
    writer.finish().unwrap();
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["model.safetensors"]);
    assert_eq!(read_checkpoint_dir(dir.path()).unwrap().get("y").unwrap().data, vec![4.0, 5.0]);
}

#[test]
fn a_tensor_in_two_shards_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for shard in ["one.safetensors", "two.safetensors"] {
        let sub = tempfile::tempdir_in(dir.path()).unwrap();
        let mut writer = ShardedWriter::create(sub.path(), vec![layout("w", StoredDtype::F32, &[2])], 1 << 20, BTreeMap::new()).unwrap();
        writer.write("w", &[1.0, 2.0]).unwrap();
        writer.finish().unwrap();
        std::fs::rename(sub.path().join("model.safetensors"), dir.path().join(shard)).unwrap();
    }
    let index = serde_json::json!({"weight_map": {"w": "one.safetensors", "v": "two.safetensors"}});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = SafetensorsCheckpoint::open(dir.path()).err().expect("must fail").to_string();
    assert!(err.contains("holds tensor `w`, which shard"), "{err}");
}
