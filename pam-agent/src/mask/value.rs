//! The kind of a column's values: the one thing the engine needs from a protocol's type
//! system. The engine decides whether and how a value is masked (the rule's strategy); the
//! protocol's [`ValueKind`] writes the masked form so that it stays a valid value of the
//! column's type in the protocol's encoding (`***` in an integer column would break the
//! client as surely as a malformed message), or says it must become NULL.

use super::rules::Strategy;
use super::strategy::{KeyedHasher, Masked};

/// How one column type, in one wire encoding, holds masked values.
pub trait ValueKind: std::fmt::Debug + Send + Sync {
    /// Where the text that content detectors read starts in a value (after a format's
    /// prefix bytes), or `None` when detectors do not look inside these values.
    fn scan_from(&self) -> Option<usize>;

    /// Whether a value's text, with detected spans replaced, is still a valid value
    /// (structured text such as JSON may not be); if not, the value becomes NULL.
    fn still_valid_after_scan(&self, _text: &[u8]) -> bool {
        true
    }

    /// Whether values detectors cannot rewrite in place (arrays, records, bytea, numbers)
    /// are searched as a whole: a finding anywhere in one makes the value NULL.
    fn searched_whole(&self) -> bool {
        false
    }

    /// The text detectors read in such a value, decoded as far as the type allows (bytea
    /// hex, binary numbers, the elements of binary arrays and records), into `out`.
    fn search_text(&self, _value: &[u8], _out: &mut Vec<u8>) {}

    /// Appends `value` masked with a column rule's `strategy` in a form valid for this
    /// kind, or returns [`Masked::Null`] (having appended nothing). `tmp` is scratch space
    /// reused across values.
    fn write_masked(
        &self,
        strategy: &Strategy,
        value: &[u8],
        hasher: Option<&KeyedHasher>,
        tmp: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Masked;
}
