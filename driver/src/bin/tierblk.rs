//! tierblk: the root-only admin CLI. Talks to tierblkd over its control socket.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tierblk::client;
use tierblk::proto::{AluView, LayoutSpec, Payload, Request, VolumeView, DEFAULT_SOCKET};
use tierblk::size::{format_size, parse_size};
use tierblk::table::render;

/// Administer tierblk: ALUs (disks, partitions, image files) and the volumes built on them.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// ALUs: the disks, partitions and image files volumes are made of.
    #[command(subcommand)]
    Alu(AluCmd),
    /// Volumes exposed as /dev/ublkbN.
    #[command(subcommand)]
    Vol(VolCmd),
}

#[derive(Subcommand, Debug)]
enum AluCmd {
    /// List every scanned ALU and whether this cluster owns it.
    List,
    /// Look again for ALUs that could not be opened before.
    Scan,
    /// Take ownership of an ALU: writes the metadata region (refuses a disk holding data unless --force).
    Claim {
        path: String,
        /// Claim even if a filesystem or partition table is found (destroys it).
        #[arg(long)]
        force: bool,
    },
    /// Give an unused ALU back: its metadata region is invalidated.
    Release { path: String },
    /// Show one ALU with its partitions.
    Show { path: String },
    /// Declare an ALU failed (for tests and administrators): mirror legs on it stop being used.
    Fail { path: String },
}

#[derive(Subcommand, Debug)]
enum VolCmd {
    /// Create a volume and bring it online.
    Create {
        name: String,
        /// Size, e.g. 512M or 10G (rounded up to whole MiB).
        #[arg(long)]
        size: String,
        /// Allocate from these ALUs, in this order (repeatable; default: every owned ALU).
        #[arg(long = "alu", value_name = "PATH")]
        alus: Vec<String>,
        /// linear (alias concat): pieces end to end; stripe: RAID0; mirror: RAID1; raid10: stripe over mirrors.
        #[arg(long, default_value = "linear", value_parser = ["linear", "concat", "stripe", "mirror", "raid10"])]
        layout: String,
        /// Stripe members (stripe, raid10; default 2).
        #[arg(long)]
        stripes: Option<u16>,
        /// Copies per mirror (mirror, raid10; 2-4, default 2).
        #[arg(long)]
        copies: Option<u16>,
        /// Stripe chunk, a power of two of at least 4K (default 64K).
        #[arg(long)]
        chunk: Option<String>,
    },
    /// List volumes.
    List,
    /// Show one volume with its segments.
    Show { name: String },
    /// Remove a volume (it must not be mounted); its space is freed.
    Remove { name: String },
    /// Expose a volume as /dev/ublkbN.
    Online { name: String },
    /// Stop exposing a volume (it must not be mounted); lasts until the daemon restarts.
    Offline { name: String },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(&cli) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("tierblk: {msg}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: &Cli) -> Result<(), String> {
    let request = match &cli.cmd {
        Cmd::Alu(AluCmd::List) => Request::AluList,
        Cmd::Alu(AluCmd::Scan) => Request::AluScan,
        Cmd::Alu(AluCmd::Claim { path, force }) => Request::AluClaim {
            path: path.clone(),
            force: *force,
        },
        Cmd::Alu(AluCmd::Release { path }) => Request::AluRelease { path: path.clone() },
        Cmd::Alu(AluCmd::Show { path }) => Request::AluShow { path: path.clone() },
        Cmd::Alu(AluCmd::Fail { path }) => Request::AluFail { path: path.clone() },
        Cmd::Vol(VolCmd::Create {
            name,
            size,
            alus,
            layout,
            stripes,
            copies,
            chunk,
        }) => Request::VolCreate {
            name: name.clone(),
            size: parse_size(size).map_err(|e| e.to_string())?,
            alus: alus.clone(),
            layout: LayoutSpec {
                kind: layout.clone(),
                stripes: *stripes,
                copies: *copies,
                chunk: chunk
                    .as_deref()
                    .map(|c| {
                        parse_size(c)
                            .map_err(|e| format!("--chunk: {e}"))
                            .and_then(|b| {
                                u32::try_from(b).map_err(|_| format!("--chunk {c}: too large"))
                            })
                    })
                    .transpose()?,
            },
        },
        Cmd::Vol(VolCmd::List) => Request::VolList,
        Cmd::Vol(VolCmd::Show { name }) => Request::VolShow { name: name.clone() },
        Cmd::Vol(VolCmd::Remove { name }) => Request::VolRemove { name: name.clone() },
        Cmd::Vol(VolCmd::Online { name }) => Request::VolOnline { name: name.clone() },
        Cmd::Vol(VolCmd::Offline { name }) => Request::VolOffline { name: name.clone() },
    };
    // Creating a volume writes metadata on several ALUs and starts a device.
    let payload =
        client::call(&cli.socket, request, Duration::from_secs(120)).map_err(|e| e.to_string())?;
    print!(
        "{}",
        if cli.json {
            json(&payload)
        } else {
            human(&payload)
        }
    );
    Ok(())
}

fn json(p: &Payload) -> String {
    let v = match p {
        Payload::Done(msg) => serde_json::json!({ "message": msg }),
        Payload::Alus(a) => serde_json::to_value(a).unwrap_or_default(),
        Payload::Alu(a) => serde_json::to_value(a).unwrap_or_default(),
        Payload::Volumes(v) => serde_json::to_value(v).unwrap_or_default(),
        Payload::Volume(v) => serde_json::to_value(v).unwrap_or_default(),
    };
    format!("{v}\n")
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

fn alu_rows(alus: &[AluView]) -> String {
    let rows: Vec<Vec<String>> = alus
        .iter()
        .map(|a| {
            vec![
                a.path.clone(),
                a.state.clone(),
                format_size(a.size),
                a.free.map(format_size).unwrap_or_else(|| "-".into()),
                a.partitions.len().to_string(),
                if a.boot_member {
                    "yes".into()
                } else {
                    "-".into()
                },
                opt(&a.uuid),
                opt(&a.detail),
            ]
        })
        .collect();
    render(
        &[
            "PATH", "STATE", "SIZE", "FREE", "PARTS", "BOOT", "UUID", "DETAIL",
        ],
        &rows,
    )
}

fn vol_rows(vols: &[VolumeView]) -> String {
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                format_size(v.size),
                v.layout.clone(),
                v.state.clone(),
                opt(&v.device),
                opt(&v.problem),
            ]
        })
        .collect();
    render(
        &["NAME", "SIZE", "LAYOUT", "STATE", "DEVICE", "PROBLEM"],
        &rows,
    )
}

fn human(p: &Payload) -> String {
    match p {
        Payload::Done(msg) => format!("{msg}\n"),
        Payload::Alus(a) => alu_rows(a),
        Payload::Alu(a) => {
            let mut s = alu_rows(std::slice::from_ref(a));
            if !a.partitions.is_empty() {
                let rows: Vec<Vec<String>> = a
                    .partitions
                    .iter()
                    .map(|p| vec![p.volume.clone(), p.start.to_string(), format_size(p.len)])
                    .collect();
                s.push('\n');
                s.push_str(&render(&["VOLUME", "START", "LENGTH"], &rows));
            }
            s
        }
        Payload::Volumes(v) => vol_rows(v),
        Payload::Volume(v) => {
            let mut s = vol_rows(std::slice::from_ref(v));
            let rows: Vec<Vec<String>> = v
                .segments
                .iter()
                .map(|g| {
                    let m = v.members.iter().find(|m| m.index == g.member);
                    vec![
                        g.member.to_string(),
                        m.map(|m| m.health.clone()).unwrap_or_default(),
                        opt(&g.path),
                        g.alu.clone(),
                        g.start.to_string(),
                        format_size(g.len),
                    ]
                })
                .collect();
            s.push('\n');
            s.push_str(&render(
                &["MEMBER", "HEALTH", "ALU", "UUID", "START", "LENGTH"],
                &rows,
            ));
            for m in v.members.iter().filter(|m| m.detail.is_some()) {
                s.push_str(&format!("member {}: {}\n", m.index, opt(&m.detail)));
            }
            s
        }
    }
}
