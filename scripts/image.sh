#!/usr/bin/env bash
# Builds the installer image of the Helm chart (charts/taskd) as an OCI image layout, without
# Docker: one reproducible layer written by hand (sorted tar, fixed mtimes, owner 0:0,
# gzip -n), its config, manifest and index.
#
#   scripts/image.sh [--out DIR] [--tag TAG] [--bin-dir DIR]
#
#   --out DIR      the OCI layout (default: target/oci/taskd-installer)
#   --tag TAG      its org.opencontainers.image.ref.name (default: the workspace version)
#   --bin-dir DIR  take taskd, taskd-node and containerd-shim-taskd-v2 from DIR instead of
#                  `cargo build --release` (e.g. target/debug for a quick local image)
#
# Push it with skopeo (no daemon needed):
#   skopeo copy oci:target/oci/taskd-installer:0.1.0 docker://ghcr.io/taskd/taskd-installer:0.1.0
#
# The image:
#   /opt/taskd/bin/taskd, containerd-shim-taskd-v2 (when built), containerd-shim-runc-v2
#   (Debian's containerd), runc            what taskd-node installs
#   /opt/taskd/bin/lib/                    their shared libraries besides glibc (libssl,
#                                          libcrypto, libseccomp, libgcc_s); the binaries' RPATH
#                                          is $ORIGIN/lib, so they run on any host with glibc >=
#                                          the build machine's (Debian 12: 2.36)
#   /opt/taskd/bin/taskd-node              the agent (entrypoint)
#   /lib64, /lib/x86_64-linux-gnu          glibc, for running them inside the image
#   /bin/busybox (static): sh, nsenter     the agent's systemctl command is nsenter ... systemctl
#
# Reproducible: the same binaries give the same digests (SOURCE_DATE_EPOCH, default the last
# commit's time, is every mtime and the config's "created").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

out=target/oci/taskd-installer
tag=""
bin_dir=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift ;;
        --tag) tag=$2; shift ;;
        --bin-dir) bin_dir=$2; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "image.sh: $*" >&2; exit 1; }

apt_install patchelf busybox-static runc containerd python3
if [ -z "$tag" ]; then
    tag=$(sed -n 's/^version = "\(.*\)"/\1/p' node/Cargo.toml | head -1)
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

if [ -z "$bin_dir" ]; then
    ensure_cargo
    packages=(-p taskd -p taskd-node)
    # taskd's own shim (containerd-shim-taskd-v2), when the workspace has the shim crate.
    if [ -f shim/Cargo.toml ]; then
        packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' shim/Cargo.toml | head -1)")
    fi
    cargo build --release "${packages[@]}"
    bin_dir=${CARGO_TARGET_DIR:-target}/release
fi
[ -x "$bin_dir/taskd" ] || die "no taskd in $bin_dir"
[ -x "$bin_dir/taskd-node" ] || die "no taskd-node in $bin_dir"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/opt/taskd/bin/lib" "$root/bin" "$root/usr/bin" "$root/lib64" \
    "$root/lib/x86_64-linux-gnu" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/etc"

cp "$bin_dir/taskd" "$bin_dir/taskd-node" "$root/opt/taskd/bin/"
[ -x "$bin_dir/containerd-shim-taskd-v2" ] && cp "$bin_dir/containerd-shim-taskd-v2" "$root/opt/taskd/bin/"
cp "$(command -v runc)" "$root/opt/taskd/bin/runc"
# containerd's runc shim (Debian's containerd package) for the chart's default runtime
# io.containerd.runc.v2, so a node without containerd can run pods too.
if command -v containerd-shim-runc-v2 >/dev/null 2>&1; then
    cp "$(command -v containerd-shim-runc-v2)" "$root/opt/taskd/bin/"
fi

# glibc stays the host's (and is in the image for running there); everything else a binary
# links is bundled next to it.
is_glibc() {
    case "$(basename "$1")" in
        ld-linux-x86-64.so.2 | libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1) return 0 ;;
    esac
    return 1
}
for bin in "$root"/opt/taskd/bin/*; do
    [ -f "$bin" ] || continue
    while read -r lib; do
        if is_glibc "$lib"; then
            case "$lib" in
                */ld-linux-x86-64.so.2) cp -L "$lib" "$root/lib64/" ;;
                *) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
            esac
        else
            cp -L "$lib" "$root/opt/taskd/bin/lib/"
        fi
    done < <(ldd "$bin" | awk '/=> \// {print $3} $1 ~ /^\/lib64\// {print $1}')
    # ($ORIGIN is found through /proc/self/exe: containers and hosts have /proc.)
    patchelf --set-rpath '$ORIGIN/lib' "$bin"
done
chmod 0755 "$root"/opt/taskd/bin/* "$root"/opt/taskd/bin/lib/* 2>/dev/null || true
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
ln -s ../../bin/busybox "$root/usr/bin/nsenter"
chmod 1777 "$root/tmp"

python3 - "$root" "$out" "$tag" "$SOURCE_DATE_EPOCH" <<'EOF'
import gzip, hashlib, io, json, os, shutil, sys, tarfile, time

root, out, tag, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

# The layer: every path under root, sorted, owner 0:0, mtime = epoch.
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in dirnames + sorted(filenames):
            paths.append(os.path.join(dirpath, n))
    for p in sorted(paths, key=lambda p: os.path.relpath(p, root)):
        info = tar.gettarinfo(p, arcname=os.path.relpath(p, root))
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = epoch
        info.pax_headers = {}
        if info.isfile():
            with open(p, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
layer = buf.getvalue()
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=9, mtime=0, filename="") as g:
    g.write(layer)
layer_gz = gz.getvalue()

def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()

def canonical(o):
    return json.dumps(o, sort_keys=True, separators=(",", ":")).encode()

created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
config = canonical({
    "architecture": "amd64",
    "os": "linux",
    "created": created,
    "config": {
        "Entrypoint": ["/opt/taskd/bin/taskd-node"],
        "Env": ["PATH=/opt/taskd/bin:/usr/bin:/bin"],
        "Labels": {
            "org.opencontainers.image.title": "taskd-installer",
            "org.opencontainers.image.version": tag,
        },
    },
    "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
    "history": [{"created": created, "created_by": "scripts/image.sh"}],
})
manifest = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest(layer_gz), "size": len(layer_gz)}],
})
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest(manifest), "size": len(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }],
}
shutil.rmtree(out, ignore_errors=True)
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
for b in (layer_gz, config, manifest):
    with open(os.path.join(blobs, digest(b)[7:]), "wb") as f:
        f.write(b)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
with open(os.path.join(out, "index.json"), "w") as f:
    f.write(json.dumps(index, sort_keys=True, separators=(",", ":")))
print(f"{out}: {tag} manifest {digest(manifest)} layer {len(layer_gz)} bytes")
EOF
if command -v skopeo >/dev/null 2>&1; then
    skopeo inspect --format '{{.Digest}} {{.Architecture}}/{{.Os}} {{len .Layers}} layer(s)' "oci:$out:$tag"
fi
