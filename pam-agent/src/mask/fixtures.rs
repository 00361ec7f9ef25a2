//! Shared test fixtures: one masking policy that the engine's tests and the PostgreSQL
//! codec tests both use.

use super::*;

pub(crate) const KEY: &str = "00112233445566778899aabbccddeeff";

pub(crate) fn policy(toml_rules: &str) -> MaskingPolicy {
    let cfg: MaskingConfig =
        toml::from_str(&format!("hash_key = \"{KEY}\"\n{toml_rules}")).unwrap();
    MaskingPolicy::compile(&cfg).unwrap()
}

pub(crate) const PII: &str = r#"
[[rules]]
name = "crew-pii"
refuse_side_channels = true
when = { users = ["crew"] }
[[rules.columns]]
columns = ["public.customers.email"]
strategy = { kind = "email" }
[[rules.columns]]
columns = ["*.*.ssn", "public.customers.card"]
strategy = { kind = "partial", keep_last = 4 }
[[rules.columns]]
columns = ["public.customers.id", "public.customers.balance"]
strategy = { kind = "keyed_hash", length = 12 }
[[rules.content]]
detectors = ["email", "payment_card", "iban", "us_ssn"]
strategy = { kind = "redact", text = "[redacted]" }

[[rules]]
name = "ops-notes"
when = { users = ["ops"] }
[[rules.columns]]
columns = ["public.tickets.note"]
strategy = { kind = "null" }
"#;

pub(crate) fn crew(p: &MaskingPolicy) -> Masker {
    p.for_subject(&Subject {
        user: Some("crew"),
        ..Subject::default()
    })
}
