//! The Prometheus text format, written one way for every part of the toolkit.
//!
//! The relay, the inbox consumer and the saga orchestrator each keep their figures
//! in relaxed atomics and write them out when scraped; this module is how they
//! write them, so that names, label escaping and histogram buckets follow one rule.
//! A service that serves several parts on one `/metrics` concatenates their texts:
//! each part names its own metric families, so no family is written twice.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The kind of a metric family, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into cumulative buckets.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines that open a family; the help text has its
/// backslashes and line breaks escaped, as the format wants.
pub fn family(out: &mut String, name: &str, help: &str, kind: Kind) {
    let _ = write!(out, "# HELP {name} ");
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    let _ = writeln!(out, "\n# TYPE {name} {}", kind.as_str());
}

/// Writes one sample of a family, with its labels (values escaped).
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    write_labels(out, labels);
    let _ = writeln!(out, " {value}");
}

/// A family of one unlabelled counter.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, help, Kind::Counter);
    sample(out, name, &[], value);
}

/// A family of one unlabelled gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    family(out, name, help, Kind::Gauge);
    sample(out, name, &[], Float(value));
}

/// A float as the text format spells it: Rust writes `inf` and `NaN`, Prometheus
/// reads `+Inf`, `-Inf` and `NaN`.
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        push_escaped(out, value);
        out.push('"');
    }
    out.push('}');
}

/// A label value as the text format wants it: backslash, quote and newline escaped,
/// so a consumer named by a user cannot break the scrape.
fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A histogram with fixed upper bounds, cheap to update from a hot path.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bounds for durations in seconds, from 1 ms to 10 s.
pub const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Histogram {
    /// An empty histogram with these upper bounds, in increasing order.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts `value` `times` times (a batch's latency, once per message).
    pub fn observe(&self, value: f64, times: u64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(times, Relaxed);
        }
        self.sum_micros
            .fetch_add((value * 1e6) as u64 * times, Relaxed);
        self.count.fetch_add(times, Relaxed);
    }

    /// Writes the buckets, sum and count, with `labels` on every sample. The family's
    /// header is the caller's, once for all the histograms of one name.
    pub fn samples(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.buckets) {
            cumulative += count.load(Relaxed);
            let le = bound.to_string();
            sample(out, &bucket, &with(labels, ("le", &le)), cumulative);
        }
        let count = self.count.load(Relaxed);
        sample(out, &bucket, &with(labels, ("le", "+Inf")), count);
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, count);
    }

    /// A whole unlabelled histogram family.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, help, Kind::Histogram);
        self.samples(out, name, &[]);
    }
}

fn with<'a>(labels: &[(&'a str, &'a str)], last: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut all = labels.to_vec();
    all.push(last);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_and_odd_floats_keep_the_format() {
        let mut out = String::new();
        gauge(&mut out, "g", "a \\ b\nc", f64::INFINITY);
        gauge(&mut out, "h", "x", f64::NAN);
        gauge(&mut out, "i", "x", -0.5);
        assert_eq!(
            out,
            "# HELP g a \\\\ b\\nc\n# TYPE g gauge\ng +Inf\n\
             # HELP h x\n# TYPE h gauge\nh NaN\n\
             # HELP i x\n# TYPE i gauge\ni -0.5\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("consumer", "a\"b\\c\nd")], 1);
        assert_eq!(out, "m{consumer=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn histograms_are_cumulative_with_labels() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        histogram.observe(0.05, 2);
        histogram.observe(0.5, 1);
        histogram.observe(7.0, 1);
        let mut out = String::new();
        histogram.samples(&mut out, "h", &[("q", "x")]);
        assert_eq!(
            out,
            "h_bucket{q=\"x\",le=\"0.1\"} 2\n\
             h_bucket{q=\"x\",le=\"1\"} 3\n\
             h_bucket{q=\"x\",le=\"+Inf\"} 4\n\
             h_sum{q=\"x\"} 7.6\n\
             h_count{q=\"x\"} 4\n"
        );
    }
}
