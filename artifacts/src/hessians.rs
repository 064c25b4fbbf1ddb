//! The `hessians` artifact: SparseGPT's Hessians `H = 2/n Σₛ XₛᵀXₛ` of the
//! inputs of the prunable linear modules, gathered by `calibrate --method
//! sparsegpt`. One row per distinct input of a decoder layer (q, k and v read
//! one input, as do gate and up), naming the modules that read it. `H` is
//! symmetric: its upper triangle, diagonal included, is stored row by row in
//! f64 (`in_features · (in_features + 1) / 2` values), and each row is a row
//! group of its own, so a reader holds one matrix at a time.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::columns::{check_field, column, u64_column, Accept};
use crate::scores::u32_column;
use crate::{open_streamed, write_parquet_grouped};
use crate::{ArtifactError, ArtifactKind, Provenance};

/// The Hessian of one input of a decoder layer's linear modules.
#[derive(Debug, Clone, PartialEq)]
pub struct InputHessian {
    /// Decoder layer index.
    pub layer: u32,
    /// The modules that read this input (Hugging Face names without `.weight`).
    pub modules: Vec<String>,
    /// Input columns: the matrix is `[in_features, in_features]`.
    pub in_features: u32,
    /// Calibration sequences accumulated (the `n` of `2/n`).
    pub n_samples: u64,
    /// Calibration tokens accumulated.
    pub n_tokens: u64,
    /// The upper triangle, row by row: `H[i][i..]` for i = 0, 1, ...
    pub upper: Vec<f64>,
}

impl InputHessian {
    /// The upper triangle of the symmetric row-major `full` [n, n].
    pub fn upper_of(full: &[f64], n: usize) -> Vec<f64> {
        (0..n).flat_map(|i| full[i * n + i..(i + 1) * n].iter().copied()).collect()
    }

    /// The whole symmetric matrix, row-major [in_features, in_features].
    pub fn full(&self) -> Vec<f64> {
        let n = self.in_features as usize;
        let mut out = vec![0.0; n * n];
        let mut values = self.upper.iter();
        for i in 0..n {
            for j in i..n {
                let v = *values.next().expect("upper holds n(n+1)/2 values (checked when written and read)");
                out[i * n + j] = v;
                out[j * n + i] = v;
            }
        }
        out
    }
}

/// Values in the upper triangle of an `n` × `n` matrix.
fn triangle_len(n: u32) -> u64 {
    u64::from(n) * (u64::from(n) + 1) / 2
}

/// The Arrow schema of a hessians artifact: layer UInt32, modules
/// List<Utf8>, in_features UInt32, n_samples UInt64, n_tokens UInt64,
/// upper List<Float64>.
pub fn hessians_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("layer", DataType::UInt32, false),
        Field::new("modules", DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))), false),
        Field::new("in_features", DataType::UInt32, false),
        Field::new("n_samples", DataType::UInt64, false),
        Field::new("n_tokens", DataType::UInt64, false),
        Field::new("upper", DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))), false),
    ]))
}

/// Checks a row's module list and triangle length.
fn check_row(path: &Path, row: usize, h: &InputHessian) -> Result<(), ArtifactError> {
    let bad = |column: &str, expected: String, found: String| ArtifactError::BadValue {
        path: path.to_path_buf(),
        column: column.to_string(),
        row,
        expected,
        found,
    };
    if h.modules.is_empty() {
        return Err(bad("modules", "the modules that read the input (at least one)".into(), "an empty list".into()));
    }
    let expected = triangle_len(h.in_features);
    if h.upper.len() as u64 != expected {
        return Err(bad(
            "upper",
            format!("{expected} values (the upper triangle of {0} × {0})", h.in_features),
            format!("{} values", h.upper.len()),
        ));
    }
    Ok(())
}

fn hessian_batch(path: &Path, h: &InputHessian) -> Result<RecordBatch, ArtifactError> {
    let mut modules = ListBuilder::new(StringBuilder::new());
    for m in &h.modules {
        modules.values().append_value(m);
    }
    modules.append(true);
    let mut upper = ListBuilder::with_capacity(Float64Builder::with_capacity(h.upper.len()), 1);
    upper.values().append_slice(&h.upper);
    upper.append(true);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(vec![h.layer])),
        Arc::new(modules.finish()),
        Arc::new(UInt32Array::from(vec![h.in_features])),
        Arc::new(UInt64Array::from(vec![h.n_samples])),
        Arc::new(UInt64Array::from(vec![h.n_tokens])),
        Arc::new(upper.finish()),
    ];
    RecordBatch::try_new(hessians_schema(), columns).map_err(|source| ArtifactError::Arrow { path: path.to_path_buf(), source })
}

/// Writes a hessians artifact atomically from rows produced one at a time
/// (each written as it comes, so the whole set is never in memory); returns
/// its content hash. An `Err` among the rows abandons the file and is
/// returned. `provenance` must be of kind `hessians`.
pub fn write_hessians<E: From<ArtifactError>>(
    path: &Path,
    rows: impl IntoIterator<Item = Result<InputHessian, E>>,
    provenance: &Provenance,
) -> Result<String, E> {
    if provenance.kind != ArtifactKind::Hessians {
        return Err(
            ArtifactError::ProvenanceKind { path: path.to_path_buf(), expected: ArtifactKind::Hessians, found: provenance.kind }.into()
        );
    }
    let batches = rows.into_iter().enumerate().map(|(i, row)| {
        let row = row?;
        check_row(path, i, &row)?;
        Ok(hessian_batch(path, &row)?)
    });
    write_parquet_grouped(path, hessians_schema(), batches, provenance, Some(1))
}

/// A hessians artifact opened for reading one row (one matrix) at a time.
pub struct HessiansReader {
    path: std::path::PathBuf,
    provenance: Provenance,
    reader: crate::parquet_guard::Guarded,
    rows: crate::RowQueue<InputHessian>,
    first: usize,
}

impl HessiansReader {
    /// Opens the hessians artifact at `path`, checking its kind, version and column types.
    pub fn open(path: &Path) -> Result<HessiansReader, ArtifactError> {
        let (provenance, schema, reader) = open_streamed(path, ArtifactKind::Hessians)?;
        for (name, accept) in [("layer", Accept::Int), ("in_features", Accept::Int), ("n_samples", Accept::Int), ("n_tokens", Accept::Int)]
        {
            check_field(path, &schema, name, accept)?;
        }
        for (name, item) in [("modules", DataType::Utf8), ("upper", DataType::Float64)] {
            let field = schema.field_with_name(name).map_err(|_| ArtifactError::MissingColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
                expected: format!("List<{item}>"),
                found: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
            })?;
            if !matches!(field.data_type(), DataType::List(f) if *f.data_type() == item) {
                return Err(ArtifactError::WrongColumnType {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    expected: format!("List<{item}>"),
                    found: field.data_type().to_string(),
                });
            }
        }
        Ok(HessiansReader { path: path.to_path_buf(), provenance, reader, rows: crate::RowQueue::new(), first: 0 })
    }

    /// The provenance of the artifact.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    fn next_batch(&mut self) -> Option<Result<Vec<InputHessian>, ArtifactError>> {
        let path = self.path.clone();
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(source) => return Some(Err(ArtifactError::Arrow { path, source })),
        };
        let first = self.first;
        self.first += batch.num_rows();
        Some((|| {
            let null = |column: &str, row: usize| ArtifactError::BadValue {
                path: path.clone(),
                column: column.to_string(),
                row,
                expected: "a non-null value".into(),
                found: "null".into(),
            };
            let layers = u32_column(&path, "layer", &batch, first)?;
            let in_features = u32_column(&path, "in_features", &batch, first)?;
            let n_samples = u64_column(&path, "n_samples", column(&path, &batch, "n_samples", Accept::Int)?.as_ref(), first)?;
            let n_tokens = u64_column(&path, "n_tokens", column(&path, &batch, "n_tokens", Accept::Int)?.as_ref(), first)?;
            let modules = batch.column_by_name("modules").expect("checked on opening").as_list::<i32>();
            let upper = batch.column_by_name("upper").expect("checked on opening").as_list::<i32>();
            let mut out = Vec::with_capacity(batch.num_rows());
            for i in 0..batch.num_rows() {
                if modules.is_null(i) {
                    return Err(null("modules", first + i));
                }
                if upper.is_null(i) {
                    return Err(null("upper", first + i));
                }
                let names = modules.value(i);
                let names = names.as_string::<i32>();
                if names.null_count() > 0 {
                    return Err(null("modules", first + i));
                }
                let values = upper.value(i);
                let values = values.as_primitive::<Float64Type>();
                if values.null_count() > 0 {
                    return Err(null("upper", first + i));
                }
                let h = InputHessian {
                    layer: layers[i],
                    modules: names.iter().map(|m| m.unwrap_or_default().to_string()).collect(),
                    in_features: in_features[i],
                    n_samples: n_samples[i],
                    n_tokens: n_tokens[i],
                    upper: values.values().to_vec(),
                };
                check_row(&path, first + i, &h)?;
                out.push(h);
            }
            Ok(out)
        })())
    }
}

impl crate::BatchRows for HessiansReader {
    type Row = InputHessian;

    fn queue(&mut self) -> &mut crate::RowQueue<InputHessian> {
        &mut self.rows
    }

    fn read_batch(&mut self) -> Option<Result<Vec<InputHessian>, ArtifactError>> {
        self.next_batch()
    }
}

impl Iterator for HessiansReader {
    type Item = Result<InputHessian, ArtifactError>;

    fn next(&mut self) -> Option<Self::Item> {
        crate::BatchRows::next_row(self)
    }
}
