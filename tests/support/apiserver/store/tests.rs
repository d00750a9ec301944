//! Unit tests of the store: resourceVersions, strategies, history, paging and compaction.

use serde_json::json;

use super::*;
use crate::apiserver::patch::Patch;
use crate::apiserver::selectors::{LabelSelector, Selectors};
use crate::apiserver::strategy::NAMESPACE_NAME_LABEL;

fn store_with_namespace(ns: &str) -> Store {
    let mut store = Store::new();
    store
        .create(
            Kind::Namespace,
            json!({"metadata": {"name": ns}}),
            None,
            Origin::Test,
        )
        .expect("namespace is created");
    store
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": labels},
           "status": {"phase": "Running", "podIP": "10.0.0.9"}})
}

fn rv_of(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .expect("stored objects have a numeric resourceVersion")
}

fn names(page: &ListPage) -> Vec<String> {
    page.items
        .iter()
        .map(|o| meta_str(o, "name").unwrap_or_default().to_string())
        .collect()
}

fn list_req(read: ReadAt, limit: Option<usize>) -> ListRequest {
    ListRequest {
        namespace: Some("a".into()),
        selectors: Selectors::default(),
        limit,
        read,
    }
}

#[test]
fn writes_take_one_global_increasing_resource_version() {
    let mut store = store_with_namespace("a");
    let ns_rv = store.rv();
    let p = store
        .create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Test)
        .expect("created");
    assert_eq!(rv_of(&p), ns_rv + 1);
    assert_eq!(store.rv(), ns_rv + 1);
    assert!(meta_str(&p, "uid").is_some_and(|u| u.len() == 36));
    assert!(meta_str(&p, "creationTimestamp").is_some_and(|t| t.ends_with('Z') && t.len() == 20));
    let q = store
        .create(Kind::Pod, pod("q", json!({})), Some("a"), Origin::Test)
        .expect("created");
    assert_ne!(meta_str(&p, "uid"), meta_str(&q, "uid"));
    assert_eq!(rv_of(&q), ns_rv + 2);
}

#[test]
fn namespaces_get_their_name_label_and_status() {
    let store = store_with_namespace("shop");
    let ns = store.get(Kind::Namespace, None, "shop").expect("stored");
    assert_eq!(ns["metadata"]["labels"][NAMESPACE_NAME_LABEL], "shop");
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
}

#[test]
fn creating_needs_the_namespace_and_a_new_valid_name() {
    let mut store = store_with_namespace("a");
    let missing = store.create(Kind::Pod, pod("p", json!({})), Some("b"), Origin::Client);
    assert_eq!(
        missing.map(|_| ()).map_err(|e| (e.code, e.message)),
        Err((404, "namespaces \"b\" not found".into()))
    );
    store
        .create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Client)
        .expect("created");
    let again = store.create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Client);
    assert_eq!(again.map_err(|e| e.reason).err(), Some("AlreadyExists"));
    let bad = store.create(
        Kind::Pod,
        pod("Bad_Name", json!({})),
        Some("a"),
        Origin::Client,
    );
    assert_eq!(bad.map_err(|e| e.code).err(), Some(422));
}

#[test]
fn clients_get_the_registry_strategies_for_status() {
    let mut store = store_with_namespace("a");
    let created = store
        .create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Client)
        .expect("created");
    assert_eq!(created["status"], json!({"phase": "Pending"}));

    let mut update = pod("p", json!({"x": "1"}));
    update["metadata"]["namespace"] = json!("a");
    let replaced = store
        .replace(
            Kind::Pod,
            Some("a"),
            "p",
            update.clone(),
            Origin::Client,
            Part::Main,
        )
        .expect("replaced");
    assert_eq!(
        replaced["status"],
        json!({"phase": "Pending"}),
        "status kept"
    );
    assert_eq!(replaced["metadata"]["labels"]["x"], "1");

    let status = store
        .replace(
            Kind::Pod,
            Some("a"),
            "p",
            update,
            Origin::Client,
            Part::Status,
        )
        .expect("status replaced");
    assert_eq!(status["status"]["podIP"], "10.0.0.9");
}

#[test]
fn updates_check_resource_version_and_skip_no_ops() {
    let mut store = store_with_namespace("a");
    let created = store
        .create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Test)
        .expect("created");
    let rv = store.rv();
    let same = store
        .replace(
            Kind::Pod,
            Some("a"),
            "p",
            (*created).clone(),
            Origin::Client,
            Part::Main,
        )
        .expect("no-op update");
    assert_eq!(rv_of(&same), rv, "a no-op keeps the resourceVersion");
    assert_eq!(store.rv(), rv);

    let mut stale = (*created).clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["metadata"]["labels"] = json!({"changed": "yes"});
    let conflict = store.replace(Kind::Pod, Some("a"), "p", stale, Origin::Client, Part::Main);
    assert_eq!(conflict.map_err(|e| e.code).err(), Some(409));

    let mut renamed = (*created).clone();
    renamed["metadata"]["name"] = json!("other");
    let bad = store.replace(
        Kind::Pod,
        Some("a"),
        "p",
        renamed,
        Origin::Client,
        Part::Main,
    );
    assert_eq!(bad.map_err(|e| e.code).err(), Some(400));
}

#[test]
fn lists_read_old_states_until_compaction() {
    let mut store = store_with_namespace("a");
    store
        .create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Test)
        .expect("created");
    let before = store.rv();
    store
        .create(Kind::Pod, pod("q", json!({})), Some("a"), Origin::Test)
        .expect("created");
    store
        .delete(Kind::Pod, Some("a"), "p", &Preconditions::default())
        .expect("deleted");

    let now = store
        .list(Kind::Pod, &list_req(ReadAt::Latest, None))
        .expect("lists");
    assert_eq!(names(&now), ["q"]);
    let then = store
        .list(Kind::Pod, &list_req(ReadAt::Exact(before), None))
        .expect("lists");
    assert_eq!(names(&then), ["p"]);
    assert_eq!(then.rv, before);

    store.compact();
    let err = store
        .list(Kind::Pod, &list_req(ReadAt::Exact(before), None))
        .expect_err("compacted");
    assert_eq!((err.code, err.reason), (410, "Expired"));
    let w = store
        .watch(Kind::Pod, WatchFrom::After(before))
        .expect_err("compacted");
    assert_eq!(w.code, 410);
    assert!(store.watch(Kind::Pod, WatchFrom::After(store.rv())).is_ok());
}

#[test]
fn pages_continue_consistently_and_expire_with_compaction() {
    let mut store = store_with_namespace("a");
    for i in 0..5 {
        store
            .create(
                Kind::Pod,
                pod(&format!("p{i}"), json!({})),
                Some("a"),
                Origin::Test,
            )
            .expect("created");
    }
    let first = store
        .list(Kind::Pod, &list_req(ReadAt::Latest, Some(2)))
        .expect("lists");
    assert_eq!(names(&first), ["p0", "p1"]);
    assert_eq!(first.remaining, Some(3));
    let token = ContinueToken::decode(first.continue_token.as_deref().expect("more pages"))
        .expect("decodes");

    // A write after the first page does not show in later pages: they read the same version.
    store
        .create(Kind::Pod, pod("p2a", json!({})), Some("a"), Origin::Test)
        .expect("created");
    let second = store
        .list(
            Kind::Pod,
            &list_req(ReadAt::Continue(token.clone()), Some(2)),
        )
        .expect("lists");
    assert_eq!(names(&second), ["p2", "p3"]);
    assert_eq!(second.rv, first.rv);
    let last_token =
        ContinueToken::decode(second.continue_token.as_deref().expect("more")).expect("decodes");
    let last = store
        .list(Kind::Pod, &list_req(ReadAt::Continue(last_token), Some(2)))
        .expect("lists");
    assert_eq!(names(&last), ["p4"]);
    assert_eq!(last.continue_token, None);

    store.compact();
    let err = store
        .list(Kind::Pod, &list_req(ReadAt::Continue(token), Some(2)))
        .expect_err("expired");
    assert_eq!((err.code, err.reason), (410, "Expired"));
    let status = err.to_status();
    let inconsistent = status["metadata"]["continue"]
        .as_str()
        .expect("an inconsistent token");
    let resumed = ContinueToken::decode(inconsistent).expect("decodes");
    assert_eq!(resumed.rv, -1);
    let rest = store
        .list(Kind::Pod, &list_req(ReadAt::Continue(resumed), None))
        .expect("lists");
    assert_eq!(names(&rest), ["p2", "p2a", "p3", "p4"]);
}

#[test]
fn selectors_filter_pages_without_remaining_counts() {
    let mut store = store_with_namespace("a");
    for (name, app) in [("a1", "web"), ("a2", "db"), ("a3", "web")] {
        store
            .create(
                Kind::Pod,
                pod(name, json!({"app": app})),
                Some("a"),
                Origin::Test,
            )
            .expect("created");
    }
    let mut req = list_req(ReadAt::Latest, Some(1));
    req.selectors.labels = LabelSelector::parse("app=web").expect("parses");
    let page = store.list(Kind::Pod, &req).expect("lists");
    assert_eq!(names(&page), ["a1"]);
    assert_eq!(page.remaining, None);
    let token =
        ContinueToken::decode(page.continue_token.as_deref().expect("more")).expect("decodes");
    req.read = ReadAt::Continue(token);
    assert_eq!(names(&store.list(Kind::Pod, &req).expect("lists")), ["a3"]);
}

#[test]
fn deleting_a_namespace_deletes_its_objects_first() {
    let mut store = store_with_namespace("a");
    store
        .create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Test)
        .expect("created");
    let mut watch = store.watch(Kind::Pod, WatchFrom::Now).expect("watches");
    let deleted = store
        .delete(Kind::Namespace, None, "a", &Preconditions::default())
        .expect("deleted");
    assert!(store.get(Kind::Pod, Some("a"), "p").is_none());
    let change = watch
        .queue
        .try_recv()
        .expect("the pod's deletion is queued");
    assert_eq!(change.change, ChangeType::Deleted);
    assert_eq!(rv_of(&change.object), change.rv);
    assert!(change.rv < rv_of(&deleted));
}

#[test]
fn delete_preconditions_are_checked() {
    let mut store = store_with_namespace("a");
    store
        .create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Test)
        .expect("created");
    let wrong = Preconditions {
        uid: Some("nope".into()),
        resource_version: None,
    };
    let err = store
        .delete(Kind::Pod, Some("a"), "p", &wrong)
        .expect_err("uid differs");
    assert_eq!(err.code, 409);
    assert!(store.get(Kind::Pod, Some("a"), "p").is_some());
}

#[test]
fn watches_replay_history_after_their_resource_version() {
    let mut store = store_with_namespace("a");
    let start = store.rv();
    store
        .create(Kind::Pod, pod("p", json!({})), Some("a"), Origin::Test)
        .expect("created");
    store
        .create(
            Kind::Namespace,
            json!({"metadata": {"name": "b"}}),
            None,
            Origin::Test,
        )
        .expect("created");
    let watch = store
        .watch(Kind::Pod, WatchFrom::After(start))
        .expect("watches");
    let kinds: Vec<_> = watch.backlog.iter().map(|c| (c.kind, c.change)).collect();
    assert_eq!(kinds, [(Kind::Pod, ChangeType::Added)]);
    assert_eq!(watch.rv, store.rv());
}

#[test]
fn patches_are_updates_and_generation_follows_each_kinds_spec() {
    let mut store = store_with_namespace("a");
    let secret = store
        .create(
            Kind::Secret,
            json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
            Some("a"),
            Origin::Client,
        )
        .expect("created");
    assert!(secret.pointer("/metadata/generation").is_none());
    assert_eq!(secret["data"]["k"], "dg==");

    const MWC: Kind = Kind::MutatingWebhookConfiguration;
    let config = store
        .create(
            MWC,
            json!({"metadata": {"name": "w"}, "webhooks": [{"name": "a.b.c"}]}),
            None,
            Origin::Client,
        )
        .expect("created");
    assert_eq!(config["metadata"]["generation"], 1);
    let patch = |content_type: &str, body: Value| {
        let bytes = serde_json::to_vec(&body).expect("serialises");
        Patch::parse(Some(content_type), &bytes).expect("parses")
    };
    let label = patch(
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"x": "y"}}}),
    );
    let labelled = store
        .patch(MWC, None, "w", &label, Part::Main)
        .expect("patched");
    assert_eq!(
        labelled["metadata"]["generation"], 1,
        "metadata is not spec"
    );
    assert_eq!(rv_of(&labelled), store.rv());
    let again = store
        .patch(MWC, None, "w", &label, Part::Main)
        .expect("patched");
    assert_eq!(
        rv_of(&again),
        rv_of(&labelled),
        "a no-op patch stores nothing"
    );

    let hook = patch(
        "application/json-patch+json",
        json!([{"op": "add", "path": "/webhooks/0/sideEffects", "value": "None"}]),
    );
    let hooked = store
        .patch(MWC, None, "w", &hook, Part::Main)
        .expect("patched");
    assert_eq!(hooked["metadata"]["generation"], 2);
    assert_eq!(hooked["metadata"]["labels"]["x"], "y");

    let stale = patch(
        "application/merge-patch+json",
        json!({"metadata": {"resourceVersion": rv_of(&config).to_string(), "labels": null}}),
    );
    let err = store
        .patch(MWC, None, "w", &stale, Part::Main)
        .expect_err("stale");
    assert_eq!((err.code, err.reason), (409, "Conflict"));
    let err = store
        .patch(MWC, None, "missing", &label, Part::Main)
        .expect_err("missing");
    assert_eq!(err.code, 404);
}
