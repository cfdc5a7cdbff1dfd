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
#
# In a network namespace ($HOOKVISOR_LIBVIRTD2_NETNS=NS, made by `ip netns add`):
# the daemon runs under `ip netns exec NS`, so its guests' tap devices are made
# in NS and join NS's bridges; it listens on no TCP port (127.0.0.1 there is not
# the host's) but on its Unix socket, which the host reaches (a Unix socket is a
# file: reachable across network namespaces). The URI is then
# qemu+unix:///system?socket=SOCKDIR/libvirt-sock.
# SOCKDIR: $HOOKVISOR_LIBVIRTD2_SOCK, else DIR/sock (a socket path holds at most
# 107 bytes: give a short one when DIR is deep).
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
# -m: the dir (and var/) may not exist yet on a fresh checkout.
DIR=$(readlink -m "${HOOKVISOR_LIBVIRTD2_DIR:-var/libvirtd2}")
PIDFILE=$DIR/libvirtd.pid
NETNS=${HOOKVISOR_LIBVIRTD2_NETNS:-}
SOCK=${HOOKVISOR_LIBVIRTD2_SOCK:-$DIR/sock}
# Each netns host gets a fresh DIR (a test's), and the main host's capabilities do
# not fit a daemon pinned to CPU 0 (8 s of probing): the first netns host's probe
# is kept here for the next ones (valid in any namespace, checked).
NETNS_CAPS=${HOOKVISOR_LIBVIRTD2_NETNS_CAPS:-var/libvirtd-netns-caps}

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
    mkdir -p "$DIR"/{lib,cache,log/qemu} "$SOCK"
    # The main host's config minus its domains and pools: this host starts empty.
    rm -rf "$etc"
    mkdir -p "$etc"
    (cd /etc/libvirt && tar --exclude=./qemu --exclude=./storage -cf - .) | tar -C "$etc" -xf -
    mkdir -p "$etc/qemu"
    # QEMU's probed capabilities, valid for the same binaries: start-up 0.2 s, not
    # 8 s. Only what this host lacks: once it has probed for itself (libvirt
    # re-probes when it judges a copy stale), its own cache is kept.
    local from
    for from in ${NETNS:+"$NETNS_CAPS"} /var/cache/libvirt/qemu/capabilities; do
        if [ -d "$from" ]; then
            mkdir -p "$DIR/cache/qemu/capabilities"
            cp -an "$from/." "$DIR/cache/qemu/capabilities/"
        fi
    done
    # One UUID for the life of DIR: a restarted host 2 is the same host.
    [ -s "$DIR/host_uuid" ] || cat /proc/sys/kernel/random/uuid >"$DIR/host_uuid"
    local listen
    if [ -n "$NETNS" ]; then
        listen='listen_tcp = 0'
    else
        listen="listen_tcp = 1
listen_addr = \"127.0.0.1\"
tcp_port = \"$port\"
auth_tcp = \"none\""
    fi
    cat >"$etc/libvirtd.conf" <<CONF
# hookvisor's second libvirt host (scripts/libvirtd2.sh)
listen_tls = 0
$listen
unix_sock_dir = "$SOCK"
# Root only (0700), as the main host's qemu:///system: no polkit in between.
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
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
    local port=0 wrap=() listen=(--listen)
    if [ -n "$NETNS" ]; then
        [ -e "/run/netns/$NETNS" ] || { echo "libvirtd2: no network namespace $NETNS" >&2; return 1; }
        # ip netns exec also mounts a sysfs of NS's own (its /sys/class/net).
        wrap=(ip netns exec "$NETNS")
        listen=()
    else
        port=$(pick_port)
        echo "$port" >"$DIR/port"
    fi
    configure "$port"
    rm -f "$PIDFILE"
    # The mounts live and die with the daemon's private mount namespace; the
    # host's own /run/libvirt, /var/lib/libvirt, ... are untouched.
    # taskset -c 0: under this machine's PVM-based KVM the host CPUID libvirt
    # probes (leaf 0x1f: the current CPU's x2APIC id) depends on the CPU it runs
    # on, and a different one invalidates the capabilities cache (8 s of probing
    # instead of 0.2 s). QEMU does not inherit the pinning: libvirt gives each
    # guest all host CPUs unless its XML says otherwise.
    if ! "${wrap[@]}" unshare --mount --propagation private -- /bin/sh -c '
        set -e
        d=$1; shift
        mount -t tmpfs -o mode=755 tmpfs /run/libvirt
        mount --bind "$d/lib" /var/lib/libvirt
        mount --bind "$d/cache" /var/cache/libvirt
        mount --bind "$d/log" /var/log/libvirt
        mount --bind "$d/etc" /etc/libvirt
        exec taskset -c 0 libvirtd -d "$@" --config "$d/etc/libvirtd.conf" --pid-file "$d/libvirtd.pid"
    ' libvirtd2 "$DIR" "${listen[@]}" </dev/null >"$DIR/libvirtd.out" 2>&1; then
        echo "libvirtd2: could not start: $(tail -n 20 "$DIR/libvirtd.out")" >&2
        return 1
    fi
    if [ -n "$NETNS" ]; then
        echo "qemu+unix:///system?socket=$SOCK/libvirt-sock" >"$DIR/uri"
    else
        echo "qemu+tcp://127.0.0.1:$port/system" >"$DIR/uri"
    fi
    for _ in $(seq 1 200); do
        if alive && answers; then
            if [ -n "$NETNS" ]; then
                # Probed by now (it answers after): kept for the next netns host.
                mkdir -p "$NETNS_CAPS"
                local keep
                keep=$(mktemp -d "$NETNS_CAPS.XXXXXX")
                cp -a "$DIR/cache/qemu/capabilities/." "$keep/"
                rm -rf "$NETNS_CAPS" && mv "$keep" "$NETNS_CAPS"
            fi
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
