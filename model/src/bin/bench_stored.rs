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
use kernels::encoded::{decode, random_blocks, small_matmul_stored, Encoding, StoredRow, StoredWeight};
use kernels::rng::Rng;

/// A weight of random rows in one encoding, without keep bits.
struct RandomWeight {
    bytes: Vec<u8>,
    row_bytes: usize,
    inner: usize,
    encoding: Encoding,
}

impl RandomWeight {
    /// `cols` rows of `inner` random values in `encoding` (see [`random_blocks`]).
    fn new(encoding: Encoding, inner: usize, cols: usize, rng: &mut Rng) -> Self {
        let (values, size) = encoding.block();
        RandomWeight { bytes: random_blocks(encoding, cols, inner, rng), row_bytes: inner / values * size, inner, encoding }
    }
}

impl StoredWeight for RandomWeight {
    fn encoding(&self, _: usize, _: usize) -> Option<Encoding> {
        Some(self.encoding)
    }

    fn rows<'a>(&'a self, first: usize, count: usize, out: &mut Vec<StoredRow<'a>>) {
        for row in first..first + count {
            out.push((&self.bytes[row * self.row_bytes..(row + 1) * self.row_bytes], None));
        }
    }

    fn decode(&self, first: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(self.inner).enumerate() {
            let r = first + i;
            if !decode(self.encoding, &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes], row) {
                eprintln!("this CPU lacks the register decoders (AVX2, FMA, F16C): nothing to measure");
                std::process::exit(2);
            }
        }
    }
}

fn main() {
    let inner: usize = arg("--inner", 4864);
    let cols: usize = arg("--cols", 896).max(1);
    let repeats: usize = arg("--repeats", 20).max(1);
    if inner == 0 || !inner.is_multiple_of(256) {
        eprintln!("--inner must be a positive multiple of 256 (the largest block, Q4_K's and Q6_K's); found {inner}");
        std::process::exit(2);
    }
    println!(
        "bench stored: a [{cols}, {inner}] weight per encoding, G weights/s (best of {repeats}) by rows; {} threads",
        rayon::current_num_threads()
    );
    println!("{:<9}{}", "encoding", (1..=8).map(|r| format!("{:>8}", format!("{r} rows"))).collect::<String>());
    let mut rng = Rng::new(1);
    for encoding in Encoding::BLOCKS {
        let weight = RandomWeight::new(encoding, inner, cols, &mut rng);
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
