//! Figures as PNG: per-layer Jaccard curves, side-by-side mask differences, and
//! heatmaps (perplexity by calibration and evaluation domain, Jaccard matrix).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use artifacts::{check_same_model, read_results, JaccardRow, MaskReader, Provenance};

use crate::jaccard::{LAYER_ROW, MODEL_ROW};
use crate::raster::{
    fit_text, format_value, lerp, nice_ticks, text_on, text_width, tick_label, viridis, Canvas, Rgb, BLACK, DARK_GREY, GRID, MISSING,
    PALETTE, WHITE,
};
use crate::{AnalyzeError, NamedMask};

/// Colour of a kept weight in the mask panels.
pub const KEPT: Rgb = [240, 234, 214];
/// Colour of a pruned weight in the mask panels.
pub const PRUNED: Rgb = [32, 36, 64];
/// Colour of a weight the two masks agree on, in the difference panel.
pub const SAME: Rgb = [236, 236, 236];
/// Colour of a weight the two masks disagree on, in the difference panel.
pub const DIFFER: Rgb = [214, 39, 40];

/// One curve: a label and (layer, distance) points in layer order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (layer, value) points, sorted by layer.
    pub points: Vec<(u32, f64)>,
}

/// Parses `a:b,c:d` into pairs of mask names.
pub fn parse_pairs(spec: &str) -> Result<Vec<(String, String)>, AnalyzeError> {
    spec.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once(':') {
            Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => Ok((a.trim().to_string(), b.trim().to_string())),
            _ => Err(AnalyzeError::Invalid(format!("pair `{p}`: expected two mask names as A:B, e.g. python-a:python-b"))),
        })
        .collect()
}

/// The pairs of masks present in jaccard rows, in order of first appearance.
pub fn pairs_in(rows: &[JaccardRow]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in rows {
        if !out.iter().any(|(a, b)| *a == r.mask_a && *b == r.mask_b) {
            out.push((r.mask_a.clone(), r.mask_b.clone()));
        }
    }
    out
}

/// Whether row `r` is about the pair (a, b) in either order.
pub fn is_pair(r: &JaccardRow, a: &str, b: &str) -> bool {
    (r.mask_a == a && r.mask_b == b) || (r.mask_a == b && r.mask_b == a)
}

/// The per-layer distance curves of the given pairs (all pairs when `None`).
///
/// Refuses a pair absent from the rows, naming the pairs present.
pub fn per_layer_series(rows: &[JaccardRow], pairs: Option<&[(String, String)]>) -> Result<Vec<Series>, AnalyzeError> {
    let all = pairs_in(rows);
    let chosen: Vec<(String, String)> = pairs.map_or_else(|| all.clone(), <[_]>::to_vec);
    let mut out = Vec::with_capacity(chosen.len());
    for (a, b) in &chosen {
        let mut points: Vec<(u32, f64)> = rows
            .iter()
            .filter(|r| r.module == LAYER_ROW && is_pair(r, a, b))
            .filter_map(|r| r.layer.map(|l| (l, r.jaccard_distance)))
            .collect();
        if points.is_empty() {
            let known = all.iter().map(|(a, b)| format!("{a}:{b}")).collect::<Vec<_>>().join(", ");
            return Err(AnalyzeError::Invalid(format!("no per-layer Jaccard rows for the pair {a}:{b}; the pairs present are [{known}]")));
        }
        points.sort_by_key(|p| p.0);
        out.push(Series { label: format!("{a} vs {b}"), points });
    }
    if out.is_empty() {
        return Err(AnalyzeError::Invalid("no pairs to draw: the Jaccard artifact has no rows".to_string()));
    }
    Ok(out)
}

/// Draws distance curves over decoder layers, with axes, ticks, grid and a legend.
pub fn draw_curves(series: &[Series], title: &str, width: u32, height: u32) -> Canvas {
    let mut c = Canvas::new(width, height, WHITE);
    let legend_w = series.iter().map(|s| text_width(&s.label, 1)).max().unwrap_or(0).max(text_width("pairs (A vs B)", 1)) + 44;
    let legend_w = legend_w.min(width / 3);
    let (x0, y0) = (84i64, 60i64);
    let x1 = i64::from(width) - i64::from(legend_w) - 20;
    let y1 = i64::from(height) - 60;
    let (pw, ph) = ((x1 - x0).max(1) as f64, (y1 - y0).max(1) as f64);

    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let (ystep, yticks) = nice_ticks(lo, hi, 5);
    let (ylo, yhi) = (yticks[0], *yticks.last().expect("ticks"));
    let layers = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lmin, lmax) = layers.fold((u32::MAX, 0), |(a, b), l| (a.min(l), b.max(l)));
    let (lmin, lmax) = if lmin > lmax { (0, 0) } else { (lmin, lmax) };
    let xstep = nice_ticks(f64::from(lmin), f64::from(lmax), 10).0.max(1.0).round() as u32;
    let (xlo, xhi) = (f64::from(lmin) - 0.5, f64::from(lmax) + 0.5);
    let px = |l: f64| x0 as f64 + (l - xlo) / (xhi - xlo) * pw;
    let py = |v: f64| y1 as f64 - (v - ylo) / (yhi - ylo).max(f64::EPSILON) * ph;

    c.text_centered((x0 + x1) / 2, 14, title, 2, BLACK);
    c.text_centered((x0 + x1) / 2, 38, "distance = 1 - |pruned by both| / |pruned by either|, per decoder layer", 1, DARK_GREY);
    for &t in &yticks {
        let y = py(t).round() as i64;
        c.fill_rect(x0, y, (x1 - x0) as u32, 1, GRID);
        c.fill_rect(x0 - 5, y, 5, 1, DARK_GREY);
        c.text_right(x0 - 8, y - 4, &tick_label(t, ystep), 1, DARK_GREY);
    }
    let mut l = lmin.div_ceil(xstep) * xstep;
    while l <= lmax {
        let x = px(f64::from(l)).round() as i64;
        c.fill_rect(x, y0, 1, (y1 - y0) as u32, GRID);
        c.fill_rect(x, y1, 1, 5, DARK_GREY);
        c.text_centered(x, y1 + 9, &l.to_string(), 1, DARK_GREY);
        l += xstep;
    }
    c.stroke_rect(x0, y0, (x1 - x0 + 1) as u32, (y1 - y0 + 1) as u32, DARK_GREY);
    c.text_centered((x0 + x1) / 2, y1 + 28, "decoder layer", 1, BLACK);
    c.text_vertical(10, (y0 + y1) / 2, "Jaccard distance", 1, BLACK);

    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        for w in s.points.windows(2) {
            c.line(px(f64::from(w[0].0)), py(w[0].1), px(f64::from(w[1].0)), py(w[1].1), 2, colour);
        }
        for &(l, v) in &s.points {
            c.fill_rect(px(f64::from(l)).round() as i64 - 2, py(v).round() as i64 - 2, 5, 5, colour);
        }
    }

    let lx = x1 + 20;
    c.text(lx, y0, "pairs (A vs B)", 1, BLACK);
    for (k, s) in series.iter().enumerate() {
        let y = y0 + 18 + k as i64 * 16;
        if y + 8 > i64::from(height) {
            break;
        }
        let colour = PALETTE[k % PALETTE.len()];
        c.fill_rect(lx, y + 3, 18, 3, colour);
        c.text(lx + 24, y, &fit_text(&s.label, 1, legend_w.saturating_sub(30)), 1, BLACK);
    }
    c
}

/// Reads a Jaccard artifact and writes the per-layer curves of `pairs` (all when `None`) as a PNG.
pub fn curves_figure(
    jaccard: &Path,
    pairs: Option<&[(String, String)]>,
    out: &Path,
    width: u32,
    height: u32,
) -> Result<Vec<Series>, AnalyzeError> {
    let (_, rows) = artifacts::read_jaccard(&existing(jaccard, "Jaccard artifact")?)?;
    let series = per_layer_series(&rows, pairs)?;
    draw_curves(&series, "Per-layer Jaccard distance of pruned weights", width.max(320), height.max(200)).save_png(out)?;
    Ok(series)
}

/// `path` if it exists, else an error naming it as `what`.
pub(crate) fn existing(path: &Path, what: &str) -> Result<PathBuf, AnalyzeError> {
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(AnalyzeError::MissingFile { path: path.to_path_buf(), what: what.to_string() })
    }
}

/// The keep bits of one module of a mask as a full matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleMatrix {
    /// Output rows.
    pub rows: u32,
    /// Input columns.
    pub cols: u32,
    /// Packed keep bits of each row (LSB first, 1 = kept), in row order.
    pub keep: Vec<Vec<u8>>,
}

impl ModuleMatrix {
    /// Whether weight (r, c) is kept.
    pub fn kept(&self, r: u32, c: u32) -> bool {
        self.keep[r as usize][(c / 8) as usize] >> (c % 8) & 1 == 1
    }
}

/// Reads the rows of `module` from a mask; they must be rows 0..R, each once, all of one width.
pub fn read_module(path: &Path, module: &str) -> Result<(Provenance, ModuleMatrix), AnalyzeError> {
    let reader = MaskReader::open(&existing(path, "mask")?)?;
    let provenance = reader.provenance().clone();
    let mut rows: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for row in reader {
        let row = row?;
        if row.module == module {
            rows.push((row.row, row.in_features, row.keep));
        } else if others.last() != Some(&row.module) && others.len() < 400 {
            others.push(row.module);
        }
    }
    let bad = |detail: String| AnalyzeError::BadModule { path: path.to_path_buf(), module: module.to_string(), detail };
    if rows.is_empty() {
        others.dedup();
        let shown = others.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        return Err(bad(format!("the mask has no rows of this module; it has modules such as [{shown}]")));
    }
    rows.sort_by_key(|r| r.0);
    let cols = rows[0].1;
    for (i, (r, n, _)) in rows.iter().enumerate() {
        if *r as usize != i {
            return Err(bad(format!("expected rows 0..{} each once, found row {r} at position {i}", rows.len())));
        }
        if *n != cols {
            return Err(bad(format!("row {r} has {n} inputs while row 0 has {cols}")));
        }
    }
    let keep = rows.into_iter().map(|r| r.2).collect::<Vec<_>>();
    Ok((provenance, ModuleMatrix { rows: keep.len() as u32, cols, keep }))
}

/// Where the panels of a mask-difference figure lie, and how weights map to pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskDiffLayout {
    /// Canvas width and height.
    pub size: (u32, u32),
    /// Top-left corners of the panels: mask A, mask B, difference.
    pub panels: [(u32, u32); 3],
    /// Panel width and height in pixels.
    pub panel_size: (u32, u32),
    /// Weights per pixel block: (rows, columns); (1, 1) when each weight has its own pixels.
    pub block: (u32, u32),
    /// Pixels per weight side when each weight has its own pixels (1 when blocks are used).
    pub scale: u32,
    /// The module's shape: (rows, columns).
    pub shape: (u32, u32),
    /// Weights pruned by A.
    pub pruned_a: u64,
    /// Weights pruned by B.
    pub pruned_b: u64,
    /// Weights where the masks differ.
    pub differing: u64,
}

/// Pixel block geometry: weights per block and the upscale factor.
fn block_geometry(rows: u32, cols: u32, max_size: u32) -> ((u32, u32), u32) {
    let max_size = max_size.max(16);
    let block = (rows.div_ceil(max_size).max(1), cols.div_ceil(max_size).max(1));
    let scale = if block == (1, 1) { (max_size.min(320) / rows.max(cols).max(1)).max(1) } else { 1 };
    (block, scale)
}

/// Draws mask A, mask B and their difference side by side for one module.
///
/// Pruned weights are dark, kept ones light; in the difference panel weights where
/// the masks differ are red, others grey. A matrix larger than `max_size` pixels on
/// a side is shown in blocks of r x c weights, each pixel shaded by the fraction of
/// its block pruned (panels A, B) or differing (red intensity); the subtitle states
/// the block size. A smaller matrix gets an integer upscale of each weight.
pub fn mask_diff_figure(a: &NamedMask, b: &NamedMask, module: &str, out: &Path, max_size: u32) -> Result<MaskDiffLayout, AnalyzeError> {
    let (pa, ma) = read_module(&a.path, module)?;
    let (pb, mb) = read_module(&b.path, module)?;
    check_same_model(&pa, &a.path, &pb, &b.path)?;
    if (ma.rows, ma.cols) != (mb.rows, mb.cols) {
        return Err(AnalyzeError::ShapeMismatch {
            a_path: a.path.clone(),
            b_path: b.path.clone(),
            detail: format!("module `{module}` is {} x {} in the first, {} x {} in the second", ma.rows, ma.cols, mb.rows, mb.cols),
        });
    }
    let (canvas, layout) = draw_mask_diff(&a.name, &b.name, module, &ma, &mb, max_size);
    canvas.save_png(out)?;
    Ok(layout)
}

/// Draws the three panels of a mask difference (see [`mask_diff_figure`]).
pub fn draw_mask_diff(
    name_a: &str,
    name_b: &str,
    module: &str,
    a: &ModuleMatrix,
    b: &ModuleMatrix,
    max_size: u32,
) -> (Canvas, MaskDiffLayout) {
    let (rows, cols) = (a.rows, a.cols);
    let ((br, bc), scale) = block_geometry(rows, cols, max_size);
    let (gw, gh) = (cols.div_ceil(bc), rows.div_ceil(br));
    let mut pruned_a = vec![0u32; (gw * gh) as usize];
    let mut pruned_b = vec![0u32; (gw * gh) as usize];
    let mut differ = vec![0u32; (gw * gh) as usize];
    let (mut total_a, mut total_b, mut total_d) = (0u64, 0u64, 0u64);
    for r in 0..rows {
        for c in 0..cols {
            let (ka, kb) = (a.kept(r, c), b.kept(r, c));
            let i = ((r / br) * gw + c / bc) as usize;
            pruned_a[i] += u32::from(!ka);
            pruned_b[i] += u32::from(!kb);
            differ[i] += u32::from(ka != kb);
            total_a += u64::from(!ka);
            total_b += u64::from(!kb);
            total_d += u64::from(ka != kb);
        }
    }
    let weights_in = |gx: u32, gy: u32| ((rows - gy * br).min(br) * (cols - gx * bc).min(bc)) as f64;

    let (pw, ph) = (gw * scale, gh * scale);
    let total = f64::from(rows) * f64::from(cols);
    let pct = |n: u64| 100.0 * n as f64 / total.max(1.0);
    let titles = [
        format!("A: {name_a} ({:.1}% pruned)", pct(total_a)),
        format!("B: {name_b} ({:.1}% pruned)", pct(total_b)),
        format!("A vs B ({:.1}% differ)", pct(total_d)),
    ];
    let mapping = if (br, bc) == (1, 1) {
        if scale == 1 {
            "1 pixel = 1 weight".to_string()
        } else {
            format!("1 weight = {scale} x {scale} pixels")
        }
    } else {
        format!("1 pixel = {br} x {bc} weights (rows x columns)")
    };
    let subtitle = format!("{rows} x {cols} weights (rows = outputs, columns = inputs); {mapping}");
    let title = format!("Pruned weights of {module}");
    let (margin, gap, top) = (20u32, 24u32, 78u32);
    let panel_slot = pw.max(titles.iter().map(|t| text_width(t, 1)).max().unwrap_or(0).min(360));
    let legend_h = 64;
    let width = (2 * margin + 3 * panel_slot + 2 * gap).max(text_width(&title, 2) + 3 * margin).max(text_width(&subtitle, 1) + 2 * margin);
    let height = top + ph + 12 + legend_h;
    let mut canvas = Canvas::new(width, height, WHITE);
    canvas.text_centered(i64::from(width / 2), 12, &title, 2, BLACK);
    canvas.text_centered(i64::from(width / 2), 36, &subtitle, 1, DARK_GREY);
    let x_start = (width - (3 * panel_slot + 2 * gap)) / 2;
    let mut panels = [(0, 0); 3];
    for (k, t) in titles.iter().enumerate() {
        let slot_x = x_start + k as u32 * (panel_slot + gap);
        let px = slot_x + (panel_slot - pw) / 2;
        panels[k] = (px, top);
        canvas.text_centered(i64::from(slot_x + panel_slot / 2), i64::from(top) - 18, &fit_text(t, 1, panel_slot), 1, BLACK);
        for gy in 0..gh {
            for gx in 0..gw {
                let i = (gy * gw + gx) as usize;
                let n = weights_in(gx, gy);
                let colour = match k {
                    0 => lerp(KEPT, PRUNED, f64::from(pruned_a[i]) / n),
                    1 => lerp(KEPT, PRUNED, f64::from(pruned_b[i]) / n),
                    _ => lerp(SAME, DIFFER, f64::from(differ[i]) / n),
                };
                canvas.fill_rect(i64::from(px + gx * scale), i64::from(top + gy * scale), scale, scale, colour);
            }
        }
        canvas.stroke_rect(i64::from(px) - 1, i64::from(top) - 1, pw + 2, ph + 2, DARK_GREY);
    }

    let ly = i64::from(top + ph + 16);
    let mut lx = i64::from(x_start);
    let blocks = (br, bc) != (1, 1);
    let entries: [(&str, Rgb, Rgb); 2] = if blocks {
        [("fraction pruned 0 -> 1", KEPT, PRUNED), ("fraction differing 0 -> 1", SAME, DIFFER)]
    } else {
        [("kept / pruned", KEPT, PRUNED), ("same / differ", SAME, DIFFER)]
    };
    for (label, from, to) in entries {
        if blocks {
            for i in 0..60u32 {
                canvas.fill_rect(lx + i64::from(i), ly, 1, 14, lerp(from, to, f64::from(i) / 59.0));
            }
        } else {
            canvas.fill_rect(lx, ly, 30, 14, from);
            canvas.fill_rect(lx + 30, ly, 30, 14, to);
        }
        canvas.stroke_rect(lx - 1, ly - 1, 62, 16, DARK_GREY);
        canvas.text(lx + 68, ly + 3, label, 1, BLACK);
        lx += 68 + i64::from(text_width(label, 1)) + 32;
    }
    canvas.text(i64::from(x_start), ly + 28, "dark = pruned, light = kept; red = the masks disagree", 1, DARK_GREY);

    let layout = MaskDiffLayout {
        size: (width, height),
        panels,
        panel_size: (pw, ph),
        block: (br, bc),
        scale,
        shape: (rows, cols),
        pruned_a: total_a,
        pruned_b: total_b,
        differing: total_d,
    };
    (canvas, layout)
}

/// A table of values drawn as coloured cells with the value in each.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Title, drawn large.
    pub title: String,
    /// Line under the title.
    pub subtitle: String,
    /// What the rows are (drawn vertically on the left).
    pub row_axis: String,
    /// What the columns are (drawn above the column labels).
    pub col_axis: String,
    /// Row labels.
    pub rows: Vec<String>,
    /// Column labels.
    pub cols: Vec<String>,
    /// `values[row][col]`; `None` is drawn grey with `n/a`.
    pub values: Vec<Vec<Option<f64>>>,
    /// Label of the colour scale.
    pub scale_label: String,
    /// Colour by the logarithm of the value (all values must be positive).
    pub log_scale: bool,
    /// The value range of the colour scale; the data's range when `None`.
    pub range: Option<(f64, f64)>,
    /// Decimals of the values written in the cells; about four significant digits when `None`.
    pub decimals: Option<usize>,
    /// Draw the diagonal cells grey, outside the colour scale (e.g. a mask against itself).
    pub grey_diagonal: bool,
}

impl Heatmap {
    /// The colour scale's range: `range`, or the finite values' min and max.
    fn bounds(&self) -> (f64, f64) {
        if let Some(r) = self.range {
            return r;
        }
        let vals = self.values.iter().flatten().flatten().copied().filter(|v| v.is_finite());
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo.is_finite() {
            (lo, hi)
        } else {
            (0.0, 1.0)
        }
    }

    /// The position of `v` on the colour scale, in [0, 1].
    fn position(&self, v: f64) -> f64 {
        let (lo, hi) = self.bounds();
        let (f, lo, hi) = if self.log_scale && lo > 0.0 { (v.max(lo).ln(), lo.ln(), hi.ln()) } else { (v, lo, hi) };
        if hi > lo {
            (f - lo) / (hi - lo)
        } else {
            0.5
        }
    }

    /// The colour of value `v`.
    pub fn colour(&self, v: f64) -> Rgb {
        viridis(self.position(v))
    }

    /// Draws the heatmap: cells with values, row and column labels, and a colour bar.
    pub fn draw(&self) -> Canvas {
        let fmt = |v: f64| self.decimals.map_or_else(|| format_value(v), |d| format!("{v:.d$}"));
        let texts: Vec<Vec<String>> =
            self.values.iter().map(|r| r.iter().map(|v| v.map_or_else(|| "n/a".to_string(), fmt)).collect()).collect();
        let widest_value = texts.iter().flatten().map(|t| text_width(t, 1)).max().unwrap_or(0);
        let widest_col = self.cols.iter().map(|c| text_width(c, 1)).max().unwrap_or(0).min(160);
        let cell_w = (widest_value.max(widest_col) + 14).max(56);
        let cell_h = 28u32;
        let row_label_w = self.rows.iter().map(|r| text_width(r, 1)).max().unwrap_or(0).max(text_width(&self.row_axis, 1)).min(240);
        let x0 = 16 + row_label_w + 10;
        let y0 = 96u32;
        let (gw, gh) = (cell_w * self.cols.len() as u32, cell_h * self.rows.len() as u32);
        let bar_h = gh.clamp(120, 320);
        let scale_label = if self.log_scale { format!("{} (log scale)", self.scale_label) } else { self.scale_label.clone() };
        let scale_w = (20 + 8 + 64).max(text_width(&scale_label, 1)) + 20;
        let width = (x0 + gw + 30 + scale_w).max(text_width(&self.title, 2) + 40).max(text_width(&self.subtitle, 1) + 40);
        let height = y0 + gh.max(bar_h) + 40;
        let mut c = Canvas::new(width, height, WHITE);
        c.text_centered(i64::from(width / 2), 12, &self.title, 2, BLACK);
        c.text_centered(i64::from(width / 2), 36, &self.subtitle, 1, DARK_GREY);
        c.text_centered(i64::from(x0 + gw / 2), 58, &self.col_axis, 1, BLACK);
        c.text_right(i64::from(x0) - 8, i64::from(y0) - 16, &fit_text(&self.row_axis, 1, row_label_w), 1, BLACK);
        for (j, col) in self.cols.iter().enumerate() {
            let cx = x0 + j as u32 * cell_w + cell_w / 2;
            c.text_centered(i64::from(cx), i64::from(y0) - 16, &fit_text(col, 1, cell_w - 4), 1, BLACK);
        }
        for (i, row) in self.rows.iter().enumerate() {
            let y = y0 + i as u32 * cell_h;
            c.text_right(i64::from(x0) - 8, i64::from(y + cell_h / 2 - 4), &fit_text(row, 1, row_label_w), 1, BLACK);
            for (j, t) in texts[i].iter().enumerate() {
                let x = x0 + j as u32 * cell_w;
                let fill = match self.values[i][j] {
                    Some(_) if self.grey_diagonal && i == j => MISSING,
                    Some(v) => self.colour(v),
                    None => MISSING,
                };
                c.fill_rect(i64::from(x), i64::from(y), cell_w, cell_h, fill);
                c.text_centered(i64::from(x + cell_w / 2), i64::from(y + cell_h / 2 - 4), t, 1, text_on(fill));
            }
        }
        for k in 0..=self.cols.len() as u32 {
            c.fill_rect(i64::from(x0 + k * cell_w), i64::from(y0), 1, gh, WHITE);
        }
        for k in 0..=self.rows.len() as u32 {
            c.fill_rect(i64::from(x0), i64::from(y0 + k * cell_h), gw, 1, WHITE);
        }

        let bx = x0 + gw + 30;
        let (lo, hi) = self.bounds();
        for y in 0..bar_h {
            let t = 1.0 - f64::from(y) / f64::from((bar_h - 1).max(1));
            c.fill_rect(i64::from(bx), i64::from(y0 + y), 20, 1, viridis(t));
        }
        c.stroke_rect(i64::from(bx) - 1, i64::from(y0) - 1, 22, bar_h + 2, DARK_GREY);
        let ticks: Vec<f64> = if self.log_scale && lo > 0.0 {
            (0..5).map(|k| (lo.ln() + (hi.ln() - lo.ln()) * f64::from(k) / 4.0).exp()).collect()
        } else {
            let (_, t) = nice_ticks(lo, hi, 4);
            t.into_iter().filter(|v| *v >= lo - 1e-9 && *v <= hi + 1e-9).collect()
        };
        let step = if self.log_scale { 0.0 } else { nice_ticks(lo, hi, 4).0 };
        for v in ticks {
            let y = y0 + ((1.0 - self.position(v)) * f64::from(bar_h - 1)).round() as u32;
            c.fill_rect(i64::from(bx + 20), i64::from(y), 5, 1, DARK_GREY);
            let label = if self.log_scale { format_value(v) } else { tick_label(v, step) };
            c.text(i64::from(bx + 28), i64::from(y) - 4, &label, 1, DARK_GREY);
        }
        c.text(i64::from(bx), i64::from(y0) - 16, &scale_label, 1, BLACK);
        c
    }
}

/// The evaluation domain of a task: the part after the last `/` (`perplexity/python` -> `python`).
pub fn task_domain(task: &str) -> &str {
    task.rsplit('/').next().unwrap_or(task)
}

/// Builds a heatmap of `metric` from results artifacts: rows = calibration (the
/// result's mask, `dense` when none; `dense` first), columns = evaluation domain.
///
/// Refuses two different values for the same cell, and files without the metric.
pub fn results_heatmap(results: &[PathBuf], metric: &str) -> Result<Heatmap, AnalyzeError> {
    let mut rows: Vec<String> = Vec::new();
    let mut cols: Vec<String> = Vec::new();
    let mut cells: HashMap<(String, String), (f64, PathBuf)> = HashMap::new();
    let mut metrics_seen: Vec<String> = Vec::new();
    for path in results {
        let (_, result_rows) = read_results(&existing(path, "results artifact")?)?;
        for r in result_rows {
            if r.metric != metric {
                if !metrics_seen.contains(&r.metric) {
                    metrics_seen.push(r.metric.clone());
                }
                continue;
            }
            let row = r.mask.clone().unwrap_or_else(|| "dense".to_string());
            let col = task_domain(&r.task).to_string();
            if let Some((v, first)) = cells.get(&(row.clone(), col.clone())) {
                if *v != r.value {
                    return Err(AnalyzeError::Invalid(format!(
                        "two {metric} values for calibration `{row}` on `{col}`: {v} in {} and {} in {}",
                        first.display(),
                        r.value,
                        path.display()
                    )));
                }
                continue;
            }
            if !rows.contains(&row) {
                rows.push(row.clone());
            }
            if !cols.contains(&col) {
                cols.push(col.clone());
            }
            cells.insert((row, col), (r.value, path.clone()));
        }
    }
    if cells.is_empty() {
        return Err(AnalyzeError::Invalid(format!(
            "no result with metric `{metric}` in {} file(s); metrics found: [{}]",
            results.len(),
            metrics_seen.join(", ")
        )));
    }
    if let Some(i) = rows.iter().position(|r| r == "dense") {
        let dense = rows.remove(i);
        rows.insert(0, dense);
    }
    let values: Vec<Vec<Option<f64>>> =
        rows.iter().map(|r| cols.iter().map(|c| cells.get(&(r.clone(), c.clone())).map(|v| v.0)).collect()).collect();
    Ok(metric_heatmap(metric, rows, cols, values))
}

/// A heatmap of `metric` by calibration (rows) and evaluation domain (columns), log-coloured when the values span over 10x.
pub fn metric_heatmap(metric: &str, rows: Vec<String>, cols: Vec<String>, values: Vec<Vec<Option<f64>>>) -> Heatmap {
    let vals: Vec<f64> = values.iter().flatten().flatten().copied().collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Heatmap {
        title: format!("{metric} by calibration and evaluation domain"),
        subtitle: format!("rows: calibration (mask), columns: evaluation domain; lower {metric} is better"),
        row_axis: "calibration".to_string(),
        col_axis: "evaluation domain".to_string(),
        rows,
        cols,
        values,
        scale_label: metric.to_string(),
        log_scale: lo > 0.0 && hi / lo > 10.0,
        range: None,
        decimals: None,
        grey_diagonal: false,
    }
}

/// A heatmap of each task's change against the dense model (score minus the
/// dense score) by calibration source (rows) and task (columns), on a scale
/// centred at no change.
pub fn task_change_heatmap(rows: Vec<String>, cols: Vec<String>, values: Vec<Vec<Option<f64>>>) -> Heatmap {
    let largest = values.iter().flatten().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    let bound = if largest > 0.0 { largest } else { 1.0 };
    Heatmap {
        title: "Task scores against the dense model".to_string(),
        subtitle: "rows: calibration source (mask), columns: task and metric; value: score minus the dense score".to_string(),
        row_axis: "calibration".to_string(),
        col_axis: "task".to_string(),
        rows,
        cols,
        values,
        scale_label: "change".to_string(),
        log_scale: false,
        range: Some((-bound, bound)),
        decimals: None,
        grey_diagonal: false,
    }
}

/// The mask names of jaccard rows, in order of first appearance.
pub fn mask_names(rows: &[JaccardRow]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        for n in [&r.mask_a, &r.mask_b] {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
}

/// The whole-model distance of masks `a` and `b` (0 for a mask with itself).
pub fn whole_model_distance(rows: &[JaccardRow], a: &str, b: &str) -> Option<f64> {
    if a == b {
        return Some(0.0);
    }
    rows.iter().find(|r| r.module == MODEL_ROW && is_pair(r, a, b)).map(|r| r.jaccard_distance)
}

/// The symmetric matrix of whole-model distances between all masks (0 on the
/// diagonal, drawn grey); the colour scale spans the off-diagonal distances.
pub fn jaccard_heatmap(rows: &[JaccardRow], names: &[String]) -> Heatmap {
    let values: Vec<Vec<Option<f64>>> = names.iter().map(|a| names.iter().map(|b| whole_model_distance(rows, a, b)).collect()).collect();
    let off: Vec<f64> =
        values.iter().enumerate().flat_map(|(i, r)| r.iter().enumerate().filter(move |(j, _)| *j != i).filter_map(|(_, v)| *v)).collect();
    let lo = off.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = off.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let range = if lo.is_finite() && hi > lo { (lo, hi) } else { (0.0, 1.0) };
    Heatmap {
        title: "Whole-model Jaccard distance between masks".to_string(),
        subtitle: "distance = 1 - |pruned by both| / |pruned by either|, over all pruned linear layers".to_string(),
        row_axis: "mask".to_string(),
        col_axis: "mask".to_string(),
        rows: names.to_vec(),
        cols: names.to_vec(),
        values,
        scale_label: "Jaccard distance".to_string(),
        log_scale: false,
        range: Some(range),
        decimals: Some(3),
        grey_diagonal: true,
    }
}

/// Reads a Jaccard artifact and writes its whole-model distance matrix as a PNG.
pub fn jaccard_matrix_figure(jaccard: &Path, out: &Path) -> Result<Heatmap, AnalyzeError> {
    let (_, rows) = artifacts::read_jaccard(&existing(jaccard, "Jaccard artifact")?)?;
    let names = mask_names(&rows);
    if names.is_empty() {
        return Err(AnalyzeError::Invalid(format!("{}: the Jaccard artifact has no rows", jaccard.display())));
    }
    let h = jaccard_heatmap(&rows, &names);
    h.draw().save_png(out)?;
    Ok(h)
}
