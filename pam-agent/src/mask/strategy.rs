//! How a text value is masked. Writers append to the caller's buffer so a row is rewritten
//! without a heap allocation per value.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::rules::Strategy;

/// A strategy's name, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    Redact,
    Partial,
    KeyedHash,
    Null,
    Email,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Redact => "redact",
            StrategyKind::Partial => "partial",
            StrategyKind::KeyedHash => "keyed_hash",
            StrategyKind::Null => "null",
            StrategyKind::Email => "email",
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Strategy {
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::Redact { .. } => StrategyKind::Redact,
            Strategy::Partial { .. } => StrategyKind::Partial,
            Strategy::KeyedHash { .. } => StrategyKind::KeyedHash,
            Strategy::Null {} => StrategyKind::Null,
            Strategy::Email {} => StrategyKind::Email,
        }
    }
}

/// HMAC-SHA256 with the configured key, keyed once: each value clones the keyed state instead
/// of re-deriving the pads.
#[derive(Clone)]
pub struct KeyedHasher {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHasher(<key>)")
    }
}

impl KeyedHasher {
    /// HMAC accepts keys of any length (`None` is unreachable); the config layer enforces a
    /// minimum length.
    pub fn new(key: &[u8]) -> Option<Self> {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
        Some(KeyedHasher { keyed })
    }

    pub fn digest(&self, value: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(value);
        mac.finalize().into_bytes().into()
    }

    /// Appends the first `len` hex characters of the digest (at most 64).
    pub fn write_hex(&self, value: &[u8], len: usize, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = self.digest(value);
        for i in 0..len.min(64) {
            let byte = digest[i / 2];
            let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
            out.push(HEX[nibble as usize]);
        }
    }
}

/// Outcome of masking one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masked {
    /// The masked text was appended to the output.
    Text,
    /// The value becomes SQL NULL; nothing was appended.
    Null,
}

/// Appends the masked form of `value` (text, normally UTF-8) to `out`.
///
/// `hasher` is `None` only if the config had no key, which compilation refuses for rules that
/// hash; should it happen anyway the value is redacted rather than passed through.
pub fn write_text(
    strategy: &Strategy,
    value: &[u8],
    hasher: Option<&KeyedHasher>,
    out: &mut Vec<u8>,
) -> Masked {
    match strategy {
        Strategy::Redact { text } => out.extend_from_slice(text.as_bytes()),
        Strategy::Partial {
            keep_last,
            mask_char,
        } => write_partial(value, *keep_last, *mask_char, out),
        Strategy::KeyedHash { length } => match hasher {
            Some(h) => h.write_hex(value, *length, out),
            None => out.extend_from_slice(b"***"),
        },
        Strategy::Null {} => return Masked::Null,
        Strategy::Email {} => write_email(value, out),
    }
    Masked::Text
}

/// Keeps at most half of the value visible, so a short value is never shown whole.
fn write_partial(value: &[u8], keep_last: usize, mask_char: char, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    let mask = mask_char.encode_utf8(&mut buf).as_bytes();
    match std::str::from_utf8(value) {
        Ok(s) => {
            let n = s.chars().count();
            let visible = keep_last.min(n / 2);
            let cut = s
                .char_indices()
                .nth(n - visible)
                .map_or(s.len(), |(i, _)| i);
            push_repeated(mask, n - visible, out);
            out.extend_from_slice(&value[cut..]);
        }
        Err(_) => {
            let visible = keep_last.min(value.len() / 2);
            push_repeated(mask, value.len() - visible, out);
            out.extend_from_slice(&value[value.len() - visible..]);
        }
    }
}

fn push_repeated(unit: &[u8], times: usize, out: &mut Vec<u8>) {
    match unit {
        [b] => out.resize(out.len() + times, *b),
        _ => (0..times).for_each(|_| out.extend_from_slice(unit)),
    }
}

/// `j***@example.com`: the first character of the local part, the domain intact.
fn write_email(value: &[u8], out: &mut Vec<u8>) {
    let shaped = std::str::from_utf8(value).ok().and_then(|s| {
        let (local, domain) = s.rsplit_once('@')?;
        let first = local.chars().next()?;
        (!domain.is_empty() && domain.contains('.')).then_some((first, domain))
    });
    match shaped {
        Some((first, domain)) => {
            let mut buf = [0u8; 4];
            out.extend_from_slice(first.encode_utf8(&mut buf).as_bytes());
            out.extend_from_slice(b"***@");
            out.extend_from_slice(domain.as_bytes());
        }
        None => out.extend_from_slice(b"***"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(s: &Strategy, v: &str) -> Option<String> {
        let h = KeyedHasher::new(b"0123456789abcdef").unwrap();
        let mut out = Vec::new();
        match write_text(s, v.as_bytes(), Some(&h), &mut out) {
            Masked::Text => Some(String::from_utf8(out).unwrap()),
            Masked::Null => None,
        }
    }

    #[test]
    fn redact_writes_the_fixed_text() {
        let s = Strategy::Redact {
            text: "[redacted]".into(),
        };
        assert_eq!(apply(&s, "123-45-6789").as_deref(), Some("[redacted]"));
    }

    #[test]
    fn partial_keeps_the_tail_but_never_more_than_half() {
        let s = Strategy::Partial {
            keep_last: 4,
            mask_char: '*',
        };
        assert_eq!(
            apply(&s, "4111111111111111").as_deref(),
            Some("************1111")
        );
        assert_eq!(apply(&s, "123456").as_deref(), Some("***456"));
        assert_eq!(apply(&s, "1234").as_deref(), Some("**34"));
        assert_eq!(apply(&s, "").as_deref(), Some(""));
        // Characters, not bytes: the tail is never cut inside a UTF-8 sequence.
        assert_eq!(apply(&s, "Zoë Müller").as_deref(), Some("******ller"));
        let x = Strategy::Partial {
            keep_last: 2,
            mask_char: '•',
        };
        assert_eq!(apply(&x, "abcdef").as_deref(), Some("••••ef"));
    }

    #[test]
    fn keyed_hash_is_stable_keyed_and_truncated() {
        let s = Strategy::KeyedHash { length: 12 };
        let a = apply(&s, "jane@example.com").unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            apply(&s, "jane@example.com").unwrap(),
            a,
            "equal values stay equal"
        );
        assert_ne!(apply(&s, "john@example.com").unwrap(), a);
        let other_key = KeyedHasher::new(b"another key, 16b").unwrap();
        let mut out = Vec::new();
        write_text(&s, b"jane@example.com", Some(&other_key), &mut out);
        assert_ne!(out, a.as_bytes(), "the key matters");
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let jefe = KeyedHasher::new(b"Jefe").unwrap();
        let mut hex = Vec::new();
        jefe.write_hex(b"what do ya want for nothing?", 64, &mut hex);
        assert_eq!(
            String::from_utf8(hex).unwrap(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn null_and_email() {
        assert_eq!(apply(&Strategy::Null {}, "x"), None);
        assert_eq!(
            apply(&Strategy::Email {}, "john.doe@example.com").as_deref(),
            Some("j***@example.com")
        );
        assert_eq!(
            apply(&Strategy::Email {}, "élodie@exemple.fr").as_deref(),
            Some("é***@exemple.fr")
        );
        assert_eq!(
            apply(&Strategy::Email {}, "not an address").as_deref(),
            Some("***")
        );
        assert_eq!(
            apply(&Strategy::Email {}, "@example.com").as_deref(),
            Some("***")
        );
    }
}
