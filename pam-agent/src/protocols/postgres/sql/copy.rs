//! What a `COPY ... TO STDOUT` sends, as far as masking needs it: a SELECT with the same
//! columns (for the server to describe, since COPY itself has no RowDescription) and the
//! text-format options its rows are written in. Anything else (CSV, binary, encodings,
//! options that change the row format) is refused on masked connections: its rows could
//! not be rewritten safely.

use pg_query::{NodeEnum, protobuf};

/// A COPY TO STDOUT in text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    /// A SELECT whose RowDescription matches the rows COPY sends.
    pub describe: String,
    pub delimiter: u8,
    /// How NULL is written (`\N` by default).
    pub null: String,
    /// A table's rows (no query, no column list): COPY leaves its generated columns out.
    pub whole_table: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyOutError {
    #[error("COPY does not parse: {0}")]
    Parse(String),
    #[error("not a COPY ... TO STDOUT")]
    NotCopyOut,
    #[error("COPY in {0} format cannot be masked; use the default text format")]
    Format(String),
    #[error("COPY option `{0}` cannot be used on a masked connection")]
    Option(String),
    #[error("COPY delimiter must be one ASCII character other than backslash or newline")]
    Delimiter,
}

/// Reads one COPY statement. Call it on a thread with a large stack (the parser recurses
/// as deep as the inner query nests).
pub fn copy_out(text: &str) -> Result<CopyOut, CopyOutError> {
    let parsed = pg_query::parse(text, 0).map_err(|e| CopyOutError::Parse(e.to_string()))?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Err(CopyOutError::NotCopyOut);
    };
    let Some(NodeEnum::CopyStmt(copy)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return Err(CopyOutError::NotCopyOut);
    };
    if copy.is_from || copy.is_program || !copy.filename.is_empty() {
        return Err(CopyOutError::NotCopyOut);
    }
    let mut out = CopyOut {
        describe: describe_sql(copy)?,
        delimiter: b'\t',
        null: "\\N".into(),
        whole_table: copy.query.is_none() && copy.attlist.is_empty(),
    };
    for opt in &copy.options {
        let Some(NodeEnum::DefElem(d)) = opt.node.as_ref() else {
            return Err(CopyOutError::Option("?".into()));
        };
        let arg = d.arg.as_ref().and_then(|a| string_value(a));
        match d.defname.as_str() {
            "format" => match arg.as_deref() {
                Some("text") => {}
                other => return Err(CopyOutError::Format(other.unwrap_or("?").to_owned())),
            },
            "delimiter" => match arg.as_deref().map(str::as_bytes) {
                Some(&[c]) if c.is_ascii() && !matches!(c, b'\\' | b'\n' | b'\r') => {
                    out.delimiter = c
                }
                _ => return Err(CopyOutError::Delimiter),
            },
            "null" => match arg {
                Some(n) => out.null = n,
                None => return Err(CopyOutError::Option("null".into())),
            },
            other => return Err(CopyOutError::Option(other.to_owned())),
        }
    }
    Ok(out)
}

fn describe_sql(copy: &protobuf::CopyStmt) -> Result<String, CopyOutError> {
    if let Some(query) = &copy.query {
        return query
            .deparse(Default::default())
            .map_err(|e| CopyOutError::Parse(e.to_string()));
    }
    let rel = copy.relation.as_ref().ok_or(CopyOutError::NotCopyOut)?;
    let mut name = String::new();
    for part in [&rel.catalogname, &rel.schemaname] {
        if !part.is_empty() {
            name.push_str(&quote_ident(part));
            name.push('.');
        }
    }
    name.push_str(&quote_ident(&rel.relname));
    let columns = if copy.attlist.is_empty() {
        "*".to_owned()
    } else {
        let mut cols = Vec::with_capacity(copy.attlist.len());
        for a in &copy.attlist {
            cols.push(quote_ident(
                &string_value(a).ok_or(CopyOutError::NotCopyOut)?,
            ));
        }
        cols.join(", ")
    };
    Ok(format!("SELECT {columns} FROM ONLY {name}"))
}

fn string_value(n: &protobuf::Node) -> Option<String> {
    match n.node.as_ref()? {
        NodeEnum::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

/// An identifier as the parser stored it (case already folded), quoted for SQL.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_tables_columns_and_queries() {
        let c = copy_out("COPY public.customers TO STDOUT").unwrap();
        assert_eq!(c.describe, "SELECT * FROM ONLY \"public\".\"customers\"");
        assert_eq!((c.delimiter, c.null.as_str()), (b'\t', "\\N"));
        let c = copy_out(
            "copy Customers (email, \"Odd\"\"Name\") to stdout with (delimiter '|', null 'NULL')",
        )
        .unwrap();
        assert_eq!(
            c.describe,
            "SELECT \"email\", \"Odd\"\"Name\" FROM ONLY \"customers\""
        );
        assert_eq!((c.delimiter, c.null.as_str()), (b'|', "NULL"));
        let c = copy_out("COPY (SELECT email FROM customers WHERE id < 3) TO STDOUT").unwrap();
        assert_eq!(c.describe, "SELECT email FROM customers WHERE id < 3");
    }

    #[test]
    fn refuses_what_cannot_be_rewritten() {
        for (sql, want) in [
            ("COPY t TO STDOUT CSV", CopyOutError::Format("csv".into())),
            (
                "COPY t TO STDOUT (FORMAT binary)",
                CopyOutError::Format("binary".into()),
            ),
            (
                "COPY t TO STDOUT (ENCODING 'LATIN1')",
                CopyOutError::Option("encoding".into()),
            ),
            ("COPY t TO STDOUT (DELIMITER '\\')", CopyOutError::Delimiter),
            ("COPY t FROM STDIN", CopyOutError::NotCopyOut),
            ("COPY t TO '/tmp/x'", CopyOutError::NotCopyOut),
            ("COPY t TO PROGRAM 'cat'", CopyOutError::NotCopyOut),
            ("SELECT 1", CopyOutError::NotCopyOut),
            (
                "COPY t TO STDOUT; COPY t TO STDOUT",
                CopyOutError::NotCopyOut,
            ),
        ] {
            assert_eq!(copy_out(sql), Err(want), "{sql}");
        }
        assert!(matches!(copy_out("COPY ("), Err(CopyOutError::Parse(_))));
    }
}
