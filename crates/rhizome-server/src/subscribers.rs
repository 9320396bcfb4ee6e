//! The subscribers of one channel: a short vector while there are few (most channels have one
//! or two), a hash map once there are many, so both the idle memory of a private channel and
//! the lookup cost of a crowded one stay small.

use std::collections::HashMap;

/// Up to this many subscribers are kept in a vector.
const FEW_MAX: usize = 8;

/// Subscribers by connection id.
#[derive(Debug)]
pub enum Subscribers<K, V> {
    /// Few: scanned linearly, allocated exactly.
    Few(Vec<(K, V)>),
    /// Many (boxed, so a channel's entry in the hub stays small).
    #[allow(clippy::box_collection)] // the box keeps every channel's entry at a vector's size
    Many(Box<HashMap<K, V>>),
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Subscribers::Few(Vec::new())
    }
}

impl<K: Copy + Eq + std::hash::Hash, V> Subscribers<K, V> {
    /// The subscriber `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        match self {
            Subscribers::Few(v) => v.iter().find(|(k, _)| k == key).map(|(_, s)| s),
            Subscribers::Many(m) => m.get(key),
        }
    }

    /// The subscriber `key`, mutably.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            Subscribers::Few(v) => v.iter_mut().find(|(k, _)| k == key).map(|(_, s)| s),
            Subscribers::Many(m) => m.get_mut(key),
        }
    }

    /// Adds or replaces the subscriber `key`.
    pub fn insert(&mut self, key: K, value: V) {
        match self {
            Subscribers::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = value;
                } else if v.len() < FEW_MAX {
                    // Exact growth: most channels never get a second subscriber.
                    v.reserve_exact(1);
                    v.push((key, value));
                } else {
                    let mut m: HashMap<K, V> = std::mem::take(v).into_iter().collect();
                    m.insert(key, value);
                    *self = Subscribers::Many(Box::new(m));
                }
            }
            Subscribers::Many(m) => {
                m.insert(key, value);
            }
        }
    }

    /// Removes the subscriber `key`.
    pub fn remove(&mut self, key: &K) {
        match self {
            Subscribers::Few(v) => {
                v.retain(|(k, _)| k != key);
                v.shrink_to_fit();
            }
            Subscribers::Many(m) => {
                m.remove(key);
                if m.len() <= FEW_MAX / 2 {
                    *self = Subscribers::Few(std::mem::take(m.as_mut()).into_iter().collect());
                }
            }
        }
    }

    /// Number of subscribers.
    pub fn len(&self) -> usize {
        match self {
            Subscribers::Few(v) => v.len(),
            Subscribers::Many(m) => m.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every subscriber.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&K, &V)> + '_> {
        match self {
            Subscribers::Few(v) => Box::new(v.iter().map(|(k, s)| (k, s))),
            Subscribers::Many(m) => Box::new(m.iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_map_and_shrinks_back() {
        let mut s: Subscribers<u64, u64> = Subscribers::default();
        for i in 0..20 {
            s.insert(i, i * 10);
        }
        s.insert(3, 33);
        assert_eq!(s.len(), 20);
        assert!(matches!(s, Subscribers::Many(_)));
        assert_eq!(s.get(&3), Some(&33));
        for i in 0..17 {
            s.remove(&i);
        }
        assert!(matches!(s, Subscribers::Few(_)));
        assert_eq!(s.len(), 3);
        let mut keys: Vec<u64> = s.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        assert_eq!(keys, [17, 18, 19]);
        if let Some(v) = s.get_mut(&18) {
            *v = 1;
        }
        assert_eq!(s.get(&18), Some(&1));
        s.remove(&17);
        s.remove(&18);
        s.remove(&19);
        assert!(s.is_empty());
    }
}
