//! Durations on the command line: `250ms`, `5s`, `1.5s`, `2m`, `1h`, or a
//! bare number of seconds; bounded, so that no `Instant + duration` can
//! overflow; and printed back the same way in messages.

use std::time::Duration;

/// The longest duration any option takes: a year is longer than any
/// timeout, wait or run anyone means, and far enough inside `Instant`'s range
/// that adding it to now never overflows (which panics).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration such as `250ms`, `5s`, `1.5s`, `2m`, `1h` or `30`
/// (seconds), of at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = parse_any(text)?;
    if d > MAX_DURATION {
        return Err(format!("invalid duration `{}`: more than a year", text.trim()));
    }
    Ok(d)
}

/// Parses a duration of any length `Duration` holds.
fn parse_any(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| {
            format!("invalid duration `{text}`: expected a number and a unit, like 500us, 250ms, 5s, 2m (a bare number is seconds)")
        })?;
    let seconds_per_unit = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration `{text}`: unknown unit `{other}` (use us, ms, s, m or h; a bare number is seconds)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("invalid duration `{text}`: out of range"))
}

/// Parses a duration and checks that it lies within `min..=max`: every
/// duration option has a bound that makes sense for it, so that no value
/// can overflow a deadline later.
pub fn parse_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_any(text)?;
    if d < min || d > max {
        return Err(if min.is_zero() {
            format!("must be at most {}", format(max))
        } else {
            format!("must be between {} and {}", format(min), format(max))
        });
    }
    Ok(d)
}

/// Writes `d` as the command line would take it, in the largest unit that
/// shows it whole: `30s`, `1500ms`, `500us`, `24h`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos >= size && nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("365d").ok(), None);
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    }

    #[test]
    fn bounds_and_formats() {
        let (min, max) = (Duration::from_millis(1), Duration::from_secs(3600));
        assert_eq!(parse_within("5s", min, max), Ok(Duration::from_secs(5)));
        assert_eq!(
            parse_within("10000000000000000000s", min, max),
            Err("must be between 1ms and 1h".into())
        );
        assert_eq!(parse_within("0", min, max), Err("must be between 1ms and 1h".into()));
        assert_eq!(
            parse_within("2s", Duration::ZERO, Duration::from_secs(1)),
            Err("must be at most 1s".into())
        );
        assert_eq!(format(Duration::from_micros(500)), "500us");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(32767)), "32767s");
        assert_eq!(format(Duration::from_secs(24 * 3600)), "24h");
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn rejects_what_would_overflow_an_instant() {
        // Durations past a year are refused, so that none overflows an
        // `Instant` when added to now: `--wait 10000000000000000000s` is a
        // usage error, not a panic.
        for huge in ["10000000000000000000s", "8761h", "1e400"] {
            let err = parse_duration(huge).expect_err(huge);
            assert!(err.contains("more than a year") || err.contains("out of range") || err.contains("unit"));
        }
        let _ = std::time::Instant::now() + parse_duration("8760h").expect("a year");
    }

    #[test]
    fn formats_as_typed() {
        for text in ["10s", "1500ms", "250us", "7ns", "0s", "2m", "24h"] {
            assert_eq!(format(parse_duration(text).expect(text)), text);
        }
    }
}
