//! Mutual TLS: certificates, server and client configs, and who is calling.
//!
//! Every connection between agents, witnesses and operators is mutual TLS
//! with certificates from the deployment's CA. A certificate's identity is
//! its DNS subject-alternative name (`agent.dc-a`, `witness-1`, `operator`);
//! servers check it per call with [`authorize`].
//!
//! The files are reloaded when they change ([`Tls`], in `reload`): servers
//! ([`serve`]) and clients ([`crate::channel`]) use new certificates for
//! new connections without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

mod reload;
mod serve;

pub use reload::{not_after, rfc3339, Check, Expiry, Tls, ALPN_H2, SETTLE, WATCH_EVERY};
pub use serve::serve;

/// Installs ring as the process-wide rustls provider (idempotent). Call
/// first thing in every binary and test.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// PEM files of one party.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Loads the three files (reloaded when they change, see [`Tls`]).
    pub fn load(&self) -> Result<Tls> {
        Tls::load(self.clone())
    }

    /// [`TlsFiles::load`] for a short-lived client (drctl): logged at
    /// DEBUG only.
    pub fn load_for_client(&self) -> Result<Tls> {
        Tls::load_for_client(self.clone())
    }

    /// Loads the files for a short-lived client that expects the server to
    /// present `server_identity` (long-running processes keep one [`Tls`]
    /// and call [`Tls::client_config`]).
    pub fn client_config(&self, server_identity: &str) -> Result<ClientTls> {
        self.load_for_client()?.client_config(server_identity)
    }
}

/// What a client needs to dial one server: the live certificates and the
/// name the server's certificate must carry.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub(crate) tls: Tls,
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: rustls_pki_types::ServerName<'static>,
}

impl ClientTls {
    pub fn tls(&self) -> &Tls {
        &self.tls
    }
}

impl Tls {
    /// A client config that expects the server to present
    /// `server_identity`; it presents (and trusts) whatever the files hold
    /// at each new connection.
    pub fn client_config(&self, server_identity: &str) -> Result<ClientTls> {
        let server_name = rustls_pki_types::ServerName::try_from(server_identity.to_string())
            .with_context(|| format!("'{server_identity}' is not a valid server identity"))?;
        Ok(ClientTls {
            tls: self.clone(),
            config: self.rustls_client_config()?,
            server_name,
        })
    }
}

/// Checks that the caller's certificate carries one of `allowed` names and
/// returns the matching name. No certificate → `Unauthenticated`; a valid
/// certificate of someone else → `PermissionDenied`.
pub fn authorize<T>(req: &tonic::Request<T>, allowed: &[String]) -> Result<String, tonic::Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    let der = rustls_pki_types::CertificateDer::from(leaf.as_ref().to_vec());
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| {
        tonic::Status::unauthenticated(format!("unreadable client certificate: {e}"))
    })?;
    for name in allowed {
        let Ok(server_name) = rustls_pki_types::ServerName::try_from(name.as_str()) else {
            continue;
        };
        if cert.verify_is_valid_for_subject_name(&server_name).is_ok() {
            return Ok(name.clone());
        }
    }
    Err(tonic::Status::permission_denied(format!(
        "certificate is not one of {allowed:?}"
    )))
}

/// What `drctl certs init` writes.
#[derive(Debug)]
pub struct GeneratedCerts {
    pub dir: PathBuf,
    pub names: Vec<String>,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let ymd = |secs: i64| {
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = secs.div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = ymd(now - 86_400);
    params.not_after = ymd(now + days * 86_400);
}

/// Creates a development CA and one certificate per name under `dir`:
/// `ca.pem`, `ca.key`, `<name>.pem`, `<name>.key`. Every leaf is valid as
/// both TLS server and client. Refuses to overwrite an existing CA.
pub fn generate_dev_certs(dir: &Path, names: &[String], days: i64) -> Result<GeneratedCerts> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if dir.join("ca.pem").exists() {
        anyhow::bail!(
            "{} already holds a CA (ca.pem); choose another --out or delete it first",
            dir.display()
        );
    }
    let ca_key = KeyPair::generate().context("generate the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "milvus-dr development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, days);
    let ca = ca_params.self_signed(&ca_key).context("self-sign the CA")?;
    write_private(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;

    for name in names {
        let (cert, key) = leaf(name, days, &ca, &ca_key)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert)?;
        write_private(&dir.join(format!("{name}.key")), key.as_bytes())?;
    }
    Ok(GeneratedCerts {
        dir: dir.to_path_buf(),
        names: names.to_vec(),
    })
}

/// A leaf certificate for `name` (TLS server and client) signed by the CA:
/// (certificate PEM, private key PEM).
fn leaf(
    name: &str,
    days: i64,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec![name.to_string()])
        .with_context(|| format!("'{name}' is not a valid DNS name for a certificate"))?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut p, days);
    let cert = p.signed_by(&key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Re-issues the leaf certificates `names` in a directory that
/// [`generate_dev_certs`] wrote, from the same CA (`ca.pem`, `ca.key`),
/// valid for `days` from now, with new keys. Each file is replaced
/// atomically (a rename), the key first, then the certificate: running
/// processes pick the pair up without a restart.
pub fn reissue_dev_certs(dir: &Path, names: &[String], days: i64) -> Result<()> {
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem"))
        .with_context(|| format!("read {}", dir.join("ca.pem").display()))?;
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(dir.join("ca.key"))
            .with_context(|| format!("read {}", dir.join("ca.key").display()))?,
    )
    .context("the CA key")?;
    // The same name and key as the CA: what it signs verifies under ca.pem.
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
        .context("read the CA certificate")?
        .self_signed(&ca_key)
        .context("the CA key does not sign")?;
    for name in names {
        let (cert, key) = leaf(name, days, &ca, &ca_key)?;
        replace(&dir.join(format!("{name}.key")), key.as_bytes(), true)?;
        replace(&dir.join(format!("{name}.pem")), cert.as_bytes(), false)?;
    }
    Ok(())
}

/// Writes `path` through a temporary file and a rename.
fn replace(path: &Path, data: &[u8], private: bool) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = std::fs::remove_file(&tmp);
    if private {
        write_private(&tmp, data)?;
    } else {
        std::fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_and_leaves_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["agent.dc-a".to_string(), "operator".to_string()];
        generate_dev_certs(dir.path(), &names, 30).unwrap();
        for f in [
            "ca.pem",
            "ca.key",
            "agent.dc-a.pem",
            "agent.dc-a.key",
            "operator.pem",
        ] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private keys must not be group/world readable"
        );
        let e = generate_dev_certs(dir.path(), &names, 30).unwrap_err();
        assert!(e.to_string().contains("already holds a CA"));
    }
}
