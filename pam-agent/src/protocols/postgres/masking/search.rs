//! What content detectors read in values they cannot rewrite in place: arrays, records
//! (row values, composite types), bytea, and numbers. A protected value hides as well in
//! `{4111111111111111}`, `(1,maria@example.org)`, `\x3132332d...` or an `int8` of card
//! digits as in a text column; replacing a span inside those would break their syntax, so
//! a finding makes the whole value NULL (see `mask::plan`).
//!
//! The text is decoded as far as PostgreSQL's formats allow: bytea hex and escape forms,
//! binary integers and `numeric`, and binary arrays and records element by element (each
//! element by its own type OID, nested ones recursively), elements separated by a newline
//! so that no two values run together into a detector's shape. Text-format arrays, records,
//! ranges and the like are read as sent (their elements appear in them as written).

use super::pgtype::{Format, TypeClass, class_of, decimal, decode_bytea_hex, int_value};

/// Nesting followed inside binary arrays and records (deeper values are read as bytes).
const MAX_DEPTH: usize = 8;

/// Whether detectors search values of this class as a whole.
pub fn searched_whole(class: TypeClass) -> bool {
    matches!(
        class,
        TypeClass::Bytea
            | TypeClass::Int2
            | TypeClass::Int4
            | TypeClass::Int8
            | TypeClass::Numeric
            | TypeClass::Other
    )
}

/// Appends the text detectors read in `value` to `out`.
pub fn search_text(class: TypeClass, format: Format, value: &[u8], out: &mut Vec<u8>) {
    match format {
        Format::Text => match class {
            TypeClass::Bytea => bytea_text(value, out),
            _ => out.extend_from_slice(value),
        },
        Format::Binary => binary(class, value, out, 0),
    }
}

/// A text-format bytea: `\x` hex, or the escape format (`\\`, `\ooo`).
fn bytea_text(value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    if decode_bytea_hex(value, out) {
        return;
    }
    out.truncate(start);
    let mut i = 0;
    while i < value.len() {
        match (value[i], value.get(i + 1..i + 4)) {
            (b'\\', Some(o)) if o.iter().all(|b| (b'0'..=b'7').contains(b)) => {
                let n = o.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
                out.push(n as u8);
                i += 4;
            }
            (b'\\', _) if value.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// A binary value of `class`.
fn binary(class: TypeClass, value: &[u8], out: &mut Vec<u8>, depth: usize) {
    match class {
        TypeClass::Int2 | TypeClass::Int4 | TypeClass::Int8 => {
            match int_value(class, Format::Binary, value) {
                Some(n) => out.extend_from_slice(decimal(n, &mut [0u8; 20])),
                None => out.extend_from_slice(value),
            }
        }
        TypeClass::Numeric => {
            if !numeric(value, out) {
                out.extend_from_slice(value);
            }
        }
        // jsonb's version byte; the JSON text follows.
        TypeClass::Jsonb => out.extend_from_slice(value.get(1..).unwrap_or_default()),
        TypeClass::Uuid => {}
        TypeClass::Other if depth < MAX_DEPTH => {
            // An array, a record, or something else: read as what it parses as, and
            // always as its bytes too (nothing is lost to a wrong guess).
            let _ = array(value, out, depth) || record(value, out, depth);
            out.push(b'\n');
            out.extend_from_slice(value);
        }
        _ => out.extend_from_slice(value),
    }
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// One length-prefixed element at `at`: its bytes (`None` for NULL) and the next offset.
fn element(b: &[u8], at: usize) -> Option<(Option<&[u8]>, usize)> {
    let len = be_i32(b, at)?;
    if len == -1 {
        return Some((None, at + 4));
    }
    let len = usize::try_from(len).ok()?;
    let v = b.get(at + 4..at + 4 + len)?;
    Some((Some(v), at + 4 + len))
}

/// A binary array (`array_send`): elements decoded by the element type. False when
/// `b` is not one (nothing useful appended).
fn array(b: &[u8], out: &mut Vec<u8>, depth: usize) -> bool {
    let parse = |out: &mut Vec<u8>| -> Option<()> {
        let ndim = usize::try_from(be_i32(b, 0)?).ok()?;
        let flags = be_i32(b, 4)?;
        let elem = u32::try_from(be_i32(b, 8)?).ok()?;
        if ndim > 6 || !(0..=1).contains(&flags) || elem == 0 {
            return None;
        }
        let mut at = 12;
        let mut count = usize::from(ndim > 0);
        for _ in 0..ndim {
            let n = usize::try_from(be_i32(b, at)?).ok()?;
            count = count.checked_mul(n)?;
            at += 8;
        }
        let class = class_of(elem);
        for _ in 0..count {
            let (v, next) = element(b, at)?;
            if let Some(v) = v {
                binary(class, v, out, depth + 1);
                out.push(b'\n');
            }
            at = next;
        }
        (at == b.len()).then_some(())
    };
    let start = out.len();
    let ok = parse(out).is_some();
    if !ok {
        out.truncate(start);
    }
    ok
}

/// A binary record (`record_send`): each field decoded by its type OID.
fn record(b: &[u8], out: &mut Vec<u8>, depth: usize) -> bool {
    let parse = |out: &mut Vec<u8>| -> Option<()> {
        let n = usize::try_from(be_i32(b, 0)?).ok()?;
        let mut at = 4;
        for _ in 0..n {
            let oid = u32::try_from(be_i32(b, at)?).ok().filter(|&o| o != 0)?;
            let (v, next) = element(b, at + 4)?;
            if let Some(v) = v {
                binary(class_of(oid), v, out, depth + 1);
                out.push(b'\n');
            }
            at = next;
        }
        (at == b.len()).then_some(())
    };
    let start = out.len();
    let ok = parse(out).is_some();
    if !ok {
        out.truncate(start);
    }
    ok
}

/// A binary `numeric` as decimal text: base-10000 digits with a weight. False when `b`
/// is not one.
fn numeric(b: &[u8], out: &mut Vec<u8>) -> bool {
    let parse = |out: &mut Vec<u8>| -> Option<()> {
        let ndigits = usize::from(be_u16(b, 0)?);
        let weight = be_u16(b, 2)? as i16;
        let sign = be_u16(b, 4)?;
        let dscale = usize::from(be_u16(b, 6)?);
        if b.len() != 8 + 2 * ndigits {
            return None;
        }
        let digit = |i: usize| be_u16(b, 8 + 2 * i).unwrap_or(0);
        if sign == 0x4000 {
            out.push(b'-');
        }
        if weight < 0 {
            out.push(b'0');
        } else {
            for i in 0..=(weight as usize) {
                let d = if i < ndigits { digit(i) } else { 0 };
                if i == 0 {
                    out.extend_from_slice(d.to_string().as_bytes());
                } else {
                    out.extend_from_slice(format!("{d:04}").as_bytes());
                }
            }
        }
        if dscale > 0 {
            out.push(b'.');
            let mut frac = String::new();
            let first = i32::from(weight) + 1;
            let mut i = first;
            while frac.len() < dscale {
                let d = usize::try_from(i)
                    .ok()
                    .filter(|&i| i < ndigits)
                    .map_or(0, digit);
                frac.push_str(&format!("{d:04}"));
                i += 1;
            }
            frac.truncate(dscale);
            out.extend_from_slice(frac.as_bytes());
        }
        Some(())
    };
    let start = out.len();
    let ok = parse(out).is_some();
    if !ok {
        out.truncate(start);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(class: TypeClass, format: Format, value: &[u8]) -> String {
        let mut out = Vec::new();
        search_text(class, format, value, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `array_send` of a one-dimensional array.
    fn array_of(elem: u32, items: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&i32::from(items.iter().any(Option::is_none)).to_be_bytes());
        b.extend_from_slice(&elem.to_be_bytes());
        b.extend_from_slice(&(items.len() as i32).to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        for i in items {
            match i {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn bytea_is_read_decoded_in_every_format() {
        assert_eq!(
            text(TypeClass::Bytea, Format::Text, b"\\x3132332d34352d36373839"),
            "123-45-6789"
        );
        assert_eq!(
            text(TypeClass::Bytea, Format::Text, b"123-45-6789\\000\\\\"),
            "123-45-6789\0\\"
        );
        assert_eq!(
            text(TypeClass::Bytea, Format::Binary, b"maria@example.org"),
            "maria@example.org"
        );
    }

    #[test]
    fn binary_numbers_are_read_as_decimal_digits() {
        assert_eq!(
            text(
                TypeClass::Int8,
                Format::Binary,
                &4111111111111111i64.to_be_bytes()
            ),
            "4111111111111111"
        );
        // numeric 4111111111111111.25: base-10000 digits 4111 1111 1111 1111 . 2500
        let mut n = Vec::new();
        for v in [5u16, 3, 0, 2] {
            n.extend_from_slice(&v.to_be_bytes());
        }
        for d in [4111u16, 1111, 1111, 1111, 2500] {
            n.extend_from_slice(&d.to_be_bytes());
        }
        assert_eq!(
            text(TypeClass::Numeric, Format::Binary, &n),
            "4111111111111111.25"
        );
        // -0.05: weight -1, digit 500, dscale 2
        let mut n = Vec::new();
        for v in [1u16, 0xffff, 0x4000, 2, 500] {
            n.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(text(TypeClass::Numeric, Format::Binary, &n), "-0.05");
    }

    #[test]
    fn binary_arrays_and_records_are_read_element_by_element() {
        let ints = array_of(
            20,
            &[
                Some(&4111111111111111i64.to_be_bytes()),
                None,
                Some(&7i64.to_be_bytes()),
            ],
        );
        let got = text(TypeClass::Other, Format::Binary, &ints);
        assert!(got.starts_with("4111111111111111\n7\n"), "{got:?}");
        let texts = array_of(25, &[Some(b"maria@example.org"), Some(b"x")]);
        let nested = array_of(1009, &[Some(&texts)]);
        let got = text(TypeClass::Other, Format::Binary, &nested);
        assert!(got.contains("maria@example.org\n"), "{got:?}");
        // record (int4 1, text '123-45-6789')
        let mut rec = Vec::new();
        rec.extend_from_slice(&2i32.to_be_bytes());
        rec.extend_from_slice(&23u32.to_be_bytes());
        rec.extend_from_slice(&4i32.to_be_bytes());
        rec.extend_from_slice(&1i32.to_be_bytes());
        rec.extend_from_slice(&25u32.to_be_bytes());
        rec.extend_from_slice(&11i32.to_be_bytes());
        rec.extend_from_slice(b"123-45-6789");
        let got = text(TypeClass::Other, Format::Binary, &rec);
        assert!(got.starts_with("1\n123-45-6789\n"), "{got:?}");
        // Garbage is still read as bytes.
        assert!(text(TypeClass::Other, Format::Binary, b"\x00\x01abc").ends_with("abc"));
    }
}
