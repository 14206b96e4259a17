#!/usr/bin/env bash
# Builds the NovaCron demo guest from Debian packages: the distribution kernel, a busybox initramfs whose
# /init reports a boot id and a heartbeat on ttyS0, a memory workload (memtouch) and a small ext4 data disk.
#   build.sh [OUT_DIR]          default OUT_DIR: <repo>/.cache/demo-guest
# Writes vmlinuz, initrd.img, data.qcow2 and manifest.json (written last). Does nothing when the manifest's
# input hash matches this script, its sources, the kernel and busybox, and every output still has its hash.
# Needs: linux-image-amd64 busybox-static cpio gcc libc6-dev qemu-utils e2fsprogs (setup-host.sh --qemu).
# Environment: NOVACRON_GUEST_KERNEL=<version> picks a kernel other than the newest in /boot.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/.cache/demo-guest}
# Bumped when the layout of the outputs changes in a way the input hash would not see.
format=1
data_disk_mib=64
memory_mib=256
cmdline='console=ttyS0 quiet panic=-1'
# Modules the guest needs from the distribution kernel; their dependencies are added in load order.
wanted_modules=(virtio_pci virtio_blk virtio_net crc32c_generic ext4 button evdev)
lock_wait_s=600

log() { printf 'demo-guest: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for tool in cpio gzip gcc qemu-img sha256sum mke2fs flock; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (packaging/scripts/setup-host.sh --qemu installs it)"
done
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox is missing (apt-get install busybox-static)"
# A dynamically linked busybox would need the host's libc inside the initramfs.
if LC_ALL=C ldd "$busybox" 2>&1 | grep -q '=>'; then
  die "$busybox is not statically linked (install busybox-static, not busybox)"
fi

if [ -n "${NOVACRON_GUEST_KERNEL:-}" ]; then
  kver=$NOVACRON_GUEST_KERNEL
else
  kver=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' 2>/dev/null | sed 's/^vmlinuz-//' | sort -V | while read -r v; do
    [ -f "/lib/modules/$v/modules.dep" ] && echo "$v"
  done | tail -n 1)
fi
[ -n "$kver" ] || die "no kernel in /boot with modules in /lib/modules (apt-get install linux-image-amd64)"
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$kernel" ] || die "$kernel is missing or unreadable"
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep is missing"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Everything the outputs depend on. Source files are hashed with their path and mode (the init scripts
# must stay executable); the kernel and busybox by content, so a package upgrade rebuilds.
input_hash() {
  {
    echo "format $format disk $data_disk_mib memory $memory_mib cmdline $cmdline modules ${wanted_modules[*]}"
    echo "kernel $kver $(sha "$kernel")"
    echo "busybox $(sha "$busybox")"
    echo "gcc $(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)"
    (cd "$here" && find . -type f ! -name '*~' ! -name '*.md' -printf '%p %m\n' | LC_ALL=C sort | while read -r path mode; do
      echo "$path $mode $(sha "$path")"
    done)
  } | sha256sum | cut -d' ' -f1
}

# Prints the value of a top-level string field of our own manifest (we write it one field a line).
manifest_field() { sed -n "s/^  \"$2\": \"\(.*\)\",\{0,1\}$/\1/p" "$1" | head -n 1; }

up_to_date() {
  local manifest=$out/manifest.json
  [ -f "$manifest" ] || return 1
  [ "$(manifest_field "$manifest" inputHash)" = "$1" ] || return 1
  local f want
  for f in vmlinuz initrd.img data.qcow2; do
    [ -f "$out/$f" ] || return 1
    want=$(sed -n "s/^    \"$f\": { \"sha256\": \"\([0-9a-f]*\)\".*/\1/p" "$manifest")
    [ "$(sha "$out/$f")" = "$want" ] || return 1
  done
}

hash=$(input_hash)
mkdir -p "$out"
if up_to_date "$hash"; then
  log "up to date in $out (kernel $kver)"
  exit 0
fi

# Concurrent callers (parallel test files) build once: the second waits here, then finds it up to date.
exec 9>"$out/.lock"
flock -w "$lock_wait_s" 9 || die "another build of $out did not finish within $lock_wait_s s"
if up_to_date "$hash"; then
  log "up to date in $out (built by a concurrent run)"
  exit 0
fi

log "building into $out (kernel $kver)"
# Leftovers of a build that was killed before its exit trap ran; we hold the lock, so none is running.
rm -rf "$out"/.work.*
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,data,etc/novacron,lib/modules,root}
cp -a "$here/rootfs/." "$root/"
cp "$busybox" "$root/bin/busybox"
# One symlink per applet, except where our own files already stand (e.g. /init).
"$busybox" --list-full | while read -r applet; do
  [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

log "compiling memtouch"
gcc -O2 -Wall -Wextra -Werror -static -o "$root/bin/memtouch" "$here/memtouch.c"
strip "$root/bin/memtouch" 2>/dev/null || true

# Resolves modules.dep depth first so each module follows everything it needs. Built-in modules have no
# line in modules.dep and are skipped.
declare -A dep_of=() seen=()
while IFS=: read -r mod deps; do dep_of[$mod]=$deps; done <"$moddir/modules.dep"
declare -A path_of=()
for mod in "${!dep_of[@]}"; do
  name=${mod##*/}; name=${name%%.ko*}
  path_of[${name//-/_}]=$mod
done
order=()
visit() {
  local mod=$1 d
  [ -n "${seen[$mod]:-}" ] && return 0
  seen[$mod]=1
  for d in ${dep_of[$mod]}; do visit "$d"; done
  order+=("$mod")
}
for name in "${wanted_modules[@]}"; do
  mod=${path_of[${name//-/_}]:-}
  if [ -z "$mod" ]; then
    grep -qE "/${name}\.ko" "$moddir/modules.builtin" 2>/dev/null || die "module $name is neither in $moddir/modules.dep nor built in"
    continue
  fi
  visit "$mod"
done
: >"$root/etc/novacron/modules"
for mod in "${order[@]}"; do
  dest=$root/lib/modules/${mod%.ko*}.ko
  mkdir -p "$(dirname "$dest")"
  # busybox insmod reads plain .ko files; unpack a compressed module tree.
  case "$mod" in
    *.ko.xz) xz -dc "$moddir/$mod" >"$dest" ;;
    *.ko.zst) zstd -qdc "$moddir/$mod" >"$dest" ;;
    *.ko.gz) gzip -dc "$moddir/$mod" >"$dest" ;;
    *) cp "$moddir/$mod" "$dest" ;;
  esac
  echo "${mod%.ko*}.ko" >>"$root/etc/novacron/modules"
done
log "modules: $(sed 's#.*/##; s#\.ko$##' "$root/etc/novacron/modules" | tr '\n' ' ')"

# Fixed timestamps and sorted names keep the archive the same from one build to the next.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -9n >"$work/initrd.img")

cp "$kernel" "$work/vmlinuz"

# ext4 at build time so the first boot does not spend time formatting; the guest formats blank disks
# (ext2, busybox mke2fs) only when it is given one. Fixed UUID, seed and time for a repeatable image.
truncate -s "${data_disk_mib}M" "$work/data.raw"
E2FSPROGS_FAKE_TIME=1 mke2fs -q -F -t ext4 -L novacron-data -m 0 \
  -U 6e6f7661-6372-6f6e-2d64-617461646973 -E hash_seed=6e6f7661-6372-6f6e-2d68-617368736565,root_owner=0:0 \
  "$work/data.raw" >/dev/null
qemu-img convert -q -f raw -O qcow2 "$work/data.raw" "$work/data.qcow2"
rm -f "$work/data.raw"

file_entry() {
  printf '    "%s": { "sha256": "%s", "bytes": %s }' "$1" "$(sha "$work/$1")" "$(stat -c %s "$work/$1")"
}
modules_json=$(sed 's#.*/##; s#\.ko$##; s#.*#"&"#' "$root/etc/novacron/modules" | paste -sd, - | sed 's/,/, /g')
cat >"$work/manifest.json" <<JSON
{
  "format": $format,
  "inputHash": "$hash",
  "kernelVersion": "$kver",
  "cmdline": "$cmdline",
  "memoryMiB": $memory_mib,
  "dataDiskMiB": $data_disk_mib,
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "modules": [$modules_json],
  "files": {
$(file_entry vmlinuz),
$(file_entry initrd.img),
$(file_entry data.qcow2)
  }
}
JSON

# The manifest goes first and comes back last, so a crash in between leaves no manifest that lies.
rm -f "$out/manifest.json"
for f in vmlinuz initrd.img data.qcow2 manifest.json; do mv -f "$work/$f" "$out/$f"; done
log "built $out: $(stat -c %s "$out/initrd.img") bytes of initramfs"
