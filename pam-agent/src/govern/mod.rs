//! The protocol-neutral governing core: what every protocol's session does between
//! reading a request off the wire and acting on it.
//!
//! - [`request`]: the neutral [`Request`] (kinds, objects read and written, functions,
//!   flags, text, fingerprint, columns used) and each protocol's [`Vocabulary`].
//! - [`gate`]: per session, [`Gate::judge`] applies policy, the masking guard, the
//!   session's own safety and a protocol's veto, and journals one record per request
//!   before it returns a [`Verdict`].
//! - [`verdict`]: Forward / Refuse / Hold.
//! - [`approval`]: held requests: the approval broker, and how a hold resolves.
//! - [`audit`]: completion and masking records after a request ran ([`Completions`]).
//! - [`rules`]: the policy and masking rules in force, replaced together on reload.
//!
//! Architecture invariant: nothing here names a protocol; protocols depend on this
//! module, never the reverse.

pub mod approval;
pub mod audit;
pub mod gate;
pub mod parameters;
pub mod request;
pub mod rules;
pub mod verdict;

pub use approval::Approvals;
pub use approval::{Held, Resolution, denied};
pub use audit::Completions;
pub use gate::{
    Ask, Gate, Judged, MASKING_RULE, Session, UNCLASSIFIABLE_RULE, masking_refusal, unreadable,
};
pub use parameters::ParameterRecording;
pub use request::{Flag, Kind, Request, UNKNOWN_KIND, Vocabulary};
pub use rules::{Rules, RulesHandle};
pub use verdict::Verdict;
