//! The control plane against the test API server, with sidecars' real
//! stream client over loopback TLS: who may see what, what a view holds,
//! and that a change through the API reaches the sidecars it concerns.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_control::auth::{Authenticator, KubeReviewer};
use picket_control::certify::Certifier;
use picket_control::metrics::ControlMetrics;
use picket_control::service::{ControlService, StreamConfig};
use picket_policy::{NodeAddrs, ObjectKey, Protocol};
use picket_state::control::{
    open, open_as, ControlConfig, ControlMetrics as SidecarMetrics, ControlSource, Resolver,
    StreamError,
};
use picket_state::kube::KubeSource;
use picket_state::{Snapshot, SnapshotRx, Source as _, StateWriter};
use picket_test_support::apiserver::{ApiServer, Kind};

const SERVER_NAME: &str = "picket-control.picket-system.svc";

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {containers: [{name: app, ports: [{containerPort: 8080, name: http}]}, {name: picket-proxy}]}
status: {podIP: 10.0.0.10, podIPs: [{ip: 10.0.0.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app}, {name: picket-proxy}]}
status: {podIP: 10.0.0.11, podIPs: [{ip: 10.0.0.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: other, labels: {app: stranger}}
spec: {containers: [{name: app}]}
status: {podIP: 10.0.0.12, podIPs: [{ip: 10.0.0.12}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]
"#;

/// api-from-web, changed to let in only pods labelled app=nobody.
const API_ONLY_FROM_NOBODY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api-from-web, namespace: shop}\n\
     spec: {podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {app: nobody}}}]}]}\n";

/// The API server, the control plane serving on loopback, and a place for files.
struct Plane {
    api: ApiServer,
    addr: std::net::SocketAddr,
    ca_pem: String,
    dir: tempfile::TempDir,
}

async fn plane() -> Plane {
    plane_with(Duration::from_secs(60), "").await
}

async fn plane_with_stall(stall: Duration) -> Plane {
    plane_with(stall, "").await
}

/// A plane whose cluster also holds `extra` when the control plane syncs.
async fn plane_with(stall: Duration, extra: &str) -> Plane {
    let api = ApiServer::bind("127.0.0.1:0").unwrap();
    api.apply(CLUSTER).unwrap();
    if !extra.is_empty() {
        api.apply(extra).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let client = picket_state::kube::client(Some(&kubeconfig)).await.unwrap();
    let (writer, mut snapshots) = StateWriter::new();
    let restarts =
        prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["kind"]).unwrap();
    // As picket-control runs it: Services and EndpointSlices too.
    tokio::spawn(
        KubeSource::new(client.clone(), restarts)
            .with_services()
            .run(writer),
    );
    wait_for(&mut snapshots, "the control plane's sync", |_| true).await;
    let picket_test_support::certs::TestCerts {
        ca_pem,
        cert_pem,
        key_pem,
    } = picket_test_support::certs::serving_certificate(&[SERVER_NAME]).unwrap();
    let tls =
        picket_control::serve::server_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let auth = Arc::new(Authenticator::new(KubeReviewer(client), 1000.0, 1000.0));
    let metrics = Arc::new(ControlMetrics::new(&prometheus::Registry::new()));
    let service = ControlService::new(
        snapshots,
        auth,
        metrics,
        StreamConfig {
            batch: Duration::from_millis(10),
            stall,
            lifetime: Duration::from_secs(3600),
        },
        Arc::new(Certifier::new(
            Some(mesh_ca()),
            &prometheus::Registry::new(),
        )),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(picket_control::serve::serve(
        listener,
        Arc::new(tls),
        service,
    ));
    Plane {
        api,
        addr,
        ca_pem,
        dir,
    }
}

impl Plane {
    /// A sidecar's stream configuration with this token.
    fn sidecar(&self, name: &str, token: &str) -> ControlConfig {
        let token_file = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&token_file, token).unwrap();
        ControlConfig {
            addr: self.addr.to_string(),
            server_name: SERVER_NAME.into(),
            ca_pem: self.ca_pem.clone().into_bytes(),
            token_file,
            max_backoff: Duration::from_millis(200),
            outbound: false,
        }
    }

    fn token(&self, ns: &str, pod: &str, audience: &str) -> String {
        self.api
            .issue_pod_token(ns, pod, &[audience], Duration::from_secs(3600))
            .unwrap()
    }

    /// Runs a sidecar's real source; its snapshots.
    fn start_sidecar(&self, name: &str, token: &str) -> SnapshotRx {
        self.start_sidecar_with_resolver(name, token).0
    }

    /// The same, with the handle that asks about addresses.
    fn start_sidecar_with_resolver(&self, name: &str, token: &str) -> (SnapshotRx, Resolver) {
        let (writer, snapshots) = StateWriter::new();
        let metrics = SidecarMetrics::new(&prometheus::Registry::new());
        let (source, resolver) = ControlSource::new(self.sidecar(name, token), metrics);
        tokio::spawn(source.run(writer));
        (snapshots, resolver)
    }

    /// Runs the source of a sidecar that captures outbound connections, as
    /// `picket-proxy run --outbound-capture on` does.
    fn start_capturing_sidecar(&self, name: &str, token: &str) -> SnapshotRx {
        let (mut writer, snapshots) = StateWriter::new();
        writer.require_services();
        let metrics = SidecarMetrics::new(&prometheus::Registry::new());
        let config = ControlConfig {
            outbound: true,
            ..self.sidecar(name, token)
        };
        tokio::spawn(ControlSource::new(config, metrics).0.run(writer));
        snapshots
    }
}

async fn wait_for(
    rx: &mut SnapshotRx,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = rx.borrow_and_update().clone() {
            if ok(&s) {
                return s;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

fn allowed(s: &Snapshot, src: &str, dst: &ObjectKey, port: u16) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst_ip = s.index.pod(dst).unwrap().ips[0];
    s.index
        .decide_from_ip(src, dst, dst_ip, port, Protocol::Tcp, &NodeAddrs::default())
        .allowed
}

/// The mesh CA every plane signs with: a root of its own.
fn mesh_ca() -> picket_control::ca::Ca {
    let root = picket_test_support::certs::TestCa::root("mesh-root").unwrap();
    picket_control::ca::Ca::from_pem(
        root.cert_pem.as_bytes(),
        root.key_pem.as_bytes(),
        root.cert_pem.as_bytes(),
        "cluster.local",
        Duration::from_secs(3600),
    )
    .unwrap()
}

/// A CSR from a new key, asking for `san` as its identity.
fn csr_asking_for(san: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

async fn certify_refusal(plane: &Plane, name: &str, token: &str) -> tonic::Code {
    let csr = csr_asking_for("spiffe://cluster.local/ns/shop/sa/default");
    match picket_state::control::certify(&plane.sidecar(name, token), csr).await {
        Ok(issued) => panic!(
            "{name}: expected a refusal, got {} certificates",
            issued.chain.len()
        ),
        Err(StreamError::Status(status)) => status.code(),
        Err(other) => panic!("{name}: {other}"),
    }
}

async fn refusal(plane: &Plane, name: &str, token: &str) -> tonic::Code {
    match open(&plane.sidecar(name, token)).await {
        Ok((mut stream, _)) => match stream.message().await {
            Err(status) => status.code(),
            Ok(m) => panic!("{name}: expected a refusal, got {m:?}"),
        },
        Err(StreamError::Status(status)) => status.code(),
        Err(other) => panic!("{name}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_gets_its_pods_view_and_a_policy_change_reaches_it() {
    let plane = plane().await;
    let api_key = ObjectKey::new("shop", "api");
    let mut api = plane.start_sidecar("api", &plane.token("shop", "api", "picket"));
    let mut web = plane.start_sidecar("web", &plane.token("shop", "web", "picket"));
    let view = wait_for(&mut api, "api's view", |s| s.index.pod(&api_key).is_some()).await;
    // The view holds what api's decisions read: web (a peer), not the stranger.
    assert!(view.index.pod(&ObjectKey::new("shop", "web")).is_some());
    assert!(view
        .index
        .pod(&ObjectKey::new("other", "stranger"))
        .is_none());
    assert!(allowed(&view, "10.0.0.11", &api_key, 8080));
    assert!(!allowed(&view, "10.0.0.11", &api_key, 9090));
    assert!(!allowed(&view, "10.0.0.12", &api_key, 8080));
    let web_view = wait_for(&mut web, "web's view", |s| {
        s.index.pod(&ObjectKey::new("shop", "web")).is_some()
    })
    .await;
    assert!(
        web_view
            .index
            .policy(&ObjectKey::new("shop", "api-from-web"))
            .is_none(),
        "web is sent a policy that does not concern it"
    );
    // One watch per kind, however many sidecars are connected.
    assert_eq!(plane.api.open_watches_of(Kind::Pod), 1);
    assert_eq!(plane.api.open_watches_of(Kind::NetworkPolicy), 1);
    assert_eq!(plane.api.open_watches_of(Kind::ClusterNetworkPolicy), 1);
    assert_eq!(plane.api.open_watches_of(Kind::Node), 1);

    // A policy through the API that forbids web reaches api's sidecar.
    plane.api.apply(API_ONLY_FROM_NOBODY).unwrap();
    wait_for(&mut api, "the new policy", |s| {
        !allowed(s, "10.0.0.11", &api_key, 8080)
    })
    .await;
    // And a new pod that the policy names joins api's view.
    plane
        .api
        .apply(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: nobody, namespace: shop, labels: {app: nobody}}\n\
             spec: {containers: [{name: app}]}\nstatus: {podIP: 10.0.0.13, podIPs: [{ip: 10.0.0.13}]}\n",
        )
        .unwrap();
    wait_for(&mut api, "a pod joining the view", |s| {
        s.index.pod(&ObjectKey::new("shop", "nobody")).is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_token_bound_to_a_live_injected_pod_for_audience_picket_gets_a_view() {
    let plane = plane().await;
    // A token for web yields web's view, whatever the stream is asked.
    let (mut stream, _) = open(&plane.sidecar("web", &plane.token("shop", "web", "picket")))
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    let me = first.me.unwrap();
    assert_eq!((me.namespace.as_str(), me.name.as_str()), ("shop", "web"));
    assert!(first.full);

    use tonic::Code::Unauthenticated;
    let wrong_audience = plane.token("shop", "api", "vault");
    assert_eq!(
        refusal(&plane, "audience", &wrong_audience).await,
        Unauthenticated
    );
    let unbound = plane
        .api
        .issue_service_account_token("shop", "default", &["picket"], Duration::from_secs(3600))
        .unwrap();
    assert_eq!(refusal(&plane, "unbound", &unbound).await, Unauthenticated);
    let uninjected = plane.token("other", "stranger", "picket");
    assert_eq!(
        refusal(&plane, "uninjected", &uninjected).await,
        Unauthenticated
    );
    assert_eq!(
        refusal(&plane, "garbage", "not-a-token").await,
        Unauthenticated
    );
    // A token replayed after its pod is deleted.
    let api_token = plane.token("shop", "api", "picket");
    plane.api.delete(Kind::Pod, Some("shop"), "api").unwrap();
    assert_eq!(
        refusal(&plane, "deleted", &api_token).await,
        Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sidecar_delays_no_other_and_is_disconnected() {
    let plane = plane_with_stall(Duration::from_millis(500)).await;
    // A sidecar that opens its stream and never reads.
    let token = plane.token("shop", "web", "picket");
    let (mut stalled, _acks) = open(&plane.sidecar("stalled", &token)).await.unwrap();
    let api_key = ObjectKey::new("shop", "api");
    let mut api = plane.start_sidecar("api", &plane.token("shop", "api", "picket"));
    wait_for(&mut api, "api's view", |s| s.index.pod(&api_key).is_some()).await;
    // Changes that concern both, more than the flow-control windows and the
    // server's send buffer hold: web's labels change, with many labels.
    let many: String = (0..250)
        .map(|l| format!(", l{l}: {}", "x".repeat(60)))
        .collect();
    for i in 0..60 {
        plane
            .api
            .apply(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: shop, labels: {{app: web, round: \"{i}\"{many}}}}}\n\
                 spec: {{containers: [{{name: app}}, {{name: picket-proxy}}]}}\nstatus: {{podIP: 10.0.0.11, podIPs: [{{ip: 10.0.0.11}}]}}\n"
            ))
            .unwrap();
    }
    // The reading sidecar is not held up by the stalled one.
    wait_for(&mut api, "the last change", |s| {
        s.index
            .pod(&ObjectKey::new("shop", "web"))
            .is_some_and(|p| p.labels.get("round").map(String::as_str) == Some("59"))
    })
    .await;
    // The server closed the stalled stream (a live one never ends): reading
    // it now reaches its end.
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stalled.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None) | Err(_)) => break,
            Err(_) => panic!("the stalled stream was never closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_says_whether_an_address_the_view_lacks_is_a_pod() {
    let plane = plane().await;
    let api_key = ObjectKey::new("shop", "api");
    let (mut api, resolver) =
        plane.start_sidecar_with_resolver("api", &plane.token("shop", "api", "picket"));
    wait_for(&mut api, "api's view", |s| s.index.pod(&api_key).is_some()).await;
    let stranger: IpAddr = "10.0.0.12".parse().unwrap();
    assert!(
        api.borrow()
            .as_ref()
            .unwrap()
            .index
            .pods_with_ip(stranger)
            .is_empty(),
        "the stranger is outside api's view"
    );
    assert_eq!(resolver.is_pod(stranger).await, Some(true));
    assert_eq!(
        resolver.is_pod("10.9.9.9".parse().unwrap()).await,
        Some(false)
    );
    // A pod that belongs in the view is in it when the answer comes.
    plane
        .api
        .apply(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: shop, labels: {app: web}}\n\
             spec: {containers: [{name: app}]}\nstatus: {podIP: 10.0.0.14, podIPs: [{ip: 10.0.0.14}]}\n",
        )
        .unwrap();
    let web_2: IpAddr = "10.0.0.14".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while resolver.is_pod(web_2).await != Some(true) {
        assert!(Instant::now() < deadline, "the new pod was never known");
    }
    assert!(
        !api.borrow()
            .as_ref()
            .unwrap()
            .index
            .pods_with_ip(web_2)
            .is_empty(),
        "answered before the view held the pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_isolated_pods_a_view_does_not_hold_arrive_by_address_in_parts_published_whole() {
    // 3,000 pods whose egress a default policy isolates: web admits every
    // peer (it is not isolated for ingress), so each one's egress side
    // decides, and web's view carries an entry per address, not the pods.
    let mut extra = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny-egress, namespace: other}\n\
         spec: {podSelector: {}, policyTypes: [Egress]}\n",
    );
    for i in 0..3000 {
        extra.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: batch-{i}, namespace: other, labels: {{app: batch}}}}\n\
             spec: {{containers: [{{name: app}}]}}\nstatus: {{podIP: 10.1.{}.{}, podIPs: [{{ip: 10.1.{}.{}}}]}}\n",
            i / 250,
            i % 250 + 1,
            i / 250,
            i % 250 + 1,
        ));
    }
    let plane = plane_with(Duration::from_secs(60), &extra).await;
    let web_key = ObjectKey::new("shop", "web");
    let mut web = plane.start_sidecar("web", &plane.token("shop", "web", "picket"));
    let view = wait_for(&mut web, "web's view", |_| true).await;
    // The first view published is the whole view: its parts were applied
    // before anything was published.
    assert_eq!(view.version, 1, "the view was published part by part");
    let entries = view.index.egress_toward_me().expect("a view").len();
    assert_eq!(
        entries,
        (0, 3001),
        "an entry per address (the stranger's too)"
    );
    assert!(
        view.index.counts().pods < 10,
        "the pods themselves stay out of the view"
    );
    assert!(
        !allowed(&view, "10.1.3.7", &web_key, 80),
        "their own egress denies them"
    );
    assert!(
        allowed(&view, "10.9.9.9", &web_key, 80),
        "an address no pod holds is let in"
    );
    // A policy that lets them out to shop reaches web by entries.
    plane
        .api
        .apply(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: batch-to-shop, namespace: other}\n\
             spec: {podSelector: {matchLabels: {app: batch}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {team: shop}}}]}]}\n",
        )
        .unwrap();
    wait_for(&mut web, "the batch pods let out", |s| {
        allowed(s, "10.1.3.7", &web_key, 80)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_of_another_view_format_is_refused_before_anything_is_sent() {
    // An older sidecar would ignore the compiled egress sides and the parts
    // of a view and read it wide open: it gets no view at all.
    let plane = plane().await;
    let config = plane.sidecar("api", &plane.token("shop", "api", "picket"));
    for format in [None, Some(1), Some(picket_api::VIEW_FORMAT + 1)] {
        let code = match open_as(&config, format).await {
            Ok((mut stream, _)) => match stream.message().await {
                Err(status) => status.code(),
                Ok(m) => panic!("{format:?}: expected a refusal, got {m:?}"),
            },
            Err(StreamError::Status(status)) => status.code(),
            Err(other) => panic!("{format:?}: {other}"),
        };
        assert_eq!(code, tonic::Code::FailedPrecondition, "{format:?}");
    }
    let (mut stream, _) = open_as(&config, Some(picket_api::VIEW_FORMAT))
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.full);
    assert_eq!(first.view_format, picket_api::VIEW_FORMAT);
}

/// A Service in front of api, and web's egress limited to api.
const OUTBOUND: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: web, port: 80, targetPort: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: web, port: 8080}]
endpoints: [{addresses: [10.0.0.10], targetRef: {kind: Pod, name: api, namespace: shop}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}]}]
"#;

fn outbound_allowed(s: &Snapshot, src: &ObjectKey, dst: &str, port: u16) -> bool {
    s.index
        .decide_to_ip(
            src,
            dst.parse().unwrap(),
            port,
            Protocol::Tcp,
            &NodeAddrs::default(),
        )
        .allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capturing_sidecar_gets_its_destinations_ingress_sides_and_the_services() {
    let plane = plane_with(Duration::from_secs(60), OUTBOUND).await;
    let web_key = ObjectKey::new("shop", "web");
    let mut web = plane.start_capturing_sidecar("web", &plane.token("shop", "web", "picket"));
    let view = wait_for(&mut web, "web's outbound view", |s| {
        s.index.pod(&web_key).is_some()
    })
    .await;
    // The Service resolves in the sidecar, to api's port named http.
    let resolved = view
        .services
        .resolve("10.96.0.10".parse().unwrap(), 80, Protocol::Tcp)
        .expect("the Service is in the view");
    assert_eq!(resolved.endpoints, ["10.0.0.10:8080".parse().unwrap()]);
    // Egress allows api only; api's own ingress allows web on http only:
    // both decided in web's sidecar.
    assert!(outbound_allowed(&view, &web_key, "10.0.0.10", 8080));
    assert!(
        !outbound_allowed(&view, &web_key, "10.0.0.10", 9090),
        "api's ingress lets web in on http only"
    );
    assert!(!outbound_allowed(&view, &web_key, "10.0.0.12", 8080));
    assert!(view.index.ingress_toward_me().is_some());

    // Changes through the API reach it: api's ingress now forbids web...
    plane.api.apply(API_ONLY_FROM_NOBODY).unwrap();
    wait_for(&mut web, "api's new ingress side", |s| {
        !outbound_allowed(s, &web_key, "10.0.0.10", 8080)
    })
    .await;
    // ... and the Service loses its endpoint.
    plane
        .api
        .delete(Kind::EndpointSlice, Some("shop"), "api-1")
        .unwrap();
    wait_for(&mut web, "the endpoint gone", |s| {
        s.services
            .resolve("10.96.0.10".parse().unwrap(), 80, Protocol::Tcp)
            .is_some_and(|r| r.endpoints.is_empty())
    })
    .await;

    // A sidecar that does not capture gets no outbound parts.
    let api_key = ObjectKey::new("shop", "api");
    let mut api = plane.start_sidecar("api", &plane.token("shop", "api", "picket"));
    let view = wait_for(&mut api, "api's view", |s| s.index.pod(&api_key).is_some()).await;
    assert_eq!(view.services.counts(), (0, 0));
    assert!(view.index.ingress_toward_me().is_none());
}

/// `Certify`: the certificate names the caller's pod (its UID and service
/// account from the token), whatever the CSR asks for; every caller the
/// `Watch` stream refuses is refused here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_names_the_pod_of_the_token_and_nobody_else_gets_one() {
    let plane = plane().await;
    let api_uid = {
        let api: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(plane.api.get(Kind::Pod, Some("shop"), "api").unwrap()).unwrap();
        api.metadata.uid.unwrap()
    };
    let token = plane.token("shop", "api", "picket");
    let csr = csr_asking_for("spiffe://cluster.local/ns/kube-system/sa/admin");
    let issued = picket_state::control::certify(&plane.sidecar("api", &token), csr)
        .await
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(uris, ["URI(spiffe://cluster.local/ns/shop/sa/default)"]);
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, api_uid, "the pod's UID from the token");
    assert_eq!(issued.trust_domain, "cluster.local");
    assert_eq!(issued.trust_anchors.len(), 1);

    use tonic::Code::Unauthenticated;
    let wrong_audience = plane.token("shop", "api", "vault");
    assert_eq!(
        certify_refusal(&plane, "audience", &wrong_audience).await,
        Unauthenticated
    );
    let unbound = plane
        .api
        .issue_service_account_token("shop", "default", &["picket"], Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        certify_refusal(&plane, "unbound", &unbound).await,
        Unauthenticated
    );
    let uninjected = plane.token("other", "stranger", "picket");
    assert_eq!(
        certify_refusal(&plane, "uninjected", &uninjected).await,
        Unauthenticated
    );
    // A token replayed after its pod is deleted.
    let web_token = plane.token("shop", "web", "picket");
    plane.api.delete(Kind::Pod, Some("shop"), "web").unwrap();
    assert_eq!(
        certify_refusal(&plane, "deleted", &web_token).await,
        Unauthenticated
    );
    // An invalid CSR is refused as such.
    match picket_state::control::certify(&plane.sidecar("api", &token), b"garbage".to_vec()).await {
        Err(StreamError::Status(status)) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}
