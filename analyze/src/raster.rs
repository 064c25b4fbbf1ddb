//! A small RGB rasteriser: filled rectangles, lines, 8x8 bitmap text (font8x8),
//! colour scales, and atomic PNG output (own encoder: one zlib-compressed IDAT chunk).

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::write::ZlibEncoder;
use flate2::Compression;

use crate::error::io_err;
use crate::AnalyzeError;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// White.
pub const WHITE: Rgb = [255, 255, 255];
/// Black.
pub const BLACK: Rgb = [0, 0, 0];
/// Grey for axes text and ticks.
pub const DARK_GREY: Rgb = [60, 60, 60];
/// Grey for grid lines.
pub const GRID: Rgb = [225, 225, 225];
/// Grey for missing values.
pub const MISSING: Rgb = [200, 200, 200];

/// Width and height in pixels of one glyph at scale 1.
pub const GLYPH: u32 = 8;

/// Ten distinguishable line colours (Tableau 10).
pub const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Stops of the viridis colour map, from low to high.
const VIRIDIS: [Rgb; 5] = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

/// Linear interpolation between two colours, `t` in [0, 1].
pub fn lerp(a: Rgb, b: Rgb, t: f64) -> Rgb {
    let t = t.clamp(0.0, 1.0);
    let mix = |x: u8, y: u8| (f64::from(x) + (f64::from(y) - f64::from(x)) * t).round() as u8;
    [mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2])]
}

/// The viridis colour of `t` in [0, 1].
pub fn viridis(t: f64) -> Rgb {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    lerp(VIRIDIS[i], VIRIDIS[i + 1], x - i as f64)
}

/// Black or white, whichever reads better on `background`.
pub fn text_on(background: Rgb) -> Rgb {
    let l = 0.299 * f64::from(background[0]) + 0.587 * f64::from(background[1]) + 0.114 * f64::from(background[2]);
    if l < 140.0 {
        WHITE
    } else {
        BLACK
    }
}

/// The glyph of a character; characters outside ASCII are drawn as `?`.
fn glyph(c: char) -> &'static [u8; 8] {
    let i = if c.is_ascii() { c as usize } else { '?' as usize };
    &font8x8::legacy::BASIC_LEGACY[i]
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * GLYPH * scale
}

/// `text` cut to at most `max_px` pixels at `scale`, ending in `..` when cut.
pub fn fit_text(text: &str, scale: u32, max_px: u32) -> String {
    let max_chars = (max_px / (GLYPH * scale)) as usize;
    if text.chars().count() <= max_chars {
        text.to_string()
    } else if max_chars <= 2 {
        text.chars().take(max_chars).collect()
    } else {
        let mut s: String = text.chars().take(max_chars - 2).collect();
        s.push_str("..");
        s
    }
}

/// An RGB image in memory.
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas of `width` x `height` pixels filled with `background`.
    pub fn new(width: u32, height: u32, background: Rgb) -> Canvas {
        let pixels = background.iter().copied().cycle().take(width as usize * height as usize * 3).collect();
        Canvas { width, height, pixels }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The colour at (x, y); panics outside the canvas.
    pub fn get(&self, x: u32, y: u32) -> Rgb {
        assert!(x < self.width && y < self.height, "pixel ({x}, {y}) outside a {}x{} canvas", self.width, self.height);
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Sets the pixel at (x, y); does nothing outside the canvas.
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.pixels[i..i + 3].copy_from_slice(&c);
    }

    /// Fills the rectangle of `w` x `h` pixels whose top-left corner is (x, y), clipped to the canvas.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: u32, h: u32, c: Rgb) {
        let x0 = x.max(0);
        let y0 = y.max(0);
        let x1 = (x + i64::from(w)).min(i64::from(self.width));
        let y1 = (y + i64::from(h)).min(i64::from(self.height));
        for yy in y0..y1 {
            for xx in x0..x1 {
                let i = (yy as usize * self.width as usize + xx as usize) * 3;
                self.pixels[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Draws the one-pixel outline of a rectangle.
    pub fn stroke_rect(&mut self, x: i64, y: i64, w: u32, h: u32, c: Rgb) {
        if w == 0 || h == 0 {
            return;
        }
        self.fill_rect(x, y, w, 1, c);
        self.fill_rect(x, y + i64::from(h) - 1, w, 1, c);
        self.fill_rect(x, y, 1, h, c);
        self.fill_rect(x + i64::from(w) - 1, y, 1, h, c);
    }

    /// Draws a line from (x0, y0) to (x1, y1), `thickness` pixels wide (a square pen).
    pub fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, thickness: u32, c: Rgb) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as u32;
        let half = i64::from(thickness / 2);
        for s in 0..=steps {
            let t = f64::from(s) / f64::from(steps);
            let x = (x0 + (x1 - x0) * t).round() as i64;
            let y = (y0 + (y1 - y0) * t).round() as i64;
            self.fill_rect(x - half, y - half, thickness.max(1), thickness.max(1), c);
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel `scale` x `scale`.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, c: Rgb) {
        let s = i64::from(scale);
        for (k, ch) in text.chars().enumerate() {
            let gx = x + k as i64 * i64::from(GLYPH) * s;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.fill_rect(gx + col * s, y + row as i64 * s, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Draws `text` centred horizontally on `cx`, top at `y`.
    pub fn text_centered(&mut self, cx: i64, y: i64, text: &str, scale: u32, c: Rgb) {
        self.text(cx - i64::from(text_width(text, scale)) / 2, y, text, scale, c);
    }

    /// Draws `text` right-aligned to `right`, top at `y`.
    pub fn text_right(&mut self, right: i64, y: i64, text: &str, scale: u32, c: Rgb) {
        self.text(right - i64::from(text_width(text, scale)), y, text, scale, c);
    }

    /// Draws `text` rotated a quarter turn counter-clockwise (read bottom to top),
    /// centred vertically on `cy`, its left edge at `x`.
    pub fn text_vertical(&mut self, x: i64, cy: i64, text: &str, scale: u32, c: Rgb) {
        let s = i64::from(scale);
        let bottom = cy + i64::from(text_width(text, scale)) / 2;
        for (k, ch) in text.chars().enumerate() {
            let gy = bottom - k as i64 * i64::from(GLYPH) * s;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..8i64 {
                    if bits >> col & 1 == 1 {
                        self.fill_rect(x + row as i64 * s, gy - (col + 1) * s, scale, scale, c);
                    }
                }
            }
        }
    }

    /// The canvas encoded as an 8-bit RGB PNG (no interlacing, filter type 0 on every row, zlib-compressed).
    pub fn encode_png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.width as usize * 3 + 1) * self.height as usize);
        for row in self.pixels.chunks_exact(self.width as usize * 3).take(self.height as usize) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        if self.width == 0 {
            raw.resize(self.height as usize, 0);
        }
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&raw).expect("writing to a Vec cannot fail");
        let idat = z.finish().expect("writing to a Vec cannot fail");
        let mut ihdr = Vec::with_capacity(13);
        ihdr.extend_from_slice(&self.width.to_be_bytes());
        ihdr.extend_from_slice(&self.height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = Vec::with_capacity(idat.len() + 64);
        out.extend_from_slice(&PNG_SIGNATURE);
        png_chunk(&mut out, b"IHDR", &ihdr);
        png_chunk(&mut out, b"IDAT", &idat);
        png_chunk(&mut out, b"IEND", &[]);
        out
    }

    /// Writes the canvas as a PNG (see [`Canvas::encode_png`]), atomically (temp file +
    /// rename); creates the directory.
    pub fn save_png(&self, path: &Path) -> Result<(), AnalyzeError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "figure.png".to_string());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = fs::write(&tmp, self.encode_png()).map_err(io_err(&tmp)).and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// The eight bytes every PNG file starts with.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// The CRC-32 (ISO-HDLC, as PNG uses) lookup table.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// CRC-32 of the concatenation of `parts`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for part in parts {
        for &b in *part {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    c ^ 0xffff_ffff
}

/// Appends a PNG chunk: length, type, data, CRC of type and data.
fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// Ticks for an axis covering [lo, hi]: a "nice" step (1, 2 or 5 times a power of
/// ten) giving about `target` intervals, and the tick values from the step multiple
/// at or below `lo` to the one at or above `hi`.
pub fn nice_ticks(lo: f64, hi: f64, target: u32) -> (f64, Vec<f64>) {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    let raw = (hi - lo) / f64::from(target.max(1));
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw - 1e-12).unwrap_or(10.0 * mag);
    let start = (lo / step + 1e-6).floor() as i64;
    let end = (hi / step - 1e-6).ceil() as i64;
    (step, (start..=end).map(|i| i as f64 * step).collect())
}

/// A tick label with as many decimals as the step needs.
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

/// A value with about four significant digits.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xcbf4_3926);
    }

    #[test]
    fn nice_ticks_cover_the_range_with_round_steps() {
        let (step, ticks) = nice_ticks(0.31, 0.58, 5);
        assert_eq!(step, 0.1);
        assert_eq!(ticks.len(), 4);
        assert!(ticks[0] <= 0.31 && *ticks.last().unwrap() >= 0.58);
        assert_eq!(tick_label(ticks[0], step), "0.3");
        let (step, ticks) = nice_ticks(0.31, 0.58, 10);
        assert_eq!((step, ticks.len()), (0.05, 7));
        assert_eq!(tick_label(ticks[0], step), "0.30");
        let (step, _) = nice_ticks(0.0, 29.0, 10);
        assert_eq!(step, 5.0);
    }

    #[test]
    fn text_draws_font_pixels_and_vertical_text_is_its_rotation() {
        let mut a = Canvas::new(16, 8, WHITE);
        a.text(0, 0, "L", 1, BLACK);
        let mut b = Canvas::new(8, 16, WHITE);
        b.text_vertical(0, 8, "L", 1, BLACK);
        let mut dark = 0;
        for y in 0..8 {
            for x in 0..8 {
                let on = a.get(x, y) == BLACK;
                dark += u32::from(on);
                assert_eq!(on, b.get(y, 11 - x) == BLACK, "pixel ({x}, {y})");
            }
        }
        assert!(dark > 5);
    }
}
