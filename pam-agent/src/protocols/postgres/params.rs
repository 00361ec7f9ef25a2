//! Bound parameter values as the journal keeps them: decoded per type (text format as
//! sent; binary format for the common types), cut to a bound, and withheld as
//! `journal.parameters` says (see [`ParameterRecording`]).

use crate::{
    glob,
    govern::ParameterRecording,
    journal::event::Parameter,
    mask::{Masker, sensitive_value},
};

/// The record keeps this many parameters (the rest are counted).
pub const MAX_PARAMETERS: usize = 64;
/// And this many bytes of each value's text.
pub const MAX_VALUE_BYTES: usize = 256;
/// Only this much of a value is decoded and scanned: the record keeps
/// [`MAX_VALUE_BYTES`] of its text, and a detector's match that starts there ends well
/// within this. A huge bound value is then never copied (see [`crate::memory_budget`]).
const DECODED_BYTES: usize = 4 * MAX_VALUE_BYTES;

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// What decides whether a value is withheld in `redacted` mode.
pub struct Redaction<'a> {
    pub mode: ParameterRecording,
    /// The session's masking (its detectors; its column rules' tables).
    pub masker: Option<&'a Masker>,
    /// Tables the statement touches (`schema.table`).
    pub tables: &'a std::collections::BTreeSet<String>,
}

impl Redaction<'_> {
    /// A table of the statement that a column rule names: every value is withheld, as
    /// any could be such a column's (a filter, an inserted row).
    fn masked_table(&self) -> Option<&str> {
        let m = self.masker?;
        self.tables
            .iter()
            .find(|t| {
                m.column_patterns().any(|p| {
                    p.rsplit_once('.')
                        .is_some_and(|(table, _)| glob::matches(table, t))
                })
            })
            .map(String::as_str)
    }
}

/// The parameters of one Bind: `types` are the statement's parameter type OIDs as far
/// as known (declared at Parse or described by the server), `values` (format, bytes).
/// Returns the parameters kept and how many more there were.
pub fn record(
    types: &[u32],
    values: &[(i16, Option<&[u8]>)],
    redaction: &Redaction<'_>,
) -> (Vec<Parameter>, u64) {
    let masked = match redaction.mode {
        ParameterRecording::Redacted => redaction
            .masked_table()
            .map(|t| format!("masked table {t}")),
        _ => None,
    };
    let mut out = Vec::with_capacity(values.len().min(MAX_PARAMETERS));
    for (i, (format, value)) in values.iter().take(MAX_PARAMETERS).enumerate() {
        let oid = types.get(i).copied().unwrap_or(0);
        let Some(bytes) = value else {
            out.push(Parameter {
                ty: type_name(oid),
                value: None,
                redacted: None,
            });
            continue;
        };
        let (ty, text) = decode(oid, *format, &bytes[..bytes.len().min(DECODED_BYTES)]);
        let redacted = match redaction.mode {
            ParameterRecording::None => Some("not recorded".to_owned()),
            ParameterRecording::Full => None,
            ParameterRecording::Redacted => masked.clone().or_else(|| {
                sensitive_value(redaction.masker, text.as_bytes()).map(|d| format!("detector {d}"))
            }),
        };
        out.push(Parameter {
            ty,
            value: redacted.is_none().then(|| cut(text)),
            redacted,
        });
    }
    let more = values.len().saturating_sub(MAX_PARAMETERS) as u64;
    (out, more)
}

/// The name of a type OID the journal names (`None`: unspecified or not one of them).
fn type_name(oid: u32) -> Option<String> {
    let name = match oid {
        0 => return None,
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "float4",
        701 => "float8",
        705 => "unknown",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1114 => "timestamp",
        1184 => "timestamptz",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        other => return Some(format!("oid:{other}")),
    };
    Some(name.to_owned())
}

/// A value as text, and the type it was read as. Text format is the value as sent;
/// binary values of types not decoded here (or of an unknown type) are shown in hex.
fn decode(oid: u32, format: i16, b: &[u8]) -> (Option<String>, String) {
    let ty = type_name(oid);
    if format == 0 {
        return (ty, String::from_utf8_lossy(b).into_owned());
    }
    match binary(oid, b) {
        Some(text) => (ty, text),
        None => (ty, hex(b)),
    }
}

fn binary(oid: u32, b: &[u8]) -> Option<String> {
    let int = |n: usize| -> Option<i64> {
        if b.len() != n {
            return None;
        }
        Some(match n {
            2 => i16::from_be_bytes(b.try_into().ok()?) as i64,
            4 => i32::from_be_bytes(b.try_into().ok()?) as i64,
            _ => i64::from_be_bytes(b.try_into().ok()?),
        })
    };
    Some(match oid {
        16 => match b {
            [0] => "false".into(),
            [1] => "true".into(),
            _ => return None,
        },
        17 => hex(b),
        21 => int(2)?.to_string(),
        23 => int(4)?.to_string(),
        20 => int(8)?.to_string(),
        26 => u32::from_be_bytes(b.try_into().ok()?).to_string(),
        700 => f32::from_be_bytes(b.try_into().ok()?).to_string(),
        701 => f64::from_be_bytes(b.try_into().ok()?).to_string(),
        18 | 19 | 25 | 114 | 705 | 1042 | 1043 => std::str::from_utf8(b).ok()?.to_owned(),
        3802 => match b.split_first() {
            Some((1, rest)) => std::str::from_utf8(rest).ok()?.to_owned(),
            _ => return None,
        },
        2950 => uuid::Uuid::from_slice(b).ok()?.to_string(),
        1082 => {
            let days = int(4)?;
            // The server's infinities; any other day count out of the calendar's range
            // is shown in hex (`Span::days` would panic on it: `try_days`).
            match days {
                d if d == i32::MAX as i64 => return Some("infinity".into()),
                d if d == i32::MIN as i64 => return Some("-infinity".into()),
                _ => {}
            }
            let d = jiff::civil::date(2000, 1, 1)
                .checked_add(jiff::Span::new().try_days(days).ok()?)
                .ok()?;
            d.to_string()
        }
        1114 | 1184 => {
            let micros = int(8)?;
            match micros {
                i64::MAX => return Some("infinity".into()),
                i64::MIN => return Some("-infinity".into()),
                _ => {}
            }
            let t = jiff::Timestamp::from_microsecond(
                micros.checked_add(PG_EPOCH_DAYS.checked_mul(86_400_000_000)?)?,
            )
            .ok()?;
            if oid == 1184 {
                t.to_string()
            } else {
                t.to_zoned(jiff::tz::TimeZone::UTC).datetime().to_string()
            }
        }
        1700 => numeric(b)?,
        _ => return None,
    })
}

/// PostgreSQL's binary numeric: digit count, weight, sign, display scale, then base
/// 10000 digits.
fn numeric(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    if b.len() != 8 + ndigits * 2 || dscale > 1000 || weight.unsigned_abs() > 10_000 {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + i * 2))
        .collect::<Option<_>>()?;
    if digits.iter().any(|&d| d >= 10_000) {
        return None;
    }
    let digit = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i);
            if i == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len().min(MAX_VALUE_BYTES) * 2);
    s.push_str("\\x");
    for x in b.iter().take(MAX_VALUE_BYTES) {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// At most [`MAX_VALUE_BYTES`] of a value (on a character boundary), `…` when cut.
fn cut(mut s: String) -> String {
    if s.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn full() -> Redaction<'static> {
        static NONE: std::sync::LazyLock<BTreeSet<String>> =
            std::sync::LazyLock::new(BTreeSet::new);
        Redaction {
            mode: ParameterRecording::Full,
            masker: None,
            tables: &NONE,
        }
    }

    fn values(r: &Redaction<'_>, types: &[u32], v: &[(i16, Option<&[u8]>)]) -> Vec<String> {
        record(types, v, r)
            .0
            .into_iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p.ty.unwrap_or_default(),
                    p.redacted
                        .map(|r| format!("[{r}]"))
                        .or(p.value)
                        .unwrap_or("NULL".into())
                )
            })
            .collect()
    }

    #[test]
    fn common_types_decode_in_both_formats() {
        let numeric = [0, 2, 0, 0, 0x40, 0, 0, 3, 0, 12, 0x0d, 0x80]; // -12.3456, dscale 3
        let got = values(
            &full(),
            &[23, 20, 16, 25, 2950, 1082, 1114, 701, 1700, 0, 17, 23],
            &[
                (1, Some(&42i32.to_be_bytes())),
                (1, Some(&(-7i64).to_be_bytes())),
                (1, Some(&[1])),
                (1, Some(b"hello")),
                (1, Some(&[0x12; 16])),
                (1, Some(&366i32.to_be_bytes())),
                (1, Some(&86_400_000_000i64.to_be_bytes())),
                (1, Some(&1.5f64.to_be_bytes())),
                (1, Some(&numeric)),
                (1, Some(&[0xde, 0xad])),
                (1, Some(&[0xbe, 0xef])),
                (0, Some(b"17")),
            ],
        );
        assert_eq!(
            got,
            [
                "int4 42",
                "int8 -7",
                "bool true",
                "text hello",
                "uuid 12121212-1212-1212-1212-121212121212",
                "date 2001-01-01",
                "timestamp 2000-01-02T00:00:00",
                "float8 1.5",
                "numeric -12.345",
                " \\xdead",
                "bytea \\xbeef",
                "int4 17",
            ]
        );
        assert_eq!(values(&full(), &[23], &[(1, None)]), ["int4 NULL"]);
        // A lying length is shown in hex, never misread.
        assert_eq!(
            values(&full(), &[23], &[(1, Some(&[1, 2]))]),
            ["int4 \\x0102"]
        );
    }

    #[test]
    fn infinities_and_out_of_range_dates_never_panic() {
        // asyncpg binds date and timestamp infinities in binary; a worker can send any
        // day count.
        let got = values(
            &full(),
            &[1082, 1082, 1082, 1114, 1184, 1114],
            &[
                (1, Some(&i32::MAX.to_be_bytes())),
                (1, Some(&i32::MIN.to_be_bytes())),
                (1, Some(&2_000_000_000i32.to_be_bytes())),
                (1, Some(&i64::MAX.to_be_bytes())),
                (1, Some(&i64::MIN.to_be_bytes())),
                (1, Some(&(i64::MAX - 1).to_be_bytes())),
            ],
        );
        assert_eq!(
            got,
            [
                "date infinity",
                "date -infinity",
                "date \\x77359400",
                "timestamp infinity",
                "timestamptz -infinity",
                "timestamp \\x7ffffffffffffffe",
            ]
        );
    }

    #[test]
    fn long_values_and_many_parameters_are_bounded() {
        let long = "é".repeat(300);
        let (p, more) = record(&[], &[(0, Some(long.as_bytes()))], &full());
        assert_eq!(more, 0);
        let v = p[0].value.as_ref().unwrap();
        assert!(
            v.len() <= MAX_VALUE_BYTES + '…'.len_utf8() && v.ends_with('…'),
            "{v}"
        );
        let many: Vec<(i16, Option<&[u8]>)> = (0..40_000).map(|_| (0, Some(&b"1"[..]))).collect();
        let (p, more) = record(&[], &many, &full());
        assert_eq!(
            (p.len(), more),
            (MAX_PARAMETERS, 40_000 - MAX_PARAMETERS as u64)
        );
    }

    #[test]
    fn redaction_by_detector_and_none_mode() {
        let tables = BTreeSet::new();
        let redacted = Redaction {
            mode: ParameterRecording::Redacted,
            masker: None,
            tables: &tables,
        };
        assert_eq!(
            values(
                &redacted,
                &[25, 25],
                &[(0, Some(b"jane@example.com")), (0, Some(b"shipped"))]
            ),
            ["text [detector email]", "text shipped"]
        );
        let none = Redaction {
            mode: ParameterRecording::None,
            ..redacted
        };
        assert_eq!(
            values(&none, &[25, 25], &[(0, Some(b"shipped")), (0, None)]),
            ["text [not recorded]", "text NULL"]
        );
    }
}
