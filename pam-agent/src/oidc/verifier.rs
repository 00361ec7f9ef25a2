//! One bearer token in, an [`Identity`] or the reason it was refused out.

use std::str::FromStr;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::PublicKeyUse};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{OidcConfig, jwks::KeyCache};

/// Tokens are a few KiB; anything much bigger is not one.
const MAX_TOKEN: usize = 16 * 1024;

/// Only signatures a holder of the provider's private key can make. Never `none`, never
/// HMAC (whose "secret" would be the provider's public key: algorithm confusion).
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Who the provider says presented the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    /// `sub`: unique within the issuer.
    pub subject: String,
    /// From the configured groups claim; empty when the token has none.
    pub groups: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: Option<i64>,
}

/// Why a token was refused. Each is a reason to answer 401; none says more to the
/// presenter than "invalid token".
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("signature algorithm `{0}` is not accepted (asymmetric signatures only)")]
    Algorithm(String),
    #[error("the token names no signing key (kid)")]
    NoKeyId,
    #[error("unknown signing key `{0}`")]
    UnknownKey(String),
    #[error("signing key `{kid}` does not fit algorithm {alg}")]
    KeyMismatch { kid: String, alg: String },
    #[error("signature does not verify")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet (nbf)")]
    NotYetValid,
    #[error("audience is not one of ours")]
    Audience,
    #[error("issued by another issuer")]
    Issuer,
    #[error("claim `{0}` missing")]
    MissingClaim(String),
    #[error("claim `{0}` malformed")]
    ClaimFormat(String),
    #[error("identity provider: {0}")]
    Provider(String),
}

impl OidcError {
    /// A short stable name, for journal records and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            OidcError::Malformed(_) => "malformed",
            OidcError::Algorithm(_) => "algorithm",
            OidcError::NoKeyId => "no_kid",
            OidcError::UnknownKey(_) => "unknown_kid",
            OidcError::KeyMismatch { .. } => "key_mismatch",
            OidcError::Signature => "signature",
            OidcError::Expired => "expired",
            OidcError::NotYetValid => "not_yet_valid",
            OidcError::Audience => "audience",
            OidcError::Issuer => "issuer",
            OidcError::MissingClaim(_) => "missing_claim",
            OidcError::ClaimFormat(_) => "claim_format",
            OidcError::Provider(_) => "provider",
        }
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    /// Extensions the token says must be understood: none are, so any is refused.
    crit: Option<Value>,
}

/// Verifies bearer tokens of one issuer.
pub struct Verifier {
    cfg: OidcConfig,
    keys: KeyCache,
}

impl Verifier {
    /// `http` fetches the discovery document and keys (see [`client`]).
    pub fn new(cfg: OidcConfig, http: reqwest::Client) -> Verifier {
        Verifier {
            keys: KeyCache::new(&cfg, http),
            cfg,
        }
    }

    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    /// Reads the provider's keys now, so the first token does not wait for them.
    pub async fn prefetch(&self) -> Result<usize, OidcError> {
        self.keys.prefetch().await
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        if token.len() > MAX_TOKEN {
            return Err(OidcError::Malformed("too large".into()));
        }
        let header = header(token)?;
        if header.crit.is_some() {
            return Err(OidcError::Malformed("critical header extensions".into()));
        }
        let alg = Algorithm::from_str(&header.alg)
            .ok()
            .filter(|a| ACCEPTED.contains(a))
            .ok_or_else(|| OidcError::Algorithm(header.alg.clone()))?;
        let kid = header.kid.ok_or(OidcError::NoKeyId)?;
        let jwk = self.keys.key(&kid).await?;
        let mismatch = || OidcError::KeyMismatch {
            kid: kid.clone(),
            alg: header.alg.clone(),
        };
        // The key says what it is for: a key published for another algorithm or for
        // encryption does not verify this token.
        if jwk
            .common
            .key_algorithm
            .is_some_and(|k| k.to_string() != header.alg)
            || matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature)
        {
            return Err(mismatch());
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| mismatch())?;
        if key.family() != alg.family() {
            return Err(mismatch());
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&self.cfg.audience);
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(refusal)?;
        let claims = data.claims;
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(OidcError::ClaimFormat("sub".into())),
        };
        let groups = groups(&claims, &self.cfg.groups_claim)?;
        Ok(Identity {
            issuer: self.cfg.issuer.clone(),
            subject,
            groups,
            expires_at: claims.get("exp").and_then(Value::as_i64),
        })
    }
}

/// The HTTP client a verifier fetches with: rustls (aws-lc-rs), the system's roots or
/// only `ca_file`'s, no redirects to elsewhere, bounded time.
pub fn client(cfg: &OidcConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy();
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        b = b.tls_certs_only(certs);
    }
    b.build().map_err(|e| e.to_string())
}

fn header(token: &str) -> Result<RawHeader, OidcError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OidcError::Malformed("not three dot-separated parts".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| OidcError::Malformed("header is not base64url".into()))?;
    serde_json::from_slice(&bytes).map_err(|_| OidcError::Malformed("header is not JSON".into()))
}

fn refusal(e: jsonwebtoken::errors::Error) -> OidcError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.into_kind() {
        K::InvalidSignature => OidcError::Signature,
        K::ExpiredSignature => OidcError::Expired,
        K::ImmatureSignature => OidcError::NotYetValid,
        K::InvalidAudience => OidcError::Audience,
        K::InvalidIssuer => OidcError::Issuer,
        K::MissingRequiredClaim(c) => OidcError::MissingClaim(c),
        K::InvalidClaimFormat(c) => OidcError::ClaimFormat(c),
        K::InvalidAlgorithm | K::MissingAlgorithm => OidcError::Algorithm("mismatch".into()),
        other => OidcError::Malformed(format!("{other:?}")),
    }
}

/// The groups at `path` (dots walk into objects): an array of strings or one string.
fn groups(claims: &Map<String, Value>, path: &str) -> Result<Vec<String>, OidcError> {
    let mut at = None;
    let mut obj = Some(claims);
    for part in path.split('.') {
        at = obj.and_then(|o| o.get(part));
        obj = at.and_then(Value::as_object);
    }
    match at {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| OidcError::ClaimFormat(path.into())),
        Some(_) => Err(OidcError::ClaimFormat(path.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn verifier() -> Verifier {
        let cfg = super::super::RawOidc {
            // Nothing listens here: a test that reaches the key fetch fails as `provider`.
            issuer: "http://127.0.0.1:9".into(),
            audience: vec!["pam".into()],
            groups_claim: Some("realm_access.roles".into()),
            ca_file: None,
            leeway: None,
            jwks_refresh_interval: None,
            jwks_max_age: None,
        }
        .validate("t")
        .unwrap();
        let http = client(&cfg).unwrap();
        Verifier::new(cfg, http)
    }

    fn token(header: Value) -> String {
        format!(
            "{}.{}.c2ln",
            b64(&header),
            b64(&serde_json::json!({"sub": "x"}))
        )
    }

    #[tokio::test]
    async fn unsigned_and_symmetric_tokens_are_refused_before_any_key_is_fetched() {
        let v = verifier();
        for alg in ["none", "None", "HS256", "HS512", "RSA-OAEP", ""] {
            let t = token(serde_json::json!({"alg": alg, "kid": "k1"}));
            assert_eq!(
                v.verify(&t).await,
                Err(OidcError::Algorithm(alg.into())),
                "{alg}"
            );
        }
        let t = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none"})),
            b64(&serde_json::json!({}))
        );
        assert!(matches!(v.verify(&t).await, Err(OidcError::Algorithm(_))));
    }

    #[tokio::test]
    async fn malformed_tokens_and_missing_key_ids() {
        let v = verifier();
        for t in ["", "a.b", "a.b.c.d", "!!.e30.e30", "e30.e30.e30"] {
            assert!(
                matches!(
                    v.verify(t).await,
                    Err(OidcError::Malformed(_) | OidcError::Algorithm(_))
                ),
                "{t}"
            );
        }
        assert_eq!(
            v.verify(&token(serde_json::json!({"alg": "RS256"}))).await,
            Err(OidcError::NoKeyId)
        );
        let crit = token(serde_json::json!({"alg": "RS256", "kid": "k", "crit": ["b64"]}));
        assert!(matches!(
            v.verify(&crit).await,
            Err(OidcError::Malformed(_))
        ));
        let huge = "a".repeat(MAX_TOKEN + 1);
        assert!(matches!(
            v.verify(&huge).await,
            Err(OidcError::Malformed(_))
        ));
        // A well-formed RS256 token needs the provider's keys; unreachable, it is refused.
        let t = token(serde_json::json!({"alg": "RS256", "kid": "k"}));
        assert_eq!(v.verify(&t).await.unwrap_err().code(), "provider");
    }

    #[test]
    fn groups_come_from_the_configured_claim() {
        let c: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "groups": ["a", "b"],
            "one": "solo",
            "realm_access": {"roles": ["secops"]},
            "bad": [1],
        }))
        .unwrap();
        assert_eq!(groups(&c, "groups").unwrap(), ["a", "b"]);
        assert_eq!(groups(&c, "one").unwrap(), ["solo"]);
        assert_eq!(groups(&c, "realm_access.roles").unwrap(), ["secops"]);
        assert!(groups(&c, "absent").unwrap().is_empty());
        assert!(groups(&c, "groups.deeper").unwrap().is_empty());
        assert_eq!(groups(&c, "bad"), Err(OidcError::ClaimFormat("bad".into())));
    }
}
