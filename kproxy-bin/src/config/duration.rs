//! Go's `time.Duration` as Kubernetes configuration files spell it:
//! `30s`, `15m0s`, `2h22m`, `1.5s`, `-1s`, `0`. Parsing follows Go's
//! `time.ParseDuration` (signed nanoseconds in 64 bits: anything larger is
//! an error, never an overflow), and [`GoDuration`]'s `Display` follows
//! `Duration.String()`, so a written configuration reads as upstream's.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A signed duration in nanoseconds, as Go's `time.Duration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub i64);

/// Why a duration did not parse: Go's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time: invalid duration {0:?}")]
pub struct InvalidDuration(pub String);

impl GoDuration {
    /// Whole seconds.
    pub const fn from_secs(seconds: i64) -> Self {
        GoDuration(seconds * 1_000_000_000)
    }

    /// The duration when it is not negative.
    pub fn to_std(self) -> Option<Duration> {
        u64::try_from(self.0).ok().map(Duration::from_nanos)
    }

    /// True for zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses Go's duration syntax.
    pub fn parse(text: &str) -> Result<Self, InvalidDuration> {
        let bad = || InvalidDuration(text.to_string());
        let (negative, mut rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        if rest == "0" {
            return Ok(GoDuration(0));
        }
        if rest.is_empty() {
            return Err(bad());
        }
        // Nanoseconds, exactly; at most 2^63 (the magnitude of i64::MIN).
        let limit: u128 = 1 << 63;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            let (int_part, after) = rest.split_at(int_len);
            let (frac_part, after) = match after.strip_prefix('.') {
                Some(f) => {
                    let n = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                    f.split_at(n)
                }
                None => ("", after),
            };
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(bad());
            }
            let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let scale: u128 = match unit {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(bad()),
            };
            // Digits beyond what can matter are dropped before they overflow.
            let mut whole: u128 = 0;
            for d in int_part.bytes() {
                whole = whole * 10 + u128::from(d - b'0');
                if whole > limit {
                    return Err(bad());
                }
            }
            let mut value = whole.checked_mul(scale).ok_or_else(bad)?;
            let mut divisor: u128 = 1;
            let mut fraction: u128 = 0;
            for d in frac_part.bytes().take(20) {
                fraction = fraction * 10 + u128::from(d - b'0');
                divisor *= 10;
            }
            value += fraction * scale / divisor;
            total = total.checked_add(value).ok_or_else(bad)?;
            if total > limit {
                return Err(bad());
            }
            rest = after;
        }
        if !negative && total == limit {
            return Err(bad());
        }
        let magnitude = total as i128;
        Ok(GoDuration(if negative { -magnitude } else { magnitude } as i64))
    }
}

/// The digits of `v / 10^precision`'s fraction, trimmed of trailing zeros,
/// with the dot (nothing when the fraction is zero).
fn fraction(v: u64, precision: u32) -> (String, u64) {
    let scale = 10u64.pow(precision);
    let frac = v % scale;
    let digits = if frac == 0 {
        String::new()
    } else {
        let text = format!("{frac:0width$}", width = precision as usize);
        format!(".{}", text.trim_end_matches('0'))
    };
    (digits, v / scale)
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let u = self.0.unsigned_abs();
        if u == 0 {
            return f.write_str("0s");
        }
        if u < 1_000_000_000 {
            let (precision, unit) = match u {
                0..=999 => (0, "ns"),
                1_000..=999_999 => (3, "\u{b5}s"),
                _ => (6, "ms"),
            };
            let (frac, whole) = fraction(u, precision);
            return write!(f, "{sign}{whole}{frac}{unit}");
        }
        let (frac, seconds) = fraction(u, 9);
        let minutes = seconds / 60;
        let hours = minutes / 60;
        match (hours, minutes) {
            (0, 0) => write!(f, "{sign}{seconds}{frac}s"),
            (0, m) => write!(f, "{sign}{m}m{}{frac}s", seconds % 60),
            (h, m) => write!(f, "{sign}{h}h{}m{}{frac}s", m % 60, seconds % 60),
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GoDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_go() {
        let secs = |s: i64| GoDuration::from_secs(s);
        assert_eq!(GoDuration::parse("30s"), Ok(secs(30)));
        assert_eq!(GoDuration::parse("2h22m"), Ok(secs(2 * 3600 + 22 * 60)));
        assert_eq!(GoDuration::parse("15m0s"), Ok(secs(900)));
        assert_eq!(GoDuration::parse("1.5s"), Ok(GoDuration(1_500_000_000)));
        assert_eq!(GoDuration::parse(".5s"), Ok(GoDuration(500_000_000)));
        assert_eq!(GoDuration::parse("0"), Ok(GoDuration(0)));
        assert_eq!(GoDuration::parse("-1s"), Ok(secs(-1)));
        assert_eq!(GoDuration::parse("100µs"), Ok(GoDuration(100_000)));
        assert_eq!(GoDuration::parse("2562047h47m16.854775807s"), Ok(GoDuration(i64::MAX)));
        assert_eq!(GoDuration::parse("-2562047h47m16.854775808s"), Ok(GoDuration(i64::MIN)));
        for bad in ["", "s", "10", "10x", "1s2", ".s", "-", "99999999999999999999h", "5000000000000000h", "2562047h47m16.854775808s"] {
            assert_eq!(GoDuration::parse(bad), Err(InvalidDuration(bad.to_string())), "{bad}");
        }
    }

    #[test]
    fn prints_as_go() {
        for (nanos, text) in [
            (0, "0s"),
            (30_000_000_000, "30s"),
            (900_000_000_000, "15m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (86_400_000_000_000, "24h0m0s"),
            (90_000_000_000, "1m30s"),
            (1_500_000_000, "1.5s"),
            (1_500_000, "1.5ms"),
            (100_000, "100µs"),
            (7, "7ns"),
            (-1_000_000_000, "-1s"),
            (i64::MAX, "2562047h47m16.854775807s"),
        ] {
            assert_eq!(GoDuration(nanos).to_string(), text);
            assert_eq!(GoDuration::parse(text), Ok(GoDuration(nanos)), "{text} round-trips");
        }
    }
}
