#!/bin/sh
# install.sh — install (or remove) qmqtt from an unpacked release tarball.
#
#   tar xzf qmqtt-<version>-<target>.tar.gz && ./qmqtt-<version>-<target>/install.sh
#
# Installs into $QHOME:  <platform>/mqttkdb.so   (platform: l64, l64arm or l32arm; also as mqttkdb_ssl.so)
#                        mqtt.q                  (the .mqtt namespace; loads the library with 2:)
#                        qmqtt/examples/*        (example q scripts)
#                        qmqtt/systemd/*         (qmqtt-telemetry.service, its env file, setup.sh)
#                        qmqtt/install.sh, qmqtt/MANIFEST   (this script and what it installed, for --uninstall)
# and the `qmqtt` command into a bin directory. Files it replaces (e.g. KX's mqtt.q and mqttkdb.so) are kept in
# $QHOME/qmqtt/backup/ and put back by --uninstall.
#
# Options:
#   --prefix DIR        bin directory for `qmqtt` (default: /usr/local/bin as root, else $HOME/.local/bin)
#   --force-platform    install even when the package's platform is not this machine's (testing only)
#   --uninstall         remove what a previous install recorded in $QHOME/qmqtt/MANIFEST
#   -h, --help          this text
set -eu

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}
here=$(cd "$(dirname "$0")" && pwd)
prefix="" force=0 uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --force-platform) force=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[ -n "${QHOME:-}" ] || die "QHOME is not set: export QHOME=<your q directory> (the one holding q.k and l64/ or l64arm/ or l32arm/) and run again"
[ -d "$QHOME" ] || die "QHOME=$QHOME is not a directory: create it or point QHOME at your q installation"
QHOME=$(cd "$QHOME" && pwd)
state="$QHOME/qmqtt"
manifest="$state/MANIFEST"

# ---- uninstall ------------------------------------------------------------------------------------------
if [ "$uninstall" = 1 ]; then
  [ -f "$manifest" ] || die "nothing to uninstall: $manifest not found (was qmqtt installed with QHOME=$QHOME?)"
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    case "$f" in
      /*) rm -f "$f" ;;
      *) echo "install.sh: skipping odd MANIFEST line '$f'" >&2 ;;
    esac
  done <"$manifest"
  # Put back what the install replaced.
  if [ -d "$state/backup" ]; then
    (cd "$state/backup" && find . -type f) | while IFS= read -r b; do
      b=${b#./}
      mkdir -p "$(dirname "$QHOME/$b")"
      mv -f "$state/backup/$b" "$QHOME/$b"
      echo "install.sh: restored $QHOME/$b"
    done
  fi
  rm -f "$manifest"
  # Platform directories only when empty (a real q installation keeps its q binary there).
  for p in l64 l64arm l32arm; do rmdir "$QHOME/$p" 2>/dev/null || true; done
  rm -rf "$state/backup" "$state/examples" "$state/systemd"
  rmdir "$state" 2>/dev/null || echo "install.sh: left $state (it holds files qmqtt did not install)"
  echo "install.sh: qmqtt uninstalled from $QHOME"
  exit 0
fi

# ---- what this package is, and what this machine is -----------------------------------------------------
pkgplat=""
for p in l64 l64arm l32arm; do
  if [ -f "$here/$p/mqttkdb.so" ]; then pkgplat=$p; fi
done
[ -n "$pkgplat" ] || die "no l64/, l64arm/ or l32arm/mqttkdb.so next to install.sh: run it from the unpacked qmqtt package"
machine=$(uname -m)
case "$machine" in
  x86_64 | amd64) plat=l64 ;;
  aarch64 | arm64) plat=l64arm ;;
  armv7* | armv8l | armhf) plat=l32arm ;;
  *) plat="unsupported ($machine)" ;;
esac
if [ "$pkgplat" != "$plat" ]; then
  if [ "$force" = 1 ]; then
    echo "install.sh: warning: installing the $pkgplat package on a $machine machine ($plat) because of --force-platform" >&2
  else
    die "this package is for $pkgplat but this machine ($machine) is $plat: download the qmqtt package for $plat, or pass --force-platform to install it anyway (testing only)"
  fi
fi

# ---- verify ---------------------------------------------------------------------------------------------
[ -f "$here/SHA256SUMS" ] || die "$here/SHA256SUMS missing: the package is incomplete; download it again"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils): cannot verify the package"
if ! (cd "$here" && sha256sum --quiet --strict -c SHA256SUMS); then
  die "checksum mismatch in $here (see above): the package is damaged or was modified; download it again"
fi
for f in bin/qmqtt q/mqtt.q; do
  [ -f "$here/$f" ] || die "$here/$f missing: the package is incomplete; download it again"
done

if [ -z "$prefix" ]; then
  if [ "$(id -u)" = 0 ]; then prefix=/usr/local/bin; else prefix="$HOME/.local/bin"; fi
fi

# ---- install --------------------------------------------------------------------------------------------
mkdir -p "$state" "$prefix" "$QHOME/$pkgplat"
# A previous qmqtt install is replaced in place; anything else we overwrite is backed up first (once).
new_manifest="$state/MANIFEST.new"
: >"$new_manifest"
put() { # put <mode> <source> <destination>
  if [ -e "$3" ] && [ ! -f "$manifest" ] && [ ! -e "$state/backup/${3#"$QHOME"/}" ]; then
    case "$3" in
      "$QHOME"/*)
        mkdir -p "$(dirname "$state/backup/${3#"$QHOME"/}")"
        cp -p "$3" "$state/backup/${3#"$QHOME"/}"
        echo "install.sh: backed up existing $3 to $state/backup/"
        ;;
    esac
  fi
  mkdir -p "$(dirname "$3")"
  cp "$2" "$3.qmqtt-new"
  chmod "$1" "$3.qmqtt-new"
  mv -f "$3.qmqtt-new" "$3"
  echo "$3" >>"$new_manifest"
}
put 0755 "$here/$pkgplat/mqttkdb.so" "$QHOME/$pkgplat/mqttkdb.so"
# KX ships TLS as a second library, mqttkdb_ssl, and tells TLS users to edit mqtt.q to load it: ours has TLS
# built in, installed under that name too so that such an edited mqtt.q works unchanged.
put 0755 "$here/$pkgplat/mqttkdb.so" "$QHOME/$pkgplat/mqttkdb_ssl.so"
put 0644 "$here/q/mqtt.q" "$QHOME/mqtt.q"
if [ -d "$here/q/examples" ]; then
  (cd "$here/q/examples" && find . -type f | sort) | while IFS= read -r f; do
    put 0644 "$here/q/examples/${f#./}" "$state/examples/${f#./}"
  done
fi
if [ -d "$here/systemd" ]; then
  for f in "$here"/systemd/*; do
    m=0644
    [ -x "$f" ] && m=0755
    put "$m" "$f" "$state/systemd/$(basename "$f")"
  done
fi
put 0755 "$here/bin/qmqtt" "$prefix/qmqtt"
# A copy of this script, so --uninstall works after the unpacked package is gone.
put 0755 "$here/install.sh" "$state/install.sh"
# Files a previous version installed that this one no longer ships.
if [ -f "$manifest" ]; then
  while IFS= read -r f; do
    case "$f" in /*) grep -qxF "$f" "$new_manifest" || rm -f "$f" ;; esac
  done <"$manifest"
fi
mv -f "$new_manifest" "$manifest"

echo "install.sh: installed qmqtt ($pkgplat) into QHOME=$QHOME and $prefix/qmqtt"
echo "  q:        q) \\l mqtt.q     (then .mqtt.conn etc. as with KX's mqtt)"
echo "  examples: $state/examples"
echo "  service:  sudo $state/systemd/setup.sh --qhome $QHOME   (telemetry publisher under systemd)"
case ":$PATH:" in *":$prefix:"*) ;; *) echo "  note: $prefix is not on PATH" ;; esac
echo "  remove:   $state/install.sh --uninstall"
