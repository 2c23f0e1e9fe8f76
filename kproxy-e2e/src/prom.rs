//! Reading a proxy's `/metrics` text (Prometheus exposition format) the
//! way a dashboard does: a histogram's buckets summed over its label sets,
//! the difference between two scrapes, and quantiles interpolated within
//! a bucket as PromQL's `histogram_quantile` does.

/// A cumulative histogram: `(upper bound, observations at or below it)`
/// in ascending bound order, the last bound `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)`, ascending.
    pub buckets: Vec<(f64, f64)>,
    /// The sum of every observation.
    pub sum: f64,
    /// How many observations there were.
    pub count: f64,
}

/// The value of a sample line `name{labels} value` or `name value` whose
/// metric name is exactly `name`; `None` for any other line.
fn sample<'a>(line: &'a str, name: &str) -> Option<(&'a str, f64)> {
    let rest = line.strip_prefix(name)?;
    let (labels, value) = match rest.strip_prefix('{') {
        Some(inner) => inner.split_once('}')?,
        None if rest.starts_with(' ') => ("", rest),
        None => return None,
    };
    let value = value.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    Some((labels, value))
}

/// The value of label `key` in a label list `a="x",b="y"`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| pair.trim().strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
}

/// The sum over every label set of the gauge or counter `name` (0 when
/// absent).
pub fn value(text: &str, name: &str) -> f64 {
    text.lines().filter_map(|l| sample(l, name)).map(|(_, v)| v).sum()
}

/// The histogram `name`, its label sets (IP families, say) added up
/// bucket by bucket; empty when absent.
pub fn histogram(text: &str, name: &str) -> Histogram {
    let mut h = Histogram { buckets: Vec::new(), sum: value(text, &format!("{name}_sum")), count: value(text, &format!("{name}_count")) };
    for (labels, v) in text.lines().filter_map(|l| sample(l, &format!("{name}_bucket"))) {
        let Some(le) = label(labels, "le").and_then(|le| if le == "+Inf" { Some(f64::INFINITY) } else { le.parse().ok() }) else { continue };
        match h.buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += v,
            None => h.buckets.push((le, v)),
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    h
}

impl Histogram {
    /// What was observed after `earlier` (a scrape of the same process).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| earlier.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
        Histogram {
            buckets: self.buckets.iter().map(|&(le, c)| (le, c - before(le))).collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// Adds `other`'s observations (another node's) to these.
    pub fn add(&mut self, other: &Histogram) {
        for &(le, c) in &other.buckets {
            match self.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, mine)) => *mine += c,
                None => self.buckets.push((le, c)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The mean observation; `None` without observations.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile (0–1), interpolated linearly within its bucket
    /// (from the bucket below's bound, or 0); a quantile in the `+Inf`
    /// bucket is the highest finite bound. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|(_, c)| *c).filter(|c| *c > 0.0)?;
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let within = if c > lower.1 { (rank - lower.1) / (c - lower.1) } else { 1.0 };
                return Some(lower.0 + (le - lower.0) * within);
            }
            lower = (le, c);
        }
        Some(lower.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP kubeproxy_network_programming_duration_seconds In Cluster Network Programming Latency in seconds
# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.25\"} 6
kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.5\"} 8
kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"+Inf\"} 10
kubeproxy_network_programming_duration_seconds_sum{ip_family=\"IPv4\"} 3.5
kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"} 10
kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv6\",le=\"0.25\"} 2
kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv6\",le=\"0.5\"} 2
kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv6\",le=\"+Inf\"} 2
kubeproxy_network_programming_duration_seconds_sum{ip_family=\"IPv6\"} 0.1
kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv6\"} 2
kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7e9
kubeproxy_sync_proxy_rules_last_timestamp_seconds_total 3
";

    #[test]
    fn label_sets_are_added_bucket_by_bucket() {
        let h = histogram(TEXT, "kubeproxy_network_programming_duration_seconds");
        assert_eq!(h.buckets, vec![(0.25, 8.0), (0.5, 10.0), (f64::INFINITY, 12.0)]);
        assert_eq!((h.sum, h.count), (3.6, 12.0));
        assert_eq!(histogram(TEXT, "no_such_metric"), Histogram::default());
    }

    #[test]
    fn a_name_matches_only_itself() {
        assert_eq!(value(TEXT, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"), 1.7e9);
        assert_eq!(value(TEXT, "kubeproxy_sync_proxy_rules_last_timestamp"), 0.0);
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let h = histogram(TEXT, "kubeproxy_network_programming_duration_seconds");
        // Rank 6 of 12 is 6/8 of the way into the first bucket (0–0.25).
        assert_eq!(h.quantile(0.5), Some(0.1875));
        // Rank 9 of 12: half-way through 0.25–0.5.
        assert_eq!(h.quantile(0.75), Some(0.375));
        // In +Inf: the highest finite bound.
        assert_eq!(h.quantile(0.99), Some(0.5));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn the_difference_of_two_scrapes_is_what_came_between() {
        let earlier = histogram(TEXT, "kubeproxy_network_programming_duration_seconds");
        let mut later = earlier.clone();
        later.add(&Histogram { buckets: vec![(0.25, 0.0), (0.5, 1.0), (f64::INFINITY, 1.0)], sum: 0.4, count: 1.0 });
        let between = later.since(&earlier);
        assert_eq!(between.buckets, vec![(0.25, 0.0), (0.5, 1.0), (f64::INFINITY, 1.0)]);
        assert_eq!(between.count, 1.0);
        assert!((between.mean().unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(between.quantile(0.5), Some(0.375));
    }
}
