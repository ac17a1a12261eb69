//! Durations as written in rule files: `30s`, `15m`, `1h`, `1h30m`, `2d`, `500ms`.

use std::time::Duration;

/// Parses a duration; the message says what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the duration is empty; write e.g. `30s`, `15m`, `1h` or `2d`".to_owned());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{trimmed}` has no unit; write e.g. `{trimmed}s` or `{trimmed}m`"
        ));
    }
    let duration = humantime::parse_duration(trimmed).map_err(|err| {
        format!("`{trimmed}` is not a duration ({err}); write e.g. `30s`, `15m`, `1h` or `2d`")
    })?;
    if duration > MAX_DURATION {
        return Err(format!(
            "`{trimmed}` is longer than flowd allows for any duration (10 years)"
        ));
    }
    Ok(duration)
}

/// The longest duration anywhere (rules, settings): added to today's date, anything up to this
/// stays a valid time, so no addition or subtraction of a written duration can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("15").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("1000000years")
                .unwrap_err()
                .contains("longer than flowd allows")
        );
        assert!(parse_duration("10y").is_ok());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
