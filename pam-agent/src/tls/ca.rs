//! TLS toward the worker: the agent presents a leaf certificate issued by its own CA
//! for the destination the worker meant to reach (after the protocol's own request for
//! TLS). Workers that verify the server trust that CA's certificate (`pam-agent ca show`).
//!
//! The CA is kept on disk ([`AgentCa::load_or_create`]: certificate 0644, key 0600);
//! leaves live only in memory ([`LeafCache`]), one per (resource, destination), and are
//! re-issued when half their lifetime has passed so a worker never meets an expired one.
//! TLS toward the server is [`super::client`].

use std::{
    collections::HashMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject},
    },
};

/// How long a CA made by the agent is valid: workers pin it, so it should outlive hosts.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Leaves are valid from a little before they are issued, for workers with a slow clock.
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Destinations kept in the leaf cache before it is emptied (a CIDR resource may have
/// many; each entry is one key pair and certificate).
const MAX_LEAVES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA key: {0}")]
    Key(#[from] crate::secret_file::PrivateFileError),
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(
        "{present} exists but {missing} does not: restore it, or remove both to make a new CA (workers must then trust the new one)"
    )]
    HalfCa { present: PathBuf, missing: PathBuf },
}

/// The agent's certificate authority: signs the leaves shown to workers.
pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl AgentCa {
    /// A new CA in memory (valid ten years from now).
    pub fn generate(common_name: &str) -> Result<AgentCa, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(AgentCa {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads a CA certificate (PEM) and its key (PKCS#8 PEM, 0600, owned by the agent's
    /// user). The certificate may come from the operator's own PKI (an intermediate).
    pub fn load(cert: &Path, key: &Path) -> Result<AgentCa, TlsError> {
        let meta = fs::metadata(key).map_err(|source| TlsError::Io {
            path: key.to_owned(),
            source,
        })?;
        crate::secret_file::check_private(key, &meta)?;
        let format = |path: &Path, reason: String| TlsError::Format {
            path: path.to_owned(),
            reason,
        };
        let key_pem = fs::read_to_string(key).map_err(|source| TlsError::Io {
            path: key.to_owned(),
            source,
        })?;
        let key_pair = KeyPair::from_pem(&key_pem)
            .map_err(|e| format(key, format!("not a PKCS#8 PEM private key: {e}")))?;
        let cert_pem = Self::read_cert_pem(cert)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format(cert, format!("no PEM certificate: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair)
            .map_err(|e| format(cert, format!("not a usable CA certificate: {e}")))?;
        let ca = AgentCa {
            cert_pem,
            cert_der,
            issuer,
        };
        // A key that does not match the certificate would issue leaves no worker accepts.
        ca.self_check()
            .map_err(|e| format(key, format!("does not belong to {}: {e}", cert.display())))?;
        Ok(ca)
    }

    /// Writes a new CA: the key first (0600, never overwritten), then the certificate
    /// (0644). Missing directories are made 0700.
    pub fn create(cert: &Path, key: &Path, common_name: &str) -> Result<AgentCa, TlsError> {
        let ca = Self::generate(common_name)?;
        write_new(key, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
        write_new(cert, ca.cert_pem.as_bytes(), 0o644)?;
        Ok(ca)
    }

    /// The CA at these paths, made when neither file exists (the first start). Returns
    /// whether it was made now. One file without the other is an error: silently
    /// making a new CA would break every worker that trusts the old one.
    pub fn load_or_create(cert: &Path, key: &Path) -> Result<(AgentCa, bool), TlsError> {
        match (cert.exists(), key.exists()) {
            (false, false) => Ok((Self::create(cert, key, "pam-agent CA")?, true)),
            (true, false) => Err(TlsError::HalfCa {
                present: cert.to_owned(),
                missing: key.to_owned(),
            }),
            (false, true) => Err(TlsError::HalfCa {
                present: key.to_owned(),
                missing: cert.to_owned(),
            }),
            (true, true) => Ok((Self::load(cert, key)?, false)),
        }
    }

    /// The certificate file's text, checked to hold a PEM certificate.
    pub fn read_cert_pem(cert: &Path) -> Result<String, TlsError> {
        let pem = fs::read_to_string(cert).map_err(|source| TlsError::Io {
            path: cert.to_owned(),
            source,
        })?;
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Format {
            path: cert.to_owned(),
            reason: format!("no PEM certificate: {e}"),
        })?;
        Ok(pem)
    }

    /// The CA certificate, for workers' `sslrootcert` / system trust store.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// A TLS acceptor presenting a new leaf certificate for `names` (DNS names or IP
    /// addresses the workers connect to), valid for `validity`, offering the protocol's
    /// ALPN name (`alpn`; empty for none).
    pub fn acceptor(
        &self,
        names: &[String],
        validity: Duration,
        alpn: &[u8],
    ) -> Result<TlsAcceptor, TlsError> {
        let (chain, key) = self.issue(names, validity)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        if !alpn.is_empty() {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// A leaf certificate and its key; the chain ends with the CA certificate.
    fn issue(
        &self,
        names: &[String],
        validity: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("pam-agent"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + validity;
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let chain = vec![leaf.der().clone(), self.cert_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }

    /// Issues a leaf and verifies it against the CA certificate, as a worker would.
    fn self_check(&self) -> Result<(), TlsError> {
        use rustls::client::danger::ServerCertVerifier;
        let name = "pam-agent.invalid";
        let (chain, _) = self.issue(&[name.into()], Duration::from_secs(600))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(
            &chain[0],
            &chain[1..],
            &rustls::pki_types::ServerName::try_from(name).expect("valid name"),
            &[],
            rustls::pki_types::UnixTime::now(),
        )?;
        Ok(())
    }
}

/// Never replaces a CA (or a key) that workers may already trust.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::secret_file::write_new(path, data, mode).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Leaf certificates by destination, issued on first use and re-issued once half their
/// lifetime has passed (so a leaf in use always has at least half of it left).
pub struct LeafCache {
    ca: AgentCa,
    validity: Duration,
    leaves: Mutex<HashMap<(String, IpAddr), Leaf>>,
}

struct Leaf {
    acceptor: TlsAcceptor,
    renew_at: Instant,
}

impl LeafCache {
    pub fn new(ca: AgentCa, validity: Duration) -> LeafCache {
        LeafCache {
            ca,
            validity,
            leaves: Mutex::new(HashMap::new()),
        }
    }

    pub fn ca(&self) -> &AgentCa {
        &self.ca
    }

    /// The acceptor for a worker that connected to `destination` of `resource`: its
    /// certificate names that IP address (and, for an IPv4-mapped IPv6 address, both
    /// forms) plus the resource's `tls_names`; `alpn` as for [`AgentCa::acceptor`] (a
    /// resource has one protocol, so its leaves are cached by resource).
    pub fn acceptor(
        &self,
        resource: &str,
        destination: IpAddr,
        tls_names: &[String],
        alpn: &[u8],
    ) -> Result<TlsAcceptor, TlsError> {
        self.acceptor_at(resource, destination, tls_names, alpn, Instant::now())
    }

    /// [`LeafCache::acceptor`] at the time `now` (tests move the clock past the half-life).
    fn acceptor_at(
        &self,
        resource: &str,
        destination: IpAddr,
        tls_names: &[String],
        alpn: &[u8],
        now: Instant,
    ) -> Result<TlsAcceptor, TlsError> {
        let key = (resource.to_owned(), destination);
        if let Some(leaf) = self.lock().get(&key)
            && leaf.renew_at > now
        {
            return Ok(leaf.acceptor.clone());
        }
        // Issued outside the lock: key generation takes about a millisecond.
        let mut names = vec![destination.to_string()];
        if let IpAddr::V6(v6) = destination
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            names.push(v4.to_string());
        }
        names.extend(tls_names.iter().cloned());
        let acceptor = self.ca.acceptor(&names, self.validity, alpn)?;
        let mut leaves = self.lock();
        if leaves.len() >= MAX_LEAVES {
            leaves.retain(|_, l| l.renew_at > now);
            if leaves.len() >= MAX_LEAVES {
                leaves.clear();
            }
        }
        leaves.insert(
            key,
            Leaf {
                acceptor: acceptor.clone(),
                renew_at: now + self.validity / 2,
            },
        );
        Ok(acceptor)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, IpAddr), Leaf>> {
        // A panic while holding the lock leaves a usable map: recover it.
        self.leaves.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_is_written_0600_reloaded_and_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("sub/ca.pem");
        let key = dir.path().join("sub/ca.key");
        let (ca, created) = AgentCa::load_or_create(&cert, &key).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, created) = AgentCa::load_or_create(&cert, &key).unwrap();
        assert!(!created);
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(again.cert_pem(), fs::read_to_string(&cert).unwrap());
        // The reloaded CA issues leaves that chain to the same certificate.
        again
            .acceptor(&["10.0.0.5".into()], Duration::from_secs(60), b"")
            .unwrap();
        assert!(AgentCa::create(&cert, &key, "x").is_err(), "overwrote a CA");

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = AgentCa::load(&cert, &key).err().unwrap().to_string();
        assert!(e.contains("0600"), "{e}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

        fs::remove_file(&key).unwrap();
        let e = AgentCa::load_or_create(&cert, &key)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not"), "{e}");
    }

    #[test]
    fn a_key_of_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = (dir.path().join("1.pem"), dir.path().join("1.key"));
        let (c2, k2) = (dir.path().join("2.pem"), dir.path().join("2.key"));
        AgentCa::create(&c1, &k1, "one").unwrap();
        AgentCa::create(&c2, &k2, "two").unwrap();
        let e = AgentCa::load(&c1, &k2).err().unwrap().to_string();
        assert!(e.contains("does not belong"), "{e}");
    }

    #[test]
    fn leaves_are_cached_per_destination() {
        let cache = LeafCache::new(AgentCa::generate("t").unwrap(), Duration::from_secs(3600));
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let a = cache.acceptor("db", ip, &[], b"").unwrap();
        let b = cache.acceptor("db", ip, &[], b"").unwrap();
        assert!(Arc::ptr_eq(a.config(), b.config()));
        let c = cache
            .acceptor("db", "10.0.0.6".parse().unwrap(), &[], b"")
            .unwrap();
        assert!(!Arc::ptr_eq(a.config(), c.config()));
    }

    #[test]
    fn leaves_are_reissued_when_half_their_life_is_gone() {
        let life = Duration::from_secs(3600);
        let cache = LeafCache::new(AgentCa::generate("t").unwrap(), life);
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let t0 = Instant::now();
        let at = |t: Instant| cache.acceptor_at("db", ip, &[], b"", t).unwrap();
        let first = at(t0);
        // Just before half the lifetime: the same leaf.
        let before = at(t0 + life / 2 - Duration::from_millis(1));
        assert!(Arc::ptr_eq(first.config(), before.config()));
        // At half the lifetime: a new leaf, then that one until its own half-life.
        let renewed = at(t0 + life / 2);
        assert!(!Arc::ptr_eq(first.config(), renewed.config()));
        let later = at(t0 + life / 2 + life / 2 - Duration::from_millis(1));
        assert!(Arc::ptr_eq(renewed.config(), later.config()));
        assert!(!Arc::ptr_eq(
            renewed.config(),
            at(t0 + life + Duration::from_millis(1)).config()
        ));
    }

    /// The lifetime the half-life is taken from is the one written in the certificate,
    /// read back with an X.509 parser.
    #[test]
    fn a_leaf_is_valid_for_the_configured_lifetime() {
        let ca = AgentCa::generate("t").unwrap();
        let life = Duration::from_secs(7200);
        let (chain, _) = ca.issue(&["10.0.0.5".into()], life).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let v = cert.validity();
        let span = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(
            span,
            (life + CLOCK_SKEW).as_secs() as i64,
            "not_before is back-dated by the clock skew"
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((v.not_after.timestamp() - now - life.as_secs() as i64).abs() <= 5);
    }
}
