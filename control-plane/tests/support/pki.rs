//! A throwaway PKI for TLS tests: a CA made with rcgen, a server certificate for
//! `127.0.0.1` and `localhost` (also usable as a client certificate, as Redis Cluster
//! nodes need) and a client certificate, all signed by it and written
//! as PEM files into a temp dir; and a TLS-terminating proxy so any plain HTTP server
//! of a test (a webhook receiver, the control plane) can be reached over `https://`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TestPki {
    dir: PathBuf,
    /// The temp dir of [`TestPki::generate`], removed on drop.
    _owned: Option<tempfile::TempDir>,
}

impl TestPki {
    /// A new CA and its certificates, in a new temp dir.
    pub fn generate() -> Self {
        let owned = tempfile::tempdir().unwrap();
        let mut pki = Self::generate_in(owned.path().to_owned());
        pki._owned = Some(owned);
        pki
    }

    /// A new CA and its certificates, in `dir` (created), which whoever owns it
    /// removes: for a PKI held by a `static`, which is never dropped.
    pub fn generate_in(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.distinguished_name.push(DnType::CommonName, "Portcullis test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        write("ca.pem", ca.pem());

        let leaf = |names: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>, common_name: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = usages;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        // Client use too: Redis Cluster nodes present it to each other on the bus.
        let (cert, key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            "localhost",
        );
        write("server.pem", cert);
        write("server.key", key);
        let (cert, key) = leaf(Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth], "portcullis");
        write("client.pem", cert);
        write("client.key", key);
        Self { dir, _owned: None }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA certificate: what `--redis-ca-file`, `--webhook-ca-file`, `--ca-file` take.
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    pub fn server_cert_file(&self) -> PathBuf {
        self.path("server.pem")
    }

    pub fn server_key_file(&self) -> PathBuf {
        self.path("server.key")
    }

    pub fn client_cert_file(&self) -> PathBuf {
        self.path("client.pem")
    }

    pub fn client_key_file(&self) -> PathBuf {
        self.path("client.key")
    }

    /// The server flags that trust this CA for Redis and present the client
    /// certificate.
    pub fn redis_tls_flags(&self) -> Vec<String> {
        let text = |p: PathBuf| p.to_str().unwrap().to_owned();
        vec![
            "--redis-ca-file".into(),
            text(self.ca_file()),
            "--redis-cert-file".into(),
            text(self.client_cert_file()),
            "--redis-key-file".into(),
            text(self.client_key_file()),
        ]
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A rustls server configuration presenting the server certificate.
    pub fn server_config(&self) -> rustls::ServerConfig {
        portcullis_control_plane::tls::install_crypto_provider();
        let chain = CertificateDer::pem_file_iter(self.server_cert_file())
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.server_key_file()).unwrap();
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap()
    }
}

/// Terminates TLS (the PKI's server certificate) on a new loopback port and forwards
/// each connection to `upstream` in plain text; runs until the runtime ends. Returns
/// the TLS address.
pub async fn tls_proxy(pki: &TestPki, upstream: SocketAddr) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate aborts the handshake:
                // nothing to forward then.
                let Ok(mut client) = acceptor.accept(client).await else { return };
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    address
}
