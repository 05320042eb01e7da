//! The admin CLI's side of the control API: one connection per request.

use crate::proto::{Envelope, Payload, Reply, Request, MAX_LINE, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("daemon not running: no control socket at {0}")]
    NotRunning(String),
    #[error("control socket {0}: permission denied (the control API is root-only)")]
    Denied(String),
    #[error("control socket {0}: {1}")]
    Io(String, std::io::Error),
    #[error("control socket {0}: daemon closed the connection without a reply")]
    NoReply(String),
    #[error("control socket {0}: malformed reply: {1}")]
    Malformed(String, String),
    /// The daemon refused the request; the message is the daemon's.
    #[error("{0}")]
    Refused(String),
}

/// Send one request and wait for its reply. `timeout` bounds each read and write.
pub fn call(socket: &Path, request: Request, timeout: Duration) -> Result<Payload, ClientError> {
    let name = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(name.clone())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(name.clone()),
        _ => ClientError::Io(name.clone(), e),
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| ClientError::Io(name.clone(), e))?;
    let env = Envelope {
        version: PROTOCOL_VERSION,
        request,
    };
    let mut line = serde_json::to_vec(&env).expect("requests always serialize");
    line.push(b'\n');
    if let Err(e) = stream.write_all(&line) {
        // The daemon may have answered and closed early (a refusal): its
        // reply, if any, says more than the broken pipe.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(ClientError::Io(name, e));
        }
    }
    let mut reply = String::new();
    // Replies can be large (many volumes) but are bounded like requests are, times a margin.
    BufReader::new(stream.take((MAX_LINE * 64) as u64))
        .read_line(&mut reply)
        .map_err(|e| ClientError::Io(name.clone(), e))?;
    if reply.is_empty() {
        return Err(ClientError::NoReply(name));
    }
    match serde_json::from_str::<Reply>(&reply) {
        Ok(Reply::Ok(p)) => Ok(*p),
        Ok(Reply::Error(msg)) => Err(ClientError::Refused(msg)),
        Err(e) => Err(ClientError::Malformed(name, e.to_string())),
    }
}
