//! The Prometheus exposition of the agent's state at one moment: traffic and drops from the
//! maps, VIF and port states, BGP sessions, route counts, map occupancy, the histograms kept
//! between scrapes, build information. Names and labels follow Prometheus conventions
//! (`_total` counters, base units, `snake_case`).

use forwarder_common::{drop_reason, pass_reason};
use prometheus::{
    Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::Collector,
};

use super::Agent;
use crate::{bgp::SessionState, rib::Source};

/// Registers `metric`, logging instead of failing (a name clash is a bug, not a reason to
/// lose the rest of the scrape).
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: &C) {
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        tracing::error!(error = %e, "registering a metric");
    }
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Option<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .map_err(|e| tracing::error!(error = %e, name, "defining a metric"))
        .ok()?;
    register(registry, &vec);
    Some(vec)
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Option<IntGaugeVec> {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)
        .map_err(|e| tracing::error!(error = %e, name, "defining a metric"))
        .ok()?;
    register(registry, &vec);
    Some(vec)
}

fn gauge(registry: &Registry, name: &str, help: &str, value: i64) {
    match IntGauge::new(name, help) {
        Ok(g) => {
            g.set(value);
            register(registry, &g);
        }
        Err(e) => tracing::error!(error = %e, name, "defining a metric"),
    }
}

fn int(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Agent {
    /// The exposition (Prometheus text format 0.0.4).
    pub(super) fn exposition(&self) -> String {
        let registry = Registry::new();
        let dp = self.apply.dataplane();

        let build = gauges(
            &registry,
            "forwarder_build_info",
            "The running agent's version (always 1).",
            &["version"],
        );
        if let Some(b) = build {
            b.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        }
        gauge(
            &registry,
            "forwarder_uptime_seconds",
            "Seconds since the agent started.",
            i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX),
        );

        // Traffic per VIF and per attachment, from the per-CPU maps.
        let vif_labels = ["vif", "connection", "vlan", "border_gateway"];
        let vif_traffic = [
            (
                "forwarder_vif_rx_packets_total",
                "Frames received from the customer on a VIF.",
            ),
            (
                "forwarder_vif_rx_bytes_total",
                "Bytes received from the customer on a VIF.",
            ),
            (
                "forwarder_vif_tx_packets_total",
                "Frames sent toward the customer on a VIF.",
            ),
            (
                "forwarder_vif_tx_bytes_total",
                "Bytes sent toward the customer on a VIF.",
            ),
        ]
        .map(|(name, help)| counters(&registry, name, help, &vif_labels));
        let vif_state = gauges(
            &registry,
            "forwarder_vif_state",
            "A VIF's state (1 for the state it is in).",
            &["vif", "state"],
        );
        let vif_drops = counters(
            &registry,
            "forwarder_vif_drops_total",
            "Frames of one VIF dropped by a per-VIF check (control_rate_limited, source_check, too_big; too_big counts those answered with ICMP too).",
            &["vif", "connection", "vlan", "border_gateway", "reason"],
        );
        for (id, v) in &self.model.vifs {
            let vlan = v.vlan.to_string();
            let labels = [
                v.name.as_str(),
                v.config.connection.as_str(),
                vlan.as_str(),
                v.config.border_gateway.as_str(),
            ];
            match dp.vif_counters(id.0) {
                Ok(c) => {
                    let values = [c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes];
                    for (metric, value) in vif_traffic.iter().zip(values) {
                        if let Some(m) = metric {
                            m.with_label_values(&labels).inc_by(value);
                        }
                    }
                }
                Err(e) => tracing::warn!(vif = %v.name, error = %e, "reading VIF counters"),
            }
            if let (Some(m), Ok(d)) = (&vif_drops, dp.vif_drops(id.0)) {
                for (reason, value) in [
                    ("control_rate_limited", d.control_limited),
                    ("source_check", d.source_check),
                    ("too_big", d.too_big),
                ] {
                    m.with_label_values(&[labels[0], labels[1], labels[2], labels[3], reason])
                        .inc_by(value);
                }
            }
            if let Some(s) = &vif_state {
                s.with_label_values(&[v.name.as_str(), self.vif_state_name(*id)])
                    .set(1);
            }
        }
        let att_labels = ["attachment", "border_gateway", "vni"];
        let att_traffic = [
            (
                "forwarder_attachment_rx_packets_total",
                "Frames decapsulated from a VPC attachment.",
            ),
            (
                "forwarder_attachment_rx_bytes_total",
                "Bytes decapsulated from a VPC attachment.",
            ),
            (
                "forwarder_attachment_tx_packets_total",
                "Frames encapsulated toward a VPC attachment.",
            ),
            (
                "forwarder_attachment_tx_bytes_total",
                "Bytes encapsulated toward a VPC attachment.",
            ),
        ]
        .map(|(name, help)| counters(&registry, name, help, &att_labels));
        for (id, a) in &self.model.attachments {
            let vni = a.vni.to_string();
            let labels = [
                a.name.as_str(),
                self.model.gateway_name(a.gateway),
                vni.as_str(),
            ];
            match dp.attachment_counters(id.0) {
                Ok(c) => {
                    let values = [c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes];
                    for (metric, value) in att_traffic.iter().zip(values) {
                        if let Some(m) = metric {
                            m.with_label_values(&labels).inc_by(value);
                        }
                    }
                }
                Err(e) => tracing::warn!(attachment = %a.name, error = %e, "reading counters"),
            }
        }

        // Frames not forwarded, by reason.
        let outcomes = [
            (
                "forwarder_drops_total",
                "Frames the data plane dropped, by reason.",
                dp.drops().map(|d| d.to_vec()),
                &drop_reason::NAMES[..],
            ),
            (
                "forwarder_passes_total",
                "Frames the data plane handed to the host or a VIF control plane, by reason.",
                dp.passes().map(|p| p.to_vec()),
                &pass_reason::NAMES[..],
            ),
        ];
        for (name, help, values, names) in outcomes {
            let (Some(metric), Ok(values)) = (counters(&registry, name, help, &["reason"]), values)
            else {
                continue;
            };
            for (reason, value) in names.iter().zip(values) {
                metric.with_label_values(&[reason]).inc_by(value);
            }
        }

        // Ports.
        if let Some(up) = gauges(
            &registry,
            "forwarder_port_up",
            "Whether a port with XDP attached is up (1) or down (0).",
            &["port", "role"],
        ) {
            for (name, port) in self.apply.ports() {
                up.with_label_values(&[name, port.role.name()])
                    .set(i64::from(self.observed.port_up(name)));
            }
        }

        // BGP sessions.
        let session_labels = ["vif", "peer", "remote"];
        let up = gauges(
            &registry,
            "forwarder_bgp_session_up",
            "Whether a BGP session is Established (1) or not (0).",
            &session_labels,
        );
        let state = gauges(
            &registry,
            "forwarder_bgp_session_state",
            "A BGP session's state (1 for the state it is in).",
            &["vif", "peer", "remote", "state"],
        );
        let prefixes = [
            (
                "forwarder_bgp_prefixes_received",
                "Prefixes the peer announced and holds.",
            ),
            (
                "forwarder_bgp_prefixes_accepted",
                "Prefixes of the peer the import filter accepted.",
            ),
            (
                "forwarder_bgp_prefixes_advertised",
                "Prefixes advertised to the peer.",
            ),
        ]
        .map(|(name, help)| gauges(&registry, name, help, &session_labels));
        let established = counters(
            &registry,
            "forwarder_bgp_session_established_total",
            "Times a BGP session reached Established (a rise means it flapped).",
            &session_labels,
        );
        let uptime = gauges(
            &registry,
            "forwarder_bgp_session_uptime_seconds",
            "Seconds since a BGP session reached Established (0 when it is not).",
            &session_labels,
        );
        let stale = gauges(
            &registry,
            "forwarder_bgp_stale_routes",
            "Routes of a BGP session kept through a restart (graceful restart) and not announced again yet.",
            &session_labels,
        );
        let bfd_up = gauges(
            &registry,
            "forwarder_bfd_session_up",
            "A BGP session's BFD is Up (1) or not (0); absent without BFD.",
            &session_labels,
        );
        let bfd_ups = counters(
            &registry,
            "forwarder_bfd_session_up_total",
            "How often a BGP session's BFD came Up.",
            &session_labels,
        );
        for n in self.neighbors() {
            let (peer, remote) = (n.peer_index.to_string(), n.remote_addr.to_string());
            if let Some(b) = &n.bfd {
                let labels = [n.vif.as_str(), peer.as_str(), remote.as_str()];
                if let Some(m) = &bfd_up {
                    m.with_label_values(&labels)
                        .set(i64::from(b.state == crate::bfd::State::Up));
                }
                if let Some(m) = &bfd_ups {
                    m.with_label_values(&labels).inc_by(b.up_count);
                }
            }
            let labels = [n.vif.as_str(), peer.as_str(), remote.as_str()];
            let is_up = n.state == SessionState::Established;
            if let Some(m) = &up {
                m.with_label_values(&labels).set(i64::from(is_up));
            }
            if let Some(m) = &state {
                let name = n.state.to_string();
                m.with_label_values(&[labels[0], labels[1], labels[2], name.as_str()])
                    .set(1);
            }
            let counts = [
                n.prefixes_received,
                n.prefixes_accepted,
                n.prefixes_advertised,
            ];
            for (metric, value) in prefixes.iter().zip(counts) {
                if let Some(m) = metric {
                    m.with_label_values(&labels).set(int(value));
                }
            }
            if let Some(m) = &established {
                m.with_label_values(&labels).inc_by(n.established_count);
            }
            if let Some(m) = &stale {
                m.with_label_values(&labels).set(int(n.stale_routes));
            }
            if let Some(m) = &uptime {
                m.with_label_values(&labels).set(
                    n.uptime_seconds
                        .and_then(|s| i64::try_from(s).ok())
                        .unwrap_or(0),
                );
            }
        }

        // Routes per border gateway.
        let candidates = gauges(
            &registry,
            "forwarder_routes",
            "Candidate routes of a border gateway's table, by source.",
            &["border_gateway", "source"],
        );
        let selected = gauges(
            &registry,
            "forwarder_routes_selected",
            "Prefixes of a border gateway with a selected route.",
            &["border_gateway"],
        );
        let installed = gauges(
            &registry,
            "forwarder_routes_installed",
            "Routes of a border gateway in the data plane's route map.",
            &["border_gateway"],
        );
        let not_installed = gauges(
            &registry,
            "forwarder_routes_not_installed",
            "Selected routes of a border gateway not in the route map (full map, failed write).",
            &["border_gateway"],
        );
        let pending = self.apply.pending_by_gateway();
        for (id, g) in &self.model.gateways {
            let name = g.name.as_str();
            if let Some(m) = &candidates {
                let mut by_source = [0usize; 3];
                for (_, list) in self.rib.table(*id) {
                    for c in list {
                        by_source[c.source as usize] += 1;
                    }
                }
                for (source, count) in [Source::Propagated, Source::Static, Source::Bgp]
                    .iter()
                    .zip(by_source)
                {
                    m.with_label_values(&[name, source.name()]).set(int(count));
                }
            }
            let routes = self.apply.gateway_routes_with(*id, &pending);
            let values = [
                (
                    &selected,
                    self.desired.routes.get(id).map_or(0, |t| t.len()),
                ),
                (&installed, routes.installed),
                (&not_installed, routes.pending),
            ];
            for (metric, value) in values {
                if let Some(m) = metric {
                    m.with_label_values(&[name]).set(int(value));
                }
            }
        }

        // Map occupancy.
        let used = gauges(
            &registry,
            "forwarder_map_entries",
            "Entries in use in a data-plane map.",
            &["map"],
        );
        let capacity = gauges(
            &registry,
            "forwarder_map_capacity_entries",
            "Entries a data-plane map holds.",
            &["map"],
        );
        let occupancy = [
            (
                "routes",
                self.apply.routes_installed(),
                self.apply.route_capacity(),
            ),
            (
                "routes6",
                self.apply.routes6_installed(),
                forwarder_common::MAX_ROUTES6,
            ),
            ("routes24", self.apply.routes24().0, self.apply.routes24().1),
            (
                "next_hops",
                self.state.ids.next_hops.len(),
                self.apply.next_hop_capacity(),
            ),
            (
                "vifs",
                self.model.vifs.len(),
                forwarder_common::MAX_VIFS - 1,
            ),
            (
                "attachments",
                self.model.attachments.len(),
                forwarder_common::MAX_ATTACHMENTS - 1,
            ),
        ];
        for (map, n, cap) in occupancy {
            if let Some(m) = &used {
                m.with_label_values(&[map]).set(int(n));
            }
            if let Some(m) = &capacity {
                m.with_label_values(&[map]).set(i64::from(cap));
            }
        }

        register(&registry, &self.histograms.plan_apply);
        register(&registry, &self.histograms.event_to_map);

        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
