#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine: installs the system packages the
# project needs (when missing), then runs a Makefile target, e.g. `./run.sh serve`, `./run.sh test`.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v make >/dev/null || missing+=(make)
# Paddle's CPU wheel links OpenMP; slim Debian/Ubuntu images don't ship it.
ldconfig -p 2>/dev/null | grep 'libgomp\.so\.1' >/dev/null || missing+=(libgomp1)
probe=$(mktemp -d); python3 -m venv "$probe" >/dev/null 2>&1 || missing+=(python3-venv); rm -rf "$probe"
if [ "${1:-}" = test ]; then
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)  # runs the compose proxy's config
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
exec make "$@"
