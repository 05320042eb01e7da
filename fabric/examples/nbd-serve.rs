//! Serve image files over NBD: `nbd-serve ADDR NAME=PATH...` where ADDR is a
//! Unix socket path or `tcp:HOST:PORT`. Stops on end of standard input.
//! A manual testing aid (`RUST_LOG=debug` for a trace of every connection).

use std::io::Read;

use tierblk_fabric::{Export, NbdAddr, NbdServer};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{open_alu, Partition};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: nbd-serve ADDR NAME=PATH...");
        std::process::exit(2);
    }
    let addr = match args[0].strip_prefix("tcp:") {
        Some(a) => NbdAddr::Tcp(a.parse().expect("bad TCP address")),
        None => NbdAddr::Unix(args[0].clone().into()),
    };
    let exports = args[1..]
        .iter()
        .map(|spec| {
            let (name, path) = spec.split_once('=').expect("NAME=PATH");
            let alu = open_alu(path.as_ref()).expect("open image");
            let size = alu.metadata().expect("stat image").len();
            Export::new(name, size, move |ring: &LocalRing| {
                Ok(Partition::new(alu.clone(), 0, size, ring.clone()))
            })
            .multi_conn(true)
        })
        .collect();
    let server = NbdServer::start(&[addr], exports).expect("start server");
    eprintln!("serving on {:?}", server.addrs());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    server.shutdown();
}
