//! Checkpoint signatures. The agent signs "the journal with id J had hash H at seq S" with
//! an ed25519 key every N records or T seconds, and signs an anchor whenever retention
//! removes old records. Without the key nobody can re-write history up to a checkpoint,
//! even after recomputing every hash.
//!
//! The key is a PKCS#8 PEM file (readable by `openssl pkey`), created on first start with
//! mode 0600 and refused when group or others can read it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use ed25519_dalek::{
    Signature, Signer, SigningKey, Verifier, VerifyingKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding},
};

use super::chain::Hash;

const CHECKPOINT_DOMAIN: &[u8] = b"pam-agent journal checkpoint v1\0";
const ANCHOR_DOMAIN: &[u8] = b"pam-agent journal anchor v1\0";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key: {0}")]
    Private(#[from] crate::secret_file::PrivateFileError),
    #[error("signing key {path} is not an ed25519 PKCS#8 PEM key: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("cannot generate a signing key: {0}")]
    Random(String),
}

/// Loads the key at `path`, creating it (and its directory, 0700) when missing.
pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match fs::metadata(path) {
        Ok(meta) => {
            crate::secret_file::check_private(path, &meta)?;
            let pem = fs::read_to_string(path).map_err(io)?;
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Format {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(io(e)),
    }
}

fn create(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Format {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    // Two agents racing to create the key must not overwrite each other: create_new.
    crate::secret_file::write_new(path, pem.as_bytes(), 0o600).map_err(io)?;
    tracing::info!(path = %path.display(), public_key = %super::chain::hex(key.verifying_key().as_bytes()), "created the journal signing key");
    Ok(key)
}

/// What a checkpoint signature covers.
pub fn checkpoint_message(journal_id: &[u8; 16], seq: u64, hash: &Hash, ts_us: i64) -> Vec<u8> {
    message(CHECKPOINT_DOMAIN, journal_id, seq, hash, ts_us)
}

/// What an anchor signature covers: "the record `first_seq` follows `prev_hash`".
pub fn anchor_message(
    journal_id: &[u8; 16],
    first_seq: u64,
    prev_hash: &Hash,
    ts_us: i64,
) -> Vec<u8> {
    message(ANCHOR_DOMAIN, journal_id, first_seq, prev_hash, ts_us)
}

fn message(domain: &[u8], id: &[u8; 16], seq: u64, hash: &Hash, ts_us: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 16 + 8 + 32 + 8);
    m.extend_from_slice(domain);
    m.extend_from_slice(id);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&ts_us.to_be_bytes());
    m
}

pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    key.sign(message).to_bytes()
}

/// Checks `signature` over `message` by the 32-byte public key `public`.
pub fn verify(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(public): Result<[u8; 32], _> = public.try_into() else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&public) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify(message, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_created_0600_reloaded_and_refused_when_open() {
        let dir = std::env::temp_dir().join(format!("pam-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("k.pem");
        let a = load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.verifying_key(), b.verifying_key());
        let m = checkpoint_message(&[7; 16], 5, &[1; 32], 42);
        let sig = sign(&a, &m);
        assert!(verify(a.verifying_key().as_bytes(), &m, &sig));
        assert!(!verify(
            a.verifying_key().as_bytes(),
            &anchor_message(&[7; 16], 5, &[1; 32], 42),
            &sig
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyError::Private(
                crate::secret_file::PrivateFileError::TooOpen { .. }
            ))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
