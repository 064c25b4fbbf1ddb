//! The unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large
//! Language Models Trained on Code": with n samples of which c pass,
//! `pass@k = 1 - C(n-c, k) / C(n, k)`, computed as the product
//! `1 - prod_{i=n-c+1}^{n} (1 - k/i)`, which never forms a binomial coefficient.

/// pass@k of one problem with `n` samples, `c` of them correct; `None` when
/// `k` is 0 or more than `n`, or `c > n`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Option<f64> {
    if k == 0 || k > n || c > n {
        return None;
    }
    if n - c < k {
        return Some(1.0);
    }
    let miss: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    Some(1.0 - miss)
}

/// Mean pass@k over problems given as `(n, c)` pairs, with its standard error
/// (standard deviation of the per-problem values over the square root of their
/// count); `None` when some problem has fewer than `k` samples or there are none.
pub fn mean_pass_at_k(counts: &[(usize, usize)], k: usize) -> Option<(f64, f64)> {
    let values: Option<Vec<f64>> = counts.iter().map(|&(n, c)| pass_at_k(n, c, k)).collect();
    let values = values?;
    if values.is_empty() {
        return None;
    }
    let m = values.len() as f64;
    let mean = values.iter().sum::<f64>() / m;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0) } else { 0.0 };
    Some((mean, (var / m).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binom(n: u64, k: u64) -> f64 {
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    }

    #[test]
    fn hand_computed_values() {
        // n = 10, c = 3: pass@1 = c/n; pass@10 = 1 (every draw of 10 holds a correct one).
        assert!((pass_at_k(10, 3, 1).unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 3, 10), Some(1.0));
        // n = 10, c = 1, k = 5: 1 - C(9,5)/C(10,5) = 1 - 126/252 = 0.5.
        assert!((pass_at_k(10, 1, 5).unwrap() - 0.5).abs() < 1e-12);
        // n = 5, c = 2, k = 2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7.
        assert!((pass_at_k(5, 2, 2).unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 0, 1), Some(0.0));
        assert_eq!(pass_at_k(10, 0, 10), Some(0.0));
        assert_eq!(pass_at_k(5, 1, 6), None);
        assert_eq!(pass_at_k(5, 1, 0), None);
    }

    #[test]
    fn product_form_equals_binomial_form() {
        for n in 1..=30u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let direct = 1.0 - binom(n - c, k) / binom(n, k);
                    let got = pass_at_k(n as usize, c as usize, k as usize).unwrap();
                    assert!((got - direct).abs() < 1e-9, "n={n} c={c} k={k}: {got} vs {direct}");
                }
            }
        }
    }

    #[test]
    fn mean_over_problems() {
        // pass@1 of (10,3) and (10,1): 0.3 and 0.1, mean 0.2, sd sqrt(0.02), se 0.1.
        let (mean, se) = mean_pass_at_k(&[(10, 3), (10, 1)], 1).unwrap();
        assert!((mean - 0.2).abs() < 1e-12);
        assert!((se - 0.1).abs() < 1e-12);
        assert_eq!(mean_pass_at_k(&[(10, 3), (5, 1)], 10), None);
    }
}
