//! Derivations the database defines: views and generated columns that already exist.
//! RowDescription names a view column or a generated column as itself (the view's OID and
//! attnum, the table's), whatever it computes. So the preload also returns, for every view
//! that depends (through views, up to [`MAX_DEPTH`] levels) on a relation with a column a
//! rule can name, its definition (`pg_get_viewdef`), and for such relations each generated
//! column's expression (`pg_attrdef`); kind `d` rows. Each is read by the statement lineage
//! analysis ([`sql::defined_outputs`]) and followed to the stored columns behind it:
//!
//! - exactly one stored column (a rename, a view over a view, a generated copy): that
//!   column becomes a base name of the view/generated column, so its rule masks it;
//! - computed from stored columns: they become its `derived` names, and the engine
//!   withholds the value (NULL) when a rule masks one of them;
//! - a definition that cannot be read, or nests deeper than the bound: `unreadable`,
//!   withheld.

use std::collections::HashMap;

use super::datarow;
use super::resolve::FieldSource;
use crate::mask::{ColumnName, ResolvedColumn};
use crate::protocols::postgres::sql::{self, DefinedOutput};

/// How many views deep the preload follows, and the analysis after it.
pub const MAX_DEPTH: usize = 16;

/// Longest definition read; a longer one is unreadable (withheld).
const MAX_DEFINITION: usize = 256 * 1024;

/// One kind `d` row of the preload: a view (`attnum` 0) or a generated column, and its
/// definition (`None`: deeper than the preload follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub source: FieldSource,
    pub schema: String,
    pub table: String,
    pub text: Option<String>,
}

impl Definition {
    /// The row, if `body` is a kind `d` row of the preload.
    pub fn from_data_row(body: &[u8]) -> Option<Definition> {
        let values = datarow::values(body).ok()?;
        if values.len() != 6 || values[2] != Some(b"d".as_slice()) {
            return None;
        }
        let text = |i: usize| -> Option<String> {
            std::str::from_utf8(values[i]?).ok().map(str::to_owned)
        };
        Some(Definition {
            source: FieldSource {
                table_oid: text(0)?.parse().ok()?,
                attnum: text(1)?.parse().ok()?,
            },
            schema: text(3)?,
            table: text(4)?,
            text: text(5),
        })
    }

    /// The query to analyse: a view's definition, or the generated column's expression
    /// selected from its table.
    fn query(&self) -> Option<String> {
        let text = self.text.as_deref()?;
        if text.len() > MAX_DEFINITION {
            return None;
        }
        Some(if self.source.attnum == 0 {
            text.to_owned()
        } else {
            format!(
                "SELECT {text} FROM {}.{}",
                sql::quote_part(&self.schema),
                sql::quote_part(&self.table)
            )
        })
    }
}

/// Reads every definition (on a thread with the SQL parser's stack size: definitions may
/// nest deeply): per defined column, its output, `None` when unreadable.
fn analyse(defs: &[Definition]) -> HashMap<FieldSource, Option<DefinedOutput>> {
    let run = || {
        let mut out = HashMap::new();
        for d in defs {
            let outputs = d.query().and_then(|q| sql::defined_outputs(&q));
            if d.source.attnum == 0 {
                // A view: output i is attribute i + 1; an unreadable view is read as one
                // unreadable entry that its columns inherit.
                match outputs {
                    Some(outs) => {
                        for (i, o) in outs.into_iter().enumerate() {
                            let attnum = i16::try_from(i + 1).unwrap_or(i16::MAX);
                            out.insert(FieldSource { attnum, ..d.source }, Some(o));
                        }
                    }
                    None => {
                        out.insert(d.source, None);
                    }
                }
            } else {
                out.insert(d.source, outputs.and_then(|mut o| o.pop()));
            }
        }
        out
    };
    let stack = sql::ClassifierConfig::default().stack_bytes;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn_scoped(s, run)
            .ok()
            .and_then(|h| h.join().ok())
    })
    // No thread: every definition unreadable (withheld), never read as harmless.
    .unwrap_or_else(|| defs.iter().map(|d| (d.source, None)).collect())
}

/// Where a defined column's value comes from, followed to stored columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lineage {
    /// The value is exactly one of these columns (several: which one is not known).
    direct: Option<Vec<ColumnName>>,
    derived: Vec<ColumnName>,
    unreadable: bool,
}

impl Lineage {
    fn unreadable() -> Lineage {
        Lineage {
            unreadable: true,
            ..Lineage::default()
        }
    }

    /// Everything the value may reveal, as derived names.
    fn all(&self) -> impl Iterator<Item = &ColumnName> {
        self.direct.iter().flatten().chain(&self.derived)
    }

    /// Sorted and without repeats, so that a round that learns nothing new compares equal.
    fn normalized(mut self) -> Lineage {
        if let Some(d) = &mut self.direct {
            d.sort();
            d.dedup();
        }
        self.derived.sort();
        self.derived.dedup();
        self
    }
}

/// How many rounds [`Linker::solve`] runs before it gives up (every defined column is then
/// withheld). A chain of views needs one round per level (the preload follows at most
/// [`MAX_DEPTH`]); names only move up (absent, direct, derived), so it always settles.
const MAX_ROUNDS: usize = 4 * MAX_DEPTH + 8;

/// What a defined column is read from: its definition's output and, per reference in it,
/// the columns that reference may be.
enum Node<'o> {
    Unreadable,
    Defined(&'o DefinedOutput, Vec<Vec<FieldSource>>),
}

struct Linker<'a> {
    cache: &'a HashMap<FieldSource, Option<ResolvedColumn>>,
    outputs: HashMap<FieldSource, Option<DefinedOutput>>,
    /// (schema, table) → relation OID, and OID → column name → attnum, from the cache.
    relations: HashMap<(String, String), u32>,
    columns: HashMap<u32, HashMap<String, i16>>,
}

impl Linker<'_> {
    /// Whether `at` is a view's column or a generated column (else a stored column).
    fn is_defined(&self, at: FieldSource) -> bool {
        self.outputs.contains_key(&at)
            || self.outputs.contains_key(&FieldSource { attnum: 0, ..at })
    }

    /// The definition of a defined column.
    fn node(&self, at: FieldSource) -> Node<'_> {
        // No entry of its own: a column of a view whose definition could not be read.
        match self.outputs.get(&at).and_then(Option::as_ref) {
            Some(o) => Node::Defined(o, o.refs.iter().map(|r| self.candidates(r)).collect()),
            None => Node::Unreadable,
        }
    }

    /// The lineage of every defined column in `defined`: the least fixed point of reading
    /// each definition over its references' current lineages. Not a recursion: a reference
    /// that names no table may be any relation with such a column, the view itself or a
    /// view over it included, so the references form cycles (and following every path of
    /// them is exponential in the number of views).
    fn solve(&self, defined: &[FieldSource]) -> HashMap<FieldSource, Lineage> {
        let nodes: Vec<(FieldSource, Node<'_>)> =
            defined.iter().map(|&at| (at, self.node(at))).collect();
        let mut found: HashMap<FieldSource, Lineage> =
            defined.iter().map(|&at| (at, Lineage::default())).collect();
        for _ in 0..MAX_ROUNDS {
            let mut changed = false;
            for (at, node) in &nodes {
                let l = self.step(node, &found);
                if found.get(at) != Some(&l) {
                    found.insert(*at, l);
                    changed = true;
                }
            }
            if !changed {
                return found;
            }
        }
        // Not settled: fail closed, every defined column withheld.
        tracing::warn!(
            columns = defined.len(),
            "masking: view and generated column definitions did not settle; withheld"
        );
        defined
            .iter()
            .map(|&at| (at, Lineage::unreadable()))
            .collect()
    }

    /// One column's lineage given the current lineages of the columns it reads.
    fn step(&self, node: &Node<'_>, found: &HashMap<FieldSource, Lineage>) -> Lineage {
        let Node::Defined(output, candidates) = node else {
            return Lineage::unreadable();
        };
        let mut out = Lineage::default();
        let mut direct = Vec::new();
        for at in candidates.iter().flatten() {
            let stored;
            let l = match found.get(at) {
                Some(l) => l,
                None => {
                    stored = self.stored(*at);
                    &stored
                }
            };
            out.unreadable |= l.unreadable;
            match (&l.direct, output.direct) {
                (Some(d), true) => {
                    direct.extend(d.iter().cloned());
                    out.derived.extend(l.derived.iter().cloned());
                }
                _ => out.derived.extend(l.all().cloned()),
            }
        }
        if output.direct && out.derived.is_empty() {
            out.direct = Some(direct);
        } else {
            out.derived.extend(direct);
        }
        out.normalized()
    }

    /// A stored column: itself (nothing, when no rule can name it).
    fn stored(&self, at: FieldSource) -> Lineage {
        let name = self
            .cache
            .get(&at)
            .and_then(Option::as_ref)
            .map(|c| c.name.clone());
        Lineage {
            direct: Some(name.into_iter().collect()),
            ..Lineage::default()
        }
    }

    /// The columns a reference may be: by schema (when written), table and column name;
    /// a whole row (`column: None`) is every column of the relation. Relations without a
    /// column a rule can name are not in the cache, and nothing of them is masked.
    fn candidates(&self, r: &sql::DefinedRef) -> Vec<FieldSource> {
        let mut out = Vec::new();
        for ((schema, table), oid) in &self.relations {
            let fits =
                |want: &Option<String>, have: &String| want.as_ref().is_none_or(|w| w == have);
            if !fits(&r.schema, schema) || !fits(&r.table, table) {
                continue;
            }
            let Some(cols) = self.columns.get(oid) else {
                continue;
            };
            for (name, attnum) in cols {
                if r.column.as_ref().is_none_or(|c| c == name) {
                    out.push(FieldSource {
                        table_oid: *oid,
                        attnum: *attnum,
                    });
                }
            }
        }
        out.sort_by_key(|f| (f.table_oid, f.attnum));
        out
    }
}

/// Links every defined column in `cache` to the stored columns behind it (see the module
/// documentation).
pub fn link(cache: &mut HashMap<FieldSource, Option<ResolvedColumn>>, defs: &[Definition]) {
    if defs.is_empty() {
        return;
    }
    let mut relations = HashMap::new();
    let mut columns: HashMap<u32, HashMap<String, i16>> = HashMap::new();
    for (at, col) in cache.iter() {
        if let Some(col) = col {
            relations.insert(
                (col.name.schema.clone(), col.name.table.clone()),
                at.table_oid,
            );
            columns
                .entry(at.table_oid)
                .or_default()
                .insert(col.name.column.clone(), at.attnum);
        }
    }
    let linker = Linker {
        cache,
        outputs: analyse(defs),
        relations,
        columns,
    };
    let defined: Vec<FieldSource> = cache
        .keys()
        .copied()
        .filter(|at| linker.is_defined(*at))
        .collect();
    let found = linker.solve(&defined);
    for (at, l) in found {
        let Some(Some(col)) = cache.get_mut(&at) else {
            continue;
        };
        for n in l.direct.into_iter().flatten() {
            if n != col.name && !col.base.contains(&n) {
                col.base.push(n);
            }
        }
        for n in l.derived {
            if !col.derived.contains(&n) {
                col.derived.push(n);
            }
        }
        col.unreadable |= l.unreadable;
    }
}

#[cfg(test)]
mod tests;
