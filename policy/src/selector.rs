//! Label selectors, compiled once from `matchLabels` and `matchExpressions`.
//!
//! Pure: no I/O. A compiled selector is a list of requirements that must all
//! hold; the empty selector `{}` has none, so it selects everything. It
//! matches from a packed copy of them (see [`Packed`]).

use std::fmt;

use super::labels::{head_of, text_with_head, Text};
pub use super::labels::{LabelSource, Labels};

/// A label selector, ready to match: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    /// `None`: could not be packed (see [`Packed::pack`]); the
    /// requirements are matched as they are.
    packed: Option<Packed>,
}

/// The requirements packed for matching: each key and listed value as
/// the head of a [`Text`] and where it lives in one string. The
/// requirements spread over an allocation per key, per list of values and
/// per value; a decision reads selectors of policies no recent decision
/// read, and paid a cache miss for most of them, and a `memcmp` call for
/// each comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Packed {
    requirements: Box<[PackedRequirement]>,
    /// The listed values of every requirement, in order.
    values: Box<[PackedText]>,
    text: Box<[u8]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackedRequirement {
    op: PackedOp,
    key: PackedText,
    /// Its listed values: `values[first..end]`.
    first: u32,
    end: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PackedOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A string of [`Packed::text`]: its head and where it lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackedText {
    head: u64,
    start: u32,
    end: u32,
}

/// One condition on one label key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key the condition reads.
    pub key: String,
    /// What must hold of the key's value.
    pub operator: Operator,
}

/// The operators of `matchExpressions`; `matchLabels` entries become `In` with one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label is present and its value is one of these (sorted).
    In(Vec<String>),
    /// The label is absent, or its value is none of these (sorted).
    NotIn(Vec<String>),
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Why a selector could not be compiled; `field` is relative to the selector.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSelector {
    /// The offending field, for example `matchExpressions[0].operator`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

// === impl Selector ===

impl Selector {
    /// The selector `{}`: it selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Compiles a selector from its parts: `matchLabels` pairs and
    /// `matchExpressions` as (key, operator, values).
    pub fn compile<'a>(
        match_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        match_expressions: impl IntoIterator<Item = (&'a str, &'a str, &'a [String])>,
    ) -> Result<Self, InvalidSelector> {
        let mut requirements = Vec::new();
        for (key, value) in match_labels {
            requirements.push(Requirement {
                key: key.to_string(),
                operator: Operator::In(vec![value.to_string()]),
            });
        }
        for (index, (key, operator, values)) in match_expressions.into_iter().enumerate() {
            let field = |name: &str| format!("matchExpressions[{index}].{name}");
            if key.is_empty() {
                return Err(InvalidSelector {
                    field: field("key"),
                    reason: "must not be empty".into(),
                });
            }
            let mut sorted = values.to_vec();
            sorted.sort();
            sorted.dedup();
            let operator = match operator {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(InvalidSelector {
                        field: field("values"),
                        reason: format!("must be non-empty for operator {operator}"),
                    })
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(InvalidSelector {
                        field: field("values"),
                        reason: format!("must be empty for operator {operator}"),
                    })
                }
                "In" => Operator::In(sorted),
                "NotIn" => Operator::NotIn(sorted),
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(InvalidSelector {
                        field: field("operator"),
                        reason: format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                    })
                }
            };
            requirements.push(Requirement {
                key: key.to_string(),
                operator,
            });
        }
        Ok(Self::sorted(requirements))
    }

    fn sorted(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        let packed = Packed::pack(&requirements);
        Self {
            requirements,
            packed,
        }
    }

    /// A selector from requirements already compiled (as they travel from
    /// the control plane): values and keys are put in the order
    /// [`Self::compile`] gives them, so a round trip compares equal.
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        for r in &mut requirements {
            if let Operator::In(values) | Operator::NotIn(values) = &mut r.operator {
                values.sort();
                values.dedup();
            }
        }
        Self::sorted(requirements)
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether these labels satisfy every requirement.
    pub fn matches(&self, labels: &impl LabelSource) -> bool {
        match &self.packed {
            Some(packed) => packed.matches(labels),
            None => self.requirements.iter().all(|r| r.matches(labels)),
        }
    }

    /// Whether this is `{}`, which selects everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// === impl Requirement ===

impl Requirement {
    /// Whether the labels satisfy it, read from the requirement as it is
    /// (a selector that could not be packed).
    fn matches(&self, labels: &impl LabelSource) -> bool {
        let value = labels.value(Text::new(&self.key));
        let one_of = |values: &[String], v: Text<'_>| values.iter().any(|l| Text::new(l).same(&v));
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| one_of(values, v)),
            Operator::NotIn(values) => value.is_none_or(|v| !one_of(values, v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

// === impl Packed ===

impl Packed {
    /// Packs requirements; `None` when their text is longer than `u32`
    /// counts (no API server stores such a selector).
    fn pack(requirements: &[Requirement]) -> Option<Self> {
        let mut text = Vec::new();
        let mut values = Vec::new();
        let mut packed = Vec::with_capacity(requirements.len());
        let push = |text: &mut Vec<u8>, s: &str| -> Option<PackedText> {
            let start = u32::try_from(text.len()).ok()?;
            text.extend(s.as_bytes());
            Some(PackedText {
                head: head_of(s.as_bytes()),
                start,
                end: u32::try_from(text.len()).ok()?,
            })
        };
        for r in requirements {
            let key = push(&mut text, &r.key)?;
            let (op, listed): (_, &[String]) = match &r.operator {
                Operator::In(v) => (PackedOp::In, v),
                Operator::NotIn(v) => (PackedOp::NotIn, v),
                Operator::Exists => (PackedOp::Exists, &[]),
                Operator::DoesNotExist => (PackedOp::DoesNotExist, &[]),
            };
            let first = u32::try_from(values.len()).ok()?;
            for v in listed {
                values.push(push(&mut text, v)?);
            }
            packed.push(PackedRequirement {
                op,
                key,
                first,
                end: u32::try_from(values.len()).ok()?,
            });
        }
        Some(Self {
            requirements: packed.into_boxed_slice(),
            values: values.into_boxed_slice(),
            text: text.into_boxed_slice(),
        })
    }

    fn text(&self, t: &PackedText) -> Text<'_> {
        text_with_head(t.head, &self.text[t.start as usize..t.end as usize])
    }

    /// Whether the labels satisfy every requirement.
    fn matches(&self, labels: &impl LabelSource) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.value(self.text(&r.key));
            let listed = &self.values[r.first as usize..r.end as usize];
            let one_of = |v: Text<'_>| listed.iter().any(|l| self.text(l).same(&v));
            match r.op {
                PackedOp::In => value.is_some_and(one_of),
                PackedOp::NotIn => value.is_none_or(|v| !one_of(v)),
                PackedOp::Exists => value.is_some(),
                PackedOp::DoesNotExist => value.is_none(),
            }
        })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.operator {
            Operator::In(values) if values.len() == 1 => write!(f, "{}={}", self.key, values[0]),
            Operator::In(values) => write!(f, "{} in ({})", self.key, values.join(",")),
            Operator::NotIn(values) => write!(f, "{} notin ({})", self.key, values.join(",")),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> (String, String, Vec<String>) {
        (
            key.into(),
            op.into(),
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    fn compile(
        ml: &[(&str, &str)],
        exprs: &[(String, String, Vec<String>)],
    ) -> Result<Selector, InvalidSelector> {
        Selector::compile(
            ml.iter().copied(),
            exprs
                .iter()
                .map(|(k, o, v)| (k.as_str(), o.as_str(), v.as_slice())),
        )
    }

    #[test]
    fn empty_selector_selects_everything() {
        let s = compile(&[], &[]).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        assert!(s.is_everything());
    }

    #[test]
    fn match_labels_require_every_pair() {
        let s = compile(&[("app", "bookstore"), ("role", "api")], &[]).unwrap();
        assert!(s.matches(&labels(&[
            ("app", "bookstore"),
            ("role", "api"),
            ("x", "y")
        ])));
        assert!(!s.matches(&labels(&[("app", "bookstore")])));
        assert!(!s.matches(&labels(&[("app", "bookstore"), ("role", "web")])));
    }

    #[test]
    fn in_and_not_in() {
        let s = compile(&[], &[expr("env", "In", &["prod", "staging"])]).unwrap();
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[])));
        let s = compile(&[], &[expr("env", "NotIn", &["prod"])]).unwrap();
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(s.matches(&labels(&[])), "NotIn matches an absent label");
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let s = compile(&[], &[expr("team", "Exists", &[])]).unwrap();
        assert!(s.matches(&labels(&[("team", "")])));
        assert!(!s.matches(&labels(&[])));
        let s = compile(&[], &[expr("team", "DoesNotExist", &[])]).unwrap();
        assert!(!s.matches(&labels(&[("team", "a")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = compile(&[("app", "db")], &[expr("tier", "NotIn", &["test"])]).unwrap();
        assert!(s.matches(&labels(&[("app", "db")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "test")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn a_selector_that_could_not_be_packed_matches_as_the_packed_one_does() {
        let selectors = [
            compile(&[], &[]).unwrap(),
            compile(
                &[("app", "db"), ("example.com/component", "frontend-primary")],
                &[],
            )
            .unwrap(),
            compile(&[], &[expr("env", "In", &["prod", "staging"])]).unwrap(),
            compile(
                &[],
                &[expr("env", "NotIn", &["prod"]), expr("team", "Exists", &[])],
            )
            .unwrap(),
            compile(&[], &[expr("team", "DoesNotExist", &[])]).unwrap(),
        ];
        let label_sets = [
            labels(&[]),
            labels(&[("app", "db"), ("example.com/component", "frontend-primary")]),
            labels(&[("app", "db"), ("example.com/component", "frontend-primarx")]),
            labels(&[("env", "prod"), ("team", "a")]),
            labels(&[("env", "dev"), ("team", "")]),
            labels(&[("env", "staging")]),
        ];
        for s in &selectors {
            let unpacked = Selector {
                packed: None,
                ..s.clone()
            };
            for l in &label_sets {
                assert_eq!(unpacked.matches(l), s.matches(l), "{s} on {l:?}");
                let packed = crate::PackedLabels::pack(l).unwrap();
                assert_eq!(s.matches(&packed), s.matches(l), "{s} on packed {l:?}");
            }
        }
    }

    #[test]
    fn long_keys_and_values_that_share_their_first_bytes_stay_apart() {
        // Past eight bytes only the rest tells them apart.
        let key = "example.com/component";
        let s = compile(&[(key, "frontend-primary")], &[]).unwrap();
        assert!(s.matches(&labels(&[(key, "frontend-primary")])));
        assert!(!s.matches(&labels(&[(key, "frontend-primarx")])));
        assert!(!s.matches(&labels(&[("example.com/componenT", "frontend-primary")])));
        assert!(!s.matches(&labels(&[("example.", "frontend-primary")])));
        let s = compile(
            &[],
            &[expr(
                key,
                "NotIn",
                &["frontend-primary", "a", "b", "c", "d"],
            )],
        )
        .unwrap();
        assert!(!s.matches(&labels(&[(key, "frontend-primary")])));
        assert!(s.matches(&labels(&[(key, "frontend-primar")])));
        assert!(s.matches(&labels(&[("example.com/componen", "frontend-primary")])));
    }

    #[test]
    fn bad_operator_and_values_are_named() {
        let err = compile(&[], &[expr("a", "Equals", &["b"])]).unwrap_err();
        assert_eq!(err.field, "matchExpressions[0].operator");
        assert!(err.reason.contains("Equals"));
        let err = compile(&[], &[expr("a", "In", &[])]).unwrap_err();
        assert_eq!(err.field, "matchExpressions[0].values");
        let err = compile(&[], &[expr("a", "Exists", &["x"])]).unwrap_err();
        assert_eq!(err.field, "matchExpressions[0].values");
    }
}
