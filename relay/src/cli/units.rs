//! Durations and sizes as flags write them (`500ms`, `5m`, `4MiB`): parsed from the
//! command line, and printed the same way so `--help` shows defaults as flags take them.

use std::fmt;
use std::time::Duration;

/// A duration as flags write it, so a default prints as `1s` or `5m` in `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Human(pub(crate) Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        let unit = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ]
        .into_iter()
        .find(|(size, _)| millis > 0 && millis.is_multiple_of(*size));
        match unit {
            Some((size, name)) => write!(f, "{}{name}", millis / size),
            None => write!(f, "{millis}ms"),
        }
    }
}

/// A size as flags write it, so a default prints as `4MiB` in `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bytes(pub(crate) u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
            .into_iter()
            .find(|(size, _)| self.0 > 0 && self.0.is_multiple_of(*size));
        match unit {
            Some((size, name)) => write!(f, "{}{name}", self.0 / size),
            None => write!(f, "{}", self.0),
        }
    }
}

/// `500ms`, `15s`, `5m`, `2h`, `7d`; a bare number is seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Human, String> {
    let (value, unit) = number_and_unit(text, "a duration like 500ms, 15s, 5m, 2h or 7d")?;
    let millis = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}' (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Human(Duration::from_millis(value.saturating_mul(millis))))
}

/// `1048576`, `512KiB`, `4MiB`, `1GiB` (binary units; `k`, `M`, `G` also accepted).
pub(crate) fn parse_bytes(text: &str) -> Result<Bytes, String> {
    let (value, unit) = number_and_unit(text, "a size like 512KiB or 4MiB")?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}' (use KiB, MiB or GiB)"
            ));
        }
    };
    match value.checked_mul(scale) {
        Some(0) => Err("a batch must be allowed at least 1 byte".to_owned()),
        Some(bytes) => Ok(Bytes(bytes)),
        None => Err(format!("'{text}' is too large")),
    }
}

/// Splits `12ms` into `(12, "ms")`; `what` names the expected form in the error.
fn number_and_unit<'t>(text: &'t str, what: &str) -> Result<(u64, &'t str), String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value = number
        .parse()
        .map_err(|_| format!("'{text}' is not {what}"))?;
    Ok((value, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(
            parse_duration("500ms"),
            Ok(Human(Duration::from_millis(500)))
        );
        assert_eq!(parse_duration("15"), Ok(Human(Duration::from_secs(15))));
        assert_eq!(
            parse_duration("7d"),
            Ok(Human(Duration::from_secs(7 * 86_400)))
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("4MiB"), Ok(Bytes(4 << 20)));
        assert_eq!(parse_bytes("512KiB"), Ok(Bytes(512 << 10)));
        assert_eq!(parse_bytes("1000"), Ok(Bytes(1000)));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("4MB").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }

    #[test]
    fn defaults_print_as_flags_write_them_and_parse_back() {
        for millis in [1, 500, 1_000, 90_000, 300_000, 3_600_000, 86_400_000] {
            let human = Human(Duration::from_millis(millis));
            assert_eq!(parse_duration(&human.to_string()), Ok(human));
        }
        assert_eq!(Human(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!(Bytes(4 << 20).to_string(), "4MiB");
        assert_eq!(parse_bytes(&Bytes(1500).to_string()), Ok(Bytes(1500)));
    }
}
