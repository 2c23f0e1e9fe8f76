//! The generic (previous, current) change record.

use std::collections::BTreeMap;

/// One pending change of one object: its value before the first unapplied
/// event and its latest value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<V> {
    /// The value the maps hold now.
    pub previous: V,
    /// The value after all pending events.
    pub current: V,
}

/// Pending changes keyed by object, with upstream's semantics: one
/// (previous, current) pair per object, and a change that ends where it
/// started collapses to nothing.
#[derive(Debug, Clone)]
pub struct ChangeTracker<K, V> {
    items: BTreeMap<K, Change<V>>,
}

impl<K, V> Default for ChangeTracker<K, V> {
    fn default() -> Self {
        ChangeTracker { items: BTreeMap::new() }
    }
}

impl<K: Ord, V: PartialEq> ChangeTracker<K, V> {
    /// Records that `key` now has the value `current`. `previous` is asked
    /// only when `key` has no pending change yet. Returns whether any change
    /// is pending afterwards.
    pub fn record(&mut self, key: K, previous: impl FnOnce() -> V, current: V) -> bool {
        use std::collections::btree_map::Entry;
        match self.items.entry(key) {
            Entry::Occupied(mut e) => {
                if e.get().previous == current {
                    e.remove();
                } else {
                    e.get_mut().current = current;
                }
            }
            Entry::Vacant(e) => {
                let previous = previous();
                if previous != current {
                    e.insert(Change { previous, current });
                }
            }
        }
        !self.items.is_empty()
    }

    /// Whether `key` has a pending change.
    pub fn is_pending(&self, key: &K) -> bool {
        self.items.contains_key(key)
    }

    /// How many objects have pending changes.
    pub fn pending(&self) -> usize {
        self.items.len()
    }

    /// Takes every pending change, leaving the tracker empty.
    pub fn take(&mut self) -> BTreeMap<K, Change<V>> {
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_that_ends_where_it_started_collapses() {
        let mut t = ChangeTracker::default();
        assert!(t.record("a", || 1, 2));
        assert!(!t.record("a", || unreachable!(), 1));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn keeps_the_first_previous_and_the_last_current() {
        let mut t = ChangeTracker::default();
        t.record("a", || 1, 2);
        t.record("a", || 99, 3);
        let changes = t.take();
        assert_eq!(changes["a"], Change { previous: 1, current: 3 });
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_no_op_event_records_nothing() {
        let mut t: ChangeTracker<&str, i32> = ChangeTracker::default();
        assert!(!t.record("a", || 5, 5));
    }
}
