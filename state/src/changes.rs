//! What each commit changed, by object: for consumers that skip commits and
//! still need to know what changed since the one they last looked at (the
//! control plane's subscribers, which skip work for changes that cannot
//! touch their view).
//!
//! Bounded: the last [`KEEP`] commits. Older, or a commit that replaced a
//! kind wholesale (a relist), answers "everything may have changed".

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::kind::ObjectRef;

/// How many commits the log remembers.
pub const KEEP: usize = 4096;
/// The most objects one commit records before it counts as "everything".
const MAX_OBJECTS: usize = 10_000;

/// The changes of the last commits.
#[derive(Debug, Default)]
pub struct ChangeLog {
    commits: Mutex<VecDeque<(u64, Changed)>>,
}

/// What one commit changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Changed {
    /// These objects (added, modified or deleted).
    Objects(Vec<ObjectRef>),
    /// Anything (a kind was replaced whole, or too much changed at once).
    #[default]
    Everything,
}

// === impl Changed ===

impl Changed {
    /// Nothing yet.
    pub fn none() -> Self {
        Self::Objects(Vec::new())
    }

    /// Records that `object` changed.
    pub fn push(&mut self, object: ObjectRef) {
        if let Self::Objects(objects) = self {
            if objects.len() >= MAX_OBJECTS {
                *self = Self::Everything;
            } else {
                objects.push(object);
            }
        }
    }
}

// === impl ChangeLog ===

impl ChangeLog {
    /// Records what commit `version` changed.
    pub fn push(&self, version: u64, changed: Changed) {
        let mut commits = self.lock();
        if commits.len() == KEEP {
            commits.pop_front();
        }
        commits.push_back((version, changed));
    }

    /// Every object changed by the commits after `since` up to `until`
    /// (repeats possible); `None` when that may be anything: the log no
    /// longer reaches back to `since`, or one of the commits changed
    /// everything.
    pub fn between(&self, since: u64, until: u64) -> Option<Vec<ObjectRef>> {
        let commits = self.lock();
        let oldest = commits.front().map_or(u64::MAX, |(v, _)| *v);
        if since + 1 < oldest && since < until {
            return None;
        }
        let mut out = Vec::new();
        // Versions increase: skip to the first commit after `since`.
        let first = commits.partition_point(|(v, _)| *v <= since);
        for (version, changed) in commits.range(first..) {
            if *version > until {
                break;
            }
            match changed {
                Changed::Objects(objects) => out.extend(objects.iter().cloned()),
                Changed::Everything => return None,
            }
        }
        Some(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Changed)>> {
        self.commits.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Kind;
    use picket_policy::ObjectKey;

    fn pod(name: &str) -> ObjectRef {
        ObjectRef {
            kind: Kind::Pod,
            key: ObjectKey::new("ns", name),
        }
    }

    #[test]
    fn the_changes_between_two_commits_are_theirs_and_a_relist_is_everything() {
        let log = ChangeLog::default();
        log.push(1, Changed::Everything);
        log.push(2, Changed::Objects(vec![pod("a")]));
        log.push(3, Changed::Objects(vec![pod("b"), pod("c")]));
        assert_eq!(log.between(1, 3), Some(vec![pod("a"), pod("b"), pod("c")]));
        assert_eq!(log.between(2, 3), Some(vec![pod("b"), pod("c")]));
        assert_eq!(log.between(3, 3), Some(vec![]));
        assert_eq!(log.between(0, 3), None, "commit 1 replaced everything");
        for v in 4..(4 + KEEP as u64) {
            log.push(v, Changed::none());
        }
        assert_eq!(log.between(2, 10), None, "forgotten");
        let mut many = Changed::none();
        for i in 0..=MAX_OBJECTS {
            many.push(pod(&i.to_string()));
        }
        assert_eq!(many, Changed::Everything);
    }
}
