#!/usr/bin/env bash
# Runs every benchmark side by side with its baseline. Each prints its ratio on
# its last line; the last line of this script is the worst of them.
# Needs a set-up venv (scripts/setup.sh); the qemu:///system part of the API
# benchmark needs a running libvirtd (scripts/libvirtd.sh start, as root); the network
# benchmark needs root (it makes a network namespace of its own); the migration
# benchmark needs root and starts the second libvirt host (scripts/libvirtd2.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null 2>&1 || bash scripts/setup.sh
# This checkout's code, also from a git worktree (the venv's editable install
# points at the checkout that ran setup.sh).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=$(mktemp); trap 'rm -f "$out"' EXIT
worst=0
for b in bench/hook_runner.py bench/api.py bench/network.py bench/migration.py; do
    echo "== $b"
    .venv/bin/python "$b" | tee "$out"
    ratio=$(tail -n 1 "$out" | sed -n 's/.*=\([0-9.]*\)$/\1/p')
    worst=$(python3 -c "print(max($worst, ${ratio:-0}))")
done
echo "worst_ratio=$worst"
