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
# The source entry we add must carry the same Signed-By as the system's entry for
# deb.debian.org (apt refuses "conflicting values" otherwise), and "non-free-firmware"
# (enabled on many bookworm hosts) does not count as non-free.
if [ "${KETCH_WITH_BENCH:-0}" = 1 ] && ! command -v netperf >/dev/null; then
  apt_dir=/etc/apt/sources.list.d
  rm -f "$apt_dir/ketch-non-free.list" # written by earlier versions of this script
  if ! grep -rqsE --include='*.list' --include='*.sources' --include=sources.list \
    '^[^#]*non-free([[:space:]]|$)' /etc/apt/sources.list "$apt_dir"; then
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    signed_by=$(grep -hsE '^Signed-By:' "$apt_dir"/*.sources | head -n 1 | awk '{print $2}')
    {
      echo "Types: deb"
      echo "URIs: http://deb.debian.org/debian"
      echo "Suites: $codename"
      echo "Components: non-free"
      if [ -n "$signed_by" ]; then echo "Signed-By: $signed_by"; fi
    } >"$apt_dir/ketch-non-free.sources"
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
