//! The live TLS material of one process, reloaded from its files when they
//! change: certificates can be rotated without a restart.
//!
//! [`Tls`] holds the certificate, key and CA bundle last loaded. Every TLS
//! handshake (and [`Tls::watch`], every few seconds) compares the files'
//! metadata with what was loaded (a `stat` each: cheap) and reloads when
//! they changed. New connections then use the new material; connections
//! already open keep what they negotiated.
//!
//! A new set is used only once it is whole: the certificate and the CA
//! bundle parse, the key parses and matches the certificate, and the
//! certificate is valid under the CA bundle. Otherwise the previous set
//! stays in use. Rotation tools write the certificate and the key one after
//! the other, so a first failure is only a warning; the same failure still
//! there [`SETTLE`] later is an ERROR naming the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::TlsFiles;

/// How long a set of files may stay unusable before it is an ERROR (a
/// rotation writing the certificate and the key one after the other).
pub const SETTLE: Duration = Duration::from_secs(2);

/// How often [`Tls::watch`] looks at the files.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The HTTP/2 ALPN id: gRPC needs HTTP/2, and both sides insist on it.
pub const ALPN_H2: &[u8] = b"h2";

/// When one certificate file stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub path: PathBuf,
    /// `ca` (the CA bundle: its earliest notAfter) or `cert` (this
    /// party's own certificate).
    pub role: &'static str,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// What a look at the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Nothing changed (or only the metadata: same contents).
    Unchanged,
    /// A new set is in use.
    Reloaded,
    /// The files changed but are not usable; the previous set stays in
    /// use. The message names the file.
    Rejected(String),
}

/// What one load produced.
struct Material {
    certified: Arc<CertifiedKey>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
    expiry: Vec<Expiry>,
    /// The files' contents: a rewrite with the same bytes is no rotation.
    contents: [Vec<u8>; 3],
}

/// Identity of the three files' current versions: size, mtime and inode
/// (a rename over the file, as tools and Kubernetes do, changes it).
type Stamp = [Option<(u64, SystemTime, u64, u64)>; 3];

fn stamp(files: &TlsFiles) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    [&files.ca, &files.cert, &files.key].map(|p| {
        std::fs::metadata(p).ok().map(|m| {
            (
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.dev(),
                m.ino(),
            )
        })
    })
}

struct Rejected {
    stamp: Stamp,
    error: String,
    since: Instant,
    reported: bool,
}

struct State {
    loaded: Stamp,
    material: Arc<Material>,
    rejected: Option<Rejected>,
}

struct Inner {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
    generation: watch::Sender<u64>,
}

/// One party's certificate, key and CA bundle, reloaded from [`TlsFiles`]
/// when they change. Cheap to clone (shared).
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.inner.files)
            .field("generation", &self.generation())
            .finish()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read the {what} {}", path.display()))
}

fn pem_certs(pem: &[u8], path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: unreadable {what} PEM ({e})", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no {what} in it (empty or not PEM)", path.display());
    }
    Ok(certs)
}

/// notAfter of a DER certificate, Unix seconds.
pub fn not_after(der: &[u8]) -> Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("unparsable certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// RFC 3339 (UTC, seconds) of Unix seconds, for logs.
pub fn rfc3339(unix: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Material> {
    let contents = [
        read(&files.ca, "CA certificate")?,
        read(&files.cert, "certificate")?,
        read(&files.key, "private key")?,
    ];
    let cas = pem_certs(&contents[0], &files.ca, "CA certificate")?;
    let chain = pem_certs(&contents[1], &files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&contents[2])
        .map_err(|e| anyhow!("{}: no usable private key ({e})", files.key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow!("{}: unsupported private key ({e})", files.key.display()))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => anyhow::bail!(
            "the private key {} does not belong to the certificate {} ({e})",
            files.key.display(),
            files.cert.display()
        ),
    }
    let mut roots = RootCertStore::empty();
    let mut ca_expiry = i64::MAX;
    for ca in &cas {
        ca_expiry = ca_expiry
            .min(not_after(ca).with_context(|| format!("{}: CA certificate", files.ca.display()))?);
        roots
            .add(ca.clone())
            .map_err(|e| anyhow!("{}: not a usable CA certificate ({e})", files.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| anyhow!("{}: {e}", files.ca.display()))?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| anyhow!("{}: {e}", files.ca.display()))?;
    // Peers check this certificate against the same CA: one that does not
    // chain to it (or has expired) would only be refused by them.
    client_verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| {
            anyhow!(
                "the certificate {} is not valid under the CA {} ({e})",
                files.cert.display(),
                files.ca.display()
            )
        })?;
    let cert_expiry =
        not_after(&chain[0]).with_context(|| format!("{}: certificate", files.cert.display()))?;
    Ok(Material {
        certified: Arc::new(certified),
        client_verifier,
        server_verifier,
        expiry: vec![
            Expiry {
                path: files.ca.clone(),
                role: "ca",
                not_after: ca_expiry,
            },
            Expiry {
                path: files.cert.clone(),
                role: "cert",
                not_after: cert_expiry,
            },
        ],
        contents,
    })
}

fn log_loaded(m: &Material, what: &str, quiet: bool) {
    let [ca, cert] = [&m.expiry[0], &m.expiry[1]];
    if quiet {
        tracing::debug!(
            cert = %cert.path.display(),
            not_after = %rfc3339(cert.not_after),
            "TLS certificate {what}"
        );
        return;
    }
    info!(
        cert = %cert.path.display(),
        not_after = %rfc3339(cert.not_after),
        ca = %ca.path.display(),
        ca_not_after = %rfc3339(ca.not_after),
        "TLS certificate {what}"
    );
}

impl Tls {
    /// Loads `files` (all three must be usable) with the ring provider,
    /// for a long-running process: what it loaded is logged at INFO.
    pub fn load(files: TlsFiles) -> Result<Tls> {
        Tls::open(files, false)
    }

    /// [`Tls::load`] for a short-lived client (drctl, tests): the same
    /// checks, logged at DEBUG only.
    pub fn load_for_client(files: TlsFiles) -> Result<Tls> {
        Tls::open(files, true)
    }

    fn open(files: TlsFiles, quiet: bool) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = stamp(&files);
        let material = load(&files, &provider).context("TLS")?;
        log_loaded(&material, "loaded", quiet);
        Ok(Tls {
            inner: Arc::new(Inner {
                files,
                provider,
                state: Mutex::new(State {
                    loaded,
                    material: Arc::new(material),
                    rejected: None,
                }),
                generation: watch::channel(0).0,
            }),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        self.inner.provider.clone()
    }

    fn material(&self) -> Arc<Material> {
        self.inner.state.lock().unwrap().material.clone()
    }

    /// How many times a new set was loaded since start.
    pub fn generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }

    /// Changes each time a new set is in use.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// When the CA bundle and the certificate in use expire.
    pub fn expiry(&self) -> Vec<Expiry> {
        self.material().expiry.clone()
    }

    /// Why the files on disk are not in use, if they changed and were
    /// rejected.
    pub fn rejected(&self) -> Option<String> {
        let st = self.inner.state.lock().unwrap();
        st.rejected.as_ref().map(|r| r.error.clone())
    }

    /// Looks at the files and reloads them if they changed.
    pub fn check(&self) -> Check {
        let files = &self.inner.files;
        let now = stamp(files);
        let mut st = self.inner.state.lock().unwrap();
        if now == st.loaded {
            st.rejected = None;
            return Check::Unchanged;
        }
        if let Some(r) = &mut st.rejected {
            if r.stamp == now {
                if !r.reported && r.since.elapsed() >= SETTLE {
                    r.reported = true;
                    error!(error = %r.error, "TLS files changed but are not usable; still using the previous certificate; fix the file named");
                }
                return Check::Rejected(r.error.clone());
            }
        }
        match load(files, &self.inner.provider) {
            Ok(m) => {
                st.loaded = now;
                st.rejected = None;
                if m.contents == st.material.contents {
                    return Check::Unchanged;
                }
                log_loaded(&m, "reloaded: new connections use it", false);
                st.material = Arc::new(m);
                drop(st);
                self.inner.generation.send_modify(|g| *g += 1);
                Check::Reloaded
            }
            Err(e) => {
                let error = format!("{e:#}");
                warn!(error = %error, "TLS files changed but are not usable (yet?); still using the previous certificate; retrying");
                st.rejected = Some(Rejected {
                    stamp: now,
                    error: error.clone(),
                    since: Instant::now(),
                    reported: false,
                });
                Check::Rejected(error)
            }
        }
    }

    /// Checks the files every [`WATCH_EVERY`] until `stop` (handshakes
    /// check too; this also catches a rotation while no connection is
    /// made, and reports files that stay unusable).
    pub fn watch(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
                tls.check();
            }
        })
    }

    /// A rustls server config: this party's current certificate, and a
    /// client certificate from the current CA bundle required.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let mut c = rustls::ServerConfig::builder_with_provider(self.provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(Verifier(self.clone())))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        c.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(c))
    }

    /// A rustls client config: presents this party's current certificate
    /// and accepts servers with a certificate from the current CA bundle
    /// (for the name given when connecting).
    pub(crate) fn rustls_client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut c = rustls::ClientConfig::builder_with_provider(self.provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier(self.clone())))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        c.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(c))
    }
}

/// Presents the current certificate (server and client side).
#[derive(Debug)]
struct Resolver(Tls);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.check();
        Some(self.0.material().certified.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // TLS 1.3 asks for it before the server's certificate is checked.
        self.0.check();
        Some(self.0.material().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies peers against the current CA bundle (server and client side).
#[derive(Debug)]
struct Verifier(Tls);

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle can change under us; clients send their one
        // certificate whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .material()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.material().client_verifier.supported_verify_schemes()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The first callback of a client handshake: look at the files.
        self.0.check();
        self.0.material().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.material().server_verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{generate_dev_certs, reissue_dev_certs};

    fn setup(days: i64) -> (tempfile::TempDir, TlsFiles) {
        let dir = tempfile::tempdir().unwrap();
        generate_dev_certs(
            dir.path(),
            &["agent.dc-a".into(), "agent.dc-b".into()],
            days,
        )
        .unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("agent.dc-a.pem"),
            key: dir.path().join("agent.dc-a.key"),
        };
        (dir, files)
    }

    fn cert_expiry(tls: &Tls) -> i64 {
        tls.expiry()
            .iter()
            .find(|e| e.role == "cert")
            .unwrap()
            .not_after
    }

    #[test]
    fn a_rotated_certificate_is_picked_up_and_its_expiry_reported() {
        let (dir, files) = setup(30);
        let tls = Tls::load(files.clone()).unwrap();
        let before = cert_expiry(&tls);
        let ca_before = tls
            .expiry()
            .iter()
            .find(|e| e.role == "ca")
            .unwrap()
            .not_after;
        assert!((before - crate::now_ms() / 1000 - 30 * 86_400).abs() < 3 * 86_400);
        let rotated = tls.subscribe();
        assert_eq!(tls.check(), Check::Unchanged);

        reissue_dev_certs(dir.path(), &["agent.dc-a".into()], 90).unwrap();
        assert_eq!(tls.check(), Check::Reloaded);
        assert!(rotated.has_changed().unwrap());
        assert_eq!(tls.generation(), 1);
        let after = cert_expiry(&tls);
        assert!(after - before > 50 * 86_400, "{before} -> {after}");
        let ca = tls.expiry().into_iter().find(|e| e.role == "ca").unwrap();
        assert_eq!(ca.not_after, ca_before, "same CA");
        assert_eq!(ca.path, files.ca);
        assert_eq!(tls.check(), Check::Unchanged);

        // Rewritten with the same bytes: no rotation.
        let pem = std::fs::read(&files.cert).unwrap();
        std::fs::write(&files.cert, pem).unwrap();
        assert_eq!(tls.check(), Check::Unchanged);
        assert_eq!(tls.generation(), 1);
    }

    #[test]
    fn a_broken_file_keeps_the_previous_certificate_and_names_the_file() {
        let (dir, files) = setup(30);
        let tls = Tls::load(files.clone()).unwrap();
        let good = cert_expiry(&tls);
        let pem = std::fs::read_to_string(&files.cert).unwrap();
        let rejected = |tls: &Tls| match tls.check() {
            Check::Rejected(e) => e,
            other => panic!("expected a rejection, got {other:?}"),
        };

        // Half written.
        std::fs::write(&files.cert, &pem[..pem.len() / 2]).unwrap();
        let e = rejected(&tls);
        assert!(e.contains(&files.cert.display().to_string()), "{e}");
        assert_eq!(tls.rejected().as_deref(), Some(e.as_str()));
        assert_eq!(cert_expiry(&tls), good, "the previous one stays in use");
        assert_eq!(tls.generation(), 0);
        // Asked again: the same verdict, not another load.
        assert_eq!(rejected(&tls), e);

        // A whole certificate whose key is not the one in the key file.
        std::fs::copy(dir.path().join("agent.dc-b.pem"), &files.cert).unwrap();
        let e = rejected(&tls);
        assert!(
            e.contains(&files.key.display().to_string())
                && e.contains(&files.cert.display().to_string())
                && e.contains("does not belong"),
            "{e}"
        );

        // A matching pair from another CA.
        let other = tempfile::tempdir().unwrap();
        generate_dev_certs(other.path(), &["agent.dc-a".into()], 30).unwrap();
        std::fs::copy(other.path().join("agent.dc-a.key"), &files.key).unwrap();
        std::fs::copy(other.path().join("agent.dc-a.pem"), &files.cert).unwrap();
        let e = rejected(&tls);
        assert!(e.contains("not valid under the CA"), "{e}");

        // An empty CA bundle.
        std::fs::write(&files.ca, "").unwrap();
        let e = rejected(&tls);
        assert!(e.contains(&files.ca.display().to_string()), "{e}");
        assert_eq!(tls.generation(), 0);
        assert_eq!(cert_expiry(&tls), good);

        // Fixed: the new set is used.
        std::fs::copy(other.path().join("ca.pem"), &files.ca).unwrap();
        assert_eq!(tls.check(), Check::Reloaded);
        assert_eq!(tls.rejected(), None);
        assert_eq!(tls.generation(), 1);
    }

    #[test]
    fn loading_refuses_unusable_files_naming_them() {
        let (_dir, files) = setup(30);
        let missing = TlsFiles {
            key: files.key.with_extension("nope"),
            ..files.clone()
        };
        let e = format!("{:#}", Tls::load(missing.clone()).unwrap_err());
        assert!(e.contains(&missing.key.display().to_string()), "{e}");
    }

    /// The side of a handshake: what certificate the peer presented.
    async fn handshake(
        server: &Tls,
        client: &Tls,
    ) -> (
        Vec<u8>,
        Vec<u8>,
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.unwrap()
        });
        let c = client.client_config("agent.dc-a").unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let cs = tokio_rustls::TlsConnector::from(c.config.clone())
            .connect(c.server_name.clone(), tcp)
            .await
            .unwrap();
        let ss = accept.await.unwrap();
        let seen_by_client = cs.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let seen_by_server = ss.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(cs.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        (seen_by_client, seen_by_server, ss, cs)
    }

    fn der(path: &Path) -> Vec<u8> {
        CertificateDer::from_pem_file(path).unwrap().to_vec()
    }

    #[tokio::test]
    async fn new_connections_use_rotated_certificates_and_open_ones_keep_working() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        crate::tls::install_crypto_provider();
        let (dir, server_files) = setup(30);
        let client_files = TlsFiles {
            cert: dir.path().join("agent.dc-b.pem"),
            key: dir.path().join("agent.dc-b.key"),
            ..server_files.clone()
        };
        let server = Tls::load(server_files.clone()).unwrap();
        let client = Tls::load(client_files.clone()).unwrap();
        let (s1, c1, mut open_s, mut open_c) = handshake(&server, &client).await;
        assert_eq!(s1, der(&server_files.cert));
        assert_eq!(c1, der(&client_files.cert));

        reissue_dev_certs(dir.path(), &["agent.dc-a".into(), "agent.dc-b".into()], 60).unwrap();
        // No explicit check: the handshake itself looks at the files.
        let (s2, c2, _, _) = handshake(&server, &client).await;
        assert_eq!(s2, der(&server_files.cert), "the server's new certificate");
        assert_eq!(c2, der(&client_files.cert), "the client's new certificate");
        assert_ne!(s1, s2);
        assert_ne!(c1, c2);
        assert_eq!((server.generation(), client.generation()), (1, 1));

        // The connection opened before the rotation still carries data.
        open_c.write_all(b"ping").await.unwrap();
        open_c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        open_s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
}
