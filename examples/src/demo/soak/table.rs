//! The soak's series as files in the run's folder, `soak.csv` (one column per figure)
//! and `soak.md` (one row per sample, one column per role; then each figure's growth),
//! and the summary printed at the end.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use super::rule::{Check, Growth, LEAST_SPAN, LIMIT, SETTLE, WINDOW};
use super::{Figure, Measure, Sample};

/// Every figure of the samples, by role and then measure.
fn figures(samples: &[Sample]) -> BTreeSet<Figure> {
    samples
        .iter()
        .flat_map(|s| s.figures.keys().cloned())
        .collect()
}

/// Every role, in the order of the figures.
fn roles(samples: &[Sample]) -> Vec<String> {
    let mut roles: Vec<String> = figures(samples).into_iter().map(|f| f.role).collect();
    roles.dedup();
    roles
}

fn value(sample: &Sample, role: &str, measure: Measure) -> Option<u64> {
    sample
        .figures
        .get(&Figure::new(role, measure))
        .copied()
        .flatten()
}

fn shown(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `soak.csv`: `seconds` and then `role.measure` columns; an empty cell where a figure
/// could not be read.
pub fn csv(samples: &[Sample]) -> String {
    let figures = figures(samples);
    let mut out = String::from("seconds");
    for figure in &figures {
        let _ = write!(out, ",{}.{}", figure.role, figure.measure.column());
    }
    out.push('\n');
    for sample in samples {
        let _ = write!(out, "{:.1}", sample.at.as_secs_f64());
        for figure in &figures {
            let cell = sample.figures.get(figure).copied().flatten();
            let _ = write!(out, ",{}", cell.map(|v| v.to_string()).unwrap_or_default());
        }
        out.push('\n');
    }
    out
}

/// One role's cell: `RSS MiB / fds / AMQP connections` for a process, the count for a
/// database, `connections / channels` for the broker.
fn cell(sample: &Sample, role: &str) -> String {
    let rss = value(sample, role, Measure::RssKib);
    if sample
        .figures
        .contains_key(&Figure::new(role, Measure::RssKib))
    {
        let mib = rss.map_or_else(
            || "-".to_owned(),
            |kib| format!("{:.1}", kib as f64 / 1024.0),
        );
        let fds = shown(value(sample, role, Measure::Fds));
        let amqp = shown(value(sample, role, Measure::AmqpConnections));
        return format!("{mib} / {fds} / {amqp}");
    }
    if role == "broker" {
        let connections = shown(value(sample, role, Measure::BrokerConnections));
        return format!(
            "{connections} / {}",
            shown(value(sample, role, Measure::BrokerChannels))
        );
    }
    shown(value(sample, role, Measure::PgConnections))
}

/// `soak.md`: the series, then the growth of each figure.
pub fn markdown(samples: &[Sample], check: &Check) -> String {
    let roles = roles(samples);
    let mut out = String::from(
        "# Soak samples\n\nProcesses: RSS MiB / open fds / connections to RabbitMQ (through the \
         process's proxy). Databases: PostgreSQL connections. Broker: connections / channels \
         in the run's vhost. `-`: not read (process down, broker restarting).\n\n| s |",
    );
    for role in &roles {
        let _ = write!(out, " {role} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(roles.len()));
    out.push('\n');
    for sample in samples {
        let _ = write!(out, "| {:.0} |", sample.at.as_secs_f64());
        for role in &roles {
            let _ = write!(out, " {} |", cell(sample, role));
        }
        out.push('\n');
    }
    out.push_str("\n# Growth\n\n");
    out.push_str(&verdict(check));
    out.push('\n');
    if let Check::Judged(growths) = check {
        out.push_str(
            "\n| role | figure | baseline | end | growth | |\n|---|---|---|---|---|---|\n",
        );
        for growth in growths {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                growth.figure.role,
                growth.figure.measure.column(),
                number(growth.baseline),
                number(growth.end),
                percent(growth),
                if growth.failed() { "FAILED" } else { "ok" }
            );
        }
    }
    out
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

fn percent(growth: &Growth) -> String {
    growth
        .share()
        .map_or_else(|| "-".to_owned(), |s| format!("{:+.1}%", s * 100.0))
}

/// The rule and its outcome, in a sentence or a list of failures.
pub fn verdict(check: &Check) -> String {
    match check {
        Check::TooShort => format!(
            "growth not judged: the check needs at least {} s of samples ({} after the first \
             {} s); figures reported only",
            LEAST_SPAN.as_secs(),
            2 * WINDOW,
            SETTLE.as_secs()
        ),
        Check::Judged(growths) => {
            let failures: Vec<String> = growths
                .iter()
                .filter(|g| g.failed())
                .map(|g| {
                    format!(
                        "{} {} grew from {} to {} ({})",
                        g.figure.role,
                        g.figure.measure.column(),
                        number(g.baseline),
                        number(g.end),
                        percent(g)
                    )
                })
                .collect();
            let rule = format!(
                "the upper quartile of the last third of the samples from {} s on (at least \
                 {WINDOW}) against that of the first third; more than {:.0}% (and, for counts, more \
                 than 2) fails",
                SETTLE.as_secs(),
                LIMIT * 100.0
            );
            if failures.is_empty() {
                format!("no figure grew ({} judged; {rule})", growths.len())
            } else {
                format!("GROWTH: {} ({rule})", failures.join("; "))
            }
        }
    }
}

/// One line for a sample while the run goes on: total RSS and fds of the fleet,
/// PostgreSQL connections, broker connections and channels.
pub fn brief(sample: &Sample) -> String {
    let total = |measure: Measure| -> u64 {
        sample
            .figures
            .iter()
            .filter(|(f, _)| f.measure == measure)
            .filter_map(|(_, v)| *v)
            .sum()
    };
    format!(
        "fleet RSS {:.1} MiB, {} fds; PostgreSQL connections {}; broker connections {}, \
         channels {}",
        total(Measure::RssKib) as f64 / 1024.0,
        total(Measure::Fds),
        total(Measure::PgConnections),
        shown(value(sample, "broker", Measure::BrokerConnections)),
        shown(value(sample, "broker", Measure::BrokerChannels))
    )
}

/// Writes `soak.csv` and `soak.md` into `folder`.
pub fn write(folder: &Path, samples: &[Sample], check: &Check) -> std::io::Result<()> {
    std::fs::write(folder.join("soak.csv"), csv(samples))?;
    std::fs::write(folder.join("soak.md"), markdown(samples, check))
}

/// The summary printed at the end: each role's figures at the baseline and the end.
pub fn summary(samples: &[Sample], check: &Check) -> String {
    let mut out = format!("soak: {} samples, every 10 s\n", samples.len());
    if let Check::Judged(growths) = check {
        for role in roles(samples) {
            let line: Vec<String> = growths
                .iter()
                .filter(|g| g.figure.role == role)
                .map(|g| {
                    format!(
                        "{} {} -> {} ({})",
                        g.figure.measure.column(),
                        number(g.baseline),
                        number(g.end),
                        percent(g)
                    )
                })
                .collect();
            let _ = writeln!(out, "  {role:<18} {}", line.join(", "));
        }
    } else if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let _ = writeln!(
            out,
            "  first ({:.0} s): {}",
            first.at.as_secs_f64(),
            brief(first)
        );
        let _ = writeln!(
            out,
            "  last ({:.0} s): {}",
            last.at.as_secs_f64(),
            brief(last)
        );
    }
    out.push_str(&verdict(check));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::rule::check;
    use super::*;

    fn sample(at: u64, rss: Option<u64>) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            figures: [
                (Figure::new("order-relay", Measure::RssKib), rss),
                (Figure::new("order-relay", Measure::Fds), Some(20)),
                (
                    Figure::new("order-relay", Measure::AmqpConnections),
                    Some(1),
                ),
                (Figure::new("order-db", Measure::PgConnections), Some(7)),
                (Figure::new("broker", Measure::BrokerConnections), Some(9)),
                (Figure::new("broker", Measure::BrokerChannels), None),
            ]
            .into(),
        }
    }

    #[test]
    fn files_have_a_column_per_figure_and_a_row_per_sample() {
        let samples = [sample(10, Some(2048)), sample(20, None)];
        let csv = csv(&samples);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "seconds,broker.connections,broker.channels,order-db.pg_connections,\
             order-relay.rss_kib,order-relay.fds,order-relay.amqp_connections"
        );
        assert_eq!(lines[1], "10.0,9,,7,2048,20,1");
        assert_eq!(lines[2], "20.0,9,,7,,20,1");
        let md = markdown(&samples, &check(&samples));
        assert!(
            md.contains("| s | broker | order-db | order-relay |"),
            "{md}"
        );
        assert!(md.contains("| 10 | 9 / - | 7 | 2.0 / 20 / 1 |"), "{md}");
        assert!(md.contains("growth not judged"), "{md}");
    }

    #[test]
    fn a_failure_names_the_role_and_figure() {
        let samples: Vec<Sample> = (1..=15)
            .map(|i| sample(10 * i, Some(if i > 12 { 3_000 } else { 2_000 })))
            .collect();
        let said = verdict(&check(&samples));
        assert!(
            said.contains("GROWTH: order-relay rss_kib grew from 2000 to 3000 (+50.0%)"),
            "{said}"
        );
        assert!(summary(&samples, &check(&samples)).contains("order-relay"));
    }
}
