//! In-memory named locks, for a store that one process owns (sled): in-process is then
//! cluster-wide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::LockGuard;

/// Named async locks. A name's lock is created on first use and dropped once no one holds or
/// waits for it, so the map does not grow with every key ever locked.
#[derive(Default)]
pub struct LocalLocks {
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// One held name; removes the name from the map when it is the last user.
struct Held {
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    name: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.guard.take());
        // Only the map holds it now (no holder, no waiter): forget the name.
        if map
            .get(&self.name)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.name);
        }
    }
}

impl LocalLocks {
    fn entry(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// Takes every lock of `names`, in sorted order.
    pub async fn lock(&self, names: &[String]) -> LockGuard {
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut held = Vec::with_capacity(sorted.len());
        for name in sorted {
            let guard = self.entry(name).lock_owned().await;
            held.push(Held {
                map: self.map.clone(),
                name: name.clone(),
                guard: Some(guard),
            });
        }
        LockGuard::new(held)
    }

    /// Takes the lock `name` if free.
    pub fn try_lock(&self, name: &str) -> Option<LockGuard> {
        let guard = self.entry(name).try_lock_owned().ok()?;
        Some(LockGuard::new(Held {
            map: self.map.clone(),
            name: name.to_string(),
            guard: Some(guard),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_name_is_not_free_and_is_forgotten_once_released() {
        let locks = LocalLocks::default();
        let g = locks.lock(&["b".into(), "a".into()]).await;
        assert!(locks.try_lock("a").is_none());
        assert!(locks.try_lock("c").is_some());
        drop(g);
        assert!(locks.try_lock("a").is_some());
        assert!(locks.map.lock().unwrap().is_empty());
    }
}
