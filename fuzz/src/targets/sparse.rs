//! The sparse target: a checkpoint directory whose `model.safetensors`
//! holds pruned matrices in subprune's sparse format (keep bits and packed
//! values, declared under the `subprune.sparse` metadata key), loaded as
//! every stage loads a model; each linear module decoded whole, then
//! multiplied by one and by three rows straight from its stored form, as
//! decoding does (the packed-row kernels read past a row's start).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use formats::safetensors::{write_file, StoredDtype, TensorToWrite};
use formats::sparse::{metadata_value, pack_row, KEEP_SUFFIX, METADATA_KEY, VALUES_SUFFIX};
use formats::HostTensor;
use model::nn::Linear;
use model::{load_model, select_device, DeviceChoice};
use serde_json::{json, Value};
use testkit::{hf_config_json, tiny_weights, TINY};

use super::Outcome;
use crate::mutate::{mutate_json, Rng};

/// Most decoder layers whose modules one input runs.
const LAYERS: usize = 4;

/// Loads the checkpoint directory holding the input (writing the tiny
/// model's config.json beside it first) and runs every linear module.
pub fn run(path: &Path) -> Outcome {
    let dir = path.parent().expect("the input lies in the work directory");
    let config = dir.join("config.json");
    if !config.is_file() {
        std::fs::write(&config, hf_config_json(&TINY).to_string()).expect("writing the tiny config.json");
    }
    let loaded = match load_model(dir) {
        Ok(l) => l,
        Err(e) => return Outcome::err("open", e),
    };
    let device = select_device(DeviceChoice::Cpu).expect("the cpu device").device;
    for layer in 0..loaded.config.num_layers().min(LAYERS) {
        for (module, out_features, inner) in loaded.config.linear_modules(layer) {
            let name = format!("{module}.weight");
            if let Err(e) = loaded.weights.load(&name) {
                return Outcome::err("decode", e);
            }
            let Some(rows) = loaded.weights.rows_of(&name) else { return Outcome::ok("unstored") };
            let linear = Linear::from_stored(vec![rows], None, &device);
            for batch in [1usize, 3] {
                let x: Tensor<2> = Tensor::from_data(TensorData::new(vec![0.5f32; batch * inner], [batch, inner]), &device);
                assert_eq!(linear.forward(x).dims(), [batch, out_features], "the product of {name}");
            }
        }
    }
    Outcome::ok("products")
}

/// Seeds: the tiny model with its layer-0 and layer-1 linears in the
/// sparse format, values in f16, bf16 and f32, with unstructured, 2:4,
/// all-kept and all-pruned rows.
pub fn seeds(scratch: &Path) -> Vec<Vec<u8>> {
    let weights = tiny_weights(&TINY, 1);
    let mut out = Vec::new();
    for (seed, dtype) in [(0u8, StoredDtype::F16), (1, StoredDtype::BF16), (2, StoredDtype::F32)] {
        let mut tensors: BTreeMap<String, (StoredDtype, HostTensor)> = BTreeMap::new();
        let mut shapes = BTreeMap::new();
        for (name, tensor) in &weights {
            let [rows, cols] = tensor.shape[..] else {
                tensors.insert(name.clone(), (dtype, tensor.clone()));
                continue;
            };
            if !name.contains("_proj.") || cols % 8 != 0 {
                tensors.insert(name.clone(), (dtype, tensor.clone()));
                continue;
            }
            let keep_bytes = cols / 8;
            let (mut keep, mut values) = (Vec::with_capacity(rows * keep_bytes), Vec::new());
            for (r, row) in tensor.data.chunks_exact(cols).enumerate() {
                let bytes: Vec<u8> = (0..keep_bytes)
                    .map(|b| match (r + b + usize::from(seed)) % 5 {
                        0 => 0x00,
                        1 => 0xFF,
                        2 => 0b1010_0101,
                        _ => ((r * 37 + b * 11) % 256) as u8,
                    })
                    .collect();
                pack_row(row, &bytes, &mut values);
                keep.extend(bytes.iter().map(|&b| f32::from(b)));
            }
            let nnz = values.len();
            tensors.insert(format!("{name}{KEEP_SUFFIX}"), (StoredDtype::U8, HostTensor::new(vec![rows, keep_bytes], keep)));
            tensors.insert(format!("{name}{VALUES_SUFFIX}"), (dtype, HostTensor::new(vec![nnz], values)));
            shapes.insert(name.clone(), [rows, cols]);
        }
        let to_write: Vec<TensorToWrite<'_>> =
            tensors.iter().map(|(name, (dtype, tensor))| TensorToWrite { name, dtype: *dtype, tensor }).collect();
        let metadata = BTreeMap::from([(METADATA_KEY.to_string(), metadata_value(&shapes))]);
        let path = scratch.join("seed.safetensors");
        if write_file(&path, &to_write, &metadata).is_ok() {
            out.extend(std::fs::read(&path).ok());
        }
    }
    out
}

/// A mutation of the sparse declaration (the matrices, their shapes, the
/// version) inside the header's metadata; otherwise the safetensors
/// target's header mutations.
pub fn structured(data: &[u8], rng: &mut Rng, scratch: &Path) -> Option<Vec<u8>> {
    if rng.one_in(2) {
        return super::safetensors::structured(data, rng, scratch);
    }
    let n = usize::try_from(u64::from_le_bytes(data.get(..8)?.try_into().ok()?)).ok()?;
    let mut header: Value = serde_json::from_slice(data.get(8..8usize.checked_add(n)?)?).ok()?;
    let declared = header.get("__metadata__")?.get(METADATA_KEY)?.as_str()?;
    let mut sparse: Value = serde_json::from_str(declared).ok()?;
    mutate_json(&mut sparse, &["version", "tensors"], rng);
    header["__metadata__"][METADATA_KEY] = json!(sparse.to_string());
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&data[8 + n..]);
    Some(out)
}
