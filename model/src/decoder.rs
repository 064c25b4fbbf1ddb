//! One generic decoder for every supported family: token embedding, decoder
//! layers (norm, attention, residual, norm, gated MLP, residual; with the
//! extra norms some families add), final norm and LM head. A [`DecoderSpec`]
//! (made by a family's spec in [`crate::arch`]) says what differs between
//! families; nothing here names one.
//!
//! The decoder runs whole sequences ([`Decoder::forward`]), one layer at a
//! time with an observer of every linear input (calibration,
//! [`Decoder::layer_forward`]), and new positions over a key/value cache
//! (generation, [`Decoder::forward_cached`]); a layer can be rebuilt from
//! new weights (sequential pruning, [`Decoder::load_layer`]), and a model
//! larger than memory runs with one layer resident at a time ([`Decoder::empty`]).

use std::ops::Range;
use std::path::Path;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{StoredRows, Weights};
use crate::error::ModelError;
use crate::nn::attention::{attention_mask, Positions, StepPositions};
use crate::nn::observer::observe;
use crate::nn::rope::{rope_tables, rope_tables_at, rope_values, rope_values_at};
use crate::nn::{soft_cap, Activation, Attention, HeadShape, Kernels, KvCache, LayerKv, Linear, LinearObserver, Mlp, RmsNorm};
use crate::weights::HostTensor;
use kernels::Causal;

/// LongRoPE's switch of rotary frequencies (Phi-3): a forward whose last
/// position is at or past `from_length` uses `frequencies` (as transformers
/// decides per forward call from the longest position it is given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LongRope {
    /// Positions from which the long sets apply (the original context length).
    pub from_length: usize,
    /// The long sets, indexed like [`DecoderSpec::rope_frequencies`].
    pub frequencies: Vec<Vec<f64>>,
}

/// What sets one decoder layer apart from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Index into [`DecoderSpec::rope_frequencies`] of the layer's rotary frequencies.
    pub rope: usize,
    /// Sliding window of the layer's attention in positions (the query's own included), if any.
    pub window: Option<usize>,
}

/// Everything the generic decoder needs to know of an architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderSpec {
    /// Hugging Face `model_type`, for messages.
    pub architecture: String,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub norm_eps: f64,
    /// Added to every stored norm weight to give the scale (Gemma's `1 + w`), or 0.
    pub norm_offset: f32,
    /// Activation of the MLP's gate.
    pub activation: Activation,
    /// Whether q, k and v projections have biases.
    pub qkv_bias: bool,
    /// Whether the output projection has a bias.
    pub o_bias: bool,
    /// Whether the MLP projections have biases.
    pub mlp_bias: bool,
    /// Whether queries and keys are RMS-normalised per head before the rotary embedding (`q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Whether the attention output is normalised before the residual add
    /// (`post_attention_layernorm`) and the MLP has norms before and after
    /// it (`pre_feedforward_layernorm`, `post_feedforward_layernorm`), as
    /// in Gemma 2 and 3; otherwise `post_attention_layernorm` is the norm
    /// before the MLP.
    pub sandwich_norms: bool,
    /// Factor of the attention scores.
    pub attention_scale: f64,
    /// Soft cap of attention logits, `cap * tanh(x / cap)`, if any.
    pub attn_softcap: Option<f64>,
    /// Soft cap of final logits, if any.
    pub final_softcap: Option<f64>,
    /// Factor of the token embeddings (Gemma's `sqrt(hidden)` in f32), if any.
    pub embedding_scale: Option<f32>,
    /// The sets of inverse rotary frequencies (head_dim / 2 values each) that layers use.
    pub rope_frequencies: Vec<Vec<f64>>,
    /// Sets that replace `rope_frequencies` in a forward whose positions
    /// reach past a length (LongRoPE's long factors), if any.
    pub long_rope: Option<LongRope>,
    /// Factor of every rotary cosine and sine (LongRoPE's attention factor; 1 elsewhere).
    pub rope_attention_factor: f64,
    /// One entry per decoder layer, bottom first.
    pub layers: Vec<LayerSpec>,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// The longest sequence the model is configured for.
    pub max_position_embeddings: usize,
}

impl DecoderSpec {
    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Refuses sizes no decoder can have: a zero size, query heads that are
    /// not a multiple of the key/value heads, an odd rotary head dimension,
    /// rotary frequencies of the wrong count, a zero window.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.layers.len()),
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ModelError::config(path, format!("`{name}` must be positive; found 0")));
            }
        }
        if self.heads % self.kv_heads != 0 {
            return Err(ModelError::config(
                path,
                format!("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", self.heads, self.kv_heads),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::config(path, format!("head_dim must be even for rotary embeddings; found {}", self.head_dim)));
        }
        let long = self.long_rope.iter().flat_map(|l| &l.frequencies);
        if self.long_rope.as_ref().is_some_and(|l| l.frequencies.len() != self.rope_frequencies.len()) {
            return Err(ModelError::config(path, "expected as many long rotary tables as short ones"));
        }
        if let Some(bad) = self.rope_frequencies.iter().chain(long).find(|f| f.len() != self.head_dim / 2) {
            return Err(ModelError::config(
                path,
                format!("expected {} rotary frequencies (head_dim / 2); found {}", self.head_dim / 2, bad.len()),
            ));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            if layer.rope >= self.rope_frequencies.len() {
                return Err(ModelError::config(
                    path,
                    format!("layer {l} uses rotary table {} of {}", layer.rope, self.rope_frequencies.len()),
                ));
            }
            if layer.window == Some(0) {
                return Err(ModelError::config(path, format!("layer {l} has a sliding window of 0 positions; expected a positive window")));
            }
        }
        Ok(())
    }

    fn head_shape(&self) -> HeadShape {
        HeadShape { heads: self.heads, kv_heads: self.kv_heads, head_dim: self.head_dim }
    }

    /// Names of the linear modules of decoder layer `layer` (Hugging Face
    /// parameter names without `.weight`) with their (out, in) features.
    pub fn linear_modules(&self, layer: usize) -> Vec<(String, usize, usize)> {
        let p = format!("model.layers.{layer}");
        let (h, q, kv, i) = (self.hidden_size, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate_size);
        vec![
            (format!("{p}.self_attn.q_proj"), q, h),
            (format!("{p}.self_attn.k_proj"), kv, h),
            (format!("{p}.self_attn.v_proj"), kv, h),
            (format!("{p}.self_attn.o_proj"), h, q),
            (format!("{p}.mlp.gate_proj"), i, h),
            (format!("{p}.mlp.up_proj"), i, h),
            (format!("{p}.mlp.down_proj"), h, i),
        ]
    }

    /// The largest f32 weight a device holds of this model: its name and
    /// shape. The embedding and LM head are [vocab, hidden]; a layer's
    /// q, k and v projections are one [q + 2 kv, hidden] matrix, its gate
    /// and up projections one [2 intermediate, hidden].
    pub fn largest_device_weight(&self) -> (&'static str, [usize; 2]) {
        let (h, q, kv, i) = (self.hidden_size, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate_size);
        let candidates = [
            ("the embedding / LM head", [self.vocab_size, h]),
            ("a layer's fused q, k and v projections", [q + 2 * kv, h]),
            ("a layer's o projection", [h, q]),
            ("a layer's fused gate and up projections", [2 * i, h]),
            ("a layer's down projection", [h, i]),
        ];
        candidates.into_iter().max_by_key(|(_, [rows, cols])| rows * cols).expect("five candidates")
    }

    /// Fails with a clear message where `device` (wgpu) cannot hold this
    /// model's largest weight in one buffer, before anything is loaded.
    pub fn check_device_buffers(&self, device: &Device) -> Result<(), ModelError> {
        let Some(limit) = crate::device::max_buffer_bytes(device) else {
            return Ok(());
        };
        let (what, [rows, cols]) = self.largest_device_weight();
        let bytes = (rows * cols * std::mem::size_of::<f32>()) as u64;
        if bytes > limit {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            return Err(ModelError::Device(format!(
                "{what} ([{rows}, {cols}] in f32) needs a buffer of {:.0} MiB on the wgpu device, whose driver allows at most {:.0} MiB per buffer (lavapipe allows 128 MiB; hardware drivers usually more): run this model with --device cpu, or on a GPU whose driver allows larger buffers",
                mib(bytes),
                mib(limit)
            )));
        }
        Ok(())
    }

    /// Whether the linear module `name` (without `.weight`) has a bias.
    fn has_bias(&self, name: &str) -> bool {
        if name.ends_with("o_proj") {
            self.o_bias
        } else if name.contains(".self_attn.") {
            self.qkv_bias
        } else {
            self.mlp_bias
        }
    }

    /// Names and widths of the norms of decoder layer `layer`.
    fn layer_norms(&self, layer: usize) -> Vec<(String, usize)> {
        let p = format!("model.layers.{layer}");
        let h = self.hidden_size;
        let mut out = vec![(format!("{p}.input_layernorm.weight"), h), (format!("{p}.post_attention_layernorm.weight"), h)];
        if self.sandwich_norms {
            out.push((format!("{p}.pre_feedforward_layernorm.weight"), h));
            out.push((format!("{p}.post_feedforward_layernorm.weight"), h));
        }
        if self.qk_norm {
            out.push((format!("{p}.self_attn.q_norm.weight"), self.head_dim));
            out.push((format!("{p}.self_attn.k_norm.weight"), self.head_dim));
        }
        out
    }

    /// Every tensor the architecture needs, with its shape, by Hugging Face name.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, self.hidden_size])];
        for layer in 0..self.layers.len() {
            out.extend(self.layer_norms(layer).into_iter().map(|(n, w)| (n, vec![w])));
            for (name, o, i) in self.linear_modules(layer) {
                if self.has_bias(&name) {
                    out.push((format!("{name}.bias"), vec![o]));
                }
                out.push((format!("{name}.weight"), vec![o, i]));
            }
        }
        out.push(("model.norm.weight".to_string(), vec![self.hidden_size]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, self.hidden_size]));
        }
        out
    }

    /// The rotary frequency sets of a forward whose positions run up to `end` (exclusive).
    fn rope_frequencies_to(&self, end: usize) -> &[Vec<f64>] {
        match &self.long_rope {
            Some(long) if end > long.from_length => &long.frequencies,
            _ => &self.rope_frequencies,
        }
    }

    /// The distinct sliding windows of the layers (`None` for full attention).
    fn windows(&self) -> Vec<Option<usize>> {
        let mut windows: Vec<Option<usize>> = Vec::new();
        for layer in &self.layers {
            if !windows.contains(&layer.window) {
                windows.push(layer.window);
            }
        }
        windows
    }
}

/// One decoder layer: pre-norm attention and pre-norm MLP with residuals,
/// and the sandwich norms where the spec has them.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    spec: LayerSpec,
    input_layernorm: RmsNorm,
    /// Attention block.
    pub self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    /// The norms before and after the MLP (sandwich norms).
    feedforward_norms: Option<(RmsNorm, RmsNorm)>,
    /// MLP block.
    pub mlp: Mlp,
}

/// Rotary tables of a whole-sequence forward, in the form its kernels use.
enum RopeTables {
    Host { cos: Vec<f32>, sin: Vec<f32> },
    Tensor { cos: Tensor<2>, sin: Tensor<2> },
}

/// Per-forward context shared by all layers: shape, kernels, rotary tables
/// of every frequency set and the attention masks of every window.
pub struct ForwardContext {
    kernels: Kernels,
    batch: usize,
    seq: usize,
    ropes: Vec<RopeTables>,
    masks: Vec<(Option<usize>, Tensor<2, Bool>)>,
}

impl ForwardContext {
    /// The kernels this context runs with.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    fn positions(&self, layer: &LayerSpec) -> Positions<'_> {
        match &self.ropes[layer.rope] {
            RopeTables::Host { cos, sin } => Positions::Host { cos, sin, causal: Causal { window: layer.window } },
            RopeTables::Tensor { cos, sin } => {
                let mask = &self.masks.iter().find(|(w, _)| *w == layer.window).expect("a mask for every window of the spec").1;
                Positions::Tensor { cos, sin, mask }
            }
        }
    }
}

/// Rotary tables of the new positions of a cached step.
enum StepRope {
    Host { cos: Vec<f32>, sin: Vec<f32> },
    Tensor { cos: Tensor<4>, sin: Tensor<4> },
}

/// What each new slot of a cached step may attend to, for one window.
enum StepVisibility {
    Host(Vec<Range<usize>>),
    Tensor(Tensor<4, Bool>),
}

/// What every layer of one cached forward step shares: shape, kernels, the
/// rotary tables of the new positions and what each may attend to.
pub struct CachedStep {
    kernels: Kernels,
    batch: usize,
    seq: usize,
    ropes: Vec<StepRope>,
    visibility: Vec<(Option<usize>, StepVisibility)>,
}

impl CachedStep {
    fn positions(&self, layer: &LayerSpec) -> StepPositions<'_> {
        let visibility = &self.visibility.iter().find(|(w, _)| *w == layer.window).expect("visibility for every window of the spec").1;
        match (&self.ropes[layer.rope], visibility) {
            (StepRope::Host { cos, sin }, StepVisibility::Host(visible)) => StepPositions::Host { cos, sin, visible },
            (StepRope::Tensor { cos, sin }, StepVisibility::Tensor(mask)) => StepPositions::Tensor { cos, sin, mask },
            _ => unreachable!("a step's tables and visibility are made for the same kernels"),
        }
    }
}

impl DecoderLayer {
    /// Builds decoder layer `layer` on `device` from Hugging Face-named host
    /// weights (used by sequential calibration to rebuild a layer after pruning).
    pub fn from_weights(spec: &DecoderSpec, weights: &dyn Weights, layer: usize, device: &Device) -> Result<Self, ModelError> {
        Self::build(spec, weights, layer, device, false)
    }

    /// [`DecoderLayer::from_weights`]. On a host-memory device the linear
    /// layers whose weights have a file behind them are built from their
    /// stored rows: with `stored`, kept in that form ([`Linear::from_stored`]);
    /// without, packed straight from it ([`Linear::packed_from_stored`]).
    fn build(spec: &DecoderSpec, weights: &dyn Weights, layer: usize, device: &Device, stored: bool) -> Result<Self, ModelError> {
        spec.check_device_buffers(device)?;
        let p = format!("model.layers.{layer}");
        let arch = &spec.architecture;
        let norm = |name: &str, width: usize| -> Result<RmsNorm, ModelError> {
            let w = weights.tensor(&format!("{p}.{name}.weight"), &[width], arch)?;
            Ok(RmsNorm::from_host(&w, spec.norm_offset, spec.norm_eps, device))
        };
        // Each linear is built as soon as its modules are read, so that only
        // one group of f32 weights is held beside the built ones.
        let modules = spec.linear_modules(layer);
        let linear = |range: std::ops::Range<usize>| -> Result<Linear, ModelError> {
            let rows: Option<Vec<StoredRows>> = modules[range.clone()]
                .iter()
                .map(|(name, out_f, in_f)| stored_rows_on(device, weights, &format!("{name}.weight"), [*out_f, *in_f]))
                .collect();
            if let Some(rows) = rows {
                let mut biases = Vec::new();
                for (name, out_f, _) in &modules[range.clone()] {
                    if spec.has_bias(name) {
                        biases.push(weights.tensor(&format!("{name}.bias"), &[*out_f], arch)?);
                    }
                }
                let biases = (!biases.is_empty()).then(|| biases.iter().map(|b| &**b).collect());
                return Ok(if stored {
                    Linear::from_stored(rows, biases, device)
                } else {
                    Linear::packed_from_stored(rows, biases, device)
                });
            }
            let mut parts = Vec::with_capacity(range.len());
            for (name, out_f, in_f) in &modules[range] {
                let w = weights.tensor(&format!("{name}.weight"), &[*out_f, *in_f], arch)?;
                let b = if spec.has_bias(name) { Some(weights.tensor(&format!("{name}.bias"), &[*out_f], arch)?) } else { None };
                parts.push((w, b));
            }
            let parts: Vec<(&HostTensor, Option<&HostTensor>)> = parts.iter().map(|(w, b)| (&**w, b.as_deref())).collect();
            Ok(Linear::concat_from_host(&parts, device))
        };
        assert_eq!(modules.len(), 7, "seven linear modules a layer: q, k, v, o, gate, up, down");
        let (qkv, o) = (linear(0..3)?, linear(3..4)?);
        let (gate_up, down) = (linear(4..6)?, linear(6..7)?);
        let h = spec.hidden_size;
        let qk_norms =
            if spec.qk_norm { Some((norm("self_attn.q_norm", spec.head_dim)?, norm("self_attn.k_norm", spec.head_dim)?)) } else { None };
        let feedforward_norms =
            if spec.sandwich_norms { Some((norm("pre_feedforward_layernorm", h)?, norm("post_feedforward_layernorm", h)?)) } else { None };
        Ok(DecoderLayer {
            spec: spec.layers[layer],
            input_layernorm: norm("input_layernorm", h)?,
            self_attn: Attention::new(qkv, o, qk_norms, spec.head_shape(), spec.attention_scale, spec.attn_softcap),
            post_attention_layernorm: norm("post_attention_layernorm", h)?,
            feedforward_norms,
            mlp: Mlp::new(gate_up, down, spec.intermediate_size, spec.activation),
        })
    }

    /// Runs the layer on hidden states [batch * seq, hidden]; reports every
    /// linear input to `observer` under the prefix `model.layers.L`.
    pub fn forward(&self, x: Tensor<2>, ctx: &ForwardContext, prefix: &str, observer: Option<&mut dyn LinearObserver>) -> Tensor<2> {
        self.run(x, ctx, prefix, observer, true).expect("the layer output was asked for")
    }

    /// Reports every linear input of the layer on hidden states [batch * seq,
    /// hidden] to `observer`, without computing the layer's output: the run
    /// stops at the input of the down projection.
    pub fn observe_inputs(&self, x: Tensor<2>, ctx: &ForwardContext, prefix: &str, observer: &mut dyn LinearObserver) {
        self.run(x, ctx, prefix, Some(observer), false);
    }

    /// Runs the layer on hidden states [batch * new, hidden] of new
    /// positions, attending over the cached keys and values of this layer,
    /// to which the new ones are appended.
    pub fn forward_cached(&self, x: Tensor<2>, step: &CachedStep, kv: &mut LayerKv) -> Tensor<2> {
        let (x, normed) = self.input_layernorm.forward_keep(x, step.kernels);
        let qkv = self.self_attn.qkv_proj.forward(normed);
        let context = self.self_attn.attend_cached(qkv, step.batch, step.seq, step.positions(&self.spec), kv);
        self.after_attention(x, context, step.kernels, "", None, true).expect("the layer output was asked for")
    }

    fn run(
        &self,
        x: Tensor<2>,
        ctx: &ForwardContext,
        prefix: &str,
        mut observer: Option<&mut dyn LinearObserver>,
        output: bool,
    ) -> Option<Tensor<2>> {
        let (x, normed) = self.input_layernorm.forward_keep(x, ctx.kernels);
        observe(&mut observer, prefix, &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], &normed);
        let context = self.self_attn.attend(self.self_attn.qkv_proj.forward(normed), ctx.batch, ctx.seq, ctx.positions(&self.spec));
        self.after_attention(x, context, ctx.kernels, prefix, observer, output)
    }

    /// The rest of the layer from the attention context: output projection,
    /// norms, residuals and MLP; reports the linear inputs from o_proj on.
    fn after_attention(
        &self,
        x: Tensor<2>,
        context: Tensor<2>,
        kernels: Kernels,
        prefix: &str,
        mut observer: Option<&mut dyn LinearObserver>,
        output: bool,
    ) -> Option<Tensor<2>> {
        observe(&mut observer, prefix, &["self_attn.o_proj"], &context);
        let attn = self.self_attn.o_proj.forward(context);
        let (h, normed) = match &self.feedforward_norms {
            Some((pre, _)) => pre.add_forward(x, self.post_attention_layernorm.forward_with(attn, kernels), kernels),
            None => self.post_attention_layernorm.add_forward(x, attn, kernels),
        };
        observe(&mut observer, prefix, &["mlp.gate_proj", "mlp.up_proj"], &normed);
        let gated = self.mlp.gate(normed, kernels);
        observe(&mut observer, prefix, &["mlp.down_proj"], &gated);
        if !output {
            return None;
        }
        let down = self.mlp.down_proj.forward(gated);
        Some(match &self.feedforward_norms {
            Some((_, post)) => h + post.forward_with(down, kernels),
            None => h + down,
        })
    }
}

/// The token embedding table: on the device, or in its stored form
/// (rows decoded for the tokens looked up).
#[derive(Debug, Clone)]
enum Embedding {
    Tensor(Tensor<2>),
    Stored(StoredRows),
}

/// The final norm and LM head.
#[derive(Debug, Clone)]
struct Head {
    norm: RmsNorm,
    lm_head: Linear,
}

/// A decoder on a burn device. Its parts are resident or not: a model built
/// whole ([`Decoder::from_weights`]) holds them all, a streamed one
/// ([`Decoder::empty`]) holds only what was loaded ([`Decoder::load_layer`],
/// [`Decoder::load_embedding`], [`Decoder::load_head`]), so that a model
/// larger than memory runs one layer at a time. Running a part that is not
/// loaded is a programming error and panics.
#[derive(Debug, Clone)]
pub struct Decoder {
    spec: DecoderSpec,
    embed_tokens: Option<Embedding>,
    layers: Vec<Option<DecoderLayer>>,
    head: Option<Head>,
    device: Device,
}

impl Decoder {
    /// Builds the whole model on `device` from Hugging Face-named weights
    /// (layers in parallel where the device is host memory), checking that
    /// every tensor is present with the shape the spec implies.
    pub fn from_weights(spec: &DecoderSpec, weights: &dyn Weights, device: &Device) -> Result<Self, ModelError> {
        let mut decoder = Decoder::empty(spec, device);
        decoder.load_embedding(weights)?;
        let build = |l: usize| DecoderLayer::from_weights(spec, weights, l, device);
        let layers: Vec<DecoderLayer> = if crate::device::is_host_memory(device) {
            use rayon::prelude::*;
            (0..spec.layers.len()).into_par_iter().map(build).collect::<Result<_, _>>()?
        } else {
            (0..spec.layers.len()).map(build).collect::<Result<_, _>>()?
        };
        decoder.layers = layers.into_iter().map(Some).collect();
        decoder.load_head(weights)?;
        Ok(decoder)
    }

    /// [`Decoder::from_weights`] keeping every matrix that has a file behind
    /// it (a [`crate::Checkpoint`]) in its stored form, on host-memory
    /// devices: the embedding, the linear layers and the LM head are decoded
    /// as they are read (see [`Linear::from_stored`]), so generation needs
    /// about the file's memory instead of an f32 copy of the model, with the
    /// same results bit for bit. Products of many rows decode and pack each
    /// weight a chunk of rows at a time, on every call: whole-sequence
    /// forwards take about as long as [`Decoder::from_weights`]'s (the
    /// weights of a pruned model are multiplied dense, where the f32 model
    /// skips their zeros).
    pub fn from_weights_stored(spec: &DecoderSpec, weights: &dyn Weights, device: &Device) -> Result<Self, ModelError> {
        if !crate::device::is_host_memory(device) {
            return Self::from_weights(spec, weights, device);
        }
        let mut decoder = Decoder::empty(spec, device);
        decoder.load_embedding(weights)?;
        for layer in 0..spec.layers.len() {
            decoder.layers[layer] = Some(DecoderLayer::build(spec, weights, layer, device, true)?);
        }
        decoder.load_head_as(weights, true)?;
        Ok(decoder)
    }

    /// A decoder of `spec` on `device` with nothing loaded yet.
    pub fn empty(spec: &DecoderSpec, device: &Device) -> Self {
        Decoder { spec: spec.clone(), embed_tokens: None, layers: vec![None; spec.layers.len()], head: None, device: device.clone() }
    }

    /// Loads (or reloads) the token embedding.
    pub fn load_embedding(&mut self, weights: &dyn Weights) -> Result<(), ModelError> {
        self.spec.check_device_buffers(&self.device)?;
        let (v, h) = (self.spec.vocab_size, self.spec.hidden_size);
        let name = "model.embed_tokens.weight";
        self.embed_tokens = Some(match stored_rows_on(&self.device, weights, name, [v, h]) {
            // Rows are decoded as tokens look them up: the table is never decoded whole.
            Some(rows) => Embedding::Stored(rows),
            None => {
                let embed = weights.tensor(name, &[v, h], &self.spec.architecture)?.into_owned();
                Embedding::Tensor(Tensor::from_data(TensorData::new(embed.data, [v, h]), &self.device))
            }
        });
        Ok(())
    }

    /// Loads (or reloads, e.g. after pruning it) decoder layer `layer`.
    pub fn load_layer(&mut self, weights: &dyn Weights, layer: usize) -> Result<(), ModelError> {
        self.layers[layer] = Some(DecoderLayer::from_weights(&self.spec, weights, layer, &self.device)?);
        Ok(())
    }

    /// Loads (or reloads) the final norm and the LM head (the embedding when tied).
    pub fn load_head(&mut self, weights: &dyn Weights) -> Result<(), ModelError> {
        self.load_head_as(weights, false)
    }

    /// [`Decoder::load_head`]; the LM head built from its stored rows where
    /// it has them, kept in that form with `stored` ([`Linear::from_stored`])
    /// and packed from it without ([`Linear::packed_from_stored`]).
    fn load_head_as(&mut self, weights: &dyn Weights, stored: bool) -> Result<(), ModelError> {
        self.spec.check_device_buffers(&self.device)?;
        let (v, h) = (self.spec.vocab_size, self.spec.hidden_size);
        let name = if self.spec.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let lm_head = match stored_rows_on(&self.device, weights, name, [v, h]) {
            Some(rows) if stored => Linear::from_stored(vec![rows], None, &self.device),
            Some(rows) => Linear::packed_from_stored(vec![rows], None, &self.device),
            None => Linear::from_host(&*weights.tensor(name, &[v, h], &self.spec.architecture)?, None, &self.device),
        };
        let spec = &self.spec;
        let norm = RmsNorm::from_host(
            &*weights.tensor("model.norm.weight", &[h], &spec.architecture)?,
            spec.norm_offset,
            spec.norm_eps,
            &self.device,
        );
        self.head = Some(Head { norm, lm_head });
        Ok(())
    }

    /// Frees the token embedding.
    pub fn unload_embedding(&mut self) {
        self.embed_tokens = None;
    }

    /// Frees decoder layer `layer`.
    pub fn unload_layer(&mut self, layer: usize) {
        self.layers[layer] = None;
    }

    /// Frees the final norm and LM head.
    pub fn unload_head(&mut self) {
        self.head = None;
    }

    /// Decoder layer `layer`, which must be loaded.
    fn layer(&self, layer: usize) -> &DecoderLayer {
        self.layers[layer].as_ref().unwrap_or_else(|| panic!("decoder layer {layer} is not loaded"))
    }

    /// The spec the model was built from.
    pub fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The kernels a forward pass on this model's device uses by default.
    pub fn kernels(&self) -> Kernels {
        Kernels::for_device(&self.device)
    }

    /// Context for a forward pass over `batch` sequences of `seq` tokens,
    /// with the kernels that suit the model's device.
    pub fn context(&self, batch: usize, seq: usize) -> ForwardContext {
        self.context_with(batch, seq, self.kernels())
    }

    /// Context for a forward pass over `batch` sequences of `seq` tokens with the given kernels.
    pub fn context_with(&self, batch: usize, seq: usize, kernels: Kernels) -> ForwardContext {
        let factor = self.spec.rope_attention_factor;
        let ropes = self
            .spec
            .rope_frequencies_to(seq)
            .iter()
            .map(|inv_freq| match kernels {
                Kernels::Host => {
                    let (cos, sin) = rope_values(inv_freq, seq, factor);
                    RopeTables::Host { cos, sin }
                }
                Kernels::Tensor => {
                    let (cos, sin) = rope_tables(inv_freq, seq, factor, &self.device);
                    RopeTables::Tensor { cos, sin }
                }
            })
            .collect();
        let masks = match kernels {
            Kernels::Host => Vec::new(),
            Kernels::Tensor => self.spec.windows().into_iter().map(|w| (w, attention_mask(seq, w, &self.device))).collect(),
        };
        ForwardContext { kernels, batch, seq, ropes, masks }
    }

    /// Input of the first decoder layer [batch * seq, hidden]: the token
    /// embeddings of equal-length sequences, scaled as the spec says.
    pub fn embed(&self, tokens: &[Vec<u32>]) -> Result<Tensor<2>, ModelError> {
        let ids = flatten_tokens(tokens, self.spec.vocab_size)?;
        let n = ids.len();
        let embedded = match self.embed_tokens.as_ref().expect("the token embedding is not loaded") {
            Embedding::Tensor(table) => table.clone().select(0, Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &self.device)),
            Embedding::Stored(rows) => {
                let h = self.spec.hidden_size;
                let mut values = vec![0.0f32; n * h];
                for (out, &id) in values.chunks_exact_mut(h).zip(&ids) {
                    rows.decode(id as usize, out);
                }
                Tensor::from_data(TensorData::new(values, [n, h]), &self.device)
            }
        };
        Ok(match self.spec.embedding_scale {
            Some(scale) => embedded * scale,
            None => embedded,
        })
    }

    /// Final norm, LM head and final soft-capping: hidden [n, hidden] -> logits [n, vocab].
    pub fn head(&self, hidden: Tensor<2>) -> Tensor<2> {
        let head = self.head.as_ref().expect("the LM head is not loaded");
        let logits = head.lm_head.forward(head.norm.forward(hidden));
        match self.spec.final_softcap {
            Some(cap) => soft_cap(logits, cap),
            None => logits,
        }
    }

    /// Runs decoder layer `layer` on hidden states [batch * seq, hidden],
    /// reporting every linear input to `observer`.
    pub fn layer_forward(&self, layer: usize, x: Tensor<2>, ctx: &ForwardContext, observer: Option<&mut dyn LinearObserver>) -> Tensor<2> {
        self.layer(layer).forward(x, ctx, &format!("model.layers.{layer}"), observer)
    }

    /// Reports the linear inputs of decoder layer `layer` to `observer`
    /// without computing its output.
    pub fn layer_observe_inputs(&self, layer: usize, x: Tensor<2>, ctx: &ForwardContext, observer: &mut dyn LinearObserver) {
        self.layer(layer).observe_inputs(x, ctx, &format!("model.layers.{layer}"), observer)
    }

    /// Logits [batch, seq, vocab] of equal-length token sequences.
    pub fn forward(&self, tokens: &[Vec<u32>]) -> Result<Tensor<3>, ModelError> {
        self.forward_with(tokens, self.kernels())
    }

    /// [`Decoder::forward`] with the given kernels.
    pub fn forward_with(&self, tokens: &[Vec<u32>], kernels: Kernels) -> Result<Tensor<3>, ModelError> {
        let (batch, seq) = batch_shape(tokens)?;
        let hidden = self.forward_hidden_with(tokens, kernels)?;
        Ok(self.head(hidden).reshape([batch, seq, self.spec.vocab_size]))
    }

    /// Hidden states [batch * seq, hidden] of equal-length token sequences
    /// after the last decoder layer, before the final norm: [`Decoder::head`]
    /// of the rows a caller needs gives their logits without computing the
    /// LM head for the others.
    pub fn forward_hidden(&self, tokens: &[Vec<u32>]) -> Result<Tensor<2>, ModelError> {
        self.forward_hidden_with(tokens, self.kernels())
    }

    /// [`Decoder::forward_hidden`] with the given kernels.
    pub fn forward_hidden_with(&self, tokens: &[Vec<u32>], kernels: Kernels) -> Result<Tensor<2>, ModelError> {
        let (batch, seq) = batch_shape(tokens)?;
        let ctx = self.context_with(batch, seq, kernels);
        let embedded = self.embed(tokens)?;
        Ok(on_pool(crate::device::is_host_memory(&self.device), || {
            let mut hidden = embedded;
            for l in 0..self.layers.len() {
                hidden = self.layer(l).forward(hidden, &ctx, &format!("model.layers.{l}"), None);
            }
            hidden
        }))
    }

    /// An empty key/value cache for `batch` unpadded rows.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        self.new_padded_cache(vec![0; batch])
    }

    /// An empty key/value cache for rows left-padded by the given numbers of
    /// slots: the first forward over it passes each row's padding slots
    /// (any valid token id) followed by its real tokens.
    pub fn new_padded_cache(&self, padding: Vec<usize>) -> KvCache {
        KvCache::new(self.layers.len(), padding)
    }

    /// Runs equal-length rows of new tokens after what `cache` holds,
    /// appending their keys and values to it; returns the hidden states
    /// [batch * new, hidden] after the last layer, before the final norm.
    /// Rotary positions follow the cache (each row's padding excluded).
    pub fn forward_cached_hidden(&self, tokens: &[Vec<u32>], cache: &mut KvCache, kernels: Kernels) -> Result<Tensor<2>, ModelError> {
        let (batch, seq) = batch_shape(tokens)?;
        cache.check_step(batch, seq)?;
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::Input(format!("the cache has {} layers; the model has {}", cache.layers.len(), self.layers.len())));
        }
        let positions = cache.positions(seq);
        let end = positions.iter().flatten().max().map_or(0, |&p| p + 1);
        let factor = self.spec.rope_attention_factor;
        let ropes = self
            .spec
            .rope_frequencies_to(end)
            .iter()
            .map(|inv_freq| match kernels {
                Kernels::Host => {
                    let (cos, sin) = rope_values_at(inv_freq, &positions, factor);
                    StepRope::Host { cos, sin }
                }
                Kernels::Tensor => {
                    let (cos, sin) = rope_tables_at(inv_freq, &positions, factor, &self.device);
                    StepRope::Tensor { cos, sin }
                }
            })
            .collect();
        let group = self.spec.heads / self.spec.kv_heads;
        let visibility = self
            .spec
            .windows()
            .into_iter()
            .map(|w| {
                let visible = match kernels {
                    Kernels::Host => StepVisibility::Host(cache.visible(seq, w)),
                    Kernels::Tensor => StepVisibility::Tensor(cache.mask(seq, group, w, &self.device)),
                };
                (w, visible)
            })
            .collect();
        let step = CachedStep { kernels, batch, seq, ropes, visibility };
        let embedded = self.embed(tokens)?;
        let hidden = on_pool(crate::device::is_host_memory(&self.device), || {
            let mut hidden = embedded;
            for (l, kv) in cache.layers.iter_mut().enumerate() {
                hidden = self.layer(l).forward_cached(hidden, &step, kv);
            }
            hidden
        });
        cache.advance(seq);
        Ok(hidden)
    }

    /// Whether a cached forward of several new tokens gives each one's
    /// logits bit for bit as one-token steps would, so that a draft of
    /// tokens can be checked in one step (speculative decoding) without
    /// changing what greedy decoding picks. True on the host kernels:
    /// products of up to [`crate::FEW_ROWS`] rows are the same for each row
    /// whatever the others, and attention reads only each query's visible
    /// keys. Tensor ops (wgpu) mask a longer row of keys instead, whose sums
    /// may round differently.
    pub fn multi_token_steps_are_exact(&self) -> bool {
        self.kernels() == Kernels::Host
    }

    /// Logits [batch, new, vocab] of equal-length rows of new tokens that
    /// follow what `cache` holds; their keys and values are appended to it.
    pub fn forward_cached(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<Tensor<3>, ModelError> {
        self.forward_cached_with(tokens, cache, self.kernels())
    }

    /// [`Decoder::forward_cached`] with the given kernels.
    pub fn forward_cached_with(&self, tokens: &[Vec<u32>], cache: &mut KvCache, kernels: Kernels) -> Result<Tensor<3>, ModelError> {
        let hidden = self.forward_cached_hidden(tokens, cache, kernels)?;
        let (batch, seq) = (tokens.len(), tokens[0].len());
        Ok(self.head(hidden).reshape([batch, seq, self.spec.vocab_size]))
    }

    /// Logits [batch, vocab] of the last new token of each row, as
    /// [`Decoder::forward_cached`] would give them, without computing the
    /// others' (the LM head runs on those rows alone: what each decoding step needs).
    pub fn forward_cached_last(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<Tensor<2>, ModelError> {
        self.forward_cached_last_with(tokens, cache, self.kernels())
    }

    /// [`Decoder::forward_cached_last`] with the given kernels.
    pub fn forward_cached_last_with(&self, tokens: &[Vec<u32>], cache: &mut KvCache, kernels: Kernels) -> Result<Tensor<2>, ModelError> {
        let hidden = self.forward_cached_hidden(tokens, cache, kernels)?;
        let (batch, seq, h) = (tokens.len(), tokens[0].len(), self.spec.hidden_size);
        let last = hidden.reshape([batch, seq, h]).narrow(1, seq - 1, 1).reshape([batch, h]);
        Ok(self.head(last))
    }
}

/// The stored rows of matrix `name`, of shape [rows, cols], where `device`
/// is host memory and the weights have a file behind them.
fn stored_rows_on(device: &Device, weights: &dyn Weights, name: &str, [rows, cols]: [usize; 2]) -> Option<StoredRows> {
    if !crate::device::is_host_memory(device) {
        return None;
    }
    weights.stored_rows(name).filter(|r| (r.rows(), r.cols()) == (rows, cols))
}

/// Runs `work` on a thread of rayon's pool (at once where this is one)
/// for a model in host memory (`host`). The host kernels split every
/// product and row-wise step into parallel tasks; started from a thread
/// outside the pool, each split hands its tasks over and sleeps until they
/// finish, tens of microseconds a call, and a decoding step makes several
/// calls per layer (SmolLM2-135M decoded 15% faster at batch 1 from the
/// pool). Other devices' work stays on the calling thread: wgpu's results
/// came out wrong when a step's tensors were made on one thread and used on
/// another (the `kv_cache` tests on lavapipe).
fn on_pool<R: Send>(host: bool, work: impl FnOnce() -> R + Send) -> R {
    if !host || rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::scope(|_| work())
    }
}

/// (batch, seq) of a batch of equal-length, non-empty sequences.
pub fn batch_shape(tokens: &[Vec<u32>]) -> Result<(usize, usize), ModelError> {
    let seq = tokens.first().map(Vec::len).unwrap_or(0);
    if tokens.is_empty() || seq == 0 {
        return Err(ModelError::Input("expected at least one non-empty token sequence".into()));
    }
    if let Some(bad) = tokens.iter().find(|t| t.len() != seq) {
        return Err(ModelError::Input(format!("all sequences of a batch must have the same length; found {seq} and {}", bad.len())));
    }
    Ok((tokens.len(), seq))
}

/// Token ids of a batch in one row-major list, each checked against the vocabulary size.
pub fn flatten_tokens(tokens: &[Vec<u32>], vocab: usize) -> Result<Vec<i32>, ModelError> {
    let mut out = Vec::with_capacity(tokens.iter().map(Vec::len).sum());
    for &t in tokens.iter().flatten() {
        if t as usize >= vocab {
            return Err(ModelError::Input(format!("token id {t} is outside the vocabulary of {vocab} tokens")));
        }
        out.push(t as i32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::on_pool;

    #[test]
    fn host_work_runs_on_a_pool_thread_and_other_work_where_it_is_called() {
        let caller = std::thread::current().id();
        // From a thread outside the pool: host work moves onto the pool, other work stays.
        assert!(rayon::current_thread_index().is_none());
        assert!(on_pool(true, || rayon::current_thread_index().is_some()));
        assert_eq!(on_pool(false, || (rayon::current_thread_index(), std::thread::current().id())), (None, caller));
        // From a pool thread, the work runs right there.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (outer, inner) = pool.install(|| (std::thread::current().id(), on_pool(true, || std::thread::current().id())));
        assert_eq!(outer, inner);
    }
}
