//! Queries over TLS for backend callers (SPEC §2 "Who may ask"): a matchmaker with a client
//! certificate the director trusts (`queryTls.clientCaFile`) asks on a player's behalf, with
//! the player's `clientIp` and `playerId` and no ticket. Blocking, like the rest of the
//! library; rustls on ring. Behind the `tls` feature: game clients never need it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use udp_director_client::{Query, tls::Backend};
//! let backend = Backend::from_pem(
//!     &std::fs::read("ca.crt")?,        // the director's server CA
//!     &std::fs::read("matchmaker.crt")?, // this backend's client certificate
//!     &std::fs::read("matchmaker.key")?,
//!     "udp-director.example.com",        // the name in the director's certificate
//! )?;
//! let grant = backend.ask(
//!     "10.0.0.5:9000".parse()?,
//!     &Query::new("match").player_id("p-42").client_ip("203.0.113.9".parse()?),
//! )?;
//! // Hand grant.token to the player at 203.0.113.9: it redeems only from there.
//! # Ok(()) }
//! ```
//!
//! Owns the TLS client side of queries. Must not depend on the director's code.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::{Grant, Query, QueryError, parse_answer};

/// Why a backend's TLS settings are unusable.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS settings: {}", self.0)
    }
}

impl std::error::Error for TlsError {}

/// A backend caller's TLS identity and the CA it trusts for the director.
#[derive(Clone)]
pub struct Backend {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl Backend {
    /// `ca_pem`: the CA of the director's certificate; `cert_pem`/`key_pem`: this backend's
    /// client certificate (chained to the director's `clientCaFile`) and key;
    /// `server_name`: a DNS name or IP in the director's certificate.
    pub fn from_pem(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        server_name: &str,
    ) -> Result<Self, TlsError> {
        fn err(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> TlsError {
            move |e| TlsError(format!("{what}: {e}"))
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| err("CA")(&e))?;
            roots.add(cert).map_err(|e| err("CA")(&e))?;
        }
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("certificate")(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| err("key")(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err("protocol versions")(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| err("client certificate")(&e))?;
        let server_name =
            ServerName::try_from(server_name.to_string()).map_err(|e| err("server name")(&e))?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Sends one query over a fresh TLS connection and reads its answer.
    pub fn ask(&self, query_addr: SocketAddr, query: &Query) -> Result<Grant, QueryError> {
        let tcp = TcpStream::connect_timeout(&query_addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_nodelay(true)?;
        let conn =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
                .map_err(|e| QueryError::Io(io::Error::other(e)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        stream.write_all(query.to_line().as_bytes())?;
        stream.write_all(b"\n")?;
        stream.flush()?;
        let mut line = String::new();
        if BufReader::new(stream).read_line(&mut line)? == 0 {
            return Err(QueryError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        parse_answer(&line)
    }
}
