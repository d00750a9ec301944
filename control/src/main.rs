//! `picket-control`: the control plane. Thin: flags, logging, then `app::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use picket_control::app::{run, Config, CoverageConfig, IdentityConfig};
use picket_control::service::StreamConfig;

/// Watches the cluster once and streams each sidecar its pod's view.
#[derive(Debug, Parser)]
#[command(name = "picket-control", version)]
struct Cli {
    /// Where sidecars connect (gRPC over TLS).
    #[arg(long, env = "PICKET_CONTROL_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Where /ready, /live and /metrics are served.
    #[arg(long, env = "PICKET_CONTROL_ADMIN", default_value = "0.0.0.0:9991")]
    admin: SocketAddr,
    /// The kubeconfig; default: in-cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The serving certificate chain.
    #[arg(
        long,
        env = "PICKET_CONTROL_TLS_CERT_FILE",
        default_value = "/var/run/picket-control/tls/tls.crt"
    )]
    tls_cert_file: PathBuf,
    /// The serving certificate's key.
    #[arg(
        long,
        env = "PICKET_CONTROL_TLS_KEY_FILE",
        default_value = "/var/run/picket-control/tls/tls.key"
    )]
    tls_key_file: PathBuf,
    /// How long a sidecar's stream gathers commits into one message, beyond
    /// the cluster watch's own batches of at most 10 ms (0: none).
    #[arg(long, default_value = "0s", value_parser = picket_common::duration::parse)]
    batch: Duration,
    /// How long a sidecar may not read before it is disconnected.
    #[arg(long, default_value = "60s", value_parser = picket_common::duration::parse)]
    stall: Duration,
    /// How long a stream lives (±20%) before the sidecar reconnects.
    #[arg(long, default_value = "30m", value_parser = picket_common::duration::parse)]
    stream_lifetime: Duration,
    /// TokenReviews a second.
    #[arg(long, default_value_t = 100.0)]
    token_review_rate: f64,
    /// TokenReviews at once.
    #[arg(long, default_value_t = 200.0)]
    token_review_burst: f64,
    /// How often coverage is checked for Events on NetworkPolicies that
    /// select pods without a ready sidecar.
    #[arg(long, default_value = "30s", value_parser = picket_common::duration::parse)]
    coverage_interval: Duration,
    /// How long an unchanged coverage warning waits before it is recorded again.
    #[arg(long, default_value = "10m", value_parser = picket_common::duration::parse)]
    coverage_repeat: Duration,
    /// The mesh CA's issuer certificate (PEM): with it, the control plane
    /// signs sidecars' certificates (mTLS); without, mTLS is off.
    #[arg(long, env = "PICKET_CONTROL_IDENTITY_ISSUER_CERT_FILE")]
    identity_issuer_cert_file: Option<PathBuf>,
    /// The issuer's key (PEM).
    #[arg(
        long,
        env = "PICKET_CONTROL_IDENTITY_ISSUER_KEY_FILE",
        requires = "identity_issuer_cert_file"
    )]
    identity_issuer_key_file: Option<PathBuf>,
    /// The trust anchors sidecars verify peers against (PEM; two roots
    /// during a rotation); default: the issuer certificate file.
    #[arg(
        long,
        env = "PICKET_CONTROL_IDENTITY_TRUST_ANCHORS_FILE",
        requires = "identity_issuer_cert_file"
    )]
    identity_trust_anchors_file: Option<PathBuf>,
    /// The SPIFFE trust domain of workload identities.
    #[arg(long, env = "PICKET_CONTROL_TRUST_DOMAIN", default_value = picket_control::ca::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// How long a workload certificate is valid (sidecars renew at half of it).
    #[arg(long, default_value = "24h", value_parser = picket_common::duration::parse)]
    certificate_lifetime: Duration,
    /// How often the mesh CA's files are read again (a rotated issuer or
    /// new trust anchors take effect without a restart).
    #[arg(long, default_value = "30s", value_parser = picket_common::duration::parse)]
    identity_reload: Duration,
    /// Log as JSON.
    #[arg(long, env = "PICKET_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let identity = match (cli.identity_issuer_cert_file, cli.identity_issuer_key_file) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!(
            "--identity-issuer-cert-file needs --identity-issuer-key-file (PICKET_CONTROL_IDENTITY_ISSUER_KEY_FILE)"
        ),
        (Some(cert), Some(key)) => Some(IdentityConfig {
            trust_anchors_file: cli.identity_trust_anchors_file.unwrap_or_else(|| cert.clone()),
            issuer_cert_file: cert,
            issuer_key_file: key,
            trust_domain: cli.trust_domain,
            lifetime: cli.certificate_lifetime,
            reload: cli.identity_reload,
        }),
    };
    let _log = picket_common::logging::init(cli.log_json);
    run(Config {
        listen: cli.listen,
        admin: cli.admin,
        kubeconfig: cli.kubeconfig,
        tls_cert_file: cli.tls_cert_file,
        tls_key_file: cli.tls_key_file,
        stream: StreamConfig {
            batch: cli.batch,
            stall: cli.stall,
            lifetime: cli.stream_lifetime,
        },
        review_rate: cli.token_review_rate,
        review_burst: cli.token_review_burst,
        coverage: CoverageConfig {
            interval: cli.coverage_interval,
            repeat: cli.coverage_repeat,
        },
        identity,
    })
    .await
}
