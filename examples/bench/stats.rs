//! The arithmetic the benches report with: medians and percentiles over
//! runs that all happened (a failed run ends its bench before it gets
//! here, so no figure is taken over fewer runs than it says).

/// The median of `values`: the middle one, or the mean of the two middle
/// ones when there is an even number of them.
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "a median of no runs");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The `q` quantile (0 to 1) of `values` by nearest rank: the value at
/// `round(q × (n − 1))` of them sorted, ties rounded to even.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    assert!(!values.is_empty(), "a percentile of no values");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * (sorted.len() - 1) as f64).round_ties_even() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
