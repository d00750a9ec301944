//! Coverage as Kubernetes Events on NetworkPolicies: a policy that selects
//! pods without a ready Picket sidecar is not enforced there, and says so
//! where its owner looks (`kubectl describe networkpolicy`): a Warning
//! `Unenforced` naming the pods, again when they change and at most once
//! per `repeat` while they stay the same; a Normal `Enforced` once every
//! pod it selects is covered again.
//!
//! [`Reporter::plan`] is pure; [`run`] lists the state every `interval`
//! and creates the Events. Every replica reports (each sees the whole
//! cluster); two replicas double the Events, never miss one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use picket_policy::{PodKey, PolicyKey};
use picket_state::SnapshotRx;

/// What to record on a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// It selects these pods, and nothing enforces it on them.
    Unenforced {
        /// The policy.
        policy: PolicyKey,
        /// The pods, sorted.
        pods: Vec<PodKey>,
    },
    /// Every pod it selects is enforced again.
    Enforced {
        /// The policy.
        policy: PolicyKey,
    },
}

/// What was reported, per policy: the pods named, and when.
#[derive(Debug)]
pub struct Reporter {
    repeat: Duration,
    reported: BTreeMap<PolicyKey, (Vec<PodKey>, Instant)>,
}

/// How many pods a message names before it says how many more.
const NAMED: usize = 5;

// === impl Reporter ===

impl Reporter {
    /// A reporter that repeats an unchanged warning after `repeat`.
    pub fn new(repeat: Duration) -> Self {
        Self {
            repeat,
            reported: BTreeMap::new(),
        }
    }

    /// The notes for the current unenforced pods by policy (see
    /// [`picket_policy::coverage::unenforced_by_policy`]); `exists`: whether
    /// a policy is still there (a deleted one gets no `Enforced`).
    pub fn plan(
        &mut self,
        current: BTreeMap<PolicyKey, Vec<PodKey>>,
        exists: impl Fn(&PolicyKey) -> bool,
        now: Instant,
    ) -> Vec<Note> {
        let mut notes = Vec::new();
        let fixed: Vec<PolicyKey> = self
            .reported
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for policy in fixed {
            self.reported.remove(&policy);
            if exists(&policy) {
                notes.push(Note::Enforced { policy });
            }
        }
        for (policy, pods) in current {
            let due = self.reported.get(&policy).is_none_or(|(named, at)| {
                *named != pods || now.saturating_duration_since(*at) >= self.repeat
            });
            if due {
                self.reported.insert(policy.clone(), (pods.clone(), now));
                notes.push(Note::Unenforced { policy, pods });
            }
        }
        notes
    }
}

// === impl Note ===

impl Note {
    /// The Event recording it, from `instance` (this replica).
    pub fn event(&self, instance: &str) -> Event {
        let (policy, type_, reason, message) = match self {
            Note::Unenforced { policy, pods } => {
                let mut names: Vec<String> = pods
                    .iter()
                    .take(NAMED)
                    .map(|p| p.name.to_string())
                    .collect();
                if pods.len() > NAMED {
                    names.push(format!("and {} more", pods.len() - NAMED));
                }
                let count = match pods.len() {
                    1 => "1 pod".to_string(),
                    n => format!("{n} pods"),
                };
                (
                    policy,
                    "Warning",
                    "Unenforced",
                    format!(
                        "selects {count} without a ready Picket sidecar: not enforced there ({})",
                        names.join(", ")
                    ),
                )
            }
            Note::Enforced { policy } => (
                policy,
                "Normal",
                "Enforced",
                "every pod it selects has a ready Picket sidecar again".to_string(),
            ),
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", policy.name)),
                namespace: Some(policy.namespace.to_string()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("NetworkPolicy".into()),
                name: Some(policy.name.to_string()),
                namespace: Some(policy.namespace.to_string()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some("picket-control".into()),
                host: None,
            }),
            reporting_component: Some("picket-control".into()),
            reporting_instance: Some(instance.into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        }
    }
}

/// Every `interval`, records the coverage of the current state as Events
/// (see the module). A failed create is logged and tried again when next
/// due (it is forgotten, so the next round plans it again).
pub async fn run(
    client: kube::Client,
    mut snapshots: SnapshotRx,
    interval: Duration,
    repeat: Duration,
    instance: String,
) {
    let mut reporter = Reporter::new(repeat);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(snapshot) = snapshots.borrow_and_update().clone() else {
            continue;
        };
        let current = picket_policy::coverage::unenforced_by_policy(&snapshot.index);
        let notes = reporter.plan(
            current,
            |k| snapshot.index.policy(k).is_some(),
            Instant::now(),
        );
        for note in notes {
            let event = note.event(&instance);
            let namespace = event.involved_object.namespace.clone().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            if let Err(error) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(%error, ?note, "Cannot record a coverage Event");
                if let Note::Unenforced { policy, .. } = &note {
                    reporter.reported.remove(policy);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> PodKey {
        PodKey::parse(s).unwrap()
    }

    #[test]
    fn a_warning_once_per_change_or_repeat_and_enforced_when_fixed() {
        let mut r = Reporter::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let policy = key("shop/deny");
        let state = |pods: &[&str]| {
            BTreeMap::from([(policy.clone(), pods.iter().map(|p| key(p)).collect())])
        };
        let notes = r.plan(state(&["shop/db-0"]), |_| true, t0);
        assert_eq!(
            notes,
            [Note::Unenforced {
                policy: policy.clone(),
                pods: vec![key("shop/db-0")]
            }]
        );
        assert!(
            r.plan(
                state(&["shop/db-0"]),
                |_| true,
                t0 + Duration::from_secs(30)
            )
            .is_empty(),
            "unchanged: not again"
        );
        let notes = r.plan(
            state(&["shop/db-0", "shop/db-1"]),
            |_| true,
            t0 + Duration::from_secs(60),
        );
        assert_eq!(notes.len(), 1, "changed: again");
        let notes = r.plan(
            state(&["shop/db-0", "shop/db-1"]),
            |_| true,
            t0 + Duration::from_secs(700),
        );
        assert_eq!(notes.len(), 1, "repeated after the bound");
        let notes = r.plan(BTreeMap::new(), |_| true, t0 + Duration::from_secs(710));
        assert_eq!(
            notes,
            [Note::Enforced {
                policy: policy.clone()
            }]
        );
        assert!(r
            .plan(BTreeMap::new(), |_| true, t0 + Duration::from_secs(720))
            .is_empty());
        // A deleted policy gets no Enforced.
        r.plan(state(&["shop/db-0"]), |_| true, t0);
        assert!(r.plan(BTreeMap::new(), |_| false, t0).is_empty());
    }

    #[test]
    fn the_event_names_the_policy_and_its_pods() {
        let pods: Vec<PodKey> = (0..7).map(|i| key(&format!("shop/db-{i}"))).collect();
        let event = Note::Unenforced {
            policy: key("shop/deny"),
            pods,
        }
        .event("picket-control-0");
        assert_eq!(event.involved_object.kind.as_deref(), Some("NetworkPolicy"));
        assert_eq!(event.involved_object.name.as_deref(), Some("deny"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(
            event.message.as_deref(),
            Some("selects 7 pods without a ready Picket sidecar: not enforced there (db-0, db-1, db-2, db-3, db-4, and 2 more)")
        );
    }
}
