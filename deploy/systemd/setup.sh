#!/bin/sh
# deploy/systemd/setup.sh — set up qmqtt-telemetry.service on a gateway (run as root; idempotent).
#
# Usage: setup.sh [--qhome DIR] [--q PATH] [--root DIR] [--no-systemctl]
#   --qhome DIR      QHOME written into a new /etc/qmqtt/qmqtt-telemetry.env (default: $QHOME)
#   --q PATH         the q binary (default: $QHOME/<platform>/q)
#   --root DIR       install under DIR instead of / (for tests; implies --no-systemctl, no user creation)
#   --no-systemctl   don't run systemctl daemon-reload
#
# Creates the system user and group `qmqtt` (no login, no home), /etc/qmqtt (root:qmqtt 0750),
# /etc/qmqtt/certs (qmqtt:qmqtt 0700; files in it 0600), installs the env file (kept when present) and the unit.
# Then: copy ca.pem, client.pem, client.key into /etc/qmqtt/certs, re-run this script (it fixes their modes),
# edit /etc/qmqtt/qmqtt-telemetry.env, and `systemctl enable --now qmqtt-telemetry`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root="" qhome=${QHOME:-} qbin="" systemctl=1
while [ $# -gt 0 ]; do
  case "$1" in
    --qhome) qhome=${2:?--qhome needs a directory}; shift 2 ;;
    --q) qbin=${2:?--q needs the path of the q binary}; shift 2 ;;
    --root) root=${2:?--root needs a directory}; systemctl=0; shift 2 ;;
    --no-systemctl) systemctl=0; shift ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "setup.sh: error: $*" >&2; exit 1; }
[ -n "$root" ] || [ "$(id -u)" = 0 ] || die "run as root (it creates a user and writes /etc): sudo $0 $*"
for f in qmqtt-telemetry.service qmqtt-telemetry.env; do
  [ -f "$here/$f" ] || die "$here/$f missing: run setup.sh from the unpacked qmqtt package or \$QHOME/qmqtt/systemd"
done

if [ -z "$root" ]; then
  if ! getent group qmqtt >/dev/null; then groupadd --system qmqtt; fi
  if ! getent passwd qmqtt >/dev/null; then
    useradd --system --gid qmqtt --no-create-home --home-dir /var/lib/qmqtt --shell /usr/sbin/nologin \
      --comment "qmqtt telemetry publisher" qmqtt
  fi
  owner=qmqtt group=qmqtt
else
  owner=$(id -u) group=$(id -g)
fi

etc="$root/etc/qmqtt"
install -d -m 0750 -o 0 -g "$group" "$etc" 2>/dev/null || install -d -m 0750 "$etc"
install -d -m 0700 -o "$owner" -g "$group" "$etc/certs"
# Certificates and keys: readable by qmqtt only.
find "$etc/certs" -mindepth 1 -maxdepth 1 -type f -exec chown "$owner:$group" {} + -exec chmod 0600 {} +

if [ ! -f "$etc/qmqtt-telemetry.env" ]; then
  tmp=$(mktemp)
  cp "$here/qmqtt-telemetry.env" "$tmp"
  if [ -n "$qhome" ]; then
    if [ -z "$qbin" ]; then
      case "$(uname -m)" in
        x86_64) plat=l64 ;; aarch64 | arm64) plat=l64arm ;; armv7* | armv8l | armhf) plat=l32arm ;; *) plat=l64 ;;
      esac
      qbin="$qhome/$plat/q"
    fi
    sed -i -e "s|^QHOME=.*|QHOME=$qhome|" -e "s|^QLIC=.*|QLIC=$qhome|" -e "s|^Q=.*|Q=$qbin|" "$tmp"
  fi
  install -m 0640 -o 0 -g "$group" "$tmp" "$etc/qmqtt-telemetry.env" 2>/dev/null ||
    install -m 0640 "$tmp" "$etc/qmqtt-telemetry.env"
  rm -f "$tmp"
  echo "setup.sh: wrote $etc/qmqtt-telemetry.env: set QMQTT_URL and the certificate paths there"
else
  echo "setup.sh: kept existing $etc/qmqtt-telemetry.env"
fi

unitdir="$root/etc/systemd/system"
install -d -m 0755 "$unitdir"
install -m 0644 "$here/qmqtt-telemetry.service" "$unitdir/qmqtt-telemetry.service"
if [ "$systemctl" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "setup.sh: installed $unitdir/qmqtt-telemetry.service"
echo "next: put ca.pem, client.pem, client.key in $etc/certs, re-run $0 to fix their modes, then:"
echo "  systemctl enable --now qmqtt-telemetry && journalctl -fu qmqtt-telemetry"
