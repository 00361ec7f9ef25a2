//! OpenID Connect bearer tokens, protocol-free: who an identity provider says presents a
//! token. [`Verifier`] reads the issuer's discovery document, keeps its JWKS
//! ([`jwks`]: cached, fetched again on an unknown key id at most once per interval, so
//! a key rotation is picked up without a restart), and checks a JWT's signature (only
//! asymmetric algorithms; the key's own type and `alg` must match), `iss`, `aud`, and
//! `exp`/`nbf` with a small leeway. A token that passes becomes an [`Identity`]: its
//! subject and the groups in a configured claim.
//!
//! Used by the approvals HTTP API ([`crate::approval_api`]); knows nothing of it.

pub mod config;
pub mod jwks;
#[cfg(test)]
mod tests;
pub mod verifier;

pub use config::{OidcConfig, RawOidc};
pub use verifier::{Identity, OidcError, Verifier};
