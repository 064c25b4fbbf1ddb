//! Reference quantizers (ggml's `quantize_row_*_ref`), used by tests to
//! write quantized tiny models.

use half::f16;

/// Elements per Q8_0 / Q4_0 block.
const QK: usize = 32;

/// Quantizes to Q8_0 blocks like ggml's `quantize_row_q8_0_ref`: per block
/// of 32, d = max|x| / 127 (stored as f16) and q = round(x / d).
///
/// Panics if `values.len()` is not a multiple of 32.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert!(values.len().is_multiple_of(QK), "quantize_q8_0: {} values is not a multiple of the block size {QK}", values.len());
    let mut out = Vec::with_capacity(values.len() / QK * 34);
    for block in values.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

/// Quantizes to Q4_0 blocks like ggml's `quantize_row_q4_0_ref`: per block
/// of 32, take the value of largest magnitude with its sign (`max`),
/// d = max / -8 (stored as f16), and q = min(15, trunc(x / d + 8.5)).
///
/// Panics if `values.len()` is not a multiple of 32.
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    assert!(values.len().is_multiple_of(QK), "quantize_q4_0: {} values is not a multiple of the block size {QK}", values.len());
    let mut out = Vec::with_capacity(values.len() / QK * 18);
    for block in values.chunks_exact(QK) {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in block {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for j in 0..QK / 2 {
            let x0 = block[j] * id;
            let x1 = block[j + QK / 2] * id;
            let q0 = ((x0 + 8.5) as i8).min(15) as u8;
            let q1 = ((x1 + 8.5) as i8).min(15) as u8;
            out.push(q0 | (q1 << 4));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{dequantize, GgmlType};

    /// Deterministic values in [-scale, scale).
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn block_d(bytes: &[u8], block: usize, type_size: usize) -> f32 {
        let at = block * type_size;
        f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
    }

    #[test]
    fn q8_0_round_trip_within_half_step() {
        let x = values(32 * 64, 7, 3.0);
        let q = quantize_q8_0(&x);
        assert_eq!(q.len(), 64 * 34);
        let y = dequantize(GgmlType::Q8_0, &q, x.len()).unwrap();
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let d = block_d(&q, i / 32, 34);
            // Rounding to the nearest step costs at most d/2; d itself is
            // stored as f16 (relative error <= 2^-11), which moves a value
            // of |q| <= 127 steps by at most 127 * 2^-11 * d more; 128
            // leaves room for the f16 d being below the exact one.
            let tol = d * (0.5 + 128.0 / 2048.0);
            assert!((a - b).abs() <= tol, "element {i}: {a} vs {b}, d = {d}");
        }
    }

    #[test]
    fn q8_0_known_block() {
        // max |x| = 127 -> d = 1, q = round(x).
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = -3.4;
        x[2] = 2.5;
        let q = quantize_q8_0(&x);
        assert_eq!(&q[..2], &[0x00, 0x3C]);
        assert_eq!(q[2], 127);
        assert_eq!(q[3] as i8, -3);
        assert_eq!(q[4], 3); // round half away from zero, like C roundf
    }

    #[test]
    fn q4_0_round_trip_within_one_step() {
        let x = values(32 * 64, 11, 2.0);
        let q = quantize_q4_0(&x);
        assert_eq!(q.len(), 64 * 18);
        let y = dequantize(GgmlType::Q4_0, &q, x.len()).unwrap();
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let d = block_d(&q, i / 32, 18).abs();
            // Steps are d apart; values on the side opposite to `max` can
            // be clamped at q = 15, a full step away, and d is stored as f16.
            let tol = d * (1.0 + 16.0 / 2048.0);
            assert!((a - b).abs() <= tol, "element {i}: {a} vs {b}, d = {d}");
        }
    }

    #[test]
    fn q4_0_known_block() {
        // max = -4 -> d = 0.5, id = 2; x = -4 -> 0, x = 1 -> trunc(10.5) = 10,
        // x = 4 -> trunc(16.5) = 16, clamped to 15.
        let mut x = vec![0f32; 32];
        x[0] = -4.0;
        x[1] = 1.0;
        x[16] = 4.0;
        let q = quantize_q4_0(&x);
        assert_eq!(&q[..2], &[0x00, 0x38]);
        assert_eq!(q[2], 0xF0); // lo: x[0] -> 0, hi: x[16] -> 15
        assert_eq!(q[3], 0x8A); // lo: x[1] -> 10, hi: x[17] = 0 -> 8
        let y = dequantize(GgmlType::Q4_0, &q, 32).unwrap();
        assert_eq!((y[0], y[1], y[16], y[17]), (-4.0, 1.0, 3.5, 0.0));
    }

    #[test]
    fn all_zero_block() {
        let zeros = vec![0f32; 32];
        let y = dequantize(GgmlType::Q8_0, &quantize_q8_0(&zeros), 32).unwrap();
        assert!(y.iter().all(|&v| v == 0.0));
        let y = dequantize(GgmlType::Q4_0, &quantize_q4_0(&zeros), 32).unwrap();
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
