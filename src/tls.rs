//! TLS set-up: certificates in, rustls configurations out.
//!
//! Both sides use rustls with the *ring* provider passed explicitly (no
//! process-wide default to race over) and accept TLS 1.2 and 1.3. Files are
//! read here so that a missing file is an [`Error::File`] naming the path and
//! a file without the expected PEM is an [`Error::Certificate`] saying so;
//! nothing here panics on user input.
//!
//! [`generate_self_signed`] writes the development certificate that
//! `python -m sockdemo cert DIR` offers: self-signed for `localhost` and
//! `127.0.0.1`, so the same `cert.pem` is both the server's certificate and
//! the client's `cafile`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, Result};

/// The names the development certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::file(path, e))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("{}: invalid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Certificate(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds the server side from a certificate chain and its private key.
///
/// # Errors
///
/// [`Error::File`] if a file cannot be read, [`Error::Certificate`] if it holds
/// no certificate or key, or the key does not belong to the certificate.
pub fn server_config(certfile: &Path, keyfile: &Path) -> Result<Arc<ServerConfig>> {
    let certs = certificates(certfile)?;
    let key = PrivateKeyDer::from_pem_slice(&read(keyfile)?).map_err(|e| {
        Error::Certificate(format!(
            "{}: no usable PEM private key: {e}",
            keyfile.display()
        ))
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Certificate(format!(
                "{} and {} do not make a usable certificate: {e}",
                certfile.display(),
                keyfile.display()
            ))
        })?;
    Ok(Arc::new(config))
}

/// Builds the client side, trusting only the certificates in `cafile`.
///
/// # Errors
///
/// As [`server_config`], for the CA file.
pub fn client_config(cafile: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(cafile)? {
        roots.add(cert).map_err(|e| {
            Error::Certificate(format!(
                "{}: unusable CA certificate: {e}",
                cafile.display()
            ))
        })?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Parses the name the client expects the server's certificate to carry.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for something that is neither a DNS name nor an
/// IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| Error::invalid(format!("invalid server_hostname {name:?}")))
}

/// Writes `dir/cert.pem` and `dir/key.pem`: a self-signed certificate for
/// [`SELF_SIGNED_NAMES`] and its key. Creates `dir` if needed. Returns the
/// two paths.
///
/// # Errors
///
/// [`Error::File`] if the directory or files cannot be written.
pub fn generate_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Certificate(format!("cannot generate a certificate: {e}")))?;
    fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    fs::write(&cert_path, generated.cert.pem()).map_err(|e| Error::file(&cert_path, e))?;
    write_private(&key_path, generated.signing_key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// Writes a private key readable by its owner only (where the OS has modes).
fn write_private(path: &Path, contents: String) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| Error::file(path, e))?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(|e| Error::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_loads_on_both_sides() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (cert, key) = generate_self_signed(dir.path())?;
        server_config(&cert, &key)?;
        client_config(&cert)?;
        Ok(())
    }

    #[test]
    fn missing_and_empty_files_are_clear_errors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("nope.pem");
        let err = client_config(&missing).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err}");
        assert!(err.to_string().contains("nope.pem"));

        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "not a certificate\n")?;
        let err = client_config(&empty).unwrap_err();
        assert!(matches!(err, Error::Certificate(_)), "{err}");

        let (cert, _) = generate_self_signed(dir.path())?;
        let err = server_config(&cert, &cert).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        Ok(())
    }
}
