//! Rewriting one row of `COPY … TO STDOUT` in text format (one CopyData message per row):
//! fields separated by the delimiter (tab by default), `\N` for NULL, backslash escapes for
//! backslash, control characters and the delimiter, a newline at the end.
//!
//! Masked and scanned fields are unescaped before detection and masking, and re-escaped
//! after; other fields are copied byte for byte.

use crate::mask::{Outcome, RowPlan};

/// The COPY options that shape text rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTextOptions {
    /// `DELIMITER`: one single-byte character.
    pub delimiter: u8,
    /// `NULL`: the text standing for NULL.
    pub null: Vec<u8>,
    /// The rows of a table (no query, no column list): its generated columns are not in
    /// them, though the describe of `SELECT *` has them.
    pub whole_table: bool,
}

impl Default for CopyTextOptions {
    fn default() -> Self {
        CopyTextOptions {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            whole_table: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyRowError {
    #[error("COPY row does not end with a newline")]
    NoNewline,
    #[error("COPY row has a raw line break inside")]
    RawLineBreak,
    #[error("COPY row ends with a lone backslash")]
    TrailingBackslash,
    #[error("COPY row has {got} fields, the plan {expected}")]
    FieldCount { got: usize, expected: usize },
}

/// Appends the unescaped form of one field.
pub fn unescape_into(field: &[u8], out: &mut Vec<u8>) -> Result<(), CopyRowError> {
    if !field.contains(&b'\\') {
        out.extend_from_slice(field);
        return Ok(());
    }
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&e) = field.get(i) else {
            return Err(CopyRowError::TrailingBackslash);
        };
        i += 1;
        match e {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u8;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d as u8;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v);
            }
            // Any other escaped character stands for itself (backslash, delimiter, …).
            other => out.push(other),
        }
    }
    Ok(())
}

/// Appends `value` escaped as PostgreSQL writes it.
pub fn escape_into(value: &[u8], delimiter: u8, out: &mut Vec<u8>) {
    // Runs of bytes that need no escape are copied whole.
    let mut run = 0;
    for (i, &b) in value.iter().enumerate() {
        let escaped = match b {
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x0b => b'v',
            b'\\' => b'\\',
            b if b == delimiter => b,
            _ => continue,
        };
        out.extend_from_slice(&value[run..i]);
        out.extend_from_slice(&[b'\\', escaped]);
        run = i + 1;
    }
    out.extend_from_slice(&value[run..]);
}

/// Splits a row (without its newline) into raw field ranges: jumps from one delimiter,
/// backslash or line break to the next (SIMD search: this runs for every row of a masked
/// COPY), a rare row with a carriage return the byte-wise way.
fn split_fields(
    row: &[u8],
    delimiter: u8,
    fields: &mut Vec<(usize, usize)>,
) -> Result<(), CopyRowError> {
    if memchr::memchr(b'\r', row).is_some() {
        return split_fields_bytewise(row, delimiter, fields);
    }
    fields.clear();
    let mut start = 0;
    let mut i = 0;
    while let Some(off) = row
        .get(i..)
        .and_then(|rest| memchr::memchr3(delimiter, b'\\', b'\n', rest))
    {
        let at = i + off;
        match row[at] {
            b'\\' => {
                if at + 1 >= row.len() {
                    return Err(CopyRowError::TrailingBackslash);
                }
                i = at + 2;
            }
            b'\n' => return Err(CopyRowError::RawLineBreak),
            _ => {
                fields.push((start, at));
                start = at + 1;
                i = at + 1;
            }
        }
    }
    fields.push((start, row.len()));
    Ok(())
}

/// [`split_fields`] one byte at a time.
fn split_fields_bytewise(
    row: &[u8],
    delimiter: u8,
    fields: &mut Vec<(usize, usize)>,
) -> Result<(), CopyRowError> {
    fields.clear();
    let mut start = 0;
    let mut i = 0;
    while i < row.len() {
        match row[i] {
            b'\\' => {
                if i + 1 >= row.len() {
                    return Err(CopyRowError::TrailingBackslash);
                }
                i += 2;
                continue;
            }
            b'\n' | b'\r' => return Err(CopyRowError::RawLineBreak),
            b if b == delimiter => {
                fields.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    fields.push((start, row.len()));
    Ok(())
}

/// Appends the rewritten row (newline included) to `out`. On error `out` is left as it was.
pub fn rewrite_copy_text_row(
    row: &[u8],
    plan: &mut RowPlan,
    opts: &CopyTextOptions,
    out: &mut Vec<u8>,
) -> Result<(), CopyRowError> {
    let Some(body) = row.strip_suffix(b"\n") else {
        return Err(CopyRowError::NoNewline);
    };
    let mut fields = std::mem::take(&mut plan.codec_scratch().fields);
    let split = split_fields(body, opts.delimiter, &mut fields);
    let result = split.and_then(|()| {
        if fields.len() != plan.column_count() {
            return Err(CopyRowError::FieldCount {
                got: fields.len(),
                expected: plan.column_count(),
            });
        }
        // Validate every escape before writing anything.
        let mut check = std::mem::take(&mut plan.codec_scratch().unescaped);
        for (i, &(s, e)) in fields.iter().enumerate() {
            if !plan.passes(i) && body[s..e].contains(&b'\\') && &body[s..e] != opts.null.as_slice()
            {
                check.clear();
                if let Err(err) = unescape_into(&body[s..e], &mut check) {
                    plan.codec_scratch().unescaped = check;
                    return Err(err);
                }
            }
        }
        plan.codec_scratch().unescaped = check;
        Ok(())
    });
    if let Err(e) = result {
        plan.codec_scratch().fields = fields;
        return Err(e);
    }
    if plan.is_passthrough() {
        out.extend_from_slice(row);
    } else {
        // Fields left as they are (and the delimiters between them) are copied in
        // runs straight from the row.
        let mut copied = 0;
        for (i, &(s, e)) in fields.iter().enumerate() {
            let raw = &body[s..e];
            if plan.passes(i) || raw == opts.null.as_slice() {
                continue;
            }
            let mut value = std::mem::take(&mut plan.codec_scratch().unescaped);
            let mut masked = std::mem::take(&mut plan.codec_scratch().masked);
            value.clear();
            masked.clear();
            let escaped = raw.contains(&b'\\');
            if escaped {
                // Validated above; an error here cannot happen.
                let _ = unescape_into(raw, &mut value);
            }
            let plain = if escaped { value.as_slice() } else { raw };
            match plan.mask_value(i, plain, &mut masked) {
                Outcome::Unchanged => {}
                Outcome::Written => {
                    out.extend_from_slice(&body[copied..s]);
                    escape_into(&masked, opts.delimiter, out);
                    copied = e;
                }
                Outcome::Null => {
                    out.extend_from_slice(&body[copied..s]);
                    out.extend_from_slice(&opts.null);
                    copied = e;
                }
            }
            let scratch = plan.codec_scratch();
            scratch.unescaped = value;
            scratch.masked = masked;
        }
        out.extend_from_slice(&body[copied..]);
        out.push(b'\n');
    }
    plan.codec_scratch().fields = fields;
    plan.count_row();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        unescape_into(s, &mut out).unwrap();
        out
    }

    #[test]
    fn escapes_as_postgres_does() {
        let mut out = Vec::new();
        escape_into(b"a\tb\\c\nd\re\x08\x0b\x0c|", b'|', &mut out);
        assert_eq!(out, b"a\\tb\\\\c\\nd\\re\\b\\v\\f\\|");
        assert_eq!(unescape(&out), b"a\tb\\c\nd\re\x08\x0b\x0c|");
    }

    #[test]
    fn unescapes_what_copy_from_accepts() {
        assert_eq!(unescape(br"\101\x41\x4g\q\\"), b"AA\x04gq\\");
        assert_eq!(unescape(br"\0"), b"\0");
        assert_eq!(
            unescape_into(b"abc\\", &mut Vec::new()),
            Err(CopyRowError::TrailingBackslash)
        );
    }

    #[test]
    fn splits_on_unescaped_delimiters_only() {
        let mut f = Vec::new();
        split_fields(b"a\\\tb\tc\t", b'\t', &mut f).unwrap();
        assert_eq!(f, [(0, 4), (5, 6), (7, 7)]);
        assert_eq!(
            split_fields(b"a\nb", b'\t', &mut f),
            Err(CopyRowError::RawLineBreak)
        );
        assert_eq!(
            split_fields(b"ab\\", b'\t', &mut f),
            Err(CopyRowError::TrailingBackslash)
        );
        // Both ways agree, escaped line breaks and delimiters included.
        let mut g = Vec::new();
        for row in [
            &b"1\tx\\\ty\t\\N\t"[..],
            b"\\\n\t\\\r|",
            b"",
            b"\t\t",
            b"a|b|c",
        ] {
            for d in [b'\t', b'|'] {
                let fast = split_fields(row, d, &mut f).map(|()| f.clone());
                let slow = split_fields_bytewise(row, d, &mut g).map(|()| g.clone());
                assert_eq!(fast, slow, "{}", row.escape_ascii());
            }
        }
        assert_eq!(
            split_fields(b"a\rb", b'\t', &mut f),
            Err(CopyRowError::RawLineBreak)
        );
    }
}
