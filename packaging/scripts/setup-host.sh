#!/usr/bin/env bash
# Installs what NovaCron needs on a fresh Debian 12 machine, as root. Idempotent and quick when done.
#   setup-host.sh [--qemu] [--chromium] [--etcd] [--netns]
# QEMU comes from bookworm-backports (10.x): Debian 12's own 7.2 under TCG reported live migrations of
# fast-dirtying guests complete while the target's memory was corrupt.
set -euo pipefail

want_qemu=0 want_chromium=0 want_etcd=0 want_netns=0
for arg in "$@"; do
  case "$arg" in
    --qemu) want_qemu=1 ;;
    --chromium) want_chromium=1 ;;
    --etcd) want_etcd=1 ;;
    --netns) want_netns=1 ;;
    *) echo "setup-host: unknown option $arg" >&2; exit 2 ;;
  esac
done

log() { printf 'setup-host: %s\n' "$*" >&2; }

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  log "Node.js >= 20 is required (found: $(node --version 2>/dev/null || echo none)); install it first"
  exit 1
fi

apt_packages=()
need() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' || apt_packages+=("$1"); }
# Native addons (zstd-napi builds from source) need a compiler, make and python3.
for p in g++ make python3; do command -v "$p" >/dev/null 2>&1 || need "$p"; done
if [ "$want_netns" = 1 ]; then need iproute2; fi
if [ "$want_chromium" = 1 ]; then need chromium; fi
if [ "$want_etcd" = 1 ]; then need etcd-server; need etcd-client; fi
# The demo guest (packaging/guest/build.sh) is built from the distribution kernel, a static busybox and a
# statically linked memtouch; qemu-utils (qemu-img) comes with QEMU below.
if [ "$want_qemu" = 1 ]; then
  for p in linux-image-amd64 busybox-static cpio gcc libc6-dev e2fsprogs util-linux; do need "$p"; done
fi

qemu_ok=1
if [ "$want_qemu" = 1 ]; then
  qemu_major=$(qemu-system-x86_64 --version 2>/dev/null | sed -n "s/.*version \([0-9]*\)\..*/\1/p" | head -1 || true)
  if [ -z "$qemu_major" ] || [ "$qemu_major" -lt 10 ] || ! command -v qemu-img >/dev/null; then qemu_ok=0; fi
fi

if [ ${#apt_packages[@]} -eq 0 ] && [ "$qemu_ok" = 1 ]; then
  log "host already has everything"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  log "need root to install: ${apt_packages[*]} $([ "$qemu_ok" = 0 ] && echo 'qemu (bookworm-backports)')"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if [ "$qemu_ok" = 0 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding bookworm-backports to apt sources"
  cat > /etc/apt/sources.list.d/novacron-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
log "apt-get update"
apt-get update -q >/dev/null
if [ ${#apt_packages[@]} -gt 0 ]; then
  log "installing ${apt_packages[*]}"
  apt-get install -y -q --no-install-recommends "${apt_packages[@]}" >/dev/null
fi
if [ "$qemu_ok" = 0 ]; then
  log "installing QEMU from bookworm-backports"
  apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi
qemu-system-x86_64 --version 2>/dev/null | head -1 | sed 's/^/setup-host: /' >&2 || true
