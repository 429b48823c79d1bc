//! A game client's loop on the client library (`udp-director-client`): measure the regions
//! (PING), query, open on the nearest, play, keep the session alive with the resume rule,
//! move to another server, and carry on from a new address (a phone moving from Wi-Fi to
//! cellular: proof of address, no new query).
//!
//!     cargo run --release -- --config config.example.yaml          # terminal 1 (director)
//!     cargo run --release --example echo_servers                   # terminal 2 (game servers)
//!     cargo run --release --example client_example                 # terminal 3
//!
//! Arguments (all optional): QUERY_ADDR DATA_ADDR RESOURCE_TYPE [SECOND_DATA_ADDR], default
//! 127.0.0.1:9000 127.0.0.1:7777 echo (a second data port only with `dataPorts`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use tokio::time::Instant;

use udp_director_client::{Query, Session};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let query: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:9000").parse()?;
    let data: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:7777").parse()?;
    let kind = args.next().unwrap_or_else(|| "echo".to_string());
    // With `dataPorts`, a second data port (e.g. voice on 127.0.0.1:7778).
    let voice: Option<SocketAddr> = args.next().map(|a| a.parse()).transpose()?;

    // 1. QUERY: one JSON line over TCP, one answer line back. The player id goes to the
    //    game server in the PROXY v2 header when the mapping has `proxyProtocol: v2` (and
    //    into the Agones players list when it allocates).
    let first = Query::new(&kind).player_id("player-1").send(query)?;
    println!(
        "QUERY   -> token {} for {}/{} (resume window {:?} s)",
        first.token, first.target.namespace, first.target.name, first.resume_seconds
    );

    // 2. OPEN on the nearest region and play. With several director addresses (one per
    //    region, or replicas with their own addresses) `open_any` PINGs each, opens on the
    //    lowest RTT and fails over to the next after 3 s of silence. The token is the first
    //    datagram; everything after it is proxied.
    let regions = [data];
    let mut session = Session::open_any(&regions, &first, Default::default())?;
    session.ping()?;
    let _ = session.recv_timeout(&mut [0u8; 64], Duration::from_millis(100))?;
    for (addr, rtt) in session.directors() {
        println!("PING    -> {addr}: rtt {rtt:?}");
    }
    let mut buf = [0u8; 65_536];
    let mut heard = 0;
    let started = Instant::now();
    for frame in 0..20u32 {
        session.send(format!("input {frame}").as_bytes())?;
        if let Some(n) = session.recv_timeout(&mut buf, Duration::from_millis(50))? {
            heard += 1;
            if frame == 0 {
                println!("PLAY    -> reply {:?}", String::from_utf8_lossy(&buf[..n]));
            }
        }
        // The resume rule: after 500 ms of silence (a replica lost, a rehash) and every 5 s,
        // [magic][token] re-opens or keeps the session. Nothing to do but call it.
        session.tick()?;
    }
    println!(
        "PLAY    -> {heard}/20 frames answered in {:?}, {} resumes",
        started.elapsed(),
        session.resumes()
    );

    // 2b. A second data port (`dataPorts`): the same token opens a session there too, to
    //     the same server's matching port (voice next to game).
    if let Some(voice) = voice {
        let mut voice_session = Session::open(voice, &first)?;
        voice_session.send(b"voice frame")?;
        let reply = voice_session.recv_timeout(&mut buf, Duration::from_secs(2))?;
        println!(
            "VOICE   -> {} on the same server: {:?}",
            voice,
            reply.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        );
    }

    // 3. SWITCH: a new token behind the magic bytes moves the session; same socket.
    let second = Query::new(&kind).send(query)?;
    session.switch(&second)?;
    session.send(b"hello after the switch")?;
    if let Some(n) = session.recv_timeout(&mut buf, Duration::from_secs(2))? {
        println!(
            "SWITCH  -> now {}/{}, reply {:?}",
            second.target.namespace,
            second.target.name,
            String::from_utf8_lossy(&buf[..n])
        );
    }

    // 4. HANDOVER: the phone leaves Wi-Fi for cellular: a new local address (here another
    //    loopback address when the director is local, else a new port). `rebind` sends
    //    [magic][token] from it; the director challenges the new address, the session answers
    //    while it reads, and play goes on — same server, no new query.
    let new_ip = if data.ip().is_loopback() {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let moved = Instant::now();
    session.rebind(UdpSocket::bind((new_ip, 0))?)?;
    let mut replied = None;
    while replied.is_none() && moved.elapsed() < Duration::from_secs(3) {
        session.send(b"hello from the new address")?;
        replied = session.recv_timeout(&mut buf, Duration::from_millis(50))?;
        session.tick()?;
    }
    match replied {
        Some(n) => println!(
            "HANDOVER-> from {} after {:?}: reply {:?}",
            session.socket().local_addr()?,
            moved.elapsed(),
            String::from_utf8_lossy(&buf[..n])
        ),
        None => println!(
            "HANDOVER-> no reply within 3 s (is the director older than proof of address?)"
        ),
    }
    Ok(())
}
