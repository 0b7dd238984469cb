#!/bin/sh
# The container's entrypoint (docker/README.md). It makes sure the keys exist, then either
# runs the command it is given (`docker run IMAGE stepgate users show alice`) or, with no
# command, starts the demo API and serves docker/config.yaml in front of it.
#
# The image's layout is this folder's parent: /app/docker (this script, config.yaml),
# /app/policies, /app/demo, and the state volume /app/data. The same layout copied to any
# folder runs the same way outside a container.
#
#   STEPGATE_CONFIG         configuration (default: config.yaml beside this script)
#   STEPGATE_LISTEN         host:port to serve on (default: 0.0.0.0:8080)
#   STEPGATE_DEMO_UPSTREAM  host:port of the demo API started beside the gateway
#                           (default: 127.0.0.1:9000; empty: none, for a real upstream)
#   STEPGATE_KEYS, STEPGATE_DATA_KEYS, STEPGATE_ADMIN_KEY
#                           keys; a key whose variable is set is not written to a file
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
config=${STEPGATE_CONFIG:-$here/config.yaml}
data=$(dirname -- "$here")/data  # docker/config.yaml's ../data
listen=${STEPGATE_LISTEN:-0.0.0.0:8080}
demo_upstream=${STEPGATE_DEMO_UPSTREAM-127.0.0.1:9000}
export STEPGATE_CONFIG="$config"

# A key file is written once, on the first start, and kept in the volume from then on:
# a new data key would make every enrolled TOTP secret unreadable.
umask 077
mkdir -p "$data"
new_key() {  # new_key FILE NAME: the value of NAME=... that 'stepgate keys generate' prints
    [ ! -s "$1" ] || return 0
    generated=$(stepgate keys generate 2>"$1.err") || {
        cat "$1.err" >&2; rm -f "$1.err"
        echo "entrypoint: could not generate $1" >&2; exit 1
    }
    rm -f "$1.err"
    printf '%s\n' "$generated" | sed -n "s/^$2=//p" > "$1.new"
    mv "$1.new" "$1"
    echo "entrypoint: wrote a new key to $1" >&2
}
[ -n "${STEPGATE_KEYS:-}" ] || new_key "$data/signing.keys" STEPGATE_KEYS
[ -n "${STEPGATE_DATA_KEYS:-}" ] || new_key "$data/data.keys" STEPGATE_DATA_KEYS
# The admin API's bearer key: any 24 or more random characters; a signing key will do.
[ -n "${STEPGATE_ADMIN_KEY:-}" ] || new_key "$data/admin.key" STEPGATE_KEYS


if [ "$#" -gt 0 ]; then
    exec "$@"
fi

if [ -z "$demo_upstream" ]; then
    exec stepgate run --config "$config" --listen "$listen"
fi

stepgate demo-upstream --listen "$demo_upstream" &
upstream=$!
stepgate run --config "$config" --listen "$listen" &
gateway=$!
# As PID 1 in a container the shell must pass the stop signal on itself.
trap 'kill -TERM "$gateway" 2>/dev/null || true' INT TERM
status=0
wait "$gateway" || status=$?
if kill -0 "$gateway" 2>/dev/null; then
    # woken by the signal: wait for the gateway's own shutdown
    status=0
    wait "$gateway" || status=$?
fi
kill -TERM "$upstream" 2>/dev/null || true
wait "$upstream" 2>/dev/null || true
exit "$status"
