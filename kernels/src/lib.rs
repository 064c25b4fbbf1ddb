//! Exact CPU kernels for f32 rows in host memory, with no tensor library:
//! the dense matrix product of packed weights ([`gemm`]), the same product
//! over the nonzeros of a pruned weight with the same bits ([`sparse_gemm`]),
//! and the row-wise kernels of a decoder layer ([`rows`], re-exported here):
//! few-row products for decoding, RMSNorm, rotary embeddings with the split
//! of fused projections, causal (windowed, soft-capped) softmax and
//! attention, and gated activations; and few-row products with weights in
//! their stored encoding, f16, bf16 or quantized blocks ([`encoded`]).
//!
//! Every sum runs in an order that depends neither on the number of rows
//! nor on the number of threads, so a row's result is the same alone or in
//! a batch; masks depend on this.

pub mod encoded;
pub mod gemm;
pub mod rng;
pub mod rows;
mod scratch;
pub mod sparse_gemm;

pub use rows::*;
