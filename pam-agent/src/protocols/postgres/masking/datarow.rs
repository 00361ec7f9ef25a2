//! Rewriting one DataRow (backend 'D'): Int16 column count, then per column an Int32 length
//! (-1 = NULL) and that many bytes. The whole body is validated before a byte is written, so a
//! malformed row yields an error and nothing in the output: never a partially masked row.

use crate::mask::{Outcome, RowPlan};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataRowError {
    #[error("DataRow ends inside column {column}")]
    Truncated { column: usize },
    #[error("DataRow has a negative column count {0}")]
    NegativeCount(i16),
    #[error("DataRow has {got} columns, its RowDescription {expected}")]
    ColumnCount { got: usize, expected: usize },
    #[error("DataRow column {column} has invalid length {len}")]
    BadLength { column: usize, len: i32 },
    #[error("DataRow has {0} bytes after its last column")]
    TrailingBytes(usize),
    #[error("rewritten DataRow would exceed the protocol's message size limit")]
    TooLarge,
}

/// Walks the body; returns the column count when every length is consistent.
pub fn validate(body: &[u8]) -> Result<usize, DataRowError> {
    let Some(count) = body.get(..2) else {
        return Err(DataRowError::Truncated { column: 0 });
    };
    let count = i16::from_be_bytes([count[0], count[1]]);
    let count = usize::try_from(count).map_err(|_| DataRowError::NegativeCount(count))?;
    let mut pos = 2;
    for column in 0..count {
        let len = read_len(body, pos).ok_or(DataRowError::Truncated { column })?;
        pos += 4;
        match len {
            -1 => {}
            n if n < 0 => return Err(DataRowError::BadLength { column, len }),
            n => {
                let n = n as usize;
                if body.len() - pos < n {
                    return Err(DataRowError::Truncated { column });
                }
                pos += n;
            }
        }
    }
    if pos != body.len() {
        return Err(DataRowError::TrailingBytes(body.len() - pos));
    }
    Ok(count)
}

fn read_len(body: &[u8], pos: usize) -> Option<i32> {
    let b = body.get(pos..pos.checked_add(4)?)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The values of a DataRow body (`None` = NULL); for small results such as the catalog query.
pub fn values(body: &[u8]) -> Result<Vec<Option<&[u8]>>, DataRowError> {
    let count = validate(body)?;
    let mut out = Vec::with_capacity(count);
    let mut pos = 2;
    for _ in 0..count {
        let len = read_len(body, pos).unwrap_or(-1);
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(&body[pos..pos + len as usize]));
            pos += len as usize;
        }
    }
    Ok(out)
}

/// Largest message the protocol can carry: the Int32 length counts itself.
const MAX_MESSAGE_LEN: usize = i32::MAX as usize;

/// Appends the rewritten DataRow message (type byte, length, body) to `out`.
///
/// On error `out` is left as it was. Allocates nothing once the plan's scratch buffers and
/// `out` have grown to the size of the largest row.
pub fn rewrite_data_row(
    body: &[u8],
    plan: &mut RowPlan,
    out: &mut Vec<u8>,
) -> Result<(), DataRowError> {
    let count = validate(body)?;
    if count != plan.column_count() {
        return Err(DataRowError::ColumnCount {
            got: count,
            expected: plan.column_count(),
        });
    }
    let start = out.len();
    out.push(b'D');
    out.extend_from_slice(&[0; 4]);
    if plan.is_passthrough() {
        out.extend_from_slice(body);
    } else {
        // Fields left as they are (NULLs, passed columns, scans that find nothing) are
        // copied in runs straight from the body: one copy instead of two per field.
        let mut copied = 0;
        let mut pos = 2;
        for column in 0..count {
            let field_at = pos;
            let len = read_len(body, pos).unwrap_or(-1);
            pos += 4;
            if len < 0 {
                continue;
            }
            let value = &body[pos..pos + len as usize];
            pos += len as usize;
            if plan.passes(column) {
                continue;
            }
            out.extend_from_slice(&body[copied..field_at]);
            copied = field_at;
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            match plan.mask_value(column, value, out) {
                Outcome::Unchanged => {
                    out.truncate(len_at);
                    continue;
                }
                Outcome::Written => {
                    let Ok(n) = i32::try_from(out.len() - len_at - 4) else {
                        out.truncate(start);
                        return Err(DataRowError::TooLarge);
                    };
                    out[len_at..len_at + 4].copy_from_slice(&n.to_be_bytes());
                }
                Outcome::Null => {
                    out.truncate(len_at);
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                }
            }
            copied = pos;
        }
        out.extend_from_slice(&body[copied..]);
    }
    let total = out.len() - start - 1;
    if total > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(DataRowError::TooLarge);
    }
    out[start + 1..start + 5].copy_from_slice(&(total as i32).to_be_bytes());
    plan.count_row();
    Ok(())
}

/// Builds a DataRow body from values (`None` = NULL): for tests, benches and fixtures.
pub fn encode_body(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_catches_every_inconsistency() {
        let good = encode_body(&[Some(b"ab"), None, Some(b"")]);
        assert_eq!(validate(&good), Ok(3));
        assert_eq!(
            values(&good).unwrap(),
            vec![Some(&b"ab"[..]), None, Some(&b""[..])]
        );
        assert_eq!(validate(&[]), Err(DataRowError::Truncated { column: 0 }));
        assert_eq!(
            validate(&[0xff, 0xff]),
            Err(DataRowError::NegativeCount(-1))
        );
        assert_eq!(
            validate(&good[..good.len() - 4]),
            Err(DataRowError::Truncated { column: 2 })
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(validate(&long), Err(DataRowError::TrailingBytes(1)));
        let mut bad = good.clone();
        bad[2..6].copy_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(
            validate(&bad),
            Err(DataRowError::BadLength { column: 0, len: -2 })
        );
        let mut huge = good.clone();
        huge[2..6].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(validate(&huge), Err(DataRowError::Truncated { column: 0 }));
    }
}
