//! Records of Hugging Face style data files: JSON lines (`.jsonl`, `.ndjson`,
//! optionally gzip-compressed), JSON arrays (`.json`) and Parquet (`.parquet`),
//! each record handed over as a JSON value.
//!
//! These are the files users download from the Hugging Face hub; the
//! `datasets` stage collects documents from them and `evaluate` reads its
//! task sets from them.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrowPrimitiveType};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde_json::{Map, Value};

use crate::parquet_guard;

/// What can go wrong while reading a data file; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// An operating-system I/O error on the file.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A line of a JSON lines file (or a JSON file) is not valid JSON.
    #[error("{}:{line}: invalid JSON: {message}", .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The 1-based line number (1 for a whole-file JSON document).
        line: usize,
        /// What the parser said.
        message: String,
    },

    /// A Parquet column has a type that cannot be turned into JSON.
    #[error("{}: column `{column}` has type {found}, which cannot be read as text (expected strings, numbers, booleans, lists or structs of them)", .path.display())]
    UnsupportedColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Its Arrow type.
        found: String,
    },

    /// The file's name does not say which data format it is.
    #[error("{}: not a data file (expected a name ending in .jsonl, .jsonl.gz, .ndjson, .json or .parquet)", .path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },

    /// A Parquet data file cannot be read.
    #[error("Parquet error on {}: {source}", .path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// Reading Parquet data into Arrow failed.
    #[error("Arrow error on {}: {source}", .path.display())]
    Arrow {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: arrow_schema::ArrowError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecordsError + '_ {
    move |source| RecordsError::Io { path: path.to_path_buf(), source }
}

/// The layout of a data file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// One JSON object per line.
    JsonLines,
    /// JSON lines compressed with gzip.
    JsonLinesGz,
    /// A JSON array of objects (or JSON lines under a `.json` name).
    Json,
    /// Apache Parquet, one record per row.
    Parquet,
}

impl DataFormat {
    /// The format of a file from its name, or `None` when it is not a data file.
    pub fn of(path: &Path) -> Option<DataFormat> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        if name.ends_with(".jsonl.gz") || name.ends_with(".ndjson.gz") || name.ends_with(".json.gz") {
            Some(DataFormat::JsonLinesGz)
        } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Some(DataFormat::JsonLines)
        } else if name.ends_with(".json") {
            Some(DataFormat::Json)
        } else if name.ends_with(".parquet") {
            Some(DataFormat::Parquet)
        } else {
            None
        }
    }
}

/// A callback over records: the record's label (`line N`, `item N`, `row N`) and
/// the record. Returns `false` to stop reading.
pub type RecordFn<'a, E> = dyn FnMut(String, Value) -> Result<bool, E> + 'a;

/// Reads every record of `path` in file order and hands it to `f`.
///
/// For Parquet only the top-level columns in `columns` are read (those absent
/// from the file are left out of the records, so the caller's field check
/// reports them); JSON records are handed over whole.
pub fn for_each_record<E: From<RecordsError>>(
    path: &Path,
    format: DataFormat,
    columns: &[String],
    f: &mut RecordFn<'_, E>,
) -> Result<(), E> {
    match format {
        DataFormat::JsonLines => {
            let file = File::open(path).map_err(io_err(path))?;
            json_lines(path, BufReader::new(file), f)
        }
        DataFormat::JsonLinesGz => {
            let file = File::open(path).map_err(io_err(path))?;
            json_lines(path, BufReader::new(flate2::read::MultiGzDecoder::new(file)), f)
        }
        DataFormat::Json => json_file(path, f),
        DataFormat::Parquet => parquet_rows(path, columns, f),
    }
}

fn json_lines<E: From<RecordsError>>(path: &Path, reader: impl BufRead, f: &mut RecordFn<'_, E>) -> Result<(), E> {
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| RecordsError::Json { path: path.to_path_buf(), line: line_no, message: e.to_string() })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(|e| RecordsError::Json {
            path: path.to_path_buf(),
            line: line_no,
            message: e.to_string(),
        })?;
        if !f(format!("line {line_no}"), value)? {
            break;
        }
    }
    Ok(())
}

fn json_file<E: From<RecordsError>>(path: &Path, f: &mut RecordFn<'_, E>) -> Result<(), E> {
    let mut text = String::new();
    File::open(path).map_err(io_err(path))?.read_to_string(&mut text).map_err(|e| RecordsError::Json {
        path: path.to_path_buf(),
        line: 1,
        message: e.to_string(),
    })?;
    if !text.trim_start().starts_with('[') {
        return json_lines(path, BufReader::new(text.as_bytes()), f);
    }
    let value: Value =
        serde_json::from_str(&text).map_err(|e| RecordsError::Json { path: path.to_path_buf(), line: e.line(), message: e.to_string() })?;
    let Value::Array(items) = value else { unreachable!("a JSON text starting with `[` is an array") };
    for (i, item) in items.into_iter().enumerate() {
        if !f(format!("item {i}"), item)? {
            break;
        }
    }
    Ok(())
}

fn parquet_rows<E: From<RecordsError>>(path: &Path, columns: &[String], f: &mut RecordFn<'_, E>) -> Result<(), E> {
    let pq = |source| RecordsError::Parquet { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    parquet_guard::check_footer(&file, len).map_err(pq)?;
    let checked = file.try_clone().map_err(io_err(path))?;
    let builder = parquet_guard::catch(|| ParquetRecordBatchReaderBuilder::try_new(file)).map_err(pq)?;
    parquet_guard::check(&checked, len, builder.metadata()).map_err(pq)?;
    let schema = builder.schema().clone();
    let roots: Vec<usize> = schema.fields().iter().enumerate().filter(|(_, fl)| columns.contains(fl.name())).map(|(i, _)| i).collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader =
        parquet_guard::Guarded::new(parquet_guard::catch(|| builder.with_projection(mask).with_batch_size(1024).build()).map_err(pq)?);
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|source| RecordsError::Arrow { path: path.to_path_buf(), source })?;
        let names: Vec<String> = batch.schema().fields().iter().map(|fl| fl.name().clone()).collect();
        for (name, col) in names.iter().zip(batch.columns()) {
            check_convertible(col.data_type()).map_err(|found| RecordsError::UnsupportedColumn {
                path: path.to_path_buf(),
                column: name.clone(),
                found,
            })?;
        }
        for r in 0..batch.num_rows() {
            let mut map = Map::new();
            for (name, col) in names.iter().zip(batch.columns()) {
                map.insert(name.clone(), to_json(col.as_ref(), r));
            }
            if !f(format!("row {row}"), Value::Object(map))? {
                return Ok(());
            }
            row += 1;
        }
    }
    Ok(())
}

/// Every record of the data file `path` in file order, its format from its
/// name; for Parquet all top-level columns are read.
pub fn read_records(path: &Path) -> Result<Vec<Value>, RecordsError> {
    let format = DataFormat::of(path).ok_or_else(|| RecordsError::UnknownFormat { path: path.to_path_buf() })?;
    let columns = if format == DataFormat::Parquet { parquet_columns(path)? } else { Vec::new() };
    let mut records = Vec::new();
    for_each_record::<RecordsError>(path, format, &columns, &mut |_, value| {
        records.push(value);
        Ok(true)
    })?;
    Ok(records)
}

/// The top-level column names of a Parquet file (for error messages).
pub fn parquet_columns(path: &Path) -> Result<Vec<String>, RecordsError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    parquet_guard::check_footer(&file, len).map_err(|source| RecordsError::Parquet { path: path.to_path_buf(), source })?;
    let builder = parquet_guard::catch(|| ParquetRecordBatchReaderBuilder::try_new(file))
        .map_err(|source| RecordsError::Parquet { path: path.to_path_buf(), source })?;
    Ok(builder.schema().fields().iter().map(|fl| fl.name().clone()).collect())
}

/// Checks that [`to_json`] handles `t`; `Err` names the type.
fn check_convertible(t: &DataType) -> Result<(), String> {
    match t {
        DataType::Null
        | DataType::Boolean
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float16
        | DataType::Float32
        | DataType::Float64 => Ok(()),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => check_convertible(f.data_type()),
        DataType::Struct(fields) => fields.iter().try_for_each(|f| check_convertible(f.data_type())),
        other => Err(other.to_string()),
    }
}

fn prim<T: ArrowPrimitiveType>(array: &dyn Array, row: usize) -> Value
where
    T::Native: Into<serde_json::Number>,
{
    Value::Number(array.as_primitive::<T>().value(row).into())
}

fn float<T: ArrowPrimitiveType>(array: &dyn Array, row: usize) -> Value
where
    T::Native: Into<f64>,
{
    serde_json::Number::from_f64(array.as_primitive::<T>().value(row).into()).map_or(Value::Null, Value::Number)
}

/// The JSON value of one row of an Arrow array whose type passed [`check_convertible`].
fn to_json(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let list = |values: arrow_array::ArrayRef| Value::Array((0..values.len()).map(|i| to_json(values.as_ref(), i)).collect());
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Int8 => prim::<Int8Type>(array, row),
        DataType::Int16 => prim::<Int16Type>(array, row),
        DataType::Int32 => prim::<Int32Type>(array, row),
        DataType::Int64 => prim::<Int64Type>(array, row),
        DataType::UInt8 => prim::<UInt8Type>(array, row),
        DataType::UInt16 => prim::<UInt16Type>(array, row),
        DataType::UInt32 => prim::<UInt32Type>(array, row),
        DataType::UInt64 => prim::<UInt64Type>(array, row),
        DataType::Float16 => {
            serde_json::Number::from_f64(array.as_primitive::<Float16Type>().value(row).to_f64()).map_or(Value::Null, Value::Number)
        }
        DataType::Float32 => float::<Float32Type>(array, row),
        DataType::Float64 => float::<Float64Type>(array, row),
        DataType::List(_) => list(array.as_list::<i32>().value(row)),
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row)),
        DataType::FixedSizeList(_, _) => list(array.as_fixed_size_list().value(row)),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            Value::Object(fields.iter().zip(s.columns()).map(|(fl, col)| (fl.name().clone(), to_json(col.as_ref(), row))).collect())
        }
        _ => Value::Null,
    }
}
