//! TLS to PostgreSQL, with rustls. `sslmode` in `store.url` decides whether a connection is
//! encrypted (tokio-postgres applies it: `disable` never, `prefer` when the server offers it,
//! `require` or no connection); the connector built here decides what the server must prove.
//! With `store.tls_ca`, its certificate must chain to that CA and name the URL's host. Without
//! it, any certificate is taken, as libpq's `prefer` and `require` do: the connection is
//! encrypted, but not against someone who can stand in for the server.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::Target;
use crate::config::PostgresConfig;
use crate::store::StoreError;

/// What every connection of the store, pooled or listening, negotiates TLS with.
pub(super) fn connector(postgres: &PostgresConfig) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| {
            StoreError::Unsupported(format!(
                "TLS to {} cannot be set up: {error}",
                Target::of(&postgres.url)
            ))
        })?;
    let config = match &postgres.tls_ca {
        Some(ca) => builder.with_root_certificates(Arc::clone(&ca.roots)),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    Ok(MakeRustlsConnect::new(config.with_no_client_auth()))
}

/// What the operator can do about a certificate that was refused, when that is why a
/// connection failed. tokio-rustls hands rustls's error over inside an `io::Error`.
pub(super) fn certificate_hint(error: &tokio_postgres::Error) -> Option<&'static str> {
    let io = std::error::Error::source(error)?.downcast_ref::<std::io::Error>()?;
    let rustls::Error::InvalidCertificate(problem) = io.get_ref()?.downcast_ref()? else {
        return None;
    };
    Some(match problem {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the host in store.url must be a name that the server's certificate holds"
        }
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "store.tls_ca must hold the CA that signed the server's certificate"
        }
        _ => "the server's certificate was refused; check it and store.tls_ca",
    })
}

/// Takes whatever certificate the server shows, but still checks that the server holds its
/// key: the handshake's signatures are verified as usual.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
