//! One token, a UDP game session and a TCP side channel to the same game server (SPEC §3,
//! "TCP data ports"), on one machine: a local game server with a UDP port and a TCP `chat`
//! port, the director with `dataPorts: [UDP, TCP]`, and the client library opening both.
//!
//!     cargo run --release --example tcp_side_channel

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use testkit::EchoServer;
use udp_director::config::ValidConfig;
use udp_director_client::{Query, Session, open_tcp};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The game server: UDP echo on one port, a TCP chat that answers each line.
    let game = EchoServer::start("127.0.0.1:0".parse()?, b"game: ")?;
    let chat = TcpListener::bind("127.0.0.1:0")?;
    let chat_port = chat.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in chat.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = stream.try_clone().expect("clone");
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writeln!(out, "chat: {line}");
                }
            });
        }
    });
    let config = ValidConfig::from_yaml(&format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\nadminPort: 0\n\
         dataPorts:\n  - {{port: 0, targetPortName: default}}\n  - {{port: 0, protocol: TCP, targetPortName: chat}}\n\
         resourceQueryMapping:\n  arena:\n    static:\n      - {{name: gs-1, address: 127.0.0.1, ports: [{{name: default, port: {}}}, {{name: chat, port: {chat_port}}}]}}\n",
        game.addr.port()
    ))?;
    let director = udp_director::app::start(config).await?;
    let (query, udp, tcp): (SocketAddr, SocketAddr, SocketAddr) = (
        director.query_addr,
        director.data_addrs[0],
        director.data_addrs[1],
    );
    println!("director     query tcp://{query}, game udp://{udp}, chat tcp://{tcp}");

    let client = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let grant = Query::new("arena").player_id("player-1").send(query)?;
        println!("grant        {} → {}", grant.token, grant.target.name);
        // The game: datagrams on the UDP data port.
        let mut session = Session::open(udp, &grant)?;
        session.send(b"move north")?;
        let mut buf = [0u8; 1500];
        let n = session
            .recv_timeout(&mut buf, Duration::from_secs(2))?
            .ok_or_else(|| anyhow::anyhow!("no game reply"))?;
        println!("udp reply    {}", String::from_utf8_lossy(&buf[..n]));
        // The side channel: the same token as the first line of a TCP connection.
        let stream = open_tcp(tcp, &grant, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        (&stream).write_all(b"hello lobby\n")?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        println!("tcp reply    {}", line.trim_end());
        anyhow::ensure!(
            line.starts_with("chat: hello lobby"),
            "unexpected chat reply"
        );
        Ok(())
    })
    .await?;
    director.stop().await;
    client
}
