//! pam-agent: privileged access management in the data path of AI-agent workers.
//!
//! Layout (see ARCHITECTURE.md for the path of one connection):
//! - [`config`]: the TOML config and its validation.
//! - [`kernel`]: the kernel programs seen from userspace (the only aya user) and the
//!   cgroup v2 hierarchy (naming governed cgroups, joining one).
//! - [`proxy`]: the local listener and one [`proxy::session`] per redirected connection.
//! - [`principal`]: who is behind a connection.
//! - [`journal`]: the audit journal interface and its store.
//! - [`mask`]: inline masking of sensitive values in PostgreSQL results.
//! - [`daemon`]: `pam-agent run`, the wiring and the shutdown order.
//! - [`audit`]: `pam-agent audit`: query, verify and export the journal.
//! - [`postgres`]: the PostgreSQL wire protocol session (judges statements, relays the rest).
//! - [`sql`]: what a SQL text does (PostgreSQL's parser behind one function).
//! - [`policy`]: rules, decisions and their explanation (no I/O).
//! - [`secret_file`]: private key files: created once, 0600, checked before use.

pub mod audit;
pub mod config;
pub mod daemon;
mod glob;
pub mod journal;
pub mod kernel;
pub mod mask;
pub mod policy;
pub mod principal;
pub mod protocols;
pub mod proxy;
pub mod secret_file;
pub mod tls;
