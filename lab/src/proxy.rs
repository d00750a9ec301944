//! Running the real `picket-proxy` in lab pods: `init` as root in the pod's
//! namespace, `run` as the proxy's own UID.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{in_netns, Lab, LabPod};
use picket_common::{ADMIN_PORT as DEFAULT_ADMIN_PORT, INBOUND_PORT as DEFAULT_INBOUND_PORT};

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Silences the sidecars' logs (the demo prints its own story).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// The UID the sidecar runs as (the injector uses the same).
pub const PROXY_UID: u32 = picket_common::PROXY_UID;

/// A running sidecar; killed on drop.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    netns: String,
    admin: SocketAddr,
}

/// A binary placed where the proxy UID can run it; the directory holding it
/// is removed on drop (and by [`super::emergency_cleanup`] on Ctrl-C).
#[derive(Debug)]
pub struct InstalledBinary {
    dir: PathBuf,
    path: PathBuf,
}

/// Places a binary in a world-readable directory, so the proxy UID can run it.
pub fn install_binary(src: &Path) -> io::Result<InstalledBinary> {
    let name = src
        .file_name()
        .ok_or_else(|| io::Error::other("binary path has no file name"))?;
    install_binary_as(src, &name.to_string_lossy())
}

/// Places a binary in a world-readable directory under another name: a hard
/// link when the binary is already executable by everyone and on the same
/// file system (no copy of a debug build per test), a copy otherwise.
pub fn install_binary_as(src: &Path, name: &str) -> io::Result<InstalledBinary> {
    install(src, name, true)
}

/// Places a copy of a binary (never a link: a file capability belongs to
/// the inode) carrying a file capability, as the proxy image's binary
/// carries `cap_net_raw+p`; needs `setcap` (libcap2-bin).
pub fn install_binary_with_capability(src: &Path, capability: &str) -> io::Result<InstalledBinary> {
    let name = src
        .file_name()
        .ok_or_else(|| io::Error::other("binary path has no file name"))?;
    let installed = install(src, &name.to_string_lossy(), false)?;
    let out = Command::new("setcap")
        .arg(capability)
        .arg(installed.path())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "setcap {capability} {}: {}",
            installed.path().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(installed)
}

fn install(src: &Path, name: &str, link: bool) -> io::Result<InstalledBinary> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{}{n}", bin_dir_prefix(std::process::id())));
    std::fs::create_dir_all(&dir)?;
    // From here on the guard removes the directory, whatever fails next.
    let installed = InstalledBinary {
        path: dir.join(name),
        dir,
    };
    std::fs::set_permissions(&installed.dir, std::fs::Permissions::from_mode(0o755))?;
    let everyone_can_run = std::fs::metadata(src)?.permissions().mode() & 0o005 == 0o005;
    if !(link && everyone_can_run && std::fs::hard_link(src, &installed.path).is_ok()) {
        let tmp = installed.dir.join(format!(".{name}.tmp"));
        std::fs::copy(src, &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &installed.path)?;
    }
    Ok(installed)
}

/// The start of the names of the directories [`install_binary`] makes for
/// the process `pid`.
pub(crate) fn bin_dir_prefix(pid: u32) -> String {
    format!("{}-bin-{pid}-", super::PREFIX)
}

// === impl InstalledBinary ===

impl InstalledBinary {
    /// Where the binary is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for InstalledBinary {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for InstalledBinary {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

impl Drop for InstalledBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes a directory and its files readable by the proxy UID.
pub fn share_dir(dir: &Path) -> io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Runs `picket-proxy init` in the pod's namespace, as root.
pub fn run_init(binary: &Path, pod: &LabPod, args: &[&str]) -> io::Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .arg(binary)
        .arg("init")
        .args(args)
        .output()
}

// === impl Sidecar ===

impl Sidecar {
    /// Starts `picket-proxy run` in the pod as the proxy UID, reading the
    /// cluster from `cluster_dir`; `extra` are more flags.
    pub fn start(
        binary: &Path,
        lab: &Lab,
        pod: &LabPod,
        namespace: &str,
        cluster_dir: &Path,
        node_file: &Path,
        extra: &[&str],
    ) -> io::Result<Self> {
        let dir = cluster_dir.to_string_lossy();
        let mut args = vec!["--cluster-dir", &*dir];
        args.extend_from_slice(extra);
        Self::start_with(binary, lab, pod, namespace, node_file, &args)
    }

    /// Starts `picket-proxy run` in the pod as the proxy UID with these flags
    /// (the state source among them).
    pub fn start_with(
        binary: &Path,
        lab: &Lab,
        pod: &LabPod,
        namespace: &str,
        node_file: &Path,
        args: &[&str],
    ) -> io::Result<Self> {
        let uid = format!("--reuid={PROXY_UID}");
        let gid = format!("--regid={PROXY_UID}");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.netns,
                "setpriv",
                &uid,
                &gid,
                "--clear-groups",
            ])
            .arg(binary)
            .arg("run")
            .arg("--node-file")
            .arg(node_file)
            .args(args)
            .env("POD_NAME", &pod.name)
            .env("POD_NAMESPACE", namespace)
            .env("POD_IP", pod.ip.to_string())
            .env("HOST_IP", lab.host_ip().to_string())
            .env("PICKET_RESYNC", "2s")
            .stdin(Stdio::null())
            .stderr(if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .spawn()?;
        super::track_child(child.id());
        Ok(Self {
            child,
            netns: pod.netns.clone(),
            admin: SocketAddr::new(pod.ip, DEFAULT_ADMIN_PORT),
        })
    }

    /// The sidecar's process id (`ip netns exec` and `setpriv` exec it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/ready` until it answers 200, or the deadline passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!("picket-proxy exited: {status}")));
            }
            if let Ok((200, _)) = http_get(&self.netns, self.admin, "/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let last = http_get(&self.netns, self.admin, "/ready");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("picket-proxy not ready in {timeout:?}: {last:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until the admin port answers at all (ready or not).
    pub fn wait_listening(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        while http_get(&self.netns, self.admin, "/live").is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "picket-proxy never listened",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Sends SIGTERM, as the kubelet does when the pod stops.
    pub fn terminate(&self) -> io::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other("kill -TERM failed"))
        }
    }

    /// Polls until the process exits, or the deadline passes.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The inbound port it listens on.
    pub fn inbound_port(&self) -> u16 {
        DEFAULT_INBOUND_PORT
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        super::untrack_child(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET from inside a namespace: (status, body).
pub fn http_get(netns: &str, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = in_netns(netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })??;
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

/// Connects from inside a namespace, optionally from a given source address.
pub fn connect_from(netns: &str, source: Option<IpAddr>, to: SocketAddr) -> io::Result<TcpStream> {
    in_netns(netns, || {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )?;
        if let Some(ip) = source {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        // A blocking connect, as most clients do: it returns once the kernel
        // has completed the handshake.
        socket.connect(&to.into())?;
        Ok(TcpStream::from(socket))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_binary_is_runnable_by_everyone_and_removed_on_drop() {
        let src = std::env::current_exe().unwrap();
        let installed = install_binary_as(&src, "picket-proxy").unwrap();
        let mode = std::fs::metadata(installed.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o005, 0o005, "mode {mode:o}");
        assert_eq!(
            std::fs::metadata(installed.path()).unwrap().len(),
            std::fs::metadata(&src).unwrap().len()
        );
        let dir = installed.path().parent().unwrap().to_path_buf();
        let second = install_binary_as(&src, "picket-proxy").unwrap();
        assert_ne!(
            second.path(),
            installed.path(),
            "each install has its own directory"
        );
        drop(installed);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        assert!(
            second.path().exists(),
            "dropping one install removed another"
        );
    }
}
