//! Scalar value formats of the watch list: durations, sizes and `${VAR}`
//! substitution. Each parser returns a message that says what was expected.

use std::time::Duration;

/// Parses a humantime duration such as `"5m"`, `"1h 30m"` or `"250ms"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|err| {
        format!("invalid duration {text:?} ({err}); expected e.g. \"30s\", \"5m\", \"1h 30m\"")
    })?;
    // Every duration ends up added to a clock reading, which overflows (and
    // panics) for the largest ones; nothing polld waits for is that long.
    if duration > MAX_DURATION {
        return Err(format!(
            "duration {text:?} is longer than {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}

/// The longest duration a watch list may set.
/// 100 years of 365.25 days (humantime's year, so that it prints as one).
const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000);

/// Parses a size: a number of bytes, or a number with `B`, `KiB`, `MiB` or `GiB`.
///
/// Written here rather than taken from a crate because the format accepts
/// binary units only: a decimal `MB` is refused instead of silently meaning
/// 1,000,000 bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let expected = || {
        format!(
            "invalid size {text:?}; expected bytes or a number with KiB, MiB or GiB, e.g. \"8MiB\""
        )
    };
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(expected()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Substitutes `${NAME}` and `${NAME:-default}` from `lookup`; `$${` stands for
/// a literal `${`. On an undefined variable, returns the byte offset of its
/// `${` in `text` and a message.
pub(crate) fn substitute_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
            offset += pos + 3;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            offset += pos + 1;
            continue;
        }
        let Some(close) = after.find('}') else {
            return Err((
                offset + pos,
                "unterminated \"${\"; expected ${NAME}".to_owned(),
            ));
        };
        let inner = &after[2..close];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err((
                offset + pos,
                format!(
                    "invalid variable name {name:?} in \"${{{inner}}}\"; expected letters, digits and _"
                ),
            ));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err((
                    offset + pos,
                    format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"
                    ),
                ));
            }
        }
        rest = &after[close + 1..];
        offset += pos + close + 1;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn sizes_use_binary_units_only() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("8MB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations_beyond_a_century_are_refused() {
        assert_eq!(parse_duration("100years"), Ok(MAX_DURATION));
        let err = parse_duration("101years").unwrap_err();
        assert_eq!(err, "duration \"101years\" is longer than 100years");
        // Would overflow a clock reading (and panic) if accepted.
        assert!(parse_duration("500000000000years").is_err());
    }

    #[test]
    fn env_substitution() {
        assert_eq!(
            substitute_env("Bearer ${TOKEN}", &env).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(
            substitute_env("${NOPE:-x}/${TOKEN}", &env).unwrap(),
            "x/s3cret"
        );
        assert_eq!(substitute_env("$${TOKEN} $5", &env).unwrap(), "${TOKEN} $5");
        assert_eq!(substitute_env("ab${NOPE}", &env).unwrap_err().0, 2);
        assert!(substitute_env("${TOKEN", &env).is_err());
        assert!(substitute_env("${1X}", &env).is_err());
    }
}
