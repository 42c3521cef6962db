//! TLS towards the platform: its CA instead of the system roots when `ca_cert` is set, a
//! client certificate when `client_cert`/`client_key` are set (every public client uses mutual
//! TLS, PLATFORM-NOTES.md §4.1), and the hostname check relaxed only together with `ca_cert`,
//! since platforms reached by IP present certificates that name something else.

use std::path::Path;

use reqwest::{Certificate, ClientBuilder, Identity};

use super::PlatformError;
use crate::config::PlatformConfig;

pub(crate) fn builder(config: &PlatformConfig) -> Result<ClientBuilder, PlatformError> {
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = &config.ca_cert {
        let pem = read("platform.ca_cert", ca)?;
        let certificates = Certificate::from_pem_bundle(&pem)
            .map_err(|error| unusable("platform.ca_cert", ca, error.to_string()))?;
        if certificates.is_empty() {
            return Err(unusable(
                "platform.ca_cert",
                ca,
                "no certificate in it".to_owned(),
            ));
        }
        builder = builder
            .tls_certs_only(certificates)
            .tls_danger_accept_invalid_hostnames(!config.verify_hostname);
    }
    if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
        let mut pem = read("platform.client_cert", cert)?;
        pem.push(b'\n');
        pem.extend(read("platform.client_key", key)?);
        // The parser's message never quotes the key.
        let identity = Identity::from_pem(&pem).map_err(|error| {
            unusable(
                "platform.client_cert",
                cert,
                format!("with client_key: {error}"),
            )
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, PlatformError> {
    std::fs::read(path).map_err(|error| unusable(key, path, error.to_string()))
}

fn unusable(key: &'static str, path: &Path, reason: String) -> PlatformError {
    PlatformError::CertificateFile {
        key,
        path: path.display().to_string(),
        reason,
    }
}
