//! Per-volume I/O statistics: counts, bytes, errors and latency histograms
//! per operation, for `tierblk stats` and (opt-in) Prometheus.
//!
//! Each ublk queue thread owns its [`QueueStats`] (on cache lines of its own)
//! and is its only writer: a request costs a few relaxed load/store pairs,
//! no atomic read-modify-write, no lock, no allocation, and no clock read of
//! its own: the queue loop reads the clock once per round (between two polls
//! of its ring), and a request's latency runs from the round that received
//! it to the round that completed it, coarser than a clock read per request
//! by at most one round's work.
//! Readers (the daemon, the metrics endpoint) sum the queues of a volume
//! with relaxed loads; a sum may be a few requests behind, never torn per
//! counter.
//!
//! Latency buckets are powers of two of microseconds: bucket `i` counts
//! requests that took less than `2^i` µs (and at least `2^(i-1)`); the last
//! one is open-ended.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The operations counted, in this order.
pub const OPS: [&str; 5] = ["read", "write", "flush", "discard", "write_zeroes"];
/// Latency buckets: `< 1 µs` (bucket 0) up to `< 2^30 µs`, then the rest.
pub const BUCKETS: usize = 32;

/// One queue's counters (single writer: its queue thread).
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct QueueStats {
    ops: [AtomicU64; OPS.len()],
    bytes: [AtomicU64; OPS.len()],
    errors: [AtomicU64; OPS.len()],
    latency: [[AtomicU64; BUCKETS]; OPS.len()],
    /// The queue's tag I/O buffers, `(address, length)`, set once at its
    /// start (for `tierblk stats`' resident count, `ublk::resident_bytes`).
    buffers: OnceLock<Vec<(usize, usize)>>,
}

/// Add `n` to a counter only this thread writes (no read-modify-write).
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// The bucket of a latency.
pub fn bucket(elapsed: Duration) -> usize {
    let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
    ((u64::BITS - us.leading_zeros()) as usize).min(BUCKETS - 1)
}

/// Upper bound of bucket `i` in microseconds (`None` for the open last one).
pub fn bucket_bound_us(i: usize) -> Option<u64> {
    (i + 1 < BUCKETS).then(|| 1u64 << i)
}

impl QueueStats {
    /// Record the queue's tag I/O buffers (once, at its start).
    pub fn set_buffers(&self, spans: Vec<(usize, usize)>) {
        let _ = self.buffers.set(spans);
    }

    /// Count one request of operation `op` (an index into [`OPS`]).
    pub fn record(&self, op: usize, bytes: u64, ok: bool, elapsed: Duration) {
        let Some(ops) = self.ops.get(op) else { return };
        bump(ops, 1);
        if ok {
            bump(&self.bytes[op], bytes);
        } else {
            bump(&self.errors[op], 1);
        }
        bump(&self.latency[op][bucket(elapsed)], 1);
    }
}

/// The queues of one exposed volume.
#[derive(Debug, Default)]
pub struct VolumeStats {
    queues: Mutex<Vec<Arc<QueueStats>>>,
}

impl VolumeStats {
    /// The counters of a new queue.
    pub fn register(&self) -> Arc<QueueStats> {
        let q = Arc::new(QueueStats::default());
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(q.clone());
        q
    }

    /// Every queue's tag I/O buffers, `(address, length)`.
    pub fn buffers(&self) -> Vec<(usize, usize)> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|q| q.buffers.get().into_iter().flatten().copied())
            .collect()
    }

    /// The sum over the queues.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for q in self.queues.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for op in 0..OPS.len() {
                let o = &mut t.ops[op];
                o.count += q.ops[op].load(Relaxed);
                o.bytes += q.bytes[op].load(Relaxed);
                o.errors += q.errors[op].load(Relaxed);
                for (b, c) in o.latency.iter_mut().zip(&q.latency[op]) {
                    *b += c.load(Relaxed);
                }
            }
        }
        t
    }
}

/// One operation's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpTotals {
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Requests per latency bucket (see the module documentation).
    pub latency: [u64; BUCKETS],
}

impl OpTotals {
    /// The upper bound (µs) of the bucket holding quantile `q` (0..=1) of the
    /// latencies; `None` without requests. The open last bucket reports its
    /// lower bound.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_bound_us(i).unwrap_or(1 << (BUCKETS - 2)));
            }
        }
        None
    }
}

/// A volume's totals, per operation (in [`OPS`] order).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub ops: [OpTotals; OPS.len()],
}

/// Exposed volumes' statistics by name, shared with the metrics endpoint.
pub type Registry = Arc<Mutex<BTreeMap<String, Arc<VolumeStats>>>>;

/// Prometheus text exposition (version 0.0.4) of `volumes`.
pub fn prometheus(volumes: &[(String, Totals)]) -> String {
    let mut out = String::new();
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    for (metric, help) in [
        (
            "tierblk_io_requests_total",
            "Requests served per volume and operation.",
        ),
        (
            "tierblk_io_bytes_total",
            "Bytes moved by successful requests.",
        ),
        ("tierblk_io_errors_total", "Requests that failed."),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for (v, t) in volumes {
            for (op, o) in OPS.iter().zip(&t.ops) {
                let val = match metric {
                    "tierblk_io_requests_total" => o.count,
                    "tierblk_io_bytes_total" => o.bytes,
                    _ => o.errors,
                };
                let _ = writeln!(out, "{metric}{{volume=\"{}\",op=\"{op}\"}} {val}", esc(v));
            }
        }
    }
    let m = "tierblk_io_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {m} Request latency from the ublk queue's view.\n# TYPE {m} histogram"
    );
    for (v, t) in volumes {
        for (op, o) in OPS.iter().zip(&t.ops) {
            let mut cum = 0;
            for (i, c) in o.latency.iter().enumerate() {
                cum += c;
                if let Some(us) = bucket_bound_us(i) {
                    let _ = writeln!(
                        out,
                        "{m}_bucket{{volume=\"{}\",op=\"{op}\",le=\"{}\"}} {cum}",
                        esc(v),
                        us as f64 / 1e6
                    );
                }
            }
            let _ = writeln!(
                out,
                "{m}_bucket{{volume=\"{}\",op=\"{op}\",le=\"+Inf\"}} {cum}\n{m}_count{{volume=\"{}\",op=\"{op}\"}} {cum}",
                esc(v),
                esc(v)
            );
        }
    }
    out
}

/// Serve `GET /metrics` on `listener` from `registry`, one connection at a
/// time on this thread, forever. Anything else gets a 404; a client that
/// sends nothing within a second is dropped.
pub fn serve_metrics(listener: std::net::TcpListener, registry: Registry) {
    use std::io::{BufRead, BufReader, Read, Write};
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let Ok(reader) = conn.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(reader.take(8192));
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        // Drain the headers (bounded by `take` above).
        let mut h = String::new();
        while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
            h.clear();
        }
        let mut parts = line.split_whitespace();
        let (status, body) = match (parts.next(), parts.next()) {
            (Some("GET"), Some("/metrics")) => {
                let vols: Vec<(String, Totals)> = registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(n, s)| (n.clone(), s.totals()))
                    .collect();
                ("200 OK", prometheus(&vols))
            }
            _ => ("404 Not Found", "only GET /metrics is served here\n".into()),
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(bucket(Duration::from_nanos(500)), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(4)), 3);
        assert_eq!(bucket(Duration::from_secs(100_000)), BUCKETS - 1);
        assert_eq!(bucket_bound_us(0), Some(1));
        assert_eq!(bucket_bound_us(3), Some(8));
        assert_eq!(bucket_bound_us(BUCKETS - 1), None);
    }

    #[test]
    fn queues_sum_and_quantiles_follow_the_histogram() {
        let v = VolumeStats::default();
        let (a, b) = (v.register(), v.register());
        for _ in 0..90 {
            a.record(0, 4096, true, Duration::from_micros(3));
        }
        for _ in 0..10 {
            b.record(0, 4096, true, Duration::from_micros(100));
        }
        b.record(1, 512, false, Duration::from_micros(1));
        b.record(9, 1, true, Duration::ZERO); // unknown op: ignored
        let t = v.totals();
        let r = &t.ops[0];
        assert_eq!((r.count, r.bytes, r.errors), (100, 409_600, 0));
        assert_eq!(r.quantile_us(0.5), Some(4));
        assert_eq!(r.quantile_us(0.9), Some(4));
        assert_eq!(r.quantile_us(0.99), Some(128));
        let w = &t.ops[1];
        assert_eq!((w.count, w.bytes, w.errors), (1, 0, 1));
        assert_eq!(t.ops[2].quantile_us(0.5), None);
    }

    #[test]
    fn prometheus_text_has_counters_and_cumulative_buckets() {
        let v = VolumeStats::default();
        let q = v.register();
        q.record(0, 4096, true, Duration::from_micros(3));
        q.record(0, 4096, true, Duration::from_micros(300));
        let text = prometheus(&[("db\"1".into(), v.totals())]);
        assert!(text.contains("# TYPE tierblk_io_requests_total counter"));
        assert!(text.contains("tierblk_io_requests_total{volume=\"db\\\"1\",op=\"read\"} 2"));
        assert!(text.contains("tierblk_io_bytes_total{volume=\"db\\\"1\",op=\"read\"} 8192"));
        assert!(text.contains("le=\"0.000004\"} 1"), "{text}");
        assert!(text.contains("le=\"0.000512\"} 2"), "{text}");
        assert!(text.contains("op=\"read\",le=\"+Inf\"} 2"));
        assert!(text.contains("tierblk_io_latency_seconds_count{volume=\"db\\\"1\",op=\"read\"} 2"));
        // Every sample line is `name{labels} value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, val) = l.rsplit_once(' ').unwrap();
            val.parse::<u64>().unwrap_or_else(|_| panic!("{l}"));
        }
    }
}
