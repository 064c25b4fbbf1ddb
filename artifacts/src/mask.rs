//! The `mask` artifact: which weights a pruning keeps, one row per output row of
//! a linear module, as packed bits (1 = kept, least significant bit first, the
//! last byte zero-padded). A method that updates the weights it keeps
//! (SparseGPT) also stores each row's kept values, in column order, in a
//! `values` column: the mask and its values are then the whole sub-model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::columns::{check_field, Accept};
use crate::open_streamed_counted;
use crate::scores::{check_float_list, f32_list_array, f32_list_column, text_column, u32_column, ROWS_PER_BATCH};
use crate::ParquetFile;
use crate::{ArtifactError, ArtifactKind, Provenance};

/// Extra key (under `subprune.mask.`) of the scoring method.
const EXTRA_METHOD: &str = "method";
/// Extra key (under `subprune.mask.`) of the overall pruned fraction.
const EXTRA_SPARSITY: &str = "sparsity";
/// Extra key (under `subprune.mask.`) of the pattern label.
const EXTRA_PATTERN: &str = "pattern";
/// Extra key (under `subprune.mask.`) of the comparison group.
const EXTRA_GROUP: &str = "group";

/// The keep bits of one output row of a linear module.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskRow {
    /// Hugging Face parameter name without `.weight`, e.g. `model.layers.3.mlp.down_proj`.
    pub module: String,
    /// Output row index, in Hugging Face row order.
    pub row: u32,
    /// Number of input columns (bits) of the row.
    pub in_features: u32,
    /// Keep flags packed LSB first, `ceil(in_features / 8)` bytes, padding bits zero.
    pub keep: Vec<u8>,
    /// The kept weights' values after the method's update, in column order
    /// (one per set bit of `keep`); `None` for methods that only select weights.
    pub values: Option<Vec<f32>>,
}

/// File-level facts about a mask, stored as `subprune.mask.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskInfo {
    /// Scoring method, e.g. `wanda` (`subprune.mask.method`).
    pub method: String,
    /// Fraction of the masked weights pruned overall (`subprune.mask.sparsity`).
    pub sparsity: f64,
    /// Pattern label, `unstructured-0.5` or `2:4` (`subprune.mask.pattern`).
    pub pattern: String,
    /// Comparison group, `row` or `layer` (`subprune.mask.group`).
    pub group: String,
}

/// The Arrow schema of a mask artifact: module Utf8, row UInt32, in_features
/// UInt32, keep Binary, and with `values` a List<Float32> column of the kept
/// weights' updated values.
pub fn mask_schema(values: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("module", DataType::Utf8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("in_features", DataType::UInt32, false),
        Field::new("keep", DataType::Binary, false),
    ];
    if values {
        fields.push(Field::new("values", DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))), false));
    }
    Arc::new(Schema::new(fields))
}

/// Checks that a row's `values`, if any, hold one value per kept weight.
fn check_values(path: &Path, row: usize, keep: &[u8], values: Option<&[f32]>) -> Result<(), ArtifactError> {
    let Some(values) = values else { return Ok(()) };
    let kept: usize = keep.iter().map(|b| b.count_ones() as usize).sum();
    if values.len() != kept {
        return Err(ArtifactError::BadValue {
            path: path.to_path_buf(),
            column: "values".to_string(),
            row,
            expected: format!("{kept} values (one per kept weight of the row)"),
            found: format!("{} values", values.len()),
        });
    }
    Ok(())
}

/// Checks that `keep` is `ceil(in_features / 8)` bytes with zero padding bits.
fn check_bits(path: &Path, row: usize, in_features: u32, keep: &[u8]) -> Result<(), ArtifactError> {
    let len = in_features as usize;
    let bad = |found: String| ArtifactError::BadValue {
        path: path.to_path_buf(),
        column: "keep".to_string(),
        row,
        expected: format!("{} bytes of packed bits for in_features {in_features}, padding bits zero", len.div_ceil(8)),
        found,
    };
    if keep.len() != len.div_ceil(8) {
        return Err(bad(format!("{} bytes", keep.len())));
    }
    if len % 8 != 0 && keep[keep.len() - 1] >> (len % 8) != 0 {
        return Err(bad(format!("last byte {:#010b} with padding bits set", keep[keep.len() - 1])));
    }
    Ok(())
}

fn mask_batch(path: &Path, first_row: usize, chunk: &[MaskRow], values: bool) -> Result<RecordBatch, ArtifactError> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| r.module.as_str()))),
        Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|r| r.row))),
        Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|r| r.in_features))),
        Arc::new(BinaryArray::from_iter_values(chunk.iter().map(|r| r.keep.as_slice()))),
    ];
    if values {
        let rows = chunk.iter().map(|r| r.values.as_deref().unwrap_or_default());
        columns.push(Arc::new(f32_list_array(path, "values", first_row, rows)?));
    }
    RecordBatch::try_new(mask_schema(values), columns).map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Writes a mask artifact atomically; returns its content hash.
///
/// `provenance` must be of kind `mask`; `info` is added to it as
/// `subprune.mask.*` extras. Every row's bits must be well formed (see
/// [`MaskRow::keep`]); either every row has values (one per kept weight) or none.
pub fn write_mask(path: &Path, rows: &[MaskRow], info: &MaskInfo, provenance: &Provenance) -> Result<String, ArtifactError> {
    if provenance.kind != ArtifactKind::Mask {
        return Err(ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Mask, found: provenance.kind });
    }
    let mut writer = MaskWriter::create(path, rows.first().is_some_and(|r| r.values.is_some()))?;
    for row in rows {
        writer.push(row.clone())?;
    }
    writer.finish(info, provenance)
}

/// Writes a mask artifact row by row as modules are pruned, so that a
/// model's keep bits (and SparseGPT's kept values) are never all held at
/// once: rows go to the file in batches as they come, and
/// [`MaskWriter::finish`] adds what is known only at the end (the overall
/// sparsity, the provenance) and moves the file into place. Dropped
/// unfinished (an error, a panic), it leaves no file and an existing target
/// untouched.
pub struct MaskWriter {
    path: PathBuf,
    values: bool,
    /// Rows not yet written, fewer than a batch.
    pending: Vec<MaskRow>,
    /// Rows written.
    written: usize,
    file: ParquetFile,
}

impl MaskWriter {
    /// Starts the mask artifact `path`; `values` says whether its rows carry
    /// the kept weights' values (every row then does).
    pub fn create(path: &Path, values: bool) -> Result<Self, ArtifactError> {
        let file = ParquetFile::create(path, mask_schema(values), &[], None)?;
        Ok(MaskWriter { path: path.to_path_buf(), values, pending: Vec::with_capacity(ROWS_PER_BATCH), written: 0, file })
    }

    /// Appends one row, refusing ill-formed bits and values absent where
    /// the mask has them (or present where it has none).
    pub fn push(&mut self, row: MaskRow) -> Result<(), ArtifactError> {
        let index = self.written + self.pending.len();
        check_bits(&self.path, index, row.in_features, &row.keep)?;
        if row.values.is_some() != self.values {
            let state = |present: bool| if present { "present" } else { "absent" };
            return Err(ArtifactError::BadValue {
                path: self.path.clone(),
                column: "values".to_string(),
                row: index,
                expected: format!("values {} as in the rest of the mask", state(self.values)),
                found: format!("values {}", state(row.values.is_some())),
            });
        }
        check_values(&self.path, index, &row.keep, row.values.as_deref())?;
        self.pending.push(row);
        if self.pending.len() == ROWS_PER_BATCH {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), ArtifactError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = mask_batch(&self.path, self.written, &self.pending, self.values)?;
        self.file.write(&batch)?;
        self.written += self.pending.len();
        self.pending.clear();
        Ok(())
    }

    /// Writes the last rows, `provenance` (of kind `mask`) with `info` as
    /// its `subprune.mask.*` extras, and moves the file into place; returns
    /// its content hash.
    pub fn finish(mut self, info: &MaskInfo, provenance: &Provenance) -> Result<String, ArtifactError> {
        if provenance.kind != ArtifactKind::Mask {
            return Err(ArtifactError::ProvenanceKind { path: self.path.clone(), expected: ArtifactKind::Mask, found: provenance.kind });
        }
        self.write_pending()?;
        let provenance = provenance
            .clone()
            .with_extra(EXTRA_METHOD, info.method.clone())
            .with_extra(EXTRA_SPARSITY, info.sparsity.to_string())
            .with_extra(EXTRA_PATTERN, info.pattern.clone())
            .with_extra(EXTRA_GROUP, info.group.clone());
        self.file.finish(&provenance.to_metadata())
    }
}

/// The decoder layer of a module named `model.layers.<L>.…`, if any.
pub fn layer_of(module: &str) -> Option<u32> {
    module.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

/// A [`MaskWriter`] for rows that come module by module in any order within
/// a decoder layer (SparseGPT prunes input by input) but layer after layer:
/// it holds one layer's rows and writes them in the model's module order
/// once a later layer's rows come, so the mask lists modules as the model
/// does while only one layer is ever held.
pub struct LayerOrderedMaskWriter {
    writer: MaskWriter,
    /// Each module's position in the model's order.
    order: std::collections::HashMap<String, usize>,
    /// The layer whose rows are held, and the rows.
    held: Option<(Option<u32>, Vec<MaskRow>)>,
}

impl LayerOrderedMaskWriter {
    /// Writes through `writer`, modules ordered by `order` (module name to
    /// its position in the model; modules it lacks go last, by name).
    pub fn new(writer: MaskWriter, order: std::collections::HashMap<String, usize>) -> Self {
        LayerOrderedMaskWriter { writer, order, held: None }
    }

    /// Takes one row; refuses a row of a layer before the held one (its
    /// rows were already written).
    pub fn push(&mut self, row: MaskRow) -> Result<(), ArtifactError> {
        let layer = layer_of(&row.module);
        match &mut self.held {
            Some((held, rows)) if *held == layer => rows.push(row),
            Some((held, _)) if layer < *held => {
                return Err(ArtifactError::BadValue {
                    path: self.writer.path.clone(),
                    column: "module".to_string(),
                    row: self.writer.written,
                    expected: format!("rows of layer {held:?} or later (earlier layers are written)"),
                    found: format!("a row of {} (layer {layer:?})", row.module),
                });
            }
            _ => {
                self.write_held()?;
                self.held = Some((layer, vec![row]));
            }
        }
        Ok(())
    }

    fn write_held(&mut self) -> Result<(), ArtifactError> {
        let Some((_, mut rows)) = self.held.take() else { return Ok(()) };
        rows.sort_by(|a, b| {
            let position = |r: &MaskRow| self.order.get(&r.module).copied().unwrap_or(usize::MAX);
            (position(a), &a.module, a.row).cmp(&(position(b), &b.module, b.row))
        });
        rows.into_iter().try_for_each(|row| self.writer.push(row))
    }

    /// Writes the held rows, then finishes the mask as [`MaskWriter::finish`] does.
    pub fn finish(mut self, info: &MaskInfo, provenance: &Provenance) -> Result<String, ArtifactError> {
        self.write_held()?;
        self.writer.finish(info, provenance)
    }
}

fn mask_info(path: &Path, p: &Provenance) -> Result<MaskInfo, ArtifactError> {
    let get = |k: &str, what: &str| {
        p.extra.get(k).cloned().ok_or_else(|| ArtifactError::MissingMetadata {
            path: path.to_path_buf(),
            key: format!("subprune.mask.{k}"),
            expected: what.to_string(),
        })
    };
    let sparsity_str = get(EXTRA_SPARSITY, "the fraction of weights pruned, a number")?;
    let sparsity = sparsity_str.trim().parse().map_err(|_| ArtifactError::BadMetadata {
        path: path.to_path_buf(),
        key: format!("subprune.mask.{EXTRA_SPARSITY}"),
        expected: "a number".to_string(),
        found: sparsity_str.clone(),
    })?;
    Ok(MaskInfo {
        method: get(EXTRA_METHOD, "the scoring method, e.g. wanda")?,
        sparsity,
        pattern: get(EXTRA_PATTERN, "the pattern, e.g. unstructured-0.5 or 2:4")?,
        group: get(EXTRA_GROUP, "the comparison group, row or layer")?,
    })
}

/// Reads a binary column (Binary, LargeBinary, BinaryView or FixedSizeBinary) as byte vectors.
fn binary_column(path: &Path, name: &str, batch: &RecordBatch, first_row: usize) -> Result<Vec<Vec<u8>>, ArtifactError> {
    let idx = binary_field(path, batch.schema_ref(), name)?;
    let array = batch.column(idx);
    let values: Vec<Option<Vec<u8>>> = match array.data_type() {
        DataType::Binary => array.as_binary::<i32>().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
        DataType::LargeBinary => array.as_binary::<i64>().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
        DataType::BinaryView => array.as_binary_view().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
        DataType::FixedSizeBinary(_) => {
            let a = array.as_fixed_size_binary();
            (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i).to_vec())).collect()
        }
        other => unreachable!("binary_column() called on {other}"),
    };
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.ok_or_else(|| ArtifactError::BadValue {
                path: path.to_path_buf(),
                column: name.to_string(),
                row: first_row + i,
                expected: "packed keep bits (the column is not nullable)".to_string(),
                found: "null".to_string(),
            })
        })
        .collect()
}

/// Checks that `schema` has a binary column `name`; returns its index.
fn binary_field(path: &Path, schema: &Schema, name: &str) -> Result<usize, ArtifactError> {
    const EXPECTED: &str = "a binary type (Binary)";
    let idx = schema.index_of(name).map_err(|_| ArtifactError::MissingColumn {
        path: path.to_path_buf(),
        column: name.to_string(),
        expected: EXPECTED.to_string(),
        found: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let t = schema.field(idx).data_type();
    if !matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_)) {
        return Err(ArtifactError::WrongColumnType {
            path: path.to_path_buf(),
            column: name.to_string(),
            expected: EXPECTED.to_string(),
            found: t.to_string(),
        });
    }
    Ok(idx)
}

/// A mask artifact opened for reading row by row, one record batch in memory at a time.
///
/// Opening checks the kind, schema version, `subprune.mask.*` metadata and column
/// types; each row is checked as it is read (see [`read_mask`]). Iterating yields
/// the rows in file order; after the first error the iterator ends.
pub struct MaskReader {
    path: PathBuf,
    provenance: Provenance,
    info: MaskInfo,
    num_rows: u64,
    reader: crate::parquet_guard::Guarded,
    rows: crate::RowQueue<MaskRow>,
    first: usize,
    values: bool,
}

impl MaskReader {
    /// Opens the mask artifact at `path`.
    pub fn open(path: &Path) -> Result<MaskReader, ArtifactError> {
        let (provenance, schema, reader, num_rows) = open_streamed_counted(path, ArtifactKind::Mask)?;
        let info = mask_info(path, &provenance)?;
        check_field(path, &schema, "module", Accept::Str)?;
        check_field(path, &schema, "row", Accept::Int)?;
        check_field(path, &schema, "in_features", Accept::Int)?;
        binary_field(path, &schema, "keep")?;
        let values = schema.index_of("values").is_ok();
        if values {
            check_float_list(path, &schema, "values")?;
        }
        Ok(MaskReader { path: path.to_path_buf(), provenance, info, num_rows, reader, rows: crate::RowQueue::new(), first: 0, values })
    }

    /// Whether the rows carry the kept weights' updated values.
    pub fn has_values(&self) -> bool {
        self.values
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The provenance of the mask.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// The file-level facts of the mask (method, sparsity, pattern, group).
    pub fn info(&self) -> &MaskInfo {
        &self.info
    }

    /// The number of rows the file declares.
    pub fn num_rows(&self) -> u64 {
        self.num_rows
    }

    /// Reads and checks the next record batch; `None` at the end of the file.
    fn next_batch(&mut self) -> Option<Result<Vec<MaskRow>, ArtifactError>> {
        let path = self.path.as_path();
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(source) => return Some(Err(ArtifactError::Arrow { path: path.to_path_buf(), source })),
        };
        let first = self.first;
        let rows = (|| {
            let modules = text_column(path, "module", &batch, first)?;
            let rows = u32_column(path, "row", &batch, first)?;
            let in_features = u32_column(path, "in_features", &batch, first)?;
            let keeps = binary_column(path, "keep", &batch, first)?;
            let mut values: Vec<Option<Vec<f32>>> = match self.values {
                true => f32_list_column(path, "values", &batch, first)?.into_iter().map(Some).collect(),
                false => vec![None; batch.num_rows()],
            };
            let mut out = Vec::with_capacity(batch.num_rows());
            for (i, (((module, row), in_features), keep)) in modules.into_iter().zip(rows).zip(in_features).zip(keeps).enumerate() {
                check_bits(path, first + i, in_features, &keep)?;
                let values = values[i].take();
                check_values(path, first + i, &keep, values.as_deref())?;
                out.push(MaskRow { module, row, in_features, keep, values });
            }
            Ok(out)
        })();
        self.first += batch.num_rows();
        Some(rows)
    }
}

impl crate::BatchRows for MaskReader {
    type Row = MaskRow;

    fn queue(&mut self) -> &mut crate::RowQueue<MaskRow> {
        &mut self.rows
    }

    fn read_batch(&mut self) -> Option<Result<Vec<MaskRow>, ArtifactError>> {
        self.next_batch()
    }
}

impl Iterator for MaskReader {
    type Item = Result<MaskRow, ArtifactError>;

    fn next(&mut self) -> Option<Self::Item> {
        crate::BatchRows::next_row(self)
    }
}

/// Reads a mask artifact: provenance, file-level info and rows in file order.
///
/// Accepts module as any string type, row and in_features as any integer type in
/// `u32` range, and keep as any binary type; refuses nulls and keep bits whose
/// length does not match in_features or whose padding bits are set. To read a
/// large mask without holding it whole, use [`MaskReader`].
pub fn read_mask(path: &Path) -> Result<(Provenance, MaskInfo, Vec<MaskRow>), ArtifactError> {
    let mut reader = MaskReader::open(path)?;
    let mut out = Vec::with_capacity(usize::try_from(reader.num_rows).unwrap_or(0));
    while let Some(batch) = reader.next_batch() {
        out.extend(batch?);
    }
    Ok((reader.provenance, reader.info, out))
}
