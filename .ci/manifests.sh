#!/usr/bin/env bash
# Validates every Kubernetes manifest under manifests/ (*.yaml, *.yml) offline
# with kubernetes-validate (PyPI), in strict mode, against the oldest and the
# newest Kubernetes versions the installed package knows.
#
# kubernetes-validate only warns on kinds it has no schema for. Kinds from the
# API groups in SKIP_GROUPS (custom resources, kustomization files) are listed
# as skipped; any other warning, and any failure, fails this script.
#
# Runs as root on a fresh Debian with python3: installs python3-venv if
# needed, and keeps its virtualenv under $PICKET_CACHE_DIR (default
# ~/.cache/picket) so later runs skip the install.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP_GROUPS=(kustomize.config.k8s.io monitoring.coreos.com)
cache="${PICKET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/picket}"
venv="$cache/kubernetes-validate"
validate="$venv/bin/kubernetes-validate"

if [[ ! -x "$validate" ]]; then
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
    fi
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate
fi

read -r oldest newest < <("$venv/bin/python" - <<'PY'
from packaging.version import Version
from kubernetes_validate.utils import all_versions
versions = sorted(set(all_versions()), key=Version)
print(versions[0], versions[-1])
PY
)

mapfile -t files < <(find manifests -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if ((${#files[@]} == 0)); then
    echo "manifests: no manifest found" >&2
    exit 1
fi
echo "manifests: validating ${#files[@]} files against Kubernetes $oldest and $newest (kubernetes-validate $("$validate" --version), strict)"

failed=0
skipped=()
for version in "$oldest" "$newest"; do
    status=0
    output=$("$validate" --strict --quiet -k "$version" "${files[@]}" 2>&1) || status=$?
    while IFS= read -r line; do
        [[ -z "$line" ]] && continue
        if [[ "$line" =~ ^WARN\ ([^ ]+)\ Couldn\'t\ find\ schema\ for\ kind\ ([^ ]+)\ with\ api\ version\ ([^ ]+)\ for ]]; then
            file="${BASH_REMATCH[1]}" kind="${BASH_REMATCH[2]}" api="${BASH_REMATCH[3]}"
            group="${api%/*}"
            for skip in "${SKIP_GROUPS[@]}"; do
                if [[ "$group" == "$skip" ]]; then
                    skipped+=("$file: $kind ($api)")
                    continue 2
                fi
            done
        fi
        echo "manifests: [$version] $line" >&2
        failed=1
    done <<<"$output"
    if ((status != 0)); then
        echo "manifests: kubernetes-validate exited $status against $version" >&2
        failed=1
    fi
done

if ((${#skipped[@]})); then
    echo "manifests: skipped (no schema, by design):"
    printf '%s\n' "${skipped[@]}" | sort -u | sed 's/^/  /'
fi
if ((failed)); then
    echo "manifests: FAILED" >&2
    exit 1
fi
echo "manifests: ${#files[@]} files valid against $oldest and $newest"
