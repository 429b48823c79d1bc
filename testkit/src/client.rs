//! A blocking client of the director's query protocol and a plain HTTP GET for its admin
//! server. Answers are read by the client library (`udp-director-client`), independently of
//! the daemon's own types.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A successful query answer (SPEC §2), as the client library reads it.
pub use udp_director_client::{Grant as Answer, GrantTarget as AnswerTarget};

/// Sends one query line on a fresh connection and reads one answer line (5 s timeouts).
pub fn query_raw(addr: SocketAddr, request: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.trim_end().as_bytes())?;
    stream.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// Queries for a token; an error answer becomes an `io::Error` carrying its text.
pub fn query_token(addr: SocketAddr, request: &str) -> io::Result<Answer> {
    let line = query_raw(addr, request)?;
    udp_director_client::parse_answer(&line)
        .map_err(|e| io::Error::other(format!("query failed: {e}: {}", line.trim())))
}

/// Plain HTTP/1.1 GET (for the admin server): `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: director\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The nonce of a CHALLENGE (`[magic] 01 [nonce]`, SPEC §3 "Proof of address") behind the
/// default magic, as the client library reads it; `None` for anything else.
pub fn challenge_nonce(datagram: &[u8]) -> Option<[u8; 16]> {
    use udp_director_client::frames::{Frame, parse};
    match parse(datagram, udp_director_client::DEFAULT_MAGIC) {
        Ok(Some(Frame::Challenge { nonce })) => Some(nonce),
        _ => None,
    }
}

/// The RESPONSE answering a challenge's `nonce` for `token` (`[magic] 02 [nonce] [token]`).
pub fn response(nonce: &[u8; 16], token: &[u8]) -> Vec<u8> {
    [udp_director_client::DEFAULT_MAGIC, &[2], nonce, token].concat()
}
