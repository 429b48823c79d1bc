//! Who may ask, on one machine: a studio backend ("matchmaker") that has authenticated a
//! player mints a signed ticket; the player's client carries it in its query; the director
//! checks it against the backend's JWKS and answers with a token. The matchmaker verifies
//! nothing itself and holds a key generated here (a test key: in production it lives in the
//! backend's secret store and only the public JWKS reaches the director).
//!
//!     cargo run --release --example matchmaker
//!
//! Prints the JWKS the director reads, the ticket, the player's grant and echo, and what a
//! forged ticket and a ticket-less query get.

use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use testkit::EchoServer;
use udp_director::token::mint::{Minter, jwks};
use udp_director_client::{Query, QueryError, Session};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The backend's signing key and the public JWKS the director is given.
    let backend_key = Minter::generate(Algorithm::EdDSA, "studio-2026-12")?;
    let dir = std::env::temp_dir().join(format!("udp-director-matchmaker-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&backend_key]))?;
    println!("JWKS       {} (public keys only)", jwks_path.display());

    // A game server stand-in and a director whose mapping needs tickets.
    let server = EchoServer::start("127.0.0.1:0".parse()?, b"arena-1 says: ")?;
    let yaml = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\n\
         queryAuth:\n  jwksFile: {}\n  audience: udp-director\n  issuer: https://auth.studio.example\n\
         resourceQueryMapping:\n  match:\n    auth: ticket\n    static:\n      - {{name: arena-1, address: 127.0.0.1, port: {}}}\n",
        jwks_path.display(),
        server.addr.port()
    );
    let director =
        udp_director::app::start(udp_director::config::ValidConfig::from_yaml(&yaml)?).await?;
    println!(
        "director   query tcp://{}  data udp://{}",
        director.query_addr, director.data_addr
    );

    // The player logged in to the studio's backend, which answers with a ticket: who the
    // player is (`sub`), for whom (`aud`), until when (`exp`), and what it may ask for.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let ticket = backend_key.mint(&json!({
        "sub": "player-42",
        "aud": "udp-director",
        "iss": "https://auth.studio.example",
        "iat": now,
        "exp": now + 60,
        "udpDirector": {"resourceTypes": ["match"]},
    }))?;
    println!("ticket     {}...", &ticket[..48.min(ticket.len())]);

    let (query, data) = (director.query_addr, director.data_addr);
    let forged = Minter::generate(Algorithm::EdDSA, "studio-2026-12")?.mint(&json!({
        "sub": "player-42", "aud": "udp-director", "iss": "https://auth.studio.example", "exp": now + 60,
    }))?;
    tokio::task::spawn_blocking(move || player(query, data, &ticket, &forged)).await??;
    director.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The game client: carries the ticket it got from the backend, never a key.
fn player(query: SocketAddr, data: SocketAddr, ticket: &str, forged: &str) -> anyhow::Result<()> {
    let grant = Query::new("match").ticket(ticket).send(query)?;
    println!(
        "grant      token {} for {}/{}",
        grant.token, grant.target.namespace, grant.target.name
    );
    let mut session = Session::open(data, &grant)?;
    session.send(b"hello")?;
    let mut buf = [0u8; 1500];
    if let Some(n) = session.recv_timeout(&mut buf, Duration::from_secs(1))? {
        println!("echo       {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    for (what, q) in [
        ("forged ticket", Query::new("match").ticket(forged)),
        ("no ticket", Query::new("match").player_id("player-42")),
    ] {
        match q.send(query) {
            Err(QueryError::Refused { code, message }) => {
                println!("{what:<14} {code}: {message}")
            }
            other => anyhow::bail!("{what}: expected a refusal, got {other:?}"),
        }
    }
    Ok(())
}
