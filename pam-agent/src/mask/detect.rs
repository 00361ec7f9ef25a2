//! Content detectors: one `RegexSet` pass says which shapes occur in a value at all (most values
//! match none, and that pass is all they cost); only the shapes that occur are searched again
//! with their own regex, and each candidate is confirmed (Luhn, mod-97, address parsing, JWT
//! header decoding, boundaries) to keep false positives low.

use std::net::{Ipv4Addr, Ipv6Addr};

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

/// The built-in detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    Email,
    Phone,
    /// Payment card numbers: 13–19 digits, a known issuer prefix, Luhn-checked.
    PaymentCard,
    /// US social security numbers written `AAA-GG-SSSS`, minus never-issued ranges.
    UsSsn,
    /// IBANs, mod-97 checked (and length-checked for common countries).
    Iban,
    Ipv4,
    Ipv6,
    /// JSON Web Tokens whose header decodes to a JSON object naming `alg`.
    Jwt,
    /// AWS access key ids (`AKIA…`, `ASIA…`, …).
    AwsAccessKey,
    /// GitHub tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GithubToken,
    /// Slack tokens (`xoxb-` …) and incoming-webhook URLs.
    SlackToken,
    /// Generic secret keys: `sk-…` (OpenAI, Anthropic and others), Stripe `sk_live_…`, Google `AIza…`.
    ApiKey,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 12] = [
        DetectorKind::Email,
        DetectorKind::Phone,
        DetectorKind::PaymentCard,
        DetectorKind::UsSsn,
        DetectorKind::Iban,
        DetectorKind::Ipv4,
        DetectorKind::Ipv6,
        DetectorKind::Jwt,
        DetectorKind::AwsAccessKey,
        DetectorKind::GithubToken,
        DetectorKind::SlackToken,
        DetectorKind::ApiKey,
    ];

    /// The name used in config and reports.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Email => "email",
            DetectorKind::Phone => "phone",
            DetectorKind::PaymentCard => "payment_card",
            DetectorKind::UsSsn => "us_ssn",
            DetectorKind::Iban => "iban",
            DetectorKind::Ipv4 => "ipv4",
            DetectorKind::Ipv6 => "ipv6",
            DetectorKind::Jwt => "jwt",
            DetectorKind::AwsAccessKey => "aws_access_key",
            DetectorKind::GithubToken => "github_token",
            DetectorKind::SlackToken => "slack_token",
            DetectorKind::ApiKey => "api_key",
        }
    }

    /// Detector ids: built-ins first, in [`DetectorKind::ALL`] order, then custom patterns.
    pub fn id(self) -> usize {
        self as usize
    }
}

/// What confirms a regex candidate.
#[derive(Debug, Clone, Copy)]
enum Confirm {
    Nothing,
    Email,
    Phone,
    Card,
    Ssn,
    Iban,
    Ipv4,
    Ipv6,
    Jwt,
    MixedKey,
}

/// ASCII word boundary: the Unicode one would stop the lazy DFA on non-ASCII text.
const B: &str = r"(?-u:\b)";

fn builtin_patterns() -> Vec<(DetectorKind, String, Confirm)> {
    use DetectorKind as K;
    vec![
        (
            K::Email,
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+".into(),
            Confirm::Email,
        ),
        (
            K::Phone,
            r"\+[1-9][0-9]{0,3}(?:[ .-]?\(?[0-9]{1,4}\)?){2,6}".into(),
            Confirm::Phone,
        ),
        (
            K::Phone,
            r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\)|[2-9][0-9]{2})[ .-]?[2-9][0-9]{2}[ .-][0-9]{4}"
                .into(),
            Confirm::Phone,
        ),
        (
            K::PaymentCard,
            format!("{B}[0-9]{{13,19}}{B}"),
            Confirm::Card,
        ),
        (
            K::PaymentCard,
            format!("{B}[0-9]{{4}}(?:[ -][0-9]{{4}}){{2,3}}(?:[ -][0-9]{{1,4}})?{B}"),
            Confirm::Card,
        ),
        (
            K::PaymentCard,
            format!("{B}[0-9]{{4}}[ -][0-9]{{6}}[ -][0-9]{{4,5}}{B}"),
            Confirm::Card,
        ),
        (
            K::UsSsn,
            format!("{B}[0-9]{{3}}-[0-9]{{2}}-[0-9]{{4}}{B}"),
            Confirm::Ssn,
        ),
        (
            K::Iban,
            format!("{B}[A-Z]{{2}}[0-9]{{2}}[A-Z0-9]{{11,30}}{B}"),
            Confirm::Iban,
        ),
        (
            K::Iban,
            format!("{B}[A-Z]{{2}}[0-9]{{2}}(?: [A-Z0-9]{{4}}){{2,7}}(?: [A-Z0-9]{{1,4}})?{B}"),
            Confirm::Iban,
        ),
        (
            K::Ipv4,
            format!("{B}(?:[0-9]{{1,3}}\\.){{3}}[0-9]{{1,3}}{B}"),
            Confirm::Ipv4,
        ),
        (
            K::Ipv6,
            r"(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?:\.[0-9]{1,3}){3})?".into(),
            Confirm::Ipv6,
        ),
        (
            K::Jwt,
            r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*".into(),
            Confirm::Jwt,
        ),
        (
            K::AwsAccessKey,
            format!(
                "{B}(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z2-7]{{16}}{B}"
            ),
            Confirm::Nothing,
        ),
        (
            K::GithubToken,
            format!("{B}gh[pousr]_[A-Za-z0-9]{{36,251}}{B}"),
            Confirm::Nothing,
        ),
        (
            K::GithubToken,
            format!("{B}github_pat_[A-Za-z0-9_]{{50,240}}{B}"),
            Confirm::Nothing,
        ),
        (
            K::SlackToken,
            format!("{B}xox[abposr]-[0-9A-Za-z-]{{10,250}}"),
            Confirm::Nothing,
        ),
        (
            K::SlackToken,
            r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}".into(),
            Confirm::Nothing,
        ),
        (
            K::ApiKey,
            format!("{B}sk-[A-Za-z0-9_-]{{20,200}}"),
            Confirm::MixedKey,
        ),
        (
            K::ApiKey,
            format!("{B}[rs]k_(?:live|test)_[A-Za-z0-9]{{16,99}}{B}"),
            Confirm::Nothing,
        ),
        (
            K::ApiKey,
            format!("{B}AIza[0-9A-Za-z_-]{{35}}"),
            Confirm::Nothing,
        ),
    ]
}

/// One confirmed match: a byte range of the value and the detector id that found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub detector: usize,
}

/// Buffers reused across values, so scanning allocates only while they grow.
#[derive(Debug, Default)]
pub struct DetectScratch {
    hits: Vec<bool>,
    pub found: Vec<Found>,
}

struct Pattern {
    regex: Regex,
    detector: usize,
    confirm: Confirm,
}

/// All detectors, built-in and custom, compiled once per policy.
pub struct Detectors {
    set: RegexSet,
    patterns: Vec<Pattern>,
    names: Vec<String>,
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detectors")
            .field("names", &self.names)
            .finish()
    }
}

/// Candidates refused per pattern and value before the search stops looking inside them.
const MAX_RETRIES: usize = 32;

/// Bounds compile-time memory of a regex (custom patterns come from config).
const REGEX_SIZE_LIMIT: usize = 4 << 20;

impl Detectors {
    /// No detectors at all (a policy without masking rules).
    pub fn none() -> Self {
        Detectors {
            set: RegexSet::empty(),
            patterns: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Compiles the built-ins plus `custom` (name, regex) pairs; ids of custom detectors follow
    /// the built-ins in the given order.
    pub fn new(custom: &[(String, String)]) -> Result<Self, (String, regex::Error)> {
        let mut sources = Vec::new();
        let mut patterns = Vec::new();
        for (kind, src, confirm) in builtin_patterns() {
            let regex = RegexBuilder::new(&src)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| (kind.name().to_string(), e))?;
            patterns.push(Pattern {
                regex,
                detector: kind.id(),
                confirm,
            });
            sources.push(src);
        }
        let mut names: Vec<String> = DetectorKind::ALL
            .iter()
            .map(|k| k.name().to_string())
            .collect();
        for (name, src) in custom {
            let regex = RegexBuilder::new(src)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| (name.clone(), e))?;
            patterns.push(Pattern {
                regex,
                detector: names.len(),
                confirm: Confirm::Nothing,
            });
            names.push(format!("custom:{name}"));
            sources.push(src.clone());
        }
        let set = RegexSetBuilder::new(&sources)
            .size_limit(REGEX_SIZE_LIMIT * 4)
            .build()
            .map_err(|e| ("detector set".to_string(), e))?;
        Ok(Detectors {
            set,
            patterns,
            names,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The report name of a detector id (`email`, `custom:employee-id`, …).
    pub fn name(&self, id: usize) -> &str {
        self.names.get(id).map_or("unknown", String::as_str)
    }

    /// Fills `scratch.found` with the confirmed, non-overlapping matches of the detectors
    /// whose id is `true` in `active`, in order of position.
    pub fn find(&self, hay: &[u8], active: &[bool], scratch: &mut DetectScratch) {
        scratch.found.clear();
        if hay.is_empty() || !self.set.is_match(hay) {
            return;
        }
        scratch.hits.clear();
        scratch.hits.resize(self.patterns.len(), false);
        // `is_match` first: most values have no findings, and it can use the plain forward
        // DFA; the overlapping search that says *which* shapes occur runs only on the rest.
        self.set.matches_read_at(&mut scratch.hits, hay, 0);
        for (p, hit) in self.patterns.iter().zip(&scratch.hits) {
            if !*hit || !active.get(p.detector).copied().unwrap_or(false) {
                continue;
            }
            // Not find_iter: a confirmation may shorten a match (the rest can hold the next
            // finding), and a refused candidate may contain a real one starting later.
            let mut pos = 0;
            let mut retries = 0;
            while let Some(m) = p.regex.find_at(hay, pos) {
                match confirm(p.confirm, hay, m.start(), m.end()) {
                    Some(end) if end > m.start() => {
                        scratch.found.push(Found {
                            start: m.start(),
                            end,
                            detector: p.detector,
                        });
                        pos = end;
                    }
                    // Bounded, so a long adversarial value costs linear time, not quadratic.
                    _ if retries < MAX_RETRIES => {
                        retries += 1;
                        pos = m.start() + 1;
                    }
                    _ => pos = m.end().max(m.start() + 1),
                }
                if pos >= hay.len() {
                    break;
                }
            }
        }
        let found = &mut scratch.found;
        if found.len() > 1 {
            // Earliest first, longest first among equal starts; drop what overlaps a kept match.
            found.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
            let mut kept_end = 0;
            let mut w = 0;
            for r in 0..found.len() {
                let f = found[r];
                if w == 0 || f.start >= kept_end {
                    found[w] = f;
                    kept_end = f.end;
                    w += 1;
                }
            }
            found.truncate(w);
        }
    }
}

fn is_alnum(hay: &[u8], i: Option<usize>) -> bool {
    i.and_then(|i| hay.get(i))
        .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Whether a candidate is what its shape suggests; returns the (possibly shortened) end.
fn confirm(how: Confirm, hay: &[u8], start: usize, end: usize) -> Option<usize> {
    let s = &hay[start..end];
    let ok = match how {
        Confirm::Nothing => true,
        Confirm::Email => email_ok(s),
        Confirm::Phone => {
            let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
            let before = start.checked_sub(1).and_then(|i| hay.get(i)).copied();
            let clean_edges = !is_alnum(hay, Some(end))
                && !matches!(before, Some(b) if b.is_ascii_alphanumeric() || b == b'+');
            clean_edges
                && if s[0] == b'+' {
                    (8..=15).contains(&digits)
                } else {
                    digits == 10 || (digits == 11 && s.first() != Some(&b'('))
                }
        }
        Confirm::Card => return shrink_at_separators(s, card_ok).map(|n| start + n),
        Confirm::Ssn => ssn_ok(s),
        Confirm::Iban => return shrink_at_separators(s, iban_ok).map(|n| start + n),
        Confirm::Ipv4 => {
            let dotted_before =
                start >= 2 && hay[start - 1] == b'.' && hay[start - 2].is_ascii_digit();
            let dotted_after =
                hay.get(end) == Some(&b'.') && hay.get(end + 1).is_some_and(u8::is_ascii_digit);
            !dotted_before
                && !dotted_after
                && std::str::from_utf8(s).is_ok_and(|t| t.parse::<Ipv4Addr>().is_ok())
        }
        Confirm::Ipv6 => {
            let edge = |b: Option<&u8>| {
                b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b':' || *b == b'.')
            };
            let hexes = s.iter().filter(|b| b.is_ascii_hexdigit()).count();
            !edge(start.checked_sub(1).and_then(|i| hay.get(i)))
                && !edge(hay.get(end))
                && hexes >= 2
                && std::str::from_utf8(s).is_ok_and(|t| t.parse::<Ipv6Addr>().is_ok())
        }
        Confirm::Jwt => jwt_ok(s),
        Confirm::MixedKey => {
            let body = &s[3..];
            body.iter().any(u8::is_ascii_digit)
                && body.iter().filter(|b| b.is_ascii_alphabetic()).count() >= 8
        }
    };
    ok.then_some(end)
}

/// Tries the whole candidate, then shorter prefixes cut at a space or dash (a candidate can run
/// into a following number or word); returns the length of the first that passes `check`.
fn shrink_at_separators(s: &[u8], check: fn(&[u8]) -> bool) -> Option<usize> {
    if check(s) {
        return Some(s.len());
    }
    (1..s.len())
        .rev()
        .filter(|&i| matches!(s[i], b' ' | b'-'))
        .find(|&i| check(&s[..i]))
}

fn email_ok(s: &[u8]) -> bool {
    let Some(at) = s.iter().rposition(|&b| b == b'@') else {
        return false;
    };
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.is_empty() || local.len() > 64 || local[0] == b'.' || local[local.len() - 1] == b'.' {
        return false;
    }
    if local.windows(2).any(|w| w == b"..") {
        return false;
    }
    let mut labels = domain.split(|&b| b == b'.').peekable();
    let mut count = 0;
    while let Some(label) = labels.next() {
        count += 1;
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
        {
            return false;
        }
        if labels.peek().is_none()
            && (label.len() < 2 || !label.iter().all(u8::is_ascii_alphabetic))
        {
            return false;
        }
    }
    count >= 2
}

/// The Luhn check over the digits of `s` (separators skipped).
pub fn luhn_ok(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut n = 0;
    for d in s
        .iter()
        .rev()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
    {
        sum += if n % 2 == 1 {
            if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
        } else {
            d
        };
        n += 1;
    }
    n > 0 && sum.is_multiple_of(10)
}

fn card_ok(s: &[u8]) -> bool {
    let mut digits = [0u8; 19];
    let mut n = 0;
    for &b in s {
        if b.is_ascii_digit() {
            if n == digits.len() {
                return false;
            }
            digits[n] = b - b'0';
            n += 1;
        }
    }
    if n < 13 {
        return false;
    }
    let prefix = |k: usize| {
        digits[..k]
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    let (p2, p4) = (prefix(2), prefix(4));
    let issuer = match digits[0] {
        4 => matches!(n, 13 | 16 | 19),
        5 => {
            ((51..=55).contains(&p2) && n == 16)
                || ((p2 == 50 || (56..=58).contains(&p2)) && n >= 12)
        }
        2 => (2221..=2720).contains(&p4) && n == 16,
        3 => {
            ((p2 == 34 || p2 == 37) && n == 15)
                || ((3528..=3589).contains(&p4) && n >= 16)
                || (matches!(p2, 30 | 36 | 38 | 39) && n >= 14)
        }
        6 => n >= 16,
        _ => false,
    };
    issuer && luhn_ok(s)
}

fn ssn_ok(s: &[u8]) -> bool {
    let num =
        |r: std::ops::Range<usize>| s[r].iter().fold(0u32, |a, b| a * 10 + u32::from(b - b'0'));
    let (area, group, serial) = (num(0..3), num(4..6), num(7..11));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// IBAN lengths of common countries; others only need 15–34 characters.
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AT", 20),
    (b"BE", 16),
    (b"CH", 21),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"ES", 24),
    (b"FI", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"IE", 22),
    (b"IT", 27),
    (b"LU", 20),
    (b"NL", 18),
    (b"NO", 15),
    (b"PL", 28),
    (b"PT", 25),
    (b"SE", 24),
];

/// ISO 13616: move the first four characters to the end, letters become 10..35, mod 97 == 1.
pub fn iban_ok(s: &[u8]) -> bool {
    if s.len() < 15 {
        return false;
    }
    let chars = || s.iter().copied().filter(|&b| b != b' ');
    let len = chars().count();
    let country = [s[0], s[1]];
    let expected = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| **c == country)
        .map(|(_, l)| *l);
    if expected.is_some_and(|l| l != len) || !(15..=34).contains(&len) {
        return false;
    }
    let mut rem = 0u32;
    for b in chars().skip(4).chain(chars().take(4)) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

fn jwt_ok(s: &[u8]) -> bool {
    let header = s.split(|&b| b == b'.').next().unwrap_or_default();
    let Some(json) = base64url_decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        .is_ok_and(|m| m.get("alg").is_some_and(serde_json::Value::is_string))
}

/// Unpadded base64url, as JWT segments are written.
fn base64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(b: u8) -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if s.len() % 4 == 1 || s.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for &b in chunk {
            acc = (acc << 6) | val(b)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(text: &str) -> Vec<(String, String)> {
        let d = Detectors::new(&[("employee-id".into(), "EMP-[0-9]{6}".into())]).unwrap();
        let active = vec![true; d.len()];
        let mut scratch = DetectScratch::default();
        d.find(text.as_bytes(), &active, &mut scratch);
        scratch
            .found
            .iter()
            .map(|f| {
                (
                    d.name(f.detector).to_string(),
                    text[f.start..f.end].to_string(),
                )
            })
            .collect()
    }

    fn only(text: &str, detector: &str, matched: &str) {
        assert_eq!(
            detect(text),
            vec![(detector.to_string(), matched.to_string())],
            "in {text:?}"
        );
    }

    fn none(text: &str) {
        assert_eq!(detect(text), vec![], "in {text:?}");
    }

    #[test]
    fn emails() {
        only(
            "contact: jane.doe+news@mail.example.co.uk.",
            "email",
            "jane.doe+news@mail.example.co.uk",
        );
        only("j@x.io", "email", "j@x.io");
        none("user@localhost");
        // Not an address as a whole, but its tail is one: masking errs towards masking.
        only("a..b@example.com", "email", "b@example.com");
        none("version 1.2@3.4");
        none("@example.com");
    }

    #[test]
    fn payment_cards_are_luhn_and_issuer_checked() {
        only(
            "card 4111 1111 1111 1111 exp 12/27",
            "payment_card",
            "4111 1111 1111 1111",
        );
        only("4111111111111111", "payment_card", "4111111111111111");
        only(
            "MC 5555-5555-5555-4444",
            "payment_card",
            "5555-5555-5555-4444",
        );
        only("amex 378282246310005", "payment_card", "378282246310005");
        only(
            "amex 3782 822463 10005",
            "payment_card",
            "3782 822463 10005",
        );
        only(
            "4111 1111 1111 1111 2024",
            "payment_card",
            "4111 1111 1111 1111",
        );
        none("4111 1111 1111 1112"); // Luhn fails
        none("order 1234567890123452"); // Luhn passes, no issuer starts with 1
        none("tracking 9400111899223334445566");
        none("41111111111111111111111"); // too long
    }

    #[test]
    fn ssn_ranges() {
        only("SSN: 536-22-1234", "us_ssn", "536-22-1234");
        none("000-12-3456");
        none("666-12-3456");
        none("912-12-3456");
        none("536-00-1234");
        none("536-22-0000");
        none("2024-01-1234");
    }

    #[test]
    fn ibans_are_mod97_checked() {
        only(
            "IBAN DE89370400440532013000.",
            "iban",
            "DE89370400440532013000",
        );
        only(
            "pay to GB82 WEST 1234 5698 7654 32 today",
            "iban",
            "GB82 WEST 1234 5698 7654 32",
        );
        only(
            "FR1420041010050500013M02606",
            "iban",
            "FR1420041010050500013M02606",
        );
        none("DE89370400440532013001"); // checksum off by one
        none("GB82 WEST 1234 5698 7654 33");
        none("DE8937040044053201300"); // German IBANs have 22 characters
    }

    #[test]
    fn phones() {
        only("call +44 20 7946 0958 now", "phone", "+44 20 7946 0958");
        only("(212) 555-0199", "phone", "(212) 555-0199");
        only("tel 212.555.0199", "phone", "212.555.0199");
        only("+1 212-555-0199", "phone", "+1 212-555-0199");
        none("2024-01-15");
        none("+12");
        none("ref 123-456-7890"); // area codes do not start with 1
    }

    #[test]
    fn ip_addresses() {
        only("from 192.168.10.20:5432", "ipv4", "192.168.10.20");
        none("999.1.1.1");
        none("OID 1.3.6.1.4.1.311");
        only(
            "host 2001:db8::8a2e:370:7334 up",
            "ipv6",
            "2001:db8::8a2e:370:7334",
        );
        only("[fe80::1]", "ipv6", "fe80::1");
        none("at 12:30:45");
        none("std::vector");
        none("MAC 00:1a:2b:3c:4d:5e");
    }

    #[test]
    fn tokens_and_keys() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        only(&format!("Authorization: Bearer {jwt}"), "jwt", jwt);
        none("eyJub3RhbGciOjF9.eyJzdWIiOiIxIn0.abc"); // header has no alg
        only(
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
            "aws_access_key",
            "AKIAIOSFODNN7EXAMPLE",
        );
        none("AKIAIOSFODNN7EXAMPL");
        let gh = "ghp_1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8";
        only(&format!("token={gh}"), "github_token", gh);
        only(
            "xoxb-2048-4096-AbCdEfGhIjKlMnOp",
            "slack_token",
            "xoxb-2048-4096-AbCdEfGhIjKlMnOp",
        );
        only(
            "OPENAI_API_KEY=sk-proj-4fJk29XmQa81LpZr7TbcWv0e",
            "api_key",
            "sk-proj-4fJk29XmQa81LpZr7TbcWv0e",
        );
        none("see sk-learn-classifier-documentation-page"); // no digit: a name, not a key
        only(
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "api_key",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        );
    }

    #[test]
    fn custom_patterns_and_several_findings() {
        let found = detect("EMP-004211 wrote to ana@example.org from 10.0.0.7");
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["custom:employee-id", "email", "ipv4"]);
    }

    #[test]
    fn common_non_personal_strings_find_nothing() {
        for text in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "2024-05-01 10:00:00+00",
            "2024-05-01T10:00:00.123456Z",
            "version 1.2.3, build 20240501.4",
            "HTTP/1.1 200 OK",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
            "ISBN 978-3-16-148410-0",
            "price 1,234.56 USD; qty 12; total 14814.72",
            "https://example.com/orders?id=12345678&page=2",
            "/var/lib/postgresql/15/main/base/16384/2619",
            "SGVsbG8gd29ybGQsIHRoaXMgaXMgbm90IGEgc2VjcmV0Lg==",
            "tracking 1Z999AA10123456784",
            "lat 52.520008, lon 13.404954",
            "invoice INV-2024-000123, PO 4500012345",
            "user@localhost and root@server",
            "call me maybe: 555-0100",
            "ratio 3:2:1, time 12:30",
            "AKIA is the prefix of AWS keys",
            "the sk-learn package",
        ] {
            none(text);
        }
    }

    #[test]
    fn plain_prose_and_non_utf8_find_nothing() {
        none("Shipped 3 items to Berlin on 2024-05-01, order #88412, total 129.90 EUR");
        none("");
        let d = Detectors::new(&[]).unwrap();
        let mut scratch = DetectScratch::default();
        d.find(
            &[0xff, 0xfe, b'@', 0x00],
            &vec![true; d.len()],
            &mut scratch,
        );
        assert!(scratch.found.is_empty());
    }
}
