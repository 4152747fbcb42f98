#!/usr/bin/env bash
# Runs tests/ha: the gateway's power switch driven by a real Home Assistant
# `rest` switch (a pytest-homeassistant-custom-component test instance).
#
#   tests/ha/run.sh PATH/TO/wol-libvirt-gateway [PYTEST ARGS...]
#
# Builds nothing: give it the binary. The venv is made once and reused in
# $WOL_HA_CACHE_DIR (default /var/cache/wol-libvirt-gateway-ha); it is
# reinstalled when requirements.txt or the Python changes. Needs pyenv's
# Python 3.13 (/root/.pyenv/versions/3.13*, or $WOL_HA_PYTHON) and, for the
# first run, network access to PyPI.
set -euo pipefail

die() { echo "tests/ha/run.sh: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: tests/ha/run.sh PATH/TO/wol-libvirt-gateway [PYTEST ARGS...]"
[ -f "$1" ] && [ -x "$1" ] || die "no executable gateway binary at $1"
gateway=$(realpath "$1")
shift

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${WOL_HA_CACHE_DIR:-/var/cache/wol-libvirt-gateway-ha}
venv=$cache/venv

python=${WOL_HA_PYTHON:-}
if [ -z "$python" ]; then
    for candidate in /root/.pyenv/versions/3.13*/bin/python; do
        [ -x "$candidate" ] && python=$candidate # the glob sorts: the last is the newest
    done
fi
[ -n "$python" ] && [ -x "$python" ] ||
    die "no Python 3.13 found (/root/.pyenv/versions/3.13*/bin/python; or set WOL_HA_PYTHON)"

mkdir -p "$cache" 2>/dev/null || die "cannot create the cache directory $cache (set WOL_HA_CACHE_DIR)"

# What the venv was made from: reinstall when any of it changes.
want=$( { "$python" -VV; echo "$python"; cat "$here/requirements.txt"; } | sha256sum | cut -d' ' -f1)
stamp=$venv/.tests-ha-installed

exec 9>"$cache/.lock"
flock 9 # one installer at a time
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "tests/ha: installing Home Assistant's test harness into $venv (a few minutes)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install -q -r "$here/requirements.txt"
    echo "$want" >"$stamp"
fi
flock -u 9

cd "$repo"
# No __pycache__ or .pytest_cache in the source tree; pytest-sugar off for a
# plain summary.
export PYTHONDONTWRITEBYTECODE=1
export WOL_HA_GATEWAY_BIN=$gateway
exec "$venv/bin/python" -m pytest -c tests/ha/pytest.ini -p no:cacheprovider -p no:sugar \
    -q -rfE tests/ha "$@"
