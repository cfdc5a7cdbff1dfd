#!/bin/sh
# Defines the custom properties the example hooks read, one `config --add` each:
# a property of that name is replaced, every other definition is kept.
#
#   examples/properties.sh [CLUSTER_VERSION]     default 4.8
#   HOOKVISOR=.venv/bin/hookvisor HOOKVISOR_STATE_DIR=var/state examples/properties.sh
#
# The regexes are a first filter; each hook checks its value more closely
# (e.g. that a range does not run backwards) and vetoes with a message if not.
set -eu
CVER=${1:-4.8}
HOOKVISOR=${HOOKVISOR:-hookvisor}

add() {
    "$HOOKVISOR" config --add "$1" --cver="$CVER"
}

# numa=strict:0-1 (50_numa)   pincpu=1-4,^3,6 (50_pincpu)   cantmigrate=true (50_cantmigrate)
add 'UserDefinedVMProperties=numa=^(strict|preferred|interleave):[0-9,^-]+$'
add 'UserDefinedVMProperties=pincpu=^[0-9,^-]+$'
add 'UserDefinedVMProperties=cantmigrate=^(true|false)$'
# extnet=glitter on a vNIC (50_extnet)
add 'CustomDeviceProperties={type=interface;prop={extnet=^[a-zA-Z0-9_.-]+$}}'

"$HOOKVISOR" config -g UserDefinedVMProperties --cver="$CVER"
"$HOOKVISOR" config -g CustomDeviceProperties --cver="$CVER"
