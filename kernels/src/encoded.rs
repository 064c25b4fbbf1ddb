//! Few-row products with weights kept in their stored encoding (f32, f16,
//! bf16 or ggml's quantized blocks), as a model decodes from its file.
//!
//! [`small_matmul_stored`] gives exactly [`crate::small_matmul`]'s products
//! of the decoded f32 weight, bit for bit. Where the CPU has AVX2, FMA and
//! F16C, the usual encodings ([`Encoding`]) are decoded eight values at a
//! time into registers and multiplied there, in the order
//! [`crate::small_matmul`] uses: the weight streams from memory once, in its
//! stored size, and is never written out as f32. More rows, other encodings
//! and other CPUs decode a few weight rows at a time into a small buffer
//! that stays in cache, once for all the rows.
//!
//! Each decoder produces the values of ggml's reference dequantization
//! (`dequantize_row_*` of ggml-quants.c) bit for bit: an exact integer,
//! converted to f32, then the reference's multiplications and additions.
//! Where the reference multiplies and then adds, the decoders fuse the two
//! only when the product is exact (a 4-bit integer times a scale of at most
//! 17 significant bits), so the one rounding is the reference's.
//! [`decode`] writes the decoded values out, for whole-tensor dequantization.

use crate::rng::Rng;
use crate::rows::{small_matmul_block, small_matmul_tasks};

/// The stored encodings the register decoders read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Little-endian f32.
    F32,
    /// Little-endian IEEE half precision.
    F16,
    /// Little-endian bfloat16.
    BF16,
    /// ggml block_q4_0: f16 scale, 32 4-bit values.
    Q4_0,
    /// ggml block_q4_1: f16 scale and minimum, 32 4-bit values.
    Q4_1,
    /// ggml block_q5_0: f16 scale, 32 5-bit values.
    Q5_0,
    /// ggml block_q8_0: f16 scale, 32 8-bit values.
    Q8_0,
    /// ggml block_q4_K: super-block of 256 4-bit values in 8 scaled groups.
    Q4K,
    /// ggml block_q6_K: super-block of 256 6-bit values in 16 scaled groups.
    Q6K,
    /// Only the kept values of a pruned row, packed left to right (the
    /// sparse format of `formats::sparse`); the row's keep bits say where
    /// they go. A packed row's bytes run from its first kept value to the
    /// end of its matrix's values, so that eight values can always be read.
    Packed(PackedValues),
}

/// The value type of packed sparse rows ([`Encoding::Packed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackedValues {
    /// Little-endian f32.
    F32,
    /// Little-endian IEEE half precision.
    F16,
    /// Little-endian bfloat16.
    BF16,
}

impl PackedValues {
    /// Bytes of one value.
    pub fn size(self) -> usize {
        match self {
            PackedValues::F32 => 4,
            PackedValues::F16 | PackedValues::BF16 => 2,
        }
    }
}

impl Encoding {
    /// Every encoding of blocks ([`Encoding::Packed`] aside).
    pub const BLOCKS: [Encoding; 9] = [
        Encoding::F32,
        Encoding::F16,
        Encoding::BF16,
        Encoding::Q4_0,
        Encoding::Q4_1,
        Encoding::Q5_0,
        Encoding::Q8_0,
        Encoding::Q4K,
        Encoding::Q6K,
    ];

    /// Values and bytes of one block of this encoding (for packed rows: the
    /// eight values of one keep byte, and the most bytes they take).
    pub fn block(self) -> (usize, usize) {
        match self {
            Encoding::Packed(values) => (8, 8 * values.size()),
            Encoding::F32 => (8, 32),
            Encoding::F16 | Encoding::BF16 => (8, 16),
            Encoding::Q4_0 => (32, 18),
            Encoding::Q4_1 => (32, 20),
            Encoding::Q5_0 => (32, 22),
            Encoding::Q8_0 => (32, 34),
            Encoding::Q4K => (256, 144),
            Encoding::Q6K => (256, 210),
        }
    }
}

/// A weight row in its stored form: its bytes, and its keep bits where masked.
pub type StoredRow<'a> = (&'a [u8], Option<&'a [u8]>);

/// A weight matrix ([cols, inner], one row per output) in its stored form,
/// as [`small_matmul_stored`] reads it.
pub trait StoredWeight: Sync {
    /// The encoding shared by rows `first..first + count`, if they all have
    /// one of the [`Encoding`]s (None sends those rows through [`StoredWeight::decode`]).
    fn encoding(&self, first: usize, count: usize) -> Option<Encoding>;
    /// Appends to `out`, for each of rows `first..first + count`, its stored
    /// bytes (a whole number of blocks of its encoding) and its keep bits
    /// where the weight is masked: one bit per value, least significant
    /// first, 0 for a pruned value (read as 0).
    fn rows<'a>(&'a self, first: usize, count: usize, out: &mut Vec<StoredRow<'a>>);
    /// Writes rows `first..first + out.len() / inner` into `out` as f32, masked.
    fn decode(&self, first: usize, out: &mut [f32]);
}

/// Most rows whose products [`small_matmul_stored`] takes with weights in
/// `encoding` decoded in registers. A tile of up to four rows decodes each
/// weight value once (AVX-512's 32 registers hold the accumulators, a
/// register per bank, of four rows and two weight rows; AVX2's sixteen, of
/// four rows and one weight row); where decoding is a widening and at most
/// a multiply, decoding again for a second tile costs less than writing the
/// values to the buffer and reading them back, and the weight rows are
/// still in the level-1 cache. On the 2-core Xeon, at 5-8 rows, a second
/// tile took f16, bf16 and Q8_0 weights 1.35-1.6x faster than the buffer,
/// f32 ones 1.1-1.4x and packed sparse rows (a 7B-shaped layer at 50%)
/// 1.35x; Q4_0 and Q4_1 0.9-1.2x, and Q5_0, Q4_K and Q6_K 0.75-0.9x, so
/// those stay at one tile.
fn register_rows(encoding: Encoding) -> usize {
    match encoding {
        Encoding::F32 | Encoding::F16 | Encoding::BF16 | Encoding::Q8_0 | Encoding::Packed(_) => 8,
        Encoding::Q4_0 | Encoding::Q4_1 | Encoding::Q5_0 | Encoding::Q4K | Encoding::Q6K => 4,
    }
}

/// Bytes of f32 weight rows that the fallback of [`small_matmul_stored`]
/// decodes at a time: small enough to stay in the level-1 cache between
/// being written and being read.
const DECODED_BYTES: usize = 16 << 10;

/// `x w^T` for a few rows `x` ([rows, inner]) and a weight `w` kept in its
/// stored form, [cols, inner]: bit for bit [`crate::small_matmul`] of the
/// decoded (and masked) f32 weight, without ever holding it in f32.
pub fn small_matmul_stored(x: &[f32], rows: usize, cols: usize, weight: &dyn StoredWeight) -> Vec<f32> {
    let inner = x.len() / rows;
    // Decoding in registers decodes the weight again for every tile of
    // rows, so more rows decode into the buffer once instead.
    let registers = avx2::available() && inner.is_multiple_of(8);
    // Whole tiles of four weight rows (see small_matmul_block).
    let step = (DECODED_BYTES / (4 * inner.max(1)) / 4).max(1) * 4;
    small_matmul_tasks(rows, cols, |first, out| {
        let count = out.len() / rows;
        if let Some(encoding) =
            weight.encoding(first, count).filter(|&e| registers && rows <= register_rows(e) && inner.is_multiple_of(e.block().0))
        {
            avx2::small_matmul_task(encoding, x, rows, weight, first, out);
            return;
        }
        crate::scratch::with_decoded_rows(step.min(count) * inner, |decoded| {
            for at in (0..count).step_by(step) {
                let n = step.min(count - at);
                let w = &mut decoded[..n * inner];
                weight.decode(first + at, w);
                small_matmul_block(x, rows, w, out, count, at);
            }
        })
    })
}

/// Writes packed sparse rows (each its values from its first kept one, and
/// its keep bits; see [`Encoding::Packed`]) into `out` as dense f32 rows,
/// zeros at the pruned weights, with the register expansion; false (and
/// `out` untouched) where the CPU lacks AVX2, FMA, F16C or POPCNT or the
/// rows are not whole keep bytes.
pub fn expand_packed(values: PackedValues, rows: &[StoredRow<'_>], out: &mut [f32]) -> bool {
    if !avx2::available() || rows.is_empty() || !(out.len() / rows.len()).is_multiple_of(8) {
        return false;
    }
    avx2::expand_rows(values, rows, out);
    true
}

/// `rows` rows of `inner` values (whole blocks) in the block encoding
/// `encoding`, drawn from `rng`, for tests and benchmarks: uniform bytes
/// whose f16 scale fields (and Q4_1's minimum, Q4_K's scale of minimums)
/// are finite, of magnitude 2^-5 to 2^-1; the float types' values in (-1, 1).
pub fn random_blocks(encoding: Encoding, rows: usize, inner: usize, rng: &mut Rng) -> Vec<u8> {
    let (values, size) = encoding.block();
    assert!(!matches!(encoding, Encoding::Packed(_)) && inner.is_multiple_of(values), "{inner} values are not whole {encoding:?} blocks");
    let mut bytes: Vec<u8> = (0..rows * inner / values * size).map(|_| ((rng.next_f32() + 1.0) * 128.0) as u8).collect();
    // Sign, an exponent of 10 to 14, and any mantissa.
    let small_f16 = |rng: &mut Rng| -> [u8; 2] {
        let sign = u16::from(rng.next_f32() < 0.0) << 15;
        let exponent = (10 + ((rng.next_f32() + 1.0) * 2.5) as u16).min(14) << 10;
        (sign | exponent | (((rng.next_f32() + 1.0) * 512.0) as u16 & 0x3FF)).to_le_bytes()
    };
    let scales: &[usize] = match encoding {
        Encoding::Q4_1 | Encoding::Q4K => &[0, 2],
        Encoding::Q4_0 | Encoding::Q5_0 | Encoding::Q8_0 => &[0],
        Encoding::Q6K => &[208],
        _ => &[],
    };
    for block in bytes.chunks_exact_mut(size) {
        match encoding {
            Encoding::F32 => block.chunks_exact_mut(4).for_each(|v| v.copy_from_slice(&rng.next_f32().to_le_bytes())),
            Encoding::F16 => block.chunks_exact_mut(2).for_each(|v| v.copy_from_slice(&small_f16(rng))),
            // A bf16 is the high half of an f32.
            Encoding::BF16 => block.chunks_exact_mut(2).for_each(|v| v.copy_from_slice(&rng.next_f32().to_le_bytes()[2..])),
            _ => {
                for &at in scales {
                    block[at..at + 2].copy_from_slice(&small_f16(rng));
                }
            }
        }
    }
    bytes
}

/// A weight of whole blocks in one encoding, row after row, each row with
/// its own keep bits or none: the stored weight of tests and benchmarks.
pub struct BlockRows {
    /// The rows' blocks, row after row.
    pub bytes: Vec<u8>,
    /// Values per row.
    pub inner: usize,
    /// The blocks' encoding.
    pub encoding: Encoding,
    /// Each row's keep bits (`inner / 8` bytes), or none where the row is not masked.
    pub keep: Vec<Option<Vec<u8>>>,
}

impl BlockRows {
    fn row_bytes(&self) -> usize {
        let (values, bytes) = self.encoding.block();
        self.inner / values * bytes
    }
}

impl StoredWeight for BlockRows {
    fn encoding(&self, _: usize, _: usize) -> Option<Encoding> {
        Some(self.encoding)
    }

    fn rows<'a>(&'a self, first: usize, count: usize, out: &mut Vec<StoredRow<'a>>) {
        let size = self.row_bytes();
        for row in first..first + count {
            out.push((&self.bytes[row * size..(row + 1) * size], self.keep[row].as_deref()));
        }
    }

    fn decode(&self, first: usize, out: &mut [f32]) {
        let size = self.row_bytes();
        for (i, row) in out.chunks_exact_mut(self.inner).enumerate() {
            let r = first + i;
            assert!(
                decode(self.encoding, &self.bytes[r * size..(r + 1) * size], row),
                "this CPU lacks the register decoders (AVX2, FMA, F16C)"
            );
            if let Some(keep) = &self.keep[r] {
                crate::apply_keep_bits(row, self.inner, keep);
            }
        }
    }
}

/// Decodes whole blocks of `src` in `encoding` into `dst` with the register
/// decoders; false (and `dst` untouched) where the CPU lacks AVX2, FMA or
/// F16C, or for packed rows (which need their keep bits).
pub fn decode(encoding: Encoding, src: &[u8], dst: &mut [f32]) -> bool {
    if !avx2::available() || matches!(encoding, Encoding::Packed(_)) {
        return false;
    }
    avx2::decode(encoding, src, dst);
    true
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    use super::{Encoding, StoredWeight};

    pub(super) fn available() -> bool {
        false
    }

    pub(super) fn small_matmul_task(_: Encoding, _: &[f32], _: usize, _: &dyn StoredWeight, _: usize, _: &mut [f32]) {
        unreachable!("only where available() is true")
    }

    pub(super) fn decode(_: Encoding, _: &[u8], _: &mut [f32]) {
        unreachable!("only where available() is true")
    }

    pub(super) fn expand_rows(_: super::PackedValues, _: &[super::StoredRow<'_>], _: &mut [f32]) {
        unreachable!("only where available() is true")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{Encoding, PackedValues, StoredRow, StoredWeight};
    use crate::BANKS;

    /// Whether the CPU has AVX2, FMA, F16C and POPCNT (checked once).
    pub(super) fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("popcnt")
        })
    }

    /// How many weight rows ahead [`tile`] prefetches.
    const PREFETCH_ROWS: usize = 16;

    /// Up to four vectors of eight decoded values.
    type Group = [__m256; 4];

    /// One encoding's block layout and its decoder.
    trait Format {
        /// Values of a block.
        const VALUES: usize;
        /// Bytes of a block.
        const BYTES: usize;
        /// Vectors of a group (groups of `8 * VECTORS` values make a block).
        const VECTORS: usize;
        /// Values `8 * VECTORS * g..` of `block` (`BYTES` long), in the
        /// first `VECTORS` vectors.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C.
        unsafe fn group(block: &[u8], g: usize) -> Group;
    }

    /// The little-endian f16 at byte `i` of `b`, as f32 (exact).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_at(b: &[u8], i: usize) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le_bytes([b[i], b[i + 1]])))))
    }

    /// Bytes `at..at + 8` of `b` widened to eight u32 (or, `signed`, i32) lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn widen8(b: &[u8], at: usize, signed: bool) -> __m256i {
        let bytes: &[u8; 8] = b[at..at + 8].try_into().expect("eight bytes");
        // SAFETY: `bytes` is 8 readable bytes, what the load reads.
        let bytes = unsafe { _mm_loadl_epi64(bytes.as_ptr() as *const __m128i) };
        if signed {
            _mm256_cvtepi8_epi32(bytes)
        } else {
            _mm256_cvtepu8_epi32(bytes)
        }
    }

    /// Bit `first + lane` of `qh` moved to bit 4 of each lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn fifth_bits(qh: __m256i, first: i32) -> __m256i {
        let bits = _mm256_srlv_epi32(qh, _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(first)));
        _mm256_slli_epi32::<4>(_mm256_and_si256(bits, _mm256_set1_epi32(1)))
    }

    /// Bits `shift..shift + 2` of each lane of `h` moved to bits 4..6.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn high_pair(h: __m256i, shift: i32) -> __m256i {
        _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srl_epi32(h, _mm_cvtsi32_si128(shift)), _mm256_set1_epi32(3)))
    }

    /// The low (`high` false) or high nibbles of eight bytes, as lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nibbles(q: __m256i, high: bool) -> __m256i {
        if high {
            _mm256_srli_epi32::<4>(q)
        } else {
            _mm256_and_si256(q, _mm256_set1_epi32(0x0F))
        }
    }

    /// The 6-bit scale and min of sub-block `j` of a Q4_K super-block
    /// (ggml's `get_scale_min_k4`).
    #[inline]
    fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
        }
    }

    struct F32;
    impl Format for F32 {
        const VALUES: usize = 8;
        const BYTES: usize = 32;
        const VECTORS: usize = 1;
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(block: &[u8], _: usize) -> Group {
            let bytes: &[u8; 32] = block[..32].try_into().expect("a block");
            // SAFETY: `bytes` is 32 readable bytes, eight f32.
            let v = unsafe { _mm256_loadu_ps(bytes.as_ptr() as *const f32) };
            [v; 4]
        }
    }

    struct F16;
    impl Format for F16 {
        const VALUES: usize = 8;
        const BYTES: usize = 16;
        const VECTORS: usize = 1;
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(block: &[u8], _: usize) -> Group {
            let bytes: &[u8; 16] = block[..16].try_into().expect("a block");
            // SAFETY: `bytes` is 16 readable bytes, eight f16.
            let v = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(bytes.as_ptr() as *const __m128i) });
            [v; 4]
        }
    }

    struct BF16;
    impl Format for BF16 {
        const VALUES: usize = 8;
        const BYTES: usize = 16;
        const VECTORS: usize = 1;
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(block: &[u8], _: usize) -> Group {
            let bytes: &[u8; 16] = block[..16].try_into().expect("a block");
            // SAFETY: `bytes` is 16 readable bytes, eight bf16.
            let halves = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr() as *const __m128i) });
            // A bf16 is the high half of the f32 with the same value.
            [_mm256_castsi256_ps(_mm256_slli_epi32::<16>(halves)); 4]
        }
    }

    struct Q4_0;
    impl Format for Q4_0 {
        const VALUES: usize = 32;
        const BYTES: usize = 18;
        const VECTORS: usize = 4;
        /// y = (q - 8) * d.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(b: &[u8], _: usize) -> Group {
            let d = _mm256_set1_ps(f16_at(b, 0));
            let eight = _mm256_set1_epi32(8);
            let (q0, q1) = (widen8(b, 2, false), widen8(b, 10, false));
            let value = |q: __m256i, high: bool| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(nibbles(q, high), eight)), d);
            [value(q0, false), value(q1, false), value(q0, true), value(q1, true)]
        }
    }

    struct Q4_1;
    impl Format for Q4_1 {
        const VALUES: usize = 32;
        const BYTES: usize = 20;
        const VECTORS: usize = 4;
        /// y = q * d + m (q * d is exact: fused).
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(b: &[u8], _: usize) -> Group {
            let (d, m) = (_mm256_set1_ps(f16_at(b, 0)), _mm256_set1_ps(f16_at(b, 2)));
            let (q0, q1) = (widen8(b, 4, false), widen8(b, 12, false));
            let value = |q: __m256i, high: bool| _mm256_fmadd_ps(_mm256_cvtepi32_ps(nibbles(q, high)), d, m);
            [value(q0, false), value(q1, false), value(q0, true), value(q1, true)]
        }
    }

    struct Q5_0;
    impl Format for Q5_0 {
        const VALUES: usize = 32;
        const BYTES: usize = 22;
        const VECTORS: usize = 4;
        /// y[i] = ((nibble | bit i of qh << 4) - 16) * d.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(b: &[u8], _: usize) -> Group {
            let d = _mm256_set1_ps(f16_at(b, 0));
            let qh = _mm256_set1_epi32(i32::from_le_bytes([b[2], b[3], b[4], b[5]]));
            let sixteen = _mm256_set1_epi32(16);
            let (q0, q1) = (widen8(b, 6, false), widen8(b, 14, false));
            let value = |q: __m256i, high: bool, first: i32| {
                let q = _mm256_sub_epi32(_mm256_or_si256(nibbles(q, high), fifth_bits(qh, first)), sixteen);
                _mm256_mul_ps(_mm256_cvtepi32_ps(q), d)
            };
            [value(q0, false, 0), value(q1, false, 8), value(q0, true, 16), value(q1, true, 24)]
        }
    }

    struct Q8_0;
    impl Format for Q8_0 {
        const VALUES: usize = 32;
        const BYTES: usize = 34;
        const VECTORS: usize = 4;
        /// y = q * d.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(b: &[u8], _: usize) -> Group {
            let d = _mm256_set1_ps(f16_at(b, 0));
            let value = |at: usize| _mm256_mul_ps(_mm256_cvtepi32_ps(widen8(b, at, true)), d);
            [value(2), value(10), value(18), value(26)]
        }
    }

    struct Q4K;
    impl Format for Q4K {
        const VALUES: usize = 256;
        const BYTES: usize = 144;
        const VECTORS: usize = 4;
        /// Sub-block g: y = (d * scale) * q - dmin * min (the product is exact: fused).
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(b: &[u8], g: usize) -> Group {
            let (sc, m) = scale_min_k4(g, &b[4..16]);
            let scale = _mm256_set1_ps(f16_at(b, 0) * f32::from(sc));
            let min = _mm256_set1_ps(f16_at(b, 2) * f32::from(m));
            let (at, high) = (16 + 32 * (g / 2), g % 2 == 1);
            let value = |k: usize| _mm256_fmsub_ps(scale, _mm256_cvtepi32_ps(nibbles(widen8(b, at + 8 * k, false), high)), min);
            [value(0), value(1), value(2), value(3)]
        }
    }

    struct Q6K;
    impl Format for Q6K {
        const VALUES: usize = 256;
        const BYTES: usize = 210;
        const VECTORS: usize = 4;
        /// Quarter `g % 4` of half `g / 4`: y = (d * scale) * (q - 32).
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn group(b: &[u8], g: usize) -> Group {
            let d = f16_at(b, 208);
            let (half, quarter) = (g / 4, g % 4);
            let (ql, qh, sc) = (64 * half + 32 * (quarter % 2), 128 + 32 * half, 192 + 8 * half);
            let bias = _mm256_set1_epi32(32);
            let value = |k: usize| {
                let low = nibbles(widen8(b, ql + 8 * k, false), quarter >= 2);
                let q = _mm256_sub_epi32(_mm256_or_si256(low, high_pair(widen8(b, qh + 8 * k, false), 2 * quarter as i32)), bias);
                let scale = d * f32::from(b[sc + k / 2 + 2 * quarter] as i8);
                _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(q))
            };
            [value(0), value(1), value(2), value(3)]
        }
    }

    /// Calls `$body::<F>` with the format type of `$encoding`.
    macro_rules! with_format {
        ($encoding:expr, $body:ident ( $($arg:expr),* )) => {
            match $encoding {
                Encoding::F32 => $body::<F32>($($arg),*),
                Encoding::F16 => $body::<F16>($($arg),*),
                Encoding::BF16 => $body::<BF16>($($arg),*),
                Encoding::Q4_0 => $body::<Q4_0>($($arg),*),
                Encoding::Q4_1 => $body::<Q4_1>($($arg),*),
                Encoding::Q5_0 => $body::<Q5_0>($($arg),*),
                Encoding::Q8_0 => $body::<Q8_0>($($arg),*),
                Encoding::Q4K => $body::<Q4K>($($arg),*),
                Encoding::Q6K => $body::<Q6K>($($arg),*),
                Encoding::Packed(_) => unreachable!("packed rows are not blocks"),
            }
        };
    }

    /// Decodes whole blocks of `src` into `dst`.
    pub(super) fn decode(encoding: Encoding, src: &[u8], dst: &mut [f32]) {
        // SAFETY: called only where `available` found AVX2, FMA and F16C.
        unsafe { with_format!(encoding, decode_blocks(src, dst)) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn decode_blocks<F: Format>(src: &[u8], dst: &mut [f32]) {
        for (block, out) in src.chunks_exact(F::BYTES).zip(dst.chunks_exact_mut(F::VALUES)) {
            for (g, out) in out.chunks_exact_mut(8 * F::VECTORS).enumerate() {
                // SAFETY: this function runs only with AVX2, FMA and F16C.
                let group = unsafe { F::group(block, g) };
                for (v, out) in group.iter().zip(out.chunks_exact_mut(8)) {
                    let out: &mut [f32; 8] = out.try_into().expect("eight values");
                    // SAFETY: `out` is eight writable f32.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), *v) };
                }
            }
        }
    }

    /// Products of rows `x` with weight rows `first..first + out.len() /
    /// rows` into `out` ([rows, out.len() / rows]), tiled as
    /// `small_matmul_block` tiles them (the tiling changes no bit).
    pub(super) fn small_matmul_task(encoding: Encoding, x: &[f32], rows: usize, weight: &dyn StoredWeight, first: usize, out: &mut [f32]) {
        // SAFETY: called only where `available` found AVX2, FMA, F16C and POPCNT.
        unsafe {
            match encoding {
                Encoding::Packed(PackedValues::F16) if avx512::chosen() => avx512::task::<false>(x, rows, weight, first, out),
                Encoding::Packed(PackedValues::BF16) if avx512::chosen() => avx512::task::<true>(x, rows, weight, first, out),
                Encoding::Packed(PackedValues::F32) => narrow_task::<Packed<PackedF32>>(x, rows, weight, first, out),
                Encoding::Packed(PackedValues::F16) => narrow_task::<Packed<PackedF16>>(x, rows, weight, first, out),
                Encoding::Packed(PackedValues::BF16) => narrow_task::<Packed<PackedBF16>>(x, rows, weight, first, out),
                _ => with_format!(encoding, blocks_task(x, rows, weight, first, out)),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,popcnt")]
    fn blocks_task<F: Format>(x: &[f32], rows: usize, weight: &dyn StoredWeight, first: usize, out: &mut [f32]) {
        if crate::rows::wide_registers() {
            // SAFETY: the CPU has AVX-512 F and VL (`wide_registers`).
            unsafe { avx512::wide_task::<Blocks<F>>(x, rows, weight, first, out) }
        } else {
            narrow_task::<Blocks<F>>(x, rows, weight, first, out)
        }
    }

    /// [`task`] compiled with AVX2's sixteen registers.
    #[target_feature(enable = "avx2,fma,f16c,popcnt")]
    fn narrow_task<T: RowTile>(x: &[f32], rows: usize, weight: &dyn StoredWeight, first: usize, out: &mut [f32]) {
        // SAFETY: this function runs only with AVX2, FMA, F16C and POPCNT.
        unsafe { task::<T, false>(x, rows, weight, first, out) }
    }

    /// Dot products of a tile of `R` rows with `C` stored weight rows, for
    /// one way of storing the rows.
    trait RowTile {
        /// Panics unless `row` (weight row `index`) is stored as `tile` reads a row of `inner` values.
        fn check(row: StoredRow<'_>, inner: usize, index: usize);
        /// The tile's dot products.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA, F16C and POPCNT.
        unsafe fn tile<const R: usize, const C: usize>(x: [&[f32]; R], w: [StoredRow<'_>; C]) -> [[f32; C]; R];
    }

    /// Rows stored as whole blocks of format `F`.
    struct Blocks<F>(std::marker::PhantomData<F>);

    impl<F: Format> RowTile for Blocks<F> {
        fn check((bytes, keep): StoredRow<'_>, inner: usize, index: usize) {
            assert_eq!(bytes.len(), inner / F::VALUES * F::BYTES, "weight row {index} is not {inner} values in its encoding");
            assert!(keep.is_none_or(|keep| keep.len() * 8 >= inner), "the keep bits of weight row {index} are too short");
        }

        #[inline(always)]
        unsafe fn tile<const R: usize, const C: usize>(x: [&[f32]; R], w: [StoredRow<'_>; C]) -> [[f32; C]; R] {
            // Rows with and without keep bits take separate loops, so that the
            // unmasked ones test nothing per value ([`Products::tiles`] never
            // mixes them in one tile).
            let masked = w.iter().any(|(_, keep)| keep.is_some());
            // SAFETY: the caller's CPU has AVX2, FMA and F16C.
            unsafe {
                if masked {
                    tile_banks::<F, true, R, C>(x, w)
                } else {
                    tile_banks::<F, false, R, C>(x, w)
                }
            }
        }
    }

    /// Packed sparse rows of value type `V`.
    struct Packed<V>(std::marker::PhantomData<V>);

    impl<V: PackedFormat> RowTile for Packed<V> {
        fn check((_, keep): StoredRow<'_>, inner: usize, index: usize) {
            assert!(keep.is_some_and(|keep| keep.len() * 8 >= inner), "packed weight row {index} has no keep bits for its {inner} values");
        }

        #[inline(always)]
        unsafe fn tile<const R: usize, const C: usize>(x: [&[f32]; R], w: [StoredRow<'_>; C]) -> [[f32; C]; R] {
            // SAFETY: the caller's CPU has what `packed_tile` needs.
            unsafe { packed_tile::<V, R, C>(x, w) }
        }
    }

    /// The products of rows `x` with weight rows `first..first + out.len() /
    /// rows`, in tiles whose accumulators, a register per bank of each
    /// product, fit AVX2's sixteen registers, or (`WIDE`) twice as many
    /// products in AVX-512's 32. Compiled into each caller with its features ([`narrow_task`],
    /// `avx512::wide_task`, `avx512::task`), tiles included.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and POPCNT, and AVX-512 F and VL where `WIDE`.
    #[inline(always)]
    unsafe fn task<T: RowTile, const WIDE: bool>(x: &[f32], rows: usize, weight: &dyn StoredWeight, first: usize, out: &mut [f32]) {
        let inner = x.len() / rows;
        let width = out.len() / rows;
        let mut stored = Vec::with_capacity(width);
        weight.rows(first, width, &mut stored);
        assert_eq!(stored.len(), width, "the weight gave {} rows of the {width} asked for", stored.len());
        for (c, row) in stored.iter().enumerate() {
            T::check(*row, inner, first + c);
        }
        let products = Products { x, inner, stored: &stored, width };
        // Blocks of four weight rows; within a block, the tallest tiles of
        // rows that fit, so that each weight value is decoded as few times
        // as the registers allow. The tiling changes no bit.
        for c0 in (0..width).step_by(4) {
            let columns = 4.min(width - c0);
            let mut r0 = 0;
            while r0 < rows {
                // SAFETY (every call): the CPU has AVX2, FMA, F16C and POPCNT (the caller's promise).
                r0 += unsafe {
                    match rows - r0 {
                        left if left >= 4 && WIDE => products.tiles::<T, 4, 2>(r0, c0, columns, out),
                        left if left >= 4 => products.tiles::<T, 4, 1>(r0, c0, columns, out),
                        3 if WIDE => products.tiles::<T, 3, 2>(r0, c0, columns, out),
                        3 => products.tiles::<T, 3, 1>(r0, c0, columns, out),
                        2 if WIDE => products.tiles::<T, 2, 4>(r0, c0, columns, out),
                        2 => products.tiles::<T, 2, 2>(r0, c0, columns, out),
                        _ => products.tiles::<T, 1, 4>(r0, c0, columns, out),
                    }
                };
            }
        }
    }

    /// What one [`task`] multiplies: its rows `x` (each `inner` long) and
    /// its `width` stored weight rows.
    struct Products<'a> {
        x: &'a [f32],
        inner: usize,
        stored: &'a [StoredRow<'a>],
        width: usize,
    }

    impl Products<'_> {
        /// Products of rows `r0..r0 + R` with weight rows `c0..c0 +
        /// columns` (at most 4) into `out`, in tiles of `R` rows and `C`
        /// (or, for the last ones and for weight rows masked and not side
        /// by side, 1) weight rows; returns `R`.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA, F16C and POPCNT.
        #[inline(always)]
        unsafe fn tiles<T: RowTile, const R: usize, const C: usize>(&self, r0: usize, c0: usize, columns: usize, out: &mut [f32]) -> usize {
            let x: [&[f32]; R] = std::array::from_fn(|r| &self.x[(r0 + r) * self.inner..(r0 + r + 1) * self.inner]);
            let mut c = c0;
            while c + C <= c0 + columns {
                let rows = &self.stored[c..c + C];
                // A weight of parts masked and not can mix rows with keep
                // bits and rows without: those take one row per tile.
                if rows.iter().any(|row| row.1.is_some() != rows[0].1.is_some()) {
                    break;
                }
                // SAFETY: the caller's CPU has what `T::tile` needs.
                let tile = unsafe { T::tile::<R, C>(x, std::array::from_fn(|k| rows[k])) };
                for (r, tile) in tile.iter().enumerate() {
                    out[(r0 + r) * self.width + c..(r0 + r) * self.width + c + C].copy_from_slice(tile);
                }
                c += C;
            }
            for c in c..c0 + columns {
                // SAFETY: as above.
                let tile = unsafe { T::tile::<R, 1>(x, [self.stored[c]]) };
                for (r, tile) in tile.iter().enumerate() {
                    out[(r0 + r) * self.width + c] = tile[0];
                }
            }
            R
        }
    }

    /// How the packed values of one keep byte widen to eight f32 lanes.
    trait PackedFormat {
        /// Bytes of one value.
        const SIZE: usize;
        /// The lanes of keep byte `keep`: the next `keep.count_ones()`
        /// values, from `at`, in the kept lanes (in order), zeros in the others.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C, and the 32 bytes from `at` must be readable.
        unsafe fn expand(at: *const u8, keep: u8) -> __m256;
    }

    /// For each keep byte, the byte shuffle that moves its packed 16-bit
    /// values into their lanes (0x80: a zero byte).
    static SHUFFLE16: [[u8; 16]; 256] = {
        let mut table = [[0x80u8; 16]; 256];
        let mut keep = 0;
        while keep < 256 {
            let (mut next, mut lane) = (0u8, 0);
            while lane < 8 {
                if keep >> lane & 1 == 1 {
                    table[keep][2 * lane] = 2 * next;
                    table[keep][2 * lane + 1] = 2 * next + 1;
                    next += 1;
                }
                lane += 1;
            }
            keep += 1;
        }
        table
    };

    /// For each keep byte, the source lane of every kept lane's packed f32 (0 for the others, masked off after).
    static PERMUTE32: [[i32; 8]; 256] = {
        let mut table = [[0i32; 8]; 256];
        let mut keep = 0;
        while keep < 256 {
            let (mut next, mut lane) = (0, 0);
            while lane < 8 {
                if keep >> lane & 1 == 1 {
                    table[keep][lane] = next;
                    next += 1;
                }
                lane += 1;
            }
            keep += 1;
        }
        table
    };

    /// Eight packed 16-bit values from `at`, moved into the lanes of `keep` (zeros elsewhere).
    ///
    /// # Safety
    /// The 16 bytes from `at` must be readable.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn expand16(at: *const u8, keep: u8) -> __m128i {
        // SAFETY: the table entry is 16 readable bytes, and so are those at `at` (the caller's promise).
        unsafe {
            let shuffle = _mm_loadu_si128(SHUFFLE16[usize::from(keep)].as_ptr() as *const __m128i);
            _mm_shuffle_epi8(_mm_loadu_si128(at as *const __m128i), shuffle)
        }
    }

    struct PackedF16;
    impl PackedFormat for PackedF16 {
        const SIZE: usize = 2;
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn expand(at: *const u8, keep: u8) -> __m256 {
            // SAFETY: the caller's promise.
            _mm256_cvtph_ps(unsafe { expand16(at, keep) })
        }
    }

    struct PackedBF16;
    impl PackedFormat for PackedBF16 {
        const SIZE: usize = 2;
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn expand(at: *const u8, keep: u8) -> __m256 {
            // A bf16 is the high half of the f32 with the same value.
            // SAFETY: the caller's promise.
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(unsafe { expand16(at, keep) })))
        }
    }

    struct PackedF32;
    impl PackedFormat for PackedF32 {
        const SIZE: usize = 4;
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn expand(at: *const u8, keep: u8) -> __m256 {
            // SAFETY: the table entry is eight readable i32, and the 32 bytes at `at` are readable (the caller's promise).
            unsafe {
                let permute = _mm256_loadu_si256(PERMUTE32[usize::from(keep)].as_ptr() as *const __m256i);
                keep_lanes(_mm256_permutevar8x32_ps(_mm256_loadu_ps(at as *const f32), permute), keep)
            }
        }
    }

    /// Packed rows ready for the widening loops: each row's keep bits, and
    /// its values where `need` bytes can be read from the row's start (a
    /// zero-padded copy for the last rows of a matrix, whose values end
    /// sooner).
    struct Readable<'a, const C: usize> {
        keep: [&'a [u8]; C],
        values: [std::borrow::Cow<'a, [u8]>; C],
    }

    impl<'a, const C: usize> Readable<'a, C> {
        /// Rows `w` of `inner` values of `size` bytes: a row reads at most
        /// `inner` values and 64 bytes past its last.
        fn new(w: [StoredRow<'a>; C], inner: usize, size: usize) -> Self {
            let need = inner * size + 64;
            Readable {
                keep: std::array::from_fn(|c| w[c].1.expect("checked: packed rows have keep bits")),
                values: std::array::from_fn(|c| {
                    let bytes = w[c].0;
                    if bytes.len() >= need {
                        std::borrow::Cow::Borrowed(bytes)
                    } else {
                        let mut copy = vec![0u8; need];
                        copy[..bytes.len()].copy_from_slice(bytes);
                        std::borrow::Cow::Owned(copy)
                    }
                }),
            }
        }
    }

    /// How far ahead of a tile of packed rows to prefetch: rows lie one
    /// after another, each as long as its kept values, so ask for what the
    /// tile after next reads, to have more loads in flight than the widening
    /// alone would issue (the rows are too short for the hardware prefetcher
    /// to follow). The rows' length is measured from their starts (half of
    /// `inner` values of `size` bytes for a single row).
    fn prefetch_distance<const C: usize>(w: &[StoredRow<'_>; C], inner: usize, size: usize) -> usize {
        let row_bytes =
            if C > 1 { (w[C - 1].0.as_ptr() as usize).saturating_sub(w[0].0.as_ptr() as usize) / (C - 1) } else { inner * size / 2 };
        PREFETCH_ROWS * row_bytes
    }

    /// Writes packed rows `rows` (keep bits and values) into `out` as dense
    /// f32 rows, zeros at the pruned weights, eight values per keep byte.
    pub(super) fn expand_rows(values: PackedValues, rows: &[StoredRow<'_>], out: &mut [f32]) {
        // SAFETY: called only where `available` found AVX2, FMA, F16C and POPCNT.
        unsafe {
            match values {
                PackedValues::F32 => expand_rows_as::<PackedF32>(rows, out),
                PackedValues::F16 => expand_rows_as::<PackedF16>(rows, out),
                PackedValues::BF16 => expand_rows_as::<PackedBF16>(rows, out),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,popcnt")]
    fn expand_rows_as<V: PackedFormat>(rows: &[StoredRow<'_>], out: &mut [f32]) {
        let inner = out.len() / rows.len().max(1);
        for (&row, dense) in rows.iter().zip(out.chunks_exact_mut(inner)) {
            assert!(row.1.is_some_and(|keep| keep.len() * 8 >= inner), "packed rows need a keep bit per value");
            let row = Readable::new([row], inner, V::SIZE);
            let base = row.values[0].as_ptr();
            let mut at = 0usize;
            for (chunk, values) in dense.chunks_exact_mut(8).enumerate() {
                let bits = row.keep[0][chunk];
                // SAFETY: `at` counts at most `8 * chunk` values, so the 32
                // bytes from it are readable (`Readable`); `values` is eight writable f32.
                unsafe { _mm256_storeu_ps(values.as_mut_ptr(), V::expand(base.add(at), bits)) };
                at += bits.count_ones() as usize * V::SIZE;
            }
        }
    }

    /// [`tile`] for packed sparse rows: each keep byte's values widened into
    /// eight lanes (zeros at the pruned ones) and multiplied exactly as
    /// [`tile`] multiplies the dense row, so the products are those of the
    /// dense row with zeros, bit for bit.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,popcnt")]
    fn packed_tile<V: PackedFormat, const R: usize, const C: usize>(x: [&[f32]; R], w: [StoredRow<'_>; C]) -> [[f32; C]; R] {
        let inner = x[0].len();
        let ahead = prefetch_distance(&w, inner, V::SIZE);
        let rows = Readable::new(w, inner, V::SIZE);
        let (keep, base): (_, [*const u8; C]) = (rows.keep, std::array::from_fn(|c| rows.values[c].as_ptr()));
        let mut at = [0usize; C];
        let mut acc = [[[_mm256_setzero_ps(); BANKS]; C]; R];
        let chunks = inner / 8;
        let mut chunk = 0;
        while chunk < chunks {
            for bank in 0..BANKS {
                let chunk = chunk + bank;
                if chunk >= chunks {
                    break;
                }
                for c in 0..C {
                    _mm_prefetch::<_MM_HINT_T0>(w[c].0.as_ptr().wrapping_add(at[c] + ahead) as *const i8);
                    let bits = keep[c][chunk];
                    // SAFETY: the CPU has AVX2, FMA and F16C (this function's
                    // features); `at[c]` counts at most `8 * chunk` values, so the
                    // 32 bytes from it are readable (`Readable`).
                    let v = unsafe { V::expand(base[c].add(at[c]), bits) };
                    at[c] += bits.count_ones() as usize * V::SIZE;
                    for r in 0..R {
                        acc[r][c][bank] = _mm256_fmadd_ps(x_at(x[r], chunk), v, acc[r][c][bank]);
                    }
                }
            }
            chunk += BANKS;
        }
        lane_totals(&acc)
    }

    /// Values `8 * chunk..8 * chunk + 8` of `x`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn x_at(x: &[f32], chunk: usize) -> __m256 {
        let xs: &[f32; 8] = x[8 * chunk..8 * chunk + 8].try_into().expect("eight values");
        // SAFETY: `xs` is eight readable f32.
        unsafe { _mm256_loadu_ps(xs.as_ptr()) }
    }

    /// Packed 16-bit rows widened by AVX-512's expansions: thirty-two
    /// values (four keep bytes) per load, then multiplied eight lanes at a
    /// time exactly as [`tile`] multiplies the dense row.
    pub(super) mod avx512 {
        use std::arch::x86_64::*;
        use std::sync::OnceLock;

        use super::{lane_totals, prefetch_distance, Readable, RowTile, StoredRow, StoredWeight, BANKS, PREFETCH_ROWS};

        /// Whether the CPU has AVX-512 F, VL, BW, DQ and VBMI2 (checked once).
        pub(in super::super) fn available() -> bool {
            static HAS: OnceLock<bool> = OnceLock::new();
            *HAS.get_or_init(|| {
                super::available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vbmi2")
            })
        }

        /// Whether packed 16-bit rows take these kernels.
        pub(in super::super) fn chosen() -> bool {
            crate::rows::wide_registers() && available()
        }

        /// Packed f16 (`BF16` false) or bf16 rows.
        struct Packed16<const BF16: bool>;

        impl<const BF16: bool> RowTile for Packed16<BF16> {
            fn check((_, keep): StoredRow<'_>, inner: usize, index: usize) {
                assert!(
                    keep.is_some_and(|keep| keep.len() * 8 >= inner),
                    "packed weight row {index} has no keep bits for its {inner} values"
                );
            }

            #[inline(always)]
            unsafe fn tile<const R: usize, const C: usize>(x: [&[f32]; R], w: [StoredRow<'_>; C]) -> [[f32; C]; R] {
                // SAFETY: the caller's CPU has what `tile` needs (checked by `available`).
                unsafe { tile::<BF16, R, C>(x, w) }
            }
        }

        /// [`super::task`] over packed 16-bit rows.
        ///
        /// # Safety
        /// Only where [`available`] is true.
        #[target_feature(enable = "avx2,fma,f16c,popcnt,avx512f,avx512vl,avx512bw,avx512dq,avx512vbmi2")]
        pub(in super::super) unsafe fn task<const BF16: bool>(
            x: &[f32],
            rows: usize,
            weight: &dyn StoredWeight,
            first: usize,
            out: &mut [f32],
        ) {
            // SAFETY: the caller's promise, a superset of what `task` needs.
            unsafe { super::task::<Packed16<BF16>, true>(x, rows, weight, first, out) }
        }

        /// [`super::task`] compiled with AVX-512's 32 registers, for tiles
        /// of twice the products.
        ///
        /// # Safety
        /// Only where `crate::rows::wide_registers()` is true.
        #[target_feature(enable = "avx2,fma,f16c,popcnt,avx512f,avx512vl")]
        pub(super) unsafe fn wide_task<T: RowTile>(x: &[f32], rows: usize, weight: &dyn StoredWeight, first: usize, out: &mut [f32]) {
            // SAFETY: the caller's promise, a superset of what `task` needs.
            unsafe { super::task::<T, true>(x, rows, weight, first, out) }
        }

        /// The 16 values of `words` as f32.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq")]
        fn widen<const BF16: bool>(words: __m256i) -> __m512 {
            if BF16 {
                // A bf16 is the high half of the f32 with the same value.
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(words)))
            } else {
                _mm512_cvtph_ps(words)
            }
        }

        /// Values `8 * chunk..8 * chunk + 16` of `x` (two chunks: one per bank).
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn x_pair_at(x: &[f32], chunk: usize) -> __m512 {
            let xs: &[f32; 16] = x[8 * chunk..8 * chunk + 16].try_into().expect("sixteen values");
            // SAFETY: `xs` is sixteen readable f32.
            unsafe { _mm512_loadu_ps(xs.as_ptr()) }
        }

        /// The tile's products, with a sixteen-lane register per product:
        /// lanes 0-7 are bank 0 and lanes 8-15 bank 1 (see `crate::BANKS`),
        /// so that an expansion of thirty-two values takes two multiply-adds.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,popcnt,avx512f,avx512vl,avx512bw,avx512dq,avx512vbmi2")]
        fn tile<const BF16: bool, const R: usize, const C: usize>(x: [&[f32]; R], w: [StoredRow<'_>; C]) -> [[f32; C]; R] {
            let inner = x[0].len();
            let ahead = prefetch_distance(&w, inner, 2);
            let rows = Readable::new(w, inner, 2);
            let (keep, base): (_, [*const u8; C]) = (rows.keep, std::array::from_fn(|c| rows.values[c].as_ptr()));
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            let chunks = inner / 8;
            // The keep bits of the rows as far ahead as the values' prefetch
            // (a matrix's keep rows lie one after another too): a line
            // serves sixteen steps, too few loads for the hardware to follow.
            for keep in keep {
                for line in (0..keep.len()).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(keep.as_ptr().wrapping_add(PREFETCH_ROWS * keep.len() + line) as *const i8);
                }
            }
            // The main loop reads through raw pointers, one per row for its
            // next values and one for its keep bits, so that the pointers
            // and lengths of the rows do not outnumber the registers.
            let mut next: [*const u8; C] = base;
            let keep_at: [*const u8; C] = std::array::from_fn(|c| keep[c].as_ptr());
            let x_row: [*const f32; R] = std::array::from_fn(|r| x[r].as_ptr());
            // Thirty-two values (four keep bytes) per expanding load, then
            // sixteen, then eight, as the row's length allows.
            let mut chunk = 0;
            while chunk + 4 <= chunks {
                // SAFETY: `8 * chunk + 32 <= inner`, the length of every row of `x`.
                let xv: [[__m512; 2]; R] =
                    std::array::from_fn(|r| std::array::from_fn(|k| unsafe { _mm512_loadu_ps(x_row[r].add(8 * chunk + 16 * k)) }));
                for c in 0..C {
                    _mm_prefetch::<_MM_HINT_T0>(next[c].wrapping_add(ahead) as *const i8);
                    // SAFETY: a row has a keep bit per value (`RowTile::check`), and `chunk + 4 <= inner / 8`.
                    let bits = unsafe { (keep_at[c].add(chunk) as *const u32).read_unaligned() };
                    // SAFETY: `next[c]` is at most `8 * chunk` values past the
                    // row's start, so the 64 bytes from it are readable (`Readable`).
                    let mut raw = unsafe { _mm512_loadu_si512(next[c] as *const __m512i) };
                    // Keeps the load out of the expansion: the compiler would
                    // fold it into an expanding load from memory, which Zen 4
                    // runs about 10% slower here (`bench-sparse-layer`).
                    // SAFETY: an empty template; the value passes through unchanged.
                    unsafe { std::arch::asm!("/* {0} */", inout(zmm_reg) raw, options(pure, nomem, nostack, preserves_flags)) };
                    let expanded = _mm512_maskz_expand_epi16(bits, raw);
                    let low = widen::<BF16>(_mm512_castsi512_si256(expanded));
                    let high = widen::<BF16>(_mm512_extracti64x4_epi64::<1>(expanded));
                    next[c] = next[c].wrapping_add(2 * bits.count_ones() as usize);
                    for r in 0..R {
                        acc[r][c] = _mm512_fmadd_ps(xv[r][0], low, acc[r][c]);
                        acc[r][c] = _mm512_fmadd_ps(xv[r][1], high, acc[r][c]);
                    }
                }
                chunk += 4;
            }
            let mut at: [usize; C] = std::array::from_fn(|c| next[c] as usize - base[c] as usize);
            while chunk < chunks {
                let two = chunk + 2 <= chunks;
                for c in 0..C {
                    let bits = if two { u16::from_le_bytes([keep[c][chunk], keep[c][chunk + 1]]) } else { u16::from(keep[c][chunk]) };
                    // SAFETY: as above, the 32 bytes from `at[c]` are readable.
                    let raw = unsafe { _mm256_loadu_si256(base[c].add(at[c]) as *const __m256i) };
                    let v = widen::<BF16>(_mm256_maskz_expand_epi16(bits, raw));
                    at[c] += 2 * bits.count_ones() as usize;
                    for r in 0..R {
                        acc[r][c] = if two {
                            _mm512_fmadd_ps(x_pair_at(x[r], chunk), v, acc[r][c])
                        } else {
                            // The last chunk of an odd number: bank 0, the low lanes, only.
                            _mm512_mask3_fmadd_ps(_mm512_castps256_ps512(super::x_at(x[r], chunk)), v, acc[r][c], 0xFF)
                        };
                    }
                }
                chunk += if two { 2 } else { 1 };
            }
            let banks: [[[__m256; BANKS]; C]; R] = std::array::from_fn(|r| {
                std::array::from_fn(|c| [_mm512_castps512_ps256(acc[r][c]), _mm512_extractf32x8_ps::<1>(acc[r][c])])
            });
            lane_totals(&banks)
        }
    }

    /// Keeps the lanes of `v` whose bit in `bits` is set, zeroing the others.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn keep_lanes(v: __m256, bits: u8) -> __m256 {
        let select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(i32::from(bits)), select), select);
        _mm256_and_ps(v, _mm256_castsi256_ps(set))
    }

    /// Dot products of `R` rows with `C` stored weight rows, summed in
    /// `crate::BANKS`' order as `dot_tile` sums f32 rows, with the keep bits
    /// of every row applied (`MASKED`) or none: a register of eight lanes
    /// per bank. Compiled into each [`task`] with its caller's features:
    /// with AVX-512's 32 registers, tiles of twice the products, still of
    /// eight-lane vectors (512-bit instructions would take a port from the
    /// decoding, which costs quantized blocks more than wider multiply-adds save).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[inline(always)]
    unsafe fn tile_banks<F: Format, const MASKED: bool, const R: usize, const C: usize>(
        x: [&[f32]; R],
        w: [StoredRow<'_>; C],
    ) -> [[f32; C]; R] {
        let inner = x[0].len();
        let blocks = inner / F::VALUES;
        assert!(x.iter().all(|x| x.len() == inner), "the rows of a tile differ in length");
        for (bytes, keep) in w {
            assert!(bytes.len() >= blocks * F::BYTES, "a weight row is shorter than {blocks} blocks");
            assert!(!MASKED || keep.is_some_and(|keep| keep.len() * 8 >= blocks * F::VALUES), "a weight row's keep bits are too short");
        }
        let xs: [*const f32; R] = std::array::from_fn(|r| x[r].as_ptr());
        let keeps: [&[u8]; C] = std::array::from_fn(|c| w[c].1.unwrap_or_default());
        // SAFETY (this and the calls below): the CPU has AVX2, FMA and F16C (the caller's promise).
        let mut acc = [[[unsafe { _mm256_setzero_ps() }; BANKS]; C]; R];
        // A block of one vector (eight values) is one chunk, so blocks
        // alternate between the banks; a longer block is an even number of
        // chunks, so its vectors alternate within it.
        const { assert!(F::VALUES == 8 || F::VECTORS % 2 == 0, "a block's vectors must alternate between the banks") };
        let mut block = 0;
        while block < blocks {
            unsafe { block_products::<F, MASKED, R, C, 0>(&xs, &w, &keeps, block, &mut acc) };
            if F::VALUES == 8 && block + 1 < blocks {
                unsafe { block_products::<F, MASKED, R, C, 1>(&xs, &w, &keeps, block + 1, &mut acc) };
                block += 1;
            }
            block += 1;
        }
        unsafe { lane_totals(&acc) }
    }

    /// Group `g` of block `bytes`, whose first value is value `at` of its
    /// row, with the row's keep bits `keep` applied where `MASKED`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; where `MASKED`, `keep` must cover the group.
    #[inline(always)]
    unsafe fn masked_group<F: Format, const MASKED: bool>(bytes: &[u8], g: usize, keep: &[u8], at: usize) -> Group {
        // SAFETY: the CPU has AVX2, FMA and F16C (the caller's promise).
        let mut values = unsafe { F::group(bytes, g) };
        if MASKED {
            for (k, v) in values.iter_mut().enumerate().take(F::VECTORS) {
                // SAFETY: the keep bits cover the group, and the CPU has AVX2 (the caller's promises).
                *v = unsafe { keep_lanes(*v, *keep.get_unchecked(at / 8 + k)) };
            }
        }
        values
    }

    /// Adds the products of block `block` of the weight rows `w` (masked by
    /// `keeps` where `MASKED`) with the rows at `xs` into the banks `acc`:
    /// vector `k` of a block into bank `(FIRST_BANK + k) % 2`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; where `MASKED`, the keep bits must cover the block.
    #[inline(always)]
    unsafe fn block_products<F: Format, const MASKED: bool, const R: usize, const C: usize, const FIRST_BANK: usize>(
        xs: &[*const f32; R],
        w: &[StoredRow<'_>; C],
        keeps: &[&[u8]; C],
        block: usize,
        acc: &mut [[[__m256; BANKS]; C]; R],
    ) {
        let groups = F::VALUES / (8 * F::VECTORS);
        for c in 0..C {
            let bytes = &w[c].0[block * F::BYTES..(block + 1) * F::BYTES];
            // The weight streams from memory: ask for what the tile after
            // next reads here (rows lie one after another), so that more
            // loads are in flight than the decoding alone would issue.
            // SAFETY: a prefetch reads nothing; the CPU has SSE (the caller's promise of AVX2).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().wrapping_add(PREFETCH_ROWS * w[c].0.len()) as *const i8) };
            for g in 0..groups {
                let at = block * F::VALUES + g * 8 * F::VECTORS;
                // SAFETY: the CPU has AVX2, FMA and F16C, and the keep bits cover every block (the caller's promises).
                let values = unsafe { masked_group::<F, MASKED>(bytes, g, keeps[c], at) };
                for (k, v) in values.iter().enumerate().take(F::VECTORS) {
                    // Groups hold an even number of vectors where a block holds several.
                    let bank = (FIRST_BANK + k) % BANKS;
                    for r in 0..R {
                        // SAFETY: `at + 8 * k + 8 <= blocks * F::VALUES <= inner`, the length of every row of `x`; the CPU has AVX2 and FMA.
                        acc[r][c][bank] = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(xs[r].add(at + 8 * k)), *v, acc[r][c][bank]) };
                    }
                }
            }
        }
    }

    /// Each product's banks added lane by lane, then its lanes in order
    /// (see `crate::BANKS`).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lane_totals<const R: usize, const C: usize>(acc: &[[[__m256; BANKS]; C]; R]) -> [[f32; C]; R] {
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut lanes = [[0.0f32; 8]; BANKS];
                for (bank, lanes) in lanes.iter_mut().enumerate() {
                    // SAFETY: `lanes` is eight writable f32.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][c][bank]) };
                }
                let mut total = 0.0f32;
                for l in 0..8 {
                    total += lanes[0][l] + lanes[1][l];
                }
                out[r][c] = total;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A weight stored as f32 bytes, decoded by copying: its products must
    /// be those of the plain f32 weight, with and without keep bits.
    struct PlainStored {
        bytes: Vec<u8>,
        inner: usize,
        keep: Option<Vec<u8>>,
        encoding: Option<Encoding>,
    }

    impl StoredWeight for PlainStored {
        fn encoding(&self, _: usize, _: usize) -> Option<Encoding> {
            self.encoding
        }

        fn rows<'a>(&'a self, first: usize, count: usize, out: &mut Vec<StoredRow<'a>>) {
            let keep_bytes = self.inner.div_ceil(8);
            for row in first..first + count {
                let bytes = &self.bytes[row * self.inner * 4..(row + 1) * self.inner * 4];
                out.push((bytes, self.keep.as_deref().map(|k| &k[row * keep_bytes..(row + 1) * keep_bytes])));
            }
        }

        fn decode(&self, first: usize, out: &mut [f32]) {
            let keep_bytes = self.inner.div_ceil(8);
            for (i, (o, b)) in out.iter_mut().zip(self.bytes[first * self.inner * 4..].chunks_exact(4)).enumerate() {
                let (row, col) = (first + i / self.inner, i % self.inner);
                let kept = self.keep.as_ref().is_none_or(|k| k[row * keep_bytes + col / 8] >> (col % 8) & 1 == 1);
                *o = if kept { f32::from_le_bytes([b[0], b[1], b[2], b[3]]) } else { 0.0 };
            }
        }
    }

    #[test]
    fn stored_products_are_small_matmul_s_bit_for_bit_in_registers_and_through_the_buffer() {
        let mut rng = Rng::new(21);
        for (inner, cols) in [(64usize, 3 * 64 + 7), (45, 70), (8, 5)] {
            let w: Vec<f32> = (0..cols * inner).map(|_| rng.next_f32() - 0.5).collect();
            let keep: Vec<u8> = (0..cols * inner.div_ceil(8)).map(|i| (i * 37 % 256) as u8).collect();
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let masked: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let (row, col) = (i / inner, i % inner);
                    if keep[row * inner.div_ceil(8) + col / 8] >> (col % 8) & 1 == 1 {
                        v
                    } else {
                        0.0
                    }
                })
                .collect();
            for rows in [1, 2, 3, 4, 5, 7, 8] {
                let x: Vec<f32> = (0..rows * inner).map(|_| rng.next_f32() - 0.5).collect();
                for (keep, want) in [(None, &w), (Some(keep.clone()), &masked)] {
                    let want = crate::small_matmul(&x, rows, want, cols);
                    for encoding in [Some(Encoding::F32), None] {
                        let stored = PlainStored { bytes: bytes.clone(), inner, keep: keep.clone(), encoding };
                        let got = small_matmul_stored(&x, rows, cols, &stored);
                        let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "inner {inner}, {rows} rows, keep bits {}, encoding {encoding:?}", keep.is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn every_block_encoding_s_register_tiles_equal_its_decoded_rows_bit_for_bit() {
        if !avx2::available() {
            return;
        }
        let mut rng = Rng::new(5);
        let (inner, cols) = (512usize, 23usize);
        for encoding in Encoding::BLOCKS {
            let bytes = random_blocks(encoding, cols, inner, &mut rng);
            let keep: Vec<u8> = (0..cols * inner / 8).map(|i| (i * 37 % 256) as u8).collect();
            for (keep, even_rows_masked) in [(None, false), (Some(keep.clone()), false), (Some(keep), true)] {
                // `even_rows_masked`: only the even rows have keep bits (a weight of parts masked and not).
                let row_keep = |row: usize| {
                    let masked = !even_rows_masked || row % 2 == 0;
                    keep.as_ref().filter(|_| masked).map(|k| k[row * inner / 8..(row + 1) * inner / 8].to_vec())
                };
                let stored = BlockRows { bytes: bytes.clone(), inner, encoding, keep: (0..cols).map(row_keep).collect() };
                let mut dense = vec![0f32; cols * inner];
                stored.decode(0, &mut dense);
                assert!(dense.iter().all(|v| v.is_finite()), "{encoding:?} decodes to finite values");
                for rows in 1..=9 {
                    let x: Vec<f32> = (0..rows * inner).map(|_| rng.next_f32() - 0.5).collect();
                    let want = crate::small_matmul(&x, rows, &dense, cols);
                    let got = small_matmul_stored(&x, rows, cols, &stored);
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{encoding:?}, {rows} rows, keep bits {}, even rows only {even_rows_masked}", keep.is_some());
                }
            }
        }
    }

    /// A pruned weight as packed sparse rows: keep bits and the kept values
    /// only, in `values` (f32, f16 or bf16).
    struct PackedStored {
        values: Vec<u8>,
        starts: Vec<usize>,
        keep: Vec<u8>,
        inner: usize,
        kind: PackedValues,
    }

    impl PackedStored {
        fn new(dense: &[f32], keep: Vec<u8>, inner: usize, kind: PackedValues) -> Self {
            let (mut values, mut starts) = (Vec::new(), vec![0]);
            let keep_bytes = inner.div_ceil(8);
            for (row, w) in dense.chunks_exact(inner).enumerate() {
                for (j, &v) in w.iter().enumerate() {
                    if keep[row * keep_bytes + j / 8] >> (j % 8) & 1 == 1 {
                        match kind {
                            PackedValues::F32 => values.extend(v.to_le_bytes()),
                            PackedValues::F16 => values.extend(half::f16::from_f32(v).to_le_bytes()),
                            PackedValues::BF16 => values.extend(half::bf16::from_f32(v).to_le_bytes()),
                        }
                    }
                }
                starts.push(values.len() / kind.size());
            }
            PackedStored { values, starts, keep, inner, kind }
        }

        fn value(&self, i: usize) -> f32 {
            let b = &self.values[i * self.kind.size()..];
            match self.kind {
                PackedValues::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                PackedValues::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                PackedValues::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            }
        }
    }

    impl StoredWeight for PackedStored {
        fn encoding(&self, _: usize, _: usize) -> Option<Encoding> {
            Some(Encoding::Packed(self.kind))
        }

        fn rows<'a>(&'a self, first: usize, count: usize, out: &mut Vec<StoredRow<'a>>) {
            let keep_bytes = self.inner.div_ceil(8);
            for row in first..first + count {
                out.push((&self.values[self.starts[row] * self.kind.size()..], Some(&self.keep[row * keep_bytes..(row + 1) * keep_bytes])));
            }
        }

        fn decode(&self, first: usize, out: &mut [f32]) {
            let keep_bytes = self.inner.div_ceil(8);
            for (i, row) in out.chunks_exact_mut(self.inner).enumerate() {
                let mut next = self.starts[first + i];
                for (j, o) in row.iter_mut().enumerate() {
                    *o = if self.keep[(first + i) * keep_bytes + j / 8] >> (j % 8) & 1 == 1 {
                        next += 1;
                        self.value(next - 1)
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    #[test]
    fn packed_sparse_products_are_those_of_the_dense_weight_with_zeros_bit_for_bit() {
        let mut rng = Rng::new(5);
        // 64, 72 and 88 inputs (whole steps of 32 values, then one or two
        // keep bytes left) run in registers for one or two rows; 45 (not
        // whole keep bytes) and three rows through the buffer.
        for (inner, cols) in [(64usize, 4 * 9 + 3), (72, 13), (88, 9), (45, 10)] {
            let w: Vec<f32> = (0..cols * inner).map(|_| rng.next_f32() - 0.5).collect();
            let keep_bytes = inner.div_ceil(8);
            // Random bits, with whole bytes pruned and kept; no bits past `inner`.
            let keep: Vec<u8> = (0..cols * keep_bytes)
                .map(|i| {
                    let byte = match i % 7 {
                        0 => 0x00,
                        1 => 0xFF,
                        _ => (rng.next_f32() * 256.0) as u8,
                    };
                    let last = i % keep_bytes == keep_bytes - 1 && inner % 8 != 0;
                    if last {
                        byte & ((1u8 << (inner % 8)) - 1)
                    } else {
                        byte
                    }
                })
                .collect();
            for kind in [PackedValues::F32, PackedValues::F16, PackedValues::BF16] {
                let packed = PackedStored::new(&w, keep.clone(), inner, kind);
                let mut dense = vec![0.0f32; cols * inner];
                packed.decode(0, &mut dense);
                // The dense weight keeps exactly the kept values (rounded to the value type).
                let kept = dense.iter().filter(|v| **v != 0.0).count();
                assert_eq!(kept, *packed.starts.last().unwrap(), "{kind:?}: one nonzero per kept value");
                // The register expansion widens the rows to the same values.
                let mut rows = Vec::new();
                packed.rows(0, cols, &mut rows);
                let mut widened = vec![f32::NAN; cols * inner];
                if expand_packed(kind, &rows, &mut widened) {
                    assert!(widened.iter().zip(&dense).all(|(a, b)| a.to_bits() == b.to_bits()), "inner {inner}, {kind:?}: expanded rows");
                }
                for rows in [1, 2, 3, 4, 6, 8, 9] {
                    let x: Vec<f32> = (0..rows * inner).map(|_| rng.next_f32() - 0.5).collect();
                    let want = crate::small_matmul(&x, rows, &dense, cols);
                    // The AVX-512 kernels where the CPU has them, and the AVX2 ones.
                    for avx2_only in [false, true] {
                        #[cfg(target_arch = "x86_64")]
                        crate::rows::AVX2_ONLY.store(avx2_only, std::sync::atomic::Ordering::Relaxed);
                        let got = small_matmul_stored(&x, rows, cols, &packed);
                        let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "inner {inner}, {rows} rows, {kind:?}, AVX2 only: {avx2_only}");
                    }
                }
            }
        }
    }

    #[test]
    fn encodings_decode_their_block_layout_by_hand() {
        if !avx2::available() {
            return;
        }
        // f16: 1.0, -2.0, 0.5, 65504; bf16: 1.0, -3.0.
        let f16: Vec<u8> = [0x3C00u16, 0xC000, 0x3800, 0x7BFF, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = [0f32; 8];
        assert!(decode(Encoding::F16, &f16, &mut out));
        assert_eq!(out, [1.0, -2.0, 0.5, 65504.0, 0.0, 0.0, 0.0, 0.0]);
        let bf16: Vec<u8> = [0x3F80u16, 0xC040, 0, 0, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(decode(Encoding::BF16, &bf16, &mut out));
        assert_eq!(out, [1.0, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Q4_1 with d = 0.25, m = -1: qs[j] = j | (15 - j) << 4 gives
        // y[j] = j / 4 - 1 and y[j + 16] = (15 - j) / 4 - 1.
        let mut q4_1 = vec![0x00, 0x34, 0x00, 0xBC];
        q4_1.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        assert!(decode(Encoding::Q4_1, &q4_1, &mut out));
        for j in 0..16 {
            assert_eq!((out[j], out[j + 16]), (j as f32 / 4.0 - 1.0, (15 - j) as f32 / 4.0 - 1.0), "value {j}");
        }
    }
}
