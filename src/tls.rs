//! TLS plumbing (rustls 0.23 with the ring provider): PEM loading, server and client configs,
//! certificate pinning, and self-signed certificates for the demo and the simulator.
//!
//! Every config is built with an explicit provider, so a dependency that enables another
//! backend can never make rustls panic at run time over an ambiguous default.
//!
//! Pinning: many SMSCs present a self-signed certificate, often one made with `openssl req
//! -x509`, which marks it as a CA; WebPKI refuses a CA certificate as a server's own
//! (`CaUsedAsEndEntity`), so `ca_file` cannot trust it. A pin (`pin_sha256`, the base64
//! SHA-256 of the certificate's SubjectPublicKeyInfo, as in RFC 7469) trusts exactly that key:
//! alone, the presented key must match a pin (names, dates and issuers are not checked: the
//! key is the identity); with `ca_file`, the chain must verify as well. The handshake's
//! signature is always verified against the presented key.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

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
    #[error(transparent)]
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

/// A certificate/key pair rustls refused, said with the files it concerns.
fn pair_error(e: rustls::Error, cert: &Path, key: &Path) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Pem {
            path: key.display().to_string(),
            reason: format!("this private key does not belong to the certificate in {}", cert.display()),
        },
        other => other.into(),
    }
}

/// A server config: TLS 1.2 and 1.3 only, ALPN as given.
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| pair_error(e, cert, key))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server config that also asks for (and verifies) client certificates against `client_ca`.
pub fn server_config_mtls(cert: &Path, key: &Path, client_ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_path = key;
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
        .with_single_cert(certs, key)
        .map_err(|e| pair_error(e, cert, key_path))?;
    Ok(Arc::new(config))
}

/// The pin of a certificate: base64 SHA-256 of its SubjectPublicKeyInfo (RFC 7469 form, as
/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256
/// -binary | base64` prints it).
pub fn spki_pin(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Generate(format!("not an X.509 certificate: {e}")))?;
    let spki = parsed.tbs_certificate.subject_pki.raw;
    Ok(B64.encode(::ring::digest::digest(&::ring::digest::SHA256, spki).as_ref()))
}

/// Reads a pin as written in the config: base64 of 32 bytes, optionally `sha256/`-prefixed.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let b64 = pin.trim().strip_prefix("sha256/").unwrap_or(pin.trim());
    B64.decode(b64).ok().and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()).ok_or_else(|| {
        format!("'{pin}' is not a base64 SHA-256 (44 characters, e.g. from `smsgate check-config --pin FILE`)")
    })
}

/// Verifies a server by chain (WebPKI against the roots), by pinned key, or both; a
/// certificate a chain cannot vouch for gets an error that says how to pin it.
#[derive(Debug)]
struct CarrierVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl CarrierVerifier {
    fn pin_of(end_entity: &CertificateDer<'_>) -> Option<([u8; 32], String)> {
        let text = spki_pin(end_entity).ok()?;
        Some((parse_pin(&text).ok()?, text))
    }
}

impl ServerCertVerifier for CarrierVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain
            && let Err(e) = chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            let self_signed = matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                    | rustls::Error::InvalidCertificate(CertificateError::Other(_))
            );
            return Err(match (self_signed, Self::pin_of(end_entity)) {
                (true, Some((_, pin))) => rustls::Error::General(format!(
                    "{e}: the server's certificate is not signed by a CA in ca_file (a self-signed certificate \
                     made with `openssl req -x509` is marked as a CA and cannot be trusted as a server's own). For \
                     a carrier whose own certificate this is (confirm the pin with them), trust exactly its key \
                     with pin_sha256 = [\"{pin}\"] and no ca_file"
                )),
                _ => e,
            });
        }
        if self.pins.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        match Self::pin_of(end_entity) {
            Some((hash, _)) if self.pins.contains(&hash) => Ok(ServerCertVerified::assertion()),
            Some((_, pin)) => Err(rustls::Error::General(format!(
                "the SMSC presented a key whose pin is \"{pin}\", which is not in pin_sha256"
            ))),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::BadEncoding)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that verifies the server against `ca_file` (or the Mozilla roots when
/// neither a CA file nor pins are given) and/or the pinned keys `pins` (see the module docs),
/// optionally presenting a client certificate. There is no switch to skip verification: a
/// carrier whose certificate does not verify is a configuration error.
pub fn client_config(
    ca_file: Option<&Path>,
    pins: &[String],
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let pins = pins.iter().map(|p| parse_pin(p)).collect::<Result<Vec<_>, _>>().map_err(TlsError::Generate)?;
    let roots = match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(path)? {
                roots.add(c)?;
            }
            Some(roots)
        }
        None if pins.is_empty() => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Some(roots)
        }
        None => None,
    };
    let chain = roots
        .map(|r| WebPkiServerVerifier::builder_with_provider(Arc::new(r), provider()).build())
        .transpose()
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let verifier = Arc::new(CarrierVerifier { chain, pins, provider: provider() });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
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
        assert!(client_config(Some(&c1), &[], None).is_ok());
        assert!(server_config(&c1, &k2, &[]).is_err(), "key of another certificate");
        let missing = dir.path().join("missing.pem");
        assert!(load_certs(&missing).unwrap_err().to_string().contains("missing.pem"));
        std::fs::write(&missing, "not pem").unwrap();
        assert!(load_certs(&missing).is_err());
    }
}
