#!/usr/bin/env bash
# Counts the system calls picket-proxy makes per short inbound connection,
# allowed and denied (issue 17): two lab pods on a bridge, the real init
# rules, the release sidecar under `strace -f -c`, N connections of each kind
# from the client pod (connect, 64 bytes each way, close). Root; iproute2,
# iptables, strace, python3. Prints a table per kind: calls per connection.
#   bash benches/syscalls.sh [N] [extra picket-proxy run flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}; shift || true
bin=${PICKET_PROXY_BIN:-target/release/picket-proxy}
[[ -n ${PICKET_PROXY_BIN:-} ]] || cargo build --release -q -p picket-proxy
for tool in ip iptables strace python3 setpriv; do
    command -v "$tool" >/dev/null || { echo "syscalls: $tool is missing" >&2; exit 1; }
done
tag="pkt-sc-$$"; work=$(mktemp -d); chmod 755 "$work"
cleanup() {
    [[ -n ${proxy_pid:-} ]] && kill "$proxy_pid" 2>/dev/null || true
    for ns in "$tag-c" "$tag-s"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$tag-c"; ip netns add "$tag-s"
ip link add "$tag-a" type veth peer name "$tag-b"
ip link set "$tag-a" netns "$tag-c"; ip link set "$tag-b" netns "$tag-s"
ip -n "$tag-c" link set "$tag-a" name eth0; ip -n "$tag-s" link set "$tag-b" name eth0
ip -n "$tag-c" addr add 10.251.0.1/24 dev eth0; ip -n "$tag-s" addr add 10.251.0.2/24 dev eth0
for ns in "$tag-c" "$tag-s"; do ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up; done
ip -n "$tag-c" addr add 10.251.0.3/24 dev eth0   # a second client address: denied
cp "$bin" "$work/picket-proxy"; chmod 755 "$work/picket-proxy"
mkdir -p "$work/cluster" "$work/state"; chmod 755 "$work/cluster" "$work/state"
pod() { # name label ip
    printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: bench, labels: {%s}}\nspec: {containers: [{name: app}]}\nstatus: {phase: Running, podIP: %s}\n---\n' "$@"
}
{
    pod api "app: api" 10.251.0.2
    pod client "role: client" 10.251.0.1
    pod stranger "role: stranger" 10.251.0.3
    cat <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client, namespace: bench}
spec: {podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]}
YAML
} > "$work/cluster/cluster.yaml"
chmod 644 "$work/cluster/cluster.yaml"
ip netns exec "$tag-s" "$work/picket-proxy" init --node-file "$work/state/node" >/dev/null
chmod 644 "$work/state/node"
# The app: an echo server.
ip netns exec "$tag-s" python3 -c '
import socket, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("10.251.0.2", 8080)); l.listen(512)
def echo(c):
    with c:
        while (d := c.recv(65536)): c.sendall(d)
while True:
    c, _ = l.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
' & app_pid=$!
ip netns exec "$tag-s" setpriv --reuid=1337 --regid=1337 --clear-groups \
    env POD_NAME=api POD_NAMESPACE=bench POD_IP=10.251.0.2 \
    "$work/picket-proxy" run --cluster-dir "$work/cluster" --node-file "$work/state/node" --workers 1 "$@" \
    2>"$work/proxy.log" & proxy_pid=$!
for _ in $(seq 100); do
    ip netns exec "$tag-s" python3 -c 'import urllib.request as u; u.urlopen("http://10.251.0.2:15020/ready", timeout=1)' 2>/dev/null && break
    sleep 0.1
done
# Connections from the client pod: `allowed` from 10.251.0.1, `denied` from .3.
client() {
    ip netns exec "$tag-c" python3 -c "
import socket, sys
n, src, ok = int(sys.argv[1]), sys.argv[2], 0
for _ in range(n):
    s = socket.socket(); s.bind((src, 0))
    try:
        s.connect(('10.251.0.2', 8080)); s.sendall(b'x' * 64)
        ok += len(s.recv(64)) == 64
    except OSError:
        pass
    s.close()
print(ok)" "$@"
}
client 20 10.251.0.1 >/dev/null; client 20 10.251.0.3 >/dev/null   # warm up
count() { # kind source
    strace -f -c -o "$work/$1.txt" -p "$proxy_pid" 2>/dev/null & local st=$!
    sleep 1
    local ok; ok=$(client "$n" "$2")
    sleep 0.5; kill -INT "$st"; wait "$st" 2>/dev/null || true
    echo "$1: $n connections, $ok echoed" >&2
}
count allowed 10.251.0.1
count denied 10.251.0.3
strace -f -c -o "$work/idle.txt" -p "$proxy_pid" 2>/dev/null & st=$!; sleep 1.5; kill -INT "$st"; wait "$st" 2>/dev/null || true
python3 - "$work" "$n" <<'PY'
import sys, re
work, n = sys.argv[1], int(sys.argv[2])
def calls(kind):
    out = {}
    for line in open(f"{work}/{kind}.txt"):
        f = line.split()
        if len(f) >= 5 and f[-1] not in ("syscall", "total") and f[3].isdigit():
            out[f[-1]] = int(f[3])
    return out
idle = calls("idle")
for kind in ("allowed", "denied"):
    c = calls(kind)
    rows = {k: (v - idle.get(k, 0)) / n for k, v in c.items()}
    rows = {k: v for k, v in rows.items() if v >= 0.05}
    print(f"{kind}: {sum(rows.values()):.1f} system calls per connection (idle background subtracted)")
    for k, v in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<20} {v:6.2f}")
PY
kill "$app_pid" 2>/dev/null || true
