//! Busy-interval arithmetic for free/busy and availability.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A half-open interval `[start, end)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, get_size2::GetSize,
)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Sorts, clips to `[from, to)` and merges overlapping or touching intervals.
pub fn merge_intervals(
    mut v: Vec<Interval>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Interval> {
    v.retain(|i| i.end > from && i.start < to && i.end > i.start);
    for i in &mut v {
        i.start = i.start.max(from);
        i.end = i.end.min(to);
    }
    v.sort();
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for i in v {
        match out.last_mut() {
            Some(last) if i.start <= last.end => last.end = last.end.max(i.end),
            _ => out.push(i),
        }
    }
    out
}

/// The gaps of `[from, to)` not covered by `busy` (which must be merged and clipped).
pub fn free_gaps(busy: &[Interval], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Interval> {
    let mut out = Vec::new();
    let mut cursor = from;
    for b in busy {
        if b.start > cursor {
            out.push(Interval {
                start: cursor,
                end: b.start,
            });
        }
        cursor = cursor.max(b.end);
    }
    if cursor < to {
        out.push(Interval {
            start: cursor,
            end: to,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn h(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, hour, 0, 0).unwrap()
    }
    fn iv(a: u32, b: u32) -> Interval {
        Interval {
            start: h(a),
            end: h(b),
        }
    }

    #[test]
    fn merges_overlapping_touching_and_clips() {
        let merged = merge_intervals(
            vec![iv(9, 10), iv(1, 3), iv(10, 11), iv(2, 4), iv(20, 23)],
            h(2),
            h(22),
        );
        assert_eq!(merged, vec![iv(2, 4), iv(9, 11), iv(20, 22)]);
    }

    #[test]
    fn gaps_are_the_complement() {
        let busy = vec![iv(2, 4), iv(9, 11)];
        assert_eq!(
            free_gaps(&busy, h(0), h(12)),
            vec![iv(0, 2), iv(4, 9), iv(11, 12)]
        );
        assert_eq!(free_gaps(&[], h(0), h(1)), vec![iv(0, 1)]);
        assert_eq!(free_gaps(&[iv(0, 12)], h(0), h(12)), vec![]);
    }
}
