//! Resources named by host name (`address = "db.internal"`): protect every address the
//! name resolves to, IPv4 and IPv6, and keep following it.
//!
//! - [`address`]: what `address =` may say (address, CIDR, host name).
//! - [`settings`]: `[resolver]`: name servers, how often to look again.
//! - [`dns`]: one lookup (A and AAAA) and its TTL, with hickory-resolver.
//! - [`refresh`]: resolving at start (fail closed: a name that does not resolve stops
//!   the start, naming the resource), then again when the TTL runs out; a changed set is
//!   journaled (`resource_resolved`) and then put into the kernel's map, new entries in
//!   before stale ones out. A failed refresh keeps the last addresses protected.

mod address;
mod dns;
mod refresh;
mod settings;

pub use address::{Address, AddressSet, HostName, list};
pub use dns::{Answer, Dns, DnsError};
pub use refresh::{Refresher, Resolved, StartError, entries, journal_initial, resolve_at_start};
pub(crate) use settings::RawResolver;
pub use settings::ResolverSettings;
