#!/usr/bin/env bash
# The engine stays pure: picket-policy must not depend, even indirectly, on
# an async runtime, an HTTP stack, the Kubernetes client or socket code.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p picket-policy --edges normal --prefix none --format '{p}' --locked)
bad=$(grep -E '^(tokio|hyper|kube|kube-client|kube-runtime|socket2|mio) ' <<<"$tree" || true)
if [ -n "$bad" ]; then
    echo "picket-policy must stay pure, but depends on:" >&2
    echo "$bad" >&2
    exit 1
fi
echo "picket-policy: no tokio, hyper, kube or socket2 ($(sort -u <<<"$tree" | wc -l) crates)"
