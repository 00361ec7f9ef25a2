//! Credentials the agent logs in upstream with, so workers never hold them: which
//! account a principal gets on a resource (`[[resources.logins]]`), and its secret,
//! read when a session needs it from a root-only file, a systemd credential
//! (`LoadCredential=`, under `$CREDENTIALS_DIRECTORY`) or the agent's environment.
//!
//! Reading the secret per session is the rotation: a file or credential replaced on
//! disk is used by the next session, with no reload. The secret lives in memory only
//! while a login needs it ([`Secret`] wipes it on drop) and is never formatted: it has
//! no `Debug` or `Display`, so no log line, error or journal record can carry it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{principal::Principal, secret_file};

/// Where a login's secret is kept, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    /// Principal names this login is for; absent: every principal.
    pub principals: Option<Vec<String>>,
    /// The account (database role) the agent logs in as.
    pub role: String,
    /// A file (0600, owned by the agent's user) holding the secret.
    pub secret_file: Option<PathBuf>,
    /// A systemd credential's name (`LoadCredential=NAME:...` in the unit).
    pub secret_credential: Option<String>,
    /// An environment variable of the agent.
    pub secret_env: Option<String>,
}

/// A validated login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub principals: Option<Vec<String>>,
    pub role: String,
    pub source: SecretSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Credential(String),
    Env(String),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Credential(n) => write!(f, "systemd credential `{n}`"),
            SecretSource::Env(v) => write!(f, "environment variable `{v}`"),
        }
    }
}

/// A secret in memory: wiped when dropped, never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("secret {source_name} cannot be read: {reason}")]
    Unreadable { source_name: String, reason: String },
    #[error("secret {0} is empty")]
    Empty(String),
}

impl RawLogin {
    /// Exactly one source; a file must exist and be private now (so `check` catches a
    /// readable or foreign-owned secret before the agent runs). Errors are (field, reason).
    pub fn validate(self) -> Result<Login, (&'static str, String)> {
        let source = match (self.secret_file, self.secret_credential, self.secret_env) {
            (Some(f), None, None) => SecretSource::File(f),
            (None, Some(c), None) => SecretSource::Credential(c),
            (None, None, Some(e)) => SecretSource::Env(e),
            _ => {
                return Err((
                    "secret_file",
                    "give exactly one of secret_file, secret_credential, secret_env".into(),
                ));
            }
        };
        if self.role.is_empty() {
            return Err(("role", "must name the account to log in as".into()));
        }
        if let SecretSource::Credential(name) = &source
            && (name.is_empty() || name.contains('/') || name.starts_with('.'))
        {
            return Err((
                "secret_credential",
                format!("`{name}` is not a credential name"),
            ));
        }
        if let SecretSource::File(path) = &source {
            let meta = std::fs::metadata(path)
                .map_err(|e| ("secret_file", format!("{}: {e}", path.display())))?;
            secret_file::check_private(path, &meta).map_err(|e| ("secret_file", e.to_string()))?;
        }
        Ok(Login {
            principals: self.principals,
            role: self.role,
            source,
        })
    }
}

impl Login {
    /// Whether this login is for `who`.
    pub fn covers(&self, who: &Principal) -> bool {
        match &self.principals {
            None => true,
            Some(names) => who
                .name
                .as_deref()
                .is_some_and(|n| names.iter().any(|p| p == n)),
        }
    }

    /// The secret, read now (each session reads it afresh: rotation needs no reload).
    pub fn secret(&self) -> Result<Secret, CredentialError> {
        let name = self.source.to_string();
        let unreadable = |reason: String| CredentialError::Unreadable {
            source_name: name.clone(),
            reason,
        };
        let mut bytes = match &self.source {
            SecretSource::File(path) => read_private(path).map_err(unreadable)?,
            SecretSource::Credential(cred) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    unreadable(
                        "$CREDENTIALS_DIRECTORY is not set (add LoadCredential= to the unit)"
                            .into(),
                    )
                })?;
                // systemd makes the directory and its files readable by the service only.
                let path = Path::new(&dir).join(cred);
                Zeroizing::new(std::fs::read(&path).map_err(|e| unreadable(e.to_string()))?)
            }
            SecretSource::Env(var) => Zeroizing::new(
                std::env::var_os(var)
                    .ok_or_else(|| unreadable("not set".into()))?
                    .into_encoded_bytes(),
            ),
        };
        // A trailing newline is how editors and `echo` write files, never part of a password.
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(CredentialError::Empty(name));
        }
        Ok(Secret(bytes))
    }
}

fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    secret_file::check_private(path, &meta).map_err(|e| e.to_string())?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The first login that covers `who`.
pub fn choose<'a>(logins: &'a [Login], who: &Principal) -> Option<&'a Login> {
    logins.iter().find(|l| l.covers(who))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_login(path: &Path) -> RawLogin {
        RawLogin {
            role: "crew_reader".into(),
            secret_file: Some(path.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn a_secret_file_is_read_afresh_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let login = file_login(&path).validate().unwrap();
        assert_eq!(login.secret().unwrap().expose(), b"s3cret");
        // Rotated on disk: the next read has the new one.
        std::fs::write(&path, "n3w").unwrap();
        assert_eq!(login.secret().unwrap().expose(), b"n3w");
        // Made readable by others: refused at check and at use.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = file_login(&path).validate().unwrap_err();
        assert_eq!(e.0, "secret_file");
        assert!(e.1.contains("0600"), "{}", e.1);
        let e = login.secret().err().unwrap().to_string();
        assert!(e.contains("0600") && !e.contains("n3w"), "{e}");
    }

    #[test]
    fn exactly_one_source_and_empty_secrets_are_refused() {
        let both = RawLogin {
            role: "r".into(),
            secret_env: Some("A".into()),
            secret_credential: Some("b".into()),
            ..Default::default()
        };
        assert!(both.validate().unwrap_err().1.contains("exactly one"));
        let none = RawLogin {
            role: "r".into(),
            ..Default::default()
        };
        assert!(none.validate().is_err());
        let bad = RawLogin {
            role: "r".into(),
            secret_credential: Some("../x".into()),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "secret_credential");
        let env = RawLogin {
            role: "r".into(),
            secret_env: Some("PAM_AGENT_TEST_UNSET_VAR_XYZ".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(env.secret().err().unwrap().to_string().contains("not set"));
    }

    #[test]
    fn a_systemd_credential_is_read_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("orders-db"), "cr3d\n").unwrap();
        let login = RawLogin {
            role: "r".into(),
            secret_credential: Some("orders-db".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        // SAFETY: no other test in this crate reads or writes this variable.
        unsafe { std::env::set_var("CREDENTIALS_DIRECTORY", dir.path()) };
        assert_eq!(login.secret().unwrap().expose(), b"cr3d");
        unsafe { std::env::remove_var("CREDENTIALS_DIRECTORY") };
        let e = login.secret().err().unwrap().to_string();
        assert!(e.contains("LoadCredential="), "{e}");
    }

    #[test]
    fn logins_are_chosen_by_principal_name() {
        let l = |p: Option<&[&str]>, role: &str| Login {
            principals: p.map(|p| p.iter().map(|s| s.to_string()).collect()),
            role: role.into(),
            source: SecretSource::Env("X".into()),
        };
        let logins = [l(Some(&["orders"]), "orders_rw"), l(None, "readonly")];
        let named = |n: Option<&str>| Principal {
            name: n.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(
            choose(&logins, &named(Some("orders"))).unwrap().role,
            "orders_rw"
        );
        assert_eq!(
            choose(&logins, &named(Some("billing"))).unwrap().role,
            "readonly"
        );
        assert_eq!(choose(&logins, &named(None)).unwrap().role, "readonly");
        assert!(choose(&logins[..1], &named(Some("billing"))).is_none());
    }
}
