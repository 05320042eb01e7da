//! The daemon's control socket: root-only (SO_PEERCRED), one request line and
//! one reply line per connection, bounded in size and time so that a stuck or
//! malicious client can neither exhaust memory nor stall the daemon for long.

use crate::daemon::Daemon;
use crate::proto::{Envelope, Reply, MAX_LINE, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tracing::{debug, info, warn};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("control socket {0}: another tierblkd is already listening")]
    InUse(String),
    #[error("control socket {0}: {1}")]
    Io(String, std::io::Error),
}

/// Bind the control socket, replacing a stale one left by a crashed daemon.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let name = path.display().to_string();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ServerError::Io(name.clone(), e))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(name));
        }
        std::fs::remove_file(path).map_err(|e| ServerError::Io(name.clone(), e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| ServerError::Io(name.clone(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::Io(name, e))?;
    Ok(listener)
}

/// Serve requests until `stop` is set (a signal handler sets it and then
/// connects once to wake the accept).
pub fn serve(listener: UnixListener, daemon: &Mutex<Daemon>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => handle_conn(stream, daemon),
            Err(e) => warn!("control socket: accept failed: {e}"),
        }
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

fn handle_conn(mut stream: UnixStream, daemon: &Mutex<Daemon>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    // Read the request before judging the peer, so that a refused client
    // gets its reply instead of a broken pipe.
    let request = read_request(&stream);
    if let (Ok(env), Some(0)) = (&request, peer_uid(&stream)) {
        if matches!(env.request, crate::proto::Request::Events { follow: true }) {
            return follow_events(stream, daemon);
        }
    }
    let reply = match peer_uid(&stream) {
        Some(0) => request.and_then(|env| {
            debug!(request = ?env.request, "control request");
            daemon
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .handle(env.request)
        }),
        Some(uid) => {
            warn!(uid, "control socket: refused a non-root peer");
            Err("permission denied: the tierblk control API is root-only".to_string())
        }
        None => Err("permission denied: cannot identify the peer".to_string()),
    };
    let reply = match reply {
        Ok(p) => Reply::Ok(Box::new(p)),
        Err(e) => Reply::Error(e),
    };
    let mut line =
        serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
    line.push(b'\n');
    if let Err(e) = stream.write_all(&line) {
        debug!("control socket: peer went away before the reply: {e}");
    }
}

/// `events --follow`: the kept events, then every new one, one JSON line
/// each, on a thread of its own until the client goes away.
fn follow_events(mut stream: UnixStream, daemon: &Mutex<Daemon>) {
    // Under the daemon's lock no event is emitted: none is lost or doubled
    // between the kept ones and the channel.
    let (kept, rx) = {
        let d = daemon.lock().unwrap_or_else(|p| p.into_inner());
        let log = d.event_log();
        (log.recent(), log.follow())
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let spawned = std::thread::Builder::new()
        .name("events-follow".into())
        .spawn(move || {
            for e in kept.into_iter().chain(rx) {
                let Ok(mut line) = serde_json::to_vec(&e) else {
                    continue;
                };
                line.push(b'\n');
                if stream.write_all(&line).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        warn!("control socket: cannot start an events follower: {e}");
    }
}

fn read_request(stream: &UnixStream) -> Result<Envelope, String> {
    let mut line = String::new();
    BufReader::new(stream.take(MAX_LINE as u64 + 1))
        .read_line(&mut line)
        .map_err(|e| format!("bad request: {e}"))?;
    if line.len() > MAX_LINE {
        return Err(format!("bad request: longer than {MAX_LINE} bytes"));
    }
    let env: Envelope =
        serde_json::from_str(line.trim_end()).map_err(|e| format!("bad request: {e}"))?;
    if env.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} not supported (daemon speaks {PROTOCOL_VERSION}): use a matching tierblk",
            env.version
        ));
    }
    Ok(env)
}

/// Block SIGTERM/SIGINT in this thread (and every thread spawned after) and
/// turn them into a stop request on a dedicated thread.
pub fn install_signal_thread(socket: PathBuf, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                info!(signal = %sig, "stopping");
                stop.store(true, Ordering::SeqCst);
                let _ = UnixStream::connect(&socket);
            }
        })?;
    Ok(())
}
