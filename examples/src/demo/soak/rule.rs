//! The soak's pass rule, a pure function of the samples: after a minute to settle,
//! no figure may grow by more than 10%. Each side of the comparison is a median of
//! three samples, so one sample taken mid-restart (a process just killed by the chaos,
//! a relay reconnecting) cannot make or break it: the median of the three samples
//! from the one at 60 s on is the baseline, the median of the last three samples is the
//! end, and a figure fails when its end is above its baseline by more than 10% and,
//! for counts, by more than 2 (one connection more on a baseline of 3 is noise).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Figure, Sample};

/// Settling time before the baseline.
pub const SETTLE: Duration = Duration::from_secs(60);
/// The shortest sampling over which growth is judged.
pub const LEAST_SPAN: Duration = Duration::from_secs(120);
/// Samples in each window.
pub const WINDOW: usize = 3;
/// Growth allowed, as a share of the baseline.
pub const LIMIT: f64 = 0.10;

/// One figure's baseline and end.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    /// The figure.
    pub figure: Figure,
    /// Median of the baseline window; `None` if fewer than two of its samples had it.
    pub baseline: Option<f64>,
    /// Median of the last window; `None` likewise.
    pub end: Option<f64>,
}

impl Growth {
    /// Whether the figure grew past the rule.
    pub fn failed(&self) -> bool {
        match (self.baseline, self.end) {
            (Some(baseline), Some(end)) => {
                end > baseline * (1.0 + LIMIT) && end - baseline > self.figure.measure.slack()
            }
            _ => false,
        }
    }

    /// The growth as a share of the baseline, when both are known and the baseline is
    /// not 0.
    pub fn share(&self) -> Option<f64> {
        let (baseline, end) = (self.baseline?, self.end?);
        (baseline > 0.0).then(|| (end - baseline) / baseline)
    }
}

/// The rule's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The samples span less than [`LEAST_SPAN`] (or too few follow [`SETTLE`]):
    /// growth is only reported.
    TooShort,
    /// Every figure's growth, failed or not.
    Judged(Vec<Growth>),
}

impl Check {
    /// The figures that grew past the rule.
    pub fn failures(&self) -> Vec<&Growth> {
        match self {
            Check::TooShort => Vec::new(),
            Check::Judged(growths) => growths.iter().filter(|g| g.failed()).collect(),
        }
    }
}

/// Applies the rule to samples in time order.
pub fn check(samples: &[Sample]) -> Check {
    let Some(first) = samples.iter().position(|s| s.at >= SETTLE) else {
        return Check::TooShort;
    };
    let spanned = samples.last().is_some_and(|s| s.at >= LEAST_SPAN);
    if !spanned || first + 2 * WINDOW > samples.len() {
        return Check::TooShort;
    }
    let baseline = &samples[first..first + WINDOW];
    let end = &samples[samples.len() - WINDOW..];
    let figures: BTreeSet<&Figure> = samples.iter().flat_map(|s| s.figures.keys()).collect();
    Check::Judged(
        figures
            .into_iter()
            .map(|figure| Growth {
                figure: figure.clone(),
                baseline: median(baseline, figure),
                end: median(end, figure),
            })
            .collect(),
    )
}

/// The median of a figure over a window, if at least two of its samples have it.
fn median(window: &[Sample], figure: &Figure) -> Option<f64> {
    let mut values: Vec<u64> = window
        .iter()
        .filter_map(|s| s.figures.get(figure).copied().flatten())
        .collect();
    values.sort_unstable();
    match values.len() {
        0 | 1 => None,
        n if n % 2 == 1 => Some(values[n / 2] as f64),
        n => Some((values[n / 2 - 1] + values[n / 2]) as f64 / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Measure;
    use super::*;

    fn rss(role: &str) -> Figure {
        Figure::new(role, Measure::RssKib)
    }

    fn series(values: &[Option<u64>], measure: Measure) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| Sample {
                at: Duration::from_secs(10 * (i as u64 + 1)),
                figures: [(Figure::new("relay", measure), *value)].into(),
            })
            .collect()
    }

    fn judged(values: &[Option<u64>], measure: Measure) -> Growth {
        match check(&series(values, measure)) {
            Check::Judged(mut growths) => growths.remove(0),
            Check::TooShort => panic!("judged too short"),
        }
    }

    #[test]
    fn too_short_runs_are_only_reported() {
        let flat = [Some(100); 11];
        assert_eq!(check(&series(&flat, Measure::RssKib)), Check::TooShort);
        assert_eq!(check(&series(&[Some(1); 3], Measure::Fds)), Check::TooShort);
        assert_eq!(check(&[]), Check::TooShort);
    }

    #[test]
    fn steady_and_noisy_figures_pass() {
        // Samples at 10..120 s: the baseline is 60, 70, 80 s, the end 100, 110, 120 s.
        let mut noisy = vec![Some(50); 5];
        noisy.extend([
            Some(100),
            Some(180),
            Some(104),
            Some(90),
            Some(300),
            Some(108),
            Some(109),
        ]);
        let growth = judged(&noisy, Measure::RssKib);
        assert_eq!((growth.baseline, growth.end), (Some(104.0), Some(109.0)));
        assert!(!growth.failed());
    }

    #[test]
    fn growth_past_ten_percent_fails() {
        let mut growing = vec![Some(100); 8];
        growing.extend([Some(105), Some(111), Some(112), Some(115)]);
        let growth = judged(&growing, Measure::RssKib);
        assert!(growth.failed(), "{growth:?}");
        assert!((growth.share().unwrap() - 0.12).abs() < 1e-9);
        assert_eq!(growth.figure, rss("relay"));
    }

    #[test]
    fn small_counts_need_more_than_two_more() {
        let mut counts = vec![Some(3); 8];
        counts.extend([Some(5), Some(5), Some(5), Some(5)]);
        assert!(!judged(&counts, Measure::PgConnections).failed());
        counts.extend([Some(6), Some(6), Some(6)]);
        assert!(judged(&counts, Measure::PgConnections).failed());
    }

    #[test]
    fn a_figure_missing_from_most_of_a_window_is_not_judged() {
        let mut gaps = vec![Some(10); 5];
        gaps.extend([None, None, Some(10), Some(10), Some(99), None, None]);
        let growth = judged(&gaps, Measure::Fds);
        assert_eq!(growth.baseline, None);
        assert_eq!(growth.end, None);
        assert!(!growth.failed());
    }
}
