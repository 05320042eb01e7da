//! A fabric path that a test can break: forwards every connection accepted
//! on a Unix socket to another Unix socket, byte for byte, until it is
//! killed — then every connection through it is gone at once, as when a
//! network path dies. Used by tests/vm/cluster.sh to break one of two paths
//! to a peer SP under load. Not installed.
//!
//! Usage: faultproxy LISTEN_SOCKET TARGET_SOCKET

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;

fn pump(mut from: UnixStream, mut to: UnixStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target] = &args[..] else {
        eprintln!("usage: faultproxy LISTEN_SOCKET TARGET_SOCKET");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(listen);
    let l = match UnixListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("faultproxy: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        let Ok(t) = UnixStream::connect(target) else {
            continue; // Dropping `c` closes it: the target is down too.
        };
        let (Ok(c2), Ok(t2)) = (c.try_clone(), t.try_clone()) else {
            continue;
        };
        thread::spawn(move || pump(c, t));
        thread::spawn(move || pump(t2, c2));
    }
}
