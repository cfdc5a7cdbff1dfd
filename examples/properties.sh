#!/bin/sh
# Defines the custom properties the example hooks read, in engine-config's
# syntax (setting a key replaces its whole value: all VM properties go in one -s).
#
#   examples/properties.sh [CLUSTER_VERSION]     default 4.8
#   HOOKVISOR=.venv/bin/hookvisor HOOKVISOR_STATE_DIR=var/state examples/properties.sh
#
# The regexes are a first filter; each hook checks its value more closely
# (e.g. that a range does not run backwards) and vetoes with a message if not.
set -eu
CVER=${1:-4.8}
HOOKVISOR=${HOOKVISOR:-hookvisor}

# numa=strict:0-1 (50_numa)   pincpu=1-4,^3,6 (50_pincpu)   cantmigrate=true (50_cantmigrate)
"$HOOKVISOR" config --cver="$CVER" -s \
    'UserDefinedVMProperties=numa=^(strict|preferred|interleave):[0-9,^-]+$;pincpu=^[0-9,^-]+$;cantmigrate=^(true|false)$'

# extnet=glitter on a vNIC (50_extnet)
"$HOOKVISOR" config --cver="$CVER" -s \
    'CustomDeviceProperties={type=interface;prop={extnet=^[a-zA-Z0-9_.-]+$}}'

"$HOOKVISOR" config -g UserDefinedVMProperties --cver="$CVER"
"$HOOKVISOR" config -g CustomDeviceProperties --cver="$CVER"
