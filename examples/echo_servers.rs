//! UDP echo servers standing in for game servers, for a director run on
//! `config.example.yaml`. Each reply is prefixed with the server's name.
//!
//!     cargo run --release --example echo_servers [NAME=ADDR ...]
//!
//! Default: echo-a=127.0.0.1:9001 echo-b=127.0.0.1:9002. Stops on Ctrl-C or after 10 minutes.

use std::time::Duration;

use testkit::EchoServer;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut specs: Vec<String> = std::env::args().skip(1).collect();
    if specs.is_empty() {
        specs = vec![
            "echo-a=127.0.0.1:9001".into(),
            "echo-b=127.0.0.1:9002".into(),
        ];
    }
    let mut servers = Vec::new();
    for spec in &specs {
        let (name, addr) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("expected NAME=ADDR, got {spec:?}"))?;
        let server = EchoServer::start(addr.parse()?, format!("{name} says: ").as_bytes())?;
        println!("{name} echoing on udp://{}", server.addr);
        servers.push(server);
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(Duration::from_secs(600)) => {}
    }
    drop(servers);
    Ok(())
}
