//! Times on the command line: RFC 3339 (`2025-05-01T12:00:00Z`) or an age before now
//! (`90s`, `30m`, `1h`, `7d`, `2w`).

use jiff::Timestamp;

/// Microseconds since the epoch for `text`, relative to `now`.
pub fn parse(text: &str, now: Timestamp) -> Result<i64, String> {
    let text = text.trim();
    if let Some(age) = parse_age(text) {
        return age
            .and_then(|secs| {
                now.as_microsecond()
                    .checked_sub(secs.checked_mul(1_000_000)?)
            })
            .ok_or_else(|| format!("`{text}` is too far in the past"));
    }
    text.parse::<Timestamp>()
        .map(|t| t.as_microsecond())
        .map_err(|_| {
            format!(
                "`{text}` is neither an RFC 3339 time (2025-05-01T12:00:00Z) nor an age like 90s, 30m, 1h, 7d, 2w"
            )
        })
}

/// `Some(None)` when it looks like an age but overflows.
fn parse_age(text: &str) -> Option<Option<i64>> {
    let unit = text.chars().last()?;
    let mult: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse::<i64>().ok().and_then(|n| n.checked_mul(mult)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_rfc3339() {
        let now: Timestamp = "2025-05-01T12:00:00Z".parse().unwrap();
        let hour = 3_600_000_000;
        assert_eq!(parse("1h", now).unwrap(), now.as_microsecond() - hour);
        assert_eq!(parse("2d", now).unwrap(), now.as_microsecond() - 48 * hour);
        assert_eq!(
            parse("2025-05-01T11:00:00Z", now).unwrap(),
            now.as_microsecond() - hour
        );
        assert!(parse("yesterday", now).is_err());
        assert!(parse("h", now).is_err());
        assert!(parse("-1h", now).is_err());
        assert!(parse("99999999999999999w", now).is_err());
        assert!(parse("2025-05-01 11:00", now).is_err());
    }
}
