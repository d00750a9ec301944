//! Wiring: certificates, listeners, the namespace lookup and the servers,
//! from the parsed command line. Called by `main.rs`; anyhow lives here.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::bootstrap::{self, KubeSecrets, KubeWebhooks};
use crate::certs::{self, CertBundle};
use crate::cli::{Cli, ControlCa, ControlTarget, LookupMode, TlsArgs, TlsMode};
use crate::config::{ControlPlane, InjectConfig, LiveConfig};
use crate::metrics::Metrics;
use crate::namespace::{KubeNamespaces, NamespaceLookup, NoNamespaces};
use crate::server::{self, Admin, Webhook};
use crate::tls::{self, Resolver};

/// The serving certificate, and the CA that issued it when it is the shared
/// Secret's (`--tls-mode secret`), current as the Secret changes.
struct Serving {
    resolver: Arc<Resolver>,
    injector_ca: Option<watch::Receiver<String>>,
}

/// Runs the injector until SIGTERM or SIGINT; `control` is the control plane
/// the sidecars get their state from (`None`: they watch the API server).
pub async fn run(
    cli: Cli,
    config: InjectConfig,
    control: Option<ControlTarget>,
) -> anyhow::Result<()> {
    // One crypto provider, ring, for our server and for the kube client.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let registry = Registry::new();
    let metrics = Metrics::register(&registry).context("registering metrics")?;
    let ready = Arc::new(AtomicBool::new(false));

    let admin_listener = TcpListener::bind(cli.admin_listen)
        .await
        .with_context(|| format!("binding the admin server to {}", cli.admin_listen))?;
    let bound = admin_listener.local_addr().unwrap_or(cli.admin_listen);
    tracing::info!(addr = %bound, "Admin server listening");
    tokio::spawn(server::serve_admin(
        admin_listener,
        Admin {
            registry: registry.clone(),
            ready: ready.clone(),
        },
    ));

    let needs_kube =
        cli.tls.tls_mode == TlsMode::Secret || cli.namespace_lookup == LookupMode::Kube;
    let client = if needs_kube {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?,
        )
    } else {
        None
    };

    let cert = certificate(&cli.tls, client.clone(), &metrics).await?;
    let tls_config = cert
        .resolver
        .server_config()
        .context("building the TLS configuration")?;
    let (config, follow) = with_control_plane(config, control, cert.injector_ca)?;
    let config = Arc::new(LiveConfig::new(config));
    if let Some(ca) = follow {
        tokio::spawn(follow_injector_ca(config.clone(), ca));
    }

    let namespaces: Arc<dyn NamespaceLookup> = match (&client, cli.namespace_lookup) {
        (Some(client), LookupMode::Kube) => {
            Arc::new(KubeNamespaces::new(client.clone(), cli.namespace_cache_ttl))
        }
        _ => Arc::new(NoNamespaces),
    };
    let current = config.current();
    tracing::info!(
        image = %current.proxy_image,
        mode = current.sidecar_mode.as_str(),
        state_source = current.state_source().as_str(),
        control_addr = current.control.as_ref().map(|c| c.addr.as_str()),
        tls = ?cli.tls.tls_mode,
        namespace_lookup = ?cli.namespace_lookup,
        "Injector configured"
    );
    let webhook = Arc::new(Webhook {
        config,
        namespaces,
        metrics,
        max_body_bytes: cli.max_body_bytes,
    });

    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding the webhook to {}", cli.listen))?;
    let bound = listener.local_addr().unwrap_or(cli.listen);
    tracing::info!(addr = %bound, "Webhook listening");
    let serving = tokio::spawn(server::serve_https(
        listener,
        TlsAcceptor::from(tls_config),
        webhook,
    ));
    ready.store(true, Ordering::SeqCst);

    shutdown_signal().await?;
    tracing::info!(delay = ?cli.shutdown_delay, "Shutting down: not ready, draining");
    ready.store(false, Ordering::SeqCst);
    tokio::time::sleep(cli.shutdown_delay).await;
    serving.abort();
    Ok(())
}

/// The configuration with the control plane filled in (its CA read from the
/// file, or the injector's own), and the injector's CA to follow when the
/// sidecars trust it.
fn with_control_plane(
    mut config: InjectConfig,
    target: Option<ControlTarget>,
    injector_ca: Option<watch::Receiver<String>>,
) -> anyhow::Result<(InjectConfig, Option<watch::Receiver<String>>)> {
    let Some(target) = target else {
        return Ok((config, None));
    };
    let (ca_pem, follow) = match target.ca {
        ControlCa::File(pem) => (pem, None),
        ControlCa::Injector => {
            let mut ca = injector_ca.context(
                "--state-source control: the injector's CA exists only in --tls-mode secret",
            )?;
            let pem = ca.borrow_and_update().clone();
            certs::check_ca_pem(&pem).map_err(|e| {
                anyhow!(
                    "--state-source control: {} of the certificate Secret: {e}",
                    bootstrap::CA_CERT_KEY
                )
            })?;
            (pem, Some(ca))
        }
    };
    config.control = Some(ControlPlane {
        addr: target.addr,
        ca_pem,
    });
    Ok((config, follow))
}

/// Points new sidecars at the injector's CA whenever the certificate Secret
/// changes it (a rotation); sidecars already running keep the CA they got.
async fn follow_injector_ca(config: Arc<LiveConfig>, mut ca: watch::Receiver<String>) {
    while ca.changed().await.is_ok() {
        let pem = ca.borrow_and_update().clone();
        if let Err(error) = certs::check_ca_pem(&pem) {
            tracing::warn!(
                %error,
                "The CA in the certificate Secret is unusable; new sidecars keep the previous one"
            );
            continue;
        }
        if config.set_control_ca(&pem) {
            tracing::info!(
                "The injector's CA changed: new sidecars trust it for the control plane"
            );
        }
    }
}

/// Loads or makes the serving certificate and starts whatever keeps it current.
async fn certificate(
    tls: &TlsArgs,
    client: Option<kube::Client>,
    metrics: &Metrics,
) -> anyhow::Result<Serving> {
    let names = certs::service_names(&tls.service, &tls.namespace, &tls.extra_sans);
    let serving = |resolver| Serving {
        resolver,
        injector_ca: None,
    };
    match tls.tls_mode {
        TlsMode::SelfSigned => {
            let bundle = certs::generate(&names, SystemTime::now())?;
            write_ca(tls.ca_out.as_deref(), &bundle)?;
            Ok(serving(Resolver::new(&bundle.cert_pem, &bundle.key_pem)?))
        }
        TlsMode::Files => {
            let (cert, key) = tls::read_pair(&tls.tls_cert_file, &tls.tls_key_file)?;
            let resolver = Resolver::new(&cert, &key)
                .with_context(|| format!("loading {}", tls.tls_cert_file.display()))?;
            let reloads = metrics.cert_reloads.clone();
            tokio::spawn(tls::watch_files(
                resolver.clone(),
                tls.tls_cert_file.clone(),
                tls.tls_key_file.clone(),
                tls.tls_reload_interval,
                move || reloads.inc(),
            ));
            Ok(serving(resolver))
        }
        TlsMode::Secret => {
            let client = client.context("secret mode needs the Kubernetes API")?;
            if !tls.mesh_ca_secret.is_empty() {
                let mesh = KubeSecrets::new(client.clone(), &tls.namespace, &tls.mesh_ca_secret);
                tokio::spawn(ensure_mesh_ca(mesh));
            }
            let secrets = KubeSecrets::new(client.clone(), &tls.namespace, &tls.tls_secret);
            let webhooks = KubeWebhooks::new(client, &tls.webhook_config);
            let generate = move || certs::generate(&names, SystemTime::now());
            // Not ready until this succeeds: retry, the API may be starting.
            let mut backoff = Duration::from_millis(500);
            let bundle = loop {
                match bootstrap::sync(&secrets, &webhooks, &generate).await {
                    Ok((bundle, origin, _)) => {
                        tracing::info!(secret = %tls.tls_secret, ?origin, "Certificate ready");
                        break bundle;
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?backoff, "Certificate bootstrap failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            };
            write_ca(tls.ca_out.as_deref(), &bundle)?;
            let resolver = Resolver::new(&bundle.cert_pem, &bundle.key_pem)
                .with_context(|| format!("loading the certificate of secret {}", tls.tls_secret))?;
            let (ca, injector_ca) = watch::channel(bundle.ca_cert_pem);
            tokio::spawn(resync(
                resolver.clone(),
                ca,
                secrets,
                webhooks,
                generate,
                tls.tls_resync,
                metrics.clone(),
            ));
            Ok(Serving {
                resolver,
                injector_ca: Some(injector_ca),
            })
        }
    }
}

/// Creates the mesh CA's Secret for picket-control if it is absent (the
/// control plane waits for it), retrying until it exists.
async fn ensure_mesh_ca(secrets: KubeSecrets) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match bootstrap::ensure_secret(&secrets, || certs::generate_mesh_ca(SystemTime::now()))
            .await
        {
            Ok((_, origin)) => {
                tracing::info!(?origin, "Mesh CA Secret ready");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "Mesh CA Secret bootstrap failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Keeps serving what the Secret holds and keeps the caBundle current: a
/// deleted Secret is recreated (that is how to rotate), a reset caBundle is
/// patched back. The CA of a bundle that loads is published on `ca`.
async fn resync(
    resolver: Arc<Resolver>,
    ca: watch::Sender<String>,
    secrets: KubeSecrets,
    webhooks: KubeWebhooks,
    generate: impl Fn() -> Result<CertBundle, certs::CertError>,
    every: Duration,
    metrics: Metrics,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let bundle = match bootstrap::sync(&secrets, &webhooks, &generate).await {
            Ok((bundle, _, _)) => bundle,
            Err(error) => {
                tracing::warn!(%error, "Certificate resync failed");
                continue;
            }
        };
        match resolver.update(&bundle.cert_pem, &bundle.key_pem) {
            Ok(true) => {
                metrics.cert_reloads.inc();
                tracing::info!("Certificate changed in the Secret; serving the new one");
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "Certificate in the Secret does not load");
                continue;
            }
        }
        ca.send_if_modified(|current| {
            let changed = *current != bundle.ca_cert_pem;
            if changed {
                current.clone_from(&bundle.ca_cert_pem);
            }
            changed
        });
    }
}

fn write_ca(path: Option<&Path>, bundle: &CertBundle) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bundle.ca_cert_pem)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing the CA certificate to {}", path.display()))
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
    }
    Ok(())
}
