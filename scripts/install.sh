#!/usr/bin/env bash
# Installs everything Ketch needs on a Debian machine, idempotently:
# system packages (when missing), uv, and the Python environment from uv.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(iproute2 iptables nftables util-linux curl openssl tcpdump iperf3 procps ca-certificates)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ketch install: missing system packages: ${missing[*]} (run as root, or install them with apt-get)" >&2
    exit 1
  fi
  echo "ketch install: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# netperf lives in Debian's non-free component; only the benchmark needs it.
if [ "${KETCH_WITH_BENCH:-0}" = 1 ] && ! command -v netperf >/dev/null; then
  if ! grep -rqs "non-free" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    echo "deb http://deb.debian.org/debian $codename non-free" >/etc/apt/sources.list.d/ketch-non-free.list
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq netperf >/dev/null
fi

if ! command -v uv >/dev/null; then
  echo "ketch install: installing uv"
  python3 -m pip install -q --root-user-action=ignore uv
fi
uv sync --frozen --quiet
if [ "$(id -u)" -eq 0 ] && [ -w /usr/local/bin ]; then
  ln -sf "$PWD/.venv/bin/ketch" /usr/local/bin/ketch
fi
