//! TLS for client listeners (`stomp+ssl://HOST:PORT`): the `[tls]` section's PEM files loaded into
//! a rustls server configuration (ring provider).
//!
//! Files are read when the configuration is validated, at start-up, so a missing or unparsable
//! file stops `mq-broker` with an error naming the key and the file instead of failing the first
//! client (or, in a fabric, the first election). The handshake itself runs in each connection's
//! task, bounded by the CONNECT timeout (see `connection::serve`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientAuth, ConfigError, TlsSettings};

/// Accepts TLS connections on a `stomp+ssl://` listener.
pub use tokio_rustls::TlsAcceptor;

fn invalid(key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason,
    }
}

/// Reads every certificate of a PEM file; `key` names the setting in errors.
fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let data = std::fs::read(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{}: unparsable PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no CERTIFICATE in this PEM file", path.display()),
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let data = std::fs::read(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => invalid(
            key,
            format!("{}: no PRIVATE KEY in this PEM file", path.display()),
        ),
        e => invalid(key, format!("{}: unparsable PEM: {e}", path.display())),
    })
}

/// Builds the server configuration of the `[tls]` section: certificate chain and key, and, with
/// `client_ca`, client certificates verified against it (`client_auth`). Errors name the key and
/// the file at fault.
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, ConfigError> {
    let cert_path = s.cert.as_deref().ok_or_else(|| {
        invalid(
            "tls.cert",
            "missing: a stomp+ssl:// listener needs a certificate chain (PEM)".into(),
        )
    })?;
    let key_path = s.key.as_deref().ok_or_else(|| {
        invalid(
            "tls.key",
            "missing: a stomp+ssl:// listener needs a private key (PEM)".into(),
        )
    })?;
    let certs = read_certs("tls.cert", cert_path)?;
    let key = read_key("tls.key", key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e.to_string()))?;
    let auth = s.effective_client_auth();
    let builder = match (&s.client_ca, auth) {
        (_, ClientAuth::None) => builder.with_no_client_auth(),
        (None, _) => {
            return Err(invalid(
                "tls.client_ca",
                format!(
                    "missing: client_auth = \"{}\" needs the CA that signs client certificates",
                    auth.as_str()
                ),
            ))
        }
        (Some(ca), auth) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("tls.client_ca", ca)? {
                roots.add(c).map_err(|e| {
                    invalid(
                        "tls.client_ca",
                        format!("{}: unusable CA certificate: {e}", ca.display()),
                    )
                })?;
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if auth == ClientAuth::Optional {
                v = v.allow_unauthenticated();
            }
            let verifier = v.build().map_err(|e| {
                invalid(
                    "tls.client_ca",
                    format!("{}: cannot verify clients with it: {e}", ca.display()),
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            "tls.key",
            format!(
                "{} does not go with the certificate in {}: {e}",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;
    Ok(Arc::new(config))
}
