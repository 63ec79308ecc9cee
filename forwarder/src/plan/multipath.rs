//! The multipath sets the selected routes use: equal best BGP paths on several VIFs of a
//! border gateway, numbered so that a selected route stays small, with how many routes use
//! each and which sets each VIF is in (a VIF whose client routers change rewrites the groups
//! of its sets, and nothing else).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{
    ids::{PathSet, VifId},
    rib::MultipathId,
};

#[derive(Clone, Debug, Default)]
pub struct Multipaths {
    by_id: BTreeMap<MultipathId, (PathSet, usize)>,
    by_set: HashMap<PathSet, MultipathId>,
    by_vif: HashMap<VifId, BTreeSet<MultipathId>>,
    /// Numbers of sets no route uses any more; forgotten at the next [`Self::sweep`], since
    /// the changes of the update that released them may still name them.
    unused: BTreeSet<MultipathId>,
    free: BTreeSet<u32>,
    next: u32,
}

impl Multipaths {
    /// The set numbered `id`.
    pub fn get(&self, id: MultipathId) -> Option<&PathSet> {
        self.by_id.get(&id).map(|(set, _)| set)
    }

    /// The number of `set`, given one if it has none (unused until [`Self::take`]).
    pub fn id_for(&mut self, set: PathSet) -> MultipathId {
        if let Some(id) = self.by_set.get(&set) {
            return *id;
        }
        let id = MultipathId(self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        }));
        self.by_id.insert(id, (set, 0));
        self.by_set.insert(set, id);
        for (vif, _) in set.as_slice() {
            self.by_vif.entry(*vif).or_default().insert(id);
        }
        self.unused.insert(id);
        id
    }

    /// One more route uses `id`; true if it is the first.
    pub fn take(&mut self, id: MultipathId) -> bool {
        let Some((_, refs)) = self.by_id.get_mut(&id) else {
            return false;
        };
        *refs += 1;
        self.unused.remove(&id);
        *refs == 1
    }

    /// One route less uses `id`; true if it was the last.
    pub fn give_back(&mut self, id: MultipathId) -> bool {
        let Some((_, refs)) = self.by_id.get_mut(&id) else {
            return false;
        };
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.unused.insert(id);
        }
        *refs == 0
    }

    /// Forgets the sets no route uses.
    pub fn sweep(&mut self) {
        for id in std::mem::take(&mut self.unused) {
            let Some((set, refs)) = self.by_id.get(&id).copied() else {
                continue;
            };
            if refs > 0 {
                continue;
            }
            self.by_id.remove(&id);
            self.by_set.remove(&set);
            for (vif, _) in set.as_slice() {
                if let Some(ids) = self.by_vif.get_mut(vif) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_vif.remove(vif);
                    }
                }
            }
            self.free.insert(id.0);
        }
    }

    /// The sets in use that `vif` is in.
    pub fn with_vif(&self, vif: VifId) -> Vec<(MultipathId, PathSet)> {
        self.by_vif
            .get(&vif)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let (set, refs) = self.by_id.get(id)?;
                (*refs > 0).then_some((*id, *set))
            })
            .collect()
    }

    /// The sets in use and how many routes use each (for comparing plans: numbers differ
    /// with the order sets were made in).
    pub fn in_use(&self) -> BTreeMap<PathSet, usize> {
        self.by_id
            .values()
            .filter(|(_, refs)| *refs > 0)
            .map(|(set, refs)| (*set, *refs))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_kept_while_used_and_reused_after_a_sweep() {
        let mut m = Multipaths::default();
        let ab = PathSet::new(&[(VifId(2), 1), (VifId(1), 1)]).expect("set");
        let ac = PathSet::new(&[(VifId(1), 1), (VifId(3), 1)]).expect("set");
        let id = m.id_for(ab);
        assert_eq!(m.id_for(ab), id);
        assert!(m.take(id));
        assert!(!m.take(id));
        assert_eq!(m.with_vif(VifId(1)), vec![(id, ab)]);
        assert!(!m.give_back(id));
        assert!(m.give_back(id));
        // Released but still readable until the next sweep.
        assert_eq!(m.get(id), Some(&ab));
        assert!(m.with_vif(VifId(1)).is_empty());
        m.sweep();
        assert_eq!(m.get(id), None);
        let other = m.id_for(ac);
        assert_eq!(other, id, "the number comes back");
        assert!(m.in_use().is_empty());
        // A VIF twice is not a set.
        assert!(PathSet::new(&[(VifId(1), 1), (VifId(1), 2)]).is_none());
    }
}
