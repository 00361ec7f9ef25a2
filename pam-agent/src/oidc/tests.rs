//! The verifier against a provider served in-process on loopback (discovery document and
//! JWKS over real HTTP), with ES256 keys made here: what it accepts, what it refuses, and
//! how often it fetches keys. The end-to-end tests do the same against oidc-provider with
//! RS256 (tests/tests/approvals_remote.rs).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::{OidcError, RawOidc, Verifier, verifier::client};

struct Provider {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

struct Key {
    kid: String,
    pkcs8: Vec<u8>,
    jwk: Value,
}

fn key(kid: &str) -> Key {
    let kp = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let raw = kp.public_key_raw(); // 0x04 || x || y
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Key {
        kid: kid.into(),
        pkcs8: kp.serialize_der(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65]),
        }),
    }
}

async fn provider(keys: &[&Key]) -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let jwks = Arc::new(Mutex::new(
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }),
    ));
    let fetches = Arc::new(AtomicUsize::new(0));
    let discovery = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") });
    let (j, f) = (jwks.clone(), fetches.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/jwks",
            axum::routing::get(move || async move {
                f.fetch_add(1, Ordering::SeqCst);
                axum::Json(j.lock().unwrap().clone())
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Provider {
        issuer,
        jwks,
        fetches,
    }
}

fn verifier(p: &Provider, refresh: &str) -> Verifier {
    let cfg = RawOidc {
        issuer: p.issuer.clone(),
        audience: vec!["pam".into()],
        groups_claim: None,
        ca_file: None,
        leeway: Some("5s".into()),
        jwks_refresh_interval: Some(refresh.into()),
        jwks_max_age: None,
    }
    .validate("t")
    .unwrap();
    let http = client(&cfg).unwrap();
    Verifier::new(cfg, http)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn claims(p: &Provider) -> Value {
    json!({"iss": p.issuer, "aud": ["other", "pam"], "sub": "alice", "groups": ["secops"],
           "iat": now(), "exp": now() + 300})
}

fn sign(k: &Key, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(&k.pkcs8)).unwrap()
}

#[tokio::test]
async fn a_valid_token_names_its_subject_and_groups() {
    let k1 = key("k1");
    let p = provider(&[&k1]).await;
    let v = verifier(&p, "1h");
    let id = v.verify(&sign(&k1, &claims(&p))).await.unwrap();
    assert_eq!(
        (id.subject.as_str(), id.groups.as_slice()),
        ("alice", &["secops".to_owned()][..])
    );
    assert_eq!(id.issuer, p.issuer);
}

#[tokio::test]
async fn each_claim_problem_has_its_own_refusal() {
    let k1 = key("k1");
    let p = provider(&[&k1]).await;
    let v = verifier(&p, "1h");
    let with = |k: &str, val: Value| {
        let mut c = claims(&p);
        c[k] = val;
        c
    };
    let cases = [
        (with("exp", json!(now() - 60)), OidcError::Expired),
        (with("nbf", json!(now() + 60)), OidcError::NotYetValid),
        (with("aud", json!("someone-else")), OidcError::Audience),
        (
            with("iss", json!("https://evil.example")),
            OidcError::Issuer,
        ),
    ];
    for (c, want) in cases {
        assert_eq!(v.verify(&sign(&k1, &c)).await, Err(want.clone()), "{c}");
    }
    // Within the leeway: still valid.
    assert!(
        v.verify(&sign(&k1, &with("exp", json!(now() - 2))))
            .await
            .is_ok()
    );
    let mut c = claims(&p);
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        v.verify(&sign(&k1, &c)).await,
        Err(OidcError::MissingClaim("sub".into()))
    );
    // Signed by a key the provider does not publish, under a published kid.
    let impostor = Key {
        kid: "k1".into(),
        ..key("k1")
    };
    assert_eq!(
        v.verify(&sign(&impostor, &claims(&p))).await,
        Err(OidcError::Signature)
    );
}

#[tokio::test]
async fn a_key_published_for_another_algorithm_does_not_verify() {
    let mut k1 = key("k1");
    k1.jwk["alg"] = json!("ES384");
    let p = provider(&[&k1]).await;
    let v = verifier(&p, "1h");
    assert!(matches!(
        v.verify(&sign(&k1, &claims(&p))).await,
        Err(OidcError::KeyMismatch { .. })
    ));
}

#[tokio::test]
async fn unknown_key_ids_refetch_the_keys_at_most_once_per_interval() {
    let (k1, k2, k3) = (key("k1"), key("k2"), key("k3"));
    let p = provider(&[&k1]).await;
    let v = verifier(&p, "1h");
    v.verify(&sign(&k1, &claims(&p))).await.unwrap();
    assert_eq!(p.fetches.load(Ordering::SeqCst), 1);
    // Within the interval after a fetch, a flood of forged kids causes no fetch.
    for _ in 0..5 {
        assert_eq!(
            v.verify(&sign(&k2, &claims(&p))).await,
            Err(OidcError::UnknownKey("k2".into()))
        );
    }
    assert_eq!(p.fetches.load(Ordering::SeqCst), 1);
    // Known keys need no fetch either.
    v.verify(&sign(&k1, &claims(&p))).await.unwrap();
    assert_eq!(p.fetches.load(Ordering::SeqCst), 1);

    // With a zero interval (every miss may fetch), a rotation is picked up at once, and
    // a key the provider dropped is dropped here too.
    let v = verifier(&p, "0s");
    v.verify(&sign(&k1, &claims(&p))).await.unwrap();
    *p.jwks.lock().unwrap() = json!({ "keys": [k3.jwk] });
    v.verify(&sign(&k3, &claims(&p))).await.unwrap();
    assert_eq!(
        v.verify(&sign(&k1, &claims(&p))).await,
        Err(OidcError::UnknownKey("k1".into()))
    );
}

#[tokio::test]
async fn a_discovery_document_of_another_issuer_is_refused() {
    let k1 = key("k1");
    let p = provider(&[&k1]).await;
    // The same server, named differently: its document names another issuer.
    let alias = Provider {
        issuer: p.issuer.replace("127.0.0.1", "localhost"),
        jwks: p.jwks.clone(),
        fetches: p.fetches.clone(),
    };
    let v = verifier(&alias, "1h");
    let err = v.verify(&sign(&k1, &claims(&alias))).await.unwrap_err();
    assert_eq!(err.code(), "provider", "{err}");
}
