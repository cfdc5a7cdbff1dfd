#!/usr/bin/env bash
# Sets everything up and runs the agent on libvirt's embedded test driver
# (test:///default: no daemon needed) with the example hooks of examples/hooks.
# State and run dirs live under ./var so no root is needed; so does a lab PKI
# (var/pki, made once by `hookvisor pki init`): the agent serves mutual TLS on
# 127.0.0.1:54321 and its Unix socket var/run/hookvisor.sock. Extra arguments
# go to `hookvisor serve` (e.g. --libvirt-uri qemu:///system --listen 127.0.0.1:54322).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HOOKVISOR_STATE_DIR="$PWD/var/state" HOOKVISOR_RUN_DIR="$PWD/var/run"
mkdir -p "$HOOKVISOR_STATE_DIR" "$HOOKVISOR_RUN_DIR"
HV=.venv/bin/hookvisor
$HV pki init --dir var/pki >/dev/null
# Define the custom properties the example hooks read (engine-config syntax).
CVER=4.8
$HV config -s "UserDefinedVMProperties=numa=^(strict|preferred|interleave):[0-9,-]+\$;pincpu=^[0-9,^-]+\$;cantmigrate=^(true|false)\$" --cver=$CVER >/dev/null
$HV config -s "CustomDeviceProperties={type=interface;prop={extnet=^[a-zA-Z0-9_.-]+\$}}" --cver=$CVER >/dev/null
cat >&2 <<'HINT'
hookvisor: agent starting on test:///default with examples/hooks.
In another terminal, create a VM the example hooks change, then look at it:
  export HOOKVISOR_RUN_DIR=var/run HOOKVISOR_STATE_DIR=var/state
  .venv/bin/hookvisor vm create --name demo --mem 256 --prop numa=strict:0 --prop pincpu=0-1
  .venv/bin/hookvisor vm list
  .venv/bin/hookvisor hooks history
Over mutual TLS, as a remote client would:
  .venv/bin/hookvisor vm --agent 127.0.0.1:54321 --pki-dir var/pki list
HINT
if [ "$(id -u)" = 0 ] && ! setpriv --reuid=hookvisor --regid=hookvisor --init-groups \
        test -x examples/hooks/before_vm_start 2>/dev/null; then
    echo "hookvisor: warning: the hook user (hookvisor) cannot reach $PWD/examples/hooks;" \
         "as root, hooks run as that user: put the checkout where it can (not under /root)" >&2
fi
exec $HV serve --libvirt-uri test:///default --hooks-dir examples/hooks --cluster-version $CVER \
    --pki-dir var/pki "$@"
