#!/usr/bin/env bash
# A test fleet of Debian 12 hosts as systemd-nspawn containers, for the Ansible roles.
#
#   tests/system/fleet/fleet.sh base    build the bookworm minbase rootfs once (cached)
#   tests/system/fleet/fleet.sh up      base + bridge + apt proxy + boot N hosts (overlayfs each, systemd
#                                       as PID 1, sshd on 10.77.77.11.., own cgroup), write
#                                       RUN/inventory/hosts.ini
#   tests/system/fleet/fleet.sh down    stop every host, kill leftovers, unmount, remove RUN
#   tests/system/fleet/fleet.sh status  list hosts and whether their ssh answers
#
# Environment (all optional):
#   PMTEST_FLEET_CACHE  base rootfs cache         (default /var/cache/procmon-test)
#   PMTEST_FLEET_RUN    per-run state: overlays, SSH key, inventory, logs
#                        (default <repo>/build/fleet)
#   PMTEST_FLEET_HOSTS  number of hosts, 1..9     (default 3)
#
# Each host has its own network namespace whose only link is on the bridge pmfleet0
# (10.77.77.0/24): the controller is 10.77.77.1, the hosts 10.77.77.11, .12, ... There is no
# route out (no default route; the controller does not forward): the hosts cannot reach PyPI or
# anything else. apt reaches Debian's archive only through apt_proxy.py on 10.77.77.1:3142,
# which serves deb.debian.org and refuses every other host and CONNECT. A broker for the agents
# listens on 10.77.77.1.
# eBPF works inside: bpf()/perf_event_open() are let through nspawn's seccomp filter, tracefs and
# /sys/kernel/btf are bound in, and CAP_BPF/CAP_PERFMON are in the containers' bounding set.
# `up` tears down what it started if it fails half-way (trap); `down` is safe to run any time.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
CACHE=${PMTEST_FLEET_CACHE:-/var/cache/procmon-test}
RUN=${PMTEST_FLEET_RUN:-$REPO/build/fleet}
NHOSTS=${PMTEST_FLEET_HOSTS:-3}
BASE=$CACHE/bookworm-base
# Bump when the package list or the base customisation changes: the cache is rebuilt.
BASE_VERSION=2
INCLUDE=systemd-sysv,dbus,openssh-server,python3,python3-venv,python3-apt,sudo,iproute2,ca-certificates
CGROUP_GROUP=procmon-fleet
BRIDGE=pmfleet0
NET=10.77.77
CONTROLLER=$NET.1
APT_PROXY_PORT=3142
CG_V1=/sys/fs/cgroup/systemd/$CGROUP_GROUP
CG_V2=/sys/fs/cgroup/unified/$CGROUP_GROUP
[[ -d /sys/fs/cgroup/unified ]] || CG_V2=/sys/fs/cgroup/$CGROUP_GROUP  # pure cgroup v2 host

log() { printf 'fleet: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

host_name() { printf 'fleet%d' "$1"; }
host_addr() { printf '%s.%d' "$NET" $((10 + $1)); }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

need_tools() {
    local missing=()
    for tool in systemd-nspawn debootstrap ssh ssh-keygen systemd-id128 mountpoint ip python3; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || die "missing ${missing[*]}: apt-get install systemd-container debootstrap openssh-client"
}

build_base() {
    need_root
    need_tools
    if [[ -f $BASE/.procmon-base-$BASE_VERSION ]]; then
        log "base rootfs cached at $BASE"
        return
    fi
    local tmp=$BASE.tmp
    rm -rf "$tmp" "$BASE"
    mkdir -p "$CACHE"
    log "debootstrap bookworm minbase into $tmp (about 1-2 minutes)"
    debootstrap --variant=minbase --include="$INCLUDE" bookworm "$tmp" http://deb.debian.org/debian \
        >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    # debootstrap copies the build host's identity; each host gets its own in `up`.
    rm -f "$tmp/etc/hostname" "$tmp"/etc/ssh/ssh_host_*
    : >"$tmp/etc/machine-id"
    cat >"$tmp/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    cat >"$tmp/etc/ssh/sshd_config.d/10-fleet.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
    # Nothing in a container needs these; they only slow boot or fail.
    for unit in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
        fstrim.timer man-db.timer getty@tty1.service; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
    done
    touch "$tmp/.procmon-base-$BASE_VERSION"
    mv "$tmp" "$BASE"
    log "base rootfs ready: $(du -sh "$BASE" | cut -f1)"
}

# Start a process in its own cgroup (v1 name=systemd and v2 hierarchies), then exec nspawn in it.
# Without this, every container shares the launcher's cgroup and stopping a unit in one container
# kills processes in another.
start_host() {
    local i=$1 name addr root
    name=$(host_name "$i")
    addr=$(host_addr "$i")
    root=$RUN/hosts/$name/root
    mkdir -p "$CG_V2/$name"
    [[ -d /sys/fs/cgroup/systemd ]] && mkdir -p "$CG_V1/$name"
    # shellcheck disable=SC2016
    setsid bash -c '
        name=$1; shift
        echo $$ > "'"$CG_V2"'/$name/cgroup.procs"
        if [[ -d "'"$CG_V1"'" ]]; then echo $$ > "'"$CG_V1"'/$name/cgroup.procs"; fi
        exec "$@"' _ "$name" \
        systemd-nspawn -D "$root" -M "$name" --hostname="$name" -b \
        --register=no --keep-unit --console=passive --resolv-conf=off --network-bridge="$BRIDGE" \
        --system-call-filter='bpf perf_event_open' \
        --capability=CAP_BPF,CAP_PERFMON \
        --bind=/sys/kernel/tracing --bind-ro=/sys/kernel/btf \
        </dev/null >"$RUN/hosts/$name/console.log" 2>&1 &
    echo $! >"$RUN/hosts/$name/nspawn.pid"
    log "started $name ($addr), nspawn pid $!"
}

prepare_host() {
    local i=$1 name addr dir root
    name=$(host_name "$i")
    addr=$(host_addr "$i")
    dir=$RUN/hosts/$name
    root=$dir/root
    mkdir -p "$dir/upper" "$dir/work" "$root"
    mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$dir/upper,workdir=$dir/work" "$root"
    echo "$name" >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n%s\t%s\n' "$addr" "$name" >"$root/etc/hosts"
    # Its only link: host0 on the bridge, a static address, no default route.
    printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
        "$addr" >"$root/etc/systemd/network/10-fleet.network"
    systemctl --root="$root" enable systemd-networkd.service >/dev/null 2>&1
    : >"$root/etc/resolv.conf"  # no name server is reachable; apt names hosts through its proxy
    printf 'Acquire::http::Proxy "http://%s:%d";\n' "$CONTROLLER" "$APT_PROXY_PORT" \
        >"$root/etc/apt/apt.conf.d/01fleet-proxy"
    systemd-id128 new >"$root/etc/machine-id"
    mkdir -p "$root/tmp/keys/etc/ssh"
    ssh-keygen -q -A -f "$root/tmp/keys"
    mv "$root"/tmp/keys/etc/ssh/ssh_host_* "$root/etc/ssh/"
    rm -rf "$root/tmp/keys"
    # Like container images: packages do not start their services on install; roles start them.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    install -d -m 0700 "$root/root/.ssh"
    install -m 0600 "$RUN/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
    # Known-hosts entry so the controller can verify the host key.
    printf '%s %s\n' "$addr" "$(cut -d' ' -f1,2 "$root/etc/ssh/ssh_host_ed25519_key.pub")" >>"$RUN/known_hosts"
}

ssh_host() {
    local addr=$1
    shift
    ssh -i "$RUN/id_ed25519" -o UserKnownHostsFile="$RUN/known_hosts" -o StrictHostKeyChecking=yes \
        -o BatchMode=yes -o ConnectTimeout=3 "root@$addr" "$@"
}

wait_ssh() {
    local i=$1 name addr deadline
    name=$(host_name "$i")
    addr=$(host_addr "$i")
    deadline=$((SECONDS + 120))
    until ssh_host "$addr" true 2>/dev/null; do
        kill -0 "$(cat "$RUN/hosts/$name/nspawn.pid")" 2>/dev/null || {
            tail -30 "$RUN/hosts/$name/console.log" >&2
            die "$name: nspawn exited"
        }
        ((SECONDS < deadline)) || { tail -30 "$RUN/hosts/$name/console.log" >&2; die "$name: no ssh after 120 s"; }
        sleep 0.5
    done
    # Wait for the boot to settle so that Ansible's systemd tasks do not race the boot job.
    ssh_host "$addr" 'systemctl is-system-running --wait >/dev/null 2>&1; true'
    log "$name: ssh up ($(ssh_host "$addr" systemctl is-system-running 2>/dev/null || true))"
}

write_inventory() {
    mkdir -p "$RUN/inventory"
    {
        echo "[procmon_agents]"
        for ((i = 1; i <= NHOSTS; i++)); do
            echo "$(host_name "$i") ansible_host=$(host_addr "$i")"
        done
        echo
        echo "[procmon_agents:vars]"
        echo "ansible_user=root"
        echo "ansible_python_interpreter=/usr/bin/python3"
        echo "ansible_ssh_private_key_file=$RUN/id_ed25519"
        echo "ansible_ssh_common_args='-o UserKnownHostsFile=$RUN/known_hosts -o StrictHostKeyChecking=yes'"
    } >"$RUN/inventory/hosts.ini"
}

fleet_up() {
    need_root
    need_tools
    build_base
    [[ ! -e $RUN/hosts ]] || fleet_down
    mkdir -p "$RUN/hosts"
    trap 'log "up failed: tearing down"; fleet_down' ERR
    trap 'log "interrupted: tearing down"; fleet_down; exit 130' INT TERM
    ssh-keygen -q -t ed25519 -N '' -C procmon-fleet -f "$RUN/id_ed25519" <<<y >/dev/null
    network_up
    : >"$RUN/known_hosts"
    for ((i = 1; i <= NHOSTS; i++)); do prepare_host "$i"; done
    for ((i = 1; i <= NHOSTS; i++)); do start_host "$i"; done
    for ((i = 1; i <= NHOSTS; i++)); do wait_ssh "$i"; done
    write_inventory
    trap - ERR INT TERM
    log "fleet up: inventory $RUN/inventory/hosts.ini"
}

# The bridge the hosts' veths join, and the apt proxy on it.
network_up() {
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$CONTROLLER/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    setsid python3 "$REPO/tests/system/fleet/apt_proxy.py" "$CONTROLLER" "$APT_PROXY_PORT" deb.debian.org \
        </dev/null >"$RUN/apt-proxy.log" 2>&1 &
    echo $! >"$RUN/apt-proxy.pid"
    local deadline=$((SECONDS + 10))
    until grep -q '^apt_proxy on' "$RUN/apt-proxy.log"; do
        kill -0 "$(cat "$RUN/apt-proxy.pid")" 2>/dev/null || { cat "$RUN/apt-proxy.log" >&2; die "apt proxy did not start"; }
        ((SECONDS < deadline)) || die "apt proxy did not start within 10 s"
        sleep 0.1
    done
}

network_down() {
    local pid
    if [[ -f $RUN/apt-proxy.pid ]]; then
        pid=$(cat "$RUN/apt-proxy.pid")
        # Only our proxy: the pid must still run apt_proxy.py.
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q apt_proxy.py; then kill "$pid" 2>/dev/null || true; fi
        rm -f "$RUN/apt-proxy.pid"
    fi
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
}

# Every pid in a cgroup subtree (both hierarchies).
cgroup_pids() {
    local d
    for d in "$CG_V2" "$CG_V1"; do
        [[ -d $d ]] || continue
        find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true
    done | sort -un
}

remove_cgroups() {
    local d
    for d in "$CG_V2" "$CG_V1"; do
        [[ -d $d ]] || continue
        # Deepest first; rmdir on a cgroup directory removes it (its files are virtual).
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        [[ ! -d $d ]] || log "warning: cgroup $d still exists"
    done
}

fleet_down() {
    trap - ERR INT TERM
    local pidfile pid deadline dir
    # 1. Ask each container to power off (SIGTERM to nspawn), then wait.
    for pidfile in "$RUN"/hosts/*/nspawn.pid; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 30))
    for pidfile in "$RUN"/hosts/*/nspawn.pid; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    done
    # 2. Whatever is left in the fleet's cgroups is killed.
    for _ in 1 2 3 4 5; do
        local pids
        pids=$(cgroup_pids)
        [[ -n $pids ]] || break
        log "killing leftover pids: $(echo "$pids" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.5
    done
    # 3. Unmount everything below each host root (nspawn's own mounts live in its mount namespace,
    #    but be thorough), then the overlay.
    for dir in "$RUN"/hosts/*/root; do
        [[ -d $dir ]] || continue
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        done < <(awk -v p="$dir" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts | sort -r)
    done
    remove_cgroups
    network_down
    rm -rf "$RUN/hosts" "$RUN/inventory" "$RUN/id_ed25519" "$RUN/id_ed25519.pub" "$RUN/known_hosts"
    log "fleet down"
}

fleet_status() {
    local i name addr
    for ((i = 1; i <= NHOSTS; i++)); do
        name=$(host_name "$i")
        addr=$(host_addr "$i")
        if [[ -f $RUN/hosts/$name/nspawn.pid ]] && kill -0 "$(cat "$RUN/hosts/$name/nspawn.pid")" 2>/dev/null; then
            printf '%s %s running ssh=%s\n' "$name" "$addr" "$(ssh_host "$addr" echo ok 2>/dev/null || echo no)"
        else
            printf '%s %s stopped\n' "$name" "$addr"
        fi
    done
}

case ${1:-} in
    base) build_base ;;
    up) fleet_up ;;
    down) fleet_down ;;
    status) fleet_status ;;
    *)
        echo "usage: $0 base|up|down|status" >&2
        exit 2
        ;;
esac
