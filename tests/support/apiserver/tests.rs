//! The server against a real kube-rs client: lists with paging, watches, the watcher's
//! relist after compaction, bookmarks, selectors, 410s, TokenReview, faults, and the writes
//! (create, replace, patch, delete) of Secrets and MutatingWebhookConfigurations, bound
//! service-account tokens and the open-watch counters.
//!
//! Every wait polls with a deadline; no test sleeps to synchronise.

use std::fmt::Debug;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{Stream, StreamExt};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};

use super::*;

/// How long any single expected event may take.
const PATIENCE: Duration = Duration::from_secs(10);

fn server() -> ApiServer {
    ApiServer::builder()
        .bookmark_interval(Duration::from_millis(200))
        .bind("127.0.0.1:0")
        .expect("the test API server starts")
}

async fn client(server: &ApiServer) -> Client {
    Client::try_from(config(server).await).expect("client builds")
}

async fn config(server: &ApiServer) -> Config {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).expect("kubeconfig parses");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube accepts the kubeconfig")
}

fn pod_yaml(ns: &str, name: &str, labels: &str, phase: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {labels}\n\
         spec:\n  containers: [{{name: app, image: app}}]\nstatus:\n  phase: {phase}\n"
    )
}

fn namespace_yaml(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

/// The next item of a stream, or a panic naming what was awaited.
async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the stream ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls a watcher until `done` says so, returning everything seen on the way.
async fn watcher_until<K: Debug, S>(
    stream: &mut S,
    what: &str,
    done: impl Fn(&watcher::Event<K>) -> bool,
) -> Vec<Result<watcher::Event<K>, watcher::Error>>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    let mut seen = Vec::new();
    loop {
        let item = next(stream, what).await;
        let finished = item.as_ref().is_ok_and(&done);
        seen.push(item);
        if finished {
            return seen;
        }
    }
}

/// Waits for a condition on the server (sync), polling.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn api_error(result: Result<impl Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn watch_requests(server: &ApiServer) -> usize {
    server.requests().iter().filter(|r| r.is_watch()).count()
}

#[tokio::test]
async fn lists_page_through_continue_tokens() {
    let server = server();
    let mut yaml = namespace_yaml("bulk");
    for i in 0..1200 {
        yaml.push_str("---\n");
        yaml.push_str(&pod_yaml(
            "bulk",
            &format!("pod-{i:04}"),
            "{app: bulk}",
            "Running",
        ));
    }
    assert_eq!(server.apply(&yaml).expect("applies").len(), 1201);
    let pods: Api<Pod> = Api::all(client(&server).await);

    let mut names = Vec::new();
    let mut params = ListParams::default().limit(500);
    let mut pages = 0;
    let first_rv = loop {
        let page = pods.list(&params).await.expect("lists");
        pages += 1;
        if pages == 1 {
            assert_eq!(page.metadata.remaining_item_count, Some(700));
        }
        names.extend(page.items.iter().map(|p| p.name_any()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break page.metadata.resource_version,
        }
    };
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..1200).map(|i| format!("pod-{i:04}")).collect();
    assert_eq!(names, expected);
    assert_eq!(first_rv, Some(server.resource_version().to_string()));

    // The watcher pages the same way, and its initial list is complete.
    let config = watcher::Config::default().any_semantic().page_size(500);
    let mut stream = watcher(pods, config).boxed();
    let seen = watcher_until(&mut stream, "InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    let applied = seen
        .iter()
        .filter(|e| matches!(e, Ok(watcher::Event::InitApply(_))))
        .count();
    assert_eq!(applied, 1200);
    let continued = server
        .requests()
        .iter()
        .filter(|r| r.param("limit").as_deref() == Some("500") && r.param("continue").is_some())
        .count();
    assert_eq!(continued, 4, "two continued pages per full listing");
}

#[tokio::test]
async fn watch_sees_added_modified_and_deleted() {
    let server = server();
    server.apply(&namespace_yaml("shop")).expect("applies");
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "shop");
    let rv = pods
        .list(&ListParams::default())
        .await
        .expect("lists")
        .metadata
        .resource_version;
    let rv = rv.expect("lists carry a resourceVersion");
    let mut events = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watches")
        .boxed();

    server
        .apply(&pod_yaml("shop", "web", "{app: web}", "Pending"))
        .expect("applies");
    server
        .apply(&pod_yaml("shop", "web", "{app: web}", "Running"))
        .expect("applies");
    server
        .delete(Kind::Pod, Some("shop"), "web")
        .expect("deletes");
    // A pod in another namespace is not seen by this namespaced watch.
    server
        .apply(&pod_yaml("default", "elsewhere", "{}", "Running"))
        .expect("applies");
    server
        .apply(&pod_yaml("shop", "last", "{}", "Running"))
        .expect("applies");

    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("ADDED last") {
        let event = match next(&mut events, "watch events")
            .await
            .expect("no stream error")
        {
            WatchEvent::Added(p) => format!("ADDED {}", p.name_any()),
            WatchEvent::Modified(p) => format!(
                "MODIFIED {} {}",
                p.name_any(),
                p.status.and_then(|s| s.phase).unwrap_or_default()
            ),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.name_any()),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
        };
        seen.push(event);
    }
    assert_eq!(
        seen,
        [
            "ADDED web",
            "MODIFIED web Running",
            "DELETED web",
            "ADDED last"
        ]
    );
}

#[tokio::test]
async fn compaction_makes_the_watcher_relist() {
    let server = server();
    server.apply(&namespace_yaml("shop")).expect("applies");
    server
        .apply(&pod_yaml("shop", "a", "{}", "Running"))
        .expect("applies");
    let pods: Api<Pod> = Api::all(client(&server).await);
    let mut stream = watcher(pods, watcher::Config::default().any_semantic()).boxed();
    watcher_until(&mut stream, "the first InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;

    // The watcher has listed but not yet watched: its resourceVersion is now compacted away.
    server
        .apply(&pod_yaml("shop", "b", "{}", "Running"))
        .expect("applies");
    server.compact();

    let seen = watcher_until(&mut stream, "the relist's InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    let expired = seen.iter().any(|e| {
        matches!(e, Err(watcher::Error::WatchError(status)) if status.code == 410 && status.reason == "Expired")
    });
    assert!(expired, "the watch got 410 Expired in the stream: {seen:?}");
    assert!(
        seen.iter().any(|e| matches!(e, Ok(watcher::Event::Init))),
        "{seen:?}"
    );
    let relisted: Vec<String> = seen
        .iter()
        .filter_map(|e| match e {
            Ok(watcher::Event::InitApply(p)) => Some(p.name_any()),
            _ => None,
        })
        .collect();
    assert_eq!(relisted, ["a", "b"]);
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch() && r.path == "/api/v1/pods")
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn too_old_watch_gets_an_error_event_in_a_200_stream() {
    let server = server();
    server
        .apply(&pod_yaml("default", "a", "{}", "Running"))
        .expect("applies");
    server.compact();
    let pods: Api<Pod> = Api::all(client(&server).await);
    let mut events = pods
        .watch(&WatchParams::default(), "1")
        .await
        .expect("HTTP 200")
        .boxed();
    match next(&mut events, "the error event").await {
        Ok(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version: 1"),
                "{}",
                status.message
            );
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the stream ends")
            .is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test]
async fn bookmarks_arrive_and_follow_the_global_resource_version() {
    let server = server();
    let pods: Api<Pod> = Api::all(client(&server).await);
    let start = server.resource_version();
    let mut events = pods
        .watch(&WatchParams::default(), &start.to_string())
        .await
        .expect("watches")
        .boxed();
    let first = match next(&mut events, "a bookmark").await {
        Ok(WatchEvent::Bookmark(b)) => b,
        other => panic!("only bookmarks expected, got {other:?}"),
    };
    assert_eq!(first.types.kind, "Pod");
    assert_eq!(first.metadata.resource_version, start.to_string());

    // A write to another kind moves the bookmarks on, as etcd progress notifications do.
    server.apply(&namespace_yaml("moved")).expect("applies");
    let moved = server.resource_version();
    loop {
        match next(&mut events, "a later bookmark")
            .await
            .expect("no stream error")
        {
            WatchEvent::Bookmark(b) if b.metadata.resource_version == moved.to_string() => break,
            WatchEvent::Bookmark(_) => continue,
            other => panic!("only bookmarks expected, got {other:?}"),
        }
    }

    // Without allowWatchBookmarks there are none: the next event is the pod.
    let mut quiet = pods
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &moved.to_string(),
        )
        .await
        .expect("watches")
        .boxed();
    eventually("both watches open", || server.open_watches() == 2).await;
    tokio::time::timeout(Duration::from_millis(600), quiet.next())
        .await
        .expect_err("no event at all within three bookmark intervals");
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let server = server();
    server.apply(&namespace_yaml("shop")).expect("applies");
    server
        .apply(
            &[
                pod_yaml("shop", "web-1", "{app: web, tier: front}", "Running"),
                pod_yaml("shop", "web-2", "{app: web}", "Succeeded"),
                pod_yaml("shop", "db-1", "{app: db}", "Running"),
            ]
            .join("---\n"),
        )
        .expect("applies");
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "shop");
    let names = |list: kube::core::ObjectList<Pod>| {
        list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    };

    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("lists");
    assert_eq!(names(web), ["web-1", "web-2"]);
    let set = pods
        .list(&ListParams::default().labels("app in (db),!tier"))
        .await
        .expect("lists");
    assert_eq!(names(set), ["db-1"]);
    let live = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    assert_eq!(
        names(pods.list(&live).await.expect("lists")),
        ["db-1", "web-1"]
    );
    let one = ListParams::default().fields("metadata.name=web-2,metadata.namespace=shop");
    assert_eq!(names(pods.list(&one).await.expect("lists")), ["web-2"]);
    let bad = api_error(
        pods.list(&ListParams::default().fields("spec.image=x"))
            .await,
    );
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
    assert!(server
        .requests()
        .iter()
        .any(|r| r.param("fieldSelector").as_deref()
            == Some("status.phase!=Succeeded,status.phase!=Failed")));

    // A watch sees objects entering and leaving its selector as ADDED and DELETED.
    let rv = server.resource_version().to_string();
    let mut events = pods
        .watch(
            &WatchParams::default().labels("app=web").disable_bookmarks(),
            &rv,
        )
        .await
        .expect("watches")
        .boxed();
    server
        .apply(&pod_yaml("shop", "db-1", "{app: web}", "Running"))
        .expect("applies");
    server
        .apply(&pod_yaml("shop", "web-1", "{app: db}", "Running"))
        .expect("applies");
    server
        .apply(&pod_yaml("shop", "web-2", "{app: web}", "Failed"))
        .expect("applies");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            match next(&mut events, "selector events")
                .await
                .expect("no stream error")
            {
                WatchEvent::Added(p) => format!("ADDED {}", p.name_any()),
                WatchEvent::Modified(p) => format!("MODIFIED {}", p.name_any()),
                WatchEvent::Deleted(p) => format!("DELETED {} {}", p.name_any(), p.labels()["app"]),
                other => panic!("unexpected {other:?}"),
            },
        );
    }
    assert_eq!(seen, ["ADDED db-1", "DELETED web-1 web", "MODIFIED web-2"]);
}

#[tokio::test]
async fn expired_continue_token_is_410_with_a_token_to_go_on() {
    let server = server();
    let mut yaml = String::new();
    for i in 0..10 {
        yaml.push_str(&pod_yaml("default", &format!("p{i}"), "{}", "Running"));
        yaml.push_str("---\n");
    }
    server.apply(&yaml).expect("applies");
    let pods: Api<Pod> = Api::all(client(&server).await);
    let first = pods
        .list(&ListParams::default().limit(3))
        .await
        .expect("lists");
    let token = first.metadata.continue_.expect("more pages");
    // Written after the first page, after its last key: an inconsistent continuation sees it.
    server
        .apply(&pod_yaml("default", "p5a", "{}", "Running"))
        .expect("applies");
    server.compact();

    let status = api_error(
        pods.list(&ListParams::default().limit(3).continue_token(&token))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    let inconsistent = status
        .metadata
        .and_then(|m| m.continue_)
        .expect("an inconsistent continue token");
    let rest = pods
        .list(&ListParams::default().continue_token(&inconsistent))
        .await
        .expect("lists");
    let rest: Vec<String> = rest.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(rest, ["p3", "p4", "p5", "p5a", "p6", "p7", "p8", "p9"]);

    let garbage = api_error(
        pods.list(&ListParams::default().limit(3).continue_token("garbage"))
            .await,
    );
    assert_eq!(
        garbage.code, 400,
        "a malformed token is a bad request, as upstream"
    );
}

#[tokio::test]
async fn exact_lists_read_the_past() {
    let server = server();
    server
        .apply(&pod_yaml("default", "old", "{}", "Running"))
        .expect("applies");
    let then = server.resource_version();
    server
        .delete(Kind::Pod, Some("default"), "old")
        .expect("deletes");
    // kube retries 504s for a long while; this test wants to see the first one.
    let mut config = config(&server).await;
    config.default_retry = false;
    let pods: Api<Pod> = Api::all(Client::try_from(config).expect("client builds"));
    let exact = ListParams::default()
        .at(&then.to_string())
        .matching(VersionMatch::Exact);
    let past = pods.list(&exact).await.expect("lists");
    assert_eq!(
        past.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["old"]
    );
    assert_eq!(past.metadata.resource_version, Some(then.to_string()));
    assert!(pods
        .list(&ListParams::default())
        .await
        .expect("lists")
        .items
        .is_empty());

    let future = ListParams::default()
        .at(&(server.resource_version() + 100).to_string())
        .matching(VersionMatch::NotOlderThan);
    let status = api_error(pods.list(&future).await);
    assert_eq!((status.code, status.reason.as_str()), (504, "Timeout"));
}

#[tokio::test]
async fn streaming_lists_end_with_a_marked_bookmark() {
    let server = server();
    server
        .apply(
            &[
                pod_yaml("default", "a", "{}", "Running"),
                pod_yaml("default", "b", "{}", "Running"),
            ]
            .join("---\n"),
        )
        .expect("applies");
    let pods: Api<Pod> = Api::all(client(&server).await);
    let mut stream = watcher(pods, watcher::Config::default().streaming_lists()).boxed();
    let seen = watcher_until(&mut stream, "InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    let applied: Vec<String> = seen
        .iter()
        .filter_map(|e| match e {
            Ok(watcher::Event::InitApply(p)) => Some(p.name_any()),
            _ => None,
        })
        .collect();
    assert_eq!(applied, ["a", "b"]);
    let request = server
        .requests()
        .into_iter()
        .find(RecordedRequest::is_watch)
        .expect("a watch request");
    assert_eq!(request.param("sendInitialEvents").as_deref(), Some("true"));
    assert_eq!(
        request.param("resourceVersionMatch").as_deref(),
        Some("NotOlderThan")
    );

    // The same stream then carries changes.
    server
        .apply(&pod_yaml("default", "c", "{}", "Running"))
        .expect("applies");
    let later = watcher_until(
        &mut stream,
        "the new pod",
        |e| matches!(e, watcher::Event::Apply(p) if p.name_any() == "c"),
    )
    .await;
    assert!(later.iter().all(Result::is_ok), "{later:?}");
}

#[tokio::test]
async fn drop_watches_makes_the_watcher_reconnect_without_relisting() {
    let server = server();
    let pods: Api<Pod> = Api::all(client(&server).await);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    eventually("the first watch", || server.open_watches() == 1).await;
    assert_eq!(watch_requests(&server), 1);

    server.drop_watches();
    eventually("a second watch request", || watch_requests(&server) == 2).await;
    eventually("the second watch open", || server.open_watches() == 1).await;

    server
        .apply(&pod_yaml("default", "after-drop", "{}", "Running"))
        .expect("applies");
    loop {
        let event = tokio::time::timeout(PATIENCE, rx.recv()).await;
        match event
            .expect("the pod created after the drop")
            .expect("the watcher runs")
        {
            Ok(watcher::Event::Apply(p)) if p.name_any() == "after-drop" => break,
            _ => continue,
        }
    }
    let lists = server.requests().iter().filter(|r| !r.is_watch()).count();
    assert_eq!(
        lists, 1,
        "the watcher resumed from its resourceVersion instead of relisting"
    );
    driver.abort();
}

#[tokio::test]
async fn watches_end_at_their_timeout() {
    let server = server();
    let pods: Api<Pod> = Api::all(client(&server).await);
    let params = WatchParams::default().timeout(1).disable_bookmarks();
    let mut events = pods
        .watch(&params, &server.resource_version().to_string())
        .await
        .expect("watches")
        .boxed();
    let ended = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the stream ends cleanly: {ended:?}"
    );
    let request = server
        .requests()
        .into_iter()
        .find(RecordedRequest::is_watch)
        .expect("a watch request");
    assert_eq!(request.param("timeoutSeconds").as_deref(), Some("1"));
}

#[tokio::test]
async fn token_review_authenticates_registered_tokens() {
    let server = server();
    server.add_token(
        "proxy-token",
        "system:serviceaccount:picket:proxy",
        &["system:serviceaccounts"],
    );
    let reviews: Api<TokenReview> = Api::all(client(&server).await);
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec {
            token: token.into(),
            audiences: Some(vec!["picket".into()]),
        },
        ..Default::default()
    };

    let known = reviews
        .create(&PostParams::default(), &review("proxy-token"))
        .await
        .expect("reviews");
    let status = known.status.expect("a status");
    assert_eq!(status.authenticated, Some(true));
    let user = status.user.expect("a user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:picket:proxy")
    );
    assert_eq!(
        user.groups,
        Some(vec!["system:serviceaccounts".to_string()])
    );
    assert_eq!(status.audiences, Some(vec!["picket".to_string()]));

    let unknown = reviews
        .create(&PostParams::default(), &review("nope"))
        .await
        .expect("reviews");
    let status = unknown.status.expect("a status");
    assert_ne!(status.authenticated, Some(true));
    assert_eq!(status.error.as_deref(), Some("invalid bearer token"));

    // The kubeconfig's own token is recorded as the admin user.
    let request = server
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("tokenreviews"))
        .expect("recorded");
    assert_eq!(request.user.as_deref(), Some(ADMIN_USER));
}

#[tokio::test]
async fn clients_write_through_the_registry_strategies() {
    let server = server();
    let client = client(&server).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "made"}})).expect("namespace");
    let made = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("creates");
    assert_eq!(
        made.labels()
            .get(strategy::NAMESPACE_NAME_LABEL)
            .map(String::as_str),
        Some("made")
    );
    assert_eq!(made.status.and_then(|s| s.phase).as_deref(), Some("Active"));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "missing");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}})).expect("pod");
    let status = api_error(pods.create(&PostParams::default(), &pod).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));

    let policies: Api<NetworkPolicy> = Api::namespaced(client, "made");
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    }))
    .expect("policy");
    let created = policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("creates");
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.labels_mut().insert("v".into(), "2".into());
    let replaced = policies
        .replace("deny", &PostParams::default(), &fresh)
        .await
        .expect("replaces");
    assert_ne!(replaced.resource_version(), created.resource_version());
    stale.labels_mut().insert("v".into(), "stale".into());
    let conflict = api_error(
        policies
            .replace("deny", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        server
            .get(Kind::NetworkPolicy, Some("made"), "deny")
            .map(|p| p["metadata"]["labels"]["v"].clone()),
        Some(json!("2"))
    );

    policies
        .delete("deny", &DeleteParams::default())
        .await
        .expect("deletes");
    assert!(server
        .get(Kind::NetworkPolicy, Some("made"), "deny")
        .is_none());
    let gone = api_error(policies.get("deny").await);
    assert_eq!(gone.code, 404);
}

#[tokio::test]
async fn pod_creates_get_the_service_account_token_mounted_as_upstream() {
    let server = server();
    server
        .apply(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: quiet, namespace: shop}\n\
             automountServiceAccountToken: false\n",
        )
        .expect("applies");
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "shop");
    let pod = |name: &str, account: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": account,
                "initContainers": [{"name": "init", "image": "i"}],
                "containers": [{"name": "app", "image": "a"}],
            },
        }))
        .expect("pod")
    };
    let created = pods
        .create(&PostParams::default(), &pod("web", ""))
        .await
        .expect("creates");
    let spec = created.spec.expect("spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let volume = &spec.volumes.expect("volumes")[0];
    assert!(volume.name.starts_with("kube-api-access-") && volume.name.len() == 21);
    let token = volume
        .projected
        .as_ref()
        .expect("projected")
        .sources
        .as_ref();
    assert!(token.expect("sources")[0].service_account_token.is_some());
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let mounts = container.volume_mounts.as_ref().expect("mounts");
        assert_eq!(mounts.len(), 1, "{}", container.name);
        assert_eq!(mounts[0].name, volume.name);
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(
            mounts[0].mount_path,
            "/var/run/secrets/kubernetes.io/serviceaccount"
        );
    }

    let quiet = pods
        .create(&PostParams::default(), &pod("quiet", "quiet"))
        .await
        .expect("creates");
    assert!(quiet.spec.expect("spec").volumes.is_none());
    let missing = api_error(
        pods.create(&PostParams::default(), &pod("lost", "nobody"))
            .await,
    );
    assert_eq!((missing.code, missing.reason.as_str()), (403, "Forbidden"));
    assert!(missing
        .message
        .contains("serviceaccount \"nobody\" not found"));

    // Tests applying pods play the controllers: what they give is stored as given.
    let applied = server
        .apply(&pod_yaml("shop", "given", "{}", "Running"))
        .expect("applies");
    assert!(applied[0]["spec"].get("volumes").is_none());
}

#[tokio::test]
async fn refused_connections_fail_until_allowed_again() {
    let server = server();
    let pods: Api<Pod> = Api::all(client(&server).await);
    pods.list(&ListParams::default()).await.expect("lists");

    server.refuse_connections(true);
    server.drop_connections();
    let refused = tokio::time::timeout(PATIENCE, pods.list(&ListParams::default()))
        .await
        .expect("fails fast");
    assert!(
        refused.is_err(),
        "the list fails while connections are refused"
    );

    server.refuse_connections(false);
    pods.list(&ListParams::default())
        .await
        .expect("lists again");
}

#[tokio::test]
async fn port_forward_reaches_the_pods_port_through_the_kubelet_and_reports_dial_failures() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = server();
    server
        .apply(&pod_yaml("default", "web", "{app: web}", "Running"))
        .unwrap();
    // The pod's port: an echo server that says hello first.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = app.accept().unwrap();
        conn.write_all(b"hello\n").unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap();
        conn.write_all(&buf[..n]).unwrap();
    });
    let dialled = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = dialled.clone();
    server.set_kubelet(Kubelet::new(move |ns, pod, port| {
        seen.lock().unwrap().push(format!("{ns}/{pod}:{port}"));
        std::net::TcpStream::connect(("127.0.0.1", app_port))
    }));
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "default");

    let mut forward = pods.portforward("web", &[15000]).await.expect("upgrades");
    let mut stream = forward.take_stream(15000).expect("a stream for the port");
    let mut hello = [0u8; 6];
    stream
        .read_exact(&mut hello)
        .await
        .expect("the app speaks first");
    assert_eq!(&hello, b"hello\n");
    stream.write_all(b"marker").await.unwrap();
    let mut echo = [0u8; 6];
    stream
        .read_exact(&mut echo)
        .await
        .expect("the echo comes back");
    assert_eq!(&echo, b"marker");
    assert_eq!(*dialled.lock().unwrap(), ["default/web:15000"]);
    drop(stream);
    forward.abort();

    server.set_kubelet(Kubelet::new(|_, _, _| {
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }));
    let mut forward = pods.portforward("web", &[15000]).await.expect("upgrades");
    let error = forward.take_error(15000).expect("an error channel");
    let why = tokio::time::timeout(PATIENCE, error)
        .await
        .expect("in time");
    let why = why.expect("the kubelet says why");
    assert!(
        why.contains("error forwarding port 15000 to pod default/web"),
        "{why}"
    );

    let missing = pods
        .portforward("nobody", &[15000])
        .await
        .err()
        .expect("no such pod");
    assert!(missing.to_string().contains("not found"), "{missing}");
}

#[test]
fn works_from_sync_code_and_writes_a_kubeconfig() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let server = ApiServer::builder()
        .host("picket.test")
        .host("10.9.8.7")
        .start(listener)
        .expect("starts");
    assert!(server.url().starts_with("https://127.0.0.1:"));
    assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let path = std::env::temp_dir().join(format!("picket-kubeconfig-{}", server.addr().port()));
    server.kubeconfig(&path).expect("writes");
    let written = std::fs::read_to_string(&path).expect("reads");
    std::fs::remove_file(&path).expect("removes");
    let kubeconfig = Kubeconfig::from_yaml(&written).expect("parses");
    let cluster = kubeconfig.clusters[0].cluster.as_ref().expect("a cluster");
    assert_eq!(cluster.server.as_deref(), Some(server.url()));
    let user = kubeconfig.auth_infos[0].auth_info.as_ref().expect("a user");
    assert!(user.token.is_some());

    let names: Vec<String> = server
        .objects(Kind::Namespace)
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    let err = server
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\n")
        .expect_err("not served");
    assert!(matches!(err, ApplyError::UnknownKind { .. }), "{err}");
}

#[tokio::test]
async fn lists_leave_kind_off_items_and_discovery_answers() {
    let server = server();
    let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j", "namespace": "later"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "later"}}
    ]}"#;
    let applied = server
        .apply(json)
        .expect("applies a JSON List, namespace first");
    assert_eq!(applied[0]["metadata"]["name"], "j");
    assert_eq!(
        applied[1]["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "later"
    );

    let client = client(&server).await;
    let get = |path: &str| hyper::Request::get(path).body(Vec::new()).expect("request");
    let text = client
        .request_text(get("/api/v1/namespaces/later/pods"))
        .await
        .expect("lists");
    let list: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    let item = &list["items"][0];
    assert_eq!(item["metadata"]["name"], "j");
    assert!(
        item.get("kind").is_none() && item.get("apiVersion").is_none(),
        "{item}"
    );

    let version = client.apiserver_version().await.expect("version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "37")
    );
    let groups = client.list_api_groups().await.expect("groups");
    let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "networking.k8s.io",
            "authentication.k8s.io",
            "admissionregistration.k8s.io",
            "discovery.k8s.io",
            "policy.networking.k8s.io"
        ]
    );
    let core = client
        .list_core_api_resources("v1")
        .await
        .expect("resources");
    assert!(core
        .resources
        .iter()
        .any(|r| r.name == "pods" && r.namespaced));
    assert!(core
        .resources
        .iter()
        .any(|r| r.name == "secrets" && r.namespaced && r.verbs.contains(&"patch".into())));
    let admission = client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
        .expect("resources");
    let webhooks = &admission.resources[0];
    assert_eq!(
        (webhooks.name.as_str(), webhooks.namespaced),
        ("mutatingwebhookconfigurations", false)
    );
}

fn status_of(result: Result<impl Debug, kube::Error>) -> (u16, String) {
    let status = api_error(result);
    (status.code, status.reason)
}

#[tokio::test]
async fn secrets_are_created_once_and_replaced_patched_and_deleted_as_upstream() {
    let server = server();
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tls", "labels": {"app": "x"}},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "CERT", "tls.key": "KEY"},
    }))
    .expect("secret");
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creates");
    let data = created
        .data
        .clone()
        .expect("stringData is folded into data");
    assert_eq!(data["tls.crt"].0, b"CERT");
    assert!(created.string_data.is_none());
    assert_eq!(
        created.metadata.generation, None,
        "secrets have no generation"
    );

    let again = api_error(secrets.create(&PostParams::default(), &secret).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(again.message, "secrets \"tls\" already exists");
    let details = again.details.expect("details");
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("tls", "secrets")
    );

    // Listed in every namespace, and selectable by type.
    let all: Api<Secret> = Api::all(client.clone());
    let tls = all
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await
        .expect("lists");
    assert_eq!(tls.items.len(), 1);
    let opaque = all
        .list(&ListParams::default().fields("type=Opaque"))
        .await
        .expect("lists");
    assert!(opaque.items.is_empty());

    // A stale resourceVersion is a conflict, for a replace and for a patch.
    let mut stale = created.clone();
    stale.metadata.labels = Some([("app".to_string(), "stale".to_string())].into());
    let mut fresh = created.clone();
    fresh.metadata.labels = Some([("app".to_string(), "fresh".to_string())].into());
    let replaced = secrets
        .replace("tls", &PostParams::default(), &fresh)
        .await
        .expect("replaces");
    assert_ne!(replaced.resource_version(), created.resource_version());
    assert_eq!(
        status_of(secrets.replace("tls", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );
    let stale_patch =
        json!({"metadata": {"resourceVersion": created.resource_version()}, "data": {"x": "eA=="}});
    assert_eq!(
        status_of(
            secrets
                .patch("tls", &PatchParams::default(), &Patch::Merge(&stale_patch))
                .await
        ),
        (409, "Conflict".into())
    );

    // Merge patch and JSON patch; strategic merge patch is not emulated (no client sends it).
    let merged = secrets
        .patch(
            "tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"extra": "ZXh0cmE="}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(merged.data.as_ref().expect("data")["extra"].0, b"extra");
    assert_eq!(merged.data.as_ref().expect("data")["tls.key"].0, b"KEY");
    assert_eq!(
        status_of(
            secrets
                .patch(
                    "tls",
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"stringData": {"tls.key": "NEW"}})),
                )
                .await
        ),
        (415, "UnsupportedMediaType".into())
    );
    let ops = json!([
        {"op": "test", "path": "/data/extra", "value": "ZXh0cmE="},
        {"op": "remove", "path": "/data/extra"},
    ]);
    let request = hyper::Request::patch("/api/v1/namespaces/default/secrets/tls")
        .header(hyper::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(&ops).expect("JSON"))
        .expect("request");
    let patched: Secret = client.request(request).await.expect("JSON patch");
    assert!(!patched.data.as_ref().expect("data").contains_key("extra"));
    let request = hyper::Request::patch("/api/v1/namespaces/default/secrets/tls")
        .header(hyper::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(&ops).expect("JSON"))
        .expect("request");
    assert_eq!(
        status_of(client.request::<Secret>(request).await).0,
        422,
        "the test fails now"
    );

    // A patch that changes nothing stores nothing.
    let same = secrets
        .patch(
            "tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"tls.key": "S0VZ"}})),
        )
        .await
        .expect("no-op patch");
    assert_eq!(same.resource_version(), patched.resource_version());

    // Validation: a TLS Secret needs both keys, its type is immutable; data must be base64.
    let broken: Secret = serde_json::from_value(json!({
        "metadata": {"name": "half"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "Q0VSVA=="},
    }))
    .expect("secret");
    let invalid = api_error(secrets.create(&PostParams::default(), &broken).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(
        invalid.message.contains("data[tls.key]: Required value"),
        "{}",
        invalid.message
    );
    let retype = secrets
        .patch(
            "tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"type": "Opaque"})),
        )
        .await;
    assert_eq!(status_of(retype), (422, "Invalid".into()));
    let not_base64 = secrets
        .patch(
            "tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": "%%"}})),
        )
        .await;
    assert_eq!(status_of(not_base64), (400, "BadRequest".into()));
    let missing = secrets
        .patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
        .await;
    assert_eq!(status_of(missing), (404, "NotFound".into()));

    secrets
        .delete("tls", &DeleteParams::default())
        .await
        .expect("deletes");
    assert_eq!(status_of(secrets.get("tls").await).0, 404);
    assert!(server.get(Kind::Secret, Some("default"), "tls").is_none());
}

#[tokio::test]
async fn webhook_configurations_merge_webhooks_by_name() {
    let server = server();
    let client = client(&server).await;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let hook = |name: &str| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "clientConfig": {"service": {"name": "svc", "namespace": "ns", "path": "/mutate"}},
        })
    };
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "hooks"},
        "webhooks": [hook("a.example.io"), hook("b.example.io")],
    }))
    .expect("config");
    let created = configs
        .create(&PostParams::default(), &config)
        .await
        .expect("creates");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.metadata.namespace, None, "cluster-scoped");
    assert_eq!(
        status_of(configs.create(&PostParams::default(), &config).await),
        (409, "AlreadyExists".into())
    );

    // What the injector sends: a JSON patch of one webhook's caBundle, whose `test`
    // operations are its preconditions (the webhook at that index, the bundle it held).
    let ca = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==";
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/webhooks/1/name", "value": "b.example.io"},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": ca},
    ]))
    .unwrap();
    let patched = configs
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Json::<()>(patch.clone()),
        )
        .await
        .expect("patches");
    let webhooks = patched.webhooks.as_ref().expect("webhooks");
    let names: Vec<&str> = webhooks.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["a.example.io", "b.example.io"]);
    assert_eq!(
        webhooks[0].client_config.ca_bundle, None,
        "the other webhook is untouched"
    );
    let bundle = webhooks[1]
        .client_config
        .ca_bundle
        .as_ref()
        .expect("caBundle");
    assert_eq!(bundle.0, b"-----BEGIN CERTIFICATE-----\n");
    assert_eq!(
        webhooks[1]
            .client_config
            .service
            .as_ref()
            .map(|s| s.name.as_str()),
        Some("svc"),
        "set inside the webhook, not replacing it"
    );
    assert_eq!(patched.metadata.generation, Some(2));

    // The same patch again changes nothing: no new resourceVersion, no new generation.
    let again = configs
        .patch("hooks", &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .expect("patches");
    assert_eq!(again.resource_version(), patched.resource_version());
    assert_eq!(again.metadata.generation, Some(2));

    // A failed precondition (the bundle changed since it was read) is 422 and changes nothing.
    let outdated: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/webhooks/1/clientConfig/caBundle", "value": "b2xk"},
        {"op": "replace", "path": "/webhooks/1/clientConfig/caBundle", "value": "bmV3"},
    ]))
    .unwrap();
    assert_eq!(
        status_of(
            configs
                .patch(
                    "hooks",
                    &PatchParams::default(),
                    &Patch::Json::<()>(outdated)
                )
                .await
        )
        .0,
        422
    );

    // A merge patch replaces the list; a JSON patch removes a webhook by index.
    let remove: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/webhooks/0/name", "value": "a.example.io"},
        {"op": "remove", "path": "/webhooks/0"},
    ]))
    .unwrap();
    let deleted = configs
        .patch("hooks", &PatchParams::default(), &Patch::Json::<()>(remove))
        .await
        .expect("patches");
    assert_eq!(deleted.webhooks.as_ref().map(Vec::len), Some(1));
    let replaced = configs
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"webhooks": [hook("c.example.io")]})),
        )
        .await
        .expect("patches");
    let names: Vec<String> = replaced
        .webhooks
        .into_iter()
        .flatten()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["c.example.io"]);
    let duplicate = configs
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"webhooks": [hook("c.example.io"), hook("c.example.io")]})),
        )
        .await;
    assert_eq!(status_of(duplicate), (422, "Invalid".into()));

    // Server-side apply is refused for what it is.
    let apply = configs
        .patch(
            "hooks",
            &PatchParams::apply("test"),
            &Patch::Apply(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration"})),
        )
        .await;
    assert_eq!(status_of(apply), (415, "UnsupportedMediaType".into()));

    // Every write so far was answered, and the log says how.
    let answers: Vec<(String, Option<u16>)> = server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/mutatingwebhookconfigurations/hooks"))
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(answers.first(), Some(&("PATCH".to_string(), Some(200))));
    assert_eq!(answers.last(), Some(&("PATCH".to_string(), Some(415))));

    configs
        .delete("hooks", &DeleteParams::default())
        .await
        .expect("deletes");
    assert!(server
        .objects(Kind::MutatingWebhookConfiguration)
        .is_empty());
}

#[tokio::test]
async fn barriers_hold_requests_until_all_parties_arrive() {
    let server = server();
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    server.barrier(2, PATIENCE, |r| {
        r.method == "GET" && r.path == "/api/v1/namespaces/default/secrets/racy"
    });

    let first = tokio::spawn({
        let secrets = secrets.clone();
        async move { secrets.get_opt("racy").await }
    });
    eventually("the first read to arrive", || {
        server.requests().iter().any(|r| r.path.ends_with("/racy"))
    })
    .await;
    let held = server
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/racy"));
    assert_eq!(held.and_then(|r| r.status), None, "held, not answered");

    // The second party opens it: both see the Secret missing, both create, one wins.
    let second = secrets.get_opt("racy").await.expect("reads");
    let first = first.await.expect("joins").expect("reads");
    assert!(first.is_none() && second.is_none());
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "racy"}})).expect("secret");
    let params = PostParams::default();
    let (a, b) = tokio::join!(
        secrets.create(&params, &secret),
        secrets.create(&params, &secret)
    );
    let mut codes: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| r.status)
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, [201, 409]);
    assert!(a.is_ok() != b.is_ok());

    // Open barriers are gone.
    tokio::time::timeout(PATIENCE, secrets.get_opt("racy"))
        .await
        .expect("not held")
        .expect("reads")
        .expect("exists");
}

/// A lifetime comfortably inside TokenRequest's bounds.
const HOUR: Duration = Duration::from_secs(3600);

/// Reviews `token` over HTTP for `audiences` (none: the API server's own).
async fn review(server: &ApiServer, token: &str, audiences: &[&str]) -> TokenReviewStatus {
    let reviews: Api<TokenReview> = Api::all(client(server).await);
    let audiences: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: token.into(),
            audiences: (!audiences.is_empty()).then_some(audiences),
        },
        ..Default::default()
    };
    let reviewed = reviews.create(&PostParams::default(), &request).await;
    reviewed.expect("reviews").status.expect("a status")
}

/// The error of a review that did not authenticate, which must carry no user or audiences.
fn rejection(status: TokenReviewStatus) -> String {
    assert_ne!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.user, Some(UserInfo::default()), "an empty user");
    assert_eq!(status.audiences, None);
    status.error.expect("an error")
}

/// The user of a review that authenticated.
fn authenticated_user(status: &TokenReviewStatus) -> UserInfo {
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    status.user.clone().expect("a user")
}

/// Namespace `shop`, ServiceAccount `shop/proxy` and a pod `shop/web` running as it; returns
/// the uids of the service account and the pod.
fn shop_with_web(server: &ApiServer) -> (String, String) {
    let applied = server
        .apply(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: proxy, namespace: shop}\n",
        )
        .expect("applies");
    (uid_of(&applied[1]), web(server))
}

/// (Re)creates the pod `shop/web`, running as `proxy`; returns its uid.
fn web(server: &ApiServer) -> String {
    let applied = server
        .apply(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n\
             spec:\n  serviceAccountName: proxy\n  containers: [{name: app, image: app}]\n",
        )
        .expect("applies");
    uid_of(&applied[0])
}

fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string()
}

/// One extra of a user, if it has it.
fn extra(user: &UserInfo, key: &str) -> Option<Vec<String>> {
    user.extra.as_ref()?.get(key).cloned()
}

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

#[tokio::test]
async fn pod_tokens_review_as_the_pod_for_the_audiences_in_common() {
    let server = server();
    let (account_uid, pod_uid) = shop_with_web(&server);
    let token = server
        .issue_pod_token("shop", "web", &["picket", "vault"], HOUR)
        .expect("issues");
    let again = server
        .issue_pod_token("shop", "web", &["picket", "vault"], HOUR)
        .expect("issues");
    assert_ne!(token, again, "every token is new");

    let status = review(&server, &token, &["other", "picket"]).await;
    assert_eq!(status.audiences, Some(vec!["picket".to_string()]));
    let user = authenticated_user(&status);
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:shop:proxy")
    );
    assert_eq!(user.uid, Some(account_uid.clone()));
    assert_eq!(
        user.groups,
        Some(vec![
            "system:serviceaccounts".to_string(),
            "system:serviceaccounts:shop".to_string(),
            "system:authenticated".to_string(),
        ])
    );
    assert_eq!(extra(&user, POD_NAME), Some(vec!["web".to_string()]));
    assert_eq!(extra(&user, POD_UID), Some(vec![pod_uid.clone()]));
    let credential = extra(&user, CREDENTIAL_ID).expect("a credential id");
    let jti = credential[0].strip_prefix("JTI=").expect("a JTI");
    assert_eq!(user.extra.as_ref().map(|e| e.len()), Some(3));

    // The token is a JWT in shape, with the claims upstream puts in.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64")).expect("JSON");
    assert_eq!(claims["sub"], "system:serviceaccount:shop:proxy");
    assert_eq!(claims["aud"], json!(["picket", "vault"]));
    assert_eq!(claims["jti"], jti);
    assert_eq!(
        claims["kubernetes.io"]["pod"],
        json!({"name": "web", "uid": pod_uid})
    );
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        account_uid.as_str()
    );

    // A pod whose service account is not stored runs as `default`, with a made-up, stable uid.
    server
        .apply(&pod_yaml("shop", "plain", "{}", "Running"))
        .expect("applies");
    let mut uids = Vec::new();
    for _ in 0..2 {
        let token = server
            .issue_pod_token("shop", "plain", &["picket"], HOUR)
            .expect("issues");
        let user = authenticated_user(&review(&server, &token, &["picket"]).await);
        assert_eq!(
            user.username.as_deref(),
            Some("system:serviceaccount:shop:default")
        );
        uids.push(user.uid.expect("a uid"));
    }
    assert_eq!(uids[0], uids[1]);
    assert_ne!(uids[0], account_uid);
}

#[tokio::test]
async fn tokens_for_other_audiences_are_rejected() {
    let server = server();
    shop_with_web(&server);
    let token = server
        .issue_pod_token("shop", "web", &["picket"], HOUR)
        .expect("issues");
    let error = rejection(review(&server, &token, &["vault", "other"]).await);
    assert_eq!(
        error,
        r#"[invalid bearer token, token audiences ["picket"] is invalid for the target audiences ["vault" "other"]]"#
    );
}

#[tokio::test]
async fn reviews_without_audiences_check_the_api_server_s_own() {
    let server = server();
    shop_with_web(&server);
    let picket = server
        .issue_pod_token("shop", "web", &["picket"], HOUR)
        .expect("issues");
    let error = rejection(review(&server, &picket, &[]).await);
    assert_eq!(
        error,
        format!(
            "[invalid bearer token, token audiences [\"picket\"] is invalid for the target \
             audiences [\"{API_AUDIENCE}\"]]"
        )
    );

    // A token issued without audiences is for the API server, as a kubelet's default one.
    let api = server
        .issue_pod_token("shop", "web", &[], HOUR)
        .expect("issues");
    let status = review(&server, &api, &[]).await;
    assert_eq!(status.audiences, Some(vec![API_AUDIENCE.to_string()]));
    rejection(review(&server, &api, &["picket"]).await);

    // Requests authenticate as the real server does them: for its own audience only.
    for token in [&api, &picket] {
        let kubeconfig = server.kubeconfig_yaml_with_token(token);
        let kubeconfig = Kubeconfig::from_yaml(&kubeconfig).expect("kubeconfig parses");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kube accepts the kubeconfig");
        let pods: Api<Pod> = Api::namespaced(Client::try_from(config).expect("client"), "shop");
        pods.list(&ListParams::default()).await.expect("lists");
    }
    let users: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/namespaces/shop/pods")
        .map(|r| r.user)
        .collect();
    assert_eq!(
        users,
        [Some("system:serviceaccount:shop:proxy".to_string()), None]
    );
}

#[tokio::test]
async fn expired_tokens_are_rejected_after_the_leeway() {
    let server = server();
    shop_with_web(&server);
    let token = server
        .issue_pod_token("shop", "web", &["picket"], Duration::from_secs(600))
        .expect("issues");
    // The validator allows a minute of clock skew past the expiry.
    server.advance_token_clock(Duration::from_secs(600 + 50));
    authenticated_user(&review(&server, &token, &["picket"]).await);
    server.advance_token_clock(Duration::from_secs(15));
    let error = rejection(review(&server, &token, &["picket"]).await);
    assert_eq!(
        error,
        "[invalid bearer token, service account token has expired]"
    );

    // Tokens issued now live on the advanced clock.
    let fresh = server
        .issue_pod_token("shop", "web", &["picket"], Duration::from_secs(600))
        .expect("issues");
    authenticated_user(&review(&server, &fresh, &["picket"]).await);
}

#[tokio::test]
async fn tokens_of_deleted_pods_are_rejected() {
    let server = server();
    shop_with_web(&server);
    let token = server
        .issue_pod_token("shop", "web", &["picket"], HOUR)
        .expect("issues");
    server
        .delete(Kind::Pod, Some("shop"), "web")
        .expect("deletes");
    let error = rejection(review(&server, &token, &["picket"]).await);
    assert_eq!(
        error,
        "[invalid bearer token, service account token has been invalidated]"
    );
}

#[tokio::test]
async fn tokens_of_a_pod_deleted_and_created_again_are_rejected() {
    let server = server();
    let (_, old_uid) = shop_with_web(&server);
    let old = server
        .issue_pod_token("shop", "web", &["picket"], HOUR)
        .expect("issues");
    server
        .delete(Kind::Pod, Some("shop"), "web")
        .expect("deletes");
    let new_uid = web(&server);
    assert_ne!(old_uid, new_uid);

    let error = rejection(review(&server, &old, &["picket"]).await);
    assert_eq!(
        error,
        format!(
            "[invalid bearer token, pod UID ({new_uid}) does not match service account pod ref \
             claim ({old_uid})]"
        )
    );
    // The new pod's token names the new uid.
    let new = server
        .issue_pod_token("shop", "web", &["picket"], HOUR)
        .expect("issues");
    let user = authenticated_user(&review(&server, &new, &["picket"]).await);
    assert_eq!(extra(&user, POD_UID), Some(vec![new_uid]));
}

#[tokio::test]
async fn tokens_of_a_service_account_deleted_or_replaced_are_rejected() {
    let server = server();
    let (old_uid, _) = shop_with_web(&server);
    let token = server
        .issue_pod_token("shop", "web", &["picket"], HOUR)
        .expect("issues");
    server
        .delete(Kind::ServiceAccount, Some("shop"), "proxy")
        .expect("deletes");
    let error = rejection(review(&server, &token, &["picket"]).await);
    assert_eq!(
        error,
        "[invalid bearer token, serviceaccounts \"proxy\" not found]"
    );

    let applied = server
        .apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: proxy, namespace: shop}\n")
        .expect("applies");
    let new_uid = uid_of(&applied[0]);
    let error = rejection(review(&server, &token, &["picket"]).await);
    assert_eq!(
        error,
        format!("[invalid bearer token, service account UID ({new_uid}) does not match claim ({old_uid})]")
    );
}

#[tokio::test]
async fn unbound_tokens_authenticate_without_pod_extras() {
    let server = server();
    let (account_uid, _) = shop_with_web(&server);
    let token = server
        .issue_service_account_token("shop", "proxy", &["picket"], HOUR)
        .expect("issues");
    let status = review(&server, &token, &["picket"]).await;
    assert_eq!(status.audiences, Some(vec!["picket".to_string()]));
    let user = authenticated_user(&status);
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:shop:proxy")
    );
    assert_eq!(user.uid, Some(account_uid));
    let keys: Vec<String> = user
        .extra
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(keys, [CREDENTIAL_ID], "no pod name or uid");

    // No pod to lose: deleting one changes nothing.
    server
        .delete(Kind::Pod, Some("shop"), "web")
        .expect("deletes");
    let status = review(&server, &token, &["picket"]).await;
    assert_eq!(status.authenticated, Some(true));
}

#[test]
fn tokens_are_issued_for_stored_pods_with_lifetimes_token_request_allows() {
    let server = server();
    shop_with_web(&server);
    let missing = server
        .issue_pod_token("shop", "gone", &["picket"], HOUR)
        .expect_err("no such pod");
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (404, "pods \"gone\" not found")
    );
    let short = server
        .issue_pod_token("shop", "web", &["picket"], Duration::from_secs(60))
        .expect_err("too short");
    assert_eq!((short.code, short.reason), (422, "Invalid"));
    let nowhere = server
        .issue_service_account_token("nowhere", "proxy", &["picket"], HOUR)
        .expect_err("no such namespace");
    assert_eq!(nowhere.code, 404);
}

#[tokio::test]
async fn open_watches_count_per_kind_until_their_streams_end() {
    let server = server();
    let client = client(&server).await;
    let rv = server.resource_version().to_string();
    let params = WatchParams::default().disable_bookmarks();
    let all_pods: Api<Pod> = Api::all(client.clone());
    let default_pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let namespaces: Api<Namespace> = Api::all(client);
    let mut everywhere = all_pods.watch(&params, &rv).await.expect("watches").boxed();
    let mut in_default = default_pods
        .watch(&params, &rv)
        .await
        .expect("watches")
        .boxed();
    let _namespace_events = namespaces.watch(&params, &rv).await.expect("watches");
    eventually("three watches open", || {
        server.open_watches_of(Kind::Pod) == 2 && server.open_watches_of(Kind::Namespace) == 1
    })
    .await;
    assert_eq!(server.open_watches_of(Kind::Secret), 0);
    assert_eq!(server.open_watches(), 3);

    server
        .apply(&pod_yaml("default", "web", "{}", "Running"))
        .expect("applies");
    for events in [&mut everywhere, &mut in_default] {
        match next(events, "the pod").await {
            Ok(WatchEvent::Added(pod)) => assert_eq!(pod.name_any(), "web"),
            other => panic!("expected the pod, got {other:?}"),
        }
    }
    assert_eq!(server.watch_events_sent(Kind::Pod), 2);
    assert_eq!(server.watch_events_sent(Kind::Namespace), 0);

    // The client going away ends a stream.
    drop(everywhere);
    eventually("the dropped watch to close", || {
        server.open_watches_of(Kind::Pod) == 1
    })
    .await;
    assert_eq!(server.open_watches_of(Kind::Namespace), 1);

    // So does timeoutSeconds.
    let timed = WatchParams::default().timeout(1).disable_bookmarks();
    let mut brief = all_pods.watch(&timed, &rv).await.expect("watches").boxed();
    while let Some(event) = next_or_end(&mut brief).await {
        event.expect("no stream error");
    }
    eventually("the timed-out watch to close", || {
        server.open_watches_of(Kind::Pod) == 1
    })
    .await;

    // And a fault.
    server.drop_watches();
    eventually("every watch to close", || server.open_watches() == 0).await;
}

/// The next item of a stream, `None` when it ends; a panic if neither comes in time.
async fn next_or_end<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an event or the end of the stream")
}
