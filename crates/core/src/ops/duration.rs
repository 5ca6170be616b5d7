//! Durations as settings write them: `90s`, `15m`, `36h`, `14d`, `2w`, or sums like
//! `1d12h`. The policies deserialize them with [`option`], so a config file's text is
//! parsed once, when it is loaded.

use jiff::SignedDuration;

/// The longest duration a setting may name: far enough for any retention or
/// threshold, near enough that a time plus it stays a time.
pub const MAX_SECS: i64 = 100 * 366 * 86_400;

/// What a duration must look like, for error messages.
pub const EXPECTED: &str = "a duration such as 90s, 15m, 36h, 14d or 2w (at most 100 years)";

/// Parses `text`; `None` when it is no duration or longer than [`MAX_SECS`].
pub fn parse(text: &str) -> Option<SignedDuration> {
    let mut total: i64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            ' ' if number.is_empty() => continue,
            _ => return None,
        };
        let n: i64 = number.parse().ok()?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v))?;
        number.clear();
        any = true;
    }
    (number.is_empty() && any && total <= MAX_SECS).then(|| SignedDuration::from_secs(total))
}

/// The text [`parse`] reads back as `d`: whole seconds.
pub fn format(d: SignedDuration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s != 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s != 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `#[serde(with = "…::option")]` for an `Option<SignedDuration>` written as text.
pub mod option {
    use jiff::SignedDuration;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Reads the text form ([`parse`](super::parse)).
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SignedDuration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => super::parse(&text)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("{text:?} is not {}", super::EXPECTED))),
        }
    }

    /// Writes the text form ([`format`](super::format)).
    pub fn serialize<S: Serializer>(
        value: &Option<SignedDuration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&super::format(*d)),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format_back() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("36h", 129_600),
            ("14d", 1_209_600),
            ("2w", 1_209_600),
            ("1d12h", 129_600),
            ("1d 12h", 129_600),
        ] {
            let d = parse(text).unwrap();
            assert_eq!(d.as_secs(), secs, "{text}");
            assert_eq!(parse(&format(d)), Some(d), "{text}");
        }
        for bad in [
            "",
            "12",
            "h",
            "1x",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            "101000000d",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
