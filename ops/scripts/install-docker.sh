#!/usr/bin/env bash
# Idempotent: install Debian's Docker engine (docker.io) and debootstrap for `make images`
# and tests/containers. The engine is never started here: orders-images runs a private
# dockerd of its own under <repo>/.docker/ and stops it by PID.
# Waits for another apt/dpkg run to finish (DPkg::Lock::Timeout) instead of failing.
set -euo pipefail
# In CI the container tests must run: an engine that cannot be installed fails here,
# loudly. Elsewhere tests/containers skip without it.
if [ -n "${CI:-}" ]; then MISSING=1; else MISSING=0; fi
NEED=()
command -v dockerd >/dev/null 2>&1 || NEED+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || NEED+=(debootstrap)
if [ "${#NEED[@]}" -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-docker: ${NEED[*]} missing and apt-get is not available;" \
         "install them with your package manager (tests/containers skip without them)" >&2
    exit "$MISSING"
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-docker: ${NEED[*]} missing and not root: run" \
         "'apt-get install -y ${NEED[*]}' as root (a private dockerd needs root too)" >&2
    exit "$MISSING"
fi
echo "install-docker: installing ${NEED[*]} (about 40 s, once)"
APT=(apt-get -o DPkg::Lock::Timeout=600 -qq)
"${APT[@]}" update
DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${NEED[@]}" >/dev/null
for tool in dockerd debootstrap; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-docker: apt-get finished but $tool is missing" >&2
        exit 1
    fi
done
echo "install-docker: $(dockerd --version)"
