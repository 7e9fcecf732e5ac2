//! Mutual TLS for e2e tests: a throwaway PKI generated at test time
//! ([`TestPki`]) and the client side of a TLS connection ([`TlsClient`],
//! used by [`crate::Request::send_tls`]).
//!
//! Nothing is checked in: every [`TestPki`] makes fresh ECDSA P-256 keys
//! and certificates (with `rcgen`) and writes them as PEM files into a temp
//! dir it owns, for Envoy to read ([`crate::EnvoyConfig::downstream_tls`]).
//! Keep the [`TestPki`] alive as long as the Envoy that uses it.
//!
//! ```no_run
//! use ctxgate_e2e::*;
//!
//! let pki = TestPki::new();
//! let ingest = pki.client("ingest", Some("spiffe://cluster.local/ns/ctx/sa/ingest"), "ingest");
//! let envoy = Envoy::start(
//!     &EnvoyConfig::new()
//!         .downstream_tls(&pki, true)
//!         .route(Route::prefix("/").direct(200, "ok")),
//! );
//! let resp = Request::get("/").send_tls(envoy.listener_addr(), &pki.tls_client().cert(&ingest));
//! assert_eq!(resp.status, 200);
//! ```

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tempfile::TempDir;

/// The organization (`O=`) in every certificate's subject, so that a client
/// certificate's subject is `CN=<cn>,O=ctxgate e2e` in RFC 2253 form (what
/// Envoy's `connection.subject_peer_certificate` reports).
pub const ORGANIZATION: &str = "ctxgate e2e";

type Ca = CertifiedIssuer<'static, KeyPair>;

/// A test CA that Envoy trusts, a server certificate it serves, and a
/// second CA that nobody trusts; both CAs issue client certificates on
/// demand. All of it lives in a temp dir removed on drop.
pub struct TestPki {
    dir: TempDir,
    ca: Ca,
    untrusted_ca: Ca,
    ca_cert: PathBuf,
    server: CertFiles,
}

/// A certificate and its private key, as PEM text and as files in the
/// [`TestPki`]'s temp dir.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// Generates both CAs and the server certificate (SANs `127.0.0.1` and
    /// `localhost`, CN `localhost`) and writes `ca.pem`, `untrusted-ca.pem`,
    /// `server.pem` and `server-key.pem`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ctxgate-pki-")
            .tempdir()
            .expect("create temp dir for the test PKI");
        let ca = new_ca("ctxgate e2e test CA");
        let untrusted_ca = new_ca("ctxgate e2e untrusted CA");
        let ca_cert = dir.path().join("ca.pem");
        std::fs::write(&ca_cert, ca.pem()).expect("write ca.pem");
        std::fs::write(dir.path().join("untrusted-ca.pem"), untrusted_ca.pem())
            .expect("write untrusted-ca.pem");

        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("valid server SANs");
        params.distinguished_name = subject("localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = issue(dir.path(), "server", params, &ca);
        TestPki {
            dir,
            ca,
            untrusted_ca,
            ca_cert,
            server,
        }
    }

    /// A client certificate issued by the trusted CA, written as
    /// `<name>.pem` and `<name>-key.pem`: subject `CN=<cn>,O=ctxgate e2e`
    /// and, if given, one URI SAN (e.g.
    /// `spiffe://cluster.local/ns/ctx/sa/ingest`).
    pub fn client(&self, name: &str, uri_san: Option<&str>, cn: &str) -> CertFiles {
        issue(self.dir.path(), name, client_params(uri_san, cn), &self.ca)
    }

    /// Like [`TestPki::client`], but issued by the CA that Envoy does not
    /// trust: a handshake with it must fail.
    pub fn untrusted_client(&self, name: &str, uri_san: Option<&str>, cn: &str) -> CertFiles {
        issue(
            self.dir.path(),
            name,
            client_params(uri_san, cn),
            &self.untrusted_ca,
        )
    }

    /// The trusted CA certificate (PEM file), Envoy's `trusted_ca`.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The trusted CA certificate as PEM text.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The untrusted CA certificate as PEM text.
    pub fn untrusted_ca_pem(&self) -> String {
        self.untrusted_ca.pem()
    }

    /// The server certificate and key Envoy serves.
    pub fn server(&self) -> &CertFiles {
        &self.server
    }

    /// The temp dir holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A [`TlsClient`] trusting this PKI's CA, without a client certificate.
    pub fn tls_client(&self) -> TlsClient {
        TlsClient::new(&self.ca_pem())
    }
}

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    dn
}

fn new_ca(cn: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate a CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign the CA certificate")
}

fn client_params(uri_san: Option<&str>, cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(cn);
    if let Some(uri) = uri_san {
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().unwrap_or_else(|e| {
                panic!("URI SAN {uri:?} is not IA5: {e}")
            }))];
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Signs `params` with a fresh key and writes `<name>.pem`/`<name>-key.pem`.
fn issue(dir: &Path, name: &str, params: CertificateParams, ca: &Ca) -> CertFiles {
    let key = KeyPair::generate().expect("generate a key");
    let cert = params
        .signed_by(&key, ca)
        .unwrap_or_else(|e| panic!("issue certificate {name}: {e}"));
    let files = CertFiles {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_path: dir.join(format!("{name}.pem")),
        key_path: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.cert_path, &files.cert_pem)
        .unwrap_or_else(|e| panic!("write {}: {e}", files.cert_path.display()));
    std::fs::write(&files.key_path, &files.key_pem)
        .unwrap_or_else(|e| panic!("write {}: {e}", files.key_path.display()));
    files
}

/// The client side of a TLS connection: the CA to trust, an optional
/// client certificate, and the name the server certificate must match
/// (`localhost` unless set). Uses rustls with the ring provider, TLS 1.2
/// and 1.3.
#[derive(Clone, Debug)]
pub struct TlsClient {
    ca_pem: String,
    client_cert: Option<(String, String)>,
    server_name: String,
}

impl TlsClient {
    /// Trusts the CA certificate(s) in `ca_pem`; no client certificate.
    pub fn new(ca_pem: &str) -> Self {
        TlsClient {
            ca_pem: ca_pem.to_owned(),
            client_cert: None,
            server_name: "localhost".to_owned(),
        }
    }

    /// Presents `cert` (certificate and key) when the server asks for one.
    pub fn cert(self, cert: &CertFiles) -> Self {
        self.cert_pem(&cert.cert_pem, &cert.key_pem)
    }

    /// Presents this PEM certificate chain and private key.
    pub fn cert_pem(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.client_cert = Some((cert_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// The name (DNS name or IP address) to verify the server certificate
    /// against and to send as SNI (none for an IP address).
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = name.to_owned();
        self
    }

    fn config(&self) -> io::Result<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.map_err(other)?).map_err(other)?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(other)?
                .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(other)?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(other)?;
                builder.with_client_auth_cert(chain, key).map_err(other)
            }
        }
    }

    /// Opens a TCP connection with `timeout` on connect, reads and writes,
    /// and wraps it in a TLS session. The handshake runs on the first read
    /// or write, so its failures surface there as I/O errors.
    pub(crate) fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let name = ServerName::try_from(self.server_name.clone()).map_err(other)?;
        let conn = ClientConnection::new(Arc::new(self.config()?), name).map_err(other)?;
        Ok(StreamOwned::new(
            conn,
            crate::http::tcp_connect(addr, timeout)?,
        ))
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}
