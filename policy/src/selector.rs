//! Label selectors, compiled once from `matchLabels` and `matchExpressions`.
//!
//! Pure: no I/O. A compiled selector is a list of requirements that must all
//! hold; the empty selector `{}` has none, so it selects everything.

use std::collections::BTreeMap;
use std::fmt;

/// Labels of a pod or a namespace, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// A label selector, ready to match: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
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
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
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
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Self { requirements }
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether these labels satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
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
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.binary_search(v).is_ok()),
            Operator::NotIn(values) => value.is_none_or(|v| values.binary_search(v).is_err()),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
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
