#!/bin/sh
# STAND-IN for tini (tests only), used where the test host has no tini-static to copy: it only
# drops tini's "--" and runs the command (no signal forwarding, no zombie reaping).
[ "$1" = "--" ] && shift
exec "$@"
