//! The protocols as the config sees them: the [`Protocol`] a resource names (one arm per
//! protocol), and each protocol's own `[[resources]]` keys, flattened into the resource's
//! table, with their validation (one section and one function per protocol). `config.rs`
//! sees only [`Protocol`], [`RawResourceSettings`] and [`ResourceSettings`], and names no
//! protocol.

use std::fmt;

use serde::Deserialize;

use super::postgres::config as postgres;

/// How the proxy treats a resource's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes relayed as they are (connection-level audit only).
    #[default]
    Tcp,
    /// PostgreSQL wire protocol.
    Postgres,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
        })
    }
}

/// Every protocol's keys as written (each protocol checks that its keys are not set on a
/// resource of another protocol).
///
/// `transparent`, not a second `flatten`: serde's `deny_unknown_fields` on the resource
/// does not see through nested flattens (every key would read as unknown). With a second
/// protocol, give this type a `Deserialize` that takes each key to the protocol naming it.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct RawResourceSettings {
    pub postgres: postgres::RawSettings,
}

/// Every protocol's validated keys for one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSettings {
    pub postgres: postgres::Settings,
}

impl ResourceSettings {
    /// Every principal name the resource's keys refer to, with the key's path.
    pub fn principal_names(&self) -> impl Iterator<Item = (String, &str)> {
        self.postgres.logins.iter().enumerate().flat_map(|(j, l)| {
            l.principals
                .iter()
                .flatten()
                .map(move |n| (format!("logins[{j}].principals"), n.as_str()))
        })
    }
}

/// Checks the keys of a resource of `protocol`; the field name is relative to the resource.
pub(crate) fn validate(
    protocol: Protocol,
    raw: RawResourceSettings,
) -> Result<ResourceSettings, (&'static str, String)> {
    Ok(ResourceSettings {
        postgres: postgres::validate(protocol == Protocol::Postgres, raw.postgres)?,
    })
}

/// A resource named by host name: the protocols' certificate names default to it (the
/// worker-facing certificate carries it, the server's is checked against it).
pub(crate) fn default_names(settings: &mut ResourceSettings, host: &str) {
    postgres::default_names(&mut settings.postgres, host);
}
