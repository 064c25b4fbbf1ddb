//! Throughput of the few-row products straight from stored weights
//! (`kernels::encoded::small_matmul_stored`), per encoding and per number
//! of rows (1-8): G weights/s, each weight counted once however many rows
//! it multiplies. Shows where a second tile of rows decoded in registers
//! pays against the f32 buffer on this machine (`register_rows` in
//! `kernels::encoded`). Prints figures and the peak RSS; asserts nothing
//! about time.
//!
//! Run through `cargo xtask bench stored`. Options (after `--`):
//! `--inner N` (default 4864) and `--cols N` (default 896): the weight's
//! shape, Qwen2.5-Coder-0.5B's `ffn_down` by default; `--repeats N` (best
//! of, default 20).

#[path = "shared/args.rs"]
mod args;

use std::time::Instant;

use args::arg;
use kernels::encoded::{decode, random_blocks, small_matmul_stored, BlockRows, Encoding};
use kernels::rng::Rng;

fn main() {
    let inner: usize = arg("--inner", 4864);
    let cols: usize = arg("--cols", 896).max(1);
    let repeats: usize = arg("--repeats", 20).max(1);
    if inner == 0 || !inner.is_multiple_of(256) {
        eprintln!("--inner must be a positive multiple of 256 (the largest block, Q4_K's and Q6_K's); found {inner}");
        std::process::exit(2);
    }
    if !decode(Encoding::F32, &[0; 32], &mut [0.0; 8]) {
        eprintln!("this CPU lacks the register decoders (AVX2, FMA, F16C): nothing to measure");
        std::process::exit(2);
    }
    println!(
        "bench stored: a [{cols}, {inner}] weight per encoding, G weights/s (best of {repeats}) by rows; {} threads",
        rayon::current_num_threads()
    );
    println!("{:<9}{}", "encoding", (1..=8).map(|r| format!("{:>8}", format!("{r} rows"))).collect::<String>());
    let mut rng = Rng::new(1);
    for encoding in Encoding::BLOCKS {
        let weight = BlockRows { bytes: random_blocks(encoding, cols, inner, &mut rng), inner, encoding, keep: vec![None; cols] };
        let mut line = format!("{:<9}", format!("{encoding:?}"));
        for rows in 1..=8 {
            let x: Vec<f32> = (0..rows * inner).map(|_| rng.next_f32() - 0.5).collect();
            // On a pool thread, as the decoder runs its layers.
            let best = rayon::scope(|_| {
                (0..repeats)
                    .map(|_| {
                        let started = Instant::now();
                        std::hint::black_box(small_matmul_stored(&x, rows, cols, &weight));
                        started.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min)
            });
            line += &format!("{:>8.2}", (inner * cols) as f64 / best / 1e9);
        }
        println!("{line}");
    }
    if let Some(mib) = model::device::peak_rss_mib() {
        println!("peak RSS: {mib:.0} MiB");
    }
}
