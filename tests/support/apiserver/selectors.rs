//! Label and field selectors, parsed from query strings and matched against objects.
//!
//! Pure: no I/O. Called by the store for lists and by watches for every event. The grammar is
//! the one of `k8s.io/apimachinery/pkg/labels` and `pkg/fields`:
//!
//! - labels: comma-separated requirements, all of which must hold: `key`, `!key`, `key=value`,
//!   `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`.
//!   `!=` and `notin` also match objects without the label, as in Kubernetes.
//! - fields: comma-separated `field=value`, `field==value` or `field!=value` terms, with `\`
//!   escaping `,`, `=` and `\` in values. Which fields exist depends on the kind
//!   ([`Kind::field_value`]); any other field is rejected as the real server does.

use serde_json::Value;

use super::kind::Kind;

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

/// Why a selector could not be parsed; the message is the one the server returns (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Exists,
    DoesNotExist,
    In(Vec<String>),
    NotIn(Vec<String>),
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    value: String,
    equal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Comma,
    Open,
    Close,
}

// === impl LabelSelector ===

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let tokens = lex_labels(text)?;
        let mut parser = LabelParser { tokens, pos: 0 };
        let mut requirements = Vec::new();
        if parser.tokens.is_empty() {
            return Ok(Self { requirements });
        }
        loop {
            requirements.push(parser.requirement()?);
            match parser.next() {
                None => break,
                Some(Token::Comma) => continue,
                Some(other) => {
                    return Err(SelectorError(format!(
                        "found '{}', expected: ',' or 'end of string'",
                        other.text()
                    )))
                }
            }
        }
        Ok(Self { requirements })
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match &r.op {
            LabelOp::Exists => get(&r.key).is_some(),
            LabelOp::DoesNotExist => get(&r.key).is_none(),
            LabelOp::In(values) => get(&r.key).is_some_and(|v| values.iter().any(|x| x == v)),
            LabelOp::NotIn(values) => get(&r.key).is_none_or(|v| values.iter().all(|x| x != v)),
            LabelOp::GreaterThan(n) => get(&r.key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            LabelOp::LessThan(n) => get(&r.key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }

    /// Whether the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

// === impl FieldSelector ===

impl FieldSelector {
    /// Parses a `fieldSelector` query value, checking each field is selectable for `kind`.
    pub fn parse(text: &str, kind: Kind) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for part in split_unescaped(text, ',') {
            if part.trim().is_empty() {
                continue;
            }
            let term = parse_field_term(&part)?;
            if !kind.field_labels().contains(&term.field.as_str()) {
                return Err(SelectorError(format!(
                    "field label not supported: {}",
                    term.field
                )));
            }
            terms.push(term);
        }
        Ok(Self { terms })
    }

    /// Whether the object's selectable fields satisfy every term.
    pub fn matches(&self, kind: Kind, object: &Value) -> bool {
        self.terms.iter().all(|t| {
            let actual = kind.field_value(object, &t.field).unwrap_or_default();
            (actual == t.value) == t.equal
        })
    }

    /// Whether the selector has no term.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// A label selector and a field selector together, as a list or watch request carries them.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// The `labelSelector` parameter.
    pub labels: LabelSelector,
    /// The `fieldSelector` parameter.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether `object` (of `kind`) passes both selectors.
    pub fn matches(&self, kind: Kind, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(kind, object)
    }

    /// Whether neither selector filters anything.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

// === label lexer and parser ===

struct LabelParser {
    tokens: Vec<Token>,
    pos: usize,
}

impl LabelParser {
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn requirement(&mut self) -> Result<LabelRequirement, SelectorError> {
        let negated = self.peek() == Some(&Token::Not);
        if negated {
            self.pos += 1;
        }
        let key = match self.next() {
            Some(Token::Ident(key)) => key,
            other => {
                return Err(SelectorError(format!(
                    "found '{}', expected: identifier",
                    other.map(|t| t.text()).unwrap_or_default()
                )))
            }
        };
        validate_label_key(&key)?;
        if negated {
            return Ok(LabelRequirement {
                key,
                op: LabelOp::DoesNotExist,
            });
        }
        let op = match self.peek() {
            None | Some(Token::Comma) => LabelOp::Exists,
            Some(Token::Eq | Token::DoubleEq) => {
                self.pos += 1;
                LabelOp::In(vec![self.single_value()?])
            }
            Some(Token::NotEq) => {
                self.pos += 1;
                LabelOp::NotIn(vec![self.single_value()?])
            }
            Some(Token::Gt | Token::Lt) => {
                let gt = self.next() == Some(Token::Gt);
                let value = self.single_value()?;
                let n = value.parse::<i64>().map_err(|_| {
                    SelectorError(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {value}"
                    ))
                })?;
                if gt {
                    LabelOp::GreaterThan(n)
                } else {
                    LabelOp::LessThan(n)
                }
            }
            Some(Token::Ident(word)) if word == "in" || word == "notin" => {
                let is_in = word == "in";
                self.pos += 1;
                let values = self.value_set()?;
                if values.is_empty() {
                    return Err(SelectorError(
                        "for 'in', 'notin' operators, values set can't be empty".into(),
                    ));
                }
                if is_in {
                    LabelOp::In(values)
                } else {
                    LabelOp::NotIn(values)
                }
            }
            Some(other) => {
                return Err(SelectorError(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    other.text()
                )))
            }
        };
        Ok(LabelRequirement { key, op })
    }

    /// A value after `=`, `==` or `!=`: an identifier, or nothing (the empty value).
    fn single_value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            None | Some(Token::Comma) => Ok(String::new()),
            Some(Token::Ident(_)) => match self.next() {
                Some(Token::Ident(v)) => {
                    validate_label_value(&v)?;
                    Ok(v)
                }
                _ => unreachable!("peeked an identifier"),
            },
            Some(other) => Err(SelectorError(format!(
                "found '{}', expected: identifier",
                other.text()
            ))),
        }
    }

    /// `( v1, v2 )`; empty values between commas are allowed, as upstream allows them.
    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        if self.next() != Some(Token::Open) {
            return Err(SelectorError("found '', expected: '('".into()));
        }
        let mut values = Vec::new();
        let mut expect_value = true;
        loop {
            match self.next() {
                Some(Token::Close) => {
                    if expect_value && !values.is_empty() {
                        values.push(String::new());
                    }
                    return Ok(values);
                }
                Some(Token::Comma) => {
                    if expect_value {
                        values.push(String::new());
                    }
                    expect_value = true;
                }
                Some(Token::Ident(v)) if expect_value => {
                    validate_label_value(&v)?;
                    values.push(v);
                    expect_value = false;
                }
                other => {
                    return Err(SelectorError(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        other.map(|t| t.text()).unwrap_or_default()
                    )))
                }
            }
        }
    }
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Ident(s) => s.clone(),
            Token::Not => "!".into(),
            Token::Eq => "=".into(),
            Token::DoubleEq => "==".into(),
            Token::NotEq => "!=".into(),
            Token::Gt => ">".into(),
            Token::Lt => "<".into(),
            Token::Comma => ",".into(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
        }
    }
}

fn lex_labels(text: &str) -> Result<Vec<Token>, SelectorError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' | '(' | ')' | '>' | '<' => {
                chars.next();
                tokens.push(match c {
                    ',' => Token::Comma,
                    '(' => Token::Open,
                    ')' => Token::Close,
                    '>' => Token::Gt,
                    _ => Token::Lt,
                });
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::DoubleEq);
                } else {
                    tokens.push(Token::Eq);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::NotEq);
                } else {
                    tokens.push(Token::Not);
                }
            }
            _ => {
                let mut ident = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || ",()=!<>".contains(c) {
                        break;
                    }
                    ident.push(c);
                    chars.next();
                }
                tokens.push(Token::Ident(ident));
            }
        }
    }
    Ok(tokens)
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63 characters.
fn validate_label_key(key: &str) -> Result<(), SelectorError> {
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    if name.is_empty() || name.len() > 63 || !is_label_chars(name) {
        return Err(SelectorError(format!("invalid label key \"{key}\"")));
    }
    Ok(())
}

fn validate_label_value(value: &str) -> Result<(), SelectorError> {
    if value.len() > 63 || (!value.is_empty() && !is_label_chars(value)) {
        return Err(SelectorError(format!("invalid label value: \"{value}\"")));
    }
    Ok(())
}

fn is_label_chars(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || "-_.".contains(c))
}

// === field selector parsing ===

fn parse_field_term(part: &str) -> Result<FieldTerm, SelectorError> {
    // The first unescaped operator splits field from value, `!=` and `==` before `=`.
    let bytes: Vec<char> = part.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            '\\' => i += 2,
            '!' if bytes.get(i + 1) == Some(&'=') => return term(part, &bytes, i, 2, false),
            '=' if bytes.get(i + 1) == Some(&'=') => return term(part, &bytes, i, 2, true),
            '=' => return term(part, &bytes, i, 1, true),
            _ => i += 1,
        }
    }
    Err(SelectorError(format!(
        "invalid selector: '{part}'; can't understand '{part}'"
    )))
}

fn term(
    part: &str,
    chars: &[char],
    at: usize,
    op_len: usize,
    equal: bool,
) -> Result<FieldTerm, SelectorError> {
    let field: String = chars[..at].iter().collect::<String>().trim().to_string();
    let raw: String = chars[at + op_len..].iter().collect();
    if field.is_empty() {
        return Err(SelectorError(format!("invalid selector: '{part}'")));
    }
    Ok(FieldTerm {
        field,
        value: unescape(&raw),
        equal,
    })
}

/// Splits on `sep` where it is not escaped by a backslash; escapes are kept for the term parser.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            current.push(c);
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "n1", "hostNetwork": true},
               "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}})
    }

    fn labels_match(selector: &str, labels: Value) -> bool {
        LabelSelector::parse(selector)
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
            .matches(&pod(labels))
    }

    #[test]
    fn label_operators_follow_kubernetes_semantics() {
        let l = json!({"app": "web", "tier": "front", "n": "5"});
        let cases = [
            ("", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("missing", false),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db, cache)", true),
            ("app notin (web)", false),
            ("missing notin (web)", true),
            ("missing in (web)", false),
            ("app=web,tier=front", true),
            ("app=web, tier=back", false),
            ("n>4", true),
            ("n<4", false),
            ("missing>1", false),
            ("app in (web),!missing,tier", true),
        ];
        for (selector, want) in cases {
            assert_eq!(labels_match(selector, l.clone()), want, "{selector}");
        }
    }

    #[test]
    fn objects_without_labels_match_only_negative_requirements() {
        assert!(labels_match("app!=web", Value::Null));
        assert!(labels_match("!app", Value::Null));
        assert!(!labels_match("app", Value::Null));
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        for bad in [
            "app in ()",
            "app in (a",
            "app in a",
            "=x",
            "app=web)",
            "a b",
            "n>x",
            "-bad=x",
            "app=web=x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors_match_pod_fields() {
        let p = pod(json!({}));
        let sel = |s: &str| FieldSelector::parse(s, Kind::Pod).unwrap_or_else(|e| panic!("{e}"));
        assert!(sel("status.phase!=Succeeded,status.phase!=Failed").matches(Kind::Pod, &p));
        assert!(!sel("status.phase!=Running").matches(Kind::Pod, &p));
        assert!(sel("metadata.name=p,metadata.namespace==ns").matches(Kind::Pod, &p));
        assert!(!sel("metadata.name=q").matches(Kind::Pod, &p));
        assert!(sel("spec.nodeName=n1").matches(Kind::Pod, &p));
        assert!(sel("spec.hostNetwork=true").matches(Kind::Pod, &p));
        assert!(sel("status.podIP=10.0.0.1").matches(Kind::Pod, &p));
        assert!(sel("spec.serviceAccountName=").matches(Kind::Pod, &p));
        assert!(sel("").matches(Kind::Pod, &p));
    }

    #[test]
    fn unsupported_fields_are_rejected_per_kind() {
        let err = FieldSelector::parse("spec.nodeName=x", Kind::NetworkPolicy)
            .expect_err("network policies have no spec.nodeName field");
        assert_eq!(err.to_string(), "field label not supported: spec.nodeName");
        assert!(FieldSelector::parse("metadata.namespace=x", Kind::Namespace).is_err());
        assert!(FieldSelector::parse("status.phase=Active", Kind::Namespace).is_ok());
        assert!(FieldSelector::parse("nonsense", Kind::Pod).is_err());
    }

    #[test]
    fn field_values_may_escape_separators() {
        let sel = FieldSelector::parse(r"metadata.name=a\,b", Kind::Pod).expect("parses");
        let p = json!({"metadata": {"name": "a,b"}});
        assert!(sel.matches(Kind::Pod, &p));
    }
}
