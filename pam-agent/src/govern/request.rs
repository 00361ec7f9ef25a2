//! What a protocol asks the gate to judge, in terms no protocol owns: one statement or
//! command as a [`Request`], with [`Kind`]s and [`Flag`]s from the protocol's vocabulary.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::mask::{ColumnReference, Derivation};

/// What a request does (`select`, `delete`, `ddl`, ...). A protocol defines its kinds as
/// constants and lists them in its [`Vocabulary`]; policy rules name them as strings and
/// are checked against the vocabulary when the config loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind(&'static str);

/// A risky feature of a request (`update_without_where`, `dynamic_sql`, ...): an allow
/// rule matches a request with a flag only when it names that flag in `permit_flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flag(&'static str);

macro_rules! word {
    ($t:ident) => {
        impl $t {
            /// A protocol's constant; the name is what configs and the journal say.
            pub const fn new(name: &'static str) -> $t {
                $t(name)
            }

            pub fn as_str(self) -> &'static str {
                self.0
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }

        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.0)
            }
        }
    };
}
word!(Kind);
word!(Flag);

/// The kinds and flags a protocol can produce: what policy rules may name.
#[derive(Debug, Clone, Copy)]
pub struct Vocabulary {
    pub kinds: &'static [Kind],
    pub flags: &'static [Flag],
}

impl Vocabulary {
    pub fn kind(&self, name: &str) -> Option<Kind> {
        self.kinds.iter().copied().find(|k| k.0 == name)
    }

    pub fn flag(&self, name: &str) -> Option<Flag> {
        self.flags.iter().copied().find(|f| f.0 == name)
    }
}

/// The kind a request without any reads as: nothing broad allows it by accident.
pub const UNKNOWN_KIND: Kind = Kind("execute");

/// One statement or command, as policy, masking and the journal see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Request {
    /// This request's own text (for a multi-statement message, its own slice).
    pub text: String,
    /// The text with constants removed: groups executions of "the same" request.
    pub fingerprint: String,
    /// Primary kind first, then kinds of nested parts (a SELECT whose CTE deletes has
    /// `select` and `delete`).
    pub kinds: Vec<Kind>,
    /// Every object touched (tables, for SQL), qualified as the protocol resolves them.
    pub tables: BTreeSet<String>,
    /// The subset of `tables` written.
    pub writes: BTreeSet<String>,
    /// Functions called.
    pub functions: BTreeSet<String>,
    pub flags: BTreeSet<Flag>,
    /// Columns used to filter, join, sort, group or partition (for the masking
    /// side-channel guard), sorted and deduplicated.
    pub columns: Vec<ColumnReference>,
    /// Result values computed from columns rather than returned as themselves (for the
    /// masking lineage guard), sorted and deduplicated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derived: Vec<Derivation>,
}

impl Request {
    /// The primary kind (a request without kinds reads as [`UNKNOWN_KIND`]).
    pub fn kind(&self) -> Kind {
        self.kinds.first().copied().unwrap_or(UNKNOWN_KIND)
    }
}
