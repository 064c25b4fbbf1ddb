//! Dequantization of ggml tensor data to f32, following ggml's
//! `dequantize_row_*` reference implementations (ggml-quants.c) exactly.
//!
//! Large inputs are split into chunks of whole blocks and dequantized on
//! all available cores with `std::thread::scope`.

use std::sync::OnceLock;

use half::{bf16, f16};

use super::GgmlType;

/// The types [`dequantize`] supports.
pub const SUPPORTED_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Below this many elements, dequantization runs on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Errors of [`dequantize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type has no dequantizer.
    #[error("cannot dequantize type {ty}: supported types are {supported}")]
    Unsupported {
        /// The type asked for.
        ty: GgmlType,
        /// The supported types, comma-separated.
        supported: String,
    },
    /// The element count is not a whole number of blocks.
    #[error(
        "{n_elements} elements of type {ty} are not a whole number of blocks: \
         expected a multiple of the block size {block_size}"
    )]
    NotBlockMultiple {
        /// The type.
        ty: GgmlType,
        /// The element count asked for.
        n_elements: usize,
        /// The type's block size.
        block_size: usize,
    },
    /// The input is not exactly as long as the element count requires.
    #[error("{n_elements} elements of type {ty} take {expected} bytes, but {found} bytes were given")]
    SizeMismatch {
        /// The type.
        ty: GgmlType,
        /// The element count asked for.
        n_elements: usize,
        /// Bytes those elements occupy.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// The byte size of the element count overflows usize.
    #[error("{n_elements} elements of type {ty}: the byte size overflows")]
    Overflow {
        /// The type.
        ty: GgmlType,
        /// The element count asked for.
        n_elements: usize,
    },
}

/// Dequantizes `n_elements` elements of type `ty` stored in `bytes` (whole
/// blocks, exactly as long as those elements take) to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, DequantError> {
    check(ty, bytes, n_elements)?;
    let mut out = vec![0f32; n_elements];
    run(ty, bytes, &mut out);
    Ok(out)
}

/// Dequantizes `bytes` of type `ty` into `out`, whose length is the
/// element count; same rules as [`dequantize`].
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    check(ty, bytes, out.len())?;
    run(ty, bytes, out);
    Ok(())
}

/// [`dequantize_into`] on the calling thread only, whatever the size: for
/// callers that already run in parallel (decoding blocks of weight rows).
pub fn dequantize_into_serial(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    check(ty, bytes, out.len())?;
    kernel(ty)(bytes, out);
    Ok(())
}

/// Validates type, element count and input length.
fn check(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<(), DequantError> {
    let (Some(block_size), Some(type_size)) = (ty.block_size(), ty.type_size()) else {
        return Err(unsupported(ty));
    };
    if !SUPPORTED_TYPES.contains(&ty) {
        return Err(unsupported(ty));
    }
    if !n_elements.is_multiple_of(block_size) {
        return Err(DequantError::NotBlockMultiple { ty, n_elements, block_size });
    }
    let expected = (n_elements / block_size).checked_mul(type_size).ok_or(DequantError::Overflow { ty, n_elements })?;
    if bytes.len() != expected {
        return Err(DequantError::SizeMismatch { ty, n_elements, expected, found: bytes.len() });
    }
    Ok(())
}

fn unsupported(ty: GgmlType) -> DequantError {
    DequantError::Unsupported { ty, supported: SUPPORTED_TYPES.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ") }
}

/// Number of worker threads to use for large tensors.
fn n_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Dequantizes validated input, in parallel when it is large.
fn run(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let kernel = kernel(ty);
    let threads = n_threads();
    if out.len() < PARALLEL_MIN_ELEMENTS || threads < 2 {
        kernel(bytes, out);
        return;
    }
    // `check` guarantees these are Some and that the sizes agree.
    let block_size = ty.block_size().unwrap_or(1);
    let type_size = ty.type_size().unwrap_or(1);
    let n_blocks = out.len() / block_size;
    let blocks_per_chunk = n_blocks.div_ceil(threads);
    std::thread::scope(|s| {
        let mut src_chunks = bytes.chunks(blocks_per_chunk * type_size);
        let mut dst_chunks = out.chunks_mut(blocks_per_chunk * block_size);
        let first = (src_chunks.next(), dst_chunks.next());
        for (src, dst) in src_chunks.zip(dst_chunks) {
            s.spawn(move || kernel(src, dst));
        }
        if let (Some(src), Some(dst)) = first {
            kernel(src, dst);
        }
    });
}

/// A function that dequantizes whole blocks of `src` into `dst`.
type Kernel = fn(&[u8], &mut [f32]);

fn kernel(ty: GgmlType) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return match ty {
            GgmlType::F32 => avx2::dequant_f32,
            GgmlType::F16 => avx2::dequant_f16,
            GgmlType::BF16 => avx2::dequant_bf16,
            GgmlType::Q4_0 => avx2::q4_0,
            GgmlType::Q4_1 => avx2::q4_1,
            GgmlType::Q5_0 => avx2::q5_0,
            GgmlType::Q5_1 => avx2::dequant_q5_1,
            GgmlType::Q8_0 => avx2::q8_0,
            GgmlType::Q4K => avx2::q4_k,
            GgmlType::Q5K => avx2::dequant_q5_k,
            GgmlType::Q6K => avx2::q6_k,
            _ => dequant_none,
        };
    }
    portable_kernel(ty)
}

/// The kernel of `ty` in plain Rust: the reference the vector kernels match.
fn portable_kernel(ty: GgmlType) -> Kernel {
    match ty {
        GgmlType::F32 => dequant_f32,
        GgmlType::F16 => dequant_f16,
        GgmlType::BF16 => dequant_bf16,
        GgmlType::Q4_0 => dequant_q4_0,
        GgmlType::Q4_1 => dequant_q4_1,
        GgmlType::Q5_0 => dequant_q5_0,
        GgmlType::Q5_1 => dequant_q5_1,
        GgmlType::Q8_0 => dequant_q8_0,
        GgmlType::Q4K => dequant_q4_k,
        GgmlType::Q5K => dequant_q5_k,
        GgmlType::Q6K => dequant_q6_k,
        // `check` rejects every other type before a kernel is chosen.
        _ => dequant_none,
    }
}

fn dequant_none(_: &[u8], _: &mut [f32]) {}

/// Whether the CPU has AVX2, FMA and F16C (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// The kernels for AVX2: the register decoders of [`kernels::encoded`]
/// for the quantized types they cover (the usual GGUF types), and the
/// portable kernels compiled for AVX2 for the rest (float types included:
/// their tensors need not be whole blocks of eight). Both give the portable kernels'
/// values bit for bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use kernels::encoded::{decode, Encoding};

    macro_rules! avx2_kernels {
        ($($name:ident),*) => {$(
            pub(super) fn $name(src: &[u8], dst: &mut [f32]) {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn inner(src: &[u8], dst: &mut [f32]) {
                    super::$name(src, dst)
                }
                // SAFETY: chosen only where `has_avx2` found AVX2, FMA and F16C.
                unsafe { inner(src, dst) }
            }
        )*};
    }
    avx2_kernels!(dequant_q5_1, dequant_q5_k);

    macro_rules! float_kernels {
        ($($name:ident => $dtype:ident),*) => {$(
            pub(super) fn $name(src: &[u8], dst: &mut [f32]) {
                crate::safetensors::StoredDtype::$dtype.decode_into(src, dst)
            }
        )*};
    }
    float_kernels!(dequant_f32 => F32, dequant_f16 => F16, dequant_bf16 => BF16);

    macro_rules! register_kernels {
        ($($name:ident => $encoding:ident),*) => {$(
            pub(super) fn $name(src: &[u8], dst: &mut [f32]) {
                let decoded = decode(Encoding::$encoding, src, dst);
                debug_assert!(decoded, "chosen only where `has_avx2` found AVX2, FMA and F16C");
            }
        )*};
    }
    register_kernels!(q4_0 => Q4_0, q4_1 => Q4_1, q5_0 => Q5_0, q8_0 => Q8_0, q4_k => Q4K, q6_k => Q6K);
}

/// The little-endian f16 at byte `i` of `b`, as f32.
#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

#[inline(always)]
fn dequant_f32(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

#[inline(always)]
fn dequant_f16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

#[inline(always)]
fn dequant_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

/// block_q4_0 { f16 d; u8 qs[16] }, 32 elements.
#[inline(always)]
fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qs = &b[2..18];
        for j in 0..16 {
            let x0 = (qs[j] & 0x0F) as i32 - 8;
            let x1 = (qs[j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

/// block_q4_1 { f16 d; f16 m; u8 qs[16] }, 32 elements.
#[inline(always)]
fn dequant_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qs = &b[4..20];
        for j in 0..16 {
            let x0 = qs[j] & 0x0F;
            let x1 = qs[j] >> 4;
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    }
}

/// block_q5_0 { f16 d; u8 qh[4]; u8 qs[16] }, 32 elements.
#[inline(always)]
fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        for j in 0..16 {
            let xh_0 = ((qh >> j) << 4) & 0x10;
            let xh_1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((qs[j] & 0x0F) as u32 | xh_0) as i32 - 16;
            let x1 = ((qs[j] >> 4) as u32 | xh_1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

/// block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16] }, 32 elements.
#[inline(always)]
fn dequant_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..24];
        for j in 0..16 {
            let xh_0 = ((qh >> j) << 4) & 0x10;
            let xh_1 = (qh >> (j + 12)) & 0x10;
            let x0 = (qs[j] & 0x0F) as u32 | xh_0;
            let x1 = (qs[j] >> 4) as u32 | xh_1;
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    }
}

/// block_q8_0 { f16 d; i8 qs[32] }, 32 elements.
#[inline(always)]
fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
            *yj = q as i8 as f32 * d;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed
/// bytes of a Q4_K / Q5_K super-block (ggml's `get_scale_min_k4`).
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }, 256 elements.
#[inline(always)]
fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(b, 0);
        let min = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for (n, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc, m) = get_scale_min_k4(2 * n, scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            let (sc, m) = get_scale_min_k4(2 * n + 1, scales);
            let d2 = d * sc as f32;
            let m2 = min * m as f32;
            let (lo, hi) = y.split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                hi[l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] },
/// 256 elements.
#[inline(always)]
fn dequant_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(b, 0);
        let min = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for (n, (ql, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let u1 = 1u8 << (2 * n);
            let u2 = 2u8 << (2 * n);
            let (sc, m) = get_scale_min_k4(2 * n, scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            let (sc, m) = get_scale_min_k4(2 * n + 1, scales);
            let d2 = d * sc as f32;
            let m2 = min * m as f32;
            let (lo, hi) = y.split_at_mut(32);
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                lo[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
                hi[l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }, 256 elements.
#[inline(always)]
fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..128 + 32 * half + 32];
            let sc = &b[192 + 8 * half..192 + 8 * half + 8];
            let y = &mut y[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts exact equality, reporting the first differing index.
    fn assert_exact(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(g.to_bits() == w.to_bits(), "element {i}: got {g}, expected {w}");
        }
    }

    #[test]
    fn f32_values() {
        let mut bytes = Vec::new();
        for v in [1.5f32, -2.0, 0.0, 1e-3] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let got = dequantize(GgmlType::F32, &bytes, 4).unwrap();
        assert_exact(&got, &[1.5, -2.0, 0.0, 1e-3]);
    }

    #[test]
    fn f16_values() {
        // 0x3C00 = 1.0, 0xC000 = -2.0, 0x3800 = 0.5, 0x7BFF = 65504 (largest
        // finite), 0x0001 = 2^-24 (smallest subnormal).
        let bytes = [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38, 0xFF, 0x7B, 0x01, 0x00];
        let got = dequantize(GgmlType::F16, &bytes, 5).unwrap();
        assert_exact(&got, &[1.0, -2.0, 0.5, 65504.0, 2f32.powi(-24)]);
    }

    #[test]
    fn bf16_values() {
        // bf16 is the high half of an f32: 0x3F80 = 1.0, 0xC040 = -3.0,
        // 0x4049 = 0x40490000 = 3.140625, 0x0000 = 0.
        let bytes = [0x80, 0x3F, 0x40, 0xC0, 0x49, 0x40, 0x00, 0x00];
        let got = dequantize(GgmlType::BF16, &bytes, 4).unwrap();
        assert_exact(&got, &[1.0, -3.0, 3.140625, 0.0]);
    }

    /// qs[j] = j | (15 - j) << 4: low nibble j, high nibble 15 - j.
    fn ramp_nibbles() -> Vec<u8> {
        (0..16u8).map(|j| j | ((15 - j) << 4)).collect()
    }

    #[test]
    fn q4_0_block() {
        // d = 0.5; y[j] = (j - 8) * 0.5, y[j + 16] = (15 - j - 8) * 0.5.
        let mut b = vec![0x00, 0x38];
        b.extend(ramp_nibbles());
        let got = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        let want = [
            -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, //
            3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0,
        ];
        assert_exact(&got, &want);
    }

    #[test]
    fn q4_1_block() {
        // d = 0.25 (0x3400), m = -1.0 (0xBC00); y = q * 0.25 - 1.
        let mut b = vec![0x00, 0x34, 0x00, 0xBC];
        b.extend(ramp_nibbles());
        let got = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        let want = [
            -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, //
            2.75, 2.5, 2.25, 2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25, 0.0, -0.25, -0.5, -0.75, -1.0,
        ];
        assert_exact(&got, &want);
    }

    /// qh = 0x80018003 (bits 0, 1, 15, 16, 31) and qs all zero except
    /// qs[0] = 0xF1 (lo 1, hi 15) and qs[15] = 0x2E (lo 14, hi 2).
    /// Bit j of qh is the fifth bit of y[j], bit j + 16 that of y[j + 16].
    fn q5_payload() -> (Vec<u8>, Vec<u8>) {
        let qh = 0x8001_8003u32.to_le_bytes().to_vec();
        let mut qs = vec![0u8; 16];
        qs[0] = 0xF1;
        qs[15] = 0x2E;
        (qh, qs)
    }

    #[test]
    fn q5_0_block() {
        // d = 0.5. q: y0 = (1|16)-16 = 1, y1 = (0|16)-16 = 0, y2..y14 = -16,
        // y15 = (14|16)-16 = 14, y16 = (15|16)-16 = 15, y17..y30 = -16,
        // y31 = (2|16)-16 = 2; times 0.5.
        let (qh, qs) = q5_payload();
        let mut b = vec![0x00, 0x38];
        b.extend(qh);
        b.extend(qs);
        let got = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        let mut want = vec![0.5, 0.0];
        want.extend([-8.0; 13]);
        want.extend([7.0, 7.5]);
        want.extend([-8.0; 14]);
        want.push(1.0);
        assert_exact(&got, &want);
    }

    #[test]
    fn q5_1_block() {
        // d = 0.5, m = 1.0. q: 17, 16, 0 x13, 30, 31, 0 x14, 18; y = q/2 + 1.
        let (qh, qs) = q5_payload();
        let mut b = vec![0x00, 0x38, 0x00, 0x3C];
        b.extend(qh);
        b.extend(qs);
        let got = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        let mut want = vec![9.5, 9.0];
        want.extend([1.0; 13]);
        want.extend([16.0, 16.5]);
        want.extend([1.0; 14]);
        want.push(10.0);
        assert_exact(&got, &want);
    }

    #[test]
    fn q8_0_block() {
        // d = 0.25; y = q * 0.25.
        let mut b = vec![0x00, 0x34];
        let mut qs = [0i8; 32];
        qs[..6].copy_from_slice(&[-128, -1, 0, 1, 127, 5]);
        qs[31] = -7;
        b.extend(qs.iter().map(|&q| q as u8));
        let got = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        let mut want = vec![0.0f32; 32];
        want[..6].copy_from_slice(&[-32.0, -0.25, 0.0, 0.25, 31.75, 1.25]);
        want[31] = -1.75;
        assert_exact(&got, &want);
    }

    /// Packed 6-bit scales sc = [1, 2, 3, 63, 17, 33, 48, 5] and mins
    /// m = [0, 1, 2, 3, 20, 40, 63, 4]: bytes 0..4 hold sc[0..4] in their
    /// low 6 bits and sc[4..8] >> 4 in their top 2; bytes 4..8 the same for
    /// the mins; bytes 8..12 hold sc[4..8] & 15 (low nibble) and
    /// m[4..8] & 15 (high nibble).
    const K_SCALES: [u8; 12] = [0x41, 0x82, 0xC3, 0x3F, 0x40, 0x81, 0xC2, 0x03, 0x41, 0x81, 0xF0, 0x45];

    #[test]
    fn scale_min_unpacking() {
        let got: Vec<(u8, u8)> = (0..8).map(|j| get_scale_min_k4(j, &K_SCALES)).collect();
        assert_eq!(got, [(1, 0), (2, 1), (3, 2), (63, 3), (17, 20), (33, 40), (48, 63), (5, 4)]);
    }

    /// qs for the 4 chunks of 32 bytes: 0x21, 0x43, 0xF0, 0x7F, except
    /// qs[0] = 0xF5. Chunk c gives sub-block 2c (low nibbles) and 2c + 1
    /// (high nibbles).
    fn k_qs() -> Vec<u8> {
        let mut qs = Vec::new();
        for v in [0x21u8, 0x43, 0xF0, 0x7F] {
            qs.extend([v; 32]);
        }
        qs[0] = 0xF5;
        qs
    }

    /// 256 values, sub-block s (32 values) all equal to `per_sub_block[s]`.
    fn by_sub_block(per_sub_block: [f32; 8]) -> Vec<f32> {
        per_sub_block.iter().flat_map(|&v| [v; 32]).collect()
    }

    #[test]
    fn q4_k_block() {
        // d = 1.0, dmin = 0.5; y = sc * q - 0.5 * m per sub-block:
        // s0: 1*1 - 0 = 1; s1: 2*2 - 0.5 = 3.5; s2: 3*3 - 1 = 8;
        // s3: 63*4 - 1.5 = 250.5; s4: 17*0 - 10 = -10; s5: 33*15 - 20 = 475;
        // s6: 48*15 - 31.5 = 688.5; s7: 5*7 - 2 = 33.
        let mut b = vec![0x00, 0x3C, 0x00, 0x38];
        b.extend(K_SCALES);
        b.extend(k_qs());
        assert_eq!(b.len(), 144);
        let got = dequantize(GgmlType::Q4K, &b, 256).unwrap();
        let mut want = by_sub_block([1.0, 3.5, 8.0, 250.5, -10.0, 475.0, 688.5, 33.0]);
        // qs[0] = 0xF5: y[0] = 1*5 - 0 = 5, y[32] = 2*15 - 0.5 = 29.5.
        want[0] = 5.0;
        want[32] = 29.5;
        assert_exact(&got, &want);
    }

    #[test]
    fn q5_k_block() {
        // As Q4_K, plus a fifth bit: bit s of qh[l] adds 16 to element l of
        // sub-block s. qh = 0xA5 (bits 0, 2, 5, 7) except qh[0] = 0xFF.
        // s0: 17 - 0 = 17; s1: 3.5; s2: 3*19 - 1 = 56; s3: 250.5;
        // s4: -10; s5: 33*31 - 20 = 1003; s6: 688.5; s7: 5*23 - 2 = 113.
        let mut b = vec![0x00, 0x3C, 0x00, 0x38];
        b.extend(K_SCALES);
        let mut qh = [0xA5u8; 32];
        qh[0] = 0xFF;
        b.extend(qh);
        b.extend(k_qs());
        assert_eq!(b.len(), 176);
        let got = dequantize(GgmlType::Q5K, &b, 256).unwrap();
        let mut want = by_sub_block([17.0, 3.5, 56.0, 250.5, -10.0, 1003.0, 688.5, 113.0]);
        // Element 0 of each sub-block has all fifth bits set:
        want[0] = 21.0; // 1 * (5 + 16) - 0
        want[32] = 61.5; // 2 * (15 + 16) - 0.5
        want[96] = 1258.5; // 63 * (4 + 16) - 1.5
        want[128] = 262.0; // 17 * (0 + 16) - 10
        want[192] = 1456.5; // 48 * (15 + 16) - 31.5
        assert_exact(&got, &want);
    }

    #[test]
    fn q6_k_block() {
        // d = 0.5, scales = [1, -1, 2, -2, ..., 8, -8]. With ql = qh = 0,
        // every q is -32 and element i is 0.5 * scales[i / 16] * -32.
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        ql[0] = 0x5A;
        ql[32] = 0x3C;
        qh[0] = 0xE4; // 2-bit fields (low to high): 0, 1, 2, 3
        ql[64] = 0xFF;
        qh[32] = 0xFF;
        let scales: [i8; 16] = [1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8];
        let mut b = Vec::new();
        b.extend(ql);
        b.extend(qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend([0x00, 0x38]);
        assert_eq!(b.len(), 210);
        let got = dequantize(GgmlType::Q6K, &b, 256).unwrap();
        let groups = [-16.0, 16.0, -32.0, 32.0, -48.0, 48.0, -64.0, 64.0, -80.0, 80.0, -96.0, 96.0, -112.0, 112.0, -128.0, 128.0];
        let mut want: Vec<f32> = groups.iter().flat_map(|&v| [v; 16]).collect();
        // First half, l = 0: ql[0] = 0x5A, ql[32] = 0x3C, qh[0] = 0xE4.
        want[0] = -11.0; // (10 | 0 << 4) - 32 = -22, scale 1
        want[32] = -4.0; // (12 | 1 << 4) - 32 = -4, scale 2
        want[64] = 7.5; // (5 | 2 << 4) - 32 = 5, scale 3
        want[96] = 38.0; // (3 | 3 << 4) - 32 = 19, scale 4
                         // Second half, l = 0: ql[64] = 0xFF, ql[96] = 0, qh[32] = 0xFF.
        want[128] = 77.5; // 63 - 32 = 31, scale 5
        want[160] = 48.0; // (0 | 3 << 4) - 32 = 16, scale 6
        want[192] = 108.5; // 31, scale 7
        want[224] = 64.0; // 16, scale 8
        assert_exact(&got, &want);
    }

    #[test]
    fn multiple_blocks_are_independent() {
        // Two Q8_0 blocks: d = 1.0 with q = 3, then d = -2.0 with q = 3.
        let mut b = vec![0x00, 0x3C];
        b.extend([3u8; 32]);
        b.extend([0x00, 0xC0]);
        b.extend([3u8; 32]);
        let got = dequantize(GgmlType::Q8_0, &b, 64).unwrap();
        let mut want = vec![3.0f32; 32];
        want.extend([-6.0f32; 32]);
        assert_exact(&got, &want);
    }

    #[test]
    fn parallel_matches_serial() {
        // Pseudo-random bytes (xorshift); f16 scales that decode to NaN or
        // infinity are fine since results are compared bit for bit.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand_bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect()
        };
        for &ty in SUPPORTED_TYPES {
            let block = ty.block_size().unwrap();
            let size = ty.type_size().unwrap();
            let n_blocks = (3 * PARALLEL_MIN_ELEMENTS) / block + 7;
            let bytes = rand_bytes(n_blocks * size);
            let n = n_blocks * block;
            let parallel = dequantize(ty, &bytes, n).unwrap();
            let mut serial = vec![0f32; n];
            kernel(ty)(&bytes, &mut serial);
            assert!(parallel.iter().zip(&serial).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty}: parallel result differs from serial");
        }
    }

    #[test]
    fn vector_kernels_match_the_portable_ones_bit_for_bit() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for &ty in SUPPORTED_TYPES {
            let (block, size) = (ty.block_size().unwrap(), ty.type_size().unwrap());
            let n_blocks = 97;
            let bytes: Vec<u8> = (0..n_blocks * size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            let (mut fast, mut portable) = (vec![0f32; n_blocks * block], vec![1f32; n_blocks * block]);
            kernel(ty)(&bytes, &mut fast);
            portable_kernel(ty)(&bytes, &mut portable);
            for (i, (a, b)) in fast.iter().zip(&portable).enumerate() {
                assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{ty} value {i}: {a} against the portable {b}");
            }
        }
    }

    #[test]
    fn input_errors() {
        assert!(matches!(dequantize(GgmlType::Q2K, &[0; 84], 256), Err(DequantError::Unsupported { .. })));
        assert!(matches!(dequantize(GgmlType::Other(99), &[], 0), Err(DequantError::Unsupported { .. })));
        assert!(matches!(dequantize(GgmlType::Q8_0, &[0; 34], 16), Err(DequantError::NotBlockMultiple { block_size: 32, .. })));
        assert!(matches!(dequantize(GgmlType::Q8_0, &[0; 33], 32), Err(DequantError::SizeMismatch { expected: 34, found: 33, .. })));
        assert!(matches!(dequantize(GgmlType::F32, &[0; 4], usize::MAX), Err(DequantError::Overflow { .. })));
        let msg = dequantize(GgmlType::Q3K, &[0; 110], 256).unwrap_err().to_string();
        assert!(msg.contains("Q3_K") && msg.contains("Q4_K") && msg.contains("Q8_0"), "{msg}");
    }
}
