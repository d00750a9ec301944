//! Wiring of `picket-proxy run` and `picket-proxy init`: configuration in,
//! components started, signals handled. anyhow is allowed here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use picket_common::logging::{self, LogHandle};
use picket_policy::{Direction, MtlsMode, NodeAddrs, PodKey};
use picket_state::control::{ControlConfig, ControlMetrics, ControlSource};
use picket_state::dir::DirSource;
use picket_state::kube::KubeSource;
use picket_state::{Source, StateWriter};

use crate::admin::{Admin, Readiness};
use crate::config::{BackendArg, InitArgs, Ipv6Arg, OutboundArg, RunArgs, SourceArg};
use crate::enforce::registry::Registry;
use crate::enforce::{Enforcer, Waits};
use crate::iptables::{
    self, Backend, BackendChoice, CommandRunner, Family, Ipv6Rules, OutboundPlan, Plan, Routing,
};
use crate::mesh::certify::IdentityMetrics;
use crate::mesh::{Credentials, Mesh, MeshMetrics};
use crate::metrics::ProxyMetrics;
use crate::net::conn::{Limits, Proxy};
use crate::net::listener;
use crate::net::relay::RelayCounters;
use crate::net::Interception;
use crate::reserved_ports;
use crate::tap::{Tap, TapMetrics};

/// The `picket-proxy` command line: parse, log, run, exit code.
pub fn main_proxy() -> std::process::ExitCode {
    use clap::Parser;
    abort_on_panic();
    let cli = crate::config::Cli::parse();
    let result = match cli.command {
        crate::config::Command::Init(args) => {
            logging::init(false);
            init(args)
        }
        crate::config::Command::Run(args) => {
            let log = logging::init(args.log_format == crate::config::LogFormat::Json);
            // Before the runtime starts a thread: capabilities are per thread.
            crate::privileges::hold_only_what(args.interception.interception())
                .map_err(anyhow::Error::from)
                .and_then(|()| block_on_run(*args, log))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Makes any panic, on any thread, end the process. Unwinding would end
/// only the task that panicked: a sidecar whose re-check or state task died
/// would keep serving on a state it no longer follows, its live connections
/// never re-checked again (fail open). Aborted, the pod's redirect finds no
/// listener and every connection is refused until the kubelet restarts the
/// proxy (fail closed). The message is printed first, as usual.
fn abort_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        std::process::abort();
    }));
}

/// Builds the runtime (`--workers` threads; one means a single-threaded
/// runtime on the calling thread) and runs the sidecar on it.
pub fn block_on_run(args: RunArgs, log: Option<LogHandle>) -> anyhow::Result<()> {
    let runtime = if args.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()
    }
    .context("cannot start the runtime")?;
    runtime.block_on(run(args, log))
}

/// Runs the sidecar until SIGTERM (then drains) or SIGINT.
pub async fn run(args: RunArgs, log: Option<LogHandle>) -> anyhow::Result<()> {
    let pod = PodKey::new(&args.pod_namespace, &args.pod_name);
    let own_node = node_addrs(&args);
    let mut node = own_node.clone();
    for net in &args.node_cidrs {
        node.push(*net);
    }
    let source = match (args.source, &args.cluster_dir) {
        (Some(SourceArg::Files), None) => bail!("--source files needs --cluster-dir"),
        (Some(source), _) => source,
        (None, Some(_)) => SourceArg::Files,
        (None, None) => SourceArg::Kube,
    };
    let interception = args.interception.interception();
    tracing::info!(%pod, node = ?node, source = ?source, ?interception, "Starting picket-proxy");
    raise_open_file_limit();
    let own_ports = args.ports.own();
    match reserved_ports::missing(Path::new(reserved_ports::SYSCTL), &own_ports) {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => tracing::warn!(
            ports = ?missing,
            "The proxy's ports are not in net.ipv4.ip_local_reserved_ports: the pod's own outgoing connections may take them and keep the proxy from binding them after a restart"
        ),
        Err(error) => tracing::debug!(%error, "Cannot read net.ipv4.ip_local_reserved_ports"),
    }

    let (mut writer, snapshots) = StateWriter::new();
    let registry = Registry::new();
    let readiness = Readiness::new();
    let metrics = Arc::new(ProxyMetrics::new(args.peer_label_limit));
    let bytes = RelayCounters {
        client_to_server: metrics.bytes.with_label_values(&["in"]),
        server_to_client: metrics.bytes.with_label_values(&["out"]),
    };
    let tap = Tap::with_metrics(TapMetrics {
        readers: Some(metrics.tap_readers.clone()),
        dropped: Some(metrics.tap_dropped.clone()),
    });
    // The control-plane source is made first: the enforcer asks it about
    // addresses the view does not know.
    let (control, resolver) = match source {
        SourceArg::Control => {
            let stream_metrics = ControlMetrics::new(metrics.registry());
            let (control, resolver) = ControlSource::new(control_config(&args)?, stream_metrics);
            (Some(control), Some(resolver))
        }
        _ => (None, None),
    };
    let enforcer = Arc::new(Enforcer {
        pod,
        node,
        own_node,
        resolver,
        registry: registry.clone(),
        snapshots,
        waits: Waits {
            state: args.state_wait,
            unknown_ip: args.unknown_ip_wait,
        },
        pod_ips: args
            .pod_ips
            .iter()
            .chain(args.pod_ip.iter())
            .copied()
            .collect(),
        pod_cidrs: args.pod_cidrs.clone(),
        metrics: metrics.clone(),
        next_endpoint: Default::default(),
        outbound: args.outbound_capture == OutboundArg::On,
        tap: tap.clone(),
        mtls: args.mtls.mode(),
        answers: Default::default(),
    });
    // Registered with mTLS off too: the dashboards' expiry panel reads 0.
    let identity_metrics = IdentityMetrics::new(metrics.registry());
    let mesh = start_mesh(&args, metrics.registry(), identity_metrics, &readiness)?;
    let limits = Limits {
        connect_timeout: args.connect_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
    };
    let inbound = Arc::new(Proxy {
        direction: Direction::Ingress,
        interception,
        enforcer: enforcer.clone(),
        own_ports: own_ports.to_vec(),
        limits: limits.clone(),
        active: Default::default(),
        metrics: metrics.clone(),
        bytes,
        mesh: mesh.clone(),
    });
    // Captured only when init wrote the outbound chain; bound in any case
    // (loopback only), so the port is the proxy's whatever init did.
    let outbound = Arc::new(Proxy {
        direction: Direction::Egress,
        interception: Interception::Redirect,
        enforcer: enforcer.clone(),
        own_ports: own_ports.to_vec(),
        limits,
        active: Default::default(),
        metrics: metrics.clone(),
        bytes: RelayCounters {
            client_to_server: metrics.outbound.bytes.with_label_values(&["out"]),
            server_to_client: metrics.outbound.bytes.with_label_values(&["in"]),
        },
        mesh,
    });

    let listeners = listener::bind_inbound(args.ports.inbound_port, interception)
        .with_context(|| format!("cannot bind the inbound port {}", args.ports.inbound_port))?;
    for l in listeners {
        tokio::spawn(listener::serve(l, inbound.clone()));
    }
    let listeners = listener::bind_outbound(args.ports.outbound_port).with_context(|| {
        format!(
            "cannot bind the outbound port {} on loopback",
            args.ports.outbound_port
        )
    })?;
    for l in listeners {
        tokio::spawn(listener::serve(l, outbound.clone()));
    }
    readiness.set_listener_bound();

    let admin_ip = args.pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let public =
        listener::bind(SocketAddr::new(admin_ip, args.ports.admin_port)).with_context(|| {
            format!(
                "cannot bind the admin port {admin_ip}:{}",
                args.ports.admin_port
            )
        })?;
    tokio::spawn(
        Admin {
            readiness: readiness.clone(),
            metrics: Some(metrics.clone()),
            registry: None,
            tap: None,
            log: None,
            node: enforcer.node.clone(),
        }
        .serve(public),
    );
    let local = listener::bind(SocketAddr::new(
        Ipv4Addr::LOCALHOST.into(),
        args.ports.local_admin_port,
    ))
    .with_context(|| {
        format!(
            "cannot bind the local admin port {}",
            args.ports.local_admin_port
        )
    })?;
    tokio::spawn(
        Admin {
            readiness: readiness.clone(),
            metrics: Some(metrics.clone()),
            registry: Some(registry.clone()),
            tap: Some(tap),
            log,
            node: NodeAddrs::default(),
        }
        .serve(local),
    );

    match (control, &args.cluster_dir) {
        (Some(control), _) => {
            // The view's outbound parts carry Services: none is published
            // before them, or a ClusterIP could pass for a plain address.
            if args.outbound_capture == OutboundArg::On {
                writer.require_services();
            }
            spawn_source(control, writer)
        }
        (None, Some(dir)) if source == SourceArg::Files => {
            spawn_source(DirSource::new(dir).with_resync(args.resync), writer);
        }
        (None, _) => {
            let client = picket_state::kube::client(args.kubeconfig.as_ref()).await?;
            spawn_source(
                match args.outbound_capture {
                    OutboundArg::On => {
                        KubeSource::new(client, metrics.watch_restarts.clone()).with_services()
                    }
                    OutboundArg::Off => KubeSource::new(client, metrics.watch_restarts.clone()),
                },
                writer,
            );
        }
    }
    tokio::spawn(enforcer.recheck_on_change(readiness.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {
            tracing::info!(drain = ?args.drain, "SIGTERM: draining, still serving");
            tokio::time::sleep(args.drain).await;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(open = registry.len(), "Shutting down");
    Ok(())
}

/// Raises the soft open-file limit to the hard one: every connection costs
/// two descriptors, and runtimes often start containers at a soft 1024.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = ?limit.current, to = ?limit.maximum, "Raised the open-file limit")
        }
        Err(error) => tracing::warn!(%error, "Cannot raise the open-file limit"),
    }
}

/// Where the control plane is and how to trust it, from the flags.
fn control_config(args: &RunArgs) -> anyhow::Result<ControlConfig> {
    let ca_pem = match (&args.control_ca, &args.control_ca_file) {
        (Some(pem), _) => pem.clone().into_bytes(),
        (None, Some(file)) => std::fs::read(file)
            .with_context(|| format!("--control-ca-file: cannot read {}", file.display()))?,
        (None, None) => {
            bail!("--source control needs --control-ca or --control-ca-file (PICKET_CONTROL_CA)")
        }
    };
    let server_name = match &args.control_server_name {
        Some(name) => name.clone(),
        None => args
            .control_addr
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']).to_string())
            .with_context(|| {
                format!("--control-addr {:?}: expected host:port", args.control_addr)
            })?,
    };
    Ok(ControlConfig {
        addr: args.control_addr.clone(),
        server_name,
        ca_pem,
        token_file: args.control_token_file.clone(),
        max_backoff: args.control_max_backoff,
        outbound: args.outbound_capture == OutboundArg::On,
    })
}

/// Runs a state source on the runtime.
/// mTLS: with a mode other than off, the identity manager (certified by
/// the control plane, which `--source control` configures) and the TLS
/// settings; readiness then waits for the first certificate.
fn start_mesh(
    args: &RunArgs,
    registry: &prometheus::Registry,
    metrics: IdentityMetrics,
    readiness: &Arc<Readiness>,
) -> anyhow::Result<Option<Arc<Mesh>>> {
    let mode = args.mtls.mode();
    if mode == MtlsMode::Off {
        return Ok(None);
    }
    if args.source != Some(SourceArg::Control) {
        bail!(
            "--mtls {} needs --source control: the control plane is the mesh's CA",
            mode.as_str()
        );
    }
    let config = control_config(args)?;
    let credentials = Credentials::new();
    readiness.require_certificate(credentials.clone());
    tokio::spawn(crate::mesh::certify::run(
        config,
        credentials.clone(),
        metrics,
    ));
    tracing::info!(mode = mode.as_str(), skip_detect_ports = ?args.skip_detect_ports, "mTLS between sidecars on");
    Ok(Some(Arc::new(Mesh::new(
        mode,
        credentials,
        args.skip_detect_ports.clone(),
        MeshMetrics::new(registry),
    ))))
}

fn spawn_source(source: impl Source, writer: StateWriter) {
    tracing::info!(source = source.name(), "Starting the state source");
    tokio::spawn(source.run(writer));
}

/// This pod's node's addresses: the hostIPs, and the gateways init recorded.
fn node_addrs(args: &RunArgs) -> NodeAddrs {
    let mut node = NodeAddrs::default();
    for ip in args.host_ips.iter().chain(args.host_ip.iter()) {
        node.push((*ip).into());
    }
    match crate::node::read_file(&args.node_file) {
        Ok(gateways) => {
            for ip in gateways {
                node.push(ip.into());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(file = %args.node_file.display(), "No node file from init");
        }
        Err(e) => {
            tracing::warn!(file = %args.node_file.display(), error = %e, "Cannot read the node file")
        }
    }
    node
}

/// What init captures: inbound always; outbound when asked, leaving alone
/// the proxy's UID, the node's addresses (its hostIPs and the pod's
/// gateways) and the excluded ports and networks.
fn init_plan(args: &InitArgs, gateways: &[IpAddr]) -> Plan {
    let outbound = (args.outbound_capture == OutboundArg::On).then(|| OutboundPlan {
        port: args.ports.outbound_port,
        proxy_uid: args.proxy_uid,
        node_addrs: args
            .host_ips
            .iter()
            .chain(args.host_ip.iter())
            .chain(gateways)
            .copied()
            .collect(),
        exclude_ports: args.exclude_outbound_ports.clone(),
        exclude_cidrs: args.exclude_outbound_cidrs.clone(),
    });
    Plan {
        inbound_port: args.ports.inbound_port,
        admin_port: args.ports.admin_port,
        exclude_inbound_ports: args.exclude_inbound_ports.clone(),
        outbound,
        interception: args.interception.interception(),
    }
}

/// Writes tproxy's policy routing for a family whose rules were written, if any.
fn apply_routing(
    routing: Option<&Routing>,
    family: Family,
    runner: &CommandRunner,
) -> Result<(), iptables::ApplyError> {
    if let Some(routing) = routing {
        iptables::routing::apply(routing, family, runner)?;
        println!(
            "{} policy routing: fwmark {:#x} lookup {} (local)",
            family.as_str(),
            routing.mark,
            routing.table
        );
    }
    Ok(())
}

/// Writes the pod's iptables rules and records its gateways.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let gateways = crate::node::read_gateways();
    let plan = init_plan(&args, &gateways);
    let ipv6 = match args.ipv6 {
        Ipv6Arg::On => Ipv6Rules::Required(None),
        Ipv6Arg::Off => Ipv6Rules::Off,
        Ipv6Arg::Auto => match std::fs::read_to_string("/proc/net/if_inet6") {
            // No IPv6 in this kernel: nothing can arrive over it.
            Err(_) => Ipv6Rules::Off,
            Ok(text) => match crate::node::ipv6_address(&text) {
                Some(address) => Ipv6Rules::Required(Some(address)),
                None => Ipv6Rules::IfPossible,
            },
        },
    };
    let own_ports = args.ports.own();
    // Tproxy's policy routing, written beside each family's rules.
    let routing = match plan.interception {
        Interception::Redirect => None,
        Interception::Tproxy { mark } => Some(Routing {
            mark,
            table: args.tproxy_table,
        }),
    };
    if args.dry_run {
        for family in [Family::V4, Family::V6] {
            println!(
                "# {} (iptables-restore --noflush; the jump is omitted on a re-run)",
                family.as_str()
            );
            print!(
                "{}",
                iptables::rules::render(&plan, family, iptables::Jumps::default())
            );
        }
        if let Some(routing) = &routing {
            for family in [Family::V4, Family::V6] {
                println!("# ip {}", routing.rule_args(family).join(" "));
                println!("# ip {}", routing.route_args(family).join(" "));
            }
        }
        for gw in &gateways {
            println!("# gateway {gw}");
        }
        return Ok(());
    }
    if !iptables::apply::has_net_admin() {
        bail!(iptables::ApplyError::NoNetAdmin);
    }
    let choice = match args.backend {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::Nft => BackendChoice::Force(Backend::Nft),
        BackendArg::Legacy => BackendChoice::Force(Backend::Legacy),
    };
    let runner = CommandRunner;
    let applied = iptables::apply(&plan, Family::V4, choice, &runner)?;
    println!(
        "ipv4 rules applied ({}, {}, {:?})",
        applied.backend.as_str(),
        if applied.rerun { "re-run" } else { "first run" },
        plan.interception
    );
    apply_routing(routing.as_ref(), Family::V4, &runner)?;
    match iptables::apply_ipv6(&plan, ipv6, choice, &runner)? {
        Some(applied) => {
            println!("ipv6 rules applied ({})", applied.backend.as_str());
            apply_routing(routing.as_ref(), Family::V6, &runner)?;
        }
        None => println!("ipv6 rules skipped (no IPv6 address but loopback, or --ipv6 off)"),
    }
    // Where /proc/sys is writable (the lab, privileged runtimes); in a pod
    // the injector sets it through securityContext.sysctls.
    match reserved_ports::reserve(Path::new(reserved_ports::SYSCTL), &own_ports) {
        Ok(list) => println!("reserved ports: {list}"),
        Err(e) => println!("reserved ports not set here ({e}): the pod's securityContext.sysctls must set net.ipv4.ip_local_reserved_ports"),
    }
    crate::node::write_file(&args.node_file, &gateways)
        .with_context(|| format!("cannot write {}", args.node_file.display()))?;
    println!(
        "node addresses recorded in {}: {gateways:?}",
        args.node_file.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    /// Set in the child run of the test below.
    const CHILD: &str = "PICKET_TEST_PANIC_CHILD";

    #[test]
    fn a_panic_on_any_thread_aborts_the_proxy() {
        if std::env::var_os(CHILD).is_some() {
            super::abort_on_panic();
            // A task's panic, as a runtime thread would see it.
            let _ = std::thread::spawn(|| panic!("a task panicked")).join();
            // Reached only if the panic did not end the process.
            std::process::exit(0);
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "app::tests::a_panic_on_any_thread_aborts_the_proxy",
            ])
            .env(CHILD, "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(6), "SIGABRT, not {status:?}");
    }
}
