#!/usr/bin/env bash
# Build the procmon Debian package from a built wheel (make deb).
#
#   packaging/deb/build-deb.sh WHEEL OUT_DIR [PIP_PYTHON]
#
# The package holds the agent in its own virtualenv under /opt/procmon with every dependency
# inside (pip resolves them from the build machine's index), so hosts need no PyPI: only
# Debian's python3 (the same 3.X as the build machine's /usr/bin/python3) and libbpf1.
# The venv is built in a staging root and moved: every text file naming the staging path is
# rewritten to /opt/procmon and the bytecode is compiled for its final paths. Debian's bcc
# (python3-bpfcc) stays importable through one .pth entry that exposes only the bcc package.
# PIP_PYTHON is a Python with pip >= 22.3 (default python3) that installs into the venv.
set -euo pipefail

die() { printf 'build-deb: %s\n' "$*" >&2; exit 1; }

(($# >= 2)) || die "usage: $0 WHEEL OUT_DIR [PIP_PYTHON]"
wheel=$(realpath "$1")
out=$(realpath -m "$2")
pip_python=${3:-python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -f $wheel ]] || die "no wheel at $1 (make dist)"
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt-get install dpkg)"

base=$(basename "$wheel")
version=${base#procmon-}
version=${version%%-*}
arch=$(dpkg --print-architecture)
pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pynext=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
prefix=/opt/procmon
deb=$out/procmon_${version}-1_${arch}.deb

stage=$(mktemp -d "${TMPDIR:-/tmp}/procmon-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
venv=$root$prefix

# The venv's python is a symlink to /usr/bin/python3: hosts must have the same minor version.
/usr/bin/python3 -m venv --without-pip "$venv"
"$pip_python" -m pip --python "$venv/bin/python" install --quiet --no-compile --no-cache-dir \
    --disable-pip-version-check "$wheel"
"$pip_python" -m pip --python "$venv/bin/python" check >/dev/null || die "pip check failed in the venv"
# Every runtime dependency imports from the venv alone (no system site-packages).
"$venv/bin/python" - <<'PY' || die "the venv cannot import procmon's dependencies"
import importlib.metadata as md
import re

import procmon.cli  # noqa: F401

for req in md.requires("procmon") or []:
    if "extra ==" in req:
        continue
    dist = md.distribution(re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0])
    for package in {f.parts[0] for f in dist.files or [] if f.parts[-1] == "__init__.py"}:
        __import__(package)
PY

# Debian's bcc, and only it, from the system site-packages (dangling when python3-bpfcc is absent:
# then `import bcc` fails as it would without this).
site=$venv/lib/python$pyver/site-packages
install -d "$venv/lib/system-bcc"
ln -s /usr/lib/python3/dist-packages/bcc "$venv/lib/system-bcc/bcc"
echo "$prefix/lib/system-bcc" >"$site/procmon-system-bcc.pth"

# Relocate: the staging path out of every text file (shebangs, pyvenv.cfg, activate scripts).
grep -rlIZ --exclude-dir=__pycache__ -F "$root" "$venv" | xargs -0r sed -i "s|$root||g"
if grep -rqI -F "$root" "$venv"; then die "the staging path is left in $(grep -rlI -F "$root" "$venv" | head -1)"; fi
# Bytecode for the final paths: /opt/procmon is read-only to the agent (ProtectSystem=strict).
/usr/bin/python3 -m compileall -q -j 0 -s "$root" -p / "$venv/lib" >/dev/null

install -d "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/share/doc/procmon" "$root/DEBIAN"
ln -s "$prefix/bin/procmon" "$root/usr/bin/procmon"
install -m 0644 "$here/procmon-agent.service" "$root/lib/systemd/system/procmon-agent.service"
install -m 0644 "$here/copyright" "$root/usr/share/doc/procmon/copyright"
for script in postinst prerm postrm; do install -m 0755 "$here/$script" "$root/DEBIAN/$script"; done
# The CO-RE object's checksum, as recorded in the wheel.
bpf_sum=$(cut -d' ' -f1 "$site/procmon/probe/bpf/exit.bpf.o.sha256")

cat >"$root/DEBIAN/control" <<CONTROL
Package: procmon
Version: ${version}-1
Architecture: $arch
Maintainer: procmon maintainers <procmon@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: python3 (>= $pyver), python3 (<< $pynext), libbpf1, passwd
Suggests: python3-bpfcc
Section: admin
Priority: optional
Homepage: https://github.com/procmon/procmon
Description: process-exit monitor for Linux fleets (eBPF, MQTT)
 Every process exit on the host becomes one validated JSON event on an MQTT bus.
 The agent and its Python dependencies live in a virtualenv under $prefix.
 The CO-RE eBPF object runs on every kernel with BTF; its sha256:
 $bpf_sum
 Kernels without BTF need python3-bpfcc and their headers (the bcc backend).
CONTROL

mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
