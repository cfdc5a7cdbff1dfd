#!/usr/bin/env bash
# Starts a system libvirtd with the QEMU driver, without systemd (idempotent).
# Needs root. Configuration per SPEC §5: QEMU runs as root, no security driver.
# Usage: scripts/libvirtd.sh start|stop|status
set -euo pipefail

URI=qemu:///system
SOCK=/run/libvirt/libvirt-sock

configure() {
    getent group kvm >/dev/null || groupadd -r kvm
    # Debian builds libvirt with libvirt-qemu:libvirt-qemu as its default owner and
    # resolves both names at start-up, before qemu.conf is applied.
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 || useradd -r -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/cache/libvirt
    local conf=/etc/libvirt/qemu.conf
    touch "$conf"
    # Our three settings win over any earlier ones: libvirt keeps the last value.
    if ! grep -q '^# hookvisor settings' "$conf"; then
        cat >>"$conf" <<'CONF'
# hookvisor settings
user = "root"
group = "root"
security_driver = "none"
CONF
    fi
}

# Our daemons by the pid files they write as root (-d: /run/NAME.pid), not by
# process name: pgrep/pkill need procps, which a minimal Debian lacks, and would
# also match a daemon of another root sharing the PID namespace (a chroot or
# container with its own /run), which start would then wait on and stop kill.
alive() {
    local pid
    pid=$(cat "/run/$1.pid" 2>/dev/null) && [ -n "$pid" ] &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

running() {
    virsh -c "$URI" version >/dev/null 2>&1
}

start() {
    if running; then
        echo "libvirtd: already running" >&2
        return 0
    fi
    configure
    alive virtlogd || virtlogd -d
    alive libvirtd || libvirtd -d
    for _ in $(seq 1 100); do
        if [ -S "$SOCK" ] && running; then
            echo "libvirtd: running ($URI)" >&2
            return 0
        fi
        sleep 0.1
    done
    echo "libvirtd: did not come up; see /var/log/libvirt" >&2
    return 1
}

stop() {
    local d pid
    for d in libvirtd virtlogd; do
        alive "$d" || continue
        pid=$(cat "/run/$d.pid")
        kill "$pid"
        for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    done
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) running && echo running || { echo stopped; exit 1; } ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
