//! Lenient column readers shared by the typed artifacts.
//!
//! Readers accept any reasonable Arrow type for a column (any integer width, any
//! string layout, any list layout) so that files written by other tools read too,
//! and refuse out-of-range or null values with an error naming file, column and row.

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, RecordBatch};
use arrow_schema::{DataType, Schema};

use crate::ArtifactError;

/// Which types a column may have.
#[derive(Clone, Copy)]
pub(crate) enum Accept {
    /// Any integer type.
    Int,
    /// Utf8, LargeUtf8 or Utf8View.
    Str,
    /// Float32 or Float64.
    Float,
    /// List, LargeList or FixedSizeList of any integer type.
    IntList,
}

impl Accept {
    fn describe(self) -> &'static str {
        match self {
            Accept::Int => "an integer type (UInt64 preferred)",
            Accept::Str => "a string type (Utf8)",
            Accept::Float => "a float type (Float64)",
            Accept::IntList => "a list of integers (List<UInt32> preferred)",
        }
    }

    fn accepts(self, t: &DataType) -> bool {
        match self {
            Accept::Int => t.is_integer(),
            Accept::Str => matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
            Accept::Float => matches!(t, DataType::Float32 | DataType::Float64),
            Accept::IntList => match t {
                DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type().is_integer(),
                _ => false,
            },
        }
    }
}

/// Checks that `schema` has column `name` of an accepted type; returns its index.
pub(crate) fn check_field(path: &Path, schema: &Schema, name: &str, accept: Accept) -> Result<usize, ArtifactError> {
    let idx = schema.index_of(name).map_err(|_| ArtifactError::MissingColumn {
        path: path.to_path_buf(),
        column: name.to_string(),
        expected: accept.describe().to_string(),
        found: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let t = schema.field(idx).data_type();
    if !accept.accepts(t) {
        return Err(ArtifactError::WrongColumnType {
            path: path.to_path_buf(),
            column: name.to_string(),
            expected: accept.describe().to_string(),
            found: t.to_string(),
        });
    }
    Ok(idx)
}

/// Column `name` of a batch, checked against `accept`.
pub(crate) fn column<'a>(path: &Path, batch: &'a RecordBatch, name: &str, accept: Accept) -> Result<&'a ArrayRef, ArtifactError> {
    let idx = check_field(path, batch.schema_ref(), name, accept)?;
    Ok(batch.column(idx))
}

/// A value that does not fit the requested integer type, or a null.
pub(crate) struct IntProblem {
    /// The index in the array.
    pub index: usize,
    /// The value, or `None` for a null.
    pub value: Option<i128>,
}

/// Converts an integer array of any width to `O`, failing on nulls and values out of range.
///
/// The caller must have checked that the array's type is an integer type.
pub(crate) fn ints<O: TryFrom<i128>>(array: &dyn Array) -> Result<Vec<O>, IntProblem> {
    opt_ints::<O>(array)?.into_iter().enumerate().map(|(index, v)| v.ok_or(IntProblem { index, value: None })).collect()
}

fn convert_opt<T, O>(array: &dyn Array) -> Result<Vec<Option<O>>, IntProblem>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i128>,
    O: TryFrom<i128>,
{
    array
        .as_primitive::<T>()
        .iter()
        .enumerate()
        .map(|(index, v)| match v.map(Into::into) {
            None => Ok(None),
            Some(x) => O::try_from(x).map(Some).map_err(|_| IntProblem { index, value: Some(x) }),
        })
        .collect()
}

/// Converts an integer array of any width to optional `O`, nulls to `None`; fails on
/// values out of range.
///
/// The caller must have checked that the array's type is an integer type.
pub(crate) fn opt_ints<O: TryFrom<i128>>(array: &dyn Array) -> Result<Vec<Option<O>>, IntProblem> {
    match array.data_type() {
        DataType::Int8 => convert_opt::<Int8Type, O>(array),
        DataType::Int16 => convert_opt::<Int16Type, O>(array),
        DataType::Int32 => convert_opt::<Int32Type, O>(array),
        DataType::Int64 => convert_opt::<Int64Type, O>(array),
        DataType::UInt8 => convert_opt::<UInt8Type, O>(array),
        DataType::UInt16 => convert_opt::<UInt16Type, O>(array),
        DataType::UInt32 => convert_opt::<UInt32Type, O>(array),
        DataType::UInt64 => convert_opt::<UInt64Type, O>(array),
        other => unreachable!("opt_ints() called on non-integer type {other}"),
    }
}

/// Reads a nullable integer column as optional `u32`; `first_row` is the file row of the batch's first row.
pub(crate) fn opt_u32_column(path: &Path, name: &str, array: &dyn Array, first_row: usize) -> Result<Vec<Option<u32>>, ArtifactError> {
    opt_ints::<u32>(array).map_err(|p| ArtifactError::BadValue {
        path: path.to_path_buf(),
        column: name.to_string(),
        row: first_row + p.index,
        expected: format!("null or an integer in 0..={}", u32::MAX),
        found: describe_value(p.value),
    })
}

fn describe_value(v: Option<i128>) -> String {
    v.map_or_else(|| "null".to_string(), |x| x.to_string())
}

/// Reads an integer column as `u64`; `first_row` is the file row of the batch's first row.
pub(crate) fn u64_column(path: &Path, name: &str, array: &dyn Array, first_row: usize) -> Result<Vec<u64>, ArtifactError> {
    ints::<u64>(array).map_err(|p| ArtifactError::BadValue {
        path: path.to_path_buf(),
        column: name.to_string(),
        row: first_row + p.index,
        expected: format!("a non-null integer in 0..={}", u64::MAX),
        found: describe_value(p.value),
    })
}

/// Reads a string column; nulls are refused unless `nullable`.
pub(crate) fn string_column(
    path: &Path,
    name: &str,
    array: &dyn Array,
    first_row: usize,
    nullable: bool,
) -> Result<Vec<Option<String>>, ArtifactError> {
    let values: Vec<Option<String>> = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(|v| v.map(str::to_string)).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(|v| v.map(str::to_string)).collect(),
        other => unreachable!("string_column() called on {other}"),
    };
    if !nullable {
        if let Some(i) = values.iter().position(Option::is_none) {
            return Err(null_error(path, name, first_row + i, "a string"));
        }
    }
    Ok(values)
}

/// Reads a float column as `f64`; nulls are refused unless `nullable`.
pub(crate) fn f64_column(
    path: &Path,
    name: &str,
    array: &dyn Array,
    first_row: usize,
    nullable: bool,
) -> Result<Vec<Option<f64>>, ArtifactError> {
    let values: Vec<Option<f64>> = match array.data_type() {
        DataType::Float64 => array.as_primitive::<Float64Type>().iter().collect(),
        DataType::Float32 => array.as_primitive::<Float32Type>().iter().map(|v| v.map(f64::from)).collect(),
        other => unreachable!("f64_column() called on {other}"),
    };
    if !nullable {
        if let Some(i) = values.iter().position(Option::is_none) {
            return Err(null_error(path, name, first_row + i, "a number"));
        }
    }
    Ok(values)
}

fn null_error(path: &Path, name: &str, row: usize, what: &str) -> ArtifactError {
    ArtifactError::BadValue {
        path: path.to_path_buf(),
        column: name.to_string(),
        row,
        expected: format!("{what} (the column is not nullable)"),
        found: "null".to_string(),
    }
}

/// Reads a list-of-integers column as lists of `u32`, refusing nulls, negatives and
/// values above `u32::MAX`.
pub(crate) fn u32_list_column(path: &Path, name: &str, array: &dyn Array, first_row: usize) -> Result<Vec<Vec<u32>>, ArtifactError> {
    let rows: Vec<Option<ArrayRef>> = match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().iter().collect(),
        DataType::LargeList(_) => array.as_list::<i64>().iter().collect(),
        DataType::FixedSizeList(_, _) => array.as_fixed_size_list().iter().collect(),
        other => unreachable!("u32_list_column() called on {other}"),
    };
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let row: ArrayRef = row.ok_or_else(|| null_error(path, name, first_row + i, "a list of integers"))?;
            ints::<u32>(row.as_ref()).map_err(|p| ArtifactError::BadValue {
                path: path.to_path_buf(),
                column: name.to_string(),
                row: first_row + i,
                expected: format!("token ids in 0..={} with no nulls", u32::MAX),
                found: format!("{} at position {}", describe_value(p.value), p.index),
            })
        })
        .collect()
}
