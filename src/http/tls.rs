//! HTTPS with rustls: the certificate and key are read from PEM files and swapped in when the
//! files change, without a restart, because operators rotate certificates on a running
//! receiver. The platform uploads only the CA chain and keeps pushing (PLATFORM-NOTES.md §1.4),
//! so a rotation must never interrupt it: a new pair that fails to load or does not match
//! leaves the previous one in service and is logged.
//!
//! The files are polled (size and modification time, once a second) rather than watched:
//! certificate tools replace files through symlinks and renames, which file watchers report
//! unreliably, and two `stat` calls a second cost nothing. TLS 1.2 and 1.3 only. Client
//! certificates, when `client_ca` is set, are read at start.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// How often the certificate files are checked for a change.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {path}: {source}; check the path in [server.tls] and the file's permissions"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what} ({detail}); it must be PEM")]
    Pem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: the private key cannot be used ({source}); use an RSA, ECDSA or Ed25519 key")]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "the key in {key} does not belong to the certificate in {cert}; install the matching pair"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("server.tls.client_ca {path}: {detail}")]
    ClientCa { path: PathBuf, detail: String },
    #[error("TLS cannot be set up: {0}")]
    Setup(rustls::Error),
}

/// The rustls configuration and the thread that keeps its certificate current.
pub struct Tls {
    pub config: ServerConfig,
    /// Held only to keep the polling thread alive as long as this value.
    _reloader: Reloader,
}

impl Tls {
    /// Loads the files; any problem stops the start with a message naming the file.
    pub fn load(tls: &TlsConfig) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let resolver = Arc::new(CertResolver::load(tls, Arc::clone(&provider))?);
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Setup)?;
        let builder = match &tls.client_ca {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
            None => builder.with_no_client_auth(),
        };
        let config =
            builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        let reloader = Reloader::start(resolver).map_err(|source| TlsError::Read {
            path: tls.cert.clone(),
            source,
        })?;
        Ok(Tls {
            config,
            _reloader: reloader,
        })
    }
}

/// Checks that the files of `tls` load and match, without serving them.
pub fn check_files(tls: &TlsConfig) -> Result<(), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    load_pair(&tls.cert, &tls.key, &provider)?;
    match &tls.client_ca {
        Some(path) => client_verifier(path, provider).map(drop),
        None => Ok(()),
    }
}

fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_certificates(path)?);
    let error = |detail: String| TlsError::ClientCa {
        path: path.to_owned(),
        detail,
    };
    if added == 0 {
        return Err(error("no CA certificate in it can be used".to_owned()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| error(e.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let pem_error = |detail: String| TlsError::Pem {
        path: path.to_owned(),
        what: "certificate",
        detail,
    };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error("no CERTIFICATE section".to_owned()));
    }
    Ok(chain)
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        what: "private key",
        detail: e.to_string(),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::Key {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key type cannot tell; the handshake will show it.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(_) => Err(TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// What identifies a file's version: its modification time and size; `None` while it is
/// missing (in the middle of a rename).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Serves the current certificate to every handshake.
#[derive(Debug)]
struct CertResolver {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when they were last read.
    seen: Mutex<[Stamp; 2]>,
}

impl CertResolver {
    fn load(tls: &TlsConfig, provider: Arc<CryptoProvider>) -> Result<CertResolver, TlsError> {
        // Stamped before reading, so that a write during the read is seen as a change.
        let seen = [stamp(&tls.cert), stamp(&tls.key)];
        let certified = load_pair(&tls.cert, &tls.key, &provider)?;
        Ok(CertResolver {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            provider,
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(seen),
        })
    }

    /// Reads the pair again when either file changed; on failure keeps the one in service.
    fn reload_if_changed(&self) {
        let now = [stamp(&self.cert), stamp(&self.key)];
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match load_pair(&self.cert, &self.key, &self.provider) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "the new TLS certificate was not loaded; the previous one stays in service");
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// The polling thread; dropping it stops the thread.
struct Reloader {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Reloader {
    fn start(resolver: Arc<CertResolver>) -> std::io::Result<Reloader> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tls-reload".to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(RELOAD_CHECK_EVERY)
                {
                    resolver.reload_if_changed();
                }
            })?;
        Ok(Reloader {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        // Closing the channel wakes the thread, which then ends.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
