#!/usr/bin/env bash
# Boot or stop the bcc test VM (Debian bookworm, its own 6.1 kernel) under qemu TCG.
#
#   tests/system/vm/vm.sh start IMAGE_DIR RUN_DIR [SSH_PORT]   boot, wait for SSH, print the port
#   tests/system/vm/vm.sh stop RUN_DIR                         kill qemu by its pid file
#
# KVM does not work on these machines (nested), hence software emulation. The disk is opened
# with -snapshot: the cached image stays pristine and every boot starts clean. SSH is
# forwarded from 127.0.0.1:SSH_PORT only; nothing listens on another address.
set -euo pipefail

stop() {
    local run=$1 pid
    [[ -f $run/qemu.pid ]] || return 0
    pid=$(cat "$run/qemu.pid")
    # Only our qemu: the pid file's process must still be a qemu started for this RUN_DIR.
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$run/qemu.pid"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$run/qemu.pid"
}

start() {
    local image=$1 run=$2 port=${3:-2222} timeout=${PROCMON_VM_BOOT_TIMEOUT:-240}
    [[ -f $image/.done ]] || { echo "vm: $image is not a built image (tests/system/vm/build-image.sh)" >&2; exit 1; }
    mkdir -p "$run"
    stop "$run"
    # Whatever goes wrong before SSH answers, qemu must not outlive this script.
    trap 'rc=$?; if [[ $rc != 0 ]]; then stop "$run"; fi' EXIT
    : >"$run/serial.log"
    qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp 2 -m 2048 \
        -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet" \
        -drive "file=$image/disk.raw,format=raw,if=virtio" -snapshot \
        -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=net0 \
        -display none -serial "file:$run/serial.log" \
        -daemonize -pidfile "$run/qemu.pid"
    local deadline=$((SECONDS + timeout))
    until ssh_vm "$image" "$port" true 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "vm: no SSH on 127.0.0.1:$port after ${timeout} s; serial log: $run/serial.log" >&2
            tail -5 "$run/serial.log" >&2
            exit 1
        fi
        kill -0 "$(cat "$run/qemu.pid")" 2>/dev/null || { echo "vm: qemu died; serial log: $run/serial.log" >&2; exit 1; }
        sleep 2
    done
    echo "$port"
}

ssh_vm() {
    local image=$1 port=$2
    shift 2
    ssh -q -i "$image/id_ed25519" -p "$port" -o BatchMode=yes -o ConnectTimeout=5 \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1 "$@"
}

case ${1:-} in
start) shift; start "$@" ;;
stop) shift; stop "$@" ;;
ssh) shift; ssh_vm "$@" ;;
*) echo "usage: $0 start IMAGE_DIR RUN_DIR [PORT] | stop RUN_DIR | ssh IMAGE_DIR PORT CMD..." >&2; exit 2 ;;
esac
