//! Jaccard distances between the pruned weights of masks: per module, per layer and
//! for the whole model, for every pair of masks, computed in one streaming pass.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

use artifacts::{check_same_model, content_hash, ArtifactError, ArtifactKind, JaccardRow, MaskReader, MaskRow, Provenance};
use indicatif::ProgressBar;

use crate::AnalyzeError;

/// The `module` value of a per-layer total row.
pub const LAYER_ROW: &str = "layer";
/// The `module` value of the whole-model total row.
pub const MODEL_ROW: &str = "model";

/// Rows a reader thread sends to the comparing thread at once.
const CHUNK_ROWS: usize = 2048;

/// A mask file and the name it goes by in the outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedMask {
    /// The name used in jaccard rows, figures and reports.
    pub name: String,
    /// The mask artifact.
    pub path: PathBuf,
}

impl NamedMask {
    /// A mask named after its file stem (`masks/python.parquet` -> `python`).
    pub fn from_stem(path: &Path) -> NamedMask {
        let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        NamedMask { name, path: path.to_path_buf() }
    }
}

/// The Jaccard distances of all pairs of a set of masks, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct JaccardTable {
    /// The model fingerprint the masks share.
    pub model: String,
    /// Mask name and content hash of each input, in input order.
    pub inputs: Vec<(String, String)>,
    /// For each pair (i < j) in input order: its module rows in file order, then
    /// its per-layer totals by layer, then its whole-model total.
    pub rows: Vec<JaccardRow>,
}

impl JaccardTable {
    /// The provenance the table is written with.
    pub fn provenance(&self, created_by: &str) -> Provenance {
        let names: Vec<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
        let params =
            serde_json::json!({ "masks": names, "distance": "1 - |pruned_a & pruned_b| / |pruned_a | pruned_b|, 0 when both are empty" });
        self.inputs.iter().fold(Provenance::new(ArtifactKind::Jaccard, self.model.clone(), params, created_by), |p, (name, hash)| {
            p.with_input(name, hash)
        })
    }

    /// The whole-model rows, one per pair.
    pub fn whole_model(&self) -> impl Iterator<Item = &JaccardRow> {
        self.rows.iter().filter(|r| r.module == MODEL_ROW)
    }
}

/// The Jaccard distance 1 - intersect / union, defined as 0 when both pruned sets are empty.
pub fn distance(intersect: u64, union: u64) -> f64 {
    if union == 0 {
        0.0
    } else {
        1.0 - intersect as f64 / union as f64
    }
}

/// Number of set bits in `bytes`.
fn popcount(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut n: u64 = chunks.by_ref().map(|c| u64::from(u64::from_le_bytes(c.try_into().expect("8 bytes")).count_ones())).sum();
    n += chunks.remainder().iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
    n
}

/// Number of bits set in both `a` and `b` (equal lengths).
fn popcount_and(a: &[u8], b: &[u8]) -> u64 {
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    let mut n: u64 = ca
        .by_ref()
        .zip(cb.by_ref())
        .map(|(x, y)| {
            let x = u64::from_le_bytes(x.try_into().expect("8 bytes"));
            let y = u64::from_le_bytes(y.try_into().expect("8 bytes"));
            u64::from((x & y).count_ones())
        })
        .sum();
    n += ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| u64::from((x & y).count_ones())).sum::<u64>();
    n
}

pub use artifacts::layer_of;

/// Counts of one module, accumulated over its rows.
struct ModuleCounts {
    name: String,
    /// Weights of the module.
    total: u64,
    /// Kept weights, per mask.
    kept: Vec<u64>,
    /// Weights kept by both masks of a pair, per pair.
    both_kept: Vec<u64>,
}

/// Reads a mask on its own thread, sending rows in chunks.
fn spawn_reader(reader: MaskReader) -> Receiver<Result<Vec<MaskRow>, ArtifactError>> {
    let (tx, rx) = sync_channel(2);
    thread::spawn(move || {
        let mut chunk = Vec::with_capacity(CHUNK_ROWS);
        for row in reader {
            match row {
                Ok(r) => chunk.push(r),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            if chunk.len() == CHUNK_ROWS && tx.send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS)))).is_err() {
                return;
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Ok(chunk));
        }
    });
    rx
}

fn describe(row: &MaskRow) -> String {
    format!("`{}` row {} with {} inputs", row.module, row.row, row.in_features)
}

/// Computes the Jaccard distance of the pruned weights (keep bit 0) of every pair of masks.
///
/// The masks are read in lockstep, one chunk of rows per mask in memory at a time,
/// each on its own thread. They must share the model fingerprint and list the same
/// (module, row, in_features) in the same order; the error names both files
/// otherwise. Counting uses popcounts of the packed keep bits: with K the kept
/// count of a row, pruned = in_features - K; for a pair, the weights pruned by both
/// are in_features - (K_a + K_b - K_ab) and those pruned by either in_features -
/// K_ab, where K_ab counts the bits kept by both. Padding bits, zero in every valid
/// mask, are thus never counted. Two empty pruned sets are at distance 0.
pub fn compute_jaccard(masks: &[NamedMask], bar: &ProgressBar) -> Result<JaccardTable, AnalyzeError> {
    if masks.len() < 2 {
        return Err(AnalyzeError::Invalid(format!("comparing masks needs at least two, got {}", masks.len())));
    }
    let mut seen = HashMap::new();
    for m in masks {
        if let Some(other) = seen.insert(m.name.as_str(), &m.path) {
            return Err(AnalyzeError::Invalid(format!(
                "two masks are both named `{}` ({} and {}); give distinct names with --names",
                m.name,
                other.display(),
                m.path.display()
            )));
        }
        if !m.path.exists() {
            return Err(AnalyzeError::MissingFile { path: m.path.clone(), what: format!("mask `{}`:", m.name) });
        }
    }
    let readers = masks.iter().map(|m| MaskReader::open(&m.path)).collect::<Result<Vec<_>, _>>()?;
    for (m, r) in masks.iter().zip(&readers).skip(1) {
        check_same_model(readers[0].provenance(), &masks[0].path, r.provenance(), &m.path)?;
    }
    let model = readers[0].provenance().model.clone();
    bar.set_length(readers[0].num_rows());
    let mut hashes = Vec::with_capacity(masks.len());
    for m in masks {
        hashes.push((m.name.clone(), content_hash(&m.path)?));
    }

    let k = masks.len();
    let pairs: Vec<(usize, usize)> = (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j))).collect();
    let receivers: Vec<_> = readers.into_iter().map(spawn_reader).collect();
    let mut modules: Vec<ModuleCounts> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut rows_done = 0usize;
    loop {
        let chunks: Vec<Option<Vec<MaskRow>>> = receivers.iter().map(|rx| rx.recv().ok().transpose()).collect::<Result<_, _>>()?;
        let lens: Vec<usize> = chunks.iter().map(|c| c.as_ref().map_or(0, Vec::len)).collect();
        if lens.iter().all(|&n| n == 0) {
            break;
        }
        let common = lens.iter().copied().min().unwrap_or(0);
        let chunks: Vec<Vec<MaskRow>> = chunks.into_iter().map(Option::unwrap_or_default).collect();
        for i in 0..common {
            let first = &chunks[0][i];
            for j in 1..k {
                let other = &chunks[j][i];
                if other.module != first.module || other.row != first.row || other.in_features != first.in_features {
                    return Err(AnalyzeError::ShapeMismatch {
                        a_path: masks[0].path.clone(),
                        b_path: masks[j].path.clone(),
                        detail: format!("row {} is {} in the first, {} in the second", rows_done + i, describe(first), describe(other)),
                    });
                }
            }
            let m = match modules.last() {
                Some(last) if last.name == first.module => modules.len() - 1,
                _ => *index.entry(first.module.clone()).or_insert_with(|| {
                    modules.push(ModuleCounts { name: first.module.clone(), total: 0, kept: vec![0; k], both_kept: vec![0; pairs.len()] });
                    modules.len() - 1
                }),
            };
            let counts = &mut modules[m];
            counts.total += u64::from(first.in_features);
            for (j, c) in chunks.iter().enumerate() {
                counts.kept[j] += popcount(&c[i].keep);
            }
            for (p, &(a, b)) in pairs.iter().enumerate() {
                counts.both_kept[p] += popcount_and(&chunks[a][i].keep, &chunks[b][i].keep);
            }
        }
        if let Some(j) = (1..k).find(|&j| lens[j] != lens[0]) {
            let (short, long) = if lens[j] < lens[0] { (j, 0) } else { (0, j) };
            let extra = &chunks[long][lens[short]];
            return Err(AnalyzeError::ShapeMismatch {
                a_path: masks[short].path.clone(),
                b_path: masks[long].path.clone(),
                detail: format!(
                    "{} ends after {} rows, while {} goes on with {}",
                    masks[short].path.display(),
                    rows_done + lens[short],
                    masks[long].path.display(),
                    describe(extra)
                ),
            });
        }
        rows_done += common;
        bar.inc(common as u64);
    }

    let mut rows = Vec::new();
    for (p, &(a, b)) in pairs.iter().enumerate() {
        let row = |layer: Option<u32>, module: &str, total: u64, kept_a: u64, kept_b: u64, both: u64| {
            let intersect = total - (kept_a + kept_b - both);
            let union = total - both;
            JaccardRow {
                mask_a: masks[a].name.clone(),
                mask_b: masks[b].name.clone(),
                layer,
                module: module.to_string(),
                pruned_a: total - kept_a,
                pruned_b: total - kept_b,
                intersect,
                union,
                jaccard_distance: distance(intersect, union),
            }
        };
        let mut layers: BTreeMap<u32, [u64; 4]> = BTreeMap::new();
        let mut whole = [0u64; 4];
        for m in &modules {
            let c = [m.total, m.kept[a], m.kept[b], m.both_kept[p]];
            let layer = layer_of(&m.name);
            rows.push(row(layer, &m.name, c[0], c[1], c[2], c[3]));
            if let Some(l) = layer {
                let e = layers.entry(l).or_default();
                e.iter_mut().zip(c).for_each(|(x, y)| *x += y);
            }
            whole.iter_mut().zip(c).for_each(|(x, y)| *x += y);
        }
        for (l, c) in layers {
            rows.push(row(Some(l), LAYER_ROW, c[0], c[1], c[2], c[3]));
        }
        rows.push(row(None, MODEL_ROW, whole[0], whole[1], whole[2], whole[3]));
    }
    Ok(JaccardTable { model, inputs: hashes, rows })
}

/// Writes a computed table as a jaccard artifact; returns its content hash.
pub fn write_table(path: &Path, table: &JaccardTable, created_by: &str) -> Result<String, AnalyzeError> {
    Ok(artifacts::write_jaccard(path, &table.rows, &table.provenance(created_by))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popcounts_cover_the_chunk_remainder() {
        let a: Vec<u8> = (0..19u8).map(|i| i.wrapping_mul(37)).collect();
        let b: Vec<u8> = (0..19u8).map(|i| i.wrapping_mul(91) ^ 0x5a).collect();
        let naive = |x: &[u8]| x.iter().map(|v| v.count_ones() as u64).sum::<u64>();
        assert_eq!(popcount(&a), naive(&a));
        let and: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x & y).collect();
        assert_eq!(popcount_and(&a, &b), naive(&and));
    }

    #[test]
    fn layer_of_parses_decoder_modules_only() {
        assert_eq!(layer_of("model.layers.12.mlp.down_proj"), Some(12));
        assert_eq!(layer_of("lm_head"), None);
        assert_eq!(distance(0, 0), 0.0);
        assert_eq!(distance(1, 4), 0.75);
    }
}
