//! A real OpenID provider on loopback: `oidc-provider` (npm, a certified OpenID Connect
//! implementation) run by node from `tests/idp/` (installed there by `cargo xtask
//! setup`). It publishes a discovery document and JWKS and issues RS256 JWT access
//! tokens by the client-credentials grant: one client per test identity, its subject
//! the client id, its groups in a `groups` claim.
//!
//! [`Idp::forge`] makes the tokens no honest provider issues (expired, foreign audience,
//! `alg: none`, HS256 keyed with the public key, ...), signed with the provider's own
//! private key where a signature is wanted: each attack differs from a valid token in
//! one thing only. [`Idp::rotate`] restarts the provider on the same address with a new
//! signing key first (the old one still published), as a key rotation does.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{Watchdog, output_within};

/// The audience the fixture's tokens are for.
pub const AUDIENCE: &str = "https://pam-agent.test/approvals";

/// One identity the provider knows: client id (= subject), secret, groups.
pub struct Identity {
    pub id: String,
    pub groups: Vec<String>,
}

pub struct Idp {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, as the provider names itself.
    pub issuer: String,
    port: u16,
    /// Signing key first.
    keys: Vec<String>,
    identities: Vec<Identity>,
}

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

fn secret(id: &str) -> String {
    format!("secret-of-{id}-for-the-e2e-tests-only")
}

impl Idp {
    /// Starts the provider with one signing key (`k1`) and `identities` as
    /// `(subject, groups)`.
    pub fn start(identities: &[(&str, &[&str])]) -> anyhow::Result<Idp> {
        if !idp_dir().join("node_modules/oidc-provider").exists() {
            bail!(
                "{}/node_modules has no oidc-provider: run `cargo xtask setup`",
                idp_dir().display()
            );
        }
        let dir = tempfile::Builder::new().prefix("pam-idp").tempdir()?;
        let mut idp = Idp {
            child: None,
            dir,
            issuer: String::new(),
            port: 0,
            keys: Vec::new(),
            identities: identities
                .iter()
                .map(|(id, groups)| Identity {
                    id: id.to_string(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                })
                .collect(),
        };
        idp.new_key("k1")?;
        idp.keys.push("k1".into());
        idp.serve()?;
        Ok(idp)
    }

    fn key_path(&self, kid: &str) -> PathBuf {
        self.dir.path().join(format!("{kid}.pem"))
    }

    /// The PEM public key of `kid` (what an attacker can download from the JWKS).
    pub fn public_key_path(&self, kid: &str) -> PathBuf {
        self.dir.path().join(format!("{kid}.pub.pem"))
    }

    fn new_key(&self, kid: &str) -> anyhow::Result<()> {
        let key = self.key_path(kid);
        let out = output_within(
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&key),
            Duration::from_secs(60),
        );
        if !out.status.success() {
            bail!("openssl genpkey: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out = output_within(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(self.public_key_path(kid)),
            Duration::from_secs(30),
        );
        if !out.status.success() {
            bail!("openssl pkey: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn serve(&mut self) -> anyhow::Result<()> {
        let config = json!({
            "port": self.port,
            "audience": AUDIENCE,
            "keys": self.keys.iter().map(|k| json!({"kid": k, "pem": self.key_path(k)})).collect::<Vec<_>>(),
            "clients": self.identities.iter().map(|i| json!({
                "id": i.id, "secret": secret(&i.id), "groups": i.groups,
            })).collect::<Vec<_>>(),
        });
        let path = self.dir.path().join("config.json");
        std::fs::write(&path, config.to_string())?;
        let log = std::fs::File::create(self.dir.path().join("idp.log"))?;
        let mut child = Command::new("node")
            .process_group(0)
            .arg(idp_dir().join("idp.mjs"))
            .arg("serve")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting node (the test identity provider)")?;
        let watchdog = Watchdog::new(
            child.id(),
            "the identity provider's start".into(),
            Duration::from_secs(60),
        );
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the identity provider's ready line")?;
        drop(watchdog);
        let Some(issuer) = line.trim().strip_prefix("ready ") else {
            let _ = child.kill();
            bail!(
                "identity provider did not start: {line}{}",
                std::fs::read_to_string(self.dir.path().join("idp.log")).unwrap_or_default()
            );
        };
        self.issuer = issuer.to_owned();
        self.port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        self.child = Some(child);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Rotates to a new signing key `kid`: the provider restarts on the same address
    /// with `kid` first; the old keys stay published.
    pub fn rotate(&mut self, kid: &str) -> anyhow::Result<()> {
        self.new_key(kid)?;
        self.keys.insert(0, kid.into());
        self.stop();
        self.serve()
    }

    /// A key the provider never published (for tokens naming an unknown kid).
    pub fn unpublished_key(&self, kid: &str) -> anyhow::Result<()> {
        self.new_key(kid)
    }

    /// The kid the provider signs with now.
    pub fn signing_kid(&self) -> &str {
        &self.keys[0]
    }

    /// A token from the provider's token endpoint (client credentials) for `subject`.
    pub fn token(&self, subject: &str) -> String {
        let out = output_within(
            Command::new("curl")
                .args(["-sS", "--fail-with-body", "-u"])
                .arg(format!("{subject}:{}", secret(subject)))
                .args([
                    "-d",
                    "grant_type=client_credentials",
                    "-d",
                    "scope=approvals",
                ])
                .arg(format!("{}/token", self.issuer)),
            Duration::from_secs(30),
        );
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "token for {subject}: {body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(&body).expect("token response is JSON");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// Claims a valid token of `subject` would carry (now, for five minutes).
    pub fn claims(&self, subject: &str, groups: &[&str]) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        json!({
            "iss": self.issuer, "aud": AUDIENCE, "sub": subject, "groups": groups,
            "iat": now, "exp": now + 300,
        })
    }

    /// A compact JWS: `alg` RS256 (the provider's key `kid`), HS256 (keyed with the
    /// bytes of that key's public PEM) or none; `tamper` flips a bit of the signature.
    pub fn forge(&self, alg: &str, kid: Option<&str>, claims: &Value, tamper: bool) -> String {
        let key = kid.unwrap_or(self.signing_kid());
        let spec = json!({
            "alg": alg, "kid": kid, "claims": claims, "tamper": tamper,
            "pem": self.key_path(key), "hmac_key_file": self.public_key_path(key),
        });
        let path = self.dir.path().join("sign.json");
        std::fs::write(&path, spec.to_string()).unwrap();
        let out = output_within(
            Command::new("node")
                .arg(idp_dir().join("idp.mjs"))
                .arg("sign")
                .arg(&path),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "idp.mjs sign: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}
