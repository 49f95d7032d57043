//! A fixed log-linear latency histogram (HDR-like): constant memory however long the run,
//! every recorded value kept to within 1/64 (1.6 %) of its true value.

/// Values below this many nanoseconds get a bucket each; above, each power of two is split
/// into `SUB / 2` equal buckets.
const SUB: u64 = 128;
const SUB_BITS: u32 = 7;
/// 128 exact buckets, then 64 per power of two from 2^7 to 2^63.
const BUCKETS: usize = SUB as usize + (64 - SUB_BITS as usize) * (SUB as usize / 2);

/// Latencies in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    // v has `bits` significant bits; keep the top SUB_BITS of them.
    let bits = 64 - v.leading_zeros();
    let shift = bits - SUB_BITS;
    let mantissa = v >> shift; // in SUB/2 ..< SUB
    SUB as usize + (shift as usize - 1) * (SUB as usize / 2) + (mantissa - SUB / 2) as usize
}

/// The largest value that falls into bucket `i` (so percentiles err on the high side).
fn upper(i: usize) -> u64 {
    if i < SUB as usize {
        return i as u64;
    }
    let j = i - SUB as usize;
    let shift = (j / (SUB as usize / 2)) as u32 + 1;
    let mantissa = (j % (SUB as usize / 2)) as u64 + SUB / 2;
    // `<<` drops the bits shifted out (only the shift amount is checked, and it is <= 57): for
    // the top bucket, 2^7 << 57 is 0 and the bound wraps to u64::MAX, as it should.
    ((mantissa + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    pub fn record(&mut self, nanos: u64) {
        self.counts[index(nanos)] += 1;
        self.total += 1;
        self.sum += u128::from(nanos);
        self.min = self.min.min(nanos);
        self.max = self.max.max(nanos);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The smallest recorded value `v` (to bucket precision) such that at least `p` percent
    /// of the values are `<= v`; never above the exact maximum. Returns: 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }

    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        assert_eq!(index(0), 0);
        assert_eq!(index(127), 127);
        assert_eq!(index(128), 128);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(upper(BUCKETS - 1), u64::MAX);
        for v in (0..2_000_000u64).step_by(7).chain([u64::MAX / 3, 1 << 40]) {
            let i = index(v);
            assert!(upper(i) >= v, "{v} above its bucket");
            assert!(
                i == 0 || upper(i - 1) < v,
                "{v} belongs to an earlier bucket"
            );
            assert!(
                (upper(i) - v) as f64 <= v as f64 / 64.0,
                "{v}: bucket too wide"
            );
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(99.0), 0);
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let within = |got: u64, want: u64| {
            assert!(
                got >= want && got as f64 <= want as f64 * 1.016,
                "{got} vs {want}"
            );
        };
        within(h.percentile(50.0), 500_000);
        within(h.percentile(99.0), 990_000);
        within(h.percentile(99.9), 999_000);
        assert_eq!(h.percentile(100.0), 1_000_000);
        assert_eq!(h.min(), 1000);
        let mut other = Histogram::default();
        other.record(5);
        h.merge(&other);
        assert_eq!((h.total, h.min()), (1001, 5));
    }
}
