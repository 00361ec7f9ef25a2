//! Column references per clause, for the masking side-channel guard: a masked column used
//! to filter, join, sort, group or partition leaks its values through which rows come back
//! and in what order, even when the column itself is masked in the output.
//!
//! Names are resolved as far as the statement text allows, without the catalog: an alias
//! to its table (schema only if written), an unqualified column to the one table in scope,
//! a column of a sub-select, CTE or set operation to the columns its expression uses.
//! Whatever cannot be resolved is left `None`, which the guard matches against any table
//! (erring towards refusal). The sql module finds what a statement references, in `mask`'s
//! types; `mask` decides which of these references hit masked columns.

use serde_json::{Map, Value};

use super::scope::{self, FromWalk, Relation, Table};
use super::tree::{
    column_fields, node_of, node_of_map, non_empty, output_name, returning_list, star_of,
    str_field, strings,
};
/// Masking owns the reference types (its side-channel guard is protocol-neutral); this
/// module produces them.
pub use crate::mask::side_channel::{Clause, ColumnReference};

/// A resolved column, before its clause is known; `column` `None`: any column of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Col {
    schema: Option<String>,
    table: Option<String>,
    column: Option<String>,
}

impl Col {
    fn unknown(column: &str) -> Col {
        Col {
            schema: None,
            table: None,
            column: Some(column.to_owned()),
        }
    }
}

/// What a name in FROM stands for.
#[derive(Debug, Clone)]
enum Source {
    Table(Table),
    /// A sub-select, CTE or set operation: each output column and the columns it uses;
    /// `stars` are the sources a `*` in its select list expands to.
    Derived {
        outputs: Vec<(String, Vec<Col>)>,
        stars: Vec<Source>,
    },
    /// A function or VALUES: its columns are not table columns.
    Opaque,
}

type Rel = scope::Rel<Source>;
type Scope<'p> = scope::Scope<'p, Source>;

/// The column references of one statement node (`{"SelectStmt": {...}}` etc.), per clause,
/// deduplicated, in a stable order.
pub(super) fn references(stmt: &Value) -> Vec<ColumnReference> {
    let mut w = Walker { out: Vec::new() };
    let root = Scope::root();
    let mut sink = Vec::new();
    w.expr(stmt, &root, &mut sink);
    w.out.sort();
    w.out.dedup();
    w.out
}

struct Walker {
    out: Vec<ColumnReference>,
}

fn resolve_in(source: &Source, column: &str) -> Vec<Col> {
    match source {
        Source::Table(Table {
            schema,
            table,
            renamed,
        }) => vec![Col {
            schema: schema.clone(),
            table: Some(table.clone()),
            column: (!renamed).then(|| column.to_owned()),
        }],
        Source::Derived { outputs, stars } => {
            let named: Vec<Col> = outputs
                .iter()
                .filter(|(n, _)| n == column)
                .flat_map(|(_, c)| c.iter().cloned())
                .collect();
            if outputs.iter().any(|(n, _)| n == column) {
                named
            } else if !stars.is_empty() {
                stars.iter().flat_map(|s| resolve_in(s, column)).collect()
            } else {
                vec![Col::unknown(column)]
            }
        }
        Source::Opaque => vec![Col::unknown(column)],
    }
}

/// Whether a source can say something definite about `column`: a derived one that has
/// it, or a table whose columns are renamed (any of them may be `column`).
fn derived_knows(source: &Source, column: &str) -> bool {
    match source {
        Source::Derived { outputs, stars } => {
            outputs.iter().any(|(n, _)| n == column)
                || stars.iter().any(|s| derived_knows(s, column))
        }
        Source::Table(t) => t.renamed,
        Source::Opaque => false,
    }
}

impl From<Table> for Source {
    fn from(t: Table) -> Source {
        Source::Table(t)
    }
}

impl Relation for Source {
    /// Renames a derived source's outputs by position.
    fn renamed(self, colnames: &[&str]) -> Source {
        match self {
            Source::Derived { mut outputs, stars } if !colnames.is_empty() => {
                for (o, n) in outputs.iter_mut().zip(colnames) {
                    o.0 = (*n).to_owned();
                }
                Source::Derived { outputs, stars }
            }
            other => other,
        }
    }
}

impl Walker {
    fn record(&mut self, cols: Vec<Col>, clause: Clause) {
        for c in cols {
            self.out.push(ColumnReference {
                schema: c.schema,
                table: c.table,
                column: c.column,
                clause,
            });
        }
    }

    /// Walks `v` in a clause: column references into `out`, nested queries walked
    /// (their own clauses recorded, their select lists into `out`).
    fn clause(&mut self, v: Option<&Value>, scope: &Scope<'_>, clause: Clause) {
        if let Some(v) = v {
            let mut cols = Vec::new();
            self.expr(v, scope, &mut cols);
            self.record(cols, clause);
        }
    }

    fn expr(&mut self, v: &Value, scope: &Scope<'_>, out: &mut Vec<Col>) {
        match v {
            Value::Array(items) => {
                for i in items {
                    self.expr(i, scope, out);
                }
            }
            Value::Object(map) => {
                let Some((ty, inner)) = node_of_map(map) else {
                    for v in map.values() {
                        self.expr(v, scope, out);
                    }
                    return;
                };
                match ty {
                    "ColumnRef" => out.extend(self.column_ref(inner, scope)),
                    "SelectStmt" => {
                        let d = self.select(inner, scope);
                        if let Source::Derived { outputs, .. } = d {
                            out.extend(outputs.into_iter().flat_map(|(_, c)| c));
                        }
                    }
                    "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                        self.dml(ty, inner, scope);
                    }
                    "FuncCall" => {
                        for (k, v) in inner {
                            match k.as_str() {
                                "agg_filter" => self.clause(Some(v), scope, Clause::Where),
                                "agg_order" => self.clause(Some(v), scope, Clause::OrderBy),
                                "over" => {
                                    if let Some(w) = v.as_object() {
                                        self.window(w, scope);
                                    }
                                }
                                _ => self.expr(v, scope, out),
                            }
                        }
                    }
                    "WindowDef" => self.window(inner, scope),
                    _ => {
                        for v in inner.values() {
                            self.expr(v, scope, out);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn window(&mut self, w: &Map<String, Value>, scope: &Scope<'_>) {
        self.clause(w.get("partition_clause"), scope, Clause::Window);
        self.clause(w.get("order_clause"), scope, Clause::Window);
    }

    fn column_ref(&mut self, cr: &Map<String, Value>, scope: &Scope<'_>) -> Vec<Col> {
        let fields = column_fields(cr);
        // A trailing `*` (AStar): a whole row, not one column; nothing nameable.
        let Some(Some(column)) = fields.last().copied() else {
            return Vec::new();
        };
        match fields.len() {
            1 => {
                let rels = scope.all_rels();
                if let [only] = rels.as_slice() {
                    return resolve_in(&only.source, column);
                }
                // Several candidates: unknown table, plus whatever derived relations
                // say the name stands for (`(SELECT ssn AS s ...) x, y WHERE s ...`).
                let mut v = vec![Col::unknown(column)];
                for r in rels {
                    if derived_knows(&r.source, column) {
                        v.extend(resolve_in(&r.source, column));
                    }
                }
                v
            }
            2 => match fields[0].and_then(|a| scope.rel(a)) {
                Some(rel) => resolve_in(&rel.source, column),
                None => vec![Col::unknown(column)],
            },
            n => {
                let schema = fields[n - 3].unwrap_or("");
                let table = fields[n - 2].unwrap_or("");
                vec![Col {
                    schema: non_empty(schema),
                    table: non_empty(table),
                    column: Some(column.to_owned()),
                }]
            }
        }
    }

    /// Walks a SELECT (recording its clauses) and returns what it outputs.
    fn select(&mut self, sel: &Map<String, Value>, parent: &Scope<'_>) -> Source {
        let mut scope = Scope::child(parent);
        scope::with(self, sel.get("with_clause"), &mut scope);
        let larg = sel.get("larg").and_then(Value::as_object);
        let rarg = sel.get("rarg").and_then(Value::as_object);
        if let (Some(l), Some(r)) = (larg, rarg) {
            // UNION / INTERSECT / EXCEPT: outputs named by the left side, columns from both.
            let l = self.select(l, &scope);
            let r = self.select(r, &scope);
            let source = match (l, r) {
                (
                    Source::Derived {
                        mut outputs,
                        mut stars,
                    },
                    Source::Derived {
                        outputs: ro,
                        stars: rs,
                    },
                ) => {
                    for (o, (_, c)) in outputs.iter_mut().zip(ro) {
                        o.1.extend(c);
                    }
                    stars.extend(rs);
                    Source::Derived { outputs, stars }
                }
                (l, _) => l,
            };
            let set_scope = Scope {
                rels: vec![Rel {
                    name: String::new(),
                    source: source.clone(),
                }],
                ctes: Vec::new(),
                parent: Some(&scope),
            };
            // ORDER BY 1 of a set operation: that output's columns, from both sides.
            if let Source::Derived { outputs, .. } = &source {
                for item in sel
                    .get("sort_clause")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(n) = sort_ordinal(item)
                        && let Some((_, cols)) = outputs.get(n)
                    {
                        self.record(cols.clone(), Clause::OrderBy);
                    }
                }
            }
            self.sort_like(sel.get("sort_clause"), &[], &set_scope, Clause::OrderBy);
            let mut sink = Vec::new();
            self.expr_opt(sel.get("limit_count"), &scope, &mut sink);
            self.expr_opt(sel.get("limit_offset"), &scope, &mut sink);
            return source;
        }
        let mut rels = Vec::new();
        scope::from_list(self, sel.get("from_clause"), &scope, &mut rels);
        scope.rels = rels;
        let targets: Vec<(&str, Option<&Value>)> = sel
            .get("target_list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(node_of)
            .filter(|(t, _)| *t == "ResTarget")
            .map(|(_, r)| (str_field(r, "name"), r.get("val")))
            .collect();
        let mut outputs = Vec::new();
        let mut stars = Vec::new();
        for (name, val) in &targets {
            let Some(val) = val else { continue };
            if let Some(qual) = star_of(val) {
                stars.extend(scope.star(&qual));
                continue;
            }
            let mut cols = Vec::new();
            self.expr(val, &scope, &mut cols);
            let out_name = if !name.is_empty() {
                (*name).to_owned()
            } else {
                output_name(val)
            };
            outputs.push((out_name, cols));
        }
        self.clause(sel.get("where_clause"), &scope, Clause::Where);
        self.clause(sel.get("having_clause"), &scope, Clause::Having);
        self.sort_like(sel.get("group_clause"), &targets, &scope, Clause::GroupBy);
        self.sort_like(sel.get("sort_clause"), &targets, &scope, Clause::OrderBy);
        // Plain DISTINCT is `[{}]` (no expression): nothing to record.
        self.sort_like(
            sel.get("distinct_clause"),
            &targets,
            &scope,
            Clause::DistinctOn,
        );
        for w in sel
            .get("window_clause")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(("WindowDef", w)) = node_of(w) {
                self.window(w, &scope);
            }
        }
        let mut sink = Vec::new();
        for k in [
            "values_lists",
            "limit_count",
            "limit_offset",
            "locking_clause",
        ] {
            self.expr_opt(sel.get(k), &scope, &mut sink);
        }
        Source::Derived { outputs, stars }
    }

    fn expr_opt(&mut self, v: Option<&Value>, scope: &Scope<'_>, out: &mut Vec<Col>) {
        if let Some(v) = v {
            self.expr(v, scope, out);
        }
    }

    /// ORDER BY / GROUP BY / DISTINCT ON items: an ordinal or an output alias stands for
    /// that select-list expression (both readings are recorded when a name is also a column).
    fn sort_like(
        &mut self,
        items: Option<&Value>,
        targets: &[(&str, Option<&Value>)],
        scope: &Scope<'_>,
        clause: Clause,
    ) {
        for item in items.and_then(Value::as_array).into_iter().flatten() {
            let expr = match node_of(item) {
                Some(("SortBy", s)) => s.get("node"),
                _ => Some(item),
            };
            let Some(expr) = expr else { continue };
            let mut cols = Vec::new();
            match node_of(expr) {
                Some(("AConst", _)) => {
                    if let Some(i) = sort_ordinal(item)
                        && let Some((_, Some(val))) = targets.get(i)
                    {
                        self.expr(val, scope, &mut cols);
                    }
                }
                Some(("ColumnRef", cr)) => {
                    let names = strings(cr.get("fields"));
                    if let [name] = names.as_slice() {
                        for (_, val) in targets.iter().filter(|(n, _)| n == name) {
                            if let Some(val) = val {
                                self.expr(val, scope, &mut cols);
                            }
                        }
                    }
                    self.expr(expr, scope, &mut cols);
                }
                _ => self.expr(expr, scope, &mut cols),
            }
            self.record(cols, clause);
        }
    }

    /// INSERT / UPDATE / DELETE / MERGE: the target and its conditions. RETURNING and SET
    /// values are not side channels, but sub-selects in them are walked.
    fn dml(&mut self, ty: &str, st: &Map<String, Value>, parent: &Scope<'_>) {
        let mut scope = Scope::child(parent);
        scope::with(self, st.get("with_clause"), &mut scope);
        let mut rels = Vec::new();
        scope::target_relation(self, st, &scope, &mut rels);
        let mut sink = Vec::new();
        match ty {
            "InsertStmt" => {
                scope.rels = Vec::new();
                self.expr_opt(st.get("select_stmt"), &scope, &mut sink);
                scope.rels = rels;
                if let Some(oc) = st.get("on_conflict_clause").and_then(Value::as_object) {
                    self.clause(oc.get("where_clause"), &scope, Clause::Where);
                    self.expr_opt(oc.get("target_list"), &scope, &mut sink);
                    if let Some(infer) = oc.get("infer").and_then(Value::as_object) {
                        self.clause(infer.get("where_clause"), &scope, Clause::Where);
                    }
                }
            }
            "UpdateStmt" | "DeleteStmt" => {
                let extra = if ty == "UpdateStmt" {
                    "from_clause"
                } else {
                    "using_clause"
                };
                scope::from_list(self, st.get(extra), &scope, &mut rels);
                scope.rels = rels;
                self.clause(st.get("where_clause"), &scope, Clause::Where);
                self.expr_opt(st.get("target_list"), &scope, &mut sink);
            }
            _ => {
                if let Some(src) = st.get("source_relation") {
                    scope::range_item(self, src, &scope, &mut rels);
                }
                scope.rels = rels;
                self.clause(st.get("join_condition"), &scope, Clause::Join);
                for w in st
                    .get("merge_when_clauses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some((_, w)) = node_of(w) {
                        self.clause(w.get("condition"), &scope, Clause::Where);
                        self.expr_opt(w.get("target_list"), &scope, &mut sink);
                        self.expr_opt(w.get("values"), &scope, &mut sink);
                    }
                }
            }
        }
        self.expr_opt(returning_list(st), &scope, &mut sink);
    }
}

/// What each FROM item stands for in the side-channel walk (the names: `scope`).
impl FromWalk for Walker {
    type Source = Source;

    fn query(&mut self, query: Option<&Value>, scope: &Scope<'_>) -> Source {
        match query.and_then(node_of) {
            Some(("SelectStmt", q)) => self.select(q, scope),
            Some((ty, q)) => {
                self.dml(ty, q, scope);
                Source::Opaque
            }
            None => Source::Opaque,
        }
    }

    /// Join conditions are recorded against the join's own relations.
    fn join(
        &mut self,
        inner: &Map<String, Value>,
        own: Vec<Rel>,
        scope: &Scope<'_>,
        alias: &str,
        rels: &mut Vec<Rel>,
    ) {
        self.clause(inner.get("quals"), scope, Clause::Join);
        for col in strings(inner.get("using_clause")) {
            let cols = own
                .iter()
                .flat_map(|r| resolve_in(&r.source, col))
                .collect();
            self.record(cols, Clause::Join);
        }
        if !alias.is_empty() {
            // `JOIN ... AS j`: j hides the inner names; its columns may be any of them.
            rels.push(Rel {
                name: alias.to_owned(),
                source: Source::Derived {
                    outputs: Vec::new(),
                    stars: own.into_iter().map(|r| r.source).collect(),
                },
            });
        } else {
            rels.extend(own);
        }
    }

    /// RangeFunction, RangeTableFunc, ...: arguments may hold sub-selects.
    fn function(&mut self, item: &Value, scope: &Scope<'_>, alias: &str, _: &[&str]) -> Rel {
        let mut sink = Vec::new();
        self.expr(item, scope, &mut sink);
        Rel {
            name: alias.to_owned(),
            source: Source::Opaque,
        }
    }
}

/// `ORDER BY 2` / `GROUP BY 2`: the zero-based select-list position.
fn sort_ordinal(item: &Value) -> Option<usize> {
    let expr = match node_of(item) {
        Some(("SortBy", s)) => s.get("node")?,
        _ => item,
    };
    let (ty, c) = node_of(expr)?;
    if ty != "AConst" {
        return None;
    }
    let n = c
        .get("val")?
        .get("Ival")?
        .get("ival")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    usize::try_from(n.checked_sub(1)?).ok()
}

#[cfg(test)]
mod tests;
