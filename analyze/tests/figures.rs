//! Figures: valid PNGs of the declared size, and the mask difference drawn where the masks differ.

mod common;

use analyze::figures::{curves_figure, jaccard_matrix_figure, mask_diff_figure, parse_pairs, results_heatmap, DIFFER, KEPT, PRUNED, SAME};
use analyze::raster::lerp;
use analyze::{compute_jaccard, write_table, NamedMask};
use common::{decode_png, rows, write_ppl, write_test_mask, Lcg};
use indicatif::ProgressBar;

const Q0: &str = "model.layers.0.self_attn.q_proj";
const Q1: &str = "model.layers.1.self_attn.q_proj";

fn pixel(rgb: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
    let i = (y as usize * width as usize + x as usize) * 3;
    [rgb[i], rgb[i + 1], rgb[i + 2]]
}

#[test]
fn mask_diff_draws_red_exactly_where_the_masks_differ() {
    let dir = tempfile::tempdir().unwrap();
    let a_bits = rows(&["1010", "0011", "1110"]);
    let b_bits = rows(&["1001", "0111", "0110"]);
    let a = write_test_mask(&dir.path().join("a.parquet"), &[(Q0, a_bits.clone())]);
    let b = write_test_mask(&dir.path().join("b.parquet"), &[(Q0, b_bits.clone())]);
    let out = dir.path().join("figs/diff.png");
    let layout = mask_diff_figure(&NamedMask::from_stem(&a), &NamedMask::from_stem(&b), Q0, &out, 1024).unwrap();
    assert_eq!(layout.block, (1, 1));
    assert!(layout.scale > 1, "a 3 x 4 matrix is upscaled");
    assert_eq!(layout.panel_size, (4 * layout.scale, 3 * layout.scale));
    // Differences by hand: row 0 at columns 2, 3; row 1 at column 1; row 2 at column 0.
    assert_eq!((layout.pruned_a, layout.pruned_b, layout.differing), (5, 5, 4));

    let (w, h, rgb) = decode_png(&out);
    assert_eq!((w, h), layout.size);
    let s = layout.scale;
    let mut red = 0;
    for r in 0..3u32 {
        for c in 0..4u32 {
            let (ka, kb) = (a_bits[r as usize][c as usize], b_bits[r as usize][c as usize]);
            for dy in 0..s {
                for dx in 0..s {
                    let at = |k: usize| pixel(&rgb, w, layout.panels[k].0 + c * s + dx, layout.panels[k].1 + r * s + dy);
                    assert_eq!(at(0), if ka { KEPT } else { PRUNED }, "A at ({r}, {c})");
                    assert_eq!(at(1), if kb { KEPT } else { PRUNED }, "B at ({r}, {c})");
                    assert_eq!(at(2), if ka != kb { DIFFER } else { SAME }, "difference at ({r}, {c})");
                    red += u32::from(at(2) == DIFFER);
                }
            }
        }
    }
    assert_eq!(red, 4 * s * s);
    // Across the band of the panels, nothing but those weights is the difference red.
    let (top, bottom) = (layout.panels[0].1, layout.panels[0].1 + layout.panel_size.1);
    let all_red = (top..bottom).flat_map(|y| (0..w).map(move |x| (x, y))).filter(|&(x, y)| pixel(&rgb, w, x, y) == DIFFER).count();
    assert_eq!(all_red as u32, red);
    assert!(h > bottom);
}

#[test]
fn mask_diff_of_a_large_matrix_shades_blocks_by_their_fractions() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(3);
    let a_bits = rng.matrix(40, 50);
    let mut b_bits = a_bits.clone();
    // Flip the whole top-left 3 x 4 block in B: that block differs everywhere.
    for row in b_bits.iter_mut().take(3) {
        for k in row.iter_mut().take(4) {
            *k = !*k;
        }
    }
    let a = write_test_mask(&dir.path().join("a.parquet"), &[(Q0, a_bits.clone())]);
    let b = write_test_mask(&dir.path().join("b.parquet"), &[(Q0, b_bits)]);
    let out = dir.path().join("diff.png");
    let layout = mask_diff_figure(&NamedMask::from_stem(&a), &NamedMask::from_stem(&b), Q0, &out, 16).unwrap();
    // 40 rows / 16 -> blocks of 3 rows; 50 columns / 16 -> blocks of 4 columns.
    assert_eq!((layout.block, layout.scale), ((3, 4), 1));
    assert_eq!(layout.panel_size, (13, 14));
    assert_eq!(layout.differing, 12);
    let (w, _, rgb) = decode_png(&out);
    let (px, py) = layout.panels[2];
    assert_eq!(pixel(&rgb, w, px, py), DIFFER);
    for (x, y) in [(1, 0), (0, 1), (12, 13)] {
        assert_eq!(pixel(&rgb, w, px + x, py + y), SAME);
    }
    // Panel A's first block: its fraction of pruned weights sets the shade.
    let pruned = (0..3).flat_map(|r| (0..4).map(move |c| (r, c))).filter(|&(r, c)| !a_bits[r][c]).count();
    let (ax, ay) = layout.panels[0];
    assert_eq!(pixel(&rgb, w, ax, ay), lerp(KEPT, PRUNED, pruned as f64 / 12.0));
    // The last block column holds 50 - 12 * 4 = 2 columns, the last block row 40 - 13 * 3 = 1 row.
    let pruned = (0..2).filter(|&c| !a_bits[39][48 + c]).count();
    assert_eq!(pixel(&rgb, w, ax + 12, ay + 13), lerp(KEPT, PRUNED, pruned as f64 / 2.0));
}

#[test]
fn mask_diff_refuses_a_missing_module_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_test_mask(&dir.path().join("a.parquet"), &[(Q0, rows(&["10"]))]);
    let err = mask_diff_figure(&NamedMask::from_stem(&a), &NamedMask::from_stem(&a), Q1, &dir.path().join("x.png"), 64).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("a.parquet") && msg.contains(Q1) && msg.contains(Q0), "{msg}");
}

#[test]
fn curves_and_jaccard_matrix_are_pngs_of_the_declared_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(11);
    let masks: Vec<NamedMask> = ["x", "y", "z"]
        .iter()
        .map(|n| {
            let path = write_test_mask(&dir.path().join(format!("{n}.parquet")), &[(Q0, rng.matrix(8, 16)), (Q1, rng.matrix(8, 16))]);
            NamedMask::from_stem(&path)
        })
        .collect();
    let table = compute_jaccard(&masks, &ProgressBar::hidden()).unwrap();
    let j = dir.path().join("jaccard.parquet");
    write_table(&j, &table, "test").unwrap();

    let out = dir.path().join("curves.png");
    let pairs = parse_pairs("x:y, z:x").unwrap();
    let series = curves_figure(&j, Some(&pairs), &out, 640, 360).unwrap();
    let (w, h, _) = decode_png(&out);
    assert_eq!((w, h), (640, 360));
    assert_eq!(series.len(), 2);
    assert_eq!(series[1].label, "z vs x");
    let l1 = table.rows.iter().find(|r| r.mask_a == "x" && r.mask_b == "z" && r.module == "layer" && r.layer == Some(1)).unwrap();
    assert_eq!(series[1].points, vec![(0, series[1].points[0].1), (1, l1.jaccard_distance)]);
    let all = curves_figure(&j, None, &dir.path().join("all.png"), 800, 500).unwrap();
    assert_eq!(all.len(), 3);
    let err = curves_figure(&j, Some(&parse_pairs("x:w").unwrap()), &dir.path().join("bad.png"), 800, 500).unwrap_err();
    assert!(err.to_string().contains("x:w") && err.to_string().contains("x:y"), "{err}");
    assert!(parse_pairs("x-y").is_err());

    let out = dir.path().join("matrix.png");
    let h = jaccard_matrix_figure(&j, &out).unwrap();
    assert_eq!(h.rows, vec!["x", "y", "z"]);
    let (w, hh, _) = decode_png(&out);
    let canvas = h.draw();
    assert_eq!((w, hh), (canvas.width(), canvas.height()));
    for i in 0..3 {
        assert_eq!(h.values[i][i], Some(0.0));
        for k in 0..3 {
            assert_eq!(h.values[i][k], h.values[k][i]);
        }
    }
    let xy = table.whole_model().find(|r| r.mask_a == "x" && r.mask_b == "y").unwrap().jaccard_distance;
    assert_eq!(h.values[0][1], Some(xy));
}

#[test]
fn perplexity_heatmap_puts_calibrations_in_rows_and_domains_in_columns() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        write_ppl(&dir.path().join("r1.parquet"), Some("py"), "python", 12.5, None),
        write_ppl(&dir.path().join("r2.parquet"), None, "java", 20.0, None),
        write_ppl(&dir.path().join("r3.parquet"), Some("py"), "java", 31.0, Some((30.0, 32.0))),
        write_ppl(&dir.path().join("r4.parquet"), None, "python", 10.0, None),
    ];
    let h = results_heatmap(&files, "perplexity").unwrap();
    assert_eq!(h.rows, vec!["dense", "py"]);
    assert_eq!(h.cols, vec!["python", "java"]);
    assert_eq!(h.values, vec![vec![Some(10.0), Some(20.0)], vec![Some(12.5), Some(31.0)]]);
    assert!(!h.log_scale, "31 / 10 is under the 10x span that switches to a log scale");
    // The lowest value gets the bottom colour of the scale, the highest the top one.
    assert_eq!(h.colour(10.0), analyze::raster::viridis(0.0));
    assert_eq!(h.colour(31.0), analyze::raster::viridis(1.0));
    let out = dir.path().join("heat.png");
    let canvas = h.draw();
    canvas.save_png(&out).unwrap();
    let (w, hh, rgb) = decode_png(&out);
    assert_eq!((w, hh), (canvas.width(), canvas.height()));
    assert_eq!(rgb.len(), (w * hh * 3) as usize);

    let err = results_heatmap(&files, "pass@1").unwrap_err();
    assert!(err.to_string().contains("perplexity"), "{err}");
    let clash = write_ppl(&dir.path().join("r5.parquet"), None, "python", 11.0, None);
    let err = results_heatmap(&[files[3].clone(), clash], "perplexity").unwrap_err();
    assert!(err.to_string().contains("r5.parquet") && err.to_string().contains("r4.parquet"), "{err}");
}
