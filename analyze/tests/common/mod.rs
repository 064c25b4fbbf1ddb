//! Helpers shared by the analyze tests: masks and results written through the artifacts API.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use artifacts::{write_mask, write_results, ArtifactKind, MaskInfo, MaskRow, Provenance, ResultRow};
use serde_json::json;

/// A fixed model fingerprint for test artifacts.
pub const MODEL: &str = "sha256:test-model";

/// Packs keep flags LSB first, padding bits zero.
pub fn pack(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Parses rows like "1010" (1 = kept) into keep flags.
pub fn rows(spec: &[&str]) -> Vec<Vec<bool>> {
    spec.iter().map(|r| r.chars().map(|c| c == '1').collect()).collect()
}

/// Writes a mask of the given modules (name, keep flags per row) for `model`.
pub fn write_test_mask_for(path: &Path, modules: &[(&str, Vec<Vec<bool>>)], model: &str) -> PathBuf {
    let mut out = Vec::new();
    let (mut kept, mut total) = (0usize, 0usize);
    for (name, matrix) in modules {
        for (r, bits) in matrix.iter().enumerate() {
            kept += bits.iter().filter(|b| **b).count();
            total += bits.len();
            out.push(MaskRow {
                module: (*name).to_string(),
                row: r as u32,
                in_features: bits.len() as u32,
                keep: pack(bits),
                values: None,
            });
        }
    }
    let sparsity = 1.0 - kept as f64 / total.max(1) as f64;
    let info = MaskInfo { method: "wanda".into(), sparsity, pattern: "unstructured-0.5".into(), group: "row".into() };
    let prov = Provenance::new(ArtifactKind::Mask, model, json!({"test": true}), "analyze-test");
    write_mask(path, &out, &info, &prov).unwrap();
    path.to_path_buf()
}

/// Writes a mask for the fixed test model.
pub fn write_test_mask(path: &Path, modules: &[(&str, Vec<Vec<bool>>)]) -> PathBuf {
    write_test_mask_for(path, modules, MODEL)
}

/// Writes a results file with one perplexity row.
pub fn write_ppl(path: &Path, mask: Option<&str>, domain: &str, value: f64, ci: Option<(f64, f64)>) -> PathBuf {
    write_metric(path, mask, &format!("perplexity/{domain}"), "perplexity", value, ci)
}

/// Writes a results file with one row of `metric` for `task`.
pub fn write_metric(path: &Path, mask: Option<&str>, task: &str, metric: &str, value: f64, ci: Option<(f64, f64)>) -> PathBuf {
    let row = ResultRow {
        model: MODEL.into(),
        mask: mask.map(str::to_string),
        task: task.into(),
        metric: metric.into(),
        value,
        n: 1000,
        stderr: None,
        ci_low: ci.map(|c| c.0),
        ci_high: ci.map(|c| c.1),
    };
    let prov = Provenance::new(ArtifactKind::Results, MODEL, json!({}), "analyze-test");
    write_results(path, &[row], &prov).unwrap();
    path.to_path_buf()
}

/// A deterministic pseudo-random generator (64-bit LCG), for reproducible masks.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next pseudo-random bit.
    pub fn bit(&mut self) -> bool {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 63 == 1
    }

    /// A matrix of pseudo-random keep flags.
    pub fn matrix(&mut self, rows: usize, cols: usize) -> Vec<Vec<bool>> {
        (0..rows).map(|_| (0..cols).map(|_| self.bit()).collect()).collect()
    }
}

/// The Jaccard distance of the pruned sets of two masks given as flags, by explicit set counting.
pub fn naive_distance(a: &[Vec<Vec<bool>>], b: &[Vec<Vec<bool>>]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (ma, mb) in a.iter().zip(b) {
        for (ra, rb) in ma.iter().zip(mb) {
            for (ka, kb) in ra.iter().zip(rb) {
                let (pa, pb) = (!ka, !kb);
                inter += u64::from(pa && pb);
                union += u64::from(pa || pb);
            }
        }
    }
    if union == 0 {
        0.0
    } else {
        1.0 - inter as f64 / union as f64
    }
}

/// CRC-32 computed bit by bit (independent of the crate's table-driven one).
fn crc32_bitwise(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
        }
    }
    !c
}

/// Decodes an 8-bit RGB, non-interlaced PNG into (width, height, RGB bytes),
/// checking the signature, every chunk's CRC, the chunk order and all five row
/// filter types; panics on anything else.
pub fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    use std::io::Read;
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature of {}", path.display());
    let mut pos = 8;
    let (mut width, mut height) = (0u32, 0u32);
    let mut idat = Vec::new();
    let mut kinds = Vec::new();
    while pos < bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        let crc = u32::from_be_bytes(bytes[pos + 8 + len..pos + 12 + len].try_into().unwrap());
        assert_eq!(crc, crc32_bitwise(&bytes[pos + 4..pos + 8 + len]), "CRC of chunk {}", String::from_utf8_lossy(kind));
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap());
                height = u32::from_be_bytes(data[4..8].try_into().unwrap());
                assert_eq!(&data[8..13], &[8, 2, 0, 0, 0], "8-bit RGB, deflate, adaptive filtering, no interlace");
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        kinds.push(String::from_utf8_lossy(kind).into_owned());
        pos += 12 + len;
    }
    assert_eq!(kinds.first().map(String::as_str), Some("IHDR"));
    assert_eq!(kinds.last().map(String::as_str), Some("IEND"));
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(idat.as_slice()).read_to_end(&mut raw).unwrap();
    let stride = width as usize * 3;
    assert_eq!(raw.len(), (stride + 1) * height as usize, "decompressed size");
    let mut out = vec![0u8; stride * height as usize];
    for y in 0..height as usize {
        let filter = raw[y * (stride + 1)];
        for x in 0..stride {
            let v = raw[y * (stride + 1) + 1 + x];
            let a = if x >= 3 { out[y * stride + x - 3] } else { 0 };
            let b = if y > 0 { out[(y - 1) * stride + x] } else { 0 };
            let c = if x >= 3 && y > 0 { out[(y - 1) * stride + x - 3] } else { 0 };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = ((p - i16::from(a)).abs(), (p - i16::from(b)).abs(), (p - i16::from(c)).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("unknown PNG filter type {f}"),
            };
            out[y * stride + x] = v.wrapping_add(predicted);
        }
    }
    (width, height, out)
}
