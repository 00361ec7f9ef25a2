//! Result columns as the engine sees them, whatever the protocol: a name (if the column is
//! a stored one and its name is known) and the kind of its values.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::value::ValueKind;

/// A stored column's names (unquoted, as the database's catalog stores them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub struct ColumnName {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl ColumnName {
    pub fn new(schema: &str, table: &str, column: &str) -> Self {
        ColumnName {
            schema: schema.into(),
            table: table.into(),
            column: column.into(),
        }
    }
}

impl fmt::Display for ColumnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// A named column: its own name and, for a view column, the base columns behind it (a
/// column rule matches either).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedColumn {
    pub name: ColumnName,
    pub base: Vec<ColumnName>,
    /// A view or generated column the database computes from these stored columns: when a
    /// rule masks one of them, the value is withheld (it is not the masked column itself).
    pub derived: Vec<ColumnName>,
    /// A view or generated column whose definition could not be read (or nests too
    /// deep) while it depends on a column a rule may name: withheld.
    pub unreadable: bool,
}

impl ResolvedColumn {
    /// The column's own name first, then its base columns.
    pub fn names(&self) -> impl Iterator<Item = &ColumnName> {
        std::iter::once(&self.name).chain(&self.base)
    }
}

/// What the protocol knows about where a result column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A stored column with its names: column rules apply.
    Named(ResolvedColumn),
    /// Not a stored column (an expression, a literal), or one the catalog no longer knows:
    /// no column rule can name it; content detectors still look inside.
    Unnamed,
    /// A stored column whose name could not be learned in time (after DDL, or when the
    /// catalog could not be asked): it might be one a rule names, so it is withheld (NULL).
    Withheld,
}

/// One result column to plan.
#[derive(Debug, Clone)]
pub struct Column {
    pub origin: Origin,
    /// How its values are written: from the protocol's type of the column.
    pub kind: &'static dyn ValueKind,
}
