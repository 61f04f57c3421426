//! TLS to PostgreSQL the way libpq does it: `sslmode` and `sslrootcert` in the URL (or
//! `PGSSLMODE` / `PGSSLROOTCERT`), on rustls (`tokio-postgres-rustls`).
//!
//! | `sslmode`            | TLS                        | certificate checked            |
//! |----------------------|----------------------------|--------------------------------|
//! | `disable`            | never                      | -                              |
//! | `allow`, `prefer` (default) | when the server offers it | no                      |
//! | `require`            | always                     | no (chain only with `sslrootcert`) |
//! | `verify-ca`          | always                     | chain                          |
//! | `verify-full`        | always                     | chain and host name            |
//!
//! Roots for a checked chain: the PEM file `sslrootcert` names, or the system's roots when
//! it is absent or `system`. Client certificates (`sslcert`, `sslkey`) are not supported
//! and are refused by name rather than ignored. Main items: [`TlsMode`], [`split`],
//! [`connector`].

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::QueueError;

/// How a connection uses TLS (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server offers it, without checking its certificate (`allow`, `prefer`).
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, with a certificate that chains to a trusted root.
    VerifyCa,
    /// TLS, with a certificate that chains to a trusted root and names the host.
    VerifyFull,
}

/// The TLS settings of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: TlsMode,
    /// `sslrootcert`: a PEM file of roots, or `system`.
    pub root_cert: Option<String>,
}

/// Takes the TLS parameters out of a URL's query (tokio-postgres knows only some modes),
/// and falls back on `PGSSLMODE` and `PGSSLROOTCERT`. Returns the URL without them.
pub fn split(url: &str) -> Result<(String, TlsSettings), QueueError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root_cert = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root_cert = Some(value),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(QueueError(format!(
                    "`{key}`: client certificates are not supported; use a password (in the URL or PGPASSWORD)"
                )));
            }
            _ => kept.push(pair),
        }
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mode = match mode.or_else(|| var("PGSSLMODE")).as_deref() {
        None | Some("prefer" | "allow") => TlsMode::Prefer,
        Some("disable") => TlsMode::Disable,
        Some("require") => TlsMode::Require,
        Some("verify-ca") => TlsMode::VerifyCa,
        Some("verify-full") => TlsMode::VerifyFull,
        Some(other) => {
            return Err(QueueError(format!(
                "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    let root_cert = root_cert.or_else(|| var("PGSSLROOTCERT"));
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, TlsSettings { mode, root_cert }))
}

/// What tokio-postgres is told: whether to ask for TLS, and whether to insist.
pub fn ssl_mode(mode: TlsMode) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode;
    match mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    }
}

/// The connector for `settings`: it checks the server's certificate as the mode says.
pub fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, QueueError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| QueueError(format!("TLS: {e}")))?;
    // `require` with a root file checks the chain, as libpq does.
    let mode = match (settings.mode, &settings.root_cert) {
        (TlsMode::Require, Some(_)) => TlsMode::VerifyCa,
        (mode, _) => mode,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => Arc::new(Unchecked { provider }),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = Arc::new(roots(settings.root_cert.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| QueueError(format!("TLS roots: {e}")))?;
            if mode == TlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The trusted roots: a PEM file, or the system's.
fn roots(root_cert: Option<&str>) -> Result<rustls::RootCertStore, QueueError> {
    use rustls::pki_types::pem::PemObject as _;
    let mut store = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) if path != "system" => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| QueueError(format!("sslrootcert `{path}`: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| QueueError(format!("sslrootcert `{path}`: {e}")))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(QueueError(format!(
                    "sslrootcert `{path}` holds no certificate"
                )));
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(QueueError(
                    "no system root certificates found; name a PEM file with sslrootcert".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// Encrypts without checking who answers (`prefer`, `require`): what libpq does in those
/// modes. The handshake's signatures are still checked against the certificate presented.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the name in the certificate is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_unknown_modes_are_refused() -> Result<(), QueueError> {
        let (url, settings) = split(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )?;
        assert_eq!(url, "postgres://u@h/db?application_name=x");
        assert_eq!(settings.mode, TlsMode::VerifyFull);
        assert_eq!(settings.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let (url, _) = split("postgres://u@h/db?sslmode=require")?;
        assert_eq!(url, "postgres://u@h/db");
        let refused = |url: &str| split(url).err().map(|e| e.0).unwrap_or_default();
        assert!(refused("postgres://u@h/db?sslmode=always").contains("sslmode `always`"));
        assert!(refused("postgres://u@h/db?sslcert=c.pem").contains("client certificates"));
        Ok(())
    }
}
