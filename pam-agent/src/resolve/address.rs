//! What a resource's `address =` names: a fixed network (an address or a CIDR), or a host
//! name the agent resolves itself and keeps resolved (see [`super::refresh`]).

use std::{collections::BTreeSet, fmt, net::IpAddr};

use ipnet::IpNet;

/// A resource's address as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `10.0.0.5`, `fd00::5`, `10.0.0.0/24`: protected as written.
    Net(IpNet),
    /// `db.internal`: every address it resolves to (A and AAAA), kept current.
    Host(HostName),
}

/// The addresses a host name resolved to, IPv4 as IPv4 (never `::ffff:` form), sorted.
pub type AddressSet = BTreeSet<IpAddr>;

impl Address {
    /// Accepts `10.0.0.5`, `fd00::5`, `10.0.0.0/24` and host names; refuses a CIDR with
    /// host bits set.
    pub fn parse(text: &str) -> Result<Address, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is not an address, CIDR (e.g. 10.0.0.0/24) or host name");
        if text.contains('/') {
            let net: IpNet = text.parse().map_err(|_| bad())?;
            if net.trunc() != net {
                return Err(format!(
                    "`{text}` has host bits set; did you mean `{}`?",
                    net.trunc()
                ));
            }
            return Ok(Address::Net(net));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Address::Net(IpNet::from(ip)));
        }
        HostName::parse(text).map(Address::Host).ok_or_else(bad)
    }

    /// The fixed network, when the address is not a host name.
    pub fn net(&self) -> Option<IpNet> {
        match self {
            Address::Net(n) => Some(*n),
            Address::Host(_) => None,
        }
    }

    pub fn host(&self) -> Option<&HostName> {
        match self {
            Address::Host(h) => Some(h),
            Address::Net(_) => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Net(n) => n.fmt(f),
            Address::Host(h) => h.fmt(f),
        }
    }
}

/// A DNS host name (RFC 1123 labels), lower case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    /// `None` when `text` is not a host name. A name of digits and dots only is not one
    /// (`10.0.0.300` is a mistyped address, not a name to look up).
    pub fn parse(text: &str) -> Option<HostName> {
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 {
            return None;
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !name.split('.').all(label_ok) {
            return None;
        }
        let last = name.rsplit('.').next().unwrap_or_default();
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(HostName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `a, b, c` (or `nothing`), for logs and `check`.
pub fn list(set: &AddressSet) -> String {
    if set.is_empty() {
        return "nothing".into();
    }
    set.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_cidrs_and_host_names() {
        assert_eq!(
            Address::parse("10.0.0.5").unwrap(),
            Address::Net("10.0.0.5/32".parse().unwrap())
        );
        assert_eq!(
            Address::parse(" fd00::/64 ").unwrap(),
            Address::Net("fd00::/64".parse().unwrap())
        );
        let host = Address::parse("DB.Internal.").unwrap();
        assert_eq!(host.host().unwrap().as_str(), "db.internal");
        assert_eq!(host.to_string(), "db.internal");
        assert!(Address::parse("localhost").unwrap().host().is_some());
        for bad in [
            "10.0.0.300",
            "10.0.0",
            "db_internal",
            "-db.internal",
            "db..internal",
            "",
            "db internal",
            "10.0.0.0/33",
        ] {
            let e = Address::parse(bad).unwrap_err();
            assert!(e.contains("not an address"), "{bad}: {e}");
        }
        let e = Address::parse("10.0.0.1/24").unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.0.0.0/24"), "{e}");
    }
}
