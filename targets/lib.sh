# targets/lib.sh — shared by the scripts in targets/, deploy/ and tests/targets/ (sourced, not run).
#
# It turns a target name into a complete build environment, so that no command needs hand-set variables:
#   qm_load_target <x86_64|aarch64|armv7|triple|l64|l64arm|l32arm>   reads targets/<name>.env
#   qm_env [zig|gnu]                                                 exports CARGO_TARGET_DIR, rustflags, runner,
#                                                                    CC/AR/linker (gnu)
#   qm_cargo <build|test|...> args                                   runs cargo (or cargo-zigbuild) for it
# Where the tools come from (zig, cargo-zigbuild, qemu, the bullseye roots): tools/env.sh, sourced here.

# shellcheck shell=bash
. "$(dirname "${BASH_SOURCE[0]}")/../tools/env.sh"
QM_SCRIPT=${QM_SCRIPT:-$(basename "$0")}
QM_TARGETS="x86_64 aarch64 armv7"
# Where the per-target build trees live (one per target, shared by build, test, check and package).
QM_TARGET_BASE=${QMQTT_TARGET_BASE:-$QM_ROOT/target/targets}

qm_die() {
  echo "$QM_SCRIPT: error: $*" >&2
  exit 1
}
qm_log() { echo "$QM_SCRIPT: $*" >&2; }

qm_short_name() {
  case "$1" in
    x86_64 | x86_64-unknown-linux-gnu | x86_64-unknown-linux-gnu.* | l64 | amd64) echo x86_64 ;;
    aarch64 | aarch64-unknown-linux-gnu | aarch64-unknown-linux-gnu.* | l64arm | arm64) echo aarch64 ;;
    armv7 | armv7-unknown-linux-gnueabihf | armv7-unknown-linux-gnueabihf.* | l32arm | armhf) echo armv7 ;;
    *) return 1 ;;
  esac
}

qm_load_target() {
  local short
  short=$(qm_short_name "${1:-}") || qm_die "unknown target '${1:-}': use one of: $QM_TARGETS (or a triple, or l64/l64arm/l32arm)"
  # shellcheck disable=SC1090
  . "$QM_ROOT/targets/$short.env" || qm_die "cannot read targets/$short.env"
  QM_SHORT=$short
  QM_SYSROOT="$QM_CACHE/sysroot/$TRIPLE"
  # Cargo's env-var spelling of the triple.
  QM_TRIPLE_UPPER=$(echo "$TRIPLE" | tr 'a-z-' 'A-Z_')
  QM_TRIPLE_LOWER=$(echo "$TRIPLE" | tr '-' '_')
}

# The tool that reads this target's ELF files (GNU readelf reads every architecture).
qm_readelf() {
  if command -v readelf >/dev/null; then echo readelf
  elif [ -n "$GNU_PREFIX" ] && command -v "$GNU_PREFIX-readelf" >/dev/null; then echo "$GNU_PREFIX-readelf"
  elif command -v llvm-readelf >/dev/null; then echo llvm-readelf
  else qm_die "no readelf found: run targets/setup (installs binutils)"; fi
}

# The strip for this target's ELF files.
qm_strip() {
  if [ -n "$GNU_PREFIX" ] && command -v "$GNU_PREFIX-strip" >/dev/null; then echo "$GNU_PREFIX-strip"
  elif [ -z "$GNU_PREFIX" ] && command -v strip >/dev/null; then echo strip
  elif command -v llvm-strip >/dev/null; then echo llvm-strip
  else qm_die "no strip for $TRIPLE: run targets/setup (installs binutils-$GNU_PREFIX)"; fi
}

# The package version from Cargo.toml's [package] section.
qm_version() {
  awk '/^\[/{p=($0=="[package]")} p && /^version *=/{gsub(/.*= *"|".*/,""); print; exit}' "$QM_ROOT/Cargo.toml"
}

# Rust flags for every target build: remap the build machine's paths out of the binaries (panic locations and
# any debug info), so artefacts do not leak /root, /home or the checkout path, and are the same wherever built.
qm_rustflags() {
  local cargo_home=${CARGO_HOME:-$HOME/.cargo} rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
  local flags=()
  # Longest prefixes first: rustc applies the last matching --remap-path-prefix, so list general ones first.
  flags+=("--remap-path-prefix=$rustup_home=/rustup")
  flags+=("--remap-path-prefix=$cargo_home=/cargo")
  flags+=("--remap-path-prefix=$QM_ROOT=/qmqtt")
  case "$QM_TARGET_BASE" in "$QM_ROOT"/*) ;; *) flags+=("--remap-path-prefix=$QM_TARGET_BASE=/target") ;; esac
  local f
  for f in $TARGET_RUSTFLAGS; do flags+=("$f"); done
  local IFS=$'\x1f'
  echo "${flags[*]}"
}

# qm_env [zig|gnu]: export the environment for building/running this target (after qm_load_target).
#   zig (default): cargo-zigbuild, target "$TRIPLE.$GLIBC_MAX", qemu root = bullseye runtime ($QM_CACHE/sysroot)
#   gnu: plain cargo with Debian's cross gcc (glibc 2.36), qemu root = $GNU_ROOT. Dev only; never shipped.
# Sets QM_TARGET_ARG and QM_RUNNER; then call qm_cargo.
qm_env() {
  QM_FLAVOR=${1:-zig}
  local dir_suffix=""
  case "$QM_FLAVOR" in
    zig)
      QM_TARGET_ARG="$TRIPLE.$GLIBC_MAX"
      # zig (venv) and cargo-zigbuild (cargo --root) from tools/env.sh: installed here when missing.
      qm_need zigbuild || qm_die "could not install zig / cargo-zigbuild (tools/need zigbuild)"
      # cargo-zigbuild provides linker/CC/AR: make sure stray settings from the caller don't override it.
      unset "CC_$QM_TRIPLE_LOWER" "AR_$QM_TRIPLE_LOWER" "CARGO_TARGET_${QM_TRIPLE_UPPER}_LINKER"
      ;;
    gnu)
      QM_TARGET_ARG="$TRIPLE"
      dir_suffix="-gnu"
      if [ -n "$GNU_LINKER" ]; then
        qm_need cross-gcc rust-arm || qm_die "could not install the cross gcc (tools/need cross-gcc)"
        export "CARGO_TARGET_${QM_TRIPLE_UPPER}_LINKER=$GNU_LINKER"
        export "CC_$QM_TRIPLE_LOWER=$GNU_CC" "AR_$QM_TRIPLE_LOWER=$GNU_AR"
      fi
      ;;
    *) qm_die "unknown flavour '$QM_FLAVOR' (zig or gnu)" ;;
  esac
  export CARGO_TARGET_DIR="$QM_TARGET_BASE/$QM_SHORT$dir_suffix"
  export CARGO_ENCODED_RUSTFLAGS
  CARGO_ENCODED_RUSTFLAGS=$(qm_rustflags)
  unset RUSTFLAGS
  # C parts (ring): keep build paths out of them too.
  export "CFLAGS_$QM_TRIPLE_LOWER=-ffile-prefix-map=$QM_ROOT=/qmqtt -ffile-prefix-map=${CARGO_HOME:-$HOME/.cargo}=/cargo"
  QM_RUNNER=""
  if [ -n "$QEMU" ]; then
    local root=$QM_SYSROOT
    [ "$QM_FLAVOR" = gnu ] && root=$GNU_ROOT
    qm_need arm-run || qm_die "could not install qemu-user / the runtime roots (tools/need arm-run)"
    [ -e "$root/lib" ] || qm_die "runtime root $root missing: run targets/setup"
    QM_RUNNER="$QEMU -L $root"
    export "CARGO_TARGET_${QM_TRIPLE_UPPER}_RUNNER=$QM_RUNNER"
  fi
  [ -n "${QMQTT_TOOLCHAIN:-}" ] && export RUSTUP_TOOLCHAIN="$QMQTT_TOOLCHAIN"
  return 0
}

# qm_cargo <build|test|check|clippy|...> args...: run cargo for this target and flavour (after qm_env). The
# --target argument is added here. Toolchain: QMQTT_TOOLCHAIN=1.85 selects one (rustup).
qm_cargo() {
  local sub=$1
  shift
  if [ "$QM_FLAVOR" = zig ]; then
    [ "$sub" = build ] && sub=zigbuild
    cargo-zigbuild "$sub" --target "$QM_TARGET_ARG" "$@"
  else
    cargo "$sub" --target "$QM_TARGET_ARG" "$@"
  fi
}

# Where targets/build leaves the artefacts (stable names): $(qm_dist_dir release|debug)/{qmqtt,mqttkdb.so}
qm_dist_dir() { echo "$CARGO_TARGET_DIR/dist/${1:-release}"; }
