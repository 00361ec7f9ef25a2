//! pam-agent: privileged access management in the data path of AI-agent workers.
//!
//! Layout, in the order a connection meets it (see ARCHITECTURE.md for the path):
//! - [`kernel`]: the kernel programs seen from userspace (the only aya user) and the
//!   cgroup v2 hierarchy (naming governed cgroups, joining one).
//! - [`proxy`]: listen, accept, identify, journal the session, dial, hand the
//!   connection to its protocol. Names no protocol.
//! - [`protocols`]: what flows inside a session, one module per protocol
//!   ([`protocols::postgres`], [`protocols::tcp`]).
//! - [`govern`]: the protocol-neutral core: requests, the gate (policy, masking guard,
//!   journal) and its verdicts (forward, refuse, hold), the audit after the fact.
//! - [`policy`]: rules and decisions over neutral requests, and their explanation (no I/O).
//! - [`mask`]: the masking engine (rules, detectors, strategies, plans; no I/O).
//! - [`tls`]: the agent CA and its leaves, client TLS, plain-or-TLS streams.
//! - [`journal`]: the audit journal interface and its store; [`audit`]: `pam-agent audit`.
//! - [`principal`]: who is behind a connection, and its `[[principals]]` name.
//! - [`credentials`]: the logins the agent uses upstream, and their secrets.
//! - [`control`]: the local control socket approvers use (`pam-agent approvals`);
//!   [`approval_api`]: the remote channels (HTTP API with OIDC tokens, webhooks);
//!   [`oidc`]: OpenID Connect bearer tokens, protocol-free.
//! - [`config`]: the TOML config and its validation; [`daemon`]: `pam-agent run`, the
//!   wiring and the shutdown order; [`secret_file`]: private key files.

pub mod allocator;
pub mod approval_api;
pub mod audit;
pub mod config;
pub mod control;
pub mod credentials;
pub mod daemon;
mod glob;
pub mod govern;
pub mod journal;
pub mod kernel;
pub mod mask;
pub mod memory_budget;
pub mod oidc;
pub mod policy;
pub mod principal;
pub mod protocols;
pub mod proxy;
pub mod resolve;
pub mod secret_file;
pub mod tls;
