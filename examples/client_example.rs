//! A game client's three phases against a running director.
//!
//!     cargo run --release -- --config config.example.yaml          # terminal 1 (director)
//!     cargo run --release --example echo_servers                   # terminal 2 (game servers)
//!     cargo run --release --example client_example                 # terminal 3
//!
//! Arguments (all optional): QUERY_ADDR DATA_ADDR RESOURCE_TYPE, default
//! 127.0.0.1:9000 127.0.0.1:7777 echo.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use testkit::query_token;

const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let query: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:9000").parse()?;
    let data: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:7777").parse()?;
    let kind = args.next().unwrap_or_else(|| "echo".to_string());

    // 1. QUERY: one JSON line over TCP, one answer line back.
    let request = format!(r#"{{"resourceType":"{kind}"}}"#);
    let first = query_token(query, &request)?;
    println!(
        "QUERY   -> token {} for {}/{}",
        first.token, first.target.namespace, first.target.name
    );

    // 2. CONNECT: the token is the first datagram; everything after it is proxied.
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(first.token.as_bytes(), data)?;
    socket.send_to(b"hello from the client", data)?;
    let mut buf = [0u8; 65_536];
    let (n, _) = socket.recv_from(&mut buf)?;
    println!("CONNECT -> reply {:?}", String::from_utf8_lossy(&buf[..n]));

    // 3. RESET: a new token behind the magic bytes moves the session; same socket.
    let second = query_token(query, &request)?;
    socket.send_to(&[MAGIC, second.token.as_bytes()].concat(), data)?;
    socket.send_to(b"hello after reset", data)?;
    let (n, _) = socket.recv_from(&mut buf)?;
    println!(
        "RESET   -> now {}/{}, reply {:?}",
        second.target.namespace,
        second.target.name,
        String::from_utf8_lossy(&buf[..n])
    );
    Ok(())
}
