#!/usr/bin/env bash
# Makes sure the build has what pingora and SQLite need: a C compiler and cmake.
# Sourced by ./run.sh and ./test.sh (and by CI through ./test.sh); does nothing when both are there.
# Also holds agentry_bench_tools (below), for bench/run.sh and scripts/build-pgo.sh.
#
# Order of attempts for what is missing:
#   1. the system package manager (apt-get, dnf, yum, apk, brew), when we may use it
#      (root, or passwordless sudo); set AGENTRY_NO_SYSTEM_PACKAGES=1 to skip this step;
#   2. cmake only: the `cmake` wheel from PyPI, installed into .tools/cmake in this checkout;
#   3. otherwise one line saying exactly what to install, and exit 1.

_agentry_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_agentry_pycmake="$_agentry_root/.tools/cmake"

_agentry_say() { printf 'build-deps: %s\n' "$*" >&2; }

_agentry_missing() {
  local m=()
  command -v cmake >/dev/null 2>&1 || m+=(cmake)
  command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 || m+=(cc)
  echo "${m[*]:-}"
}

_agentry_sudo() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1
  fi
}

_agentry_system_install() {
  [ "${AGENTRY_NO_SYSTEM_PACKAGES:-0}" = 1 ] && return 1
  local want=("$@") pkgs=()
  if command -v apt-get >/dev/null 2>&1; then
    for w in "${want[@]}"; do case $w in cmake) pkgs+=(cmake);; cc) pkgs+=(gcc libc6-dev make);; esac; done
    export DEBIAN_FRONTEND=noninteractive
    _agentry_sudo apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1 ||
      { _agentry_sudo apt-get update -q >/dev/null 2>&1 && _agentry_sudo apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1; }
  elif command -v dnf >/dev/null 2>&1; then
    for w in "${want[@]}"; do case $w in cmake) pkgs+=(cmake);; cc) pkgs+=(gcc make);; esac; done
    _agentry_sudo dnf install -y "${pkgs[@]}" >/dev/null 2>&1
  elif command -v yum >/dev/null 2>&1; then
    for w in "${want[@]}"; do case $w in cmake) pkgs+=(cmake);; cc) pkgs+=(gcc make);; esac; done
    _agentry_sudo yum install -y "${pkgs[@]}" >/dev/null 2>&1
  elif command -v apk >/dev/null 2>&1; then
    for w in "${want[@]}"; do case $w in cmake) pkgs+=(cmake);; cc) pkgs+=(build-base);; esac; done
    _agentry_sudo apk add --no-cache "${pkgs[@]}" >/dev/null 2>&1
  elif command -v brew >/dev/null 2>&1; then
    for w in "${want[@]}"; do case $w in cmake) pkgs+=(cmake);; cc) ;; esac; done
    [ ${#pkgs[@]} -gt 0 ] && brew install "${pkgs[@]}" >/dev/null 2>&1
  else
    return 1
  fi
}

_agentry_pip_cmake() {
  # The PyPI wheel carries a real cmake binary under cmake/data/bin.
  local bin="$_agentry_pycmake/cmake/data/bin"
  if [ ! -x "$bin/cmake" ]; then
    local py
    py="$(command -v python3 || command -v python || true)"
    [ -n "$py" ] || return 1
    _agentry_say "installing cmake from PyPI into .tools/cmake"
    "$py" -m pip install -q --disable-pip-version-check --target "$_agentry_pycmake" "cmake>=3.20,<4" >/dev/null 2>&1 || return 1
  fi
  [ -x "$bin/cmake" ] || return 1
  export PATH="$bin:$PATH"
}

agentry_build_deps() {
  # A cmake installed by an earlier run into this checkout counts as present.
  [ -x "$_agentry_pycmake/cmake/data/bin/cmake" ] && ! command -v cmake >/dev/null 2>&1 &&
    export PATH="$_agentry_pycmake/cmake/data/bin:$PATH"
  local missing
  missing="$(_agentry_missing)"
  [ -z "$missing" ] && return 0
  _agentry_say "missing: $missing; trying the system package manager"
  # shellcheck disable=SC2086
  _agentry_system_install $missing || true
  hash -r
  missing="$(_agentry_missing)"
  if [[ " $missing " == *" cmake "* ]]; then
    _agentry_pip_cmake || true
    hash -r
    missing="$(_agentry_missing)"
  fi
  if [ -n "$missing" ]; then
    _agentry_say "cannot install '$missing' here: install a C compiler and cmake >= 3.20 (Debian/Ubuntu: sudo apt-get install -y build-essential cmake), then run this again"
    return 1
  fi
  _agentry_say "ready: cmake $(cmake --version | head -1 | awk '{print $3}') at $(command -v cmake)"
}

# What the load bench and the profile-guided build's training run need: nginx (the upstream),
# wrk (the load), taskset (pinning), valgrind (bench/cost.py), HAProxy (bench peers S2, S3).
# Installs the missing ones from Debian and stops the services Debian starts with them: the
# bench runs its own, on its own ports.
agentry_bench_tools() {
  local need=() pkgs=() c
  for c in nginx haproxy wrk taskset valgrind; do command -v "$c" >/dev/null || need+=("$c"); done
  [ ${#need[@]} -eq 0 ] && return 0
  for c in "${need[@]}"; do
    case $c in taskset) pkgs+=(util-linux) ;; nginx) pkgs+=(nginx-light) ;; *) pkgs+=("$c") ;; esac
  done
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v apt-get >/dev/null 2>&1 ||
    ! { _agentry_sudo apt-get install -y "${pkgs[@]}" ||
      { _agentry_sudo apt-get update && _agentry_sudo apt-get install -y "${pkgs[@]}"; }; }; then
    _agentry_say "cannot install ${need[*]} here: install ${pkgs[*]} (Debian package names), then run this again"
    return 1
  fi
  _agentry_sudo service nginx stop >/dev/null 2>&1 || true
  _agentry_sudo service haproxy stop >/dev/null 2>&1 || true
}
