#!/usr/bin/env bash
# Installs the Debian 12 packages harp-proxy builds against and tests with, if any is missing.
# The Swift 6 toolchain itself is not a Debian package: it must already be on PATH.
set -euo pipefail

packages=(
  libyaml-dev libcurl4-openssl-dev libssl-dev libpq-dev   # C libraries linked in
  etcd-server etcd-client                                 # the DCS the tests start
  postgresql-15 pgbouncer patroni                         # the servers the proxy routes to, and Patroni managing some
  socat openssl procps curl iproute2                      # test tooling: relays, certificates, HTTPS, network namespaces
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null 2>&1; then
  for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
    [ -x "$dir/swift" ] && export PATH="$dir:$PATH" && break
  done
fi
command -v swift >/dev/null 2>&1 || { echo "error: swift (6.0 or later) is not on PATH; install the Swift toolchain from swift.org" >&2; exit 1; }
