#!/usr/bin/env bash
# Build (or reuse) the Debian bookworm test VM: a rootfs from debootstrap, packed into a sparse
# raw ext4 image without a loop device, plus the rootfs's own kernel and initrd for qemu -kernel.
#
# Usage: tests/system/vm/build-image.sh [CACHE_DIR]      (default: build/vm)
# Prints the image directory on stdout. The directory name hashes this script, so editing the
# package list or the set-up rebuilds; otherwise the cached image is reused.
set -euo pipefail

cache=${1:-${PMTEST_VM_DIR:-build/vm}}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mirror=${PROCMON_VM_MIRROR:-http://deb.debian.org/debian}
packages=systemd-sysv,dbus,openssh-server,python3,python3-venv,python3-apt,python3-bpfcc,bpfcc-tools,linux-image-amd64,linux-headers-amd64,sudo,iproute2,ca-certificates,procps
key=$(sha256sum "$here/build-image.sh" | cut -c1-12)
out="$cache/bookworm-$key"

if [[ -f $out/.done ]]; then
    echo "$out"
    exit 0
fi
for tool in debootstrap mkfs.ext4 ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (apt-get install debootstrap e2fsprogs openssh-client)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "build-image: debootstrap needs root" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
root="$out/rootfs"
# Any failure leaves no half-built image behind.
trap '[[ -f $out/.done ]] || rm -rf "$out"' EXIT

start=$SECONDS
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$out/debootstrap.log" 2>&1 \
    || { tail -20 "$out/debootstrap.log" >&2; echo "build-image: debootstrap failed (log above)" >&2; exit 1; }
echo "build-image: debootstrap took $((SECONDS - start)) s" >&2

# debootstrap copies the build host's hostname and resolv.conf; the VM gets its own.
echo procmon-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 procmon-vm\n' >"$root/etc/hosts"
echo 'nameserver 10.0.2.3' >"$root/etc/resolv.conf"  # qemu user-mode networking's DNS
echo '/dev/vda / ext4 rw,relatime 0 1' >"$root/etc/fstab"
: >"$root/etc/machine-id"  # systemd makes a fresh one at first boot
cat >"$root/etc/systemd/network/eth0.network" <<'NET'
[Match]
Name=eth0
[Network]
DHCP=ipv4
NET
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
SRC

# Root logs in by key only; the key pair lives next to the image.
ssh-keygen -q -t ed25519 -N '' -C procmon-vm-test -f "$out/id_ed25519"
install -d -m 700 "$root/root/.ssh"
install -m 600 "$out/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
cat >"$root/etc/ssh/sshd_config.d/procmon-test.conf" <<'SSHD'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
SSHD

cp -L "$root/vmlinuz" "$out/vmlinuz"
cp -L "$root/initrd.img" "$out/initrd.img"
chroot "$root" dpkg-query -W -f '${Version}\n' linux-image-amd64 >"$out/kernel-version"
ls "$root/lib/modules" >"$out/uname-r"
chroot "$root" apt-get clean

# A sparse file: only the written blocks take disk space.
truncate -s 6G "$out/disk.raw"
mkfs.ext4 -q -F -L procmon-root -d "$root" "$out/disk.raw"
rm -rf "$root"
touch "$out/.done"
echo "build-image: image ready in $((SECONDS - start)) s: $out" >&2
echo "$out"
