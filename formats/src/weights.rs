//! Host-side weights: f32 tensors by Hugging Face name, the common currency of
//! every loader and of the pruning stages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::FormatError;

/// A dense row-major f32 tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first (PyTorch / Hugging Face order).
    pub shape: Vec<usize>,
    /// Row-major values; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and row-major data; panics if they disagree,
    /// which is a programming error, never a property of an input file.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} does not match {} values", data.len());
        HostTensor { shape, data }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// All weights of a checkpoint, keyed by Hugging Face parameter name
/// (`model.layers.3.self_attn.q_proj.weight`), rows in Hugging Face order.
#[derive(Debug, Clone, Default)]
pub struct WeightMap {
    /// Where the weights came from, for error messages.
    pub source: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
}

impl WeightMap {
    /// An empty map for weights read from `source`.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        WeightMap { source: source.into(), tensors: BTreeMap::new() }
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// The tensor called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    /// Whether a tensor called `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor called `name` with exactly the shape `expected`, or an error
    /// naming the file, the tensor and both shapes.
    pub fn require(&self, name: &str, expected: &[usize], architecture: &str) -> Result<&HostTensor, FormatError> {
        let tensor = self.tensors.get(name).ok_or_else(|| FormatError::MissingTensor {
            path: self.source.clone(),
            name: name.to_string(),
            architecture: architecture.to_string(),
        })?;
        if tensor.shape != expected {
            return Err(FormatError::ShapeMismatch {
                path: self.source.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: tensor.shape.clone(),
            });
        }
        Ok(tensor)
    }

    /// Names and tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &HostTensor)> {
        self.tensors.iter()
    }

    /// Tensor names in name order.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the map holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Takes the tensor called `name` out of the map, if present.
    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        self.tensors.remove(name)
    }

    /// Mutable access to a tensor, e.g. to apply a pruning mask in place.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut HostTensor> {
        self.tensors.get_mut(name)
    }

    /// The source path as a `Path`.
    pub fn source(&self) -> &Path {
        &self.source
    }
}
