//! Which PostgreSQL types can hold a masked value, per wire format.
//!
//! A client decodes each column by the type OID in RowDescription, in text and binary format
//! alike: writing `***` into an `int4` column breaks the client as surely as a bad binary value.
//! So a masked value must stay a valid value of the column's type, or become NULL:
//!
//! | type (OID) | text format | binary format | strategies that keep the type valid |
//! |---|---|---|---|
//! | text, varchar, bpchar, name, unknown | UTF-8 | the same UTF-8 bytes | all (bpchar padding is dropped first) |
//! | json | JSON text | the same | all, the masked text written as a JSON string |
//! | jsonb | JSON text | version byte 1 + JSON text | all, as for json |
//! | bytea | `\x` + hex | raw bytes | redact, keyed_hash (bytes of the text) |
//! | int2, int4, int8 | decimal | big-endian | keyed_hash (a non-negative integer from the HMAC) |
//! | uuid | 8-4-4-4-12 hex | 16 bytes | keyed_hash (a version-8 UUID from the HMAC) |
//! | anything else (numeric, dates, inet, arrays, extension types, …) | | | none: NULL |
//!
//! Keyed hashes are computed over the text form of a value whatever the wire format, so a
//! value hashes the same in text and binary results (joins across both still work).

use super::search;
use crate::mask::strategy::{self, KeyedHasher, Masked};
use crate::mask::{Strategy, ValueKind};

/// Wire format of a column, from RowDescription's format code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    /// `None` for codes other than 0 and 1, which the protocol does not define.
    pub fn from_code(code: i16) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }
}

/// How masking sees a column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    Text,
    /// `char(n)`: text padded with spaces, which are not significant.
    Bpchar,
    Json,
    Jsonb,
    Bytea,
    Int2,
    Int4,
    Int8,
    Uuid,
    /// `numeric`: no masked form fits, but content detectors read its digits.
    Numeric,
    Other,
}

/// A column type in one wire format: PostgreSQL's [`ValueKind`]s, one per (class, format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgValue {
    pub class: TypeClass,
    pub format: Format,
}

/// Every [`TypeClass`], in declaration order (the index into [`KINDS`]).
const CLASSES: [TypeClass; 11] = [
    TypeClass::Text,
    TypeClass::Bpchar,
    TypeClass::Json,
    TypeClass::Jsonb,
    TypeClass::Bytea,
    TypeClass::Int2,
    TypeClass::Int4,
    TypeClass::Int8,
    TypeClass::Uuid,
    TypeClass::Numeric,
    TypeClass::Other,
];

/// The plan keeps `&'static dyn ValueKind`s: one static per (class, format).
static KINDS: [PgValue; 22] = {
    let mut out = [PgValue {
        class: TypeClass::Other,
        format: Format::Text,
    }; 22];
    let mut i = 0;
    while i < CLASSES.len() {
        out[2 * i] = PgValue {
            class: CLASSES[i],
            format: Format::Text,
        };
        out[2 * i + 1] = PgValue {
            class: CLASSES[i],
            format: Format::Binary,
        };
        i += 1;
    }
    out
};

/// The kind of the values of a column of type `type_oid` sent in `format`.
pub fn value_kind(type_oid: u32, format: Format) -> &'static PgValue {
    let class = class_of(type_oid);
    &KINDS[2 * class as usize + usize::from(format == Format::Binary)]
}

impl ValueKind for PgValue {
    fn scan_from(&self) -> Option<usize> {
        self.class
            .scannable()
            .then(|| self.class.text_offset(self.format))
    }

    fn still_valid_after_scan(&self, text: &[u8]) -> bool {
        !matches!(self.class, TypeClass::Json | TypeClass::Jsonb) || json_still_valid(text)
    }

    fn searched_whole(&self) -> bool {
        search::searched_whole(self.class)
    }

    fn search_text(&self, value: &[u8], out: &mut Vec<u8>) {
        search::search_text(self.class, self.format, value, out);
    }

    fn write_masked(
        &self,
        strategy: &Strategy,
        value: &[u8],
        hasher: Option<&KeyedHasher>,
        tmp: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Masked {
        write_masked(self.class, self.format, strategy, value, hasher, tmp, out)
    }
}

/// Built-in type OIDs (pg_type.dat); RowDescription reports a domain's base type.
pub fn class_of(type_oid: u32) -> TypeClass {
    match type_oid {
        25 | 1043 | 19 | 705 => TypeClass::Text,
        1042 => TypeClass::Bpchar,
        114 => TypeClass::Json,
        3802 => TypeClass::Jsonb,
        17 => TypeClass::Bytea,
        21 => TypeClass::Int2,
        23 => TypeClass::Int4,
        20 => TypeClass::Int8,
        2950 => TypeClass::Uuid,
        1700 => TypeClass::Numeric,
        _ => TypeClass::Other,
    }
}

impl TypeClass {
    /// Whether content detectors look inside values of this type.
    pub fn scannable(self) -> bool {
        matches!(
            self,
            TypeClass::Text | TypeClass::Bpchar | TypeClass::Json | TypeClass::Jsonb
        )
    }

    /// Bytes before the text of a value (jsonb's binary version byte).
    pub fn text_offset(self, format: Format) -> usize {
        usize::from(self == TypeClass::Jsonb && format == Format::Binary)
    }
}

/// Appends the value masked by a column rule, valid for its type, or says NULL.
/// `tmp` is scratch space reused across values.
pub fn write_masked(
    class: TypeClass,
    format: Format,
    strategy: &Strategy,
    value: &[u8],
    hasher: Option<&KeyedHasher>,
    tmp: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Masked {
    if *strategy == (Strategy::Null {}) {
        return Masked::Null;
    }
    match class {
        TypeClass::Text => strategy::write_text(strategy, value, hasher, out),
        // Padding is not part of the value: `partial` would otherwise keep only spaces, and a
        // hash would differ from the same text in a varchar column.
        TypeClass::Bpchar => {
            let end = value.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
            strategy::write_text(strategy, &value[..end], hasher, out)
        }
        TypeClass::Json | TypeClass::Jsonb => {
            let json = value.get(class.text_offset(format)..).unwrap_or_default();
            // Mask the string itself when the value is a JSON string, the whole text otherwise.
            let inner = serde_json::from_slice::<String>(json).ok();
            tmp.clear();
            let text = inner.as_deref().map_or(json, str::as_bytes);
            if strategy::write_text(strategy, text, hasher, tmp) == Masked::Null {
                return Masked::Null;
            }
            if class.text_offset(format) == 1 {
                out.push(1);
            }
            write_json_string(&String::from_utf8_lossy(tmp), out);
            Masked::Text
        }
        TypeClass::Bytea => {
            if !matches!(
                strategy,
                Strategy::Redact { .. } | Strategy::KeyedHash { .. }
            ) {
                return Masked::Null;
            }
            tmp.clear();
            let raw: &[u8] = match format {
                Format::Binary => value,
                Format::Text => match decode_bytea_hex(value, tmp) {
                    true => tmp,
                    false => value,
                },
            };
            let mut masked = Vec::new();
            strategy::write_text(strategy, raw, hasher, &mut masked);
            match format {
                Format::Binary => out.extend_from_slice(&masked),
                Format::Text => {
                    out.extend_from_slice(b"\\x");
                    for b in masked {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                }
            }
            Masked::Text
        }
        TypeClass::Int2 | TypeClass::Int4 | TypeClass::Int8 => {
            let (Strategy::KeyedHash { .. }, Some(h)) = (strategy, hasher) else {
                return Masked::Null;
            };
            let Some(n) = int_value(class, format, value) else {
                return Masked::Null;
            };
            let mut buf = [0u8; 20];
            let digest = h.digest(decimal(n, &mut buf));
            let x = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
            match class {
                TypeClass::Int2 => {
                    write_int(format, (x % (i16::MAX as u64 + 1)) as i16 as i64, 2, out)
                }
                TypeClass::Int4 => write_int(format, (x % (i32::MAX as u64 + 1)) as i64, 4, out),
                _ => write_int(format, (x >> 1) as i64, 8, out),
            }
            Masked::Text
        }
        TypeClass::Uuid => {
            let (Strategy::KeyedHash { .. }, Some(h)) = (strategy, hasher) else {
                return Masked::Null;
            };
            let Some(canonical) = uuid_text(format, value) else {
                return Masked::Null;
            };
            let digest = h.digest(canonical.as_bytes());
            let mut u = [0u8; 16];
            u.copy_from_slice(&digest[..16]);
            u[6] = (u[6] & 0x0f) | 0x80; // version 8: "custom"
            u[8] = (u[8] & 0x3f) | 0x80; // RFC 9562 variant
            match format {
                Format::Binary => out.extend_from_slice(&u),
                Format::Text => out.extend_from_slice(format_uuid(&u).as_bytes()),
            }
            Masked::Text
        }
        TypeClass::Numeric | TypeClass::Other => Masked::Null,
    }
}

/// Whether a JSON value is still valid after spans inside it were replaced.
pub fn json_still_valid(json: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(json).is_ok()
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a &str cannot fail; the fallback keeps the value valid JSON regardless.
    match serde_json::to_vec(s) {
        Ok(v) => out.extend_from_slice(&v),
        Err(_) => out.extend_from_slice(b"\"***\""),
    }
}

pub(super) fn decode_bytea_hex(text: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(hex) = text.strip_prefix(b"\\x") else {
        return false;
    };
    if hex.len() % 2 != 0 {
        return false;
    }
    for pair in hex.chunks(2) {
        let Some(b) = std::str::from_utf8(pair)
            .ok()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
        else {
            return false;
        };
        out.push(b);
    }
    true
}

pub(super) fn int_value(class: TypeClass, format: Format, value: &[u8]) -> Option<i64> {
    match format {
        Format::Text => std::str::from_utf8(value).ok()?.parse().ok(),
        Format::Binary => match (class, value.len()) {
            (TypeClass::Int2, 2) => Some(i16::from_be_bytes(value.try_into().ok()?).into()),
            (TypeClass::Int4, 4) => Some(i32::from_be_bytes(value.try_into().ok()?).into()),
            (TypeClass::Int8, 8) => Some(i64::from_be_bytes(value.try_into().ok()?)),
            _ => None,
        },
    }
}

fn write_int(format: Format, n: i64, width: usize, out: &mut Vec<u8>) {
    match format {
        Format::Text => out.extend_from_slice(decimal(n, &mut [0u8; 20])),
        Format::Binary => out.extend_from_slice(&n.to_be_bytes()[8 - width..]),
    }
}

/// `n` in decimal, without a heap allocation (the hot path of hashing integer ids).
pub(super) fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        // i64::MIN has 19 digits, so there is room for the sign.
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

fn uuid_text(format: Format, value: &[u8]) -> Option<String> {
    match format {
        Format::Binary => Some(format_uuid(value.try_into().ok()?)),
        Format::Text => {
            let s = std::str::from_utf8(value).ok()?;
            (s.len() == 36).then(|| s.to_ascii_lowercase())
        }
    }
}

fn format_uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(class: TypeClass, format: Format, strategy: &Strategy, value: &[u8]) -> Option<Vec<u8>> {
        let h = KeyedHasher::new(b"0123456789abcdef").unwrap();
        let (mut tmp, mut out) = (Vec::new(), Vec::new());
        match write_masked(class, format, strategy, value, Some(&h), &mut tmp, &mut out) {
            Masked::Text => Some(out),
            Masked::Null => None,
        }
    }

    const HASH: Strategy = Strategy::KeyedHash { length: 16 };

    #[test]
    fn text_types_mask_in_both_formats_identically() {
        let s = Strategy::Partial {
            keep_last: 4,
            mask_char: '*',
        };
        let t = run(class_of(1043), Format::Text, &s, b"4111111111111111").unwrap();
        let b = run(class_of(1043), Format::Binary, &s, b"4111111111111111").unwrap();
        assert_eq!(t, b"************1111");
        assert_eq!(t, b);
    }

    #[test]
    fn bpchar_padding_is_not_kept_or_hashed() {
        let s = Strategy::Partial {
            keep_last: 4,
            mask_char: '*',
        };
        assert_eq!(
            run(class_of(1042), Format::Text, &s, b"536-22-1234    ").unwrap(),
            b"*******1234"
        );
        let padded = run(class_of(1042), Format::Binary, &HASH, b"ab12  ").unwrap();
        assert_eq!(
            padded,
            run(class_of(1043), Format::Text, &HASH, b"ab12").unwrap()
        );
    }

    #[test]
    fn integers_hash_to_valid_integers_and_otherwise_become_null() {
        let text = run(TypeClass::Int4, Format::Text, &HASH, b"123456789").unwrap();
        let n: i32 = String::from_utf8(text).unwrap().parse().unwrap();
        assert!(n >= 0);
        let bin = run(
            TypeClass::Int4,
            Format::Binary,
            &HASH,
            &123456789i32.to_be_bytes(),
        )
        .unwrap();
        assert_eq!(
            bin,
            n.to_be_bytes(),
            "same value, same hash in text and binary format"
        );
        let int8 = run(TypeClass::Int8, Format::Binary, &HASH, &42i64.to_be_bytes()).unwrap();
        assert_eq!(int8.len(), 8);
        assert_eq!(
            run(TypeClass::Int2, Format::Binary, &HASH, &7i16.to_be_bytes())
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            run(
                TypeClass::Int4,
                Format::Text,
                &Strategy::Redact { text: "***".into() },
                b"5"
            ),
            None
        );
        assert_eq!(
            run(TypeClass::Int4, Format::Binary, &HASH, b"abc"),
            None,
            "wrong width"
        );
    }

    #[test]
    fn every_type_class_and_format_has_its_own_kind() {
        for (oid, class) in [
            (25, TypeClass::Text),
            (3802, TypeClass::Jsonb),
            (1700, TypeClass::Numeric),
            (1009, TypeClass::Other),
        ] {
            for format in [Format::Text, Format::Binary] {
                assert_eq!(*value_kind(oid, format), PgValue { class, format });
            }
        }
        for (i, class) in CLASSES.iter().enumerate() {
            assert_eq!(*class as usize, i, "CLASSES follows the declaration order");
        }
        assert_eq!(value_kind(3802, Format::Binary).scan_from(), Some(1));
        assert_eq!(value_kind(23, Format::Text).scan_from(), None);
    }

    #[test]
    fn decimal_matches_display() {
        for n in [0, 7, -7, 42, i64::MAX, i64::MIN, 1_000_000] {
            assert_eq!(decimal(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn uuids_hash_to_version_8_uuids() {
        let text = run(
            TypeClass::Uuid,
            Format::Text,
            &HASH,
            b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "8");
        let raw: Vec<u8> = (0..16)
            .map(|i| {
                u8::from_str_radix(&"a0eebc999c0b4ef8bb6d6bb9bd380a11"[i * 2..i * 2 + 2], 16)
                    .unwrap()
            })
            .collect();
        let bin = run(TypeClass::Uuid, Format::Binary, &HASH, &raw).unwrap();
        assert_eq!(format_uuid(bin.as_slice().try_into().unwrap()), text);
        assert_eq!(
            run(TypeClass::Uuid, Format::Text, &Strategy::Email {}, b"x"),
            None
        );
    }

    #[test]
    fn json_values_stay_json() {
        let out = run(
            TypeClass::Json,
            Format::Text,
            &Strategy::Email {},
            br#""ann@example.com""#,
        )
        .unwrap();
        assert_eq!(out, br#""a***@example.com""#);
        let out = run(
            TypeClass::Jsonb,
            Format::Binary,
            &Strategy::Redact {
                text: "\"x\"".into(),
            },
            b"\x01{\"a\":1}",
        )
        .unwrap();
        assert_eq!(out, b"\x01\"\\\"x\\\"\"");
        assert!(json_still_valid(&out[1..]));
    }

    #[test]
    fn bytea_and_other_types() {
        let r = Strategy::Redact {
            text: "gone".into(),
        };
        assert_eq!(
            run(TypeClass::Bytea, Format::Text, &r, b"\\xdeadbeef").unwrap(),
            b"\\x676f6e65"
        );
        assert_eq!(
            run(TypeClass::Bytea, Format::Binary, &r, &[0xde, 0xad]).unwrap(),
            b"gone"
        );
        let t = run(TypeClass::Bytea, Format::Text, &HASH, b"\\xdead").unwrap();
        let b = run(TypeClass::Bytea, Format::Binary, &HASH, &[0xde, 0xad]).unwrap();
        assert_eq!(
            t[2..],
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
                .into_bytes()[..]
        );
        assert_eq!(
            run(class_of(1700), Format::Text, &HASH, b"12.50"),
            None,
            "numeric"
        );
        assert_eq!(
            run(class_of(1082), Format::Binary, &HASH, &[0, 0, 1, 2]),
            None,
            "date"
        );
    }
}
