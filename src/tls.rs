//! TLS plumbing (rustls 0.23 with the ring provider): PEM loading, server and client configs,
//! and self-signed certificates for the demo and the simulator.
//!
//! Every config is built with an explicit provider, so a dependency that enables another
//! backend can never make rustls panic at run time over an ambiguous default.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A TLS setup problem, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// File name.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the material (key does not match the certificate, …).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
    Generate(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Pem { path: path.display().to_string(), reason };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Pem { path: path.display().to_string(), reason: e.to_string() })
}

/// A server config: TLS 1.2 and 1.3 only, ALPN as given.
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server config that also asks for (and verifies) client certificates against `client_ca`.
pub fn server_config_mtls(cert: &Path, key: &Path, client_ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let mut roots = RootCertStore::empty();
    for c in load_certs(client_ca)? {
        roots.add(c)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A client config that verifies the server against `ca_file` (or the Mozilla roots when
/// none is given), optionally presenting a client certificate. There is no switch to skip
/// verification: a carrier whose certificate does not verify is a configuration error.
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in load_certs(path)? {
                roots.add(c)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_webpki_verifier(verifier);
    let config = match client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A self-signed certificate and key, both PEM, for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Writes a self-signed pair to `cert`/`key` (key file mode 0600).
pub fn write_self_signed(names: &[&str], cert: &Path, key: &Path) -> Result<(), TlsError> {
    let (cert_pem, key_pem) = self_signed(names)?;
    let io = |p: &Path, e: std::io::Error| TlsError::Pem { path: p.display().to_string(), reason: e.to_string() };
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::write(cert, cert_pem).map_err(|e| io(cert, e))?;
    crate::fsutil::write_private(key, key_pem.as_bytes()).map_err(|e| io(key, e))?;
    Ok(())
}

/// Writes a private CA (`ca_cert`) and a client certificate it signed (`client_cert`,
/// `client_key`): for carriers (and tests) that use mutual TLS.
pub fn write_client_ca(ca_cert: &Path, client_cert: &Path, client_key: &Path) -> Result<(), TlsError> {
    let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let io = |p: &Path, e: std::io::Error| TlsError::Pem { path: p.display().to_string(), reason: e.to_string() };
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "smsgate test client CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().map_err(fail)?).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec!["smsgate-client".to_string()]).map_err(fail)?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.distinguished_name.push(rcgen::DnType::CommonName, "smsgate");
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.signed_by(&key, &ca).map_err(fail)?;
    std::fs::write(ca_cert, ca.pem()).map_err(|e| io(ca_cert, e))?;
    std::fs::write(client_cert, cert.pem()).map_err(|e| io(client_cert, e))?;
    crate::fsutil::write_private(client_key, key.serialize_pem().as_bytes()).map_err(|e| io(client_key, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_material_loads_and_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        let (c2, k2) = (dir.path().join("b.crt"), dir.path().join("b.key"));
        write_self_signed(&["localhost"], &c1, &k1).unwrap();
        write_self_signed(&["localhost"], &c2, &k2).unwrap();
        assert!(server_config(&c1, &k1, &[b"h2"]).is_ok());
        assert!(client_config(Some(&c1), None).is_ok());
        assert!(server_config(&c1, &k2, &[]).is_err(), "key of another certificate");
        let missing = dir.path().join("missing.pem");
        assert!(load_certs(&missing).unwrap_err().to_string().contains("missing.pem"));
        std::fs::write(&missing, "not pem").unwrap();
        assert!(load_certs(&missing).is_err());
    }
}
