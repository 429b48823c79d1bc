//! TLS on the query port (SPEC §2 `queryTls`): the server certificate and key, and the CA
//! that backend callers' client certificates must chain to. A caller without a certificate
//! still gets TLS (a player with a ticket); one whose certificate chains to `clientCaFile` is
//! a verified backend (`shell::query::Caller::backend`); one whose certificate does not chain
//! fails the handshake.
//!
//! The three files are polled like the key files and applied once two reads agree: a
//! changed set builds a new rustls config, swapped in whole for the next handshakes; one
//! that does not build is rejected, logged and counted, and the config in force stays.
//!
//! rustls is kube's (same version) on the ring provider, the process's one crypto stack.
//!
//! Owns building and swapping the query port's TLS config. Must not frame queries.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;

use crate::config::ValidQueryTls;
use crate::metrics::Metrics;
use crate::shell::keys::KEY_FILE_POLL;
use crate::shell::reload::{Polled, StableFile};

/// Why a certificate set cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot read {what} {path}: {problem}")]
    Read {
        what: &'static str,
        path: String,
        problem: String,
    },
    #[error("{what}: {problem}")]
    Invalid { what: &'static str, problem: String },
}

fn invalid(what: &'static str) -> impl Fn(String) -> TlsError {
    move |problem| TlsError::Invalid { what, problem }
}

/// The PEM texts of one certificate set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pems {
    pub(crate) cert: Vec<u8>,
    pub(crate) key: Vec<u8>,
    pub(crate) client_ca: Option<Vec<u8>>,
}

/// Builds the query port's rustls config: the chain and key, and (with a client CA) client
/// certificates verified when offered, not required.
pub(crate) fn server_config(pems: &Pems) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pems.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("certFile")(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("certFile")("no PEM certificate".to_string()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&pems.key).map_err(|e| invalid("keyFile")(e.to_string()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("queryTls")(e.to_string()))?;
    let builder = match &pems.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| invalid("clientCaFile")(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid("clientCaFile")(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(invalid("clientCaFile")("no PEM certificate".to_string()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid("clientCaFile")(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map(Arc::new)
        .map_err(|e| invalid("certFile/keyFile")(e.to_string()))
}

/// The TLS config in force, swapped whole when the files change.
pub(crate) struct QueryTls {
    acceptor: ArcSwap<tokio_rustls::TlsAcceptor>,
    /// Whether client certificates are verified (a `clientCaFile` is set).
    pub(crate) verifies_clients: bool,
}

impl QueryTls {
    pub(crate) fn new(config: Arc<ServerConfig>, verifies_clients: bool) -> Self {
        Self {
            acceptor: ArcSwap::from_pointee(tokio_rustls::TlsAcceptor::from(config)),
            verifies_clients,
        }
    }

    /// The acceptor for the next handshake.
    pub(crate) fn acceptor(&self) -> Arc<tokio_rustls::TlsAcceptor> {
        self.acceptor.load_full()
    }

    fn replace(&self, config: Arc<ServerConfig>) {
        self.acceptor
            .store(Arc::new(tokio_rustls::TlsAcceptor::from(config)));
    }
}

/// Reads the three files of `queryTls`.
pub(crate) async fn read(files: &ValidQueryTls) -> Result<Pems, TlsError> {
    async fn one(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, TlsError> {
        tokio::fs::read(path).await.map_err(|e| TlsError::Read {
            what,
            path: path.display().to_string(),
            problem: e.to_string(),
        })
    }
    Ok(Pems {
        cert: one("certFile", &files.cert_file).await?,
        key: one("keyFile", &files.key_file).await?,
        client_ca: match &files.client_ca_file {
            Some(p) => Some(one("clientCaFile", p).await?),
            None => None,
        },
    })
}

/// Polls the files of `queryTls` and swaps in a new config when they change and build.
pub(crate) async fn watch_files(
    tls: Arc<QueryTls>,
    files: ValidQueryTls,
    in_force: Pems,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut current = in_force.clone();
    let mut watched = [
        StableFile::new(files.cert_file.clone(), Some(in_force.cert)),
        StableFile::new(files.key_file.clone(), Some(in_force.key)),
    ]
    .into_iter()
    .chain(
        files
            .client_ca_file
            .clone()
            .map(|p| StableFile::new(p, in_force.client_ca)),
    )
    .collect::<Vec<_>>();
    let mut tick = tokio::time::interval(KEY_FILE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut changed = false;
        for (i, file) in watched.iter_mut().enumerate() {
            match file.poll().await {
                Polled::Unchanged => {}
                Polled::Unreadable(e) => {
                    tracing::warn!(file = i, error = %e, "cannot read a queryTls file; the TLS config in force stays");
                }
                Polled::Changed(bytes) => {
                    changed = true;
                    match i {
                        0 => current.cert = bytes,
                        1 => current.key = bytes,
                        _ => current.client_ca = Some(bytes),
                    }
                }
            }
        }
        if !changed {
            continue;
        }
        match server_config(&current) {
            Ok(config) => {
                tls.replace(config);
                metrics
                    .query_tls_reloads
                    .get_or_create(&[("result", "applied")])
                    .inc();
                tracing::info!("queryTls certificates reloaded");
            }
            Err(e) => {
                metrics
                    .query_tls_reloads
                    .get_or_create(&[("result", "rejected")])
                    .inc();
                tracing::warn!(error = %e, "queryTls certificates rejected; the TLS config in force stays");
            }
        }
    }
}
