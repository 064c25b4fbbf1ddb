//! subprune's compressed sparse weight format: a pruned matrix stored as its
//! keep bits and its kept values only, inside an ordinary safetensors file.
//!
//! A matrix `NAME` (e.g. `model.layers.0.mlp.up_proj.weight`) of shape
//! `[rows, cols]` is stored as two tensors instead of one:
//! - `NAME.keep`: dtype `U8`, shape `[rows, ceil(cols / 8)]`. Bit `j % 8`
//!   (least significant first) of byte `j / 8` of row `i` is 1 when weight
//!   `(i, j)` is kept. Bits past `cols` in a row's last byte are 0.
//! - `NAME.values`: dtype `F16`, `BF16` or `F32`, shape `[nnz]`: the kept
//!   weights in row-major order (row 0's kept values left to right, then
//!   row 1's, ...), where `nnz` is the number of set keep bits.
//!
//! The file's `__metadata__` names the matrices stored this way and their
//! dense shapes, under the key [`METADATA_KEY`], as JSON:
//! `{"version": 1, "tensors": {"NAME": [rows, cols], ...}}`. Every shard of
//! a sharded checkpoint carries the whole list. Every other tensor is an
//! ordinary dense one. A reader rebuilds `NAME` by placing the values, in
//! order, at the kept positions and zeros elsewhere; a kept weight may
//! itself be zero, so the keep bits (the mask) survive exactly.

use std::collections::BTreeMap;

/// The `__metadata__` key of a safetensors file with sparse matrices.
pub const METADATA_KEY: &str = "subprune.sparse";
/// Suffix of a sparse matrix's keep-bits tensor.
pub const KEEP_SUFFIX: &str = ".keep";
/// Suffix of a sparse matrix's packed-values tensor.
pub const VALUES_SUFFIX: &str = ".values";
/// The version of the format this code writes and reads.
pub const VERSION: u64 = 1;

/// The `__metadata__` value declaring `shapes` (dense name -> [rows, cols]).
pub fn metadata_value(shapes: &BTreeMap<String, [usize; 2]>) -> String {
    serde_json::json!({"version": VERSION, "tensors": shapes}).to_string()
}

/// Parses the `__metadata__` value of [`METADATA_KEY`] into dense name -> [rows, cols].
pub fn parse_metadata(text: &str) -> Result<BTreeMap<String, [usize; 2]>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("`{METADATA_KEY}` is not valid JSON: {e}"))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(VERSION) => {}
        Some(v) => return Err(format!("`{METADATA_KEY}` has version {v}; this subprune reads version {VERSION}")),
        None => return Err(format!("`{METADATA_KEY}` has no integer `version`")),
    }
    let tensors = value
        .get("tensors")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| format!("`{METADATA_KEY}` has no object `tensors` of name -> [rows, cols]"))?;
    tensors
        .iter()
        .map(|(name, shape)| {
            let dims: Option<Vec<usize>> =
                shape.as_array().and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect());
            match dims.as_deref() {
                Some(&[rows, cols]) => Ok((name.clone(), [rows, cols])),
                _ => Err(format!("`{METADATA_KEY}`: tensor `{name}` has shape {shape}; expected [rows, cols]")),
            }
        })
        .collect()
}

/// Where each row's values start in a sparse matrix's packed values,
/// checked against its keep bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseRows {
    /// Columns of the dense matrix.
    pub cols: usize,
    /// Index in the packed values of each row's first kept value, and the
    /// total count of kept values last (`rows + 1` entries).
    pub starts: Vec<usize>,
}

impl SparseRows {
    /// Counts the kept values of every row of `keep` (`rows` rows of
    /// `ceil(cols / 8)` bytes), refusing bits set past `cols`.
    pub fn from_keep(keep: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        let row_bytes = cols.div_ceil(8);
        if keep.len() != rows * row_bytes {
            return Err(format!("keep bits of [{rows}, {cols}]: expected {} bytes, found {}", rows * row_bytes, keep.len()));
        }
        let tail_mask = if cols % 8 == 0 { 0 } else { 0xFFu8 << (cols % 8) };
        let mut starts = Vec::with_capacity(rows + 1);
        let mut total = 0usize;
        starts.push(0);
        for (i, row) in keep.chunks_exact(row_bytes.max(1)).take(rows).enumerate() {
            if row.last().is_some_and(|&last| last & tail_mask != 0) {
                return Err(format!("keep bits of row {i} are set past column {cols}"));
            }
            total += row.iter().map(|b| b.count_ones() as usize).sum::<usize>();
            starts.push(total);
        }
        if row_bytes == 0 {
            starts.resize(rows + 1, 0);
        }
        Ok(SparseRows { cols, starts })
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.starts.len() - 1
    }

    /// Kept values in all.
    pub fn nnz(&self) -> usize {
        *self.starts.last().expect("rows + 1 starts")
    }
}

/// Appends the kept values of a dense row to `out`, left to right.
pub fn pack_row(dense: &[f32], keep: &[u8], out: &mut Vec<f32>) {
    out.extend(dense.iter().enumerate().filter(|(j, _)| keep[j / 8] >> (j % 8) & 1 == 1).map(|(_, &v)| v));
}

/// Writes a dense row: `packed` (its kept values, in order) at the kept
/// positions and zeros elsewhere. `packed` holds exactly the row's kept values.
pub fn unpack_row(packed: &[f32], keep: &[u8], dense: &mut [f32]) {
    let mut next = packed.iter();
    for (values, &byte) in dense.chunks_mut(8).zip(keep) {
        if byte == 0 {
            values.fill(0.0);
            continue;
        }
        for (bit, value) in values.iter_mut().enumerate() {
            *value = if byte >> bit & 1 == 1 { *next.next().expect("one packed value per kept bit") } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_packs_and_unpacks_to_itself_with_kept_zeros_kept() {
        // 11 columns: keep 0, 2, 3 (a kept zero), 8 and 10.
        let dense = [1.0f32, 9.0, 2.0, 0.0, 9.0, 9.0, 9.0, 9.0, 3.0, 9.0, 4.0];
        let keep = [0b0000_1101u8, 0b0000_0101];
        let mut packed = Vec::new();
        pack_row(&dense, &keep, &mut packed);
        assert_eq!(packed, [1.0, 2.0, 0.0, 3.0, 4.0]);
        let mut back = [7.0f32; 11];
        unpack_row(&packed, &keep, &mut back);
        assert_eq!(back, [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 4.0]);
        let rows = SparseRows::from_keep(&[keep, [0xFF, 0x07]].concat(), 2, 11).unwrap();
        assert_eq!((rows.starts.clone(), rows.nnz(), rows.rows()), (vec![0, 5, 16], 16, 2));
    }

    #[test]
    fn bad_keep_bits_and_metadata_are_refused_with_the_reason() {
        assert!(SparseRows::from_keep(&[0xFF, 0x08], 1, 11).unwrap_err().contains("set past column 11"));
        assert!(SparseRows::from_keep(&[0xFF], 1, 11).unwrap_err().contains("expected 2 bytes, found 1"));
        let shapes = BTreeMap::from([("a.weight".to_string(), [4usize, 11])]);
        assert_eq!(parse_metadata(&metadata_value(&shapes)).unwrap(), shapes);
        assert!(parse_metadata(r#"{"version": 2, "tensors": {}}"#).unwrap_err().contains("version 2"));
        assert!(parse_metadata(r#"{"version": 1, "tensors": {"a": [1]}}"#).unwrap_err().contains("expected [rows, cols]"));
        assert!(parse_metadata("[").unwrap_err().contains("not valid JSON"));
    }
}
