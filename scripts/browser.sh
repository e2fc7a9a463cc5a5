#!/usr/bin/env bash
# The dashboard's browser test drives Debian's Chromium; install it once if it is missing.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "chromium is missing: install it (apt-get install chromium) to run the browser tests" >&2
  exit 0
fi
echo "installing chromium for the dashboard's browser test"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
