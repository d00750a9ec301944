//! Query strings, and the list and watch options they carry, validated as the real API
//! server validates them (`ValidateListOptions`) and mapped to the semantics of the
//! "Resource versions" section of the Kubernetes API concepts.
//!
//! Pure: no I/O. Called by the router.
//!
//! | request                                   | reads                                   |
//! |-------------------------------------------|-----------------------------------------|
//! | list, no resourceVersion                  | newest state                            |
//! | list, `resourceVersion=0`                 | any state: the watch cache (the newest, unless lagging) |
//! | list, `resourceVersion=N`, no limit       | not older than N (waits up to 3 s)      |
//! | list, `resourceVersion=N`, limit          | exactly N                               |
//! | list, `resourceVersionMatch=Exact`        | exactly N                               |
//! | list, `continue=T`                        | exactly the first page's version        |
//! | watch, no resourceVersion or `0`          | as `sendInitialEvents=true` (WatchList  |
//! |                                           | defaulting, as in 1.32 and later)       |
//! | watch, `resourceVersion=N`                | changes after N (ERROR 410 if too old)  |
//! | watch, `sendInitialEvents=true`           | ADDED for current objects, a marked     |
//! |                                           | BOOKMARK, then changes                  |

use std::time::Duration;

use super::kind::Kind;
use super::selectors::{FieldSelector, LabelSelector, Selectors};
use super::status::ApiError;
use super::store::{ContinueToken, ListRequest, ReadAt, WatchFrom};
use super::watch::WatchRequest;

/// A decoded query string.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query(Vec<(String, String)>);

/// A validated read: a list or a watch, and the resourceVersion the store must reach first.
#[derive(Debug)]
pub(crate) enum Read {
    List {
        req: ListRequest,
        wait_for: Option<u64>,
    },
    Watch {
        req: WatchRequest,
        wait_for: Option<u64>,
    },
}

// === impl Query ===

impl Query {
    /// Parses `a=1&b=x%20y`; `+` is a space, as in HTML forms (and Go's `url.ParseQuery`).
    pub(crate) fn parse(raw: &str) -> Self {
        Self(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    /// The first value of a parameter, as Go's `url.Values.Get` returns it.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter that is present and not empty.
    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.non_empty(name) {
            None => Ok(None),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid boolean value for {name}: {other:?}"
            ))),
        }
    }

    fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.non_empty(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {v:?}")))
            })
            .transpose()
    }
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Validates the options of a GET on a collection: a list, or a watch with `watch=true`.
pub(crate) fn parse_read(
    kind: Kind,
    namespace: Option<String>,
    q: &Query,
) -> Result<Read, ApiError> {
    let selectors = Selectors {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), kind)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let rv = q.non_empty("resourceVersion");
    let mut rv_match = q.non_empty("resourceVersionMatch");
    let cont = q.non_empty("continue");
    let mut send_initial = q.bool("sendInitialEvents")?;
    let forbidden = |field: &str, why: &str| {
        ApiError::invalid(
            "ListOptions.meta.k8s.io",
            "",
            format!("{field}: Forbidden: {why}"),
        )
    };
    let unsupported = |value: &str, supported: &str| {
        ApiError::invalid(
            "ListOptions.meta.k8s.io",
            "",
            format!("resourceVersionMatch: Unsupported value: \"{value}\": supported values: {supported}"),
        )
    };

    if q.bool("watch")? == Some(true) {
        // SetListOptionsDefaults with the WatchList feature (on by default since 1.32): a
        // plain watch from "now" or "any" becomes a streaming list, so it also gets the
        // initial-events-end bookmark when bookmarks are allowed.
        if send_initial.is_none() && rv_match.is_none() && matches!(rv, None | Some("0")) {
            send_initial = Some(true);
            rv_match = Some("NotOlderThan");
        }
        if send_initial.is_some() && rv_match != Some("NotOlderThan") {
            return Err(forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if let Some(m) = rv_match {
            if send_initial.is_none() {
                return Err(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if m != "NotOlderThan" {
                return Err(unsupported(m, "\"NotOlderThan\""));
            }
            if cont.is_some() {
                return Err(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
        // "0" means any state, which for a watch is the newest.
        let n = parse_rv(rv)?.filter(|n| *n != 0);
        let (from, wait_for) = match (send_initial, n) {
            (Some(true), n) => (WatchFrom::CurrentState, n),
            (Some(false), None) => (WatchFrom::Now, None),
            (_, Some(n)) => (WatchFrom::After(n), None),
            (None, None) => (WatchFrom::CurrentState, None),
        };
        let timeout = q.number("timeoutSeconds")?.map(Duration::from_secs);
        let req = WatchRequest {
            kind,
            namespace,
            selectors,
            from,
            bookmarks: q.bool("allowWatchBookmarks")? == Some(true),
            initial_events_end: send_initial == Some(true),
            timeout,
        };
        return Ok(Read::Watch { req, wait_for });
    }

    if send_initial.is_some() {
        return Err(forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for list",
        ));
    }
    if let Some(m) = rv_match {
        if rv.is_none() {
            return Err(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if cont.is_some() {
            return Err(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if m != "Exact" && m != "NotOlderThan" {
            return Err(unsupported(m, "\"Exact\", \"NotOlderThan\", \"\""));
        }
        if m == "Exact" && rv == Some("0") {
            return Err(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    let limit = q.number("limit")?.filter(|l| *l > 0);
    let n = parse_rv(rv)?;
    let (read, wait_for) = if let Some(token) = cont {
        if n.is_some_and(|n| n != 0) {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let token = ContinueToken::decode(token).map_err(ApiError::bad_request)?;
        (ReadAt::Continue(token), None)
    } else {
        match (rv_match, n) {
            (_, None) => (ReadAt::Latest, None),
            (_, Some(0)) => (ReadAt::Cache, None),
            (Some("Exact"), Some(n)) => (ReadAt::Exact(n), Some(n)),
            (Some(_), Some(n)) => (ReadAt::Latest, Some(n)),
            (None, Some(n)) if limit.is_some() => (ReadAt::Exact(n), Some(n)),
            (None, Some(n)) => (ReadAt::Latest, Some(n)),
        }
    };
    let req = ListRequest {
        namespace,
        selectors,
        limit: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
        read,
    };
    Ok(Read::List { req, wait_for })
}

fn parse_rv(rv: Option<&str>) -> Result<Option<u64>, ApiError> {
    rv.map(|v| {
        v.parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(query: &str) -> Result<Read, ApiError> {
        parse_read(Kind::Pod, None, &Query::parse(query))
    }

    fn list_read(query: &str) -> (ReadAt, Option<u64>) {
        match read(query) {
            Ok(Read::List { req, wait_for }) => (req.read, wait_for),
            other => panic!("{query}: expected a list, got {other:?}"),
        }
    }

    fn watch_from(query: &str) -> WatchFrom {
        match read(query) {
            Ok(Read::Watch { req, .. }) => req.from,
            other => panic!("{query}: expected a watch, got {other:?}"),
        }
    }

    #[test]
    fn queries_decode_like_go() {
        let q = Query::parse("labelSelector=app%3Dweb%2Ctier+in+%28a%29&limit=5&x&x=2");
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert_eq!(q.get("limit"), Some("5"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(percent_decode("%zz%2"), "%zz%2");
        assert_eq!(percent_decode("a%21"), "a!");
    }

    #[test]
    fn list_resource_version_semantics() {
        assert_eq!(list_read(""), (ReadAt::Latest, None));
        assert_eq!(list_read("resourceVersion=0"), (ReadAt::Cache, None));
        assert_eq!(
            list_read("resourceVersion=0&resourceVersionMatch=NotOlderThan"),
            (ReadAt::Cache, None)
        );
        assert_eq!(list_read("resourceVersion=7"), (ReadAt::Latest, Some(7)));
        assert_eq!(
            list_read("resourceVersion=7&limit=10"),
            (ReadAt::Exact(7), Some(7))
        );
        assert_eq!(
            list_read("resourceVersion=7&resourceVersionMatch=Exact"),
            (ReadAt::Exact(7), Some(7))
        );
        assert_eq!(
            list_read("resourceVersion=7&resourceVersionMatch=NotOlderThan&limit=3"),
            (ReadAt::Latest, Some(7))
        );
    }

    #[test]
    fn invalid_list_options_are_rejected_like_the_real_server() {
        let cases = [
            ("resourceVersionMatch=NotOlderThan", 422),
            ("resourceVersion=0&resourceVersionMatch=Exact", 422),
            ("resourceVersion=1&resourceVersionMatch=Newest", 422),
            ("sendInitialEvents=true", 422),
            ("continue=abc&resourceVersion=5", 400),
            ("continue=not-a-token", 400),
            ("limit=x", 400),
            ("labelSelector=a+in+()", 400),
            ("fieldSelector=spec.foo%3Dx", 400),
            ("watch=true&resourceVersionMatch=NotOlderThan", 422),
            ("watch=true&sendInitialEvents=true", 422),
            ("watch=true&resourceVersion=x", 400),
        ];
        for (query, code) in cases {
            match read(query) {
                Err(e) => assert_eq!(e.code, code, "{query}: {e}"),
                Ok(r) => panic!("{query} should fail, got {r:?}"),
            }
        }
    }

    #[test]
    fn watch_starting_points() {
        assert_eq!(watch_from("watch=true"), WatchFrom::CurrentState);
        assert_eq!(
            watch_from("watch=1&resourceVersion=0"),
            WatchFrom::CurrentState
        );
        assert_eq!(
            watch_from("watch=true&resourceVersion=12"),
            WatchFrom::After(12)
        );
        assert_eq!(
            watch_from("watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=3"),
            WatchFrom::CurrentState
        );
        assert_eq!(
            watch_from("watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan"),
            WatchFrom::Now
        );
    }

    #[test]
    fn plain_watches_from_now_are_defaulted_to_streaming_lists() {
        let marks_end = |query: &str| match read(query) {
            Ok(Read::Watch { req, .. }) => req.initial_events_end,
            other => panic!("{query}: expected a watch, got {other:?}"),
        };
        assert!(marks_end("watch=true&allowWatchBookmarks=true"));
        assert!(marks_end("watch=true&resourceVersion=0"));
        assert!(!marks_end("watch=true&resourceVersion=5"));
        assert!(!marks_end(
            "watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan"
        ));
    }

    #[test]
    fn continue_tokens_round_trip() {
        let token = ContinueToken {
            rv: 42,
            start: "ns/p\0".into(),
        };
        let (read, _) = list_read(&format!("limit=5&continue={}", token.encode()));
        assert_eq!(read, ReadAt::Continue(token));
    }
}
