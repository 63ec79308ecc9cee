//! What an operator's tools see (issue: operating it): shell completions and the manual page,
//! the systemd unit as systemd-analyze reads it, the agent's readiness and watchdog on a
//! NOTIFY_SOCKET, `stats --watch`.

mod common;

use std::{os::unix::net::UnixDatagram, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use common::{Topology, VPC_HOST, cli_json, wait_for};
use forwarder_tests::{fixture::Vif, topology::Launch};

fn forwarder(args: &[&str]) -> Result<String> {
    let out = Command::new(common::bin()).args(args).output()?;
    ensure!(
        out.status.success(),
        "forwarder {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn completions_for_bash_zsh_and_fish_and_a_manual_page() -> Result<()> {
    let dir = forwarder_tests::topology::TempDir::new("completions")?;
    for (shell, marker) in [
        ("bash", "complete -F _forwarder"),
        ("zsh", "#compdef forwarder"),
        ("fish", "complete -c forwarder"),
    ] {
        let script = forwarder(&["completions", shell])?;
        ensure!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in ["reload", "route", "lookup", "neighbors", "completions"] {
            ensure!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        let path = dir.0.join(format!("forwarder.{shell}"));
        std::fs::write(&path, &script)?;
        println!("{shell}: {} lines", script.lines().count());
    }
    // Bash reads it without a syntax error and registers the completion.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p forwarder",
            dir.0.join("forwarder.bash").display()
        ))
        .output()?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_forwarder"),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = forwarder(&["man"])?;
    ensure!(page.contains(".TH forwarder 1"), "{page}");
    for sub in ["agent", "check", "reload", "stats"] {
        ensure!(page.contains(sub), "the manual page lacks {sub}");
    }
    Ok(())
}

#[test]
fn the_systemd_unit_verifies() -> Result<()> {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../contrib/systemd/forwarder.service"),
    )?;
    ensure!(
        unit.contains("Type=notify") && unit.contains("WatchdogSec="),
        "{unit}"
    );
    // As installed: the binary where the unit says it is (here: the one just built).
    let dir = forwarder_tests::topology::TempDir::new("unit")?;
    let path = dir.0.join("forwarder.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/forwarder",
            &common::bin().display().to_string(),
        ),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .context("systemd-analyze (package systemd)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
    Ok(())
}

#[test]
fn ready_and_watchdog_on_the_notify_socket_and_stats_watch_rates() -> Result<()> {
    let t = Topology::new("notify")?;
    let _customer = t.customer_router()?;
    t.write_fixture(&t.static_fixture())?;
    // The service manager's side: a datagram socket of our own.
    let path = t.dir.0.join("notify.sock");
    let manager = UnixDatagram::bind(&path)?;
    manager.set_read_timeout(Some(Duration::from_secs(20)))?;
    let socket = path.display().to_string();
    let child = t.spawn_agent_env(
        common::bin(),
        Launch::Nsenter,
        "info",
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "1000000")],
    )?;
    let mut agent = t.wait_agent(common::bin(), child)?;
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while !messages.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = manager
            .recv(&mut buf)
            .with_context(|| format!("no notification; got {messages:?}\n{}", agent.log_text()))?;
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    println!("notifications: {messages:?}");
    let ready = messages
        .iter()
        .position(|m| m.contains("READY=1"))
        .context("no READY=1")?;
    ensure!(
        messages[ready].contains("STATUS=1 VIFs"),
        "{}",
        messages[ready]
    );
    // READY=1 came when the agent answered: its socket works and its ports are attached.
    let status = cli_json(&t.socket(), &["status"])?;
    ensure!(
        status["ports"].as_array().is_some_and(|p| p.len() == 3),
        "{status}"
    );

    t.wait_available(common::bin(), "vif-100")?;
    let pinger = {
        let idc = t.idc.name().to_owned();
        std::thread::spawn(move || {
            Command::new("ip")
                .args([
                    "netns", "exec", &idc, "ping", "-q", "-c", "40", "-i", "0.05", VPC_HOST,
                ])
                .output()
        })
    };
    let out = common::cli(&t.socket(), &["--json", "stats", "--watch", "--count", "2"])?;
    pinger
        .join()
        .map_err(|_| anyhow::anyhow!("ping thread"))??;
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    println!("stats --watch: {text}");
    ensure!(lines.len() == 2, "{text}");
    let rx = lines[1]["vifs"][0]["rx_pps"].as_f64().unwrap_or(0.0);
    ensure!(
        lines[1]["vifs"][0]["name"] == "vif-100" && rx > 5.0,
        "rates: {}",
        lines[1]
    );

    // SIGTERM: the manager hears STOPPING=1.
    ensure!(agent.terminate()?.success(), "agent exit");
    let mut stopping = false;
    while let Ok(n) = manager.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    ensure!(stopping, "no STOPPING=1");
    Ok(())
}

/// A process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill().and_then(|()| self.0.wait().map(drop)) {
            eprintln!("warning: stopping a helper process: {e}");
        }
    }
}

/// `promtool query instant` inside `ns`: the first sample's value, if any.
fn prom_query(ns: &str, query: &str) -> Option<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "promtool",
            "query",
            "instant",
            "http://127.0.0.1:9090",
            query,
        ])
        .output()
        .ok()?;
    // `NAME{LABELS} => VALUE @[TIME]`
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split(" => ").nth(1)?.split(" @").next()?.parse().ok())
}

#[test]
fn debians_prometheus_scrapes_the_agent() -> Result<()> {
    let t = Topology::new("prom")?;
    let _customer = t.customer_router()?;
    t.write_fixture(
        &t.static_fixture()
            .agent("metrics_listen", "\"127.0.0.1:9330\"")
            // A BGP VIF whose router is not there: its session's metrics still exist.
            .vif(
                Vif::bgp("vif-200", "hc-1", 200, "bgw-1", 65002)
                    .peer("169.254.30.2", "169.254.30.1"),
            ),
    )?;
    let agent = t.start_agent(common::bin())?;
    t.wait_available(common::bin(), "vif-100")?;

    // The exposition as Prometheus' own linter reads it.
    let fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9330/metrics').read().decode(), end='')";
    let exposition = t.gw.exec(&["/usr/bin/python3", "-c", fetch])?;
    let text = String::from_utf8(exposition.stdout)?;
    for name in [
        "forwarder_vif_rx_packets_total{",
        "forwarder_drops_total{reason=\"no_route\"}",
        "forwarder_routes_installed{border_gateway=\"bgw-1\"}",
        "forwarder_map_capacity_entries{map=\"routes\"}",
        "forwarder_build_info{",
        "forwarder_event_to_map_seconds_bucket",
        "forwarder_plan_apply_duration_seconds_count",
    ] {
        ensure!(text.contains(name), "no {name} in the exposition:\n{text}");
    }
    let path = t.dir.0.join("metrics.txt");
    std::fs::write(&path, &text)?;
    let lint = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", path.display()))
        .output()?;
    ensure!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Prometheus itself, scraping every second.
    let config = t.dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: forwarder\n    static_configs:\n      - targets: ['127.0.0.1:9330']\n",
    )?;
    let log = std::fs::File::create(t.dir.0.join("prometheus.log"))?;
    let _prometheus = Killed(
        Command::new("ip")
            .args(["netns", "exec", t.gw.name(), "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                t.dir.0.join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (package prometheus)")?,
    );
    let ns = t.gw.name().to_owned();
    ensure!(
        wait_for(Duration::from_secs(30), || prom_query(
            &ns,
            "up{job=\"forwarder\"}"
        ) == Some(1.0)),
        "the target never came up:\n{}",
        std::fs::read_to_string(t.dir.0.join("prometheus.log")).unwrap_or_default()
    );
    let pings = 5;
    let (sent, received) = t.ping(VPC_HOST, pings, "0.2")?;
    ensure!(received == sent, "ping {received}/{sent}");
    let query = "forwarder_vif_rx_packets_total{vif=\"vif-100\",connection=\"hc-1\",vlan=\"100\",border_gateway=\"bgw-1\"}";
    let mut last = None;
    ensure!(
        wait_for(Duration::from_secs(15), || {
            last = prom_query(&ns, query);
            last.is_some_and(|v| v >= f64::from(pings))
        }),
        "Prometheus has {last:?} for {query}\n{}",
        agent.log_text()
    );
    println!("Prometheus: {query} = {last:?} after {pings} pings");

    // The Grafana dashboard asks for metrics the agent has, in PromQL Prometheus accepts.
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/forwarder.json"),
    )?)?;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            exprs.push(target["expr"].as_str().context("expr")?.to_owned());
        }
    }
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("forwarder_"))
        {
            ensure!(
                text.contains(name),
                "the dashboard asks for {name}, which the agent lacks"
            );
        }
        let query = expr.replace("$instance", ".*").replace("$vif", ".*");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "promtool",
                "query",
                "instant",
                "http://127.0.0.1:9090",
            ])
            .arg(&query)
            .output()?;
        ensure!(
            out.status.success(),
            "Prometheus refuses the dashboard's {query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("dashboard: {} queries checked", exprs.len());
    Ok(())
}

#[test]
fn a_capture_of_one_vif_is_a_pcap_tcpdump_reads() -> Result<()> {
    let t = Topology::new("capture")?;
    let _customer = t.customer_router()?;
    t.write_fixture(&t.static_fixture())?;
    let agent = t.start_agent(common::bin())?;
    t.wait_available(common::bin(), "vif-100")?;
    let capturing = |t: &Topology| {
        cli_json(&t.socket(), &["status"]).map(|s| s["capture"].as_str().map(str::to_owned))
    };
    ensure!(capturing(&t)?.is_none(), "a capture before any was started");

    let pcap = t.dir.0.join("vif-100.pcap");
    let capture = Killed(
        Command::new(common::bin())
            .arg("--socket")
            .arg(t.socket())
            .args(["capture", "--vif", "vif-100", "-w"])
            .arg(&pcap)
            .spawn()?,
    );
    ensure!(
        wait_for(Duration::from_secs(5), || capturing(&t)
            .is_ok_and(|c| c.as_deref() == Some("vif-100"))),
        "the capture did not start"
    );
    // One capture at a time.
    let second = common::cli(
        &t.socket(),
        &["capture", "--vif", "vif-100", "--count", "1"],
    )?;
    let err = String::from_utf8_lossy(&second.stderr);
    ensure!(
        second.status.code() == Some(1) && err.contains("a capture of VIF \"vif-100\" is running"),
        "{err}"
    );
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    ensure!(received == sent, "ping {received}/{sent}");
    std::thread::sleep(Duration::from_millis(500));
    // Ctrl-C: the client goes, the agent turns the capture off.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(capture.0.id() as i32, libc::SIGINT) };
    drop(capture);
    ensure!(
        wait_for(Duration::from_secs(5), || capturing(&t)
            .is_ok_and(|c| c.is_none())),
        "the capture stayed on after its client left:\n{}",
        agent.log_text()
    );

    let read = Command::new("tcpdump")
        .args(["-nn", "-e", "-r"])
        .arg(&pcap)
        .arg("vlan 100 and icmp")
        .output()?;
    let text = String::from_utf8_lossy(&read.stdout);
    println!("tcpdump -r:\n{text}");
    ensure!(
        read.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.len() == 10,
        "{} ICMP frames, not 10:\n{text}",
        lines.len()
    );
    ensure!(
        lines.iter().all(|l| l.contains("vlan 100")),
        "a frame without its VLAN tag:\n{text}"
    );
    let requests = lines.iter().filter(|l| l.contains("echo request")).count();
    let replies = lines.iter().filter(|l| l.contains("echo reply")).count();
    ensure!(
        requests == 5 && replies == 5,
        "{requests} requests, {replies} replies"
    );

    // `-w -` into tcpdump, with --count.
    let pipe = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --socket {} capture --vif vif-100 --count 4 -w - | tcpdump -nn -r - 2>/dev/null",
            common::bin().display(),
            t.socket().display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    t.ping(VPC_HOST, 4, "0.2")?;
    let out = pipe.wait_with_output()?;
    let piped = String::from_utf8_lossy(&out.stdout);
    println!("piped:\n{piped}");
    ensure!(piped.lines().count() == 4, "{piped}");
    Ok(())
}
