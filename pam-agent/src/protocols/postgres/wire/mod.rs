//! PostgreSQL's wire protocol (v3): framing and the messages the agent reads or writes.
//! Knows no SQL and no policy; every length is checked.
//!
//! - [`frame`]: length-prefixed frames from either side, with a size cap.
//! - [`startup`]: the packets before a session (StartupMessage, SSLRequest, cancel).
//! - [`frontend`]: messages from the worker (F).
//! - [`options`]: startup parameters and `options`, read as the server reads them.
//! - [`backend`]: messages from the server (B), and the errors the agent answers with.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod options;
pub mod startup;
