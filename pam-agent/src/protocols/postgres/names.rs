//! The names the agent gives its own statements, portals and cursors on the server. A
//! worker must not be able to reach them: were a worker to create the portal or cursor
//! the agent's deliberate failure names, a refusal would answer with its result instead
//! of failing; were it to name its own statement like the column preload, it could
//! clobber it. So the names are random (unguessable): the injected statement's per
//! session, the failing portal or cursor's per use (the server shows the last query of
//! each session in `pg_stat_activity`, so a name used once is no secret afterwards); and
//! the whole prefix is reserved: a worker's statement or portal named with it is refused.

/// Every name the agent uses starts with this; workers' names with it are refused.
pub const RESERVED_PREFIX: &str = "pam_agent_";

/// One session's names.
#[derive(Debug, Clone)]
pub struct Reserved {
    /// The statement and portal of the agent's injected groups.
    pub injected: String,
}

impl Reserved {
    pub fn new() -> Reserved {
        Reserved {
            injected: format!("{RESERVED_PREFIX}i_{}", random_hex()),
        }
    }
}

/// A fresh name for a portal or cursor that does not exist, which the agent names to make
/// the server fail in place of a refused message; never created, never used twice.
pub fn missing() -> String {
    format!("{RESERVED_PREFIX}r_{}", random_hex())
}

/// Whether a worker's statement or portal name is one the agent keeps for itself.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// 128 random bits in hex. Without randomness the names fall back to fixed ones, still
/// unreachable because the prefix is refused to workers.
fn random_hex() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        return "fixed".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_reserved_and_differ_per_session_and_per_use() {
        let (a, b) = (Reserved::new(), Reserved::new());
        assert_ne!(a.injected, b.injected);
        let (m1, m2) = (missing(), missing());
        assert_ne!(m1, m2);
        assert_ne!(a.injected, m1);
        for n in [&a.injected, &m1] {
            assert!(is_reserved(n), "{n}");
            assert!(n.len() > RESERVED_PREFIX.len() + 30, "{n}: 128 random bits");
            // PostgreSQL truncates identifiers to 63 bytes: the randomness must fit.
            assert!(n.len() <= 63, "{n}");
        }
        assert!(!is_reserved(""));
        assert!(!is_reserved("pam_agen"));
        assert!(is_reserved("pam_agent_refused"));
    }
}
