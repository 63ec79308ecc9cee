//! What the agent keeps across restarts in `agent.state_dir`: the numeric ids it gave to
//! border gateways, VIFs, attachments and next hops (the pinned maps are indexed by them), and
//! the static routes added with `forwarder route add`. Written atomically: a temporary file,
//! fsync, rename, fsync of the directory; a crash leaves the old or the new file, never half.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

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
    #[error("no free {kind} id (all {max} in use)")]
    Exhausted { kind: &'static str, max: u32 },
}

/// A static route added through the CLI (config routes live in the config file).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CliRoute {
    pub gateway: String,
    pub prefix: Ipv4Net,
    pub via: String,
}

/// Stable ids by name, per kind. Ids of removed objects are released on the next save.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    #[serde(default)]
    pub gateways: BTreeMap<String, u32>,
    #[serde(default)]
    pub vifs: BTreeMap<String, u32>,
    #[serde(default)]
    pub attachments: BTreeMap<String, u32>,
    #[serde(default)]
    pub next_hops: BTreeMap<String, u32>,
}

/// Hands out the lowest free id of a kind; keeps what was given.
pub fn allocate(
    table: &mut BTreeMap<String, u32>,
    name: &str,
    kind: &'static str,
    first: u32,
    max: u32,
) -> Result<u32, Error> {
    if let Some(id) = table.get(name) {
        return Ok(*id);
    }
    let used: std::collections::BTreeSet<u32> = table.values().copied().collect();
    let id = (first..max)
        .find(|id| !used.contains(id))
        .ok_or(Error::Exhausted { kind, max })?;
    table.insert(name.to_owned(), id);
    Ok(id)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub ids: Ids,
    #[serde(default)]
    pub routes: Vec<CliRoute>,
}

const FILE: &str = "state.json";

impl State {
    /// The state in `dir`, or an empty one when there is none yet.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| Error::Parse { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".{FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| Error::Parse {
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

    #[test]
    fn ids_are_stable_and_reuse_released_slots() -> Result<(), Error> {
        let mut t = BTreeMap::new();
        assert_eq!(allocate(&mut t, "a", "vif", 1, 4)?, 1);
        assert_eq!(allocate(&mut t, "b", "vif", 1, 4)?, 2);
        assert_eq!(allocate(&mut t, "a", "vif", 1, 4)?, 1);
        t.remove("a");
        assert_eq!(allocate(&mut t, "c", "vif", 1, 4)?, 1);
        assert_eq!(allocate(&mut t, "d", "vif", 1, 4)?, 3);
        assert!(matches!(
            allocate(&mut t, "e", "vif", 1, 4),
            Err(Error::Exhausted { .. })
        ));
        Ok(())
    }

    #[test]
    fn state_round_trips_through_its_file() -> Result<(), Error> {
        let dir = std::env::temp_dir().join(format!("forwarder-state-{}", std::process::id()));
        let mut state = State::default();
        state.ids.vifs.insert("vif-100".into(), 3);
        state.routes.push(CliRoute {
            gateway: "bgw-1".into(),
            prefix: "192.168.50.0/24".parse().expect("prefix"),
            via: "vif-100".into(),
        });
        state.save(&dir)?;
        assert_eq!(State::load(&dir)?, state);
        assert_eq!(State::load(&dir.join("missing"))?, State::default());
        fs::remove_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(())
    }
}
