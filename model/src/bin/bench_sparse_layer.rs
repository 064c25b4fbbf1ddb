//! The few-row products of decoder layers' linear modules, for each of
//! several models given as `--model DIR` (e.g. the same 7B-shaped layers
//! dense in f16 and in the sparse format): the kernels alone, without the
//! LM head and the per-token work around them. Each timed run goes through
//! `--layers N` layers from `--layer` (default 1 from 0), as decoding does:
//! with more weight bytes than the last-level cache holds, the weights
//! stream from memory on every run, as a real 7B model's do, instead of
//! staying in the cache between runs. Prints the milliseconds per layer at
//! batch 1, 4 and 8 (best of `--repeats`, default 10) and the peak RSS;
//! asserts nothing about time. `--device wgpu` times the products on a
//! wgpu adapter (pruned weights in [`model::nn::device_sparse`]'s form).
//!
//! Run by `cargo xtask bench sparse -- --model llama-2-7b-layer`.

#[path = "shared/args.rs"]
mod args;

use std::path::PathBuf;
use std::time::Instant;

use args::{arg, repeated_arg};
use burn::tensor::{Tensor, TensorData};
use kernels::rng::Rng;
use model::nn::Linear;
use model::{load_model, select_device, DeviceChoice, HostTensor};

fn main() {
    let first_layer: usize = arg("--layer", 0);
    let layer_count: usize = arg("--layers", 1).max(1);
    let repeats: usize = arg("--repeats", 10).max(1);
    let models: Vec<PathBuf> = repeated_arg("--model").into_iter().map(PathBuf::from).collect();
    if models.is_empty() {
        eprintln!("give one or more --model DIR");
        std::process::exit(2);
    }
    let selected = select_device(arg("--device", DeviceChoice::Cpu)).expect("device");
    let device = selected.device;
    println!(
        "bench sparse layer: layers {first_layer}..{}, best of {repeats}, the models taken in turn; {}; {} threads",
        first_layer + layer_count,
        selected.description,
        rayon::current_num_threads()
    );
    // Per model, its layers' linear modules with their input widths.
    let layers: Vec<Vec<Vec<(Linear, usize)>>> = models
        .iter()
        .map(|path| {
            let loaded = load_model(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
            if let Err(e) = loaded.config.spec().check_device_buffers(&device) {
                eprintln!("{}: {e}", path.display());
                std::process::exit(1);
            }
            if first_layer + layer_count > loaded.config.num_layers() {
                eprintln!(
                    "{}: has {} layers; layers {first_layer}..{} asked for",
                    path.display(),
                    loaded.config.num_layers(),
                    first_layer + layer_count
                );
                std::process::exit(2);
            }
            (first_layer..first_layer + layer_count)
                .map(|layer| {
                    loaded
                        .config
                        .linear_modules(layer)
                        .iter()
                        .map(|(module, _, inner)| {
                            let rows = loaded
                                .weights
                                .rows_of(&format!("{module}.weight"))
                                .unwrap_or_else(|| panic!("{module} has no stored rows"));
                            let linear = if model::device::is_host_memory(&device) {
                                Linear::from_stored(vec![rows], None, &device)
                            } else {
                                Linear::from_host(&HostTensor::new(vec![rows.rows(), rows.cols()], rows.decode_all()), None, &device)
                            };
                            (linear, *inner)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    // One set of inputs serves every model, so their layers must take the same widths.
    let widths = |layers: &[Vec<(Linear, usize)>]| layers[0].iter().map(|(_, inner)| *inner).collect::<Vec<_>>();
    for (path, linears) in models.iter().zip(&layers).skip(1) {
        if widths(linears) != widths(&layers[0]) {
            eprintln!(
                "{}: layer {first_layer}'s linear modules take inputs of widths {:?}, {} takes {:?}; give models of one shape",
                path.display(),
                widths(linears),
                models[0].display(),
                widths(&layers[0])
            );
            std::process::exit(2);
        }
    }
    // Each repeat runs every model once, so that a slow spell of the
    // machine falls on all of them alike.
    let mut best = vec![[f64::INFINITY; 3]; models.len()];
    for (b, batch) in [1usize, 4, 8].into_iter().enumerate() {
        let mut rng = Rng::new(batch as u64);
        let inputs: Vec<Tensor<2>> = layers[0][0]
            .iter()
            .map(|(_, inner)| {
                let values: Vec<f32> = (0..batch * inner).map(|_| rng.next_f32()).collect();
                Tensor::from_data(TensorData::new(values, [batch, *inner]), &device)
            })
            .collect();
        // Milliseconds per layer of one run through the layers.
        let run = |layers: &[Vec<(Linear, usize)>]| {
            // On a pool thread, as the decoder runs its layers.
            rayon::scope(|_| {
                let started = Instant::now();
                for linears in layers {
                    for ((linear, _), x) in linears.iter().zip(&inputs) {
                        std::hint::black_box(linear.forward(x.clone()).into_data().try_into_vec::<f32>().expect("f32 outputs"));
                    }
                }
                started.elapsed().as_secs_f64() * 1e3 / layers.len() as f64
            })
        };
        for model_layers in &layers {
            run(model_layers);
        }
        for _ in 0..repeats {
            for (m, model_layers) in layers.iter().enumerate() {
                best[m][b] = best[m][b].min(run(model_layers));
            }
        }
    }
    for (path, [batch1, batch4, batch8]) in models.iter().zip(&best) {
        println!("{}: batch 1 {batch1:.2} ms, batch 4 {batch4:.2} ms, batch 8 {batch8:.2} ms per layer", path.display());
    }
    if let Some(mib) = model::device::peak_rss_mib() {
        println!("peak RSS: {mib:.0} MiB");
    }
}
