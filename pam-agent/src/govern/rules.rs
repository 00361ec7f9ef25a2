//! The rules in force: the statement policy and the masking rules, loaded together from
//! the config and replaced together on SIGHUP. Sessions read them per request, so a
//! reload applies to open sessions' next statements (no session drops).

use std::sync::{Arc, RwLock};

use crate::{mask::MaskingPolicy, policy::Policy, principal::Principals};

#[derive(Debug, Clone)]
pub struct Rules {
    pub policy: Policy,
    /// What a principal may see: the compiled `[masking]` rules.
    pub masking: MaskingPolicy,
    /// Who is who: the compiled `[[principals]]`, reloaded with the rules that name them.
    pub principals: Principals,
}

impl Default for Rules {
    /// Deny everything, mask nothing.
    fn default() -> Self {
        Rules {
            policy: Policy::default(),
            masking: MaskingPolicy::none(),
            principals: Principals::default(),
        }
    }
}

/// The rules in force, shared by the daemon and every session.
#[derive(Debug, Clone)]
pub struct RulesHandle(Arc<RwLock<Arc<Rules>>>);

impl RulesHandle {
    pub fn new(rules: Rules) -> Self {
        RulesHandle(Arc::new(RwLock::new(Arc::new(rules))))
    }

    pub fn current(&self) -> Arc<Rules> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, rules: Rules) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
    }
}
