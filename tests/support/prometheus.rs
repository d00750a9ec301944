//! A real Prometheus (the Debian `prometheus` package) for tests that check
//! what the dashboards show: it scrapes what a test names every second, and
//! answers instant queries; and the PromQL of a dashboard file, with
//! Grafana's variables substituted.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How a test reaches Prometheus's HTTP API: `GET path` → status and body.
pub type Get = Box<dyn Fn(&str) -> io::Result<(u16, String)> + Send + Sync>;

/// A Prometheus of a test's own, killed on drop.
pub struct Prometheus {
    child: Child,
    get: Get,
    _data: tempfile::TempDir,
}

impl Prometheus {
    /// Runs Prometheus on `listen`, through `launcher` (say `ip netns exec
    /// NS`; empty: here), scraping every second with `scrape_configs` (the
    /// YAML items of `scrape_configs:`, each starting `- job_name:`); `get`
    /// reaches its HTTP API ([`http_get`] when it runs here).
    pub fn start(
        launcher: &[&str],
        listen: SocketAddr,
        scrape_configs: &str,
        get: Get,
    ) -> io::Result<Self> {
        let data = tempfile::tempdir()?;
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n{scrape_configs}"
            ),
        )?;
        let mut command = match launcher {
            [] => Command::new("prometheus"),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg("prometheus");
                c
            }
        };
        let child = command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("run prometheus (apt-get install prometheus): {e}"),
                )
            })?;
        Ok(Self {
            child,
            get,
            _data: data,
        })
    }

    /// Runs an instant query; returns the result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = (self.get)(&path).map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("{promql}: HTTP {status}: {body}"));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The single value of a query, if it has one.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` at `addr`, from here: the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad HTTP response: {response:?}")))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// A loopback address with a port free now (Prometheus takes no port 0).
pub fn free_loopback_port() -> io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` in a Grafana dashboard file, with `$namespace` and `$pod`
/// set, and Grafana's intervals fixed.
pub fn dashboard_queries(file: &Path, namespace: &str, pod: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr" {
                        if let Some(s) = v.as_str() {
                            out.push(s.to_string());
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut out = Vec::new();
    walk(&json, &mut out);
    out.into_iter()
        .map(|q| {
            q.replace("$namespace", namespace)
                .replace("$pod", pod)
                .replace("$__rate_interval", "20s")
                .replace("$__range", "5m")
        })
        .collect()
}

/// Whether a query reads what only the control plane exports (the
/// sidecars' scrape has none of it).
pub fn reads_control_plane(promql: &str) -> bool {
    promql.contains("picket_unenforced_pods") || promql.contains("picket_control_")
}
