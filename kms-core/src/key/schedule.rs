//! What the scheduler should do with a key now: an automatic rotation or a destruction that is due.

use serde::{Deserialize, Serialize};

use super::model::{KeyMeta, KeyState};

/// What the scheduler should do with a key now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduledAction {
    Rotate,
    Destroy,
}

/// The action due for `meta` at `now`, if any. Destruction comes first (the two cannot both
/// be due today, since only an enabled key rotates, but the order is the safe one).
pub fn due_action(meta: &KeyMeta, now: u64) -> Option<ScheduledAction> {
    if meta.destruction_due(now) {
        Some(ScheduledAction::Destroy)
    } else if meta.rotation_due(now) {
        Some(ScheduledAction::Rotate)
    } else {
        None
    }
}

impl KeyMeta {
    /// When the next automatic rotation is due: `last_rotated + rotation_period`, if the key
    /// is enabled and has a period; `None` otherwise (a disabled key never rotates by itself).
    /// `rotation_due(now)` is exactly `next_rotation() <= now`.
    pub fn next_rotation(&self) -> Option<u64> {
        match (self.state, self.rotation_period) {
            (KeyState::Enabled, Some(p)) => Some(self.last_rotated.saturating_add(p)),
            _ => None,
        }
    }

    /// Whether an automatic rotation is due at `now`.
    pub fn rotation_due(&self, now: u64) -> bool {
        self.next_rotation().is_some_and(|t| now >= t)
    }

    /// Whether a pending deletion has reached its date at `now`.
    pub fn destruction_due(&self, now: u64) -> bool {
        self.deletion_at().is_some_and(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::LifecycleError;
    use crate::key::lifecycle::DAY;
    use crate::key::test_support::*;

    #[test]
    fn rotation_due_with_injected_time() {
        let period = 7 * DAY;
        let mut k = key(T0);
        assert_eq!(k.next_rotation(), None);
        assert!(!k.rotation_due(u64::MAX));
        k.set_rotation_period(Some(period), T0).unwrap();
        assert_eq!(k.next_rotation(), Some(T0 + period));
        assert!(!k.rotation_due(T0 + period - 1));
        assert_eq!(due_action(&k, T0 + period - 1), None);
        assert!(k.rotation_due(T0 + period));
        assert_eq!(due_action(&k, T0 + period), Some(ScheduledAction::Rotate));

        // Rotating restarts the period.
        k.rotate(T0 + period).unwrap();
        assert!(!k.rotation_due(T0 + 2 * period - 1));
        assert!(k.rotation_due(T0 + 2 * period));

        // Off again.
        k.set_rotation_period(None, T0 + 1).unwrap();
        assert!(!k.rotation_due(u64::MAX));
    }

    #[test]
    fn disabled_key_is_never_rotation_due() {
        let mut k = key(T0);
        k.set_rotation_period(Some(HOUR), T0).unwrap();
        k.disable(T0).unwrap();
        for t in [T0 + HOUR, T0 + 1000 * DAY, u64::MAX] {
            assert!(!k.rotation_due(t));
            assert_eq!(due_action(&k, t), None);
        }
        assert_eq!(k.next_rotation(), None);
        assert!(matches!(
            k.rotate(T0 + 1),
            Err(LifecycleError::NotAllowed(_))
        ));
        k.schedule_deletion(T0, Some(7), 7).unwrap();
        assert!(!k.rotation_due(T0 + 2 * HOUR));
    }
}
