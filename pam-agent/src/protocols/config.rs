//! Each protocol's own `[[resources]]` keys, flattened into the resource's table, and
//! their validation: one section and one function per protocol. `config.rs` sees only
//! [`RawResourceSettings`] / [`ResourceSettings`] and names no protocol.

use serde::Deserialize;

use super::postgres;
use crate::config::Protocol;

/// Every protocol's keys as written (each protocol checks that its keys are not set on a
/// resource of another protocol).
///
/// `transparent`, not a second `flatten`: serde's `deny_unknown_fields` on the resource
/// does not see through nested flattens (every key would read as unknown). With a second
/// protocol, give this type a `Deserialize` that takes each key to the protocol naming it.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct RawResourceSettings {
    pub postgres: postgres::config::RawSettings,
}

/// Every protocol's validated keys for one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSettings {
    pub postgres: postgres::config::Settings,
}

/// Checks the keys of a resource of `protocol`; the field name is relative to the resource.
pub(crate) fn validate(
    protocol: Protocol,
    raw: RawResourceSettings,
) -> Result<ResourceSettings, (&'static str, String)> {
    Ok(ResourceSettings {
        postgres: postgres::config::validate(protocol, raw.postgres)?,
    })
}
