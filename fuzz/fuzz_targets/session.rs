//! The session table driven by arbitrary operation sequences on a virtual clock, with its
//! invariants checked after every step and the ledger's counts compared with the table's.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;
use udp_director::resolve::{SessionCounts, Target};
use udp_director::session::{CloseReason, Ledger, SessionTable, SocketId};

#[derive(Debug, Arbitrary)]
enum Op {
    Connect { client: u8, target: u8, v6: bool },
    FromClient { client: u8, len: u16 },
    FromTarget { v6: bool, index: u8, target: u8, len: u16 },
    Close { client: u8 },
    Advance { millis: u16 },
    Expire,
    SetTimeout { seconds: u8 },
    CloseAll,
}

fn client(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n % 16], 40_000 + u16::from(n)))
}

fn target(n: u8, v6: bool) -> Arc<Target> {
    let addr = if v6 {
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 9_000 + u16::from(n % 8)))
    } else {
        SocketAddr::from(([127, 0, 0, 1], 9_000 + u16::from(n % 8)))
    };
    Arc::new(Target::new("fuzz", "default", &format!("t{}", n % 8), addr))
}

fuzz_target!(|input: (u8, Vec<Op>)| {
    let (cap, ops) = input;
    let ledger = Ledger::new(usize::from(cap % 32));
    let mut table = SessionTable::new(Duration::from_secs(5));
    let mut now = Instant::now();
    let mut closed = Vec::new();
    for op in ops.into_iter().take(512) {
        match op {
            Op::Connect { client: c, target: t, v6 } => {
                let before = table.len();
                match table.connect(client(c), target(t, v6), now, &ledger) {
                    Ok(_) => assert!(table.len() <= ledger.cap().max(before)),
                    Err(_) => assert!(ledger.active() >= ledger.cap()),
                }
            }
            Op::FromClient { client: c, len } => {
                if let Some(id) = table.lookup(&client(c)) {
                    let (_, to) = table
                        .forward_from_client(id, usize::from(len), now)
                        .expect("a looked-up session forwards");
                    assert_eq!(table.describe(id).map(|(_, t)| t.addr), Some(to));
                }
            }
            Op::FromTarget { v6, index, target: t, len } => {
                let socket = SocketId { v6, index: u32::from(index % 8) };
                let from = target(t, v6).addr;
                if let Some(c) = table.forward_from_target(socket, &from, usize::from(len), now) {
                    let id = table.lookup(&c).expect("delivered to a live client");
                    assert_eq!(table.describe(id).map(|(_, t)| t.addr), Some(from));
                }
            }
            Op::Close { client: c } => {
                if let Some(id) = table.lookup(&client(c)) {
                    table.close(id, CloseReason::UpstreamError, now, &ledger).expect("closes");
                    assert_eq!(table.lookup(&client(c)), None);
                }
            }
            Op::Advance { millis } => now += Duration::from_millis(u64::from(millis) * 10),
            Op::Expire => {
                closed.clear();
                table.expire(now, &ledger, &mut closed);
                assert!(closed.iter().all(|c| c.reason == CloseReason::Idle));
            }
            Op::SetTimeout { seconds } => {
                table.set_timeout(Duration::from_secs(u64::from(seconds % 30) + 1))
            }
            Op::CloseAll => {
                closed.clear();
                table.close_all(CloseReason::Drained, now, &ledger, &mut closed);
                assert!(table.is_empty());
            }
        }
        table.check_invariants();
        assert_eq!(ledger.active(), table.len(), "ledger admits what the table holds");
        let per_target: usize = (0..8u8)
            .flat_map(|t| [target(t, false).addr, target(t, true).addr])
            .map(|a| ledger.sessions_to(&a))
            .sum();
        assert_eq!(per_target, table.len(), "per-target counts add up");
    }
});
