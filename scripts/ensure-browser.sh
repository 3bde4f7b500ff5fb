#!/usr/bin/env bash
# Make sure Debian's Chromium is on the machine for the dashboard's browser tests
# (Playwright drives /usr/bin/chromium; no browser download). When it is missing and
# we are root with apt-get, install it; otherwise say what to do and fail.
# Usage: scripts/ensure-browser.sh [command ...]  - then runs the command, if any.
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-browser: installing Chromium (apt-get install chromium)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium fonts-dejavu-core >/dev/null
  else
    echo "ensure-browser: /usr/bin/chromium not found; install Debian's chromium package" >&2
    exit 1
  fi
fi

if [ "$#" -gt 0 ]; then
  exec "$@"
fi
