//! TLS for every outbound connection: Redis (`rediss://`), webhooks and the CLI's
//! `--url https://…`.
//!
//! - One rustls crypto provider for the whole process, ring, installed before any TLS
//!   configuration is built ([`install_crypto_provider`]): rustls must never have to
//!   guess between providers (it panics when several are compiled in and none is
//!   chosen).
//! - Server certificates are always verified, hostname included; there is no switch
//!   to turn that off. The roots are the compiled-in Mozilla set (webpki-roots, so a
//!   container without `/etc/ssl` works) plus, where a flag gives one, a CA file.
//! - A CA file is read and checked once, at startup ([`CaBundle::load`]): a missing
//!   file, a file without a certificate, or a certificate rustls cannot use as a trust
//!   anchor stops startup with an error naming the flag and the file, instead of
//!   every connection failing later.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Makes ring the process' rustls provider. Idempotent; safe from any thread.
pub fn install_crypto_provider() {
    // `Err` means a provider is installed already (by an earlier call): keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {flag} {path}: {source}")]
    Unreadable { flag: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{flag} {path}: not a PEM file: {reason}")]
    NotPem { flag: &'static str, path: PathBuf, reason: String },
    #[error("{flag} {path}: no certificate in it (expected `-----BEGIN CERTIFICATE-----` blocks)")]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("{flag} {path}: certificate {index} cannot be a trust anchor: {reason}")]
    BadCertificate { flag: &'static str, path: PathBuf, index: usize, reason: String },
    #[error("{flag} {path}: no private key in it (expected a PEM `PRIVATE KEY` block)")]
    NoPrivateKey { flag: &'static str, path: PathBuf },
    #[error("{0}")]
    Invalid(String),
}

/// Certificates read from a PEM file given by `flag`, checked to be usable roots.
#[derive(Debug, Clone)]
pub struct CaBundle {
    path: PathBuf,
    pem: Vec<u8>,
    certificates: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Reads and checks `path`; errors name `flag` (e.g. `--redis-ca-file`).
    pub fn load(flag: &'static str, path: &Path) -> Result<Self, TlsConfigError> {
        let pem = std::fs::read(path).map_err(|source| TlsConfigError::Unreadable {
            flag,
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(flag, path, pem)
    }

    fn from_pem(flag: &'static str, path: &Path, pem: Vec<u8>) -> Result<Self, TlsConfigError> {
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsConfigError::NotPem { flag, path: path.to_owned(), reason: e.to_string() })?;
        if certificates.is_empty() {
            return Err(TlsConfigError::NoCertificate { flag, path: path.to_owned() });
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, certificate) in certificates.iter().enumerate() {
            roots.add(certificate.clone()).map_err(|e| TlsConfigError::BadCertificate {
                flag,
                path: path.to_owned(),
                index: i + 1,
                reason: e.to_string(),
            })?;
        }
        Ok(Self { path: path.to_owned(), pem, certificates })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file as read (PEM), for clients that parse it themselves.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }
}

/// A client certificate chain and its private key (PEM), for servers that require
/// client authentication (mutual TLS).
#[derive(Clone)]
pub struct ClientIdentity {
    pub certificate_chain_pem: Vec<u8>,
    pub private_key_pem: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(..)")
    }
}

impl ClientIdentity {
    /// Reads and checks a certificate file (`cert_flag`) and its key file (`key_flag`).
    pub fn load(
        cert_flag: &'static str,
        cert_path: &Path,
        key_flag: &'static str,
        key_path: &Path,
    ) -> Result<Self, TlsConfigError> {
        let chain = std::fs::read(cert_path).map_err(|source| TlsConfigError::Unreadable {
            flag: cert_flag,
            path: cert_path.to_owned(),
            source,
        })?;
        let certificates =
            CertificateDer::pem_slice_iter(&chain).collect::<Result<Vec<_>, _>>().map_err(|e| {
                TlsConfigError::NotPem { flag: cert_flag, path: cert_path.to_owned(), reason: e.to_string() }
            })?;
        if certificates.is_empty() {
            return Err(TlsConfigError::NoCertificate { flag: cert_flag, path: cert_path.to_owned() });
        }
        let key = zeroize::Zeroizing::new(std::fs::read(key_path).map_err(|source| {
            TlsConfigError::Unreadable { flag: key_flag, path: key_path.to_owned(), source }
        })?);
        PrivateKeyDer::from_pem_slice(&key)
            .map_err(|_| TlsConfigError::NoPrivateKey { flag: key_flag, path: key_path.to_owned() })?;
        Ok(Self { certificate_chain_pem: chain, private_key_pem: key })
    }
}

/// An HTTP client builder whose TLS is rustls with the built-in roots plus `extra`.
pub fn http_client_builder(extra: Option<&CaBundle>) -> Result<reqwest::ClientBuilder, TlsConfigError> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(true);
    for certificate in extra.map(CaBundle::certificates).unwrap_or_default() {
        let certificate = reqwest::Certificate::from_der(certificate).map_err(|e| {
            TlsConfigError::Invalid(format!("CA certificate rejected by the HTTP client: {e}"))
        })?;
        builder = builder.add_root_certificate(certificate);
    }
    Ok(builder)
}

/// A plain HTTP client with `timeout` for connection and request, TLS as in
/// [`http_client_builder`].
pub fn http_client(extra: Option<&CaBundle>, timeout: Duration) -> Result<reqwest::Client, TlsConfigError> {
    http_client_builder(extra)?
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| TlsConfigError::Invalid(format!("cannot build the HTTP client: {}", error_chain(&e))))
}

/// An error and its sources as one line, `outer: inner: innermost`, each message
/// once: HTTP and TLS errors keep the useful part ("invalid peer certificate:
/// UnknownIssuer") in a source, not in the top-level message.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}

/// The rustls error behind `error`, if a TLS handshake or record failed.
pub fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps (it returns that error's
        // source), and TLS streams wrap the rustls error in an `io::Error`: look inside.
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn a_missing_ca_file_is_an_error_naming_the_flag_and_the_path() {
        let error = CaBundle::load("--redis-ca-file", Path::new("/nonexistent/ca.pem")).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("cannot read --redis-ca-file /nonexistent/ca.pem: "), "{message}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "empty.pem", b"just some text\n");
        let message = CaBundle::load("--webhook-ca-file", &path).unwrap_err().to_string();
        assert!(message.contains("--webhook-ca-file"), "{message}");
        assert!(message.contains("no certificate in it"), "{message}");
    }

    #[test]
    fn a_certificate_that_is_not_der_is_refused_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        // Valid base64 inside the PEM armour, but not a certificate.
        let pem = b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let path = write(dir.path(), "bad.pem", pem);
        let message = CaBundle::load("--ca-file", &path).unwrap_err().to_string();
        assert!(message.contains("certificate 1 cannot be a trust anchor"), "{message}");
    }

    #[test]
    fn a_client_key_file_without_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(
            dir.path(),
            "cert.pem",
            b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        );
        let key = write(dir.path(), "key.pem", b"no key here\n");
        let error = ClientIdentity::load("--redis-cert-file", &cert, "--redis-key-file", &key).unwrap_err();
        assert!(error.to_string().starts_with("--redis-key-file "), "{error}");
        assert!(error.to_string().contains("no private key"), "{error}");
    }

    #[test]
    fn error_chains_name_each_cause_once() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let outer = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, inner);
        assert_eq!(error_chain(&outer), "invalid peer certificate: UnknownIssuer");

        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        let chained = Outer(std::io::Error::other("invalid peer certificate: UnknownIssuer"));
        assert_eq!(error_chain(&chained), "error sending request: invalid peer certificate: UnknownIssuer");
    }

    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(rustls_error(&io), Some(rustls::Error::InvalidCertificate(_))));
        // Wrapped twice, as HTTP clients do.
        let twice = std::io::Error::other(io);
        assert!(matches!(rustls_error(&twice), Some(rustls::Error::InvalidCertificate(_))));
        assert!(rustls_error(&std::io::Error::other("refused")).is_none());
    }
}
