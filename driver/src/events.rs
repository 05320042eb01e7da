//! The daemon's event stream (spec [0168]–[0171]: failures and the changes
//! they cause are reported): volumes coming online or going offline, ALU and
//! leg failures, jobs starting and ending, snapshots, quiescence. Each event
//! is logged with tracing and kept as a JSON line in a ring of the latest
//! [`KEEP`], which `tierblk events` prints; `tierblk events --follow` streams
//! new ones as JSON lines.

use crate::clock;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Mutex;

/// Events kept for `tierblk events`.
pub const KEEP: usize = 256;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Unix seconds.
    pub time: u64,
    /// What happened, e.g. `volume-online`, `alu-failed`, `job-ended`.
    pub kind: String,
    pub volume: Option<String>,
    pub detail: String,
}

/// The ring of recent events and the followers' channels.
#[derive(Default)]
pub struct EventLog {
    recent: Mutex<VecDeque<EventView>>,
    followers: Mutex<Vec<mpsc::Sender<EventView>>>,
}

impl EventLog {
    /// Record an event: log it, keep it, send it to every follower (dropping
    /// those that went away).
    pub fn emit(&self, kind: &str, volume: Option<&str>, detail: String) {
        let e = EventView {
            time: clock::now(),
            kind: kind.to_string(),
            volume: volume.map(str::to_string),
            detail,
        };
        tracing::info!(event = %e.kind, volume = e.volume.as_deref().unwrap_or("-"), detail = %e.detail, "event");
        {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() == KEEP {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        self.followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| f.send(e.clone()).is_ok());
    }

    /// The kept events, oldest first.
    pub fn recent(&self) -> Vec<EventView> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// A channel receiving every event from now on.
    pub fn follow(&self) -> mpsc::Receiver<EventView> {
        let (tx, rx) = mpsc::channel();
        self.followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }
}

/// `HH:MM:SS kind volume: detail`, for people.
pub fn human(e: &EventView) -> String {
    let t = clock::utc(e.time);
    match &e.volume {
        Some(v) => format!("{t}  {:<16} {v}: {}", e.kind, e.detail),
        None => format!("{t}  {:<16} {}", e.kind, e.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_feeds_followers() {
        let log = EventLog::default();
        let rx = log.follow();
        let gone = log.follow();
        drop(gone);
        for i in 0..KEEP + 10 {
            log.emit("test", Some("v1"), format!("n{i}"));
        }
        let r = log.recent();
        assert_eq!(r.len(), KEEP);
        assert_eq!(r[0].detail, "n10");
        assert_eq!(rx.try_iter().count(), KEEP + 10);
        assert_eq!(
            log.followers.lock().unwrap().len(),
            1,
            "dead follower dropped"
        );
        assert!(human(&r[0]).contains("test") && human(&r[0]).contains("v1: n10"));
    }
}
