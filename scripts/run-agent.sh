#!/usr/bin/env bash
# Sets everything up and runs the agent on libvirt's embedded test driver
# (test:///default: no daemon needed) with the example hooks of examples/hooks.
# State and run dirs live under ./var so no root is needed; so does a lab PKI
# (var/pki, made once by `hookvisor pki init`) and the config file
# var/hookvisor.toml the clients share: the agent serves mutual TLS on
# 127.0.0.1:54321 and its Unix socket var/run/hookvisor.sock. Extra arguments
# go to `hookvisor serve` (e.g. --libvirt-uri qemu:///system --listen 127.0.0.1:54322).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One config file for the agent and every client command: the README has
# `export HOOKVISOR_CONFIG=$PWD/var/hookvisor.toml`, so `hookvisor hooks list`,
# `config -s` and `vm` read the same dirs this agent uses. Written afresh each
# start (it is this script's, not the operator's); --listen in "$@" is honoured.
LISTEN=${HOOKVISOR_DEMO_LISTEN:-127.0.0.1:54321}  # tests/test_readme.py picks a free port
prev=""
for arg in "$@"; do
    case "$prev" in --listen) LISTEN="$arg" ;; esac
    case "$arg" in --listen=*) LISTEN="${arg#--listen=}" ;; esac
    prev="$arg"
done
CVER=4.8
mkdir -p var/state var/run
export HOOKVISOR_CONFIG="$PWD/var/hookvisor.toml"
cat >"$HOOKVISOR_CONFIG" <<CONF
# Written by scripts/run-agent.sh: the demo agent's dirs, for it and its clients.
libvirt_uri = "test:///default"
listen = "$LISTEN"
hooks_dir = "$PWD/examples/hooks"
state_dir = "$PWD/var/state"
run_dir = "$PWD/var/run"
pki_dir = "$PWD/var/pki"
cluster_version = "$CVER"
CONF
HV=.venv/bin/hookvisor
$HV pki init --dir var/pki >/dev/null
# The custom properties the example hooks read (engine-config syntax), added
# only where missing: what an author defined stays as it is.
$HV config --add 'UserDefinedVMProperties=numa=^(strict|preferred|interleave):[0-9,^-]+$' \
    --if-missing --cver=$CVER >/dev/null
$HV config --add 'UserDefinedVMProperties=pincpu=^[0-9,^-]+$' --if-missing --cver=$CVER >/dev/null
$HV config --add 'UserDefinedVMProperties=cantmigrate=^(true|false)$' --if-missing \
    --cver=$CVER >/dev/null
$HV config --add 'CustomDeviceProperties={type=interface;prop={extnet=^[a-zA-Z0-9_.-]+$}}' \
    --if-missing --cver=$CVER >/dev/null
if [ -z "$LISTEN" ]; then tls="(no TCP listener: --listen '')"; else
    tls=".venv/bin/hookvisor vm --agent $LISTEN --pki-dir var/pki list"; fi
cat >&2 <<HINT
hookvisor: agent starting on test:///default with examples/hooks.
In another terminal, in $PWD, create a VM the example hooks change, then look at it:
  export HOOKVISOR_CONFIG=\$PWD/var/hookvisor.toml PATH=\$PWD/.venv/bin:\$PATH
  hookvisor vm create --name demo --mem 256 --prop numa=strict:0 --prop pincpu=0-1
  hookvisor vm list
  hookvisor hooks history
Over mutual TLS, as a remote client would:
  $tls
HINT
if [ "$(id -u)" = 0 ] && ! setpriv --reuid=hookvisor --regid=hookvisor --init-groups \
        test -x examples/hooks/before_vm_start 2>/dev/null; then
    echo "hookvisor: warning: the hook user (hookvisor) cannot reach $PWD/examples/hooks;" \
         "as root, hooks run as that user: put the checkout where it can (not under /root)" >&2
fi
exec $HV serve "$@"
