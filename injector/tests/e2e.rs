//! End to end: the real `picket-injector` binary over HTTPS, with a
//! self-generated certificate verified against the CA it writes out, and
//! with mounted certificate files that change while it serves. Namespace
//! lookups are off, except in the Pod Security test, which reads namespaces
//! from the test API server (`picket-test-support`) through the real kube client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use picket_test_support::announced::listening_addrs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const SERVICE_NAME: &str = "picket-injector.picket-system.svc";
const DEADLINE: Duration = Duration::from_secs(30);

/// A running injector, killed on drop.
struct Injector {
    child: Child,
    webhook: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
}

impl Injector {
    /// Starts the binary with `args` (plus listen addresses) and waits until ready.
    async fn start(args: &[&str], dir: tempfile::TempDir, ca_file: PathBuf) -> Injector {
        let mut all = vec!["--namespace-lookup", "none"];
        all.extend_from_slice(args);
        Injector::start_with(&all, &[], dir, ca_file).await
    }

    /// Like [`Injector::start`], without a default lookup mode and with extra environment.
    async fn start_with(
        args: &[&str],
        envs: &[(&str, &Path)],
        dir: tempfile::TempDir,
        ca_file: PathBuf,
    ) -> Injector {
        let mut child = Command::new(env!("CARGO_BIN_EXE_picket-injector"))
            .args(["--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--max-body-bytes", "65536"])
            .args(["--shutdown-delay", "0s"])
            .args(args)
            .env("PICKET_LOG", "debug")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start picket-injector");
        // Port 0, read back from the log: no other process can take the ports first.
        let log = child.stderr.take().expect("stderr is piped");
        let listening = ["Admin server listening", "Webhook listening"];
        let Some([admin, webhook]) = listening_addrs(log, &listening, DEADLINE)
            .and_then(|addrs| <[SocketAddr; 2]>::try_from(addrs).ok())
        else {
            panic!("picket-injector never listened: {:?}", child.try_wait());
        };
        let mut injector = Injector {
            child,
            webhook,
            admin,
            _dir: dir,
            ca_file,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = injector.child.try_wait() {
                panic!("picket-injector exited early: {status}");
            }
            if let Ok((StatusCode::OK, _)) = http_get(admin, "/ready").await {
                break;
            }
            assert!(started.elapsed() < DEADLINE, "injector not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        injector
    }

    /// A self-signed injector that reads namespaces from `api`.
    async fn looking_up_namespaces_in(api: &picket_test_support::ApiServer) -> Injector {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.kubeconfig(&kubeconfig).unwrap();
        let ca_file = dir.path().join("ca.crt");
        let ca = ca_file.to_str().unwrap().to_string();
        let args = [
            "--tls-mode",
            "self-signed",
            "--ca-out",
            &ca,
            "--namespace-lookup",
            "kube",
        ];
        let envs = [("KUBECONFIG", kubeconfig.as_path())];
        Injector::start_with(&args, &envs, dir, ca_file).await
    }

    async fn self_signed() -> Injector {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        let ca = ca_file.to_str().unwrap().to_string();
        Injector::start(
            &["--tls-mode", "self-signed", "--ca-out", &ca],
            dir,
            ca_file,
        )
        .await
    }

    fn ca(&self) -> String {
        std::fs::read_to_string(&self.ca_file).unwrap()
    }

    /// POSTs `body` to `/mutate`, verifying the server against the CA.
    async fn post(&self, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        post_with_ca(self.webhook, &self.ca(), body)
            .await
            .expect("request to the injector")
    }

    async fn review(&self, review: &Value) -> Value {
        let (status, body) = self.post(serde_json::to_vec(review).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("response is JSON")
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post_with_ca(
    addr: SocketAddr,
    ca_pem: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Vec<u8>), Box<dyn std::error::Error + Send + Sync>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVICE_NAME)?, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let request = Request::post("/mutate")
        .header("content-type", "application/json")
        .header("host", SERVICE_NAME)
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}

async fn http_get(
    addr: SocketAddr,
    path: &str,
) -> Result<(StatusCode, String), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn pod_review(uid: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pods")
        .join(format!("{name}.yaml"));
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The patch of a response, applied with the json-patch crate; `None` without one.
fn apply(pod: &Value, response: &Value) -> Option<Value> {
    let patch = response["patch"].as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("patch is base64");
    let ops: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSONPatch");
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &ops).expect("patch applies");
    Some(doc)
}

/// The `kubernetes-validate` executable, if installed (`.ci/manifests.sh` installs it).
fn kubernetes_validate() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kubernetes-validate"))
                .collect()
        })
        .unwrap_or_default();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(cache) = cache {
        candidates.push(cache.join("picket/kubernetes-validate/bin/kubernetes-validate"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_over_https_and_is_idempotent() {
    let injector = Injector::self_signed().await;
    let pod = fixture("generate-name");

    let response = injector.review(&pod_review("uid-1", &pod)).await;
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    let inner = &response["response"];
    assert_eq!(inner["uid"], "uid-1");
    assert_eq!(inner["allowed"], true);
    let patched = apply(&pod, inner).expect("a patch");

    let typed: Pod = serde_json::from_value(patched.clone()).expect("patched pod is a Pod");
    let spec = typed.spec.as_ref().unwrap();
    let inits: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, ["picket-init", "picket-proxy"]);
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["web"]);
    assert_eq!(
        spec.init_containers.as_ref().unwrap()[1]
            .restart_policy
            .as_deref(),
        Some("Always")
    );
    let sysctls = spec.security_context.as_ref().unwrap().sysctls.as_ref();
    let reserved: Vec<(&str, &str)> = sysctls
        .into_iter()
        .flatten()
        .map(|s| (s.name.as_str(), s.value.as_str()))
        .collect();
    assert_eq!(
        reserved,
        [(
            "net.ipv4.ip_local_reserved_ports",
            "15000-15001,15006,15020"
        )]
    );
    let annotations = typed.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert!(annotations["picket.io/status"].contains("\"injected\":true"));

    if let Some(validate) = kubernetes_validate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pod.yaml");
        let mut pod = patched.clone();
        pod["metadata"]["name"] = "web-7d9f8c6b5-abcde".into();
        std::fs::write(&file, serde_yaml::to_string(&pod).unwrap()).unwrap();
        let out = Command::new(&validate)
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("kubernetes-validate not installed; schema check of the patched pod skipped");
    }

    // Reinvocation, or a controller re-submitting: nothing changes.
    let again = injector.review(&pod_review("uid-2", &patched)).await;
    assert_eq!(again["response"]["uid"], "uid-2");
    assert_eq!(again["response"]["allowed"], true);
    assert!(
        again["response"].get("patch").is_none(),
        "second patch: {again}"
    );

    // Metrics count what happened.
    let (status, metrics) = http_get(injector.admin, "/metrics").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("picket_injector_requests_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("picket_injector_patches_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "picket_injector_reviews_total{decision=\"already_injected\",reason=\"already_injected\"} 1"
    ));
    let (status, _) = http_get(injector.admin, "/live").await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_or_passed_through_never_crashes() {
    let injector = Injector::self_signed().await;

    // Not an AdmissionReview: 400 with a message.
    for body in [
        &b"{not json"[..],
        br#"{"apiVersion":"v1","kind":"Pod"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        b"",
    ] {
        let (status, message) = injector.post(body.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(!message.is_empty());
    }
    let (_, message) = injector.post(b"{not json".to_vec()).await;
    assert!(String::from_utf8_lossy(&message).contains("not JSON"));

    // Another kind: allowed unchanged, with a warning and the uid.
    let mut review = pod_review("uid-kind", &json!({"apiVersion": "v1", "kind": "Service"}));
    review["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    let response = injector.review(&review).await;
    assert_eq!(response["response"]["uid"], "uid-kind");
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("patch").is_none());
    assert!(response["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("Service"));

    // A Pod that does not decode: refused, naming the field (it would run unenforced).
    let broken = json!({"metadata": {"name": "x"}, "spec": {"containers": 3}});
    let response = injector.review(&pod_review("uid-broken", &broken)).await;
    assert_eq!(response["response"]["uid"], "uid-broken");
    assert_eq!(response["response"]["allowed"], false);
    assert!(response["response"].get("patch").is_none());
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("spec.containers"), "{message}");

    // An invalid per-pod annotation: refused, naming it.
    let mut pod = fixture("plain");
    pod["metadata"]["annotations"] = json!({"picket.io/proxy-log-level": "bogus-level"});
    let response = injector.review(&pod_review("uid-annot", &pod)).await;
    assert_eq!(response["response"]["uid"], "uid-annot");
    assert_eq!(response["response"]["allowed"], false);
    assert!(response["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("picket.io/proxy-log-level"));

    // Over the size limit (64 KiB here): 413.
    let mut big = fixture("plain");
    big["metadata"]["annotations"] = json!({"filler": "x".repeat(100_000)});
    let body = serde_json::to_vec(&pod_review("uid-big", &big)).unwrap();
    // The injector answers as soon as the limit is passed and closes the
    // connection, so the client may still be writing: it then sees the
    // answer, or a broken pipe (a race of the client, not of the injector).
    match post_with_ca(injector.webhook, &injector.ca(), body).await {
        Ok((status, _)) => assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE),
        Err(error) => assert!(
            format!("{error:?}").contains("BrokenPipe")
                || format!("{error:?}").contains("ConnectionReset"),
            "an oversized review failed otherwise: {error:?}"
        ),
    }

    // Still serving after all that.
    let response = injector
        .review(&pod_review("uid-after", &fixture("plain")))
        .await;
    assert!(response["response"]["patch"].is_string());
    let (_, metrics) = http_get(injector.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("picket_injector_errors_total{kind=\"bad_request\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("picket_injector_errors_total{kind=\"too_large\"} 1"),
        "{metrics}"
    );
}

/// Writes a cert-manager-like Secret volume: files behind a `..data` symlink.
fn write_secret_volume(dir: &Path, generation: u32, bundle: &picket_injector::certs::CertBundle) {
    let data = dir.join(format!("..gen{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), &bundle.cert_pem).unwrap();
    std::fs::write(data.join("tls.key"), &bundle.key_pem).unwrap();
    std::fs::write(data.join("ca.crt"), &bundle.ca_cert_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_certificate_is_reloaded_when_the_secret_changes() {
    let names = vec![SERVICE_NAME.to_string()];
    let first = picket_injector::certs::generate(&names, std::time::SystemTime::now()).unwrap();
    let second = picket_injector::certs::generate(&names, std::time::SystemTime::now()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    write_secret_volume(&tls_dir, 1, &first);
    let (cert, key) = (tls_dir.join("tls.crt"), tls_dir.join("tls.key"));
    let ca_file = tls_dir.join("ca.crt");
    let injector = Injector::start(
        &[
            "--tls-mode",
            "files",
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-reload-interval",
            "100ms",
        ],
        dir,
        ca_file,
    )
    .await;
    let body = || serde_json::to_vec(&pod_review("uid-tls", &fixture("plain"))).unwrap();
    let (status, _) = post_with_ca(injector.webhook, &first.ca_cert_pem, body())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        post_with_ca(injector.webhook, &second.ca_cert_pem, body())
            .await
            .is_err(),
        "second CA trusted before the swap"
    );

    write_secret_volume(&tls_dir, 2, &second);
    let started = Instant::now();
    loop {
        if let Ok((StatusCode::OK, _)) =
            post_with_ca(injector.webhook, &second.ca_cert_pem, body()).await
        {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "new certificate not served in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(post_with_ca(injector.webhook, &first.ca_cert_pem, body())
        .await
        .is_err());
    let (_, metrics) = http_get(injector.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("picket_injector_certificate_reloads_total 1"),
        "{metrics}"
    );
}

#[test]
fn bad_configuration_exits_64_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_picket-injector"))
        .args(["--tls-mode", "self-signed", "--namespace-lookup", "none"])
        .args([
            "--proxy-memory-request",
            "1Gi",
            "--proxy-memory-limit",
            "1Mi",
        ])
        .output()
        .expect("run picket-injector");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--proxy-memory-request"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_namespaces_get_a_warning_instead_of_a_broken_pod() {
    let api = picket_test_support::ApiServer::bind("127.0.0.1:0").expect("test API server");
    api.apply(
        "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {picket.io/inject: enabled}
---
apiVersion: v1
kind: Namespace
metadata:
  name: locked
  labels:
    picket.io/inject: enabled
    pod-security.kubernetes.io/enforce: baseline
",
    )
    .unwrap();
    let injector = Injector::looking_up_namespaces_in(&api).await;

    let pod = fixture("plain");
    let mut review = pod_review("uid-locked", &pod);
    review["request"]["namespace"] = "locked".into();
    let response = injector.review(&review).await;
    let inner = &response["response"];
    assert_eq!(inner["uid"], "uid-locked");
    assert_eq!(inner["allowed"], true);
    let warning = inner["warnings"][0].as_str().expect("a warning");
    assert!(
        warning.contains("baseline") && warning.contains("NET_ADMIN"),
        "{warning}"
    );
    let patched = apply(&pod, inner).expect("the status annotation");
    assert_eq!(
        patched["spec"], pod["spec"],
        "pod changed in a baseline namespace"
    );
    assert!(patched["metadata"]["annotations"]["picket.io/status"]
        .as_str()
        .unwrap()
        .contains("pod_security"));

    // A namespace without Pod Security labels is injected, without a warning.
    for uid in ["uid-shop-1", "uid-shop-2"] {
        let response = injector.review(&pod_review(uid, &pod)).await;
        assert!(response["response"].get("warnings").is_none(), "{response}");
        let patched = apply(&pod, &response["response"]).expect("a patch");
        assert_eq!(patched["spec"]["initContainers"][0]["name"], "picket-init");
    }
    // Namespaces are read from the API, once each within the cache's lifetime.
    let gets = |name: &str| {
        let path = format!("/api/v1/namespaces/{name}");
        api.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    };
    assert_eq!((gets("locked"), gets("shop")), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_opt_outs_count_only_in_namespaces_that_allow_them() {
    let api = picket_test_support::ApiServer::bind("127.0.0.1:0").expect("test API server");
    api.apply(
        "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {picket.io/inject: enabled}
---
apiVersion: v1
kind: Namespace
metadata:
  name: lab
  labels: {picket.io/inject: enabled}
  annotations: {picket.io/allow-pod-opt-out: \"true\"}
",
    )
    .unwrap();
    let injector = Injector::looking_up_namespaces_in(&api).await;
    let pod = fixture("opted-out-annotation");

    // Where the namespace does not allow it, the opt-out is ignored, with a warning.
    let response = injector.review(&pod_review("uid-shop", &pod)).await;
    let inner = &response["response"];
    assert_eq!(inner["allowed"], true);
    let patched = apply(&pod, inner).expect("a patch");
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "picket-init");
    let warning = inner["warnings"][0].as_str().expect("a warning");
    assert!(warning.contains("picket.io/allow-pod-opt-out"), "{warning}");

    // Where it does, the pod is left alone but for its status.
    let mut review = pod_review("uid-lab", &pod);
    review["request"]["namespace"] = "lab".into();
    let response = injector.review(&review).await;
    let patched = apply(&pod, &response["response"]).expect("the status annotation");
    assert_eq!(patched["spec"], pod["spec"], "opted-out pod changed");
    assert!(patched["metadata"]["annotations"]["picket.io/status"]
        .as_str()
        .unwrap()
        .contains("opted_out_by_annotation"));
}

/// Creates `pod` through the test API server's HTTP API, as a client does: the server runs
/// the ServiceAccount admission step on it, as a real one does after the webhooks (on
/// reinvocation) or before them. Returns the pod as stored.
async fn create_pod(api: &picket_test_support::ApiServer, pod: &Value) -> Pod {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&api.kubeconfig_yaml()).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, "shop");
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    pods.create(&kube::api::PostParams::default(), &pod)
        .await
        .expect("the API server stores the injected pod")
}

/// The names of the containers (of both lists) that mount a service-account token.
fn token_holders(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    let tokens: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            let sources = v.projected.as_ref().and_then(|p| p.sources.as_ref());
            sources
                .into_iter()
                .flatten()
                .any(|s| s.service_account_token.is_some())
        })
        .map(|v| v.name.as_str())
        .collect();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| tokens.contains(&m.name.as_str()))
        })
        .map(|c| c.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_pod_gives_the_token_to_the_proxy_but_not_to_the_root_init_container() {
    let api = picket_test_support::ApiServer::bind("127.0.0.1:0").expect("test API server");
    api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
        .unwrap();
    let injector = Injector::self_signed().await;
    // As the webhook sees pods: with the app's token already mounted (plain), without it
    // (generate-name: as when the plugin runs again after the webhooks), and opted out.
    let cases = [
        ("plain", &["picket-proxy", "app"][..]),
        ("generate-name", &["picket-proxy", "web"][..]),
        ("no-automount", &["picket-proxy"][..]),
    ];
    for (name, holders) in cases {
        let pod = fixture(name);
        let response = injector.review(&pod_review(name, &pod)).await;
        let patched = apply(&pod, &response["response"]).expect("a patch");
        let stored = create_pod(&api, &patched).await;
        assert_eq!(token_holders(&stored), holders, "{name}");

        // The pod as stored, reviewed again (as a reinvocation sees it): ours, unchanged.
        let stored = serde_json::to_value(&stored).unwrap();
        let again = injector.review(&pod_review(name, &stored)).await;
        assert_eq!(again["response"]["allowed"], true, "{name}: {again}");
        assert!(again["response"].get("patch").is_none(), "{name}: {again}");
    }
}

// === state source control ===

/// The value of the proxy's variable `name` in a patched pod.
fn proxy_env(pod: &Value, name: &str) -> Option<String> {
    let spec = &pod["spec"];
    let containers = ["initContainers", "containers"]
        .into_iter()
        .filter_map(|list| spec[list].as_array())
        .flatten();
    let proxy = containers
        .into_iter()
        .find(|c| c["name"] == "picket-proxy")?;
    let var = proxy["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?;
    var["value"].as_str().map(str::to_string)
}

/// For each container (both lists), the service-account token volumes it mounts.
fn token_volumes_by_container(pod: &Pod) -> Vec<(String, Vec<String>)> {
    let spec = pod.spec.as_ref().unwrap();
    let is_token = |name: &str| {
        spec.volumes.iter().flatten().any(|v| {
            v.name == name
                && v.projected
                    .as_ref()
                    .and_then(|p| p.sources.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
        })
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| {
            let tokens = c.volume_mounts.iter().flatten();
            let tokens = tokens.filter(|m| is_token(&m.name)).map(|m| m.name.clone());
            (c.name.clone(), tokens.collect())
        })
        .collect()
}

#[test]
fn control_mode_without_a_ca_exits_64_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_picket-injector"))
        .args(["--tls-mode", "self-signed", "--namespace-lookup", "none"])
        .args(["--state-source", "control"])
        .output()
        .expect("run picket-injector");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--control-ca-file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_control_mode_only_the_proxy_holds_the_control_token_once_stored() {
    let api = picket_test_support::ApiServer::bind("127.0.0.1:0").expect("test API server");
    api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let control_ca = picket_injector::certs::generate(
        &["picket-control.picket-system.svc".into()],
        std::time::SystemTime::now(),
    )
    .unwrap()
    .ca_cert_pem;
    let control_ca_file = dir.path().join("control-ca.crt");
    std::fs::write(&control_ca_file, &control_ca).unwrap();
    let ca_file = dir.path().join("ca.crt");
    let ca_out = ca_file.to_str().unwrap().to_string();
    let control_ca_path = control_ca_file.to_str().unwrap().to_string();
    let args = [
        "--tls-mode",
        "self-signed",
        "--ca-out",
        &ca_out,
        "--state-source",
        "control",
        "--control-ca-file",
        &control_ca_path,
    ];
    let injector = Injector::start(&args, dir, ca_file).await;

    for name in ["plain", "generate-name", "no-automount"] {
        let pod = fixture(name);
        let response = injector.review(&pod_review(name, &pod)).await;
        assert!(
            response["response"].get("warnings").is_none(),
            "{name}: {response}"
        );
        let patched = apply(&pod, &response["response"]).expect("a patch");
        let env = |var| proxy_env(&patched, var);
        assert_eq!(env("PICKET_SOURCE").as_deref(), Some("control"), "{name}");
        assert_eq!(
            env("PICKET_CONTROL_ADDR").as_deref(),
            Some("picket-control.picket-system.svc:8443")
        );
        assert_eq!(env("PICKET_CONTROL_CA"), Some(control_ca.clone()), "{name}");
        assert_eq!(
            env("PICKET_CONTROL_TOKEN_FILE").as_deref(),
            Some("/var/run/secrets/picket/token")
        );

        // As stored, after the ServiceAccount admission plugin: the proxy holds the control
        // token and no API token, the init container neither, the app its own token if any.
        let stored = create_pod(&api, &patched).await;
        for (container, tokens) in token_volumes_by_container(&stored) {
            match container.as_str() {
                "picket-proxy" => assert_eq!(tokens, ["picket-control-token"], "{name}"),
                "picket-init" => assert!(tokens.is_empty(), "{name}: {tokens:?}"),
                app => {
                    let expected = usize::from(name != "no-automount");
                    assert_eq!(tokens.len(), expected, "{name}: {app}: {tokens:?}");
                    assert!(tokens.iter().all(|t| t.starts_with("kube-api-access-")));
                }
            }
        }

        // Reviewed again as stored (a reinvocation): ours, unchanged.
        let stored = serde_json::to_value(&stored).unwrap();
        let again = injector.review(&pod_review(name, &stored)).await;
        assert_eq!(again["response"]["allowed"], true, "{name}: {again}");
        assert!(again["response"].get("patch").is_none(), "{name}: {again}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_secret_mode_sidecars_trust_the_injectors_ca_and_follow_its_rotation() {
    use picket_test_support::apiserver::Kind;
    let api = picket_test_support::ApiServer::bind("127.0.0.1:0").expect("test API server");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/install/resources");
    for name in ["00-namespace.yaml", "50-webhook.yaml"] {
        api.apply(&std::fs::read_to_string(manifests.join(name)).unwrap())
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let ca_file = dir.path().join("ca.crt");
    let ca_out = ca_file.to_str().unwrap().to_string();
    let args = [
        "--namespace-lookup",
        "none",
        "--tls-mode",
        "secret",
        "--namespace",
        "picket-system",
        "--tls-resync",
        "200ms",
        "--ca-out",
        &ca_out,
        "--state-source",
        "control",
    ];
    let envs = [("KUBECONFIG", kubeconfig.as_path())];
    let injector = Injector::start_with(&args, &envs, dir, ca_file).await;
    let secret_ca = || {
        let secret = api.get(Kind::Secret, Some("picket-system"), "picket-injector-tls")?;
        let ca = secret["data"]["ca.crt"].as_str()?;
        let ca = base64::engine::general_purpose::STANDARD.decode(ca).ok()?;
        String::from_utf8(ca).ok()
    };
    let pod = fixture("plain");
    let injected_ca = |response: &Value| {
        let patched = apply(&pod, &response["response"]).expect("a patch");
        proxy_env(&patched, "PICKET_CONTROL_CA")
    };

    let first = secret_ca().expect("the injector created its Secret");
    assert_eq!(injector.ca(), first, "--ca-out is the Secret's CA");
    let response = injector.review(&pod_review("uid-first", &pod)).await;
    assert_eq!(injected_ca(&response), Some(first.clone()));

    // Rotate: a resync recreates the Secret with a new CA, which new sidecars then trust.
    api.delete(Kind::Secret, Some("picket-system"), "picket-injector-tls")
        .unwrap();
    let started = Instant::now();
    let body = serde_json::to_vec(&pod_review("uid-rotated", &pod)).unwrap();
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "the rotated CA never injected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(second) = secret_ca().filter(|ca| *ca != first) else {
            continue;
        };
        // The new certificate is served once the resync loaded it.
        let Ok((StatusCode::OK, body)) =
            post_with_ca(injector.webhook, &second, body.clone()).await
        else {
            continue;
        };
        let response: Value = serde_json::from_slice(&body).unwrap();
        if injected_ca(&response) == Some(second) {
            break;
        }
    }
}
