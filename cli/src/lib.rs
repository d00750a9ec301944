//! The `picket` command line: `reach` and `explain` over manifests or the
//! live cluster, `status` and `tap` of the live cluster, and `demo` (with
//! the `demo` feature).
//!
//! `reach` computes probes (pure, over an index) and renders them; `render`
//! turns explanations into text; only `run` touches the file system, through
//! `picket_state::load_path`.

#[cfg(feature = "demo")]
pub mod demo;
pub mod live;
pub mod reach;
pub mod render;
pub mod status;
pub mod tap;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use picket_policy::{NodeAddrs, ObjectKey, PolicyIndex, Protocol};
use picket_state::{load_path, ClusterObjects};

/// Picket: who can reach whom, and why, under Kubernetes NetworkPolicy.
#[derive(Debug, Parser)]
#[command(name = "picket", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate every ordered pair of pods and print who can reach whom.
    Reach(ReachArgs),
    /// Print the whole reasoning for one connection.
    Explain(ExplainArgs),
    /// Check the live cluster: the control plane, the sidecars, and the
    /// pods NetworkPolicy concerns that nothing enforces (exits 1 if any).
    Status(StatusArgs),
    /// Stream one sidecar's live decisions (through a port-forward to its
    /// local admin port).
    Tap(TapArgs),
    /// Run the bookstore example as real pods with sidecars (root, Linux, iptables).
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
}

/// Where `reach` and `explain` read the cluster: manifests, or the live
/// cluster (exactly one).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ClusterSource {
    /// A manifest file or a directory of them (Namespaces, Pods, workloads, NetworkPolicies).
    #[arg(long, value_name = "PATH")]
    pub cluster: Option<PathBuf>,
    /// The live cluster, through this kubeconfig.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The live cluster, as kubectl finds it (in-cluster, `KUBECONFIG`, `~/.kube/config`).
    #[arg(long)]
    pub live: bool,
}

/// Arguments of `picket reach`.
#[derive(Debug, clap::Args)]
pub struct ReachArgs {
    /// The cluster.
    #[command(flatten)]
    pub source: ClusterSource,
    /// A TCP port to probe (repeatable); default: every port each destination declares.
    #[arg(long = "port", value_name = "N")]
    pub ports: Vec<u16>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Add the deciding policy and rule to each row of the table.
    #[arg(long)]
    pub explain: bool,
}

/// Arguments of `picket explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The cluster.
    #[command(flatten)]
    pub source: ClusterSource,
    /// The source pod, as NAMESPACE/POD.
    #[arg(long, value_name = "NS/POD")]
    pub from: String,
    /// The destination pod, as NAMESPACE/POD.
    #[arg(long, value_name = "NS/POD")]
    pub to: String,
    /// The destination TCP port.
    #[arg(long, value_name = "N")]
    pub port: u16,
}

/// Arguments of `picket status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The kubeconfig; default: in-cluster, else `KUBECONFIG` or
    /// `~/.kube/config`, as kubectl.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Where picket-control runs.
    #[arg(long, value_name = "NAMESPACE", default_value = "picket-system")]
    pub control_namespace: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Arguments of `picket tap`.
#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The pod whose sidecar to tap, as NAMESPACE/POD.
    #[arg(value_name = "NS/POD")]
    pub pod: String,
    /// The kubeconfig; default: in-cluster, else `KUBECONFIG` or
    /// `~/.kube/config`, as kubectl.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Connect to this address instead of port-forwarding (after
    /// `kubectl port-forward POD 15000`, or from inside the pod).
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<std::net::SocketAddr>,
    /// The sidecar's local admin port.
    #[arg(long, value_name = "PORT", default_value_t = tap::LOCAL_ADMIN_PORT)]
    pub admin_port: u16,
    /// Only refusals, teardowns and audited would-denies.
    #[arg(long)]
    pub denied: bool,
    /// Only this peer: NAMESPACE/POD, a namespace, or an IP address.
    #[arg(long, value_name = "PEER")]
    pub peer: Option<String>,
    /// Only this destination port.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Output: text, or JSON lines as the sidecar sends them.
    #[arg(long, value_enum, default_value_t = TapFormat::Text)]
    pub format: TapFormat,
}

/// Output formats of `picket tap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TapFormat {
    /// A line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `picket demo`.
#[cfg(feature = "demo")]
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The `picket-proxy` binary the pods run (default: the one beside this binary).
    #[arg(long, env = "PICKET_PROXY_BINARY", value_name = "PATH")]
    pub proxy: Option<PathBuf>,
}

/// Output formats of `picket reach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A truth table per port, for people.
    Table,
    /// One JSON array of probes, for programs.
    Json,
}

/// What a command prints on stdout, and whether it found something wrong
/// (the exit code then says so).
#[derive(Debug)]
pub struct Output {
    /// The text.
    pub text: String,
    /// Something is wrong (`picket status`: a pod is unenforced).
    pub failed: bool,
}

impl From<String> for Output {
    fn from(text: String) -> Self {
        Self {
            text,
            failed: false,
        }
    }
}

/// Runs the command line; returns what to print on stdout.
pub fn run(cli: Cli) -> anyhow::Result<Output> {
    match cli.command {
        Command::Tap(args) => {
            let (namespace, name) = args
                .pod
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .with_context(|| format!("{:?}: expected NAMESPACE/POD", args.pod))?;
            let request = tap::TapRequest {
                namespace: namespace.to_string(),
                name: name.to_string(),
                kubeconfig: args.kubeconfig,
                address: args.address,
                admin_port: args.admin_port,
                query: tap::query(args.denied, args.peer.as_deref(), args.port),
                json: args.format == TapFormat::Json,
                count: args.count,
            };
            let mut stdout = std::io::stdout().lock();
            live::block_on(tap::run(&request, &mut stdout))?;
            Ok(String::new().into())
        }
        Command::Status(args) => {
            let report = status::status(args.kubeconfig.as_ref(), &args.control_namespace)?;
            let text = match args.format {
                Format::Table => report.render(),
                Format::Json => {
                    let mut text = serde_json::to_string_pretty(&report)?;
                    text.push('\n');
                    text
                }
            };
            Ok(Output {
                text,
                failed: report.failed(),
            })
        }
        Command::Reach(args) => {
            let index = args.source.index()?;
            let probes = reach::probes(&index, &args.ports);
            Ok(match args.format {
                Format::Json => reach::render_json(&probes)?,
                Format::Table => reach::render_table(&index, &probes, args.explain),
            }
            .into())
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            let mut stdout = std::io::stdout();
            demo::run(&mut stdout, args.proxy.as_deref())?;
            Ok(String::new().into())
        }
        Command::Explain(args) => {
            let index = args.source.index()?;
            let from = pod_key(&index, &args.from, "--from")?;
            let to = pod_key(&index, &args.to, "--to")?;
            let node = index
                .pod(&to)
                .map(|p| NodeAddrs::from_ips(p.host_ips.iter().copied()))
                .unwrap_or_default();
            let explanation =
                index.explain_between_pods(&from, &to, args.port, Protocol::Tcp, &node);
            let mut text = render::explanation(&explanation);
            if let Some(audited) =
                index.explain_audit_between_pods(&from, &to, args.port, Protocol::Tcp, &node)
            {
                text.push_str(&render::audit(&audited, &explanation.decision));
            }
            text.push_str(if reach::enforced(&index, &from, &to) {
                "  enforced: yes (an end runs the Picket sidecar)\n"
            } else {
                "  enforced: NO: neither end runs the Picket sidecar (not injected), so nothing enforces this verdict\n"
            });
            Ok(text.into())
        }
    }
}

impl ClusterSource {
    /// The cluster's index: from manifests, or listed from the live cluster.
    fn index(&self) -> anyhow::Result<PolicyIndex> {
        let index = match (&self.cluster, &self.kubeconfig) {
            (Some(path), _) => load(path)?.index(),
            (None, kubeconfig) => live::block_on(async {
                let client = live::client(kubeconfig.as_ref()).await?;
                live::index(client).await
            })?,
        };
        for (first, second) in index.cluster_policies().shared_priorities() {
            eprintln!(
                "warning: ClusterNetworkPolicies {} and {} share {} tier priority {}: the API leaves their order to the implementation; picket consults {} first (by name)",
                first.name, second.name, first.tier, first.priority, first.name
            );
        }
        Ok(index)
    }
}

/// Loads manifests, printing warnings to stderr; a broken rule is an error here.
fn load(path: &Path) -> anyhow::Result<ClusterObjects> {
    let objects = load_path(path).map_err(anyhow::Error::new)?;
    for warning in &objects.warnings {
        eprintln!("warning: {warning}");
    }
    if !objects.errors.is_empty() {
        let lines: Vec<String> = objects.errors.iter().map(|e| e.to_string()).collect();
        bail!("invalid manifests:\n  {}", lines.join("\n  "));
    }
    Ok(objects)
}

fn pod_key(index: &PolicyIndex, s: &str, flag: &str) -> anyhow::Result<ObjectKey> {
    let key =
        ObjectKey::parse(s).with_context(|| format!("{flag} {s:?}: expected NAMESPACE/POD"))?;
    if index.pod(&key).is_none() {
        bail!("{flag} {s}: no such pod or workload in the manifests");
    }
    Ok(key)
}
