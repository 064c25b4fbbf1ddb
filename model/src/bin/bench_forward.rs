//! Forward-pass benchmark on SmolLM2-135M: model load time, forward tokens/s
//! on 512-token windows, peak RSS. Prints figures; asserts nothing about time.
//!
//! Run through `cargo xtask bench forward`, which builds the workspace, fetches the model and sets
//! `SUBPRUNE_SMOLLM2_GGUF`. Options (after `--`): `--device cpu|wgpu|auto`
//! (default cpu), `--windows N` (default 4), `--seqlen N` (default 512),
//! `--kernels host|tensor` (default: what suits the device; see
//! `model::Kernels`).

#[path = "shared/args.rs"]
mod args;

use std::path::PathBuf;
use std::time::Instant;

use model::{load_model, select_device, DeviceChoice, Kernels};

use args::arg;

fn main() {
    let Some(path) = std::env::var_os("SUBPRUNE_SMOLLM2_GGUF").map(PathBuf::from) else {
        eprintln!("SUBPRUNE_SMOLLM2_GGUF is not set: run this benchmark through `cargo xtask bench forward`");
        std::process::exit(2);
    };
    let device_choice: DeviceChoice = arg("--device", DeviceChoice::Cpu);
    let windows: usize = arg("--windows", 4);
    let seqlen: usize = arg("--seqlen", 512);
    let kernels: String = arg("--kernels", String::new());

    let started = Instant::now();
    let loaded = load_model(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let load_s = started.elapsed().as_secs_f64();
    let parameters: usize = loaded.weights.shapes().map(|(_, s)| s.iter().product::<usize>()).sum();

    let selected = select_device(device_choice).expect("device");
    let started = Instant::now();
    let network = loaded.build(&selected.device).expect("build");
    let build_s = started.elapsed().as_secs_f64();
    let kernels = match kernels.as_str() {
        "host" => Kernels::Host,
        "tensor" => Kernels::Tensor,
        "" => Kernels::for_device(&selected.device),
        other => {
            eprintln!("unknown --kernels `{other}`; expected host or tensor");
            std::process::exit(2);
        }
    };

    let vocab = loaded.config.vocab_size() as u64;
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut token = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % vocab) as u32
    };
    let batches: Vec<Vec<u32>> = (0..windows).map(|_| (0..seqlen).map(|_| token()).collect()).collect();

    // One warm-up window (kernel compilation on wgpu, allocator warm-up on cpu).
    let _ = network.forward_with(&batches[..1], kernels).expect("forward").into_data();
    let started = Instant::now();
    for window in &batches {
        let _ = network.forward_with(std::slice::from_ref(window), kernels).expect("forward").into_data();
    }
    let forward_s = started.elapsed().as_secs_f64();

    println!("model: {} ({:.1} M parameters)", path.display(), parameters as f64 / 1e6);
    println!("device: {} ({kernels:?} kernels)", selected.description);
    println!("load (read + dequantize to f32): {load_s:.3} s");
    println!("build on device: {build_s:.3} s");
    println!(
        "forward: {windows} windows x {seqlen} tokens in {forward_s:.3} s = {:.1} tokens/s ({:.3} s per window)",
        (windows * seqlen) as f64 / forward_s,
        forward_s / windows as f64
    );
    match model::device::peak_rss_mib() {
        Some(mib) => println!("peak RSS: {mib:.0} MiB"),
        None => println!("peak RSS: unavailable (no /proc/self/status)"),
    }
}
