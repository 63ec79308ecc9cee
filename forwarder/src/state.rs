//! What the agent keeps across restarts in `agent.state_dir/state.json`: the ids it gave to
//! border gateways, VIFs, attachments and next hops (the pinned maps are indexed by them), the
//! static routes added with `forwarder route add`, and the namespaces and links it made (the
//! only ones it will ever delete). Written atomically: a temporary file, fsync, rename, fsync
//! of the directory; a crash leaves the old or the new file, never half.
//!
//! Format version 2, or 3 when it holds a multipath next-hop slot (a key version 2 agents do
//! not know: they refuse the file by its version instead of failing to parse it). Files of
//! version 1 (next-hop keys as strings such as `vif:NAME:m3`, no record of owned objects)
//! load and are written back as version 2.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use forwarder_common::{MAX_ATTACHMENTS, MAX_NEXT_HOPS, MAX_VIFS};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ids::{AttachmentId, NextHopKey, Pool, VifId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid state file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: state file version {version} is newer than this agent understands (3)")]
    Version { path: PathBuf, version: u32 },
}

/// A static route added through the CLI (config routes live in the config file).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CliRoute {
    pub gateway: String,
    pub prefix: IpNet,
    pub via: String,
}

/// Stable ids by name, per kind, and next-hop slots by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    pub gateways: Pool<String>,
    pub vifs: Pool<String>,
    pub attachments: Pool<String>,
    pub next_hops: Pool<NextHopKey>,
}

impl Default for Ids {
    fn default() -> Self {
        Self {
            gateways: Pool::new("border gateway", 1, u32::MAX),
            vifs: Pool::new("VIF", 1, MAX_VIFS),
            attachments: Pool::new("attachment", 1, MAX_ATTACHMENTS),
            next_hops: Pool::new("next hop", 1, MAX_NEXT_HOPS),
        }
    }
}

/// Namespaces and links the agent created: what it may delete when no VIF needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    #[serde(default)]
    pub namespaces: BTreeSet<String>,
    #[serde(default)]
    pub links: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub ids: Ids,
    pub routes: Vec<CliRoute>,
    /// None for a version 1 file, which did not record them: the agent derives them from the
    /// VIFs the file knows.
    pub owned: Option<Owned>,
}

// ---- file format -------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct NextHopEntry {
    #[serde(flatten)]
    key: NextHopKey,
    /// The next-hop table slot.
    slot: u32,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NextHopsFile {
    Current(Vec<NextHopEntry>),
    /// Version 1: `att:NAME`, `vif:NAME`, `vif:NAME:I`, `vif:NAME:mMASK`, `pinned:ID`.
    Legacy(BTreeMap<String, u32>),
}

#[derive(Deserialize)]
struct IdsFile {
    #[serde(default)]
    gateways: BTreeMap<String, u32>,
    #[serde(default)]
    vifs: BTreeMap<String, u32>,
    #[serde(default)]
    attachments: BTreeMap<String, u32>,
    #[serde(default)]
    next_hops: Option<NextHopsFile>,
}

#[derive(Deserialize)]
struct StateFile {
    #[serde(default)]
    version: Option<u32>,
    ids: Option<IdsFile>,
    #[serde(default)]
    routes: Vec<CliRoute>,
    #[serde(default)]
    owned: Option<Owned>,
}

#[derive(Serialize)]
struct IdsOut<'a> {
    gateways: BTreeMap<&'a str, u32>,
    vifs: BTreeMap<&'a str, u32>,
    attachments: BTreeMap<&'a str, u32>,
    next_hops: Vec<NextHopEntry>,
}

#[derive(Serialize)]
struct StateOut<'a> {
    version: u32,
    ids: IdsOut<'a>,
    routes: &'a [CliRoute],
    owned: &'a Owned,
}

const VERSION: u32 = 3;
/// Written when no multipath slot needs version 3.
const VERSION_WITHOUT_MULTIPATH: u32 = 2;
const FILE: &str = "state.json";

fn names(pool: &Pool<String>) -> BTreeMap<&str, u32> {
    pool.iter().map(|(k, id)| (k.as_str(), id)).collect()
}

/// A version 1 next-hop name as a typed key; unknown forms keep their slot as `Pinned`.
fn legacy_key(name: &str, id: u32, ids: &Ids) -> NextHopKey {
    let vif = |n: &str| ids.vifs.get(&n.to_owned()).map(VifId);
    let parsed = if let Some(att) = name.strip_prefix("att:") {
        ids.attachments
            .get(&att.to_owned())
            .map(|a| NextHopKey::Attachment {
                attachment: AttachmentId(a),
            })
    } else if let Some(rest) = name.strip_prefix("vif:") {
        match rest.rsplit_once(':') {
            Some((v, m)) if m.starts_with('m') => m[1..]
                .parse()
                .ok()
                .zip(vif(v))
                .map(|(mask, vif)| NextHopKey::VifPeers { vif, mask }),
            Some((v, i)) if i.parse::<u8>().is_ok() && vif(v).is_some() => i
                .parse()
                .ok()
                .zip(vif(v))
                .map(|(peer, vif)| NextHopKey::VifPeer { vif, peer }),
            _ => vif(rest).map(|vif| NextHopKey::Vif { vif }),
        }
    } else {
        None
    };
    parsed.unwrap_or(NextHopKey::Pinned { id })
}

impl State {
    /// The state in `dir`, or an empty one when there is none yet. Ids that do not fit their
    /// map or collide are dropped with a warning (their slots are then found in use by the
    /// agent and kept as pinned).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|source| Error::Parse {
            path: path.clone(),
            source,
        })?;
        if let Some(version) = file.version
            && version > VERSION
        {
            return Err(Error::Version { path, version });
        }
        let mut ids = Ids::default();
        let mut dropped: Vec<String> = Vec::new();
        if let Some(f) = file.ids {
            let mut load = |kind, capacity, entries: BTreeMap<String, u32>| {
                let (pool, bad) = Pool::with_entries(kind, 1, capacity, entries);
                dropped.extend(bad.into_iter().map(|(k, id)| format!("{kind} {k}={id}")));
                pool
            };
            ids.gateways = load("border gateway", u32::MAX, f.gateways);
            ids.vifs = load("VIF", MAX_VIFS, f.vifs);
            ids.attachments = load("attachment", MAX_ATTACHMENTS, f.attachments);
            let entries: Vec<(NextHopKey, u32)> = match f.next_hops {
                None => Vec::new(),
                Some(NextHopsFile::Current(v)) => v.into_iter().map(|e| (e.key, e.slot)).collect(),
                Some(NextHopsFile::Legacy(m)) => m
                    .iter()
                    .map(|(name, id)| (legacy_key(name, *id, &ids), *id))
                    .collect(),
            };
            let (pool, bad) = Pool::with_entries("next hop", 1, MAX_NEXT_HOPS, entries);
            dropped.extend(bad.into_iter().map(|(k, id)| format!("{k:?}={id}")));
            ids.next_hops = pool;
        }
        if !dropped.is_empty() {
            tracing::warn!(path = %path.display(), dropped = ?dropped, "state file ids out of range or duplicated");
        }
        Ok(Self {
            ids,
            routes: file.routes,
            owned: if file.version.is_some() {
                Some(file.owned.unwrap_or_default())
            } else {
                None
            },
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".{FILE}.tmp"));
        let owned = self.owned.clone().unwrap_or_default();
        let multipath = self
            .ids
            .next_hops
            .iter()
            .any(|(key, _)| matches!(key, NextHopKey::Multipath { .. }));
        let out = StateOut {
            version: if multipath {
                VERSION
            } else {
                VERSION_WITHOUT_MULTIPATH
            },
            ids: IdsOut {
                gateways: names(&self.ids.gateways),
                vifs: names(&self.ids.vifs),
                attachments: names(&self.ids.attachments),
                next_hops: self
                    .ids
                    .next_hops
                    .iter()
                    .map(|(key, slot)| NextHopEntry { key: *key, slot })
                    .collect(),
            },
            routes: &self.routes,
            owned: &owned,
        };
        let bytes = serde_json::to_vec_pretty(&out).map_err(|source| Error::Parse {
            path: path.clone(),
            source,
        })?;
        let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("forwarder-state-{tag}-{}", std::process::id()))
    }

    #[test]
    fn state_round_trips_through_its_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("roundtrip");
        let mut state = State::default();
        let vif = VifId(state.ids.vifs.allocate(&"vif-100".to_owned())?);
        state
            .ids
            .next_hops
            .allocate(&NextHopKey::VifPeers { vif, mask: 3 })?;
        state
            .ids
            .next_hops
            .allocate(&NextHopKey::Pinned { id: 9 })?;
        state.routes.push(CliRoute {
            gateway: "bgw-1".into(),
            prefix: "192.168.50.0/24".parse()?,
            via: "vif-100".into(),
        });
        state.owned = Some(Owned {
            namespaces: ["fwv-vif-100".to_owned()].into(),
            links: ["fwc1".to_owned()].into(),
        });
        state.save(&dir)?;
        assert_eq!(State::load(&dir)?, state);
        assert_eq!(State::load(&dir.join("missing"))?, State::default());
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// A state file exactly as the version before typed next-hop keys wrote it.
    const VERSION_1: &str = r#"{
  "ids": {
    "gateways": { "bgw-1": 1 },
    "vifs": { "vif-100": 1, "vif:odd": 2 },
    "attachments": { "att-a": 1 },
    "next_hops": {
      "att:att-a": 1,
      "vif:vif-100": 4,
      "vif:vif-100:0": 2,
      "vif:vif-100:1": 3,
      "vif:vif-100:m1": 5,
      "vif:vif-100:m3": 6,
      "vif:vif:odd": 8,
      "pinned:7": 7,
      "att:gone": 9
    }
  },
  "routes": [
    { "gateway": "bgw-1", "prefix": "192.168.50.0/24", "via": "vif-100" }
  ]
}"#;

    #[test]
    fn a_version_1_file_loads_with_typed_keys() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("v1");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(FILE), VERSION_1)?;
        let state = State::load(&dir)?;
        let vif = VifId(1);
        let nh = |key: NextHopKey| state.ids.next_hops.get(&key);
        assert_eq!(
            nh(NextHopKey::Attachment {
                attachment: AttachmentId(1)
            }),
            Some(1)
        );
        assert_eq!(nh(NextHopKey::VifPeer { vif, peer: 0 }), Some(2));
        assert_eq!(nh(NextHopKey::VifPeer { vif, peer: 1 }), Some(3));
        assert_eq!(nh(NextHopKey::Vif { vif }), Some(4));
        assert_eq!(nh(NextHopKey::VifPeers { vif, mask: 1 }), Some(5));
        assert_eq!(nh(NextHopKey::VifPeers { vif, mask: 3 }), Some(6));
        assert_eq!(nh(NextHopKey::Vif { vif: VifId(2) }), Some(8));
        assert_eq!(nh(NextHopKey::Pinned { id: 7 }), Some(7));
        // An attachment the file no longer names keeps its slot, as pinned.
        assert_eq!(nh(NextHopKey::Pinned { id: 9 }), Some(9));
        assert_eq!(state.routes.len(), 1);
        assert_eq!(state.owned, None);
        // Written back as version 2, it reads the same.
        state.save(&dir)?;
        let text = fs::read_to_string(dir.join(FILE))?;
        assert!(text.contains("\"version\": 2"), "{text}");
        assert!(text.contains("\"kind\": \"vif_peers\""), "{text}");
        let again = State::load(&dir)?;
        assert_eq!(again.ids, state.ids);
        assert_eq!(again.owned, Some(Owned::default()));
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_newer_version_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("v9");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(FILE), r#"{"version": 9, "ids": {}}"#)?;
        let err = State::load(&dir).expect_err("refused");
        assert!(err.to_string().contains("version 9"), "{err}");
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
