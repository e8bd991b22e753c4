//! Drops repeats inside a bounded window (a count and an age), so a redelivered message does
//! not reach a destination twice in the normal case. Per process: with several transform
//! replicas a repeat that lands on another one gets through, and delivery stays at-least-once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

pub struct DedupeWindow {
    settings: DedupeSettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl DedupeWindow {
    pub fn new(settings: DedupeSettings) -> Self {
        DedupeWindow {
            settings,
            state: Mutex::default(),
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .seen
            .get(key)
            .is_some_and(|at| at.elapsed() < self.settings.ttl)
    }

    pub fn insert_all<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for key in keys {
            state.seen.insert(key.to_owned(), now);
            state.order.push_back((key.to_owned(), now));
        }
        // Forget what is too old or over capacity; an entry re-inserted later stays.
        while let Some((key, at)) = state.order.front().cloned() {
            let expired = at.elapsed() >= self.settings.ttl;
            if !expired && state.seen.len() <= self.settings.capacity {
                break;
            }
            state.order.pop_front();
            if state.seen.get(&key) == Some(&at) {
                state.seen.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
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
            capacity: 3,
            ttl: Duration::from_millis(200),
        });
        w.insert_all(["a", "b", "c"]);
        assert!(w.contains("a") && w.contains("c"));
        w.insert_all(["d"]);
        assert!(!w.contains("a"), "over capacity, the oldest goes");
        assert!(w.contains("d"));
        assert_eq!(w.len(), 3);
        std::thread::sleep(Duration::from_millis(250));
        assert!(!w.contains("d"), "too old");
        w.insert_all(["e"]);
        assert_eq!(w.len(), 1);
    }
}
