#!/bin/sh
# Installs promtool (Debian package `prometheus`) for the /metrics exposition
# test (api/tests/metrics.rs), which fails when POLLD_REQUIRE_PROMTOOL=1 and
# promtool is missing. Idempotent; needs root (CI runs as root).
set -eu
if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: promtool is all we need, not the server's web UI.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool
