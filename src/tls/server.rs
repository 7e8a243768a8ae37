//! The server side of TLS: the certificate and key from PEM files, a
//! resolver whose certificate can be swapped while connections are open
//! (reloaded on SIGHUP), and the rustls configuration that offers HTTP/2
//! and HTTP/1.1 by ALPN.
//!
//! A reload that fails (a missing file, a key that does not match the
//! certificate) keeps the certificate in use and reports why: a server
//! must not lose its certificate because a renewal job wrote half a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// ALPN protocols offered, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain (leaf first) and its private key from PEM
/// files, and checks that the two belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificates", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        format!(
            "the key in {} does not fit the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// The certificate in use, swapped whole by [`Reloadable::reload`]. A
/// handshake clones the `Arc` under a read lock held for nanoseconds, so a
/// `parking_lot` lock is fine; connections already established keep the
/// session keys they negotiated and never look here again.
#[derive(Debug)]
pub struct Reloadable {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Reloadable {
    /// Loads the certificate and key from `cert` and `key`.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let current = load(cert, key)?;
        Ok(Arc::new(Reloadable {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads both files again; new handshakes use the new certificate. On
    /// an error the old one stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = load(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// The server configuration: TLS 1.2 and 1.3 on ring, no client
/// certificates, the certificate from `resolver`, ALPN `h2` and
/// `http/1.1` (a client that offers neither gets HTTP/1.1).
pub fn config(resolver: Arc<Reloadable>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_reloads_and_keeps_the_old_certificate_on_a_bad_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a.test");
        let r = Reloadable::open(&cert, &key).unwrap();
        let first = r.current.read().cert[0].clone();

        let (cert_b, key_b) = write_pair(dir.path(), "b.test");
        std::fs::copy(&cert_b, &cert).unwrap();
        std::fs::copy(&key_b, &key).unwrap();
        r.reload().unwrap();
        let second = r.current.read().cert[0].clone();
        assert_ne!(first, second);

        // A key that does not match, then a truncated file: refused, the
        // certificate in use stays.
        let (_, key_c) = write_pair(dir.path(), "c.test");
        std::fs::copy(&key_c, &key).unwrap();
        assert!(r.reload().unwrap_err().contains("does not fit"));
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
        assert!(r.reload().is_err());
        assert_eq!(r.current.read().cert[0], second);
    }

    #[test]
    fn missing_or_empty_files_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a.test");
        let none = dir.path().join("none.pem");
        assert!(load(&none, &key).unwrap_err().contains("none.pem"));
        assert!(load(&cert, &none).unwrap_err().contains("none.pem"));
        std::fs::write(&none, "").unwrap();
        assert!(load(&none, &key).unwrap_err().contains("no certificates"));
        let config = config(Reloadable::open(&cert, &key).unwrap()).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
