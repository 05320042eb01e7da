//! Master election through etcd, for clusters whose SPs may not see the same
//! peers (across machines): etcd decides who leads and hands out the fencing
//! token ([062], [069]; ANCHORS.md: "a lease alone is not mutual exclusion —
//! the storage must check the fencing token").
//!
//! Only liveness and leadership live in etcd; the configuration stays on the
//! disks. Each SP holds a lease it keeps alive and campaigns in the election
//! `tierblk/<cluster>/master` with its name as the value (etcd's v3 election
//! API, through its JSON gateway: no gRPC stack to build). The leader key's
//! create revision is the master *generation*: it only grows, so an SP that
//! has seen generation N refuses every session of an older master (see
//! [`crate::sp`]). When the leader's lease expires (the process died or
//! stalled for a TTL), the next campaigner's key wins, with a newer revision.
//!
//! The client is a few HTTP/1.0 POSTs of JSON over a `TcpStream`: each call
//! is its own connection, so a long `campaign` never holds up the others.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// Lease time to live: how long a dead master holds the role.
pub const LEASE_TTL: u64 = 3;

/// How often the lease is renewed and the leader looked up.
const TICK: Duration = Duration::from_millis(500);

/// Largest reply read from etcd.
const MAX_REPLY: u64 = 1 << 20;

/// An etcd endpoint (`http://IP:PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Etcd {
    addr: SocketAddr,
}

/// The current leader as etcd says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// SP name (the campaign value).
    pub name: String,
    /// The leader key's create revision: the fencing token.
    pub generation: u64,
    /// The lease holding the key.
    pub lease: i64,
}

/// What the election thread tells the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// `leader` leads; `mine` says whether it is this SP's current lease.
    Leader { leader: Leader, mine: bool },
    /// No leader now.
    Vacant,
    /// This SP's lease expired or could not be renewed: it may no longer
    /// act as master.
    LeaseLost(String),
    /// etcd does not answer.
    Unreachable(String),
}

impl std::str::FromStr for Etcd {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("etcd {s:?}: expected http://IP:PORT"))?;
        let addr = rest
            .trim_end_matches('/')
            .parse()
            .map_err(|e| format!("etcd {s:?}: {e} (expected http://IP:PORT)"))?;
        Ok(Etcd { addr })
    }
}

impl std::fmt::Display for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.addr)
    }
}

impl Etcd {
    /// POST `body` to `path`; the JSON reply, or etcd's error message.
    fn call(&self, path: &str, body: &Value, timeout: Option<Duration>) -> Result<Value, String> {
        let what = |e: std::io::Error| format!("etcd {self}{path}: {e}");
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).map_err(what)?;
        s.set_read_timeout(timeout).map_err(what)?;
        s.set_write_timeout(Some(Duration::from_secs(2)))
            .map_err(what)?;
        let body = body.to_string();
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .map_err(what)?;
        let mut reply = Vec::new();
        s.take(MAX_REPLY).read_to_end(&mut reply).map_err(what)?;
        parse_reply(&reply).map_err(|e| format!("etcd {self}{path}: {e}"))
    }

    /// Grant a lease of `ttl` seconds.
    pub fn grant(&self, ttl: u64) -> Result<i64, String> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl }), Some(TICK * 4))?;
        int(&v["ID"]).ok_or_else(|| format!("etcd {self}: lease grant without an ID: {v}"))
    }

    /// Renew `lease`; its remaining TTL (0: it is gone).
    pub fn keepalive(&self, lease: i64) -> Result<i64, String> {
        let v = self.call(
            "/v3/lease/keepalive",
            &json!({ "ID": lease.to_string() }),
            Some(TICK * 4),
        )?;
        Ok(int(&v["result"]["TTL"]).unwrap_or(0))
    }

    /// Campaign in `election` as `value`, holding `lease`: blocks until this
    /// lease leads, and returns the leader key's revision.
    pub fn campaign(&self, election: &str, lease: i64, value: &str) -> Result<u64, String> {
        let v = self.call(
            "/v3/election/campaign",
            &json!({
                "name": b64(election.as_bytes()),
                "lease": lease.to_string(),
                "value": b64(value.as_bytes()),
            }),
            None,
        )?;
        int(&v["leader"]["rev"])
            .and_then(|r| u64::try_from(r).ok())
            .ok_or_else(|| format!("etcd {self}: campaign reply without a revision: {v}"))
    }

    /// The leader of `election`, if any.
    pub fn leader(&self, election: &str) -> Result<Option<Leader>, String> {
        match self.call(
            "/v3/election/leader",
            &json!({ "name": b64(election.as_bytes()) }),
            Some(TICK * 4),
        ) {
            Ok(v) => {
                let kv = &v["kv"];
                let name = kv["value"]
                    .as_str()
                    .and_then(unb64)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| format!("etcd {self}: leader without a value: {v}"))?;
                let generation = int(&kv["create_revision"])
                    .and_then(|r| u64::try_from(r).ok())
                    .ok_or_else(|| format!("etcd {self}: leader without a revision: {v}"))?;
                Ok(Some(Leader {
                    name,
                    generation,
                    lease: int(&kv["lease"]).unwrap_or(0),
                }))
            }
            Err(e) if e.contains("no leader") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// etcd's JSON gateway writes 64-bit integers as strings.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The JSON body of an HTTP/1.0 reply; a gRPC error body becomes its
/// message.
fn parse_reply(raw: &[u8]) -> Result<Value, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("reply without a header")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("reply without a status")?;
    let body: Value = serde_json::from_slice(&raw[split + 4..])
        .map_err(|e| format!("HTTP {status}: body is not JSON: {e}"))?;
    if let Some(msg) = body.get("error").or(body.get("message")) {
        return Err(msg.as_str().unwrap_or("error").to_string());
    }
    if let Some(msg) = body["result"].get("error") {
        return Err(msg.to_string());
    }
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    Ok(body)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for ch in s.bytes() {
        let v = B64.iter().position(|&b| b == ch)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Run the election for SP `me` in `election` on its own threads: hold a
/// lease, campaign, and report what changes through `report`.
pub fn spawn(
    etcd: Etcd,
    election: String,
    me: String,
    report: impl Fn(Leadership) -> bool + Send + Sync + 'static,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("etcd".into())
        .spawn(move || loop {
            let lease = match etcd.grant(LEASE_TTL) {
                Ok(l) => l,
                Err(e) => {
                    if !report(Leadership::Unreachable(e)) {
                        return;
                    }
                    std::thread::sleep(TICK * 2);
                    continue;
                }
            };
            tracing::info!(%etcd, lease, "etcd lease granted; campaigning");
            // Campaign on a thread of its own: it blocks until elected.
            let (won_tx, won_rx) = mpsc::channel();
            {
                let (etcd, election, me) = (etcd.clone(), election.clone(), me.clone());
                let _ = std::thread::Builder::new()
                    .name("etcd-campaign".into())
                    .spawn(move || {
                        let _ = won_tx.send(etcd.campaign(&election, lease, &me));
                    });
            }
            let mut last: Option<Leadership> = None;
            loop {
                match etcd.keepalive(lease) {
                    Ok(ttl) if ttl > 0 => {}
                    Ok(_) => {
                        let _ = report(Leadership::LeaseLost(format!("lease {lease} expired")));
                        break;
                    }
                    Err(e) => {
                        // Not renewed: past the TTL the lease is gone, and
                        // a master must not count on it.
                        if !report(Leadership::LeaseLost(e)) {
                            return;
                        }
                        break;
                    }
                }
                if let Ok(Err(e)) = won_rx.try_recv() {
                    tracing::warn!("etcd campaign failed: {e}");
                    break;
                }
                let now = match etcd.leader(&election) {
                    Ok(Some(l)) => Leadership::Leader {
                        mine: l.lease == lease,
                        leader: l,
                    },
                    Ok(None) => Leadership::Vacant,
                    Err(e) => Leadership::Unreachable(e),
                };
                if last.as_ref() != Some(&now) {
                    if !report(now.clone()) {
                        return;
                    }
                    last = Some(now);
                }
                std::thread::sleep(TICK);
            }
            std::thread::sleep(TICK);
        })
        .map_err(|e| format!("cannot start the etcd thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "tierblk/lab/master", "sp-1"] {
            assert_eq!(unb64(&b64(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(b64(b"sp1"), "c3Ax");
        assert_eq!(b64(b"tb/master"), "dGIvbWFzdGVy");
        assert!(unb64("c3A*").is_none());
    }

    #[test]
    fn replies_parse_and_garbage_is_an_error() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ID\":\"42\",\"TTL\":\"3\"}";
        let v = parse_reply(ok).unwrap();
        assert_eq!(int(&v["ID"]), Some(42));
        let err = b"HTTP/1.0 200 OK\r\n\r\n{\"error\":\"election: no leader\",\"code\":2}";
        assert!(parse_reply(err).unwrap_err().contains("no leader"));
        for bad in [
            &b""[..],
            b"HTTP/1.0",
            b"HTTP/1.0 200 OK\r\n\r\n{",
            b"\r\n\r\n{}",
        ] {
            assert!(parse_reply(bad).is_err());
        }
        assert!("http://127.0.0.1:2379".parse::<Etcd>().is_ok());
        for bad in [
            "127.0.0.1:2379",
            "http://localhost:2379",
            "https://1.2.3.4:5",
        ] {
            assert!(bad.parse::<Etcd>().is_err(), "{bad}");
        }
    }
}
