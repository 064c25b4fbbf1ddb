//! Provenance metadata stored in every artifact's Parquet footer.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{ArtifactError, ArtifactKind, SCHEMA_VERSION};

/// Metadata key of the artifact kind.
pub const KEY_KIND: &str = "subprune.kind";
/// Metadata key of the schema version.
pub const KEY_SCHEMA_VERSION: &str = "subprune.schema_version";
/// Metadata key of the model fingerprint.
pub const KEY_MODEL: &str = "subprune.model";
/// Metadata key of the input content hashes (a JSON object).
pub const KEY_INPUTS: &str = "subprune.inputs";
/// Metadata key of the options used (JSON).
pub const KEY_PARAMS: &str = "subprune.params";
/// Metadata key of the tool and version that wrote the artifact.
pub const KEY_CREATED_BY: &str = "subprune.created_by";
/// Key, in a stats artifact's params, of the per-layer sparsities that
/// calibration applied (OWL's profile), which `mask` reads back.
pub const PARAM_LAYER_SPARSITIES: &str = "layer_sparsities";

/// Where an artifact comes from: its kind, schema version, model, inputs and options.
///
/// Written as Parquet key-value metadata under the `subprune.*` keys; kind-specific
/// `extra` entries are written as `subprune.<kind>.<key>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// The artifact kind (`subprune.kind`).
    pub kind: ArtifactKind,
    /// The schema version of the artifact (`subprune.schema_version`).
    pub schema_version: u32,
    /// The model fingerprint (`subprune.model`); empty for model-independent artifacts.
    pub model: String,
    /// Input name to content hash `sha256:<hex>` (`subprune.inputs`).
    pub inputs: BTreeMap<String, String>,
    /// The options the artifact was made with (`subprune.params`).
    pub params: serde_json::Value,
    /// The tool and version that wrote it, e.g. `subprune-evaluate 0.1.0` (`subprune.created_by`).
    pub created_by: String,
    /// Kind-specific entries; key `k` is stored as `subprune.<kind>.k`.
    pub extra: BTreeMap<String, String>,
}

impl Provenance {
    /// A provenance of the current schema version with no inputs and no extras.
    pub fn new(kind: ArtifactKind, model: impl Into<String>, params: serde_json::Value, created_by: impl Into<String>) -> Self {
        Provenance {
            kind,
            schema_version: SCHEMA_VERSION,
            model: model.into(),
            inputs: BTreeMap::new(),
            params,
            created_by: created_by.into(),
            extra: BTreeMap::new(),
        }
    }

    /// Records an input artifact by name and content hash (`sha256:<hex>`).
    pub fn with_input(mut self, name: impl Into<String>, hash: impl Into<String>) -> Self {
        self.inputs.insert(name.into(), hash.into());
        self
    }

    /// Adds a kind-specific entry, stored as `subprune.<kind>.<key>`.
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The prefix of this provenance's kind-specific keys, `subprune.<kind>.`.
    pub fn extra_prefix(&self) -> String {
        format!("subprune.{}.", self.kind.as_str())
    }

    /// The key-value pairs written to the Parquet footer.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let inputs = serde_json::to_string(&self.inputs).expect("a string map serialises");
        let params = serde_json::to_string(&self.params).expect("a JSON value serialises");
        let mut pairs = vec![
            (KEY_KIND.to_string(), self.kind.as_str().to_string()),
            (KEY_SCHEMA_VERSION.to_string(), self.schema_version.to_string()),
            (KEY_MODEL.to_string(), self.model.clone()),
            (KEY_INPUTS.to_string(), inputs),
            (KEY_PARAMS.to_string(), params),
            (KEY_CREATED_BY.to_string(), self.created_by.clone()),
        ];
        let prefix = self.extra_prefix();
        pairs.extend(self.extra.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone())));
        pairs
    }

    /// Parses provenance from footer key-value pairs of the file at `path`.
    ///
    /// `expected` is the kind the caller wants, used in the error for a file without
    /// subprune metadata; the kind itself and the schema version are checked by the caller.
    /// Keys that are not subprune's, or that belong to another kind, are ignored.
    pub fn from_metadata(path: &Path, pairs: &[(String, String)], expected: Option<ArtifactKind>) -> Result<Provenance, ArtifactError> {
        let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let require = |key: &str, what: &str| {
            get(key).ok_or_else(|| ArtifactError::MissingMetadata {
                path: path.to_path_buf(),
                key: key.to_string(),
                expected: what.to_string(),
            })
        };
        let kind_str = get(KEY_KIND).ok_or_else(|| ArtifactError::NotAnArtifact {
            path: path.to_path_buf(),
            expected: expected.map_or_else(|| "a subprune".to_string(), |k| format!("a `{k}`")),
        })?;
        if let Some(expected) = expected {
            if kind_str != expected.as_str() {
                return Err(ArtifactError::WrongKind { path: path.to_path_buf(), expected, found: kind_str.to_string() });
            }
        }
        let kind: ArtifactKind =
            kind_str.parse().map_err(|_| ArtifactError::UnknownKind { path: path.to_path_buf(), found: kind_str.to_string() })?;
        let version_str = require(KEY_SCHEMA_VERSION, "the schema version, an integer")?;
        let schema_version: u32 = version_str.trim().parse().map_err(|_| ArtifactError::WrongSchemaVersion {
            path: path.to_path_buf(),
            kind,
            expected: SCHEMA_VERSION,
            found: format!("`{version_str}` (not an integer)"),
        })?;
        let model = require(KEY_MODEL, "the model fingerprint")?.to_string();
        let inputs_str = require(KEY_INPUTS, "a JSON object of input name to content hash")?;
        let inputs: BTreeMap<String, String> = serde_json::from_str(inputs_str).map_err(|e| ArtifactError::BadMetadata {
            path: path.to_path_buf(),
            key: KEY_INPUTS.to_string(),
            expected: format!("a JSON object of input name to content hash string ({e})"),
            found: shorten(inputs_str),
        })?;
        let params_str = require(KEY_PARAMS, "the options as JSON")?;
        let params: serde_json::Value = serde_json::from_str(params_str).map_err(|e| ArtifactError::BadMetadata {
            path: path.to_path_buf(),
            key: KEY_PARAMS.to_string(),
            expected: format!("JSON ({e})"),
            found: shorten(params_str),
        })?;
        let created_by = require(KEY_CREATED_BY, "the tool and version that wrote it")?.to_string();
        let prefix = format!("subprune.{}.", kind.as_str());
        let extra = pairs
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).filter(|rest| !rest.is_empty()).map(|rest| (rest.to_string(), v.clone())))
            .collect();
        Ok(Provenance { kind, schema_version, model, inputs, params, created_by, extra })
    }
}

/// Cuts a long metadata value for an error message.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}...")
    }
}
