//! Throughput of `model::gemm` on the linear-layer shapes of SmolLM2-135M
//! (512 rows, one calibration window), on one thread and on all of them.
//! Prints GFLOP/s (best of `--repeats`, default 5, against timing noise) and
//! the kernel in use; asserts nothing about time.
//!
//! Run through `cargo xtask bench gemm`.

#[path = "shared/args.rs"]
mod args;

use std::time::Instant;

use args::arg;
use model::gemm::{self, PackedRhs};
use model::testing::Rng;

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_f32()).collect()
}

/// Best GFLOP/s of `repeats` products `a [m, k] x rhs`.
fn best_gflops(a: &[f32], m: usize, k: usize, rhs: &PackedRhs, repeats: usize) -> f64 {
    let flops = 2.0 * (m * k * rhs.cols()) as f64;
    (0..repeats)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(gemm::matmul(a, m, rhs));
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
    println!("{:<22} {:>8} {:>8} {:>16} {:>16}", "layer (n x k)", "n", "k", "1 thread GFLOP/s", "all GFLOP/s");
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    for (name, n, k) in [("q,k,v fused", 960, 576), ("o_proj", 576, 576), ("gate,up fused", 3072, 576), ("down_proj", 576, 1536)] {
        let a = values(rows * k, 1);
        let rhs = PackedRhs::from_transposed(&values(n * k, 2), n, k);
        let single = one.install(|| best_gflops(&a, rows, k, &rhs, repeats));
        let all = best_gflops(&a, rows, k, &rhs, repeats);
        println!("{name:<22} {n:>8} {k:>8} {single:>16.1} {all:>16.1}");
    }
}
