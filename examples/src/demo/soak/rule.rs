//! The soak's pass rule, a pure function of the samples: after a minute to settle,
//! no figure may grow by more than 10%.
//!
//! The samples from 60 s on make two windows, their first and last third, of at least
//! five samples (50 s) each and not overlapping, so the rule needs 150 s of samples.
//! Each window is summed up by its upper quartile (the value three quarters of its
//! samples are at or below). The figures are bimodal under chaos (a process connected
//! to the broker holds about 8 MiB and 4 descriptors more than one waiting to
//! reconnect, a process killed and restarted starts small, the broker's connections
//! drop to 0 while a fault cuts them), so a median or a mean moves with how many
//! processes the faults happened to catch offline; and a single sample can spike (a
//! 30-minute soak saw a service at 35 MiB once against 23 MiB the rest of the time, and
//! 55 descriptors once against 21), so a peak moves with luck. A leak raises the whole
//! upper mode, and with it the upper quartile. A figure fails when its end quartile is
//! above its baseline quartile by more than 10% and, for counts, by more than 2 (one
//! connection more on a baseline of 3 is noise).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Figure, Sample};

/// Settling time before the baseline.
pub const SETTLE: Duration = Duration::from_secs(60);
/// The shortest sampling over which growth is judged.
pub const LEAST_SPAN: Duration = Duration::from_secs(150);
/// The fewest samples in each window.
pub const WINDOW: usize = 5;
/// Growth allowed, as a share of the baseline.
pub const LIMIT: f64 = 0.10;

/// One figure's baseline and end.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    /// The figure.
    pub figure: Figure,
    /// Upper quartile of the baseline window; `None` if fewer than two of its
    /// samples had it.
    pub baseline: Option<f64>,
    /// Upper quartile of the end window; `None` likewise.
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
    let third = ((samples.len() - first) / 3).max(WINDOW);
    let baseline = &samples[first..first + third];
    let end = &samples[samples.len() - third..];
    let figures: BTreeSet<&Figure> = samples.iter().flat_map(|s| s.figures.keys()).collect();
    Check::Judged(
        figures
            .into_iter()
            .map(|figure| Growth {
                figure: figure.clone(),
                baseline: upper_quartile(baseline, figure),
                end: upper_quartile(end, figure),
            })
            .collect(),
    )
}

/// A figure's upper quartile over a window (nearest rank: of 5 values the 4th
/// lowest), if at least two of the window's samples have it.
fn upper_quartile(window: &[Sample], figure: &Figure) -> Option<f64> {
    let mut values: Vec<u64> = window
        .iter()
        .filter_map(|s| s.figures.get(figure).copied().flatten())
        .collect();
    if values.len() < 2 {
        return None;
    }
    values.sort_unstable();
    let rank = (values.len() * 3).div_ceil(4);
    Some(values[rank - 1] as f64)
}

#[cfg(test)]
mod tests {
    use super::super::Measure;
    use super::*;

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

    /// 5 samples before 60 s, then `baseline` and `end` (5 each: 60-100 s, 110-150 s).
    fn run(baseline: [Option<u64>; 5], end: [Option<u64>; 5]) -> Vec<Option<u64>> {
        let mut values = vec![Some(1); 5];
        values.extend(baseline);
        values.extend(end);
        values
    }

    #[test]
    fn too_short_runs_are_only_reported() {
        let flat = [Some(100); 14];
        assert_eq!(check(&series(&flat, Measure::RssKib)), Check::TooShort);
        assert_eq!(check(&series(&[Some(1); 3], Measure::Fds)), Check::TooShort);
        assert_eq!(check(&[]), Check::TooShort);
        assert!(matches!(
            check(&series(&[Some(100); 15], Measure::RssKib)),
            Check::Judged(_)
        ));
    }

    #[test]
    fn processes_caught_offline_do_not_fail_it() {
        // Connected ~31 MiB, reconnecting ~23 MiB, as a relay in the 3-minute run.
        let mib = |m: u64| Some(m * 1024);
        let growth = judged(
            &run(
                [mib(22), mib(23), mib(31), mib(23), mib(30)],
                [mib(31), mib(23), mib(24), mib(31), mib(30)],
            ),
            Measure::RssKib,
        );
        assert!(!growth.failed(), "{growth:?}");
        assert_eq!(growth.baseline, mib(30).map(|v| v as f64));
    }

    #[test]
    fn one_spike_does_not_fail_it() {
        let growth = judged(
            &run(
                [Some(22); 5],
                [Some(22), Some(22), Some(55), Some(21), Some(22)],
            ),
            Measure::Fds,
        );
        assert_eq!(growth.end, Some(22.0));
        assert!(!growth.failed(), "{growth:?}");
    }

    #[test]
    fn windows_are_thirds_of_longer_runs() {
        // 5 + 30 samples: windows of 10; the growth in the middle third is not seen.
        let mut values = vec![Some(1); 5];
        values.extend([Some(100); 10]);
        values.extend([Some(200); 10]);
        values.extend([Some(105); 10]);
        let growth = judged(&values, Measure::RssKib);
        assert_eq!((growth.baseline, growth.end), (Some(100.0), Some(105.0)));
        assert!(!growth.failed());
    }

    #[test]
    fn growth_past_ten_percent_fails() {
        let some = |v| Some(v);
        let growth = judged(
            &run(
                [100, 100, 98, 100, 99].map(some),
                [105, 112, 111, 96, 108].map(some),
            ),
            Measure::RssKib,
        );
        assert!(growth.failed(), "{growth:?}");
        assert!((growth.share().unwrap() - 0.11).abs() < 1e-9);
        assert_eq!(growth.figure, Figure::new("relay", Measure::RssKib));
        let ten = judged(&run([Some(100); 5], [Some(110); 5]), Measure::RssKib);
        assert!(!ten.failed());
    }

    #[test]
    fn small_counts_need_more_than_two_more() {
        assert!(!judged(&run([Some(3); 5], [Some(5); 5]), Measure::PgConnections).failed());
        assert!(judged(&run([Some(3); 5], [Some(6); 5]), Measure::PgConnections).failed());
    }

    #[test]
    fn a_figure_missing_from_most_of_a_window_is_not_judged() {
        let growth = judged(
            &run(
                [None, None, None, None, Some(10)],
                [Some(99), None, None, None, None],
            ),
            Measure::Fds,
        );
        assert_eq!((growth.baseline, growth.end), (None, None));
        assert!(!growth.failed());
    }
}
