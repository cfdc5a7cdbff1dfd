#!/usr/bin/env bash
# Installs everything hookvisor needs on a fresh Debian machine (idempotent):
# Debian packages, then a venv in .venv with hookvisor and its dev tools.
# Usage: scripts/setup.sh [--no-libvirtd-packages] [--users-only]
set -euo pipefail
cd "$(dirname "$0")/.."

# The hook user (setting hook_user): hooks run as it, never as root (SPEC §1).
# No login shell, no home of its own. The API group (setting api_group): members
# may use the local socket. Both from the passwd package, present on every Debian.
create_users() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup: not root, not creating the hookvisor user and hookvisor-api group" >&2
        return 0
    fi
    getent group hookvisor-api >/dev/null || groupadd --system hookvisor-api
    if ! getent passwd hookvisor >/dev/null; then
        useradd --system --user-group --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "hookvisor hook scripts" hookvisor
    fi
}
create_users
for arg in "$@"; do
    [ "$arg" = --users-only ] && exit 0
done

# libvirt-dev + pkg-config + gcc: libvirt-python builds from source against them.
# The daemon packages are what the qemu:///system tests and bench need.
PKGS=(python3-venv python3-dev libvirt-dev pkg-config gcc libvirt-clients libvirt-daemon
      libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils
      # The tiny test guest (scripts/guest.sh): its initramfs and modules.dep.
      cpio kmod
      # The network tests' namespaces and veth pairs (`ip netns`, `ip link`, `sysctl`).
      iproute2 procps)
# systemd-analyze: the tests verify the shipped unit with it.
PKGS+=(systemd)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Reinstall only when pyproject changed since the last install.
stamp=.venv/.hookvisor-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi
echo "setup: ready (.venv/bin/hookvisor)" >&2
