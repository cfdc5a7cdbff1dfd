#!/usr/bin/env bash
# Sets up everything (Debian packages, venv, a running libvirtd) and runs the
# whole test suite: lint, types, then pytest including the qemu:///system tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ]; then
    bash scripts/libvirtd.sh start
    # The tiny bootable guest of SPEC §5 (cached after the first build).
    bash scripts/guest.sh build
else
    echo "test: not root, libvirtd not started; qemu:///system tests need it" >&2
fi
.venv/bin/ruff check hookvisor tests bench examples
.venv/bin/mypy
exec .venv/bin/pytest "$@"
