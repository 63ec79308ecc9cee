//! The `forwarder` command line: the agent, `check`, and the control subcommands (a thin
//! client of the control socket). Exit code 1 and a message on stderr for every error.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use crate::control::{self, Request, Response};

#[derive(Parser)]
#[command(
    name = "forwarder",
    version,
    about = "Border gateway for hosted and dedicated direct connections"
)]
pub struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, default_value = "/run/forwarder/forwarder.sock")]
    pub socket: PathBuf,
    /// Print the agent's answer as JSON (stable, documented in the README).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent (foreground).
    Agent {
        #[arg(long, default_value = "/etc/forwarder/forwarder.toml")]
        config: PathBuf,
    },
    /// Validate a config file; errors name the file, section and field.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Ports and their XDP mode, VIF states, route counts.
    Status,
    /// VIFs.
    Vif {
        #[command(subcommand)]
        command: VifCommand,
    },
    /// Border gateway route tables.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// What the data plane's table answers for an address.
    Lookup {
        #[arg(long)]
        gateway: String,
        address: IpAddr,
    },
    /// Traffic counters per VIF and attachment, drops by reason.
    Stats {
        #[arg(long, conflicts_with = "attachment")]
        vif: Option<String>,
        #[arg(long)]
        attachment: Option<String>,
        /// Show rates (packets and bits per second, drops per second), refreshed every second.
        #[arg(long)]
        watch: bool,
        /// With --watch: stop after this many refreshes.
        #[arg(long, requires = "watch", value_parser = clap::value_parser!(u32).range(1..))]
        count: Option<u32>,
    },
    /// Re-read the config file and apply the difference (a bad config changes nothing).
    Reload,
    /// BGP sessions with the customers' routers.
    Bgp {
        #[command(subcommand)]
        command: BgpCommand,
    },
    /// Copy a VIF's frames, both directions, as the data plane classified them (802.1Q tag
    /// included): pcap with -w (`-w -` for standard output, e.g. `| tcpdump -r -`), one line
    /// per frame otherwise. Stops after --count frames or on Ctrl-C.
    Capture {
        #[arg(long)]
        vif: String,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Write pcap to this file (`-`: standard output).
        #[arg(short = 'w', long = "write")]
        write: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `forwarder completions bash >
    /// /etc/bash_completion.d/forwarder`).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `forwarder man > /usr/share/man/man1/forwarder.1`.
    Man,
}

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "forwarder", out);
}

/// Writes the manual page.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out)
}

#[derive(Subcommand)]
pub enum BgpCommand {
    /// Every session: state, uptime, prefixes received/accepted/advertised, last error.
    Neighbors,
    /// Routes of a VIF's sessions: received (with the verdict of the import filter) or
    /// advertised.
    Routes {
        #[arg(long)]
        vif: String,
        /// What the peers sent, accepted or not and why (the default).
        #[arg(long, conflicts_with = "advertised")]
        received: bool,
        /// What we send to the peers.
        #[arg(long)]
        advertised: bool,
    },
}

#[derive(Subcommand)]
pub enum VifCommand {
    List,
    Show { name: String },
}

#[derive(Subcommand)]
pub enum RouteCommand {
    List {
        #[arg(long)]
        gateway: Option<String>,
    },
    /// Add a static route (persisted across agent restarts).
    Add {
        #[arg(long)]
        gateway: String,
        prefix: IpNet,
        /// A VIF or VPC attachment of the gateway.
        #[arg(long)]
        via: String,
    },
    /// Delete a static route added with `route add`.
    Del {
        #[arg(long)]
        gateway: String,
        prefix: IpNet,
    },
}

/// Runs a control subcommand against the agent.
pub fn control(cli: &Cli) -> ExitCode {
    let request = match &cli.command {
        Command::Status => Request::Status,
        Command::Vif {
            command: VifCommand::List,
        } => Request::VifList,
        Command::Vif {
            command: VifCommand::Show { name },
        } => Request::VifShow { name: name.clone() },
        Command::Route {
            command: RouteCommand::List { gateway },
        } => Request::RouteList {
            gateway: gateway.clone(),
        },
        Command::Route {
            command:
                RouteCommand::Add {
                    gateway,
                    prefix,
                    via,
                },
        } => Request::RouteAdd {
            gateway: gateway.clone(),
            prefix: *prefix,
            via: via.clone(),
        },
        Command::Route {
            command: RouteCommand::Del { gateway, prefix },
        } => Request::RouteDel {
            gateway: gateway.clone(),
            prefix: *prefix,
        },
        Command::Lookup { gateway, address } => Request::Lookup {
            gateway: gateway.clone(),
            address: *address,
        },
        Command::Stats {
            vif,
            attachment,
            watch,
            count,
        } => {
            let request = Request::Stats {
                vif: vif.clone(),
                attachment: attachment.clone(),
            };
            if *watch {
                return watch_stats(cli, &request, *count);
            }
            request
        }
        Command::Reload => Request::Reload,
        Command::Bgp {
            command: BgpCommand::Neighbors,
        } => Request::BgpNeighbors,
        Command::Bgp {
            command: BgpCommand::Routes {
                vif, advertised, ..
            },
        } => Request::BgpRoutes {
            vif: vif.clone(),
            advertised: *advertised,
        },
        Command::Capture { vif, count, write } => {
            return capture(cli, vif, *count, write.as_deref());
        }
        Command::Agent { .. }
        | Command::Check { .. }
        | Command::Completions { .. }
        | Command::Man => {
            return ExitCode::FAILURE;
        }
    };
    match control::call(&cli.socket, &request) {
        Ok(Response { ok: true, data, .. }) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
            } else {
                print!("{}", render(&request, &data));
            }
            ExitCode::SUCCESS
        }
        Ok(Response { error, .. }) => {
            eprintln!(
                "error: {}",
                error.unwrap_or_else(|| "the agent refused".into())
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `forwarder capture`: starts the capture, then copies the pcap stream to `write` or
/// prints a line per frame.
fn capture(cli: &Cli, vif: &str, count: Option<u64>, write: Option<&std::path::Path>) -> ExitCode {
    use std::io::{Read as _, Write as _};
    let request = Request::Capture {
        vif: vif.to_owned(),
        count,
    };
    let (answer, mut stream) = match control::call_stream(&cli.socket, &request) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !answer.ok {
        eprintln!(
            "error: {}",
            answer.error.unwrap_or_else(|| "the agent refused".into())
        );
        return ExitCode::FAILURE;
    }
    let result = match write {
        Some(path) => {
            let mut out: Box<dyn std::io::Write> = if path.as_os_str() == "-" {
                Box::new(std::io::stdout())
            } else {
                match std::fs::File::create(path) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        eprintln!("error: {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
            };
            // Copied as it comes, so that an interrupted capture leaves a readable file.
            let mut buf = [0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if let Err(e) = out.write_all(&buf[..n]).and_then(|()| out.flush()) {
                            break Err(e);
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
        }
        None => {
            eprintln!("capturing {vif} (Ctrl-C to stop)");
            let mut header = [0u8; 24];
            let mut frames = stream.read_exact(&mut header);
            while frames.is_ok() {
                let mut rec = [0u8; 16];
                if stream.read_exact(&mut rec).is_err() {
                    break;
                }
                let word =
                    |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
                let (secs, nanos, caplen, len) = (word(0), word(4), word(8), word(12));
                let mut data = vec![0u8; caplen as usize];
                frames = stream.read_exact(&mut data);
                if frames.is_err() {
                    break;
                }
                println!("{}", describe_frame(secs, nanos, len, &data));
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One captured frame in a line: time, length, VLAN, addresses.
fn describe_frame(secs: u32, nanos: u32, len: u32, data: &[u8]) -> String {
    let mac = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut out = format!("{secs}.{nanos:09} {len:>5} bytes");
    if data.len() >= 14 {
        out += &format!(" {} > {}", mac(&data[6..12]), mac(&data[0..6]));
        let mut ethertype = u16::from_be_bytes([data[12], data[13]]);
        let mut l3 = 14;
        if ethertype == 0x8100 && data.len() >= 18 {
            out += &format!(
                " vlan {}",
                u16::from_be_bytes([data[14], data[15]]) & 0x0fff
            );
            ethertype = u16::from_be_bytes([data[16], data[17]]);
            l3 = 18;
        }
        match ethertype {
            0x0800 if data.len() >= l3 + 20 => {
                let ip = |o: usize| {
                    std::net::Ipv4Addr::new(data[o], data[o + 1], data[o + 2], data[o + 3])
                };
                out += &format!(" {} > {} proto {}", ip(l3 + 12), ip(l3 + 16), data[l3 + 9]);
            }
            0x0806 => out += " arp",
            other => out += &format!(" ethertype 0x{other:04x}"),
        }
    }
    out
}

/// Per-second rates between two `stats` answers taken `seconds` apart.
fn rates(before: &serde_json::Value, now: &serde_json::Value, seconds: f64) -> serde_json::Value {
    let delta = |a: &serde_json::Value, b: &serde_json::Value| {
        b.as_u64()
            .unwrap_or(0)
            .saturating_sub(a.as_u64().unwrap_or(0)) as f64
            / seconds
    };
    let section = |name: &str| -> Vec<serde_json::Value> {
        now[name]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                let old = before[name]
                    .as_array()
                    .and_then(|a| a.iter().find(|e| e["name"] == entry["name"]))
                    .cloned()
                    .unwrap_or_default();
                serde_json::json!({
                    "name": entry["name"],
                    "rx_pps": delta(&old["rx_packets"], &entry["rx_packets"]),
                    "rx_bps": delta(&old["rx_bytes"], &entry["rx_bytes"]) * 8.0,
                    "tx_pps": delta(&old["tx_packets"], &entry["tx_packets"]),
                    "tx_bps": delta(&old["tx_bytes"], &entry["tx_bytes"]) * 8.0,
                })
            })
            .collect()
    };
    let drops: serde_json::Map<String, serde_json::Value> = now["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), serde_json::json!(delta(&before["drops"][k], v))))
        .collect();
    serde_json::json!({
        "interval_seconds": seconds,
        "vifs": section("vifs"),
        "attachments": section("attachments"),
        "drops_per_second": drops,
    })
}

/// A rate for people: 1.2k, 3.4M, 5.6G.
fn si(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn render_rates(rates: &serde_json::Value) -> String {
    let mut out = String::new();
    for section in ["vifs", "attachments"] {
        let rows: Vec<Vec<String>> = rates[section]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let mut row = vec![e["name"].as_str().unwrap_or_default().to_owned()];
                for k in ["rx_pps", "rx_bps", "tx_pps", "tx_bps"] {
                    row.push(si(e[k].as_f64().unwrap_or(0.0)));
                }
                row
            })
            .collect();
        if !rows.is_empty() {
            out += &format!("{section}:\n");
            out += &table(
                &["NAME", "RX PKT/S", "RX BIT/S", "TX PKT/S", "TX BIT/S"],
                &rows,
            );
        }
    }
    let drops: Vec<String> = rates["drops_per_second"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_f64().unwrap_or(0.0) > 0.0)
        .map(|(k, v)| format!("  {k:<22} {}/s", si(v.as_f64().unwrap_or(0.0))))
        .collect();
    out += "drops:";
    if drops.is_empty() {
        out += " none\n";
    } else {
        out += "\n";
        out += &drops.join("\n");
        out += "\n";
    }
    out
}

/// `stats --watch`: rates from one sample to the next, every second (`count` times, or until
/// interrupted). On a terminal the screen is redrawn; otherwise each refresh follows the last
/// (`--json`: one JSON object per line).
fn watch_stats(cli: &Cli, request: &Request, count: Option<u32>) -> ExitCode {
    use std::io::IsTerminal as _;
    let sample = || match control::call(&cli.socket, request) {
        Ok(Response { ok: true, data, .. }) => Ok((std::time::Instant::now(), data)),
        Ok(Response { error, .. }) => Err(error.unwrap_or_else(|| "the agent refused".into())),
        Err(e) => Err(e.to_string()),
    };
    let terminal = std::io::stdout().is_terminal() && !cli.json;
    let mut last = match sample() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = 0u32;
    while count.is_none_or(|c| shown < c) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = match sample() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let seconds = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        let rates = rates(&last.1, &now.1, seconds);
        if cli.json {
            println!("{rates}");
        } else if terminal {
            print!("\x1b[2J\x1b[H{}", render_rates(&rates));
        } else {
            println!("{}", render_rates(&rates));
        }
        last = now;
        shown += 1;
    }
    ExitCode::SUCCESS
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn render(request: &Request, data: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_string) => {
            let names: Vec<&str> = items.iter().filter_map(serde_json::Value::as_str).collect();
            if names.is_empty() {
                "-".into()
            } else {
                names.join("+")
            }
        }
        other => other.to_string(),
    };
    let rows = |items: &serde_json::Value, keys: &[&str]| -> Vec<Vec<String>> {
        items.as_array().map_or_else(Vec::new, |a| {
            a.iter()
                // "a/b" reads a nested field.
                .map(|i| {
                    keys.iter()
                        .map(|k| text(k.split('/').fold(i, |v, part| &v[part])))
                        .collect()
                })
                .collect()
        })
    };
    let vif_keys = [
        "name",
        "connection",
        "vlan",
        "border_gateway",
        "routing",
        "state",
    ];
    let counter_keys = ["name", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes"];
    match request {
        Request::Status => {
            let mut out = format!(
                "uptime {}s, config {}\n\nports:\n",
                text(&data["uptime_seconds"]),
                text(&data["config"])
            );
            out += &table(
                &["NAME", "ROLE", "IFINDEX", "XDP", "UP"],
                &rows(
                    &data["ports"],
                    &["name", "role", "ifindex", "xdp_mode", "up"],
                ),
            );
            out += "\nvifs:\n";
            out += &table(
                &["NAME", "CONNECTION", "VLAN", "GATEWAY", "ROUTING", "STATE"],
                &rows(&data["vifs"], &vif_keys),
            );
            out += "\nborder gateways:\n";
            out += &table(
                &[
                    "NAME",
                    "ROUTES",
                    "SELECTED",
                    "INSTALLED",
                    "NOT INSTALLED",
                    "ROUTE MAP FULL",
                ],
                &rows(
                    &data["gateways"],
                    &[
                        "name",
                        "routes",
                        "selected",
                        "installed",
                        "not_installed",
                        "route_map_full",
                    ],
                ),
            );
            if data["attachments"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                out += "\nattachments:\n";
                out += &table(
                    &[
                        "NAME",
                        "REMOTE VTEP",
                        "UNDERLAY",
                        "NEXT HOP MAC",
                        "MTU",
                        "WHY FIB",
                    ],
                    &rows(
                        &data["attachments"],
                        &[
                            "name",
                            "remote_vtep",
                            "underlay",
                            "next_hop_mac",
                            "mtu",
                            "fib_reason",
                        ],
                    ),
                );
            }
            out += "\nmaps:\n";
            for map in ["routes", "routes6", "routes24", "next_hops", "vifs"] {
                let usage = &data["maps"][map];
                out += &format!(
                    "  {map:<10} {} of {}\n",
                    text(&usage["used"]),
                    text(&usage["capacity"])
                );
            }
            out
        }
        Request::VifList => table(
            &["NAME", "CONNECTION", "VLAN", "GATEWAY", "ROUTING", "STATE"],
            &rows(data, &vif_keys),
        ),
        Request::VifShow { .. } => {
            let mut out = String::new();
            for k in [
                "name",
                "id",
                "connection",
                "vlan",
                "border_gateway",
                "routing",
                "state",
                "control_netns",
                "control_interface",
                "mac",
            ] {
                out += &format!("{k:<18} {}\n", text(&data[k]));
            }
            out += "peers:\n";
            out += &table(
                &["CLOUD", "CLIENT", "CLIENT MAC"],
                &rows(
                    &data["peers"],
                    &["cloud_address", "client_address", "client_mac"],
                ),
            );
            out
        }
        Request::RouteList { .. } => table(
            &[
                "GATEWAY",
                "PREFIX",
                "SOURCE",
                "NEXT HOP",
                "INSTALLED",
                "REASON",
                "MULTIPATH",
            ],
            &rows(
                data,
                &[
                    "gateway",
                    "prefix",
                    "source",
                    "next_hop",
                    "installed",
                    "reason",
                    "multipath",
                ],
            ),
        ),
        Request::Lookup { .. } => {
            let mut out = format!(
                "{} in {}: {}\n",
                text(&data["address"]),
                text(&data["gateway"]),
                if data["next_hop_id"].is_null() {
                    "no route".to_owned()
                } else {
                    format!(
                        "next hop {} ({})",
                        text(&data["next_hop_id"]),
                        text(&data["next_hop"])
                    )
                }
            );
            for (i, m) in data["members"].as_array().into_iter().flatten().enumerate() {
                out += &format!(
                    "  member {i}: next hop {} ({})\n",
                    text(&m["next_hop_id"]),
                    text(&m["next_hop"])
                );
            }
            out
        }
        Request::Stats { .. } => {
            let mut out = String::new();
            if data["vifs"].as_array().is_some_and(|a| !a.is_empty()) {
                out += "vifs:\n";
                out += &table(
                    &[
                        "NAME",
                        "RX PACKETS",
                        "RX BYTES",
                        "TX PACKETS",
                        "TX BYTES",
                        "CTL LIMITED",
                        "SRC DROPPED",
                        "TOO BIG",
                    ],
                    &rows(
                        &data["vifs"],
                        &[
                            "name",
                            "rx_packets",
                            "rx_bytes",
                            "tx_packets",
                            "tx_bytes",
                            "control_limited",
                            "source_check_dropped",
                            "too_big",
                        ],
                    ),
                );
            }
            if data["attachments"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                out += "attachments:\n";
                out += &table(
                    &["NAME", "RX PACKETS", "RX BYTES", "TX PACKETS", "TX BYTES"],
                    &rows(&data["attachments"], &counter_keys),
                );
            }
            for section in ["drops", "passes"] {
                out += &format!("{section}:\n");
                if let Some(map) = data[section].as_object() {
                    for (k, v) in map {
                        out += &format!("  {k:<22} {}\n", text(v));
                    }
                }
            }
            out
        }
        Request::BgpNeighbors => table(
            &[
                "VIF",
                "PEER",
                "REMOTE",
                "STATE",
                "UPTIME",
                "RECEIVED",
                "ACCEPTED",
                "ADVERTISED",
                "STALE",
                "BFD",
                "LAST ERROR",
            ],
            &rows(
                data,
                &[
                    "vif",
                    "peer",
                    "remote_addr",
                    "state",
                    "uptime_seconds",
                    "prefixes_received",
                    "prefixes_accepted",
                    "prefixes_advertised",
                    "stale_routes",
                    "bfd/state",
                    "last_error",
                ],
            ),
        ),
        Request::BgpRoutes {
            advertised: true, ..
        } => table(&["PEER", "PREFIX"], &rows(data, &["peer", "prefix"])),
        Request::BgpRoutes {
            advertised: false, ..
        } => table(
            &[
                "PEER", "PREFIX", "VERDICT", "PREF", "AS PATH", "MED", "BEST", "WHY",
            ],
            &rows(
                data,
                &[
                    "peer",
                    "prefix",
                    "verdict",
                    "local_pref",
                    "as_path_len",
                    "med",
                    "best",
                    "why",
                ],
            ),
        ),
        Request::Capture { .. } => String::new(),
        Request::RouteAdd { .. } | Request::RouteDel { .. } | Request::Reload => {
            format!("{}\n", text(data))
        }
    }
}
