//! `--soak`'s duration: `30s`, `10m`, `2h`, or a bare number of seconds, from 10 s to
//! 24 h.

use std::time::Duration;

/// The shortest soak: one sample.
const SHORTEST: Duration = Duration::from_secs(10);
/// The longest soak.
const LONGEST: Duration = Duration::from_secs(24 * 3_600);

/// Parses a soak duration, for clap.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (count, unit) = text.split_at(digits);
    let count: u64 = count
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 10m or 2h"))?;
    let seconds_each = match unit.trim() {
        "" | "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use s, m or h)"
            ));
        }
    };
    let duration = Duration::from_secs(count.saturating_mul(seconds_each));
    if duration < SHORTEST || duration > LONGEST {
        return Err(format!(
            "a soak lasts from {} s to {} h, not {} s",
            SHORTEST.as_secs(),
            LONGEST.as_secs() / 3_600,
            duration.as_secs()
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bounds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7_200)));
        for bad in [
            "0",
            "0s",
            "9s",
            "25h",
            "",
            "m",
            "1d",
            "1.5m",
            "-1m",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} was accepted");
        }
    }
}
