//! A local lab of network-namespace "pods" on a "node", for the end-to-end
//! tests and `picket demo`.
//!
//! The node is a network namespace holding a bridge (the pods' gateway) and
//! the node's hostIP on its loopback, distinct from the bridge's address. Each pod is a namespace joined to the bridge by a veth pair. No
//! address or route is ever added in the root namespace. Everything is named
//! with a per-process prefix and removed on drop; stale namespaces of dead
//! processes are swept when a lab starts. Needs root and iproute2.

pub mod app;
pub mod proxy;

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every lab namespace's name starts with this, then the owning pid.
pub const PREFIX: &str = "pkt";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Child processes (sidecars) to kill if the process is interrupted.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn track_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn untrack_child(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// Runs `cleanup` and exits with 130 when the process gets SIGINT or
/// SIGTERM (destructors would not run then). Spawns one waiting thread.
pub fn on_interrupt(cleanup: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut term) = signal(SignalKind::terminate()) else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            cleanup();
            std::process::exit(130);
        })?;
    Ok(())
}

/// Cleanup for an interrupted process (Ctrl-C), when destructors will not
/// run: kills the sidecars this process started and deletes its namespaces
/// and installed binaries.
pub fn emergency_cleanup() {
    let children = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in children {
        // `ip netns exec` becomes the proxy (it execs), so this is the proxy.
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    let mine = format!("{PREFIX}-{}-", std::process::id());
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&mine) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    let bins = proxy::bin_dir_prefix(std::process::id());
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&bins) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// A node namespace with a bridge, and the pods attached to it.
#[derive(Debug)]
pub struct Lab {
    node: String,
    subnet: u8,
    pods: Vec<LabPod>,
}

/// One pod: a namespace with `eth0` on the node's bridge.
#[derive(Clone, Debug)]
pub struct LabPod {
    /// The pod's name in the lab.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its IP.
    pub ip: IpAddr,
}

// === impl Lab ===

impl Lab {
    /// Creates a node namespace with a bridge at 10.<subnet>.0.1/24 and the
    /// hostIP 192.168.<subnet>.1. Fails with a clear error when namespaces
    /// cannot be made (not root, no iproute2).
    pub fn new() -> io::Result<Self> {
        sweep_stale();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let subnet = 100 + (n % 100) as u8;
        let node = format!("{PREFIX}-{}-{n}-node", std::process::id());
        ip(&["netns", "add", &node])?;
        let lab = Self {
            node,
            subnet,
            pods: Vec::new(),
        };
        let gw = format!("{}/24", lab.gateway());
        let host = format!("{}/32", lab.host_ip());
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["addr", "add", gw.as_str(), "dev", "br0"],
            vec!["link", "set", "br0", "up"],
            // The hostIP lives on the node's loopback: a local address of the
            // node, distinct from the bridge's, that pods reach through the gateway.
            vec!["addr", "add", host.as_str(), "dev", "lo"],
        ] {
            lab.ip_in(&lab.node, &args)?;
        }
        Ok(lab)
    }

    /// Adds a pod with the next free address.
    pub fn add_pod(&mut self, name: &str) -> io::Result<LabPod> {
        let index = self.pods.len() + 2;
        let netns = format!("{}-p{index}", self.node.trim_end_matches("-node"));
        let pod_ip = IpAddr::V4(Ipv4Addr::new(10, self.subnet, 0, index as u8));
        let pod = LabPod {
            name: name.to_string(),
            netns,
            ip: pod_ip,
        };
        self.pods.push(pod.clone());
        self.attach(&pod, &format!("veth{index}"))?;
        Ok(pod)
    }

    /// Deletes pod `old`'s namespace and gives its address to a new pod
    /// `name` on the bridge: a forged source address, as any container with
    /// NET_RAW on a bridge could make one.
    pub fn take_over(&mut self, old: &str, name: &str) -> io::Result<LabPod> {
        let position = self
            .pods
            .iter()
            .position(|p| p.name == old)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no lab pod {old}")))?;
        let previous = self.pods[position].clone();
        ip(&["netns", "del", &previous.netns])?;
        let index = position + 2;
        let pod = LabPod {
            name: name.to_string(),
            netns: format!("{}-t", previous.netns),
            ip: previous.ip,
        };
        self.pods[position] = pod.clone();
        self.attach(&pod, &format!("vetht{index}"))?;
        Ok(pod)
    }

    /// Creates a pod's namespace with `eth0` at its address, `veth` its
    /// peer on the bridge.
    fn attach(&self, pod: &LabPod, veth: &str) -> io::Result<()> {
        ip(&["netns", "add", &pod.netns])?;
        self.ip_in(
            &self.node,
            &[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.netns,
            ],
        )?;
        self.ip_in(&self.node, &["link", "set", veth, "master", "br0", "up"])?;
        let addr = format!("{}/24", pod.ip);
        let gw = self.gateway().to_string();
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", addr.as_str(), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["route", "add", "default", "via", gw.as_str()],
        ] {
            self.ip_in(&pod.netns, &args)?;
        }
        Ok(())
    }

    /// The node namespace's name.
    pub fn node_netns(&self) -> &str {
        &self.node
    }

    /// The bridge address: the pods' default gateway.
    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.subnet, 0, 1))
    }

    /// The node's hostIP, distinct from the bridge's address.
    pub fn host_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 168, self.subnet, 1))
    }

    /// An address outside the pod network (TEST-NET-2, 198.51.100.0/24),
    /// held by the node namespace on its loopback: what pods reach through
    /// their gateway as "the internet". `n` picks the host (1 to 254).
    pub fn add_external(&self, n: u8) -> io::Result<IpAddr> {
        let addr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, n));
        self.ip_in(
            &self.node,
            &["addr", "add", &format!("{addr}/32"), "dev", "lo"],
        )?;
        Ok(addr)
    }

    /// The pods, in the order they were added.
    pub fn pods(&self) -> &[LabPod] {
        &self.pods
    }

    fn ip_in(&self, netns: &str, args: &[&str]) -> io::Result<()> {
        let mut full = vec!["-n", netns];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = ip(&["netns", "del", &pod.netns]);
        }
        let _ = ip(&["netns", "del", &self.node]);
    }
}

/// Runs `f` on a thread inside a network namespace; sockets it creates stay
/// in that namespace wherever they are used afterwards.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(format!("/var/run/netns/{netns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("lab thread panicked"))?
    })
}

/// Runs `f` on a new thread inside a network namespace and returns at
/// once: for servers that live in a namespace (a control plane on the node).
pub fn spawn_in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<io::Result<T>>> {
    let file = File::open(format!("/var/run/netns/{netns}"))?;
    Ok(std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        Ok(f())
    }))
}

/// Whether this process can build a lab (root).
pub fn can_run() -> bool {
    rustix::process::geteuid().is_root()
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run ip (install iproute2): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Deletes lab namespaces left behind by processes that no longer exist.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
