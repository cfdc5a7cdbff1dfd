#!/usr/bin/env bash
# A second, independent libvirt "host" on this machine (SPEC §5), for migration
# tests: a libvirtd in its own mount namespace with its own /run/libvirt (tmpfs),
# /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /etc/libvirt (bind
# mounts of private dirs), its own host UUID, listening on 127.0.0.1:PORT.
# Needs root and the main libvirtd's packages (scripts/setup.sh); the main
# libvirtd (scripts/libvirtd.sh) is left alone.
#   start   idempotent; prints the URI (qemu+tcp://127.0.0.1:PORT/system), also in DIR/uri
#   stop    destroys its domains, stops it (pid file)
#   status  prints the URI and exits 0 if it answers, else "stopped" and 1
# DIR: $HOOKVISOR_LIBVIRTD2_DIR, else var/libvirtd2 (relative to the repo).
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
# -m: the dir (and var/) may not exist yet on a fresh checkout.
DIR=$(readlink -m "${HOOKVISOR_LIBVIRTD2_DIR:-var/libvirtd2}")
PIDFILE=$DIR/libvirtd.pid

alive() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) && [ -n "$pid" ] &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = libvirtd ]
}

uri() { cat "$DIR/uri" 2>/dev/null; }

answers() {
    local u
    u=$(uri) && [ -n "$u" ] && virsh -c "$u" version >/dev/null 2>&1
}

# The port of the last start if it is still free (a restarted host keeps its
# URI), else any free one.
pick_port() {
    python3 - "$(cat "$DIR/port" 2>/dev/null || echo 0)" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    s = socket.socket()
    # As libvirtd binds: its last connections' TIME_WAIT do not block the port.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1])
    break
PY
}

configure() {
    local port=$1 etc=$DIR/etc
    mkdir -p "$DIR"/{lib,cache,log/qemu,sock}
    # The main host's config minus its domains and pools: this host starts empty.
    rm -rf "$etc"
    mkdir -p "$etc"
    (cd /etc/libvirt && tar --exclude=./qemu --exclude=./storage -cf - .) | tar -C "$etc" -xf -
    mkdir -p "$etc/qemu"
    # QEMU's probed capabilities, valid for the same binaries: start-up 0.2 s, not
    # 8 s. Only what this host lacks: once it has probed for itself (libvirt
    # re-probes when it judges a copy stale), its own cache is kept.
    if [ -d /var/cache/libvirt/qemu/capabilities ]; then
        mkdir -p "$DIR/cache/qemu/capabilities"
        cp -an /var/cache/libvirt/qemu/capabilities/. "$DIR/cache/qemu/capabilities/"
    fi
    # One UUID for the life of DIR: a restarted host 2 is the same host.
    [ -s "$DIR/host_uuid" ] || cat /proc/sys/kernel/random/uuid >"$DIR/host_uuid"
    cat >"$etc/libvirtd.conf" <<CONF
# hookvisor's second libvirt host (scripts/libvirtd2.sh)
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$port"
auth_tcp = "none"
unix_sock_dir = "$DIR/sock"
host_uuid = "$(cat "$DIR/host_uuid")"
log_outputs = "3:file:$DIR/log/libvirtd.log"
CONF
    # Later values win: ours override whatever the main host's qemu.conf says.
    [ -f /etc/libvirt/qemu.conf ] && cp /etc/libvirt/qemu.conf "$etc/qemu.conf"
    cat >>"$etc/qemu.conf" <<'CONF'
# hookvisor's second libvirt host: QEMU as root, no security driver, and QEMU's
# output straight to files (no virtlogd: the main host's is in another namespace)
user = "root"
group = "root"
security_driver = "none"
stdio_handler = "file"
CONF
}

start() {
    [ "$(id -u)" = 0 ] || { echo "libvirtd2: needs root" >&2; return 1; }
    if alive && answers; then
        echo "libvirtd2: already running" >&2
        uri
        return 0
    fi
    if alive; then
        # Running but not answering: a stale instance; replace it.
        stop
    fi
    mkdir -p "$DIR"
    local port
    port=$(pick_port)
    echo "$port" >"$DIR/port"
    configure "$port"
    rm -f "$PIDFILE"
    # The mounts live and die with the daemon's private mount namespace; the
    # host's own /run/libvirt, /var/lib/libvirt, ... are untouched.
    # taskset -c 0: under this machine's PVM-based KVM the host CPUID libvirt
    # probes (leaf 0x1f: the current CPU's x2APIC id) depends on the CPU it runs
    # on, and a different one invalidates the capabilities cache (8 s of probing
    # instead of 0.2 s). QEMU does not inherit the pinning: libvirt gives each
    # guest all host CPUs unless its XML says otherwise.
    unshare --mount --propagation private -- /bin/sh -c '
        set -e
        d=$1
        mount -t tmpfs -o mode=755 tmpfs /run/libvirt
        mount --bind "$d/lib" /var/lib/libvirt
        mount --bind "$d/cache" /var/cache/libvirt
        mount --bind "$d/log" /var/log/libvirt
        mount --bind "$d/etc" /etc/libvirt
        exec taskset -c 0 libvirtd -d --listen --config "$d/etc/libvirtd.conf" --pid-file "$d/libvirtd.pid"
    ' libvirtd2 "$DIR" </dev/null >"$DIR/libvirtd.out" 2>&1
    echo "qemu+tcp://127.0.0.1:$port/system" >"$DIR/uri"
    for _ in $(seq 1 200); do
        if alive && answers; then
            echo "libvirtd2: running ($(uri))" >&2
            uri
            return 0
        fi
        sleep 0.05
    done
    echo "libvirtd2: did not come up; see $DIR/libvirtd.out and $DIR/log" >&2
    return 1
}

stop() {
    local pid name u
    if answers; then
        u=$(uri)
        # Guests outlive libvirtd; in a namespace nobody else sees they would be lost.
        for name in $(virsh -c "$u" list --name 2>/dev/null); do
            virsh -c "$u" destroy "$name" >/dev/null 2>&1 || true
        done
    fi
    if alive; then
        pid=$(cat "$PIDFILE")
        kill "$pid"
        for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.05; done
        [ -d "/proc/$pid" ] && kill -9 "$pid"
    fi
    rm -f "$PIDFILE"
    echo "libvirtd2: stopped" >&2
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) if alive && answers; then uri; else echo stopped; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
