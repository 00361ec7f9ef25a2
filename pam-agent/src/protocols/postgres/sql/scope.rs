//! Which relations are in scope where: the one walk over WITH and FROM (aliases, joins,
//! sub-selects, CTEs, LATERAL, functions in FROM) that `columns` (side channels) and
//! `lineage` (derived values) share. Each of them says what a relation stands for (its
//! [`FromWalk::Source`]); this module places the names: a table or CTE under its alias,
//! a sub-select or function under its alias, the items of a join side by side, each
//! FROM item seeing the ones before it (LATERAL), each CTE the ones before it.

use serde_json::{Map, Value};

use super::tree::{node_of, str_field, strings};

/// A relation of the catalog (table, view, ...) named in FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Table {
    pub schema: Option<String>,
    pub table: String,
    /// `FROM t AS x(a, b)`: names stand for columns by position, which only the catalog
    /// knows; a name is then any column of the table.
    pub renamed: bool,
}

/// A name in FROM and what it stands for.
#[derive(Debug, Clone)]
pub(super) struct Rel<S> {
    pub name: String,
    pub source: S,
}

/// The names visible at one query level; `parent` is the enclosing query (correlation).
pub(super) struct Scope<'p, S> {
    pub rels: Vec<Rel<S>>,
    pub ctes: Vec<(String, S)>,
    pub parent: Option<&'p Scope<'p, S>>,
}

impl<'p, S: Clone> Scope<'p, S> {
    pub fn root() -> Scope<'static, S> {
        Scope {
            rels: Vec::new(),
            ctes: Vec::new(),
            parent: None,
        }
    }

    /// A nested query level.
    pub fn child(parent: &'p Scope<'p, S>) -> Scope<'p, S> {
        Self::with_rels(parent, Vec::new())
    }

    /// A level that sees `rels` (the FROM items before a LATERAL one, a join's sides)
    /// and then `parent`.
    pub fn with_rels(parent: &'p Scope<'p, S>, rels: Vec<Rel<S>>) -> Scope<'p, S> {
        Scope {
            rels,
            ctes: Vec::new(),
            parent: Some(parent),
        }
    }

    pub fn cte(&self, name: &str) -> Option<&S> {
        self.ctes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .or_else(|| self.parent.and_then(|p| p.cte(name)))
    }

    pub fn rel(&self, name: &str) -> Option<&Rel<S>> {
        self.rels
            .iter()
            .find(|r| r.name == name)
            .or_else(|| self.parent.and_then(|p| p.rel(name)))
    }

    /// The relations an unqualified column may come from: every level's (PostgreSQL looks
    /// outwards only when a level has no such column; unknown here, so all are candidates).
    pub fn all_rels(&self) -> Vec<&Rel<S>> {
        let mut v: Vec<&Rel<S>> = self.rels.iter().collect();
        if let Some(p) = self.parent {
            v.extend(p.all_rels());
        }
        v
    }

    /// What `t.*` (qualifier `t`) or `*` (no qualifier, or one not in scope) expands to.
    pub fn star(&self, qual: &[&str]) -> Vec<S> {
        match qual.first().and_then(|q| self.rel(q)) {
            Some(rel) => vec![rel.source.clone()],
            None => self.rels.iter().map(|r| r.source.clone()).collect(),
        }
    }
}

/// What a walk's sources offer the scope: made from a catalog relation, renamed.
pub(super) trait Relation: Clone + From<Table> {
    /// This source under `AS x(a, b)` column names (by position).
    fn renamed(self, colnames: &[&str]) -> Self;
}

/// What a walk says each kind of FROM item stands for; [`range_item`] and [`with`] place
/// the names.
pub(super) trait FromWalk {
    type Source: Relation;

    /// A query as a relation: a sub-select in FROM or a CTE's query (a SELECT, or a DML
    /// statement with RETURNING); `None` when the tree has none.
    fn query(&mut self, query: Option<&Value>, scope: &Scope<'_, Self::Source>) -> Self::Source;

    /// A join whose two sides are `own` (`scope` sees them, then the enclosing ones):
    /// records its conditions and pushes the names it makes visible into `rels`.
    fn join(
        &mut self,
        join: &Map<String, Value>,
        own: Vec<Rel<Self::Source>>,
        scope: &Scope<'_, Self::Source>,
        alias: &str,
        rels: &mut Vec<Rel<Self::Source>>,
    );

    /// A function, VALUES-like or table function in FROM (`item` is the whole node;
    /// `scope` sees the items before it): the name and source it adds.
    fn function(
        &mut self,
        item: &Value,
        scope: &Scope<'_, Self::Source>,
        alias: &str,
        colnames: &[&str],
    ) -> Rel<Self::Source>;
}

/// WITH: each CTE into `scope`, each seeing the ones before it.
pub(super) fn with<W: FromWalk>(w: &mut W, with: Option<&Value>, scope: &mut Scope<'_, W::Source>) {
    let Some(with) = with.and_then(Value::as_object) else {
        return;
    };
    for cte in with
        .get("ctes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(("CommonTableExpr", c)) = node_of(cte) else {
            continue;
        };
        let name = str_field(c, "ctename").to_owned();
        let source = w.query(c.get("ctequery"), scope);
        let source = source.renamed(&strings(c.get("aliascolnames")));
        scope.ctes.push((name, source));
    }
}

/// A FROM list: each item placed after the ones before it (which a LATERAL item sees).
pub(super) fn from_list<W: FromWalk>(
    w: &mut W,
    list: Option<&Value>,
    scope: &Scope<'_, W::Source>,
    rels: &mut Vec<Rel<W::Source>>,
) {
    for item in list.and_then(Value::as_array).into_iter().flatten() {
        range_item(w, item, scope, rels);
    }
}

/// The target of INSERT / UPDATE / DELETE / MERGE (`relation`, a bare RangeVar) into `rels`.
pub(super) fn target_relation<W: FromWalk>(
    w: &mut W,
    stmt: &Map<String, Value>,
    scope: &Scope<'_, W::Source>,
    rels: &mut Vec<Rel<W::Source>>,
) {
    if let Some(rel) = stmt.get("relation").and_then(Value::as_object) {
        let v = Value::Object(Map::from_iter([(
            "RangeVar".to_owned(),
            Value::Object(rel.clone()),
        )]));
        range_item(w, &v, scope, rels);
    }
}

/// One FROM item into `rels`.
pub(super) fn range_item<W: FromWalk>(
    w: &mut W,
    v: &Value,
    scope: &Scope<'_, W::Source>,
    rels: &mut Vec<Rel<W::Source>>,
) {
    let Some((ty, inner)) = node_of(v) else {
        return;
    };
    let alias = inner.get("alias").and_then(Value::as_object);
    let alias_name = alias.map(|a| str_field(a, "aliasname")).unwrap_or("");
    let colnames = alias
        .map(|a| strings(a.get("colnames")))
        .unwrap_or_default();
    match ty {
        "RangeVar" => {
            let schema = str_field(inner, "schemaname");
            let rel = str_field(inner, "relname");
            let source = match (schema.is_empty(), scope.cte(rel)) {
                (true, Some(cte)) => cte.clone().renamed(&colnames),
                _ => W::Source::from(Table {
                    schema: (!schema.is_empty()).then(|| schema.to_owned()),
                    table: rel.to_owned(),
                    renamed: !colnames.is_empty(),
                }),
            };
            let name = if alias_name.is_empty() {
                rel
            } else {
                alias_name
            };
            rels.push(Rel {
                name: name.to_owned(),
                source,
            });
        }
        "RangeSubselect" => {
            // LATERAL: the sub-select sees the items before it.
            let lateral = Scope::with_rels(scope, rels.clone());
            let source = w.query(inner.get("subquery"), &lateral);
            rels.push(Rel {
                name: alias_name.to_owned(),
                source: source.renamed(&colnames),
            });
        }
        "JoinExpr" => {
            let mut own = Vec::new();
            for side in ["larg", "rarg"] {
                if let Some(s) = inner.get(side) {
                    range_item(w, s, scope, &mut own);
                }
            }
            let join_scope = Scope::with_rels(scope, own.clone());
            w.join(inner, own, &join_scope, alias_name, rels);
        }
        _ => {
            // RangeFunction, RangeTableFunc (XMLTABLE, JSON_TABLE), ...: LATERAL too.
            let lateral = Scope::with_rels(scope, rels.clone());
            let rel = w.function(v, &lateral, alias_name, &colnames);
            rels.push(rel);
        }
    }
}
