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

# netperf lives in Debian's non-free component; only the benchmark needs it. We add that
# component for the machine's own Debian mirror: the URI and Signed-By are copied from the
# existing apt source of this release (deb822 or one-line format), never written here, and
# apt refuses "conflicting values" unless Signed-By matches. "non-free-firmware" (enabled on
# many bookworm hosts) does not count as non-free.
debian_source_for() { # codename -> "URI<TAB>SIGNED-BY" of the source serving that suite
  local codename=$1 f root=${APT_ROOT:-}
  for f in "$root"/etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$codename" '
      function flush() { if (ok && uri != "") { print uri "\t" sb; found = 1; exit } ok = 0; uri = ""; sb = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/ { uri = $2 }
      /^Signed-By:/ { sb = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
      END { if (!found) flush() }' "$f" | head -n 1
  done
  for f in "$root"/etc/apt/sources.list "$root"/etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -nE "s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+$codename[[:space:]].*/\2\t/p" "$f" | head -n 1
  done
}
if [ "${KETCH_WITH_BENCH:-0}" = 1 ] && ! command -v netperf >/dev/null; then
  apt_dir=/etc/apt/sources.list.d
  rm -f "$apt_dir/ketch-non-free.list" # written by earlier versions of this script
  if ! grep -rqsE --include='*.list' --include='*.sources' --include=sources.list \
    '^[^#]*non-free([[:space:]]|$)' /etc/apt/sources.list "$apt_dir"; then
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    source_line=$(debian_source_for "$codename" | head -n 1)
    if [ -z "$source_line" ]; then
      echo "ketch install: no apt source for Debian $codename found; enable the non-free" \
        "component for it and install netperf (apt-get install netperf)" >&2
      exit 1
    fi
    uri=${source_line%%$'\t'*}
    signed_by=${source_line#*$'\t'}
    {
      echo "Types: deb"
      echo "URIs: $uri"
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

# The global `ketch` (/usr/local/bin/ketch, as root) is a link to one clone's .venv. It is
# created when missing and kept when it already points here; one pointing at another clone
# is left alone (say so) unless KETCH_LINK_GLOBAL=1 asks to repoint it. Never silently.
link_global_ketch() { # target link
  local target=$1 link=$2 current
  if [ -L "$link" ]; then
    current=$(readlink "$link")
    if [ "$current" = "$target" ]; then
      echo "ketch install: $link already runs this clone ($target)"
      return 0
    fi
    if [ "${KETCH_LINK_GLOBAL:-0}" = 1 ]; then
      ln -sfn "$target" "$link"
      echo "ketch install: $link now runs this clone ($target); it ran $current before"
      return 0
    fi
    echo "ketch install: $link runs another clone ($current), left as it is; run this" \
      "clone's ketch as $target, or repoint the global one with KETCH_LINK_GLOBAL=1 $0"
    return 0
  fi
  if [ -e "$link" ]; then
    echo "ketch install: $link exists and is not a link Ketch made, left as it is; run this" \
      "clone's ketch as $target"
    return 0
  fi
  ln -s "$target" "$link"
  echo "ketch install: $link -> $target (this clone)"
}
global_bin=${KETCH_GLOBAL_BIN:-/usr/local/bin}
if [ "$(id -u)" -eq 0 ] && [ -w "$global_bin" ]; then
  link_global_ketch "$PWD/.venv/bin/ketch" "$global_bin/ketch"
fi
