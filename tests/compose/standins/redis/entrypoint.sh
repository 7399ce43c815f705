#!/bin/sh
# Like the official image: `redis-server ...` listens on every interface without protected mode.
set -eu
if [ "$1" = redis-server ]; then
    shift
    exec redis-server --bind '* -::*' --protected-mode no "$@"
fi
exec "$@"
