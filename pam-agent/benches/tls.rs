//! What TLS toward workers costs the agent: issuing a leaf (once per destination and
//! half-lifetime), finding it in the cache (every session), and a full handshake with
//! a verifying client (every TLS session). Figures: docs/postgres.md ("TLS").

use std::{net::IpAddr, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use pam_agent::tls::{AgentCa, LeafCache};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};

fn bench(c: &mut Criterion) {
    let ca = AgentCa::generate("bench CA").unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let dest: IpAddr = "10.0.0.5".parse().unwrap();
    let names = vec!["db.internal".to_owned()];

    c.bench_function("tls/leaf_issue", |b| {
        b.iter(|| {
            ca.acceptor(&names, Duration::from_secs(86_400), b"postgresql")
                .unwrap()
        })
    });

    let cache = LeafCache::new(ca, Duration::from_secs(86_400));
    cache.acceptor("db", dest, &names, b"postgresql").unwrap();
    c.bench_function("tls/leaf_cached", |b| {
        b.iter(|| cache.acceptor("db", dest, &names, b"postgresql").unwrap())
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let acceptor = cache.acceptor("db", dest, &names, b"postgresql").unwrap();
    let connector = TlsConnector::from(client);
    c.bench_function("tls/handshake_verify_full", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (a, z) = tokio::io::duplex(64 * 1024);
                let server = acceptor.accept(a);
                let client = connector.connect(ServerName::IpAddress(dest.into()), z);
                let (s, c) = tokio::join!(server, client);
                s.unwrap();
                c.unwrap();
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
