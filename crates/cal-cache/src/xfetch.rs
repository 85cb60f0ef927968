//! Probabilistic early refresh ("XFetch", Vattani et al., *Optimal Probabilistic Cache Stampede
//! Prevention*). Pure arithmetic: no clock, no randomness source, no cache access.

/// Whether a caller that found an entry should treat it as a miss and refresh it now.
///
/// `now_ms - delta_ms * beta * ln(rand) >= expires_at_ms`, where `delta_ms` is how long the value
/// took to load, `rand` is uniform in `(0, 1]` and `beta` (default 1.0) scales eagerness. Because
/// `ln(rand) <= 0` the left side is `now` plus a random head start that grows with the load
/// cost, so expensive values are refreshed a little before they expire, by one unlucky caller
/// at a time, while everyone else keeps getting the cached value.
pub fn should_refresh(
    now_ms: u64,
    delta_ms: u64,
    beta: f64,
    expires_at_ms: u64,
    rand: f64,
) -> bool {
    if beta <= 0.0 {
        return now_ms >= expires_at_ms;
    }
    // Guard against rand == 0 (ln(0) = -inf): clamp into (0, 1].
    let rand = rand.clamp(f64::MIN_POSITIVE, 1.0);
    let head_start = -(delta_ms as f64) * beta * rand.ln();
    now_ms as f64 + head_start >= expires_at_ms as f64
}

/// A uniform sample in `(0, 1]` for [`should_refresh`].
pub(crate) fn sample() -> f64 {
    1.0 - rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::should_refresh;

    #[test]
    fn far_from_expiry_never_refreshes() {
        // 10 ms load, 60 s left: even an unlucky draw gives a head start of ~0.4 s.
        assert!(!should_refresh(0, 10, 1.0, 60_000, 1e-18));
    }

    #[test]
    fn expired_always_refreshes() {
        assert!(should_refresh(1_000, 10, 1.0, 1_000, 1.0));
        assert!(should_refresh(1_001, 0, 0.0, 1_000, 0.5));
    }

    #[test]
    fn close_to_expiry_depends_on_draw_and_cost() {
        // 100 ms before expiry, 100 ms load: ln(r) <= -1 (r <= 1/e) refreshes.
        assert!(should_refresh(900, 100, 1.0, 1_000, 0.3));
        assert!(!should_refresh(900, 100, 1.0, 1_000, 0.5));
        // A larger beta refreshes earlier for the same draw.
        assert!(should_refresh(900, 100, 2.0, 1_000, 0.5));
        // beta = 0 disables early refresh.
        assert!(!should_refresh(900, 100, 0.0, 1_000, 1e-9));
    }

    #[test]
    fn zero_draw_is_clamped() {
        assert!(should_refresh(0, 1, 1.0, 100, 0.0));
    }
}
