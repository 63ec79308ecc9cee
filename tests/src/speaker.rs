//! A scripted BGP speaker for hostile-peer tests: it says exactly what a test tells it to,
//! byte by byte (a real router would refuse to misbehave). IPv4 unicast, 4-octet ASNs, one
//! blocking TCP connection made inside a test namespace.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use ipnet::Ipv4Net;

use crate::NetNs;

const HEADER: usize = 19;
const MAX_MESSAGE: usize = 4096;

/// Message types (RFC 4271 §4.1, RFC 2918).
pub mod kind {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((HEADER + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// OPEN from `asn` (4-octet capable) with `hold` and `id`: IPv4 unicast, route refresh.
pub fn open(asn: u32, hold: u16, id: Ipv4Addr) -> Vec<u8> {
    let caps: Vec<u8> = [
        vec![1, 4, 0, 1, 0, 1],
        vec![2, 0],
        [vec![65, 4], asn.to_be_bytes().to_vec()].concat(),
    ]
    .concat();
    let mut body = vec![4];
    body.extend_from_slice(&u16::try_from(asn).unwrap_or(23456).to_be_bytes());
    body.extend_from_slice(&hold.to_be_bytes());
    body.extend_from_slice(&id.octets());
    body.push(caps.len() as u8 + 2);
    body.push(2);
    body.push(caps.len() as u8);
    body.extend_from_slice(&caps);
    message(kind::OPEN, &body)
}

pub fn keepalive() -> Vec<u8> {
    message(kind::KEEPALIVE, &[])
}

pub fn route_refresh() -> Vec<u8> {
    message(kind::ROUTE_REFRESH, &[0, 1, 0, 1])
}

/// UPDATEs announcing `prefixes` with AS_PATH `asn` and NEXT_HOP `next_hop`, as many per
/// message as fit.
pub fn updates(prefixes: &[Ipv4Net], asn: u32, next_hop: Ipv4Addr) -> Vec<Vec<u8>> {
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1];
    attrs.extend_from_slice(&asn.to_be_bytes());
    attrs.extend_from_slice(&[0x40, 3, 4]);
    attrs.extend_from_slice(&next_hop.octets());
    let room = MAX_MESSAGE - HEADER - 4 - attrs.len();
    let mut out = Vec::new();
    let mut nlri = Vec::new();
    for p in prefixes {
        let bytes = usize::from(p.prefix_len().div_ceil(8));
        if nlri.len() + 1 + bytes > room {
            out.push(std::mem::take(&mut nlri));
        }
        nlri.push(p.prefix_len());
        nlri.extend_from_slice(&p.network().octets()[..bytes]);
    }
    if !nlri.is_empty() {
        out.push(nlri);
    }
    out.into_iter()
        .map(|nlri| {
            let mut body = vec![0, 0];
            body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
            body.extend_from_slice(&attrs);
            body.extend_from_slice(&nlri);
            message(kind::UPDATE, &body)
        })
        .collect()
}

/// One connection to the gateway's speaker.
pub struct Scripted {
    pub stream: TcpStream,
    pub asn: u32,
    pub local: Ipv4Addr,
}

impl Scripted {
    /// Connects from `local` (an address of `ns`) to `remote:179`, retrying for up to 20 s
    /// while the gateway's session starts listening.
    pub fn connect(ns: &NetNs, local: Ipv4Addr, remote: Ipv4Addr, asn: u32) -> Result<Self> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let stream = ns.enter(|| {
            loop {
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.bind(&SocketAddr::V4(SocketAddrV4::new(local, 0)).into())?;
                let to = SocketAddr::V4(SocketAddrV4::new(remote, 179));
                match socket.connect_timeout(&to.into(), Duration::from_secs(2)) {
                    Ok(()) => return Ok(TcpStream::from(socket)),
                    Err(e) if std::time::Instant::now() > deadline => {
                        return Err(anyhow::Error::from(e).context(format!("connecting to {to}")));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self { stream, asn, local })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next message: (type, body); `None` on EOF.
    pub fn recv(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        let mut header = [0u8; HEADER];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e).context("reading a BGP header"),
        }
        let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
        if !(HEADER..=MAX_MESSAGE).contains(&len) {
            bail!("bad BGP length {len}");
        }
        let mut body = vec![0; len - HEADER];
        self.stream.read_exact(&mut body)?;
        Ok(Some((header[18], body)))
    }

    /// OPEN with `hold`, then the OPEN/KEEPALIVE exchange up to Established.
    pub fn establish(&mut self, hold: u16, id: Ipv4Addr) -> Result<()> {
        self.send(&open(self.asn, hold, id))?;
        match self.recv()? {
            Some((kind::OPEN, _)) => {}
            other => bail!("expected OPEN, got {other:?}"),
        }
        match self.recv()? {
            Some((kind::KEEPALIVE, _)) => {}
            Some((kind::NOTIFICATION, b)) => bail!("NOTIFICATION {:?}", &b[..2.min(b.len())]),
            other => bail!("expected KEEPALIVE, got {other:?}"),
        }
        self.send(&keepalive())?;
        Ok(())
    }

    /// Reads until a NOTIFICATION: (code, subcode); `None` if the connection ends first.
    pub fn notification(&mut self) -> Result<Option<(u8, u8)>> {
        loop {
            match self.recv() {
                Ok(Some((kind::NOTIFICATION, b))) if b.len() >= 2 => return Ok(Some((b[0], b[1]))),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Announces `prefixes` (AS_PATH = our ASN, NEXT_HOP = our address); stops at the first
    /// write that fails and returns how many messages went out.
    pub fn announce(&mut self, prefixes: &[Ipv4Net]) -> usize {
        let msgs = updates(prefixes, self.asn, self.local);
        for (i, m) in msgs.iter().enumerate() {
            if self.send(m).is_err() {
                return i;
            }
        }
        msgs.len()
    }
}
