#!/usr/bin/env bash
# Builds the Debian package (packaging/build-deb.sh), installs it on this
# machine, checks what it installed and that it enabled nothing, then removes
# and purges it and checks nothing is left. Run as root from the repository
# root; works without systemd as PID 1. Exits non-zero on the first failure,
# and leaves the machine as it found it (package purged; the system user and
# the libvirt group removed again if this script's install created them).
#
# Installs what it needs, idempotently: dpkg-dev and binutils (cargo-deb runs
# dpkg-shlibdeps for Depends: $auto, and strip), the cargo-deb tool.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0 # builds with Rust 1.85+ (rust-version), --locked
pkg=wol-libvirt-gateway

if [ ! -f Cargo.toml ] || [ ! -x packaging/build-deb.sh ]; then
    echo "check-deb.sh: run from the repository root" >&2
    exit 1
fi
[ "$(id -u)" -eq 0 ] || { echo "check-deb.sh: run as root (dpkg -i)" >&2; exit 1; }

total_start=$SECONDS
stage() {
    local name=$1
    shift
    local start=$SECONDS
    echo "==> $name"
    "$@"
    echo "<== $name: $((SECONDS - start)) s"
}
fail() {
    echo "check-deb.sh: FAIL: $*" >&2
    exit 1
}

install_tools() {
    .ci/ensure-packages.sh dpkg-dev binutils gzip
    if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
        local start=$SECONDS
        cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
        echo "cargo-deb installed in $((SECONDS - start)) s"
    fi
}

# --- Leave the machine as found, whatever happens. ---
had_user=no had_group=no
getent passwd "$pkg" >/dev/null && had_user=yes
getent group libvirt >/dev/null && had_group=yes
cleanup() {
    local rc=$?
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -qv "not-installed"; then
        echo "cleanup: purging $pkg" >&2
        dpkg --purge "$pkg" >/dev/null || rc=1
    fi
    if [ $had_user = no ] && getent passwd "$pkg" >/dev/null; then
        userdel "$pkg" || rc=1
        # sysusers' "u" line also created a group of the same name.
        ! getent group "$pkg" >/dev/null || groupdel "$pkg" || rc=1
    fi
    if [ $had_group = no ] && getent group libvirt >/dev/null; then
        groupdel libvirt || rc=1
    fi
    if [ $rc -eq 0 ]; then
        echo "check-deb.sh: passed in $((SECONDS - total_start)) s"
    else
        echo "check-deb.sh: FAILED (exit $rc) after $((SECONDS - total_start)) s" >&2
    fi
    exit $rc
}
trap cleanup EXIT

if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    fail "$pkg is already installed here; remove it first (dpkg --purge $pkg)"
fi

stage "tools (dpkg-dev, cargo-deb $CARGO_DEB_VERSION)" install_tools

build() {
    mkdir -p target
    packaging/build-deb.sh | tee target/check-deb.out
    deb=$(tail -n 1 target/check-deb.out)
    [ -f "$deb" ] || fail "build-deb.sh printed no .deb path"
    dpkg-deb --info "$deb"
}
stage "build-deb.sh" build
deb=$(tail -n 1 target/check-deb.out)

# What the package must install, derived from what build-deb.sh generated
# (so a new unit, man page or subcommand is expected without editing this).
expected=(
    "/usr/bin/$pkg"
    "/usr/lib/sysusers.d/$pkg.conf"
    "/usr/share/bash-completion/completions/$pkg"
    "/usr/share/zsh/vendor-completions/_$pkg"
    "/usr/share/fish/vendor_completions.d/$pkg.fish"
    "/usr/share/doc/$pkg/README.md"
    "/usr/share/doc/$pkg/copyright"
)
for f in target/assets/units/*; do expected+=("/usr/lib/systemd/system/$(basename "$f")"); done
for f in target/assets/*.1; do expected+=("/usr/share/man/man1/$(basename "$f").gz"); done
# The documentation the README links to, every file of docs/.
for f in docs/*.md; do expected+=("/usr/share/doc/$pkg/docs/$(basename "$f")"); done
# Example drop-ins (packaging/stage-assets.sh): documentation, not active.
shopt -s nullglob
for f in target/assets/examples/*; do expected+=("/usr/share/doc/$pkg/examples/$(basename "$f")"); done
for f in systemd/*.d/*.conf; do
    [[ " ${expected[*]} " == *" /usr/share/doc/$pkg/examples/$(basename "$f") "* ]] ||
        fail "$f exists but is not packaged as an example"
done
shopt -u nullglob
for unit in $pkg.socket $pkg-http.socket $pkg.service $pkg-idle.service $pkg-idle.timer $pkg-wake@.service $pkg-sleep@.service; do
    [[ " ${expected[*]} " == *" /usr/lib/systemd/system/$unit "* ]] || fail "build-deb.sh did not stage $unit"
done
[[ " ${expected[*]} " == *" /usr/share/man/man1/$pkg.1.gz "* ]] || fail "no man page $pkg.1"
if [ -f "systemd/$pkg-raw@.service" ]; then
    [[ " ${expected[*]} " == *" /usr/lib/systemd/system/$pkg-raw@.service "* ]] ||
        fail "systemd/$pkg-raw@.service exists but is not packaged"
fi

not_enabled() {
    local links
    links=$(find /etc/systemd/system -maxdepth 2 -name "$pkg*" 2>/dev/null || true)
    [ -z "$links" ] || fail "enabled or masked on install (systemctl enable is the admin's choice): $links"
    for unit in $pkg.socket $pkg-http.socket $pkg-idle.timer; do
        for wants in sockets timers; do
            [ ! -e /etc/systemd/system/$wants.target.wants/"$unit" ] || fail "$unit enabled"
        done
        if [ -d /run/systemd/system ]; then
            [ "$(systemctl is-enabled "$unit" 2>/dev/null || true)" = disabled ] || fail "$unit is not disabled"
            ! systemctl --quiet is-active "$unit" || fail "$unit was started"
        fi
    done
}

install() {
    dpkg -i "$deb"
    dpkg-query -W -f='${Status} ${Version}\n' $pkg
    local listing
    listing=$(dpkg -L $pkg)
    echo "$listing"
    local f
    for f in "${expected[@]}"; do
        grep -qxF "$f" <<<"$listing" || fail "dpkg -L $pkg does not list $f"
        [ -f "$f" ] || fail "$f is not installed"
    done
    if grep -q '^/usr/local' <<<"$listing"; then fail "package installs into /usr/local"; fi
    for f in "/usr/lib/systemd/system/$pkg"*; do
        ! grep -Eq '^[^#]*/usr/local/' "$f" || fail "$f refers to /usr/local"
    done
    # The example drop-ins are not active: nothing in a unit's .d directory.
    if grep -E '^/(usr/lib|etc)/systemd/system/.*\.d(/|$)' <<<"$listing"; then
        fail "package installs a drop-in (the examples must stay in /usr/share/doc)"
    fi
    for f in "/usr/share/doc/$pkg/examples/"*; do
        ! grep -Eq '^[[:space:]]*#?[[:space:]]*Exec[A-Za-z]*=.*/usr/local/' "$f" || fail "$f: an Exec*= line refers to /usr/local"
    done
    grep -qx "ExecStart=/usr/bin/$pkg" /usr/lib/systemd/system/$pkg.service ||
        fail "$pkg.service: ExecStart= is not /usr/bin/$pkg"
    dpkg-deb -f "$deb" Depends | grep -q 'libvirt0' || fail "Depends lacks libvirt0"
}
stage "dpkg -i" install

check_installed() {
    local version out
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
    out=$(/usr/bin/$pkg --version)
    echo "$out"
    [ "$out" = "$pkg $version" ] || fail "--version printed '$out', expected '$pkg $version'"

    local page=/usr/share/man/man1/$pkg.1.gz
    zcat "$page" | grep -q '^\.TH' || fail "$page is not a gzipped man page"
    zcat "$page" | grep -qF -- '\-\-libvirt\-uri' || fail "$page does not document --libvirt-uri"
    if command -v man >/dev/null; then
        MANWIDTH=80 man -l "$page" 2>/dev/null | grep -q -- '--libvirt-uri' || fail "man -l $page"
        echo "man -l $page: ok"
    fi
    bash -n /usr/share/bash-completion/completions/$pkg || fail "bash completion does not parse"
    grep -q "Apache" /usr/share/doc/$pkg/copyright || fail "copyright names no Apache license"

    not_enabled
    if command -v systemd-sysusers >/dev/null; then
        getent passwd $pkg >/dev/null || fail "user $pkg was not created"
        id -nG $pkg | tr ' ' '\n' | grep -qx libvirt || fail "user $pkg is not in group libvirt"
    fi
}
stage "installed files, version, man page, nothing enabled" check_installed

# An admin enabling the socket, then an upgrade (reinstall): the choice stays,
# and purge must remove the link (deb-systemd-helper's recorded state).
admin_enable() {
    if ! systemctl enable $pkg.socket 2>&1; then
        echo "systemctl enable does not work here; skipping"
        return
    fi
    [ -L /etc/systemd/system/sockets.target.wants/$pkg.socket ] || fail "systemctl enable made no link"
    dpkg -i "$deb"
    [ -L /etc/systemd/system/sockets.target.wants/$pkg.socket ] || fail "reinstall dropped the admin's enable"
}
stage "admin enables the socket, reinstall keeps it" admin_enable

remove() {
    dpkg -r $pkg
    local f
    for f in "${expected[@]}"; do
        [ ! -e "$f" ] || fail "$f left after dpkg -r"
    done
    dpkg --purge $pkg
    dpkg-query -W -f='${Status}' $pkg 2>/dev/null | grep -q "install ok installed" && fail "still installed"
    local left
    left=$(find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled \
        /var/lib/systemd/deb-systemd-helper-masked -maxdepth 2 -name "$pkg*" 2>/dev/null || true)
    [ ! -e /var/cache/$pkg ] || left+=" /var/cache/$pkg"
    [ -z "$left" ] || fail "left after purge: $left"
    ! dpkg -S "/usr/bin/$pkg" 2>/dev/null || fail "dpkg still knows /usr/bin/$pkg"
    echo "removed and purged; nothing left"
}
stage "dpkg -r, dpkg --purge" remove
