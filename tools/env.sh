# tools/env.sh — where the project's tools live, and how each is installed. Sourced (never run) by every script
# that needs a tool; sourcing only sets variables and PATH. `qm_need TOOL...` installs what is missing and is
# cheap when everything is there (one check per tool), so every script and every tests/run step calls it for
# exactly what it uses, whatever ran before it. `tools/need TOOL...` does the same from a shell.
#
# What the project installs itself lives in one cache per user, $QM_CACHE (${XDG_CACHE_HOME:-~/.cache}/qmqtt;
# QMQTT_CACHE moves it), shared by every checkout (a fresh clone reuses it: CI's clones start warm), never in the
# system's Python or ~/.cargo:
#   venv/                Python venv for every Python tool (Debian's python3 refuses pip, PEP 668) → PATH
#   cargo/               `cargo install --root` (pinned, --locked)                                  → PATH
#   npm/                 `npm install --prefix` (pinned)                                            → PATH
#   sysroot/<triple>/    Debian 11 (glibc 2.31) runtime roots for `qemu-<arch> -L`  (tools/bullseye-roots)
#   libe/                KX's libe.so and k.h from the pinned pykx wheel              (tests/qhost/fetch-libe)
# Debian packages (apt-get, as root) and rustup toolchains, targets and components are the system's.
#
# Adding a tool: one `qm_tool` line in the table below, then `qm_need NAME` in the script that uses it.

# shellcheck shell=bash
QM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QM_CACHE=${QMQTT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qmqtt}
QM_VENV=$QM_CACHE/venv
QM_CARGO_ROOT=$QM_CACHE/cargo
QM_NPM_PREFIX=$QM_CACHE/npm
# shellcheck disable=SC2034 # read by the scripts that use KX's libe (tests/qhost)
QM_LIBE=$QM_CACHE/libe
QMQTT_CACHE=$QM_CACHE   # for the tests that start a cached tool themselves (tests/common/hops.rs)
export QM_ROOT QM_CACHE QMQTT_CACHE

declare -gA QM_TOOL_KIND=() QM_TOOL_ARGS=()
# qm_tool NAME KIND ARGS...: declare a tool (the table below). Kinds and their ARGS:
#   apt PKG...              Debian packages (dpkg-query to check; one apt-get install for all missing)
#   pip REQ==VER...         into the venv (a record of what was installed there to check)
#   cargo CRATE@VER [+TC] [ARGS]  cargo [+TC] install --locked --root $QM_CACHE/cargo (checked in its
#                           .crates.toml); +TC builds with that rustup toolchain (declare it before the tool)
#   npm PKG@VER...          npm install --prefix $QM_CACHE/npm (checked in its package.json)
#   rustup-toolchain TC     rustup toolchain install --profile minimal
#   rustup-target TRIPLE... rustup target add (default toolchain)
#   rustup-component C...   rustup component add (default toolchain)
#   script PATH [ARGS]      a project script that installs one thing and is itself cheap when done
#   group TOOL...           several tools under one name
qm_tool() {
  local name=$1 kind=$2
  shift 2
  QM_TOOL_KIND[$name]=$kind
  QM_TOOL_ARGS[$name]="$*"
}

# ---- the tools ------------------------------------------------------------------------------------------
#       name            kind              what (pinned)
qm_tool mosquitto       apt               mosquitto mosquitto-clients
qm_tool openssl         apt               openssl ca-certificates
# The proxy and the WebSocket broker of the transport tests (tests/common/hops.rs).
qm_tool tinyproxy       apt               tinyproxy
# The DNS fault test's private network namespace (tests/fault_dns.rs: unshare, ip).
qm_tool netns           apt               iproute2 util-linux
qm_tool aedes           npm               aedes@0.51.3 ws@8.18.3
# C builds: paho (the interop peer, bundled: cmake + OpenSSL), the q host shim (tests/qhost), ring.
qm_tool cc              apt               gcc make cmake pkg-config libssl-dev
qm_tool valgrind        apt               valgrind
qm_tool file            apt               file binutils
qm_tool cross-gcc       apt               gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf binutils-arm-linux-gnueabihf libc6-dev-armhf-cross
qm_tool qemu            apt               qemu-user
qm_tool python-venv     apt               python3 python3-venv
qm_tool node            apt               nodejs npm
qm_tool pytest          pip               pytest==8.3.3 hypothesis==6.112.1
qm_tool zig             pip               ziglang==0.17.1
qm_tool cargo-zigbuild  cargo             cargo-zigbuild@0.24.1
qm_tool cargo-fuzz      cargo             cargo-fuzz@0.13.2
# The second broker of the interop tests (tests/broker_rumqttd.rs), built with the MSRV toolchain: its
# Cargo.lock pins crates that today's stable rustc refuses (metrics 0.22.1: error E0521 under 1.95).
# Plain TCP only, debug build: what the tests use, in half the build time (no TLS or WebSocket stack).
qm_tool rumqttd-crate   cargo             rumqttd@0.20.0 +1.85 --no-default-features --debug
qm_tool rumqttd         group             msrv rumqttd-crate
qm_tool rust-lint       rustup-component  clippy rustfmt
qm_tool rust-arm        rustup-target     aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
qm_tool msrv            rustup-toolchain  1.85
qm_tool nightly         rustup-toolchain  nightly
qm_tool qemu-roots      script            tools/bullseye-roots
qm_tool libe            script            tests/qhost/fetch-libe
# What the steps need, by name.
qm_tool zigbuild        group             zig cargo-zigbuild rust-arm file
qm_tool arm-run         group             qemu qemu-roots
qm_tool suite           group             mosquitto openssl cc valgrind tinyproxy aedes netns rumqttd
qm_tool qhost           group             suite pytest libe
qm_tool all             group             qhost rust-lint msrv zigbuild cross-gcc arm-run nightly cargo-fuzz
# What cargo builds (CPU-bound, minutes): tests/run's setup builds them beside the downloads.
qm_tool cargo-built     group             cargo-zigbuild cargo-fuzz rumqttd-crate

# ---- PATH -----------------------------------------------------------------------------------------------
# The project's own tools first (the venv's python3 is the one with the pinned packages, and the one
# cargo-zigbuild runs `python3 -m ziglang` with); rustup's cargo when the caller's PATH lacks it.
case ":$PATH:" in *":$QM_VENV/bin:"*) ;; *) PATH="$QM_VENV/bin:$QM_CARGO_ROOT/bin:$QM_NPM_PREFIX/node_modules/.bin:$PATH" ;; esac
if ! command -v cargo >/dev/null && [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
fi
export PATH

qm_tools_log() { echo "tools: $*" >&2; }
qm_tools_die() {
  echo "tools: error: $*" >&2
  return 1
}

# ---- installers -----------------------------------------------------------------------------------------
QM_APT_UPDATED=${QM_APT_UPDATED:-0}
qm_install_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ -z "${QM_NO_APT:-}" ] || qm_tools_die "missing Debian packages: ${missing[*]} (apt-get install them)" || return 1
  [ "$(id -u)" = 0 ] || qm_tools_die "missing Debian packages: ${missing[*]}: run as root (apt-get install)" || return 1
  qm_tools_log "apt-get install ${missing[*]}"
  if [ "$QM_APT_UPDATED" = 0 ]; then
    apt-get update -qq || return 1
    QM_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The venv is made from the system's python3 (Debian's needs python3-venv for that).
qm_venv() {
  [ -x "$QM_VENV/bin/python3" ] && "$QM_VENV/bin/python3" -c '' 2>/dev/null && return 0
  local sys_py
  sys_py=$(PATH=${PATH//"$QM_VENV/bin:"/} command -v python3) || qm_install_apt python3 python3-venv || return 1
  sys_py=$(PATH=${PATH//"$QM_VENV/bin:"/} command -v python3) || return 1
  rm -rf "$QM_VENV"
  if ! "$sys_py" -m venv "$QM_VENV" 2>/dev/null; then
    qm_install_apt python3-venv || return 1
    rm -rf "$QM_VENV"
    "$sys_py" -m venv "$QM_VENV" || return 1
  fi
  qm_tools_log "python venv: ${QM_VENV#"$QM_ROOT"/} ($("$QM_VENV/bin/python3" --version))"
}
qm_install_pip() {
  local want=() r
  for r in "$@"; do
    [[ "$r" == *==* ]] || qm_tools_die "pip requirement '$r' is not pinned (NAME==VERSION)" || return 1
    grep -qxF "$r" "$QM_VENV/.qmqtt-installed" 2>/dev/null || want+=("$r")
  done
  [ ${#want[@]} -gt 0 ] || return 0
  qm_venv || return 1
  qm_tools_log "pip install ${want[*]} (into ${QM_VENV#"$QM_ROOT"/})"
  "$QM_VENV/bin/python3" -m pip install -q --disable-pip-version-check "${want[@]}" || return 1
  printf '%s\n' "${want[@]}" >>"$QM_VENV/.qmqtt-installed"
}
qm_install_cargo() {
  local spec=$1 crate ver
  shift
  crate=${spec%@*} ver=${spec#*@}
  [ "$crate" != "$ver" ] || qm_tools_die "cargo tool '$spec' is not pinned (CRATE@VERSION)" || return 1
  grep -q "^\"$crate $ver " "$QM_CARGO_ROOT/.crates.toml" 2>/dev/null && return 0
  local tc=()
  if [[ "${1:-}" == +* ]]; then tc=("$1"); shift; fi
  qm_tools_log "cargo ${tc[*]}${tc:+ }install $crate --version $ver --locked --root ${QM_CARGO_ROOT#"$QM_ROOT"/} $*"
  # The caller's target settings (targets/lib.sh exports some) are not the tool's.
  env -u CARGO_TARGET_DIR -u CARGO_ENCODED_RUSTFLAGS -u RUSTFLAGS -u RUSTUP_TOOLCHAIN -u CARGO_BUILD_TARGET \
    cargo "${tc[@]}" install -q "$crate" --version "$ver" --locked --root "$QM_CARGO_ROOT" "$@"
}
qm_install_npm() {
  local want=() s pkg ver
  for s in "$@"; do
    pkg=${s%@*} ver=${s##*@}
    [ -n "$pkg" ] && [ "$pkg" != "$s" ] || qm_tools_die "npm tool '$s' is not pinned (PKG@VERSION)" || return 1
    grep -q "\"version\": *\"$ver\"" "$QM_NPM_PREFIX/node_modules/$pkg/package.json" 2>/dev/null || want+=("$s")
  done
  [ ${#want[@]} -gt 0 ] || return 0
  command -v npm >/dev/null || qm_install_apt nodejs npm || return 1
  qm_tools_log "npm install ${want[*]} (into ${QM_NPM_PREFIX#"$QM_ROOT"/})"
  mkdir -p "$QM_NPM_PREFIX"
  npm install --prefix "$QM_NPM_PREFIX" --no-audit --no-fund --loglevel=error "${want[@]}" >/dev/null
}
qm_rustup() {
  command -v rustup >/dev/null || qm_tools_die "rustup not found: install Rust with rustup first (https://rustup.rs)" || return 1
  env -u RUSTUP_TOOLCHAIN rustup "$@"
}
qm_install_rustup_toolchain() {
  qm_rustup toolchain list | grep -q "^$1[-(]" && return 0
  qm_tools_log "rustup toolchain install $1"
  qm_rustup toolchain install "$1" --profile minimal
}
qm_install_rustup_target() {
  local have t
  have=$(qm_rustup target list --installed) || return 1
  for t in "$@"; do grep -qx "$t" <<<"$have" || qm_rustup target add "$t" || return 1; done
}
qm_install_rustup_component() {
  local have c
  have=$(qm_rustup component list --installed) || return 1
  for c in "$@"; do grep -q "^$c" <<<"$have" || qm_rustup component add "$c" || return 1; done
}

# qm_need TOOL...: make sure the named tools are installed (see the table). Debian packages of all the named
# tools go in one apt-get run. Returns non-zero, saying what failed, when one cannot be installed.
# QM_SKIP_CARGO=1 leaves out the cargo-built tools (tests/run's setup builds them in a lane of their own).
qm_need() {
  local apt=() order=() seen=" " name kind
  _qm_collect() {
    local n
    for n in "$@"; do
      [ -n "${QM_TOOL_KIND[$n]:-}" ] || qm_tools_die "unknown tool '$n' (tools: ${!QM_TOOL_KIND[*]})" || return 1
      [[ "$seen" == *" $n "* ]] && continue
      seen+="$n "
      case "${QM_TOOL_KIND[$n]}" in
        group) # shellcheck disable=SC2086
          _qm_collect ${QM_TOOL_ARGS[$n]} || return 1 ;;
        apt) # shellcheck disable=SC2206
          apt+=(${QM_TOOL_ARGS[$n]}) ;;
        *) order+=("$n") ;;
      esac
    done
  }
  _qm_collect "$@" || return 1
  qm_install_apt "${apt[@]}" || { qm_tools_die "apt-get install ${apt[*]} failed"; return 1; }
  for name in "${order[@]}"; do
    kind=${QM_TOOL_KIND[$name]}
    local -a args
    read -r -a args <<<"${QM_TOOL_ARGS[$name]}"
    case "$kind" in
      pip) qm_install_pip "${args[@]}" ;;
      cargo) [ -n "${QM_SKIP_CARGO:-}" ] || qm_install_cargo "${args[@]}" ;;
      npm) qm_install_npm "${args[@]}" ;;
      rustup-toolchain) qm_install_rustup_toolchain "${args[@]}" ;;
      rustup-target) qm_install_rustup_target "${args[@]}" ;;
      rustup-component) qm_install_rustup_component "${args[@]}" ;;
      script) "$QM_ROOT/${args[0]}" "${args[@]:1}" >&2 ;;
      *) false ;;
    esac || { qm_tools_die "could not install '$name' ($kind ${QM_TOOL_ARGS[$name]})"; return 1; }
  done
}
