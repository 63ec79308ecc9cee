//! Typed ids and their allocation. The maps are arrays indexed by these numbers, so an id
//! means a slot: ids are kept across restarts (persisted in `state.json`), handed out lowest
//! first, and released only once nothing in the maps refers to them any more.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// A VIF's slot in the VIF table.
    VifId
);
id!(
    /// A border gateway: the first 32 bits of every route key of its table.
    GatewayId
);
id!(
    /// A VPC attachment's slot in the attachment table.
    AttachmentId
);
id!(
    /// A next hop's slot in the next-hop table.
    NextHopId
);

/// What a next-hop slot is for. Routes point to next hops, so the key says what the routes
/// behind a slot mean and lets a restarted agent find every slot where it left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NextHopKey {
    /// Encapsulation toward a VPC attachment.
    Attachment { attachment: AttachmentId },
    /// One client router of a VIF (index of its `[[vif.peer]]`).
    VifPeer { vif: VifId, peer: u8 },
    /// Every usable client router of a VIF's IPv4 pairs: IPv4 routes toward the VIF itself
    /// (static routes).
    Vif { vif: VifId },
    /// The client routers of the BGP sessions in `mask` (bit i = peer i): routes those
    /// sessions announced.
    VifPeers { vif: VifId, mask: u8 },
    /// Equal best BGP paths on several VIFs of a border gateway (multipath): the client
    /// routers of each (VIF, session mask), one group.
    Multipath { paths: PathSet },
    /// Every usable client router of a VIF's IPv6 pairs: IPv6 static routes toward the VIF.
    Vif6 { vif: VifId },
    /// A slot the pinned map used that no state file explained (a lost or older state file):
    /// reserved until no route uses it.
    Pinned { id: u32 },
}

impl NextHopKey {
    /// The VIF this next hop sends to, if any.
    pub fn vif(&self) -> Option<VifId> {
        match self {
            Self::VifPeer { vif, .. }
            | Self::Vif { vif }
            | Self::Vif6 { vif }
            | Self::VifPeers { vif, .. } => Some(*vif),
            Self::Attachment { .. } | Self::Pinned { .. } | Self::Multipath { .. } => None,
        }
    }

    /// Every VIF this next hop sends to.
    pub fn vifs(&self) -> impl Iterator<Item = VifId> + '_ {
        let paths = match self {
            Self::Multipath { paths } => paths.as_slice(),
            _ => &[],
        };
        self.vif()
            .into_iter()
            .chain(paths.iter().map(|(vif, _)| *vif))
    }
}

/// The VIF paths of a multipath route: (VIF, mask of the VIF's sessions that hold the path),
/// sorted by VIF, at most [`PathSet::CAPACITY`] (a group has at most that many members and
/// each path brings at least one). Fixed size, so next-hop keys stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "Vec<(VifId, u8)>", try_from = "Vec<(VifId, u8)>")]
pub struct PathSet {
    len: u8,
    paths: [(VifId, u8); PathSet::CAPACITY],
}

impl PathSet {
    pub const CAPACITY: usize = forwarder_common::MAX_GROUP_MEMBERS;

    /// The set of `paths` (sorted here); `None` if there are more than [`Self::CAPACITY`] or
    /// a VIF appears twice.
    pub fn new(paths: &[(VifId, u8)]) -> Option<Self> {
        if paths.len() > Self::CAPACITY {
            return None;
        }
        let mut set = Self {
            len: paths.len() as u8,
            paths: [(VifId(0), 0); Self::CAPACITY],
        };
        set.paths[..paths.len()].copy_from_slice(paths);
        set.paths[..paths.len()].sort_unstable();
        if set.as_slice().windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        Some(set)
    }

    pub fn as_slice(&self) -> &[(VifId, u8)] {
        &self.paths[..usize::from(self.len)]
    }

    pub fn contains_vif(&self, vif: VifId) -> bool {
        self.as_slice().iter().any(|(v, _)| *v == vif)
    }
}

impl std::fmt::Debug for PathSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl From<PathSet> for Vec<(VifId, u8)> {
    fn from(set: PathSet) -> Self {
        set.as_slice().to_vec()
    }
}

impl TryFrom<Vec<(VifId, u8)>> for PathSet {
    type Error = String;

    fn try_from(paths: Vec<(VifId, u8)>) -> Result<Self, Self::Error> {
        Self::new(&paths).ok_or_else(|| {
            format!(
                "a multipath set holds at most {} distinct VIFs",
                Self::CAPACITY
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no free {kind} id: all {capacity} slots of the map are in use")]
pub struct Exhausted {
    pub kind: &'static str,
    pub capacity: u32,
}

/// Hands out ids `first..capacity` to keys, lowest free first, in O(log n). Ids of keys that
/// were released are reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool<K: Ord + Clone> {
    kind: &'static str,
    first: u32,
    capacity: u32,
    by_key: BTreeMap<K, u32>,
    by_id: BTreeMap<u32, K>,
    /// Released ids below `next`.
    free: BTreeSet<u32>,
    /// The lowest id never handed out.
    next: u32,
}

impl<K: Ord + Clone> Pool<K> {
    pub fn new(kind: &'static str, first: u32, capacity: u32) -> Self {
        Self {
            kind,
            first,
            capacity,
            by_key: BTreeMap::new(),
            by_id: BTreeMap::new(),
            free: BTreeSet::new(),
            next: first,
        }
    }

    /// A pool holding `entries` (as loaded from a state file). An entry whose id is out of
    /// range or already taken is dropped and returned, for the caller to report.
    pub fn with_entries(
        kind: &'static str,
        first: u32,
        capacity: u32,
        entries: impl IntoIterator<Item = (K, u32)>,
    ) -> (Self, Vec<(K, u32)>) {
        let mut pool = Self::new(kind, first, capacity);
        let mut dropped = Vec::new();
        for (key, id) in entries {
            if id < first || id >= capacity || pool.by_id.contains_key(&id) {
                dropped.push((key, id));
                continue;
            }
            pool.by_key.insert(key.clone(), id);
            pool.by_id.insert(id, key);
        }
        pool.next = pool.by_id.keys().next_back().map_or(first, |id| id + 1);
        pool.free = (first..pool.next)
            .filter(|id| !pool.by_id.contains_key(id))
            .collect();
        (pool, dropped)
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    pub fn key(&self, id: u32) -> Option<&K> {
        self.by_id.get(&id)
    }

    /// The id of `key`, allocated if it has none.
    pub fn allocate(&mut self, key: &K) -> Result<u32, Exhausted> {
        if let Some(id) = self.by_key.get(key) {
            return Ok(*id);
        }
        let id = match self.free.pop_first() {
            Some(id) => id,
            None if self.next < self.capacity => {
                self.next += 1;
                self.next - 1
            }
            None => {
                return Err(Exhausted {
                    kind: self.kind,
                    capacity: self.capacity - self.first,
                });
            }
        };
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        Ok(id)
    }

    /// Reserves `id` for `key` (a slot found in use); false if the id is taken or out of range.
    pub fn reserve(&mut self, key: K, id: u32) -> bool {
        if id < self.first || id >= self.capacity || self.by_id.contains_key(&id) {
            return false;
        }
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.remove(&id);
        }
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key);
        true
    }

    /// Gives `key`'s id back.
    pub fn release(&mut self, key: &K) -> Option<u32> {
        let id = self.by_key.remove(key)?;
        self.by_id.remove(&id);
        if id + 1 == self.next {
            self.next = id;
            // Trailing free ids fold back into `next`.
            while self.next > self.first && self.free.last() == Some(&(self.next - 1)) {
                self.free.pop_last();
                self.next -= 1;
            }
        } else {
            self.free.insert(id);
        }
        Some(id)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Lowers or raises the capacity (the real size of an adopted map). Ids at or above it
    /// stay where they are but no new ones are handed out there.
    pub fn set_capacity(&mut self, capacity: u32) {
        self.capacity = capacity;
        self.free.retain(|id| *id < capacity);
        self.next = self.next.min(capacity.max(self.first));
        if let Some(last) = self.by_id.keys().next_back() {
            self.next = self.next.max(last + 1);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, u32)> {
        self.by_key.iter().map(|(k, id)| (k, *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_first_and_released_ids_come_back() -> Result<(), Exhausted> {
        let mut pool: Pool<&str> = Pool::new("vif", 1, 4);
        assert_eq!(pool.allocate(&"a")?, 1);
        assert_eq!(pool.allocate(&"b")?, 2);
        assert_eq!(pool.allocate(&"a")?, 1);
        assert_eq!(pool.release(&"a"), Some(1));
        assert_eq!(pool.allocate(&"c")?, 1);
        assert_eq!(pool.allocate(&"d")?, 3);
        let err = pool.allocate(&"e").expect_err("full");
        assert_eq!(err.capacity, 3);
        assert_eq!(
            err.to_string(),
            "no free vif id: all 3 slots of the map are in use"
        );
        // Releasing the top id folds it (and free ids below it) back.
        pool.release(&"c");
        pool.release(&"d");
        assert_eq!(pool.allocate(&"f")?, 1);
        assert_eq!(pool.allocate(&"g")?, 3);
        Ok(())
    }

    #[test]
    fn loaded_entries_keep_their_ids_and_bad_ones_are_reported() -> Result<(), Exhausted> {
        let (mut pool, dropped) =
            Pool::with_entries("nh", 1, 10, [("a", 5), ("b", 2), ("c", 5), ("d", 10)]);
        assert_eq!(dropped, vec![("c", 5), ("d", 10)]);
        assert_eq!(pool.get(&"a"), Some(5));
        assert_eq!(pool.allocate(&"x")?, 1);
        assert_eq!(pool.allocate(&"y")?, 3);
        assert_eq!(pool.allocate(&"z")?, 4);
        assert_eq!(pool.allocate(&"w")?, 6);
        assert!(pool.reserve("r", 8));
        assert!(!pool.reserve("s", 8));
        assert_eq!(pool.allocate(&"v")?, 7);
        assert_eq!(pool.allocate(&"u")?, 9);
        Ok(())
    }
}
