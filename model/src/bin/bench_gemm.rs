//! Throughput of `kernels::gemm` on the linear-layer shapes of SmolLM2-135M
//! (512 rows, one calibration window), on one thread and on all of them,
//! and of `kernels::sparse_gemm` on the same weights with half their values
//! zero (every other one of each row, at random). Prints GFLOP/s (best of
//! `--repeats`, default 5, against timing noise; the sparse products
//! counted at the dense products' flops) and the kernel in use; asserts
//! nothing about time.
//!
//! Run through `cargo xtask bench gemm`.

#[path = "shared/args.rs"]
mod args;

use std::time::Instant;

use args::arg;
use kernels::gemm::{self, PackedRhs};
use kernels::rng::Rng;
use kernels::sparse_gemm::{self, SparseRhs};

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_f32()).collect()
}

/// A weight [n, k] of `values` with one of each pair of neighbours zero, at random.
fn half_pruned(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut w = values(n * k, seed + 1);
    for pair in w.chunks_exact_mut(2) {
        pair[usize::from(rng.next_f32() < 0.0)] = 0.0;
    }
    w
}

/// Best GFLOP/s of `repeats` runs of `product` [m, k] x [k, n].
fn best_gflops(m: usize, k: usize, n: usize, repeats: usize, product: impl Fn() -> Vec<f32>) -> f64 {
    let flops = 2.0 * (m * k * n) as f64;
    (0..repeats)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(product());
            flops / started.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn main() {
    let rows: usize = arg("--rows", 512);
    let repeats: usize = arg("--repeats", 5).max(1);
    let threads = rayon::current_num_threads();
    let kernel = if gemm::fast_kernel_available() { "AVX-512" } else { "portable" };
    println!("bench gemm: {kernel} kernel, {rows} rows, best of {repeats}; {threads} threads available");
    println!(
        "{:<22} {:>6} {:>6} {:>16} {:>12} {:>20} {:>16}",
        "layer", "n", "k", "1 thread GFLOP/s", "all GFLOP/s", "50% sparse 1 thread", "50% sparse all"
    );
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    for (name, n, k) in [("q,k,v fused", 960, 576), ("o_proj", 576, 576), ("gate,up fused", 3072, 576), ("down_proj", 576, 1536)] {
        let a = values(rows * k, 1);
        let rhs = PackedRhs::from_transposed(&values(n * k, 2), n, k);
        let dense = || gemm::matmul(&a, rows, &rhs);
        let single = one.install(|| best_gflops(rows, k, n, repeats, dense));
        let all = best_gflops(rows, k, n, repeats, dense);
        let sparse_rhs = SparseRhs::from_transposed(&half_pruned(n, k, 3), n, k);
        let sparse = || sparse_gemm::matmul(&a, rows, &sparse_rhs);
        let sparse_single = one.install(|| best_gflops(rows, k, n, repeats, sparse));
        let sparse_all = best_gflops(rows, k, n, repeats, sparse);
        println!("{name:<22} {n:>6} {k:>6} {single:>16.1} {all:>12.1} {sparse_single:>20.1} {sparse_all:>16.1}");
    }
}
