//! The whole client path on one machine, no Kubernetes: two local UDP "game servers", the
//! director on the static example config, and a client that queries, connects, exchanges
//! datagrams, resets to the other server and prints what it sees at each phase.
//!
//!     cargo run --release --example demo

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use testkit::{EchoServer, http_get, query_token};
use udp_director::config::Config;

const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    // Parse, adjust for this machine, then validate once (as the binary does with overrides).
    let mut config = Config::parse(&std::fs::read_to_string(path)?)?;
    println!("config       {path}");

    // Game-server stand-ins on the example's static endpoints (or free ports if taken).
    let mut servers = Vec::new();
    for ep in config
        .resource_query_mapping
        .get_mut("echo")
        .and_then(|m| m.static_endpoints.as_mut())
        .into_iter()
        .flatten()
    {
        let prefix = format!("{} says: ", ep.name);
        let port = ep.port.unwrap_or(0);
        let server = EchoServer::start(SocketAddr::new(ep.address, port), prefix.as_bytes())
            .or_else(|_| EchoServer::start(SocketAddr::new(ep.address, 0), prefix.as_bytes()))?;
        ep.port = Some(server.addr.port());
        println!("game server  {} on udp://{}", ep.name, server.addr);
        servers.push(server);
    }
    // Listeners on free ports so the demo runs beside a real director.
    config.query_port = 0;
    config.data_port = 0;
    config.admin_port = 0;
    let director = udp_director::app::start(config.validate()?).await?;
    println!(
        "director     query tcp://{}  data udp://{}  admin http://{}",
        director.query_addr, director.data_addr, director.admin_addr
    );

    let (query, data) = (director.query_addr, director.data_addr);
    tokio::task::spawn_blocking(move || client(query, data)).await??;

    // Workers publish their counters every 100 ms; scrape like Prometheus would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = http_get(director.admin_addr, "/metrics")?;
    println!(
        "\nmetrics (excerpt of http://{}/metrics)",
        director.admin_addr
    );
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("udp_director_sessions_")
                || l.starts_with("udp_director_datagrams_total")
                || l.starts_with("udp_director_tokens_"))
    }) {
        println!("  {line}");
    }
    director.stop().await;
    println!("\ndone: query → token → session → reset all worked");
    Ok(())
}

fn client(query: SocketAddr, data: SocketAddr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let exchange = |payload: &[u8]| -> anyhow::Result<String> {
        socket.send_to(payload, data)?;
        let mut buf = [0u8; 2048];
        let (n, _) = socket.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };

    println!(
        "\n1. QUERY    tcp {{\"resourceType\":\"echo\",\"labelSelector\":{{\"zone\":\"a\"}}}}"
    );
    let a = query_token(
        query,
        r#"{"resourceType":"echo","labelSelector":{"zone":"a"}}"#,
    )?;
    println!(
        "   answer   token {} ttl {}s target {}/{}",
        a.token, a.ttl_seconds, a.target.namespace, a.target.name
    );

    println!("2. CONNECT  udp token from {}", socket.local_addr()?);
    socket.send_to(a.token.as_bytes(), data)?;
    for i in 1..=3 {
        let reply = exchange(format!("ping {i}").as_bytes())?;
        println!("   sent \"ping {i}\"  got \"{reply}\"");
    }

    println!("3. RESET    query zone b, then udp [magic][token] on the same socket");
    let b = query_token(
        query,
        r#"{"resourceType":"echo","labelSelector":{"zone":"b"}}"#,
    )?;
    println!(
        "   answer   token {} target {}/{}",
        b.token, b.target.namespace, b.target.name
    );
    socket.send_to(&[MAGIC, b.token.as_bytes()].concat(), data)?;
    for i in 4..=5 {
        let reply = exchange(format!("ping {i}").as_bytes())?;
        println!("   sent \"ping {i}\"  got \"{reply}\"");
    }
    anyhow::ensure!(
        exchange(b"check")?.starts_with("echo-b"),
        "after the reset replies must come from echo-b"
    );
    Ok(())
}
