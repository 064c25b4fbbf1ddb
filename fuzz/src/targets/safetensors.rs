//! The safetensors target: a checkpoint directory holding one
//! `model.safetensors`, opened as the project opens checkpoints (through
//! Hugging Face's `safetensors` crate), every tensor decoded to f32.

use std::collections::BTreeMap;
use std::path::Path;

use formats::safetensors::{write_file, SafetensorsCheckpoint, StoredDtype, TensorToWrite};
use formats::HostTensor;
use serde_json::{json, Value};

use super::Outcome;
use crate::mutate::{decimal_fields, mutate_json, Field, Rng, Width};

/// The header length, and the numbers of the JSON header (offsets, shapes).
pub fn fields(data: &[u8]) -> Vec<Field> {
    let mut out = vec![Field { at: 0, width: Width::Le(8) }];
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")).min(data.len() as u64 - 8) as usize;
        out.extend(decimal_fields(&data[8..8 + n]).into_iter().map(|f| Field { at: f.at + 8, width: f.width }));
    }
    out
}

/// Opens the checkpoint directory holding the input and decodes every tensor.
pub fn run(path: &Path) -> Outcome {
    let dir = path.parent().expect("the input lies in the work directory");
    let ckpt = match SafetensorsCheckpoint::open(dir) {
        Ok(c) => c,
        Err(e) => return Outcome::err("open", e),
    };
    let infos: Vec<(String, Vec<usize>)> = ckpt.tensors().map(|(n, i)| (n.clone(), i.shape.clone())).collect();
    for (name, shape) in infos.iter().take(256) {
        match ckpt.tensor_f32(name) {
            Ok(t) => {
                let n: usize = shape.iter().product();
                assert_eq!(t.data.len(), n, "decoded length of {name:?} with shape {shape:?}");
            }
            Err(e) => return Outcome::err("decode", e),
        }
    }
    Outcome::ok("tensors")
}

/// A safetensors file from a header and data section.
fn assemble(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Seeds: files written by the project's writer in every stored type, and
/// hand-made headers with other dtypes, metadata, empty and scalar tensors.
pub fn seeds(scratch: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let a = HostTensor::new(vec![2, 3], vec![1.0, -2.0, 0.5, 3.25, -0.0, 1e-3]);
    let b = HostTensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]);
    for dtype in [StoredDtype::F32, StoredDtype::F16, StoredDtype::BF16] {
        let path = scratch.join("seed.safetensors");
        let tensors = [
            TensorToWrite { name: "model.embed_tokens.weight", dtype, tensor: &a },
            TensorToWrite { name: "model.norm.weight", dtype, tensor: &b },
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        if write_file(&path, &tensors, &meta).is_ok() {
            out.extend(std::fs::read(&path).ok());
        }
    }
    for (dtype, size) in [("I64", 8), ("U8", 1), ("F64", 8), ("BOOL", 1), ("F8_E4M3", 1), ("I32", 4)] {
        let header = json!({
            "__metadata__": {"format": "pt"},
            "x": {"dtype": dtype, "shape": [2, 2], "data_offsets": [0, 4 * size]},
        });
        out.push(assemble(&header, &vec![1u8; 4 * size]));
    }
    let header = json!({
        "empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
        "scalar": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]},
        "v": {"dtype": "BF16", "shape": [3], "data_offsets": [2, 8]},
    });
    out.push(assemble(&header, &[0x3c, 0, 0x80, 0x3f, 0, 0x40, 0x40, 0x40]));
    out
}

/// A mutation of the JSON header that keeps the file well framed: offsets
/// that overlap, shapes that disagree with sizes, unknown dtypes, keys
/// dropped or added.
pub fn structured(data: &[u8], rng: &mut Rng, _scratch: &Path) -> Option<Vec<u8>> {
    let n = usize::try_from(u64::from_le_bytes(data.get(..8)?.try_into().ok()?)).ok()?;
    let header_bytes = data.get(8..8usize.checked_add(n)?)?;
    let mut header: Value = serde_json::from_slice(header_bytes).ok()?;
    let rest = &data[8 + n..];
    let names: Vec<String> = header.as_object()?.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if names.is_empty() || rng.one_in(3) {
        mutate_json(&mut header, &["dtype", "shape", "data_offsets", "__metadata__"], rng);
        return Some(assemble(&header, rest));
    }
    let name = rng.pick(&names).clone();
    let other = rng.pick(&names).clone();
    let other_offsets = header[&other]["data_offsets"].clone();
    let t = header.get_mut(&name)?;
    match rng.below(5) {
        0 => t["data_offsets"] = other_offsets,
        1 => {
            let begin = t["data_offsets"][0].as_u64().unwrap_or(0);
            let end = t["data_offsets"][1].as_u64().unwrap_or(0);
            let shift = rng.below(8) as u64 + 1;
            t["data_offsets"] = json!([begin.saturating_sub(shift), end.saturating_sub(shift)]);
        }
        2 => t["dtype"] = json!(rng.pick(&["F32", "F16", "BF16", "I8", "U64", "F8_E5M2", "C64", "F4", ""])),
        3 => {
            let dims: Vec<u64> = (0..rng.below(5)).map(|_| *rng.pick(&[0u64, 1, 2, 3, 1 << 20, 1 << 32, u64::MAX])).collect();
            t["shape"] = json!(dims);
        }
        _ => {
            let offsets = t["data_offsets"].clone();
            header[format!("{name}.copy")] = json!({"dtype": "F32", "shape": [1], "data_offsets": offsets});
        }
    }
    Some(assemble(&header, rest))
}
