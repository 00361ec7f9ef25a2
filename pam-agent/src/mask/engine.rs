//! Compiled masking rules ([`MaskingPolicy`], one per config) and the rules active on one
//! connection ([`Masker`], cheap to clone: it shares the compiled regexes).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::column::{ColumnName, ResolvedColumn};
use super::detect::{DetectorKind, Detectors};
use super::rules::{MaskingConfig, OnDerived, Selector, Strategy, Subject};
use super::strategy::KeyedHasher;
use crate::glob;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("masking rule names must be unique: {0:?} appears twice")]
    DuplicateName(String),
    #[error("masking rule {0:?} masks nothing: give it columns or content rules")]
    Empty(String),
    #[error(
        "masking rule {rule:?}: column pattern {pattern:?} must be schema.table.column (use * for any part)"
    )]
    ColumnPattern { rule: String, pattern: String },
    #[error("masking rule {rule:?}: a content rule needs detectors or patterns")]
    NoDetectors { rule: String },
    #[error("masking rule {rule:?}: {detail}")]
    Strategy { rule: String, detail: String },
    #[error("masking rule {rule:?}: pattern {name:?} does not compile: {source}")]
    Regex {
        rule: String,
        name: String,
        source: regex::Error,
    },
    #[error("the detectors together exceed the regex size limit: {0}")]
    DetectorSet(regex::Error),
    #[error("masking rule {0:?} uses keyed_hash, but neither hash_key nor hash_key_file is set")]
    MissingKey(String),
    #[error("set hash_key or hash_key_file, not both")]
    TwoKeys,
    #[error("the hash key must be hex-encoded and at least 16 bytes long")]
    BadKey,
    #[error("hash_key_file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no masking rule is named {0:?}")]
    UnknownRule(String),
}

/// A `schema.table.column` pattern, matched part by part (a `*` never spans a dot).
#[derive(Debug, Clone)]
pub(super) struct ColumnPattern {
    parts: [String; 3],
}

impl ColumnPattern {
    fn parse(s: &str) -> Option<ColumnPattern> {
        let mut it = s.split('.');
        let parts = [it.next()?, it.next()?, it.next()?];
        if it.next().is_some() || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(ColumnPattern {
            parts: parts.map(str::to_string),
        })
    }

    pub(super) fn matches(&self, c: &ColumnName) -> bool {
        self.matches_parts(Some(&c.schema), Some(&c.table), &c.column)
    }

    /// Whether the pattern names some column of this relation (a whole-row value holds
    /// them all). Unknown parts match any pattern part.
    pub(super) fn matches_relation(&self, schema: Option<&str>, table: Option<&str>) -> bool {
        schema.is_none_or(|s| glob::matches(&self.parts[0], s))
            && table.is_none_or(|t| glob::matches(&self.parts[1], t))
    }

    /// Unknown parts (an unqualified reference in SQL) match any pattern part.
    pub(super) fn matches_parts(
        &self,
        schema: Option<&str>,
        table: Option<&str>,
        column: &str,
    ) -> bool {
        schema.is_none_or(|s| glob::matches(&self.parts[0], s))
            && table.is_none_or(|t| glob::matches(&self.parts[1], t))
            && glob::matches(&self.parts[2], column)
    }
}

#[derive(Debug)]
pub(super) struct ColumnMatcher {
    pub pattern: ColumnPattern,
    /// The pattern as written, for reports.
    pub source: String,
    pub strategy: usize,
}

#[derive(Debug)]
pub(super) struct CompiledRule {
    pub name: String,
    pub selector: Selector,
    pub refuse_side_channels: bool,
    /// Lower-case function names a derivation may pass through (`mask::lineage`).
    pub non_revealing: Vec<String>,
    /// Computed values are withheld (NULL) rather than refused, where placed.
    pub withhold_derived: bool,
    pub columns: Vec<ColumnMatcher>,
    /// (detector ids, strategy index)
    pub content: Vec<(Vec<usize>, usize)>,
}

#[derive(Debug)]
pub(super) struct Compiled {
    pub rules: Vec<CompiledRule>,
    pub strategies: Vec<Strategy>,
    pub detectors: Detectors,
    pub hasher: Option<KeyedHasher>,
}

/// The compiled `[masking]` section.
#[derive(Debug, Clone)]
pub struct MaskingPolicy {
    compiled: Arc<Compiled>,
}

impl MaskingPolicy {
    /// Validates and compiles the config (reads `hash_key_file` if set).
    pub fn compile(cfg: &MaskingConfig) -> Result<MaskingPolicy, ConfigError> {
        let mut names = HashSet::new();
        let mut strategies = Vec::new();
        let mut custom = Vec::new();
        let mut rules = Vec::new();
        let mut hashes = None;
        for rule in &cfg.rules {
            let name = rule.name.clone();
            if !names.insert(name.clone()) {
                return Err(ConfigError::DuplicateName(name));
            }
            if rule.columns.is_empty() && rule.content.is_empty() {
                return Err(ConfigError::Empty(name));
            }
            let mut add_strategy = |s: &Strategy| -> Result<usize, ConfigError> {
                check_strategy(&name, s)?;
                if matches!(s, Strategy::KeyedHash { .. }) && hashes.is_none() {
                    hashes = Some(name.clone());
                }
                strategies.push(s.clone());
                Ok(strategies.len() - 1)
            };
            let mut columns = Vec::new();
            for c in &rule.columns {
                let strategy = add_strategy(&c.strategy)?;
                for p in &c.columns {
                    let pattern =
                        ColumnPattern::parse(p).ok_or_else(|| ConfigError::ColumnPattern {
                            rule: name.clone(),
                            pattern: p.clone(),
                        })?;
                    columns.push(ColumnMatcher {
                        pattern,
                        source: p.clone(),
                        strategy,
                    });
                }
            }
            let mut content = Vec::new();
            for c in &rule.content {
                if c.detectors.is_empty() && c.patterns.is_empty() {
                    return Err(ConfigError::NoDetectors { rule: name.clone() });
                }
                let strategy = add_strategy(&c.strategy)?;
                let mut ids: Vec<usize> =
                    c.detectors.iter().map(|d| DetectorKind::id(*d)).collect();
                for p in &c.patterns {
                    if let Err(source) = regex::bytes::Regex::new(&p.regex) {
                        return Err(ConfigError::Regex {
                            rule: name.clone(),
                            name: p.name.clone(),
                            source,
                        });
                    }
                    ids.push(DetectorKind::ALL.len() + custom.len());
                    custom.push((p.name.clone(), p.regex.clone()));
                }
                content.push((ids, strategy));
            }
            rules.push(CompiledRule {
                name,
                selector: rule.when.clone(),
                refuse_side_channels: rule.refuse_side_channels,
                non_revealing: rule
                    .non_revealing_functions
                    .iter()
                    .map(|f| f.to_ascii_lowercase())
                    .collect(),
                withhold_derived: rule.on_derived == OnDerived::Withhold,
                columns,
                content,
            });
        }
        let hasher = load_key(cfg)?;
        if let (Some(rule), None) = (hashes, &hasher) {
            return Err(ConfigError::MissingKey(rule));
        }
        let detectors =
            Detectors::new(&custom).map_err(|(_, source)| ConfigError::DetectorSet(source))?;
        Ok(MaskingPolicy {
            compiled: Arc::new(Compiled {
                rules,
                strategies,
                detectors,
                hasher,
            }),
        })
    }

    /// No rules: every connection's [`Masker`] is a no-op.
    pub fn none() -> MaskingPolicy {
        MaskingPolicy {
            compiled: Arc::new(Compiled {
                rules: Vec::new(),
                strategies: Vec::new(),
                detectors: Detectors::none(),
                hasher: None,
            }),
        }
    }

    /// The resource names the rules' selectors mention, for checking against the config.
    pub fn selector_resources(&self) -> impl Iterator<Item = (&str, &str)> {
        self.compiled.rules.iter().flat_map(|r| {
            r.selector
                .resources
                .iter()
                .flatten()
                .map(move |res| (r.name.as_str(), res.as_str()))
        })
    }

    /// `(rule, principal)` for every principal a rule's selector names.
    pub fn selector_principals(&self) -> impl Iterator<Item = (&str, &str)> {
        self.compiled.rules.iter().flat_map(|r| {
            r.selector
                .principals
                .iter()
                .flatten()
                .map(move |p| (r.name.as_str(), p.as_str()))
        })
    }

    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.compiled.rules.iter().map(|r| r.name.as_str())
    }

    /// The rule selectors, for a policy engine that evaluates them itself.
    pub fn selectors(&self) -> impl Iterator<Item = (&str, &Selector)> {
        self.compiled
            .rules
            .iter()
            .map(|r| (r.name.as_str(), &r.selector))
    }

    /// The rules whose selector matches `subject`, in config order.
    pub fn for_subject(&self, subject: &Subject<'_>) -> Masker {
        let active = (0..self.compiled.rules.len())
            .filter(|&i| self.compiled.rules[i].selector.matches(subject))
            .collect();
        Masker::new(self.compiled.clone(), active)
    }

    /// The named rules, in config order (for a policy engine that chose them itself).
    pub fn with_rules(&self, names: &[&str]) -> Result<Masker, ConfigError> {
        for n in names {
            if !self.compiled.rules.iter().any(|r| r.name == *n) {
                return Err(ConfigError::UnknownRule((*n).to_string()));
            }
        }
        let active = (0..self.compiled.rules.len())
            .filter(|&i| names.contains(&self.compiled.rules[i].name.as_str()))
            .collect();
        Ok(Masker::new(self.compiled.clone(), active))
    }
}

fn check_strategy(rule: &str, s: &Strategy) -> Result<(), ConfigError> {
    let bad = |detail: &str| {
        Err(ConfigError::Strategy {
            rule: rule.to_string(),
            detail: detail.to_string(),
        })
    };
    match s {
        Strategy::KeyedHash { length } if !(8..=64).contains(length) => {
            bad("keyed_hash length must be 8..=64 hex characters")
        }
        Strategy::Partial { keep_last, .. } if *keep_last > 64 => {
            bad("partial keep_last must be at most 64")
        }
        Strategy::Redact { text } if text.len() > 256 => {
            bad("redact text must be at most 256 bytes")
        }
        _ => Ok(()),
    }
}

fn load_key(cfg: &MaskingConfig) -> Result<Option<KeyedHasher>, ConfigError> {
    let hex = match (&cfg.hash_key, &cfg.hash_key_file) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoKeys),
        (None, None) => return Ok(None),
        (Some(k), None) => k.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|source| ConfigError::KeyFile {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_string(),
    };
    if hex.len() < 32 || hex.len() % 2 != 0 {
        return Err(ConfigError::BadKey);
    }
    let mut key = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(2) {
        let byte = hex
            .get(i..i + 2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or(ConfigError::BadKey)?;
        key.push(byte);
    }
    KeyedHasher::new(&key).map(Some).ok_or(ConfigError::BadKey)
}

/// The masking rules active on one connection.
#[derive(Debug, Clone)]
pub struct Masker {
    compiled: Arc<Compiled>,
    active: Vec<usize>,
    /// Per detector id: whether an active content rule uses it.
    detectors_on: Vec<bool>,
    /// Per detector id: (strategy, rule) of the first active content rule using it.
    content: Vec<Option<(usize, usize)>>,
}

impl Masker {
    fn new(compiled: Arc<Compiled>, active: Vec<usize>) -> Masker {
        let n = compiled.detectors.len();
        let mut content = vec![None; n];
        for &r in &active {
            for (ids, strategy) in &compiled.rules[r].content {
                for &d in ids {
                    if let Some(slot) = content.get_mut(d)
                        && slot.is_none()
                    {
                        *slot = Some((*strategy, r));
                    }
                }
            }
        }
        let detectors_on = content.iter().map(Option::is_some).collect();
        Masker {
            compiled,
            active,
            detectors_on,
            content,
        }
    }

    pub(super) fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// No rule applies: the session can skip planning and forward results untouched.
    pub fn is_noop(&self) -> bool {
        self.active.is_empty()
    }

    pub fn active_rules(&self) -> impl Iterator<Item = &str> {
        self.active
            .iter()
            .map(|&i| self.compiled.rules[i].name.as_str())
    }

    pub(super) fn scans_content(&self) -> bool {
        self.detectors_on.iter().any(|&on| on)
    }

    pub(super) fn detectors_on(&self) -> &[bool] {
        &self.detectors_on
    }

    pub(super) fn content_strategy(&self, detector: usize) -> Option<usize> {
        self.content_source(detector).map(|(s, _)| s)
    }

    pub(super) fn content_source(&self, detector: usize) -> Option<(usize, usize)> {
        self.content.get(detector).copied().flatten()
    }

    /// The first active column rule naming this column (its own name, then its base columns):
    /// (rule, matcher, strategy).
    pub(super) fn column_rule(&self, col: &ResolvedColumn) -> Option<(usize, usize, usize)> {
        self.active.iter().find_map(|&r| {
            let rule = &self.compiled.rules[r];
            rule.columns
                .iter()
                .position(|m| col.names().any(|n| m.pattern.matches(n)))
                .map(|m| (r, m, rule.columns[m].strategy))
        })
    }

    /// The column patterns of the active rules (`schema.table.column` globs): what a
    /// protocol must learn the names of (none: no column needs a name, ever).
    pub fn column_patterns(&self) -> impl Iterator<Item = &str> {
        self.active_compiled()
            .flat_map(|r| r.columns.iter().map(|m| m.source.as_str()))
    }

    /// Active rules in order with their indices into the compiled policy.
    pub(super) fn active_indexed(&self) -> impl Iterator<Item = (usize, &CompiledRule)> {
        self.active.iter().map(|&i| (i, &self.compiled.rules[i]))
    }

    /// Active rules in order, for the side-channel guard.
    pub(super) fn active_compiled(&self) -> impl Iterator<Item = &CompiledRule> {
        self.active.iter().map(|&i| &self.compiled.rules[i])
    }
}
