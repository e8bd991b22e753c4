//! Drops repeats inside a bounded window (a count and an age), so a redelivered message does
//! not reach a destination twice in the normal case. Per process: with several transform
//! replicas a repeat that lands on another one gets through, and delivery stays at-least-once.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A repeat's identity: 128 bits of XXH3 over the key's parts. Fixed-size keys keep the window
/// small (against ~180 bytes a key for the strings it replaced, which made most of
/// `mpconnect all`'s memory at full speed) and cheap to look up; at 128 bits two different
/// keys meeting inside one window is not a practical concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u64; 2]);

impl Key {
    /// The key of `parts`, each ended by a separator so that ("ab", "c") ≠ ("a", "bc").
    pub fn of(parts: &[&str]) -> Key {
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        for part in parts {
            hasher.update(part.as_bytes());
            hasher.update(&[0x1f]);
        }
        let h = hasher.digest128();
        Key([h as u64, (h >> 64) as u64])
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DedupeSettings {
    /// Most keys remembered (the oldest go first).
    pub capacity: usize,
    /// How long a key is remembered.
    pub ttl: Duration,
}

impl Default for DedupeSettings {
    fn default() -> Self {
        DedupeSettings {
            capacity: 1_000_000,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// Two generations of keys: new keys go into the current one; when it holds half the capacity
/// or is half the age old, it becomes the previous one and the previous one is dropped whole;
/// a generation whose newest key is past the age goes too. A key is so remembered for at least
/// half the count and half the age, and never past the age, with no per-key timestamp or
/// ordering queue: about 17 bytes a key, a third of an exact LRU's.
pub struct DedupeWindow {
    settings: DedupeSettings,
    state: Mutex<State>,
}

struct Generation {
    keys: HashSet<Key>,
    since: Instant,
    newest: Instant,
}

impl Generation {
    fn new() -> Self {
        let now = Instant::now();
        Generation {
            keys: HashSet::new(),
            since: now,
            newest: now,
        }
    }
}

struct State {
    current: Generation,
    previous: Generation,
}

impl DedupeWindow {
    pub fn new(settings: DedupeSettings) -> Self {
        DedupeWindow {
            settings,
            state: Mutex::new(State {
                current: Generation::new(),
                previous: Generation::new(),
            }),
        }
    }

    pub fn contains(&self, key: &Key) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut state);
        state.current.keys.contains(key) || state.previous.keys.contains(key)
    }

    pub fn insert_all<'a>(&self, keys: impl IntoIterator<Item = &'a Key>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut state);
        let half_count = (self.settings.capacity / 2).max(1);
        for &key in keys {
            if state.current.keys.len() >= half_count {
                state.previous = std::mem::replace(&mut state.current, Generation::new());
            }
            state.current.keys.insert(key);
            state.current.newest = Instant::now();
        }
    }

    /// Drops generations past the age, and starts a new one when the current is half of it.
    fn expire(&self, state: &mut State) {
        let ttl = self.settings.ttl;
        if state.previous.newest.elapsed() >= ttl && !state.previous.keys.is_empty() {
            state.previous = Generation::new();
        }
        if state.current.newest.elapsed() >= ttl && !state.current.keys.is_empty() {
            state.current = Generation::new();
        }
        if state.current.since.elapsed() >= ttl / 2 {
            state.previous = std::mem::replace(&mut state.current, Generation::new());
        }
    }

    pub fn len(&self) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut state);
        state.current.keys.len() + state.previous.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_count_and_age() {
        let w = DedupeWindow::new(DedupeSettings {
            capacity: 4,
            ttl: Duration::from_millis(400),
        });
        let keys: Vec<Key> = (0..8).map(|i| Key::of(&[&i.to_string()])).collect();
        w.insert_all(&keys[..2]);
        assert!(w.contains(&keys[0]) && w.contains(&keys[1]));
        // The next two start a generation; the first two are still remembered.
        w.insert_all(&keys[2..4]);
        assert!(keys[..4].iter().all(|k| w.contains(k)));
        // Two more generations: the first two are past the count.
        w.insert_all(&keys[4..6]);
        assert!(!w.contains(&keys[0]), "over the count, the oldest go");
        assert!(keys[2..6].iter().all(|k| w.contains(k)));
        assert!(w.len() <= 4);
        // Past the age, everything goes.
        std::thread::sleep(Duration::from_millis(450));
        assert!(!w.contains(&keys[5]), "too old");
        assert!(w.is_empty());
        w.insert_all(&keys[6..7]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn parts_are_kept_apart() {
        assert_ne!(Key::of(&["ab", "c"]), Key::of(&["a", "bc"]));
        assert_eq!(Key::of(&["a", "b"]), Key::of(&["a", "b"]));
    }
}
