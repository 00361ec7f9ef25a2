//! Where each result value comes from, for the masking lineage guard: a column rule masks
//! a column PostgreSQL reports as itself (RowDescription's table OID and attribute), and
//! nothing else. So every value that is *not* such a column, yet is computed from columns
//! (functions, operators, casts, CASE, aggregates, window functions, sub-selects, set
//! operations, VALUES, functions in FROM, row and array constructors, JSON builders) or
//! from whole rows (`SELECT c FROM t c`, `to_json(t)`, `t.*` inside an expression) becomes
//! a [`Derivation`], and `mask` decides which of these a rule forbids.
//!
//! "Returned as itself" follows PostgreSQL's own origin tracking (`markTargetListOrigins`):
//! a bare column of a table, through sub-selects, CTEs and inner/outer joins, but not
//! through set operations, VALUES, functions in FROM, or the merged column of a FULL JOIN
//! USING. Values that are written somewhere (INSERT, UPDATE SET, CREATE TABLE AS, views,
//! function bodies, DO blocks) count as derived even when bare: a copy is not masked
//! where it lands. Names are resolved from the text alone, as in `columns`: what cannot
//! be qualified stays `None`, which matches any rule pattern part (refusal, not leak).

use serde_json::{Map, Value};

use super::scope::{self, FromWalk, Relation, Table};
use super::tree::{
    column_fields, int_field, items, node_of, node_of_map, non_empty, output_name, returning_list,
    star_of, str_field, strings,
};
pub use crate::mask::{Derivation, Slot};

/// How a derivation found in a row-deciding clause names itself (`WHERE clause`).
pub(super) const CLAUSE: &str = "clause";

/// Longest output expression quoted in a derivation.
const MAX_EXPRESSION: usize = 200;

/// A column (or, `column: None`, a whole row) of a relation, and the functions on the
/// value's way from it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ref {
    schema: Option<String>,
    table: Option<String>,
    column: Option<String>,
    through: Vec<String>,
}

impl Ref {
    fn unknown(column: &str) -> Ref {
        Ref {
            schema: None,
            table: None,
            column: Some(column.to_owned()),
            through: Vec::new(),
        }
    }
}

/// One output column of a sub-select, CTE or set operation.
#[derive(Debug, Clone)]
struct Out {
    name: String,
    refs: Vec<Ref>,
    /// PostgreSQL reports it as a table column (a bare column, followed through).
    direct: bool,
}

/// What a name in FROM stands for.
#[derive(Debug, Clone)]
enum Source {
    Table(Table),
    /// A sub-select, CTE, set operation or a join with an alias; `stars`: what a `*` in
    /// its select list expanded to, `stars_direct`: whether those keep their origin.
    Derived {
        outputs: Vec<Out>,
        stars: Vec<Source>,
        stars_direct: bool,
    },
    /// A function or VALUES in FROM, a merged FULL JOIN column: every column it has (or
    /// only `names`, when known) is computed from `refs`.
    Computed {
        names: Option<Vec<String>>,
        refs: Vec<Ref>,
    },
}

type Rel = scope::Rel<Source>;
type Scope<'p> = scope::Scope<'p, Source>;

/// One output column of a query the database keeps (a view's definition, a generated
/// column's expression over its table): the columns (or, `column: None`, whole rows) its
/// value comes from, and whether PostgreSQL reports it as that one column itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedOutput {
    pub refs: Vec<DefinedRef>,
    pub direct: bool,
}

/// A column a [`DefinedOutput`] comes from, as named in the definition (unqualified parts
/// `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedRef {
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
}

/// The output columns of one query the database keeps (`pg_get_viewdef`'s text, or
/// `SELECT expr FROM table` for a generated column), in order, by the same analysis as
/// statements. `None` when it is not one plain query this analysis reads whole (the
/// caller then fails closed). Parse on a thread with the parser's stack size.
pub fn defined_outputs(query: &str) -> Option<Vec<DefinedOutput>> {
    let parsed = pg_query::parse(query, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let value = serde_json::to_value(raw.stmt.as_ref()?.as_ref()).ok()?;
    let Some(("SelectStmt", sel)) = node_of(&value) else {
        return None;
    };
    let mut w = Walker {
        text: query,
        out: Vec::new(),
        tokens: None,
        top: false,
    };
    let Source::Derived { outputs, stars, .. } = w.select(sel, &Scope::root()) else {
        return None;
    };
    // `pg_get_viewdef` spells out every `*`; one left means a shape not read here.
    if !stars.is_empty() {
        return None;
    }
    Some(
        outputs
            .into_iter()
            .map(|o| DefinedOutput {
                direct: o.direct,
                refs: o
                    .refs
                    .into_iter()
                    .map(|r| DefinedRef {
                        schema: r.schema,
                        table: r.table,
                        column: r.column,
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// The derivations of one statement node (`{"SelectStmt": {...}}` etc.). `text` is the
/// text the tree's locations point into; `writes`: the statement's results are kept
/// rather than returned (a procedural body), so even bare columns count.
pub(super) fn derivations(stmt: &Value, text: &str, writes: bool) -> Vec<Derivation> {
    let mut w = Walker {
        text,
        out: Vec::new(),
        tokens: None,
        top: true,
    };
    w.statement(stmt, &Scope::root(), writes);
    w.out.sort();
    w.out.dedup();
    w.out
}

struct Walker<'t> {
    text: &'t str,
    out: Vec<Derivation>,
    /// The text's tokens, scanned once, when an expression is first quoted.
    tokens: Option<Vec<pg_query::protobuf::ScanToken>>,
    /// The next result met is the statement's own (what the worker receives), so its
    /// values get a [`Slot`]; cleared once taken, and by statements whose own result is
    /// not those values (COPY, DECLARE CURSOR, EXPLAIN).
    top: bool,
}

/// Every column and whole row a source can give, as refs (for `SELECT s FROM (...) s`
/// and a `*` whose values are kept or lose their origin).
fn whole(source: &Source) -> Vec<Ref> {
    match source {
        Source::Table(Table { schema, table, .. }) => vec![Ref {
            schema: schema.clone(),
            table: Some(table.clone()),
            column: None,
            through: Vec::new(),
        }],
        Source::Derived { outputs, stars, .. } => outputs
            .iter()
            .flat_map(|o| o.refs.iter().cloned())
            .chain(stars.iter().flat_map(whole))
            .collect(),
        Source::Computed { refs, .. } => refs.clone(),
    }
}

/// The refs of `column` in `source`, and whether PostgreSQL reports it as a table column.
/// `None`: the source cannot have it (as far as known).
fn resolve(source: &Source, column: &str) -> Option<(Vec<Ref>, bool)> {
    match source {
        Source::Table(Table {
            schema,
            table,
            renamed,
        }) => Some((
            vec![Ref {
                schema: schema.clone(),
                table: Some(table.clone()),
                column: (!renamed).then(|| column.to_owned()),
                through: Vec::new(),
            }],
            true,
        )),
        Source::Derived {
            outputs,
            stars,
            stars_direct,
        } => {
            if let Some(o) = outputs.iter().find(|o| o.name == column) {
                return Some((o.refs.clone(), o.direct));
            }
            let mut refs = Vec::new();
            let mut direct = *stars_direct;
            let mut found = false;
            for s in stars {
                if let Some((r, d)) = resolve(s, column) {
                    found = true;
                    refs.extend(r);
                    direct &= d;
                }
            }
            found.then_some((refs, direct))
        }
        Source::Computed { names, refs } => match names {
            Some(n) if !n.iter().any(|n| n == column) => None,
            _ => Some((refs.clone(), false)),
        },
    }
}

/// Whether a derived source is known to have an output of this name (so a same-named
/// relation reference is a column, not a whole row).
fn knows(source: &Source, column: &str) -> bool {
    match source {
        Source::Derived { outputs, stars, .. } => {
            outputs.iter().any(|o| o.name == column) || stars.iter().any(|s| knows(s, column))
        }
        Source::Computed { names: Some(n), .. } => n.iter().any(|n| n == column),
        _ => false,
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
            Source::Derived {
                mut outputs,
                stars,
                stars_direct,
            } if !colnames.is_empty() => {
                for (o, n) in outputs.iter_mut().zip(colnames) {
                    o.name = (*n).to_owned();
                }
                Source::Derived {
                    outputs,
                    stars,
                    stars_direct,
                }
            }
            Source::Computed { refs, .. } if !colnames.is_empty() => Source::Computed {
                names: Some(colnames.iter().map(|s| (*s).to_owned()).collect()),
                refs,
            },
            other => other,
        }
    }
}

/// A select-list item: its output name, value and where it starts in the text.
struct Target<'a> {
    name: String,
    val: &'a Value,
    location: i64,
}

/// The place of each non-`*` output in the result: from the start while no `*` comes
/// before it, else from the end while none comes after it, else unknown. Without a
/// select list of its own (a set operation), outputs are in order unless a `*` hides.
fn slots(outputs: usize, stars: bool, located: &[Target<'_>]) -> Vec<Option<Slot>> {
    if located.is_empty() {
        return (0..outputs)
            .map(|i| (!stars).then_some(Slot::FromStart(i)))
            .collect();
    }
    let is_star: Vec<bool> = located.iter().map(|t| star_of(t.val).is_some()).collect();
    let plain: Vec<usize> = (0..located.len()).filter(|&j| !is_star[j]).collect();
    if plain.len() != outputs {
        return vec![None; outputs];
    }
    plain
        .into_iter()
        .map(|j| {
            if !is_star[..j].contains(&true) {
                Some(Slot::FromStart(j))
            } else if !is_star[j + 1..].contains(&true) {
                Some(Slot::FromEnd(located.len() - 1 - j))
            } else {
                None
            }
        })
        .collect()
}

fn targets(list: Option<&Value>) -> Vec<Target<'_>> {
    items(list)
        .filter_map(node_of)
        .filter(|(t, _)| *t == "ResTarget")
        .filter_map(|(_, r)| {
            let val = r.get("val")?;
            let name = match str_field(r, "name") {
                "" => output_name(val),
                n => n.to_owned(),
            };
            Some(Target {
                name,
                val,
                location: int_field(r, "location"),
            })
        })
        .collect()
}

impl Walker<'_> {
    /// The text of the expression starting at `location`, up to the end of the select-list
    /// item (a top-level comma, `AS`, `FROM`, ...), constants shown as `?` (so texts that
    /// differ only in constants classify alike, and no literal is echoed), shortened.
    fn expression_at(&mut self, location: i64) -> String {
        use pg_query::protobuf::Token;
        let text = self.text;
        let Some((start, rest)) = usize::try_from(location)
            .ok()
            .and_then(|l| Some((l, text.get(l..)?)))
        else {
            return "?".into();
        };
        let tokens = self
            .tokens
            .get_or_insert_with(|| pg_query::scan_tokens(text).unwrap_or_default());
        let first = tokens.partition_point(|t| (t.start as usize) < start);
        let constants = [
            Token::Fconst,
            Token::Sconst,
            Token::Usconst,
            Token::Bconst,
            Token::Xconst,
            Token::Iconst,
        ]
        .map(|t| t as i32);
        let mut expr = String::new();
        let mut at = 0usize;
        let mut depth = 0i32;
        for t in &tokens[first..] {
            let (s, e) = (t.start as usize - start, t.end as usize - start);
            let Some(word) = rest.get(s..e) else { break };
            let stop = match word.to_ascii_lowercase().as_str() {
                "(" | "[" | "case" => {
                    depth += 1;
                    false
                }
                ")" | "]" | "end" if depth > 0 => {
                    depth -= 1;
                    false
                }
                ")" | "]" | "," | ";" => true,
                "as" | "from" | "where" | "into" | "group" | "having" | "window" | "order"
                | "limit" | "offset" | "fetch" | "for" | "union" | "intersect" | "except"
                | "returning" | "on" => depth == 0,
                _ => false,
            };
            if stop {
                break;
            }
            expr.push_str(rest.get(at..s).unwrap_or(" "));
            expr.push_str(if constants.contains(&t.token) {
                "?"
            } else {
                word
            });
            at = e;
            if expr.len() > MAX_EXPRESSION {
                let mut cut = MAX_EXPRESSION;
                while !expr.is_char_boundary(cut) {
                    cut -= 1;
                }
                expr.truncate(cut);
                expr.push_str("...");
                break;
            }
        }
        expr.trim().to_owned()
    }

    fn emit(&mut self, refs: &[Ref], expression: &str) {
        self.emit_at(refs, expression, None);
    }

    fn emit_at(&mut self, refs: &[Ref], expression: &str, output: Option<Slot>) {
        for r in refs {
            self.out.push(Derivation {
                schema: r.schema.clone(),
                table: r.table.clone(),
                column: r.column.clone(),
                through: r.through.clone(),
                expression: expression.to_owned(),
                output,
            });
        }
    }

    /// Whether the result met now is the statement's own (and no later one is).
    fn take_top(&mut self) -> bool {
        std::mem::replace(&mut self.top, false)
    }

    /// The outputs of a statement's result (or of what it keeps, `writes`): every value
    /// that is not a column returned as itself becomes a derivation; in the statement's
    /// own result (`top`), with its place there.
    fn result(&mut self, src: &Source, list: Option<&Value>, writes: bool, top: bool) {
        let Source::Derived {
            outputs,
            stars,
            stars_direct,
        } = src
        else {
            if let Source::Computed { refs, .. } = src {
                self.emit(refs, "VALUES");
            }
            return;
        };
        let located = targets(list);
        let slots = if top && !writes {
            slots(outputs.len(), !stars.is_empty(), &located)
        } else {
            vec![None; outputs.len()]
        };
        for (i, o) in outputs.iter().enumerate() {
            if o.direct && !writes {
                continue;
            }
            let expr = located
                .iter()
                .filter(|t| star_of(t.val).is_none())
                .nth(i)
                .map(|t| self.expression_at(t.location))
                .unwrap_or_else(|| o.name.clone());
            self.emit_at(&o.refs, &expr, slots.get(i).copied().flatten());
        }
        for s in stars {
            self.star_result(s, writes || !stars_direct);
        }
    }

    /// A `*` of the result: each column it expands to, as itself unless derived there.
    fn star_result(&mut self, s: &Source, writes: bool) {
        match s {
            Source::Table(_) if writes => self.emit(&whole(s), "*"),
            Source::Table(_) => {}
            Source::Derived {
                outputs,
                stars,
                stars_direct,
            } => {
                for o in outputs {
                    if !o.direct || writes {
                        self.emit(&o.refs, &format!("* ({})", o.name));
                    }
                }
                for s in stars {
                    self.star_result(s, writes || !stars_direct);
                }
            }
            Source::Computed { refs, .. } => self.emit(refs, "*"),
        }
    }

    /// One statement: what its result returns, and what it keeps.
    fn statement(&mut self, v: &Value, scope: &Scope<'_>, writes: bool) {
        let Some((ty, inner)) = node_of(v) else {
            return;
        };
        match ty {
            "SelectStmt" => {
                let top = self.take_top();
                let src = self.select(inner, scope);
                // SELECT ... INTO keeps the rows in a new table.
                let keeps = writes || inner.get("into_clause").is_some_and(|v| !v.is_null());
                self.result(&src, inner.get("target_list"), keeps, top);
            }
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                let top = self.take_top();
                self.dml(ty, inner, scope, writes, top);
            }
            // The query's rows are the result (of a later EXECUTE, for PREPARE).
            "PrepareStmt" => {
                if let Some(q) = inner.get("query") {
                    self.statement(q, scope, writes);
                }
            }
            // The query's rows leave another way (COPY data, a later FETCH) or not at
            // all (EXPLAIN): no place in this statement's result.
            "CopyStmt" | "DeclareCursorStmt" | "ExplainStmt" => {
                self.top = false;
                if let Some(q) = inner.get("query") {
                    self.statement(q, scope, writes);
                }
            }
            // The query's rows are kept (a table, a view, a materialized view).
            "CreateTableAsStmt" | "ViewStmt" => {
                let query = inner.get("query");
                if let Some(("ExecuteStmt", _)) = query.and_then(node_of) {
                    // `CREATE TABLE t AS EXECUTE p`: what `p` selects is not in this text;
                    // it may be any table's any column, kept unmasked.
                    let any = Ref {
                        schema: None,
                        table: None,
                        column: None,
                        through: Vec::new(),
                    };
                    self.emit(&[any], "CREATE TABLE AS EXECUTE");
                } else if let Some(q) = query {
                    self.statement(q, scope, true);
                }
            }
            // Anything else (rules, SQL-standard function bodies, generated columns,
            // defaults, triggers' WHEN, ...): every column it mentions may be kept.
            _ => {
                let refs = self.expr(v, scope);
                let text = self.text.trim();
                let head: String = text.chars().take(60).collect();
                self.emit(&refs, &head);
            }
        }
    }

    /// A SELECT's outputs (set operations and VALUES included).
    fn select(&mut self, sel: &Map<String, Value>, parent: &Scope<'_>) -> Source {
        let mut scope = Scope::child(parent);
        scope::with(self, sel.get("with_clause"), &mut scope);
        let larg = sel.get("larg").and_then(Value::as_object);
        let rarg = sel.get("rarg").and_then(Value::as_object);
        if let (Some(l), Some(r)) = (larg, rarg) {
            // UNION / INTERSECT / EXCEPT: named by the left side, values from both, and
            // never reported as table columns.
            let l = self.select(l, &scope);
            let r = self.select(r, &scope);
            let (mut outputs, mut stars) = match l {
                Source::Derived { outputs, stars, .. } => (outputs, stars),
                other => (Vec::new(), vec![other]),
            };
            match r {
                Source::Derived {
                    outputs: ro,
                    stars: rs,
                    ..
                } => {
                    let extra: Vec<Ref> = ro.iter().flat_map(|o| o.refs.clone()).collect();
                    if outputs.len() == ro.len() {
                        for (o, r) in outputs.iter_mut().zip(ro) {
                            o.refs.extend(r.refs);
                        }
                    } else if let Some(first) = outputs.first_mut() {
                        // Stars on one side: positions unknown; keep every value.
                        first.refs.extend(extra);
                    } else {
                        stars.push(Source::Computed {
                            names: None,
                            refs: extra,
                        });
                    }
                    stars.extend(rs);
                }
                other => stars.push(other),
            }
            for o in &mut outputs {
                o.direct = false;
            }
            self.condition(sel.get("sort_clause"), &scope, "ORDER BY");
            self.condition(sel.get("limit_count"), &scope, "LIMIT");
            self.condition(sel.get("limit_offset"), &scope, "OFFSET");
            return Source::Derived {
                outputs,
                stars,
                stars_direct: false,
            };
        }
        if let Some(values) = sel.get("values_lists").and_then(Value::as_array)
            && !values.is_empty()
        {
            let mut refs = Vec::new();
            for row in values {
                refs.extend(self.expr(row, &scope));
            }
            return Source::Computed { names: None, refs };
        }
        let mut rels = Vec::new();
        scope::from_list(self, sel.get("from_clause"), &scope, &mut rels);
        scope.rels = rels;
        let listed = self.select_list(sel.get("target_list"), &scope);
        for (key, clause) in [
            ("where_clause", "WHERE"),
            ("having_clause", "HAVING"),
            ("group_clause", "GROUP BY"),
            ("sort_clause", "ORDER BY"),
            ("distinct_clause", "DISTINCT ON"),
            ("window_clause", "WINDOW"),
            ("limit_count", "LIMIT"),
            ("limit_offset", "OFFSET"),
        ] {
            self.condition(sel.get(key), &scope, clause);
        }
        listed
    }

    /// A select list or RETURNING list: its outputs, and what its `*`s expand to.
    fn select_list(&mut self, list: Option<&Value>, scope: &Scope<'_>) -> Source {
        let mut outputs = Vec::new();
        let mut stars = Vec::new();
        for t in targets(list) {
            if let Some(qual) = star_of(t.val) {
                stars.extend(scope.star(&qual));
                continue;
            }
            let (refs, direct) = self.target(t.val, scope);
            outputs.push(Out {
                name: t.name,
                refs,
                direct,
            });
        }
        Source::Derived {
            outputs,
            stars,
            stars_direct: true,
        }
    }

    /// One select-list value: its refs, and whether it is a column returned as itself.
    fn target(&mut self, val: &Value, scope: &Scope<'_>) -> (Vec<Ref>, bool) {
        if let Some(("ColumnRef", cr)) = node_of(val) {
            return self.column_ref(cr, scope);
        }
        (self.expr(val, scope), false)
    }

    /// INSERT / UPDATE / DELETE / MERGE: what they write counts as kept; RETURNING is
    /// their result (and what a CTE of them outputs).
    fn dml(
        &mut self,
        ty: &str,
        st: &Map<String, Value>,
        parent: &Scope<'_>,
        writes: bool,
        top: bool,
    ) -> Source {
        let mut scope = Scope::child(parent);
        scope::with(self, st.get("with_clause"), &mut scope);
        let mut rels = Vec::new();
        scope::target_relation(self, st, &scope, &mut rels);
        let head = ty.trim_end_matches("Stmt").to_ascii_uppercase();
        match ty {
            "InsertStmt" => {
                if let Some(q) = st.get("select_stmt") {
                    self.statement(q, &scope, true);
                }
                scope.rels = rels;
                if let Some(oc) = st.get("on_conflict_clause").and_then(Value::as_object) {
                    self.condition(oc.get("where_clause"), &scope, "ON CONFLICT WHERE");
                    let refs = self.expr_opt(oc.get("target_list"), &scope);
                    self.emit(&refs, "ON CONFLICT DO UPDATE SET");
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
                self.condition(st.get("where_clause"), &scope, "WHERE");
                for t in targets(st.get("target_list")) {
                    let refs = self.expr(t.val, &scope);
                    let expr = self.expression_at(t.location);
                    self.emit(&refs, &format!("{head} SET {}", expr));
                }
            }
            _ => {
                if let Some(src) = st.get("source_relation") {
                    scope::range_item(self, src, &scope, &mut rels);
                }
                scope.rels = rels;
                self.condition(st.get("join_condition"), &scope, "MERGE ON");
                for w in items(st.get("merge_when_clauses")) {
                    if let Some((_, w)) = node_of(w) {
                        self.condition(w.get("condition"), &scope, "MERGE WHEN");
                        let mut refs = self.expr_opt(w.get("target_list"), &scope);
                        refs.extend(self.expr_opt(w.get("values"), &scope));
                        self.emit(&refs, "MERGE");
                    }
                }
            }
        }
        let returning = returning_list(st);
        let src = self.select_list(returning, &scope);
        self.result(&src, returning, writes, top);
        src
    }

    /// A clause that decides which rows rather than returning values (WHERE, JOIN ON,
    /// ORDER BY, ...). Using a masked column there is the side-channel guard's business,
    /// but a cast or a function of it can fail with the value quoted in its error
    /// (`WHERE ssn::int = 0`): such a use counts as a derivation, named after the clause.
    fn condition(&mut self, v: Option<&Value>, scope: &Scope<'_>, clause: &str) {
        let Some(v) = v else { return };
        let refs: Vec<Ref> = self
            .expr(v, scope)
            .into_iter()
            .filter(|r| {
                r.through
                    .iter()
                    .any(|t| t == "TypeCast" || t.starts_with(|c: char| !c.is_ascii_uppercase()))
            })
            .collect();
        self.emit(&refs, &format!("{clause} {CLAUSE}"));
    }

    fn expr_opt(&mut self, v: Option<&Value>, scope: &Scope<'_>) -> Vec<Ref> {
        v.map(|v| self.expr(v, scope)).unwrap_or_default()
    }

    /// Every column and whole row an expression's value is computed from, with the
    /// functions on the way. Unknown node kinds are walked field by field: whatever they
    /// hold counts (fail closed).
    fn expr(&mut self, v: &Value, scope: &Scope<'_>) -> Vec<Ref> {
        match v {
            Value::Array(list) => list.iter().flat_map(|i| self.expr(i, scope)).collect(),
            Value::Object(map) => {
                let Some((ty, inner)) = node_of_map(map) else {
                    return map.values().flat_map(|v| self.expr(v, scope)).collect();
                };
                match ty {
                    "ColumnRef" => {
                        if let Some(qual) = star_of(v) {
                            return self.star_refs(&qual, scope);
                        }
                        self.column_ref(inner, scope).0
                    }
                    "FuncCall" => {
                        let name = strings(inner.get("funcname")).join(".").to_lowercase();
                        // Only the arguments flow into the value; FILTER, ORDER BY and OVER
                        // decide which rows (the side-channel guard's business, save for
                        // what could fail with the value: `condition`).
                        let mut refs = self.expr_opt(inner.get("args"), scope);
                        for r in &mut refs {
                            r.through.push(name.clone());
                        }
                        self.condition(inner.get("agg_filter"), scope, "FILTER");
                        self.condition(inner.get("agg_order"), scope, "ORDER BY");
                        self.condition(inner.get("over"), scope, "OVER");
                        refs
                    }
                    "SubLink" => {
                        let kind = int_field(inner, "sub_link_type");
                        let mut refs = self.expr_opt(inner.get("testexpr"), scope);
                        let sub = inner.get("subselect").and_then(node_of);
                        if let Some(("SelectStmt", q)) = sub {
                            let src = self.select(q, scope);
                            // EXISTS returns whether rows exist (the WHERE inside is the
                            // side-channel guard's); the others return or compare values.
                            if kind != pg_query::protobuf::SubLinkType::ExistsSublink as i64 {
                                refs.extend(whole(&src));
                            }
                        }
                        refs
                    }
                    "SelectStmt" => {
                        let src = self.select(inner, scope);
                        whole(&src)
                    }
                    // Anything else computes (a cast, an operator, CASE, a row, ...): it
                    // is on the way too, so no function outside it counts as applied to
                    // the column directly (`count(ssn::int)` errors with the value).
                    _ => {
                        let mut refs: Vec<Ref> =
                            inner.values().flat_map(|v| self.expr(v, scope)).collect();
                        if ty != "List" {
                            for r in &mut refs {
                                r.through.push(ty.to_owned());
                            }
                        }
                        refs
                    }
                }
            }
            _ => Vec::new(),
        }
    }

    /// `t.*` or `*` inside an expression: whole rows.
    fn star_refs(&mut self, qual: &[&str], scope: &Scope<'_>) -> Vec<Ref> {
        scope.star(qual).iter().flat_map(whole).collect()
    }

    /// A column reference: its refs and whether it is a table column as itself. A single
    /// name that is also a relation in scope may be that relation's whole row.
    fn column_ref(&mut self, cr: &Map<String, Value>, scope: &Scope<'_>) -> (Vec<Ref>, bool) {
        let fields = column_fields(cr);
        let Some(Some(column)) = fields.last().copied() else {
            return (Vec::new(), false);
        };
        match fields.len() {
            1 => {
                let rels = scope.all_rels();
                let mut refs = Vec::new();
                let mut direct = true;
                let mut found = false;
                for r in &rels {
                    if let Some((rf, d)) = resolve(&r.source, column) {
                        // A table "has" every name; a derived source only its own. A
                        // candidate that yields nothing cannot make the value revealing.
                        let certain = !matches!(r.source, Source::Table(_));
                        if certain || rels.len() == 1 {
                            found = true;
                            direct &= d || rf.is_empty();
                            refs.extend(rf);
                        } else {
                            refs.extend(rf.into_iter().map(|mut x| {
                                // Which table is unknown.
                                x.schema = None;
                                x.table = None;
                                x
                            }));
                            found = true;
                        }
                    }
                }
                if !found {
                    refs.push(Ref::unknown(column));
                    direct = false;
                }
                // `SELECT c FROM t c`: unless a source is known to have a column `c`, it
                // may be the whole row of `c`.
                if let Some(rel) = scope.rel(column)
                    && !rels.iter().any(|r| knows(&r.source, column))
                {
                    refs.extend(whole(&rel.source));
                    direct = false;
                }
                refs.dedup();
                (refs, direct)
            }
            2 => match fields[0].and_then(|a| scope.rel(a)) {
                Some(rel) => resolve(&rel.source, column)
                    .unwrap_or_else(|| (vec![Ref::unknown(column)], false)),
                // `(comp).field` written as `comp.field`: a field of a column's value.
                None => (
                    vec![
                        Ref::unknown(column),
                        Ref::unknown(fields[0].unwrap_or(column)),
                    ],
                    false,
                ),
            },
            n => {
                let schema = fields[n - 3].unwrap_or("");
                let table = fields[n - 2].unwrap_or("");
                (
                    vec![Ref {
                        schema: non_empty(schema),
                        table: non_empty(table),
                        column: Some(column.to_owned()),
                        through: Vec::new(),
                    }],
                    true,
                )
            }
        }
    }
}

/// What each FROM item stands for in the lineage walk (the names: `scope`).
impl FromWalk for Walker<'_> {
    type Source = Source;

    fn query(&mut self, query: Option<&Value>, scope: &Scope<'_>) -> Source {
        match query.and_then(node_of) {
            Some(("SelectStmt", q)) => self.select(q, scope),
            Some((ty, q)) => self.dml(ty, q, scope, false, false),
            None => Source::Computed {
                names: None,
                refs: Vec::new(),
            },
        }
    }

    fn join(
        &mut self,
        inner: &Map<String, Value>,
        own: Vec<Rel>,
        scope: &Scope<'_>,
        alias_name: &str,
        rels: &mut Vec<Rel>,
    ) {
        self.condition(inner.get("quals"), scope, "JOIN");
        let using: Vec<String> = strings(inner.get("using_clause"))
            .into_iter()
            .map(str::to_owned)
            .collect();
        let natural = inner
            .get("is_natural")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let full = int_field(inner, "jointype") == pg_query::protobuf::JoinType::JoinFull as i64;
        // FULL JOIN USING/NATURAL: the merged column is COALESCE(l, r), which
        // PostgreSQL does not report as a table column.
        let merged = (full && (natural || !using.is_empty())).then(|| {
            let refs = own
                .iter()
                .flat_map(|r| match &using[..] {
                    [] => whole(&r.source),
                    cols => cols
                        .iter()
                        .filter_map(|c| resolve(&r.source, c))
                        .flat_map(|(refs, _)| refs)
                        .collect(),
                })
                .collect();
            Source::Computed {
                names: (!natural).then(|| using.clone()),
                refs,
            }
        });
        if let Some(using_alias) = inner
            .get("join_using_alias")
            .and_then(Value::as_object)
            .map(|a| str_field(a, "aliasname"))
            .filter(|a| !a.is_empty())
        {
            let refs = own
                .iter()
                .flat_map(|r| {
                    using
                        .iter()
                        .filter_map(|c| resolve(&r.source, c))
                        .flat_map(|(refs, _)| refs)
                })
                .collect();
            rels.push(Rel {
                name: using_alias.to_owned(),
                source: Source::Computed {
                    names: Some(using.clone()),
                    refs,
                },
            });
        }
        if !alias_name.is_empty() {
            rels.push(Rel {
                name: alias_name.to_owned(),
                source: Source::Derived {
                    outputs: Vec::new(),
                    stars: own
                        .into_iter()
                        .map(|r| r.source)
                        .chain(merged.clone())
                        .collect(),
                    stars_direct: merged.is_none(),
                },
            });
        } else {
            rels.extend(own);
            if let Some(m) = merged {
                rels.push(Rel {
                    name: String::new(),
                    source: m,
                });
            }
        }
    }

    /// Every column is computed from what its arguments use (LATERAL: earlier items too).
    fn function(&mut self, item: &Value, scope: &Scope<'_>, alias: &str, colnames: &[&str]) -> Rel {
        let inner = node_of(item).map(|(_, m)| m);
        // The functions themselves are on each ref's way (walked as FuncCalls).
        let refs = self.expr(item, scope);
        let func = items(inner.and_then(|i| i.get("functions")))
            .filter_map(|f| node_of(f)?.1.get("items"))
            .flat_map(|i| items(Some(i)))
            .filter_map(|f| match node_of(f) {
                Some(("FuncCall", fc)) => {
                    strings(fc.get("funcname")).last().map(|s| (*s).to_owned())
                }
                _ => None,
            })
            .next();
        let name = if alias.is_empty() {
            func.clone().unwrap_or_default()
        } else {
            alias.to_owned()
        };
        Rel {
            name,
            source: Source::Computed {
                names: (!colnames.is_empty())
                    .then(|| colnames.iter().map(|s| (*s).to_owned()).collect()),
                refs,
            },
        }
    }
}

#[cfg(test)]
mod tests;
