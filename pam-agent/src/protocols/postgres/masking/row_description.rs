//! Reading what masking needs from a RowDescription (backend 'T'), and the result formats a
//! Bind asked for: a RowDescription answering Describe of a *statement* carries format 0 for
//! every column, because formats are only chosen at Bind.

use super::plan::FieldInfo;
use super::resolve::FieldSource;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RowDescriptionError {
    #[error("RowDescription ends inside field {0}")]
    Truncated(usize),
    #[error("RowDescription has a negative field count")]
    NegativeCount,
    #[error("RowDescription has {0} bytes after its last field")]
    TrailingBytes(usize),
    #[error("Bind gave {formats} result formats for {fields} columns")]
    FormatCount { formats: usize, fields: usize },
}

/// The fields of a RowDescription body (without type byte and length).
pub fn parse(body: &[u8]) -> Result<Vec<FieldInfo>, RowDescriptionError> {
    let count = body.get(..2).ok_or(RowDescriptionError::Truncated(0))?;
    let count = i16::from_be_bytes([count[0], count[1]]);
    let count = usize::try_from(count).map_err(|_| RowDescriptionError::NegativeCount)?;
    let mut fields = Vec::with_capacity(count);
    let mut pos = 2;
    for i in 0..count {
        let name_len = body
            .get(pos..)
            .and_then(|b| b.iter().position(|&c| c == 0))
            .ok_or(RowDescriptionError::Truncated(i))?;
        pos += name_len + 1;
        // table OID (4), attnum (2), type OID (4), type size (2), type modifier (4), format (2)
        let f = body
            .get(pos..pos + 18)
            .ok_or(RowDescriptionError::Truncated(i))?;
        fields.push(FieldInfo {
            source: FieldSource {
                table_oid: u32::from_be_bytes([f[0], f[1], f[2], f[3]]),
                attnum: i16::from_be_bytes([f[4], f[5]]),
            },
            type_oid: u32::from_be_bytes([f[6], f[7], f[8], f[9]]),
            format: i16::from_be_bytes([f[16], f[17]]),
        });
        pos += 18;
    }
    if pos != body.len() {
        return Err(RowDescriptionError::TrailingBytes(body.len() - pos));
    }
    Ok(fields)
}

/// Applies Bind's result-format codes: none = all text, one = for every column, otherwise
/// one per column.
pub fn apply_result_formats(
    fields: &mut [FieldInfo],
    formats: &[i16],
) -> Result<(), RowDescriptionError> {
    match formats {
        [] => fields.iter_mut().for_each(|f| f.format = 0),
        [one] => fields.iter_mut().for_each(|f| f.format = *one),
        many if many.len() == fields.len() => {
            fields.iter_mut().zip(many).for_each(|(f, c)| f.format = *c)
        }
        many => {
            return Err(RowDescriptionError::FormatCount {
                formats: many.len(),
                fields: fields.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, oid: u32, attnum: i16, type_oid: u32, format: i16) -> Vec<u8> {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&attnum.to_be_bytes());
        b.extend_from_slice(&type_oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&format.to_be_bytes());
        b
    }

    #[test]
    fn parses_fields_and_applies_bind_formats() {
        let mut body = 2i16.to_be_bytes().to_vec();
        body.extend(field("email", 16384, 3, 1043, 0));
        body.extend(field("?column?", 0, 0, 25, 1));
        let mut fields = parse(&body).unwrap();
        assert_eq!(
            fields[0].source,
            FieldSource {
                table_oid: 16384,
                attnum: 3
            }
        );
        assert_eq!((fields[0].type_oid, fields[0].format), (1043, 0));
        assert_eq!((fields[1].source.table_oid, fields[1].format), (0, 1));
        apply_result_formats(&mut fields, &[1]).unwrap();
        assert!(fields.iter().all(|f| f.format == 1));
        apply_result_formats(&mut fields, &[0, 1]).unwrap();
        assert_eq!((fields[0].format, fields[1].format), (0, 1));
        assert!(apply_result_formats(&mut fields, &[0, 1, 1]).is_err());
        assert_eq!(
            parse(&body[..body.len() - 1]),
            Err(RowDescriptionError::Truncated(1))
        );
        assert_eq!(
            parse(&[0xff, 0xff]),
            Err(RowDescriptionError::NegativeCount)
        );
        body.push(0);
        assert_eq!(parse(&body), Err(RowDescriptionError::TrailingBytes(1)));
    }
}
