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

running() {
    virsh -c "$URI" version >/dev/null 2>&1
}

start() {
    if running; then
        echo "libvirtd: already running" >&2
        return 0
    fi
    configure
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
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
    pkill -x libvirtd || true
    pkill -x virtlogd || true
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) running && echo running || { echo stopped; exit 1; } ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
