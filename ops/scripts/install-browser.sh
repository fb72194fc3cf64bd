#!/usr/bin/env bash
# Idempotent: install Debian's Chromium for the headless UI tests (Playwright drives it
# with executable_path=/usr/lib/chromium/chromium). Never runs `playwright install`,
# which downloads browsers from the internet.
set -euo pipefail
BROWSER=/usr/lib/chromium/chromium
# In CI the UI tests must run: a browser that cannot be installed fails the build here,
# loudly, instead of letting the tests skip. Elsewhere the UI tests skip without it.
if [ -n "${CI:-}" ]; then MISSING=1; else MISSING=0; fi
if [ -x "$BROWSER" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: $BROWSER is missing and apt-get is not available;" \
         "install Chromium with your package manager (the UI tests skip without it)" >&2
    exit "$MISSING"
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-browser: not root and no sudo: run 'apt-get install -y chromium' as root" >&2
        exit "$MISSING"
    fi
fi
echo "install-browser: installing chromium (about 500 MB, once)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
if ! test -x "$BROWSER"; then
    echo "install-browser: apt-get finished but $BROWSER is missing" >&2
    exit 1
fi
echo "install-browser: $BROWSER ready"
