//! Naming result columns: RowDescription gives each column a table OID and attribute number
//! (0 and 0 for anything that is not a plain table column: expressions, literals, function
//! results). One catalog query names a batch of unknown pairs; answers are cached for the
//! connection until [`ColumnResolver::invalidate_all`] (call it after any DDL).
//!
//! Views: a column selected from a view reports the *view's* OID and attnum. The catalog query
//! therefore also returns, for view and materialized-view columns, the base-table columns of
//! the same name that the view's rewrite rule depends on (pg_rewrite + pg_depend, one level).
//! A column rule then matches a view column by the view's own name or by such a base column.
//! A view that renames a column (`SELECT email AS contact`) is not linked to its base column:
//! rules must name the view column, or content detectors catch the values.

use std::collections::HashMap;

use super::datarow;
use super::defined::{self, Definition};
use crate::mask::{ColumnName, ResolvedColumn};

/// Where a result column comes from, as RowDescription reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldSource {
    pub table_oid: u32,
    pub attnum: i16,
}

impl FieldSource {
    /// Only plain table (or view) columns have a catalog name; system columns have attnum < 0.
    pub fn is_table_column(self) -> bool {
        self.table_oid != 0 && self.attnum > 0
    }
}

/// One row of the catalog query's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRow {
    pub source: FieldSource,
    /// `false`: the column's own name; `true`: a base column behind a view column.
    pub is_base: bool,
    pub name: ColumnName,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("catalog row is not a valid DataRow: {0}")]
    Malformed(#[from] datarow::DataRowError),
    #[error("catalog row has {0} columns, expected 6")]
    Columns(usize),
    #[error("catalog row column {0} is not what the catalog query returns")]
    Value(usize),
}

impl CatalogRow {
    /// Parses one DataRow body of [`ColumnResolver::catalog_query`]'s result (text format).
    pub fn from_data_row(body: &[u8]) -> Result<CatalogRow, ResolveError> {
        let values = datarow::values(body)?;
        if values.len() != 6 {
            return Err(ResolveError::Columns(values.len()));
        }
        let text = |i: usize| -> Result<&str, ResolveError> {
            values[i]
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or(ResolveError::Value(i))
        };
        Ok(CatalogRow {
            source: FieldSource {
                table_oid: text(0)?.parse().map_err(|_| ResolveError::Value(0))?,
                attnum: text(1)?.parse().map_err(|_| ResolveError::Value(1))?,
            },
            is_base: match text(2)? {
                "c" => false,
                "b" => true,
                _ => return Err(ResolveError::Value(2)),
            },
            name: ColumnName::new(text(3)?, text(4)?, text(5)?),
        })
    }
}

/// Per-connection cache of column names.
#[derive(Debug, Default)]
pub struct ColumnResolver {
    /// `None`: asked the catalog, which knows no such column (dropped meanwhile).
    cache: HashMap<FieldSource, Option<ResolvedColumn>>,
    /// Filled by [`ColumnResolver::absorb_preload`]: the cache holds every column a rule can
    /// name, so any other column is known to be unnamed without asking.
    complete: bool,
    /// The highest relation OID when the preload ran: a relation with a higher OID was
    /// created since (by any session), so its columns are not known to be unnamed.
    horizon: Option<u32>,
    /// Every generated column of the database at the preload (kind `d` rows, attnum > 0).
    generated: std::collections::HashSet<FieldSource>,
}

impl ColumnResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Table columns of `fields` the cache cannot name yet, each once, in order of appearance.
    pub fn unresolved(&self, fields: &[FieldSource]) -> Vec<FieldSource> {
        let mut out: Vec<FieldSource> = Vec::new();
        for f in fields {
            if f.is_table_column() && self.lookup(*f).is_none() && !out.contains(f) {
                out.push(*f);
            }
        }
        out
    }

    /// One SQL statement naming every pair in `pairs`, or `None` when there is nothing to ask.
    ///
    /// Returns six text columns (oid, attnum, kind `c`/`b`, schema, table, column): kind `c` is
    /// the column itself, kind `b` a same-named base-table column behind a view column. The
    /// text contains only numbers from `pairs`, so it is safe to send as a simple Query.
    pub fn catalog_query(pairs: &[FieldSource]) -> Option<String> {
        if pairs.is_empty() {
            return None;
        }
        let oids: Vec<String> = pairs.iter().map(|p| p.table_oid.to_string()).collect();
        let attnums: Vec<String> = pairs.iter().map(|p| p.attnum.to_string()).collect();
        Some(format!(
            "WITH want(relid, attnum) AS (\
               SELECT * FROM ROWS FROM (pg_catalog.unnest('{{{oids}}}'::pg_catalog.oid[]), pg_catalog.unnest('{{{attnums}}}'::pg_catalog.int2[]))) \
             SELECT w.relid, w.attnum, 'c', n.nspname, c.relname, a.attname \
             FROM want w \
             JOIN pg_catalog.pg_class c ON c.oid = w.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = w.attnum AND NOT a.attisdropped \
             UNION ALL \
             SELECT w.relid, w.attnum, 'b', bn.nspname, bc.relname, ba.attname \
             FROM want w \
             JOIN pg_catalog.pg_class c ON c.oid = w.relid AND c.relkind IN ('v', 'm') \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = w.attnum \
             JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
               AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
               AND d.refobjsubid > 0 AND d.refobjid <> c.oid \
             JOIN pg_catalog.pg_class bc ON bc.oid = d.refobjid \
             JOIN pg_catalog.pg_namespace bn ON bn.oid = bc.relnamespace \
             JOIN pg_catalog.pg_attribute ba ON ba.attrelid = bc.oid AND ba.attnum = d.refobjsubid \
               AND ba.attname = a.attname \
             ORDER BY 1, 2, 3 DESC, 4, 5",
            oids = oids.join(","),
            attnums = attnums.join(","),
        ))
    }

    /// Stores the answer to the catalog query for `asked`; pairs without a row are remembered
    /// as unnamed, so they are not asked again. (A session that cannot ask right now, say in
    /// the middle of a result, may absorb no rows: column rules then do not apply to those
    /// columns, content detectors still do.)
    pub fn absorb(&mut self, asked: &[FieldSource], rows: impl IntoIterator<Item = CatalogRow>) {
        for a in asked {
            self.cache.insert(*a, None);
        }
        let asked: std::collections::HashSet<FieldSource> = asked.iter().copied().collect();
        self.insert_rows(rows.into_iter().filter(|r| asked.contains(&r.source)));
    }

    /// Replaces the cache with the answer to [`ColumnResolver::preload_query`]: from then on
    /// no RowDescription needs a catalog round trip, until [`ColumnResolver::invalidate_all`].
    pub fn absorb_preload(&mut self, rows: impl IntoIterator<Item = CatalogRow>) {
        self.cache.clear();
        self.insert_rows(rows);
        self.complete = true;
        self.horizon = None;
    }

    /// The preload's views and generated columns (kind `d` rows, see `defined`), after
    /// [`ColumnResolver::absorb_preload`]: each linked to the stored columns behind it.
    pub fn link_definitions(&mut self, defs: &[Definition]) {
        self.generated = defs
            .iter()
            .filter(|d| d.source.attnum > 0)
            .map(|d| d.source)
            .collect();
        defined::link(&mut self.cache, defs);
    }

    /// Whether the preload listed this column as generated (COPY of a table leaves those
    /// out of its rows).
    pub fn is_generated(&self, field: FieldSource) -> bool {
        self.generated.contains(&field)
    }

    /// The preload's horizon row (see [`ColumnResolver::horizon_of`]), absorbed with it.
    pub fn set_horizon(&mut self, oid: u32) {
        self.horizon = Some(oid);
    }

    /// The highest relation OID, if `body` is the preload's horizon row (kind `h`).
    pub fn horizon_of(body: &[u8]) -> Option<u32> {
        let values = datarow::values(body).ok()?;
        if values.len() != 6 || values[2] != Some(b"h".as_slice()) {
            return None;
        }
        std::str::from_utf8(values[0]?).ok()?.parse().ok()
    }

    fn insert_rows(&mut self, rows: impl IntoIterator<Item = CatalogRow>) {
        let mut bases = Vec::new();
        for row in rows {
            if row.is_base {
                bases.push(row);
            } else {
                self.cache.insert(
                    row.source,
                    Some(ResolvedColumn {
                        name: row.name,
                        base: Vec::new(),
                        ..ResolvedColumn::default()
                    }),
                );
            }
        }
        for row in bases {
            if let Some(Some(col)) = self.cache.get_mut(&row.source)
                && !col.base.contains(&row.name)
            {
                col.base.push(row.name);
            }
        }
    }

    /// One SQL statement listing every column that one of `patterns` (`schema.table.column`
    /// globs, as in column rules) can name, and one horizon row (kind `h`, the highest
    /// relation OID; read it with [`ColumnResolver::horizon_of`]): table columns by their own name, view columns by
    /// their own name or a same-named base column. Same six columns as
    /// [`ColumnResolver::catalog_query`]. Run it once per connection before the first
    /// statement (and again after DDL) so that no result has to wait for a catalog query.
    pub fn preload_query<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let mut values = Vec::new();
        for p in patterns {
            let mut parts = p.split('.');
            if let (Some(s), Some(t), Some(c), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                values.push(format!(
                    "({}, {}, {})",
                    like_literal(s),
                    like_literal(t),
                    like_literal(c)
                ));
            }
        }
        if values.is_empty() {
            return None;
        }
        // The sixth column is `text` in the first branch: a UNION takes that branch's
        // type, and as `name` (attname) every definition would be cut to 63 bytes.
        Some(format!(
            "WITH RECURSIVE pat(s, t, c) AS (VALUES {values}), \
             dep(relid, depth) AS (\
               SELECT DISTINCT c.oid, 0 \
               FROM pg_catalog.pg_attribute a \
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE a.attnum > 0 AND NOT a.attisdropped \
                 AND EXISTS (SELECT 1 FROM pat WHERE n.nspname LIKE pat.s AND c.relname LIKE pat.t AND a.attname LIKE pat.c) \
               UNION \
               SELECT r.ev_class, dep.depth + 1 FROM dep \
               JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                 AND d.refobjid = dep.relid AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
               JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
               WHERE r.ev_class <> dep.relid AND dep.depth <= {depth}), \
             deps AS (SELECT relid, pg_catalog.max(depth) AS depth FROM dep GROUP BY relid), \
             base AS (\
               SELECT c.oid AS relid, a.attnum, bn.nspname, bc.relname, ba.attname \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid \
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                 AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                 AND d.refobjsubid > 0 AND d.refobjid <> c.oid \
               JOIN pg_catalog.pg_class bc ON bc.oid = d.refobjid \
               JOIN pg_catalog.pg_namespace bn ON bn.oid = bc.relnamespace \
               JOIN pg_catalog.pg_attribute ba ON ba.attrelid = bc.oid AND ba.attnum = d.refobjsubid \
                 AND ba.attname = a.attname \
               WHERE c.relkind IN ('v', 'm') \
                 AND EXISTS (SELECT 1 FROM pat WHERE bn.nspname LIKE pat.s AND bc.relname LIKE pat.t AND ba.attname LIKE pat.c)) \
             SELECT c.oid, a.attnum, 'c', n.nspname, c.relname, a.attname::pg_catalog.text \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped \
               AND (EXISTS (SELECT 1 FROM pat WHERE n.nspname LIKE pat.s AND c.relname LIKE pat.t AND a.attname LIKE pat.c) \
                 OR EXISTS (SELECT 1 FROM base b WHERE b.relid = c.oid AND b.attnum = a.attnum) \
                 OR c.oid IN (SELECT relid FROM deps)) \
             UNION ALL \
             SELECT relid, attnum, 'b', nspname, relname, attname FROM base \
             UNION ALL \
             SELECT c.oid, 0, 'd', n.nspname, c.relname, \
               CASE WHEN x.depth > {depth} THEN NULL ELSE pg_catalog.pg_get_viewdef(c.oid) END \
             FROM deps x \
             JOIN pg_catalog.pg_class c ON c.oid = x.relid AND c.relkind IN ('v', 'm') \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             UNION ALL \
             SELECT c.oid, a.attnum, 'd', n.nspname, c.relname, \
               CASE WHEN c.oid IN (SELECT relid FROM deps) THEN pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> '' \
             JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
             UNION ALL \
             SELECT (SELECT pg_catalog.max(oid) FROM pg_catalog.pg_class), 0, 'h', '', '', '' \
             ORDER BY 1, 2, 3 DESC, 4, 5",
            values = values.join(", "),
            depth = defined::MAX_DEPTH,
        ))
    }

    /// The cached answer: `None` if never asked, `Some(None)` if the catalog had no such column.
    pub fn lookup(&self, field: FieldSource) -> Option<Option<&ResolvedColumn>> {
        match self.cache.get(&field) {
            Some(found) => Some(found.as_ref()),
            None if self.complete
                && field.is_table_column()
                && self.horizon.is_none_or(|h| field.table_oid <= h) =>
            {
                Some(None)
            }
            None => None,
        }
    }

    /// Forget everything: table OIDs and attribute numbers may mean other columns after DDL.
    /// A preloaded cache stops being complete: preload again, or resolve per result.
    pub fn invalidate_all(&mut self) {
        self.cache.clear();
        self.generated.clear();
        self.complete = false;
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

/// A glob part as a SQL LIKE pattern in an escape string literal: `*` → `%`, LIKE's own
/// wildcards and the escape character taken literally, quotes doubled.
fn like_literal(glob: &str) -> String {
    let mut out = String::from("E'");
    for ch in glob.chars() {
        match ch {
            '*' => out.push('%'),
            // LIKE sees `\_`-style escapes; the escape string literal doubles each backslash.
            '%' | '_' => {
                out.push_str("\\\\");
                out.push(ch);
            }
            '\\' => out.push_str("\\\\\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(oid: u32, attnum: i16, base: bool, s: &str, t: &str, c: &str) -> CatalogRow {
        CatalogRow {
            source: FieldSource {
                table_oid: oid,
                attnum,
            },
            is_base: base,
            name: ColumnName::new(s, t, c),
        }
    }

    #[test]
    fn asks_once_per_unknown_table_column() {
        let mut r = ColumnResolver::new();
        let f = |o, a| FieldSource {
            table_oid: o,
            attnum: a,
        };
        let fields = [f(16384, 1), f(0, 0), f(16384, 2), f(16384, 1), f(16384, -1)];
        let ask = r.unresolved(&fields);
        assert_eq!(ask, [f(16384, 1), f(16384, 2)]);
        let sql = ColumnResolver::catalog_query(&ask).unwrap();
        assert!(
            sql.contains("unnest('{16384,16384}'::pg_catalog.oid[]), pg_catalog.unnest('{1,2}'::pg_catalog.int2[])"),
            "{sql}"
        );
        r.absorb(&ask, [row(16384, 1, false, "public", "customers", "email")]);
        assert!(r.unresolved(&fields).is_empty());
        assert_eq!(
            r.lookup(f(16384, 1)).unwrap().unwrap().name.to_string(),
            "public.customers.email"
        );
        assert_eq!(
            r.lookup(f(16384, 2)),
            Some(None),
            "asked, but the catalog had no such column"
        );
        assert_eq!(r.lookup(f(1, 1)), None);
        r.invalidate_all();
        assert_eq!(r.unresolved(&fields).len(), 2);
        assert_eq!(ColumnResolver::catalog_query(&[]), None);
    }

    #[test]
    fn preload_makes_every_other_column_known_unnamed() {
        let sql = ColumnResolver::preload_query(["public.customers.card_number", "*.*.ssn", "bad"])
            .unwrap();
        assert!(
            sql.contains("(E'public', E'customers', E'card\\\\_number'), (E'%', E'%', E'ssn')"),
            "{sql}"
        );
        assert_eq!(like_literal("o'k\\"), "E'o''k\\\\\\\\'");
        assert_eq!(ColumnResolver::preload_query(["no.dots"]), None);
        let mut r = ColumnResolver::new();
        let card = FieldSource {
            table_oid: 16384,
            attnum: 6,
        };
        let other = FieldSource {
            table_oid: 16384,
            attnum: 2,
        };
        r.absorb_preload([row(16384, 6, false, "public", "customers", "card_number")]);
        assert!(r.unresolved(&[card, other]).is_empty());
        assert_eq!(r.lookup(card).unwrap().unwrap().name.column, "card_number");
        assert_eq!(r.lookup(other), Some(None));
        // A relation created after the preload (a higher OID) is not known to be unnamed.
        let horizon = datarow::encode_body(&[
            Some(b"16390"),
            Some(b"0"),
            Some(b"h"),
            Some(b""),
            Some(b""),
            Some(b""),
        ]);
        assert_eq!(ColumnResolver::horizon_of(&horizon), Some(16390));
        r.set_horizon(16390);
        assert_eq!(r.lookup(other), Some(None));
        let newer = FieldSource {
            table_oid: 16400,
            attnum: 1,
        };
        assert_eq!(r.lookup(newer), None);
        assert_eq!(r.unresolved(&[card, newer]), [newer]);
        assert_eq!(
            r.lookup(FieldSource {
                table_oid: 0,
                attnum: 0
            }),
            None
        );
        r.invalidate_all();
        assert_eq!(r.unresolved(&[card, other]), [card, other]);
    }

    #[test]
    fn view_columns_carry_their_base_columns() {
        let mut r = ColumnResolver::new();
        let v = FieldSource {
            table_oid: 20000,
            attnum: 2,
        };
        r.absorb(
            &[v],
            [
                row(20000, 2, true, "public", "customers", "email"),
                row(20000, 2, false, "public", "customer_v", "email"),
            ],
        );
        let col = r.lookup(v).unwrap().unwrap();
        let names: Vec<String> = col.names().map(ToString::to_string).collect();
        assert_eq!(names, ["public.customer_v.email", "public.customers.email"]);
    }
}
