//! Listeners: binding the TCP ports (query, admin, TCP data ports; with `reusePort` in the
//! port's SO_REUSEPORT group) and accepting with a back-off when the process is out of
//! descriptors. The UDP data sockets are bound by the data plane (`udp`).
//!
//! Owns binding and accepting. Must not read what a connection sends.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// A TCP port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the {what} listener on {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl BindError {
    pub(crate) fn new(what: &'static str, addr: SocketAddr, source: std::io::Error) -> Self {
        Self { what, addr, source }
    }
}

/// A TCP listener; with `reuse_port` in the port's SO_REUSEPORT group.
pub(crate) fn bind_stream(
    what: &'static str,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<TcpListener, BindError> {
    let listener = bind_std_stream(what, addr, reuse_port)?;
    TcpListener::from_std(listener).map_err(|source| BindError { what, addr, source })
}

/// A non-blocking TCP listener not yet tied to a runtime (for a server on its own thread).
pub(crate) fn bind_std_stream(
    what: &'static str,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<std::net::TcpListener, BindError> {
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            let _ = socket.set_only_v6(false);
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    bind().map_err(|source| BindError { what, addr, source })
}

/// The address a listener got (port 0: the OS's choice), from its `local_addr()`.
pub(crate) fn local(
    got: std::io::Result<SocketAddr>,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, BindError> {
    got.map_err(|source| BindError { what, addr, source })
}

/// One `accept`; on an error (EMFILE and friends) logs it and backs off 50 ms instead of
/// spinning, then yields `None`. Shared by the query server and the TCP data ports.
pub(crate) async fn accept_or_back_off(
    listener: &TcpListener,
    what: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(pair) => Some(pair),
        Err(e) => {
            tracing::warn!(error = %e, listener = what, "accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            None
        }
    }
}
