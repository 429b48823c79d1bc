//! The Session shell against fake directors (plain UDP sockets this test reads and writes):
//! the frames today's director does not send yet reach the shell and its answers go out on
//! the socket — a CHALLENGE is answered, PONGs choose the director, a PONG from a director
//! that is not the first listed wins.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use udp_director_client::frames::{self, DEFAULT_MAGIC, Frame, MAX_CONTROL_LEN};
use udp_director_client::{Grant, Session, core, parse_answer};

const TOKEN: &str = "550e8400-e29b-41d4-a716-446655440000";

fn grant() -> Grant {
    parse_answer(&format!(
        r#"{{"token":"{TOKEN}","ttlSeconds":30,"target":{{"namespace":"n","name":"a"}}}}"#
    ))
    .unwrap()
}

fn fake() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    (buf[..n].to_vec(), from)
}

#[test]
fn a_challenge_is_answered_from_the_sessions_socket_and_not_handed_to_the_game() {
    let (director, addr) = fake();
    let mut s = Session::open(addr, &grant()).unwrap();
    let (token, client) = recv(&director);
    assert_eq!(token, TOKEN.as_bytes());

    let nonce = [0x5Au8; 16];
    let mut frame = [0u8; MAX_CONTROL_LEN];
    let n = frames::write_challenge(&mut frame, DEFAULT_MAGIC, &nonce);
    director.send_to(&frame[..n], client).unwrap();
    director.send_to(b"game", client).unwrap();
    let mut buf = [0u8; 2048];
    // The challenge is consumed on the way; the game datagram after it is returned.
    assert_eq!(
        s.recv_timeout(&mut buf, Duration::from_secs(3)).unwrap(),
        Some(4)
    );
    assert_eq!(&buf[..4], b"game");
    let (response, from) = recv(&director);
    assert_eq!(from, client, "from the challenged socket");
    assert_eq!(
        frames::parse(&response, DEFAULT_MAGIC),
        Ok(Some(Frame::Response {
            nonce,
            token: TOKEN.as_bytes()
        }))
    );
    assert_eq!(s.stats().challenges_answered, 1);
}

#[test]
fn the_director_that_answers_pings_gets_the_token_even_when_listed_second() {
    let (silent, silent_addr) = fake();
    let (answering, answering_addr) = fake();
    let pong_thread = std::thread::spawn(move || {
        // Answer the PING the way a director will: same id, two times.
        let (ping, from) = recv(&answering);
        let Ok(Some(Frame::Ping { id })) = frames::parse(&ping, DEFAULT_MAGIC) else {
            panic!("not a PING: {ping:?}");
        };
        assert_eq!(ping.len(), 34);
        let mut out = [0u8; MAX_CONTROL_LEN];
        let n = frames::write_pong(&mut out, DEFAULT_MAGIC, &id, 10, 20);
        answering.send_to(&out[..n], from).unwrap();
        let (token, _) = recv(&answering);
        (answering, token)
    });
    let cfg = core::Config {
        probe_for: Duration::from_secs(2),
        ..core::Config::default()
    };
    let s = Session::open_any(&[silent_addr, answering_addr], &grant(), cfg).unwrap();
    let (_answering, token) = pong_thread.join().unwrap();
    assert_eq!(
        token,
        TOKEN.as_bytes(),
        "the token went to the answering one"
    );
    assert_eq!(s.remote(), answering_addr);
    let dirs = s.directors();
    assert_eq!(dirs[0].0, answering_addr);
    assert!(dirs[0].1.is_some(), "its RTT was measured");
    assert_eq!(dirs[1], (silent_addr, None));
    // The silent one got a PING and nothing else.
    let (ping, _) = recv(&silent);
    assert!(matches!(
        frames::parse(&ping, DEFAULT_MAGIC),
        Ok(Some(Frame::Ping { .. }))
    ));
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        silent.recv_from(&mut buf).is_err(),
        "no token to the silent one"
    );
}
