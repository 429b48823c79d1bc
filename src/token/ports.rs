//! Per-port redemption (SPEC §3, several data ports): one token opens a session on each data
//! port, towards the same target object's matching port, and holds one session per port.
//! Data port `index` sees every grant's target at its own port and the token under its own
//! key (`key ^ index`); port 0 passes grants through unchanged.
//!
//! Owns the derivation. Must not decide what a redeem means for a session.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::{Redeem, Tokens};
use crate::model::{Grant, Interner, Rejection, Spend, TokenKey, Use};

/// The tokens as data port `index` (of `dataPorts`) redeems them.
pub struct PortTokens {
    tokens: Arc<Tokens>,
    index: usize,
    /// One shared target per address on this port (sessions keep an `Arc` each).
    targets: Interner,
}

impl PortTokens {
    pub fn new(tokens: Arc<Tokens>, index: usize) -> Self {
        Self {
            tokens,
            index,
            targets: Interner::default(),
        }
    }

    /// This port's key for a token's key: each port holds its own session per token.
    pub fn key(&self, key: TokenKey) -> TokenKey {
        key ^ self.index as u128
    }
}

impl Redeem for PortTokens {
    fn open_token(
        &self,
        token: &[u8],
        client: IpAddr,
        how: Use,
        now: Instant,
        spend: Spend,
    ) -> Result<Grant, Rejection> {
        let grant = self.tokens.open_token(token, client, how, now, spend)?;
        if self.index == 0 {
            return Ok(grant);
        }
        let target = self
            .targets
            .on_data_port(&grant.target, self.index)
            .ok_or(Rejection::Invalid)?;
        Ok(Grant {
            key: self.key(grant.key),
            target,
            ..grant
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::{ClientBinding, Policy, Target};
    use crate::token::TokenStore;

    #[test]
    fn each_port_sees_the_target_at_its_port_under_its_own_key() {
        let store = Tokens::Uuid(TokenStore::new(16));
        let now = Instant::now();
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let addr: SocketAddr = "10.1.0.1:7000".parse().unwrap();
        let target = Arc::new(Target::new("m", "ns", "gs", addr).with_extra_ports(&[7001]));
        let policy = Policy {
            ttl: std::time::Duration::from_secs(30),
            resume: std::time::Duration::from_secs(60),
            single_use: false,
            binding: ClientBinding::Ip,
        };
        let wire = store.issue(target, client, now, policy).unwrap().wire;
        let tokens = Arc::new(store);
        let main = PortTokens::new(Arc::clone(&tokens), 0);
        let voice = PortTokens::new(Arc::clone(&tokens), 1);
        let none = PortTokens::new(tokens, 2);
        let a = main
            .redeem(wire.as_bytes(), client, Use::Open, now)
            .unwrap();
        let b = voice
            .redeem(wire.as_bytes(), client, Use::Open, now)
            .unwrap();
        assert_eq!(a.target.addr, addr);
        assert_eq!(b.target.addr.port(), 7001);
        assert_eq!(b.key, a.key ^ 1);
        let again = voice
            .redeem(wire.as_bytes(), client, Use::Open, now)
            .unwrap();
        assert!(
            Arc::ptr_eq(&b.target, &again.target),
            "one shared target per port"
        );
        assert_eq!(
            none.redeem(wire.as_bytes(), client, Use::Open, now)
                .unwrap_err(),
            Rejection::Invalid,
            "a port the token has no target port for"
        );
    }
}
