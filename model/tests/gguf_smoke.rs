//! Opens a real GGUF model named by `SUBPRUNE_GGUF_SMOKE` (skipped when the
//! variable is unset) and dequantizes every tensor, reporting the time.

use std::path::PathBuf;
use std::time::Instant;

use model::gguf::GgufFile;

#[test]
fn real_model_opens_and_dequantizes() {
    let Some(path) = std::env::var_os("SUBPRUNE_GGUF_SMOKE").map(PathBuf::from) else {
        eprintln!("SUBPRUNE_GGUF_SMOKE not set; skipping");
        return;
    };
    let start = Instant::now();
    let f = GgufFile::open(&path).unwrap();
    let opened = start.elapsed();
    let mut n = 0u64;
    for t in f.tensors() {
        if !t.ggml_type.can_dequantize() {
            eprintln!("skipping {} of type {}", t.name, t.ggml_type);
            continue;
        }
        let v = f.tensor_f32(&t.name).unwrap();
        assert_eq!(v.len() as u64, t.n_elements(), "{}", t.name);
        assert!(v.iter().all(|x| x.is_finite()), "{}: non-finite values", t.name);
        n += v.len() as u64;
    }
    eprintln!(
        "{}: v{}, {} keys, {} tensors, {} elements; open {:?}, total {:?}",
        path.display(),
        f.version(),
        f.metadata().len(),
        f.tensors().len(),
        n,
        opened,
        start.elapsed()
    );
}
