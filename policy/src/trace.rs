//! What an evaluation tried: the sink the one evaluation path reports to.
//!
//! [`NoTrace`] is the hot path's sink: every method is empty and inlined, and
//! `EVERY_RULE = false` lets a side stop at the first rule that allows, so
//! tracing costs nothing there. [`Recorder`] tries every rule of every
//! selecting policy on both sides and keeps what each said, for `picket
//! explain`. The next evaluation modes (audit verdicts, admin policy tiers)
//! report through the same trait. Rendering lives with the CLI.
//!
//! Pure: no I/O.

use std::sync::Arc;

use super::cluster::{Action, ClusterPolicy, ClusterRule, Tier};
use super::eval::Decision;
use super::model::{Direction, PodKey, PolicyKey, Protocol, Rule};

/// Receives every side, policy and rule an evaluation tries, in order.
pub trait Trace {
    /// Whether the evaluation must try every rule (and both sides) rather
    /// than stop as soon as the outcome is known.
    const EVERY_RULE: bool;

    /// A side begins: `subject`'s policies for `direction`.
    fn side(&mut self, subject: &PodKey, direction: Direction);

    /// A selecting policy of the current side begins.
    fn policy(&mut self, policy: &PolicyKey);

    /// A rule of the current policy was tried: which peer entry and which
    /// port entry matched (`Some(None)`: the rule allows all), or `None`.
    fn rule(
        &mut self,
        index: usize,
        rule: &Rule,
        peer: Option<Option<usize>>,
        port: Option<Option<usize>>,
    );

    /// A cluster policy of the current side's Admin or Baseline tier begins.
    #[inline(always)]
    fn cluster_policy(&mut self, _policy: &ClusterPolicy) {}

    /// A rule of the current cluster policy was tried: which peer entry
    /// and which port entry matched (`Some(None)`: all ports, or a broken
    /// rule failing closed), or `None`.
    #[inline(always)]
    fn cluster_rule(
        &mut self,
        _index: usize,
        _rule: &ClusterRule,
        _peer: Option<Option<usize>>,
        _port: Option<Option<usize>>,
    ) {
    }
}

/// The hot path's sink: records nothing, stops at the first allowing rule.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrace;

/// A sink that records every rule tried, for explanations.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    ingress: Option<SideTrace>,
    egress: Option<SideTrace>,
    current: Option<Direction>,
    /// The tier of the cluster policy being recorded.
    tier: Option<Tier>,
}

/// The whole reasoning behind one decision.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The source, as `ns/pod` or an address.
    pub from: String,
    /// The destination pod.
    pub to: PodKey,
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The decision itself.
    pub decision: Decision,
    /// The destination's ingress policies, rule by rule.
    pub ingress: Option<SideTrace>,
    /// The source's egress policies, rule by rule.
    pub egress: Option<SideTrace>,
}

/// One side's policies and what each rule said.
#[derive(Clone, Debug)]
pub struct SideTrace {
    /// The pod whose policies these are.
    pub pod: PodKey,
    /// The direction.
    pub direction: Direction,
    /// Each selecting policy, in key order.
    pub policies: Vec<PolicyTrace>,
    /// The Admin tier's cluster policies consulted, in order (before the
    /// NetworkPolicies).
    pub admin: Vec<ClusterPolicyTrace>,
    /// The Baseline tier's cluster policies consulted, in order (after them).
    pub baseline: Vec<ClusterPolicyTrace>,
}

/// One cluster policy's rules, tried in order.
#[derive(Clone, Debug)]
pub struct ClusterPolicyTrace {
    /// The policy's name.
    pub policy: Arc<str>,
    /// Its tier.
    pub tier: Tier,
    /// Its priority.
    pub priority: u16,
    /// Each rule's verdict.
    pub rules: Vec<ClusterRuleTrace>,
}

/// One cluster policy rule's verdict.
#[derive(Clone, Debug)]
pub struct ClusterRuleTrace {
    /// The rule's index.
    pub index: usize,
    /// Its name, when it has one.
    pub name: Option<Arc<str>>,
    /// What it does when it matches (a broken Pass denies).
    pub action: Action,
    /// Which peer matched (`Some(None)`: a broken rule denying all), or `None`.
    pub peer: Option<Option<usize>>,
    /// Which port entry matched (`Some(None)`: all ports), or `None`.
    pub port: Option<Option<usize>>,
    /// Why the rule fails closed, when it could not be compiled.
    pub broken: Option<String>,
    /// The rule names domains, which are not enforced (they match nothing).
    pub unsupported_domain_names: bool,
}

/// One policy's rules, tried in order.
#[derive(Clone, Debug)]
pub struct PolicyTrace {
    /// The policy.
    pub policy: PolicyKey,
    /// Each rule's verdict.
    pub rules: Vec<RuleTrace>,
}

/// One rule's verdict.
#[derive(Clone, Debug)]
pub struct RuleTrace {
    /// The rule's index.
    pub index: usize,
    /// Which peer matched (`Some(None)`: the rule allows all peers), or `None`.
    pub peer: Option<Option<usize>>,
    /// Which port entry matched (`Some(None)`: all ports), or `None`.
    pub port: Option<Option<usize>>,
    /// Why the rule allows nothing, when it could not be compiled.
    pub broken: Option<String>,
}

// === impl NoTrace ===

impl Trace for NoTrace {
    const EVERY_RULE: bool = false;

    #[inline(always)]
    fn side(&mut self, _: &PodKey, _: Direction) {}

    #[inline(always)]
    fn policy(&mut self, _: &PolicyKey) {}

    #[inline(always)]
    fn rule(&mut self, _: usize, _: &Rule, _: Option<Option<usize>>, _: Option<Option<usize>>) {}
}

// === impl Recorder ===

impl Recorder {
    /// The explanation of `decision`, with what was recorded while making it.
    pub fn into_explanation(
        self,
        from: String,
        to: PodKey,
        port: u16,
        protocol: Protocol,
        decision: Decision,
    ) -> Explanation {
        Explanation {
            from,
            to,
            port,
            protocol,
            decision,
            ingress: self.ingress,
            egress: self.egress,
        }
    }

    fn current(&mut self) -> Option<&mut SideTrace> {
        match self.current? {
            Direction::Ingress => self.ingress.as_mut(),
            Direction::Egress => self.egress.as_mut(),
        }
    }
}

impl Trace for Recorder {
    const EVERY_RULE: bool = true;

    fn side(&mut self, subject: &PodKey, direction: Direction) {
        let side = SideTrace {
            pod: subject.clone(),
            direction,
            policies: Vec::new(),
            admin: Vec::new(),
            baseline: Vec::new(),
        };
        match direction {
            Direction::Ingress => self.ingress = Some(side),
            Direction::Egress => self.egress = Some(side),
        }
        self.current = Some(direction);
    }

    fn policy(&mut self, policy: &PolicyKey) {
        if let Some(side) = self.current() {
            side.policies.push(PolicyTrace {
                policy: policy.clone(),
                rules: Vec::new(),
            });
        }
    }

    fn rule(
        &mut self,
        index: usize,
        rule: &Rule,
        peer: Option<Option<usize>>,
        port: Option<Option<usize>>,
    ) {
        if let Some(policy) = self.current().and_then(|s| s.policies.last_mut()) {
            policy.rules.push(RuleTrace {
                index,
                peer,
                port,
                broken: rule.broken.clone(),
            });
        }
    }

    fn cluster_policy(&mut self, policy: &ClusterPolicy) {
        if let Some(side) = self.current() {
            let tier = match policy.tier {
                Tier::Admin => &mut side.admin,
                Tier::Baseline => &mut side.baseline,
            };
            tier.push(ClusterPolicyTrace {
                policy: policy.name.clone(),
                tier: policy.tier,
                priority: policy.priority,
                rules: Vec::new(),
            });
        }
        self.tier = Some(policy.tier);
    }

    fn cluster_rule(
        &mut self,
        index: usize,
        rule: &ClusterRule,
        peer: Option<Option<usize>>,
        port: Option<Option<usize>>,
    ) {
        let Some(tier) = self.tier else { return };
        let Some(side) = self.current() else { return };
        let list = match tier {
            Tier::Admin => &mut side.admin,
            Tier::Baseline => &mut side.baseline,
        };
        if let Some(policy) = list.last_mut() {
            policy.rules.push(ClusterRuleTrace {
                index,
                name: rule.name.clone(),
                action: rule.effective_action(),
                peer,
                port,
                broken: rule.broken.clone(),
                unsupported_domain_names: rule.has_domain_names(),
            });
        }
    }
}
