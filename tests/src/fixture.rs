//! The one builder of configs for tests: unit tests of the agent's logic, the namespace
//! topology and the benchmarks all describe their gateway with it and get the TOML an
//! operator would write (DESIGN §5), so every test goes through the real config loader.

/// Appends a formatted line.
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

/// A `[[vif]]` section.
#[derive(Clone, Debug)]
pub struct Vif {
    pub name: String,
    pub connection: String,
    pub vlan: u16,
    pub gateway: String,
    /// `Some(client ASN)` for `routing = "bgp"`.
    pub bgp: Option<u32>,
    /// (client address, cloud address) of each /30.
    pub peers: Vec<(String, String)>,
    /// More `key = value` lines, as TOML.
    pub extra: Vec<String>,
}

impl Vif {
    pub fn static_routed(name: &str, connection: &str, vlan: u16, gateway: &str) -> Self {
        Self {
            name: name.to_owned(),
            connection: connection.to_owned(),
            vlan,
            gateway: gateway.to_owned(),
            bgp: None,
            peers: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn bgp(name: &str, connection: &str, vlan: u16, gateway: &str, client_asn: u32) -> Self {
        Self {
            bgp: Some(client_asn),
            ..Self::static_routed(name, connection, vlan, gateway)
        }
    }

    pub fn peer(mut self, client: &str, cloud: &str) -> Self {
        self.peers.push((client.to_owned(), cloud.to_owned()));
        self
    }

    /// Adds `key = value` (value as TOML, e.g. `"\"s3cret\""` or `"100"`).
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.extra.push(format!("{key} = {value}"));
        self
    }

    fn write(&self, out: &mut String) {
        let routing = if self.bgp.is_some() { "bgp" } else { "static" };
        put!(
            out,
            "[[vif]]\nname = \"{}\"\nconnection = \"{}\"\nvlan = {}\nborder_gateway = \"{}\"\nrouting = \"{routing}\"",
            self.name,
            self.connection,
            self.vlan,
            self.gateway
        );
        if let Some(asn) = self.bgp {
            put!(out, "client_asn = {asn}");
        }
        for line in &self.extra {
            put!(out, "{line}");
        }
        for (client, cloud) in &self.peers {
            // A /30 for IPv4, a /126 for IPv6.
            let len = if client.contains(':') { 126 } else { 30 };
            put!(
                out,
                "  [[vif.peer]]\n  client_address = \"{client}\"\n  cloud_address = \"{cloud}\"\n  prefix_len = {len}"
            );
        }
        out.push('\n');
    }
}

/// A `[[vpc_attachment]]` section.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub name: String,
    pub gateway: String,
    pub vni: u32,
    pub remote_vtep: String,
    pub router_mac: String,
    pub propagate: Vec<String>,
}

/// A whole config file.
#[derive(Clone, Debug)]
pub struct Fixture {
    agent: Vec<String>,
    underlay: (String, String),
    connections: Vec<(String, String)>,
    gateways: Vec<String>,
    attachments: Vec<Attachment>,
    vifs: Vec<Vif>,
    statics: Vec<(String, String, String)>,
    raw: Vec<String>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// Underlay `ul0` carrying 172.31.0.1, nothing else.
    pub fn new() -> Self {
        Self {
            agent: Vec::new(),
            underlay: ("ul0".to_owned(), "172.31.0.1".to_owned()),
            connections: Vec::new(),
            gateways: Vec::new(),
            attachments: Vec::new(),
            vifs: Vec::new(),
            statics: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// The shape of DESIGN §6: connection `hc-1` on `hc1`, gateway `bgw-1`, attachment
    /// `att-a` (VNI 1001 toward 172.31.0.2, propagating `vpc_cidr`).
    pub fn design(vpc_cidr: &str) -> Self {
        Self::new()
            .connection("hc-1", "hc1")
            .gateway("bgw-1")
            .attachment("att-a", "bgw-1", 1001, "172.31.0.2", &[vpc_cidr])
    }

    /// Sets `key = value` in `[agent]` (value as TOML), replacing an earlier value.
    pub fn agent(mut self, key: &str, value: &str) -> Self {
        let line = format!("{key} = {value}");
        match self
            .agent
            .iter_mut()
            .find(|l| l.split(" = ").next() == Some(key))
        {
            Some(existing) => *existing = line,
            None => self.agent.push(line),
        }
        self
    }

    pub fn underlay(mut self, interface: &str, local_vtep: &str) -> Self {
        self.underlay = (interface.to_owned(), local_vtep.to_owned());
        self
    }

    pub fn connection(mut self, name: &str, interface: &str) -> Self {
        self.connections
            .push((name.to_owned(), interface.to_owned()));
        self
    }

    pub fn gateway(mut self, name: &str) -> Self {
        self.gateways.push(name.to_owned());
        self
    }

    pub fn attachment(
        mut self,
        name: &str,
        gateway: &str,
        vni: u32,
        remote_vtep: &str,
        propagate: &[&str],
    ) -> Self {
        self.attachments.push(Attachment {
            name: name.to_owned(),
            gateway: gateway.to_owned(),
            vni,
            remote_vtep: remote_vtep.to_owned(),
            router_mac: "02:00:00:00:0a:01".to_owned(),
            propagate: propagate.iter().map(|p| (*p).to_owned()).collect(),
        });
        self
    }

    /// One more CIDR propagated by attachment `name`.
    pub fn propagate(mut self, name: &str, cidr: &str) -> Self {
        if let Some(a) = self.attachments.iter_mut().find(|a| a.name == name) {
            a.propagate.push(cidr.to_owned());
        }
        self
    }

    pub fn vif(mut self, vif: Vif) -> Self {
        self.vifs.push(vif);
        self
    }

    /// `count` VIFs `{prefix}{n}` on `connection`, VLANs `1..=count`, each with one (or two)
    /// /30 pairs carved from 10.0.0.0/8 in VIF order: client `.2`, cloud `.1` of each /30.
    /// `bgp`: `Some(ASN)` for BGP VIFs.
    pub fn many_vifs(
        mut self,
        prefix: &str,
        count: u32,
        connection: &str,
        gateway: &str,
        bgp: Option<u32>,
        two_peers: bool,
    ) -> Self {
        for n in 1..=count {
            let name = format!("{prefix}{n}");
            let mut vif = match bgp {
                Some(asn) => Vif::bgp(&name, connection, n as u16, gateway, asn),
                None => Vif::static_routed(&name, connection, n as u16, gateway),
            };
            for pair in 0..(1 + u32::from(two_peers)) {
                let base = (10u32 << 24) + (n * 2 + pair) * 4;
                let addr = |host: u32| std::net::Ipv4Addr::from(base + host).to_string();
                vif = vif.peer(&addr(2), &addr(1));
            }
            self.vifs.push(vif);
        }
        self
    }

    pub fn static_route(mut self, gateway: &str, prefix: &str, via: &str) -> Self {
        self.statics
            .push((gateway.to_owned(), prefix.to_owned(), via.to_owned()));
        self
    }

    /// TOML appended as it is (sections a test writes by hand).
    pub fn raw(mut self, text: &str) -> Self {
        self.raw.push(text.to_owned());
        self
    }

    pub fn toml(&self) -> String {
        let mut out = String::from("[agent]\n");
        for line in &self.agent {
            put!(out, "{line}");
        }
        put!(
            out,
            "\n[underlay]\ninterface = \"{}\"\nlocal_vtep = \"{}\"\n",
            self.underlay.0,
            self.underlay.1
        );
        for (name, interface) in &self.connections {
            put!(
                out,
                "[[connection]]\nname = \"{name}\"\nkind = \"hosted\"\ninterface = \"{interface}\"\n"
            );
        }
        for name in &self.gateways {
            put!(out, "[[border_gateway]]\nname = \"{name}\"\n");
        }
        for a in &self.attachments {
            let propagate: Vec<String> = a.propagate.iter().map(|p| format!("\"{p}\"")).collect();
            put!(
                out,
                "[[vpc_attachment]]\nname = \"{}\"\nborder_gateway = \"{}\"\nvni = {}\nremote_vtep = \"{}\"\nrouter_mac = \"{}\"\npropagate = [{}]\n",
                a.name,
                a.gateway,
                a.vni,
                a.remote_vtep,
                a.router_mac,
                propagate.join(", ")
            );
        }
        for vif in &self.vifs {
            vif.write(&mut out);
        }
        for (gateway, prefix, via) in &self.statics {
            put!(
                out,
                "[[static_route]]\nborder_gateway = \"{gateway}\"\nprefix = \"{prefix}\"\nvia = \"{via}\"\n"
            );
        }
        for text in &self.raw {
            out.push_str(text);
            out.push('\n');
        }
        out
    }
}
