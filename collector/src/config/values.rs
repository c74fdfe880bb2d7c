//! Value types of the configuration that have a text form: durations
//! (`2s`, `5m`, `1h30m`) and byte sizes (`65536`, `64MiB`).

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Why a duration did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationSyntax {
    /// Nothing was given.
    Empty,
    /// A number has no unit (`2` instead of `2s`).
    MissingUnit,
    /// A unit is not one of ms, s, m, h, d.
    UnknownUnit,
    /// A unit has no number before it, or a character is neither digit nor unit.
    MissingNumber,
    /// The total does not fit.
    TooLarge,
}

impl fmt::Display for DurationSyntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty",
            Self::MissingUnit => "a number needs a unit: ms, s, m, h or d",
            Self::UnknownUnit => "units are ms, s, m, h and d",
            Self::MissingNumber => "expected a number followed by a unit, such as 2s or 1h30m",
            Self::TooLarge => "too large",
        })
    }
}

/// A duration written as one or more `<integer><unit>` parts, units `ms`,
/// `s`, `m`, `h`, `d`: `500ms`, `2s`, `5m`, `1h30m`, `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

const UNITS: [(&str, u64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

impl FromStr for HumanDuration {
    type Err = DurationSyntax;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DurationSyntax::Empty);
        }
        let mut millis: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(DurationSyntax::MissingNumber);
            }
            let (number, after) = rest.split_at(digits);
            let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
            if unit_len == 0 {
                return Err(if after.is_empty() { DurationSyntax::MissingUnit } else { DurationSyntax::MissingNumber });
            }
            let (unit, next) = after.split_at(unit_len);
            let scale = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|&(_, scale)| scale)
                .ok_or(DurationSyntax::UnknownUnit)?;
            let value: u64 = number.parse().map_err(|_err| DurationSyntax::TooLarge)?;
            millis =
                value.checked_mul(scale).and_then(|part| millis.checked_add(part)).ok_or(DurationSyntax::TooLarge)?;
            rest = next;
        }
        Ok(Self(Duration::from_millis(millis)))
    }
}

impl fmt::Display for HumanDuration {
    /// The shortest form that parses back to the same value (sub-millisecond parts are dropped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, scale) in UNITS {
            if millis >= scale {
                write!(f, "{}{unit}", millis / scale)?;
                millis %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|err| de::Error::custom(format_args!("invalid duration {text:?}: {err}")))
    }
}

/// A percentage to one decimal, written `10%` or `1.5%` (the `%` may be left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent {
    /// Tenths of a percent: 15 is 1.5%.
    pub tenths: u32,
}

impl Percent {
    /// As a float: 1.5 for 1.5%.
    pub fn value(self) -> f64 {
        f64::from(self.tenths) / 10.0
    }
}

impl FromStr for Percent {
    type Err = ();

    /// `10%`, `1.5%`, `10`; at most one decimal.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = text.trim().strip_suffix('%').unwrap_or(text.trim()).trim();
        let (whole, tenth) = number.split_once('.').unwrap_or((number, "0"));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || tenth.len() != 1 {
            return Err(());
        }
        let whole: u32 = whole.parse().map_err(|_err| ())?;
        let tenth: u32 = tenth.parse().map_err(|_err| ())?;
        whole.checked_mul(10).and_then(|w| w.checked_add(tenth)).map(|tenths| Self { tenths }).ok_or(())
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tenths % 10 {
            0 => write!(f, "{}%", self.tenths / 10),
            tenth => write!(f, "{}.{tenth}%", self.tenths / 10),
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|()| de::Error::custom(format_args!("invalid percentage {text:?}")))
    }
}

/// Why a byte size did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeSyntax {
    /// Not a number with an optional KiB, MiB or GiB suffix.
    Invalid,
    /// The value does not fit.
    TooLarge,
}

impl fmt::Display for SizeSyntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Invalid => "expected a number of bytes, optionally with KiB, MiB or GiB",
            Self::TooLarge => "too large",
        })
    }
}

/// A number of bytes, written plain (`65536`) or with a binary suffix (`64KiB`, `64MiB`, `1GiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

impl FromStr for ByteSize {
    type Err = SizeSyntax;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, suffix) = text.split_at(digits);
        if number.is_empty() {
            return Err(SizeSyntax::Invalid);
        }
        let scale = match suffix.trim_start() {
            "" | "B" => 1,
            unit => {
                SIZE_UNITS.iter().find(|(name, _)| *name == unit).map(|&(_, scale)| scale).ok_or(SizeSyntax::Invalid)?
            }
        };
        let value: u64 = number.parse().map_err(|_err| SizeSyntax::TooLarge)?;
        value.checked_mul(scale).map(Self).ok_or(SizeSyntax::TooLarge)
    }
}

impl fmt::Display for ByteSize {
    /// With the largest binary suffix that divides it exactly, else plain.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in SIZE_UNITS {
            if self.0 != 0 && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as 65536 or \"64MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_err| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(|err| E::custom(format_args!("invalid size {v:?}: {err}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(text: &str) -> Result<Duration, DurationSyntax> {
        text.parse::<HumanDuration>().map(|d| d.0)
    }

    #[test]
    fn parses_durations() {
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(duration(" 0s "), Ok(Duration::ZERO));
        assert_eq!(duration("1m1m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn rejects_bad_durations() {
        assert_eq!(duration(""), Err(DurationSyntax::Empty));
        assert_eq!(duration("2"), Err(DurationSyntax::MissingUnit));
        assert_eq!(duration("2x"), Err(DurationSyntax::UnknownUnit));
        assert_eq!(duration("2 s"), Err(DurationSyntax::MissingNumber));
        assert_eq!(duration("s"), Err(DurationSyntax::MissingNumber));
        assert_eq!(duration("-1s"), Err(DurationSyntax::MissingNumber));
        assert_eq!(duration("1.5s"), Err(DurationSyntax::MissingNumber));
        assert_eq!(duration("2é"), Err(DurationSyntax::MissingNumber));
        assert_eq!(duration("99999999999999999999s"), Err(DurationSyntax::TooLarge));
        assert_eq!(duration("999999999999999999d"), Err(DurationSyntax::TooLarge));
    }

    #[test]
    fn durations_print_in_their_shortest_form() {
        let show = |ms: u64| HumanDuration(Duration::from_millis(ms)).to_string();
        assert_eq!(show(0), "0s");
        assert_eq!(show(2_000), "2s");
        assert_eq!(show(90_000), "1m30s");
        assert_eq!(show(86_400_000 + 1), "1d1ms");
        assert_eq!(show(1_500), "1s500ms");
        for ms in [0, 1, 999, 1_000, 61_001, 3_600_000, 90_061_001] {
            assert_eq!(duration(&show(ms)), Ok(Duration::from_millis(ms)));
        }
    }

    #[test]
    fn parses_and_prints_sizes() {
        assert_eq!("65536".parse(), Ok(ByteSize(65_536)));
        assert_eq!("64MiB".parse(), Ok(ByteSize(64 << 20)));
        assert_eq!("4 KiB".parse(), Ok(ByteSize(4096)));
        assert_eq!("1GiB".parse(), Ok(ByteSize(1 << 30)));
        assert_eq!("12B".parse(), Ok(ByteSize(12)));
        assert_eq!("64MB".parse::<ByteSize>(), Err(SizeSyntax::Invalid));
        assert_eq!("MiB".parse::<ByteSize>(), Err(SizeSyntax::Invalid));
        assert_eq!("-1".parse::<ByteSize>(), Err(SizeSyntax::Invalid));
        assert_eq!("99999999999GiB".parse::<ByteSize>(), Err(SizeSyntax::TooLarge));
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert_eq!(ByteSize(0).to_string(), "0");
    }
}
