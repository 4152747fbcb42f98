#!/usr/bin/env bash
# Checks the Debian package's maintainer scripts under a REAL systemd (252,
# Debian 12), which packaging/check-deb.sh cannot do on a host whose PID 1 is
# not systemd. Run as root from the repository root:
#
#   packaging/check-deb-systemd.sh [DEB]   # default: build with packaging/build-deb.sh
#
# Reuses the Debian 12 root that tests/e2e/systemd-nspawn.sh builds and caches
# (run that first; $WOL_E2E_CACHE, default /var/cache/wol-libvirt-gateway-e2e),
# boots it with --volatile=overlay (the cache is never written) and the .deb's
# directory bound read-only, then checks:
#   dpkg -i:      user in group libvirt, units known (postinst's daemon-reload),
#                 nothing enabled or started, ExecStart=/usr/bin/…
#   admin enable: enable --now the socket, a magic packet starts a guest, the
#                 journal shows "started GUEST" from /usr/bin/wol-libvirt-gateway
#   dpkg -i again (upgrade): the socket stays enabled and listening
#   dpkg -r:      prerm stops socket and service (port 9 released), files gone
#   dpkg --purge: the enable link and deb-systemd-helper state are gone
# Always powers the container off on exit. The container shares the host's
# network: 127.0.0.1:9 must be free on the host.
set -euo pipefail

name=wol-libvirt-gateway
machine=wol-e2e-deb
domain=wol-e2e-deb-guest
mac=52:54:00:e2:e0:02

script=check-deb-systemd.sh
# shellcheck source=tests/e2e/nspawn-lib.sh
source "$(dirname "$0")/../tests/e2e/nspawn-lib.sh"

[[ $(id -u) -eq 0 ]] || fail "run as root (systemd-nspawn, nsenter)"
[[ -f Cargo.toml && -x packaging/build-deb.sh ]] || fail "run from the repository root"

# ctx CMD...: run in the container, output indented; fail with it on error.
ctx() {
    local out rc=0
    out=$(ct "$@" 2>&1) || rc=$?
    [[ -z $out ]] || sed 's/^/    /' <<<"$out"
    ((rc == 0)) || fail "'$*' exited with $rc"
}

# ---------------------------------------------------------------- 1. package
phase "package"
if (($# > 0)); then
    deb=$1
else
    cargo deb --version >/dev/null 2>&1 ||
        fail "cargo-deb missing: run packaging/check-deb.sh once (it installs it) or pass a .deb"
    mkdir -p target
    packaging/build-deb.sh | tee target/check-deb-systemd.out
    deb=$(tail -n 1 target/check-deb-systemd.out)
fi
[[ -f $deb && $deb == *.deb ]] || fail "no .deb at '$deb'"
deb=$(realpath "$deb")
log "$deb"

# ---------------------------------------------------------------- 2. root
phase "cached root ($root)"
[[ -f $root/$root_stamp_file ]] ||
    fail "no complete cached root in $root: run tests/e2e/systemd-nspawn.sh first (it builds it)"
grep -q '^cgroup_controllers *= *\[ *\]' "$root/etc/libvirt/qemu.conf" ||
    fail "$root/etc/libvirt/qemu.conf lacks 'cgroup_controllers = [ ]': rerun tests/e2e/systemd-nspawn.sh"
for p in systemd-container; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        fail "$p is not installed on the host: run tests/e2e/systemd-nspawn.sh first"
done
exec 9>"$cache/lock" # the e2e script's lock: one user of the root and of port 9
flock -w 900 9 || fail "another run holds $cache/lock"
# KVM guests where /dev/kvm exists (idempotent: the root has it already).
kvm_for_root

# ---------------------------------------------------------------- 3. boot
phase "boot container"
udp9=$(awk 'FNR > 1 && $2 ~ /:0009$/' /proc/net/udp /proc/net/udp6)
[[ -z $udp9 ]] || fail "UDP port 9 is in use on this host (the container shares its network):
$udp9"
boot_container "$machine" --bind-ro="$(dirname "$deb")":/mnt/deb
deb_in=/mnt/deb/$(basename "$deb")
ct test -f "$deb_in" || fail "$deb_in not visible in the container"
# The e2e script leaves its copies of the binary, units and sysusers file in
# the cached root; /etc/systemd/system would shadow the packaged units. Remove
# them (from the volatile overlay only) so the package is tested alone.
ctx sh -c "rm -fv /etc/systemd/system/$name.* /etc/systemd/system/$name-*.* /usr/local/bin/$name /usr/lib/sysusers.d/$name.conf"
! ct getent passwd $name >/dev/null || ct userdel $name
ct systemctl daemon-reload
[[ $(ct systemctl show -p LoadState --value $name.socket) == not-found ]] ||
    fail "$name.socket is known before the install"

# ---------------------------------------------------------------- 4. install
svc() { ct systemctl show -p "$2" --value "$name.$1"; }
reloads() { ct journalctl -b -q _PID=1 -o cat MESSAGE=Reloading. | wc -l; }
phase "dpkg -i (fresh install)"
r0=$(reloads)
ctx dpkg -i "$deb_in"
reloaded() { (($(reloads) > r0)); }
wait_for "postinst's daemon-reload in the journal" 5 reloaded
ct id -nG $name | tr ' ' '\n' | grep -qx libvirt || fail "user $name not in group libvirt: $(ct id $name)"
log "$(ct id $name)"
for u in socket service; do
    [[ $(svc $u LoadState) == loaded ]] || fail "$name.$u is not loaded"
    [[ $(svc $u NeedDaemonReload) == no ]] || fail "$name.$u needs a daemon-reload"
    # /lib is a symlink to /usr/lib (merged /usr).
    [[ $(ct readlink -f "$(svc $u FragmentPath)") == /usr/lib/systemd/system/$name.$u ]] ||
        fail "$name.$u comes from $(svc $u FragmentPath), not the package"
    [[ $(svc $u ActiveState) == inactive ]] || fail "$name.$u is $(svc $u ActiveState) after install"
done
enabled=$(ct systemctl is-enabled $name.socket || true)
[[ $enabled == disabled ]] || fail "$name.socket is '$enabled' after install, expected disabled"
ct grep -qx "ExecStart=/usr/bin/$name" /usr/lib/systemd/system/$name.service ||
    fail "packaged $name.service: ExecStart= is not /usr/bin/$name"
[[ $(svc service ExecStart) == *"path=/usr/bin/$name "* ]] || fail "loaded ExecStart: $(svc service ExecStart)"
[[ -z $(ct find /etc/systemd/system -name "$name*") ]] || fail "install created links: $(ct find /etc/systemd/system -name "$name*")"
mapfile -t files < <(ct dpkg -L $name | while read -r f; do [[ -d /proc/$ct_pid/root$f ]] || echo "$f"; done)
log "units loaded from /usr/lib/systemd/system, socket disabled + inactive, ${#files[@]} files"

# ---------------------------------------------------------------- 5. wake
phase "admin: enable --now, wake a guest"
ctx systemctl enable --now $name.socket
[[ $(svc socket ActiveState) == active ]] || fail "$name.socket is not active after enable --now"
define_guest
svc_active() { [[ $(svc service ActiveState) == active ]]; }
ctx wakeonlan -i 127.0.0.1 $mac
wait_for "$name.service active" 20 svc_active
guest_running() { [[ $(domstate) == running ]]; }
wait_for "guest $domain running" 30 guest_running
# shellcheck disable=SC2016
started() {
    ct sh -c 'journalctl -b -u "$1.service" -o json | jq -e -s --arg m "started $2" --arg exe "/usr/bin/$1" \
        "any(.[]; (.MESSAGE | tostring | contains(\$m)) and (._EXE == \$exe or (._CMDLINE // \"\" | startswith(\$exe))))"' \
        sh $name $domain
}
wait_for "journal: 'started $domain' from /usr/bin/$name" 10 started

# ---------------------------------------------------------------- 6. upgrade
phase "dpkg -i again (upgrade path)"
ctx dpkg -i "$deb_in"
enabled=$(ct systemctl is-enabled $name.socket || true)
[[ $enabled == enabled ]] || fail "$name.socket is '$enabled' after the reinstall, expected enabled"
[[ $(svc socket ActiveState) == active ]] || fail "$name.socket is not active after the reinstall"
log "socket still enabled and active"

# ---------------------------------------------------------------- 7. remove
phase "dpkg -r (service running), dpkg --purge"
svc_active || ct wakeonlan -i 127.0.0.1 $mac >/dev/null
wait_for "$name.service active before the removal" 20 svc_active
ctx dpkg -r $name
for u in socket service; do
    st=$(ct systemctl is-active $name.$u || true)
    [[ $st == inactive ]] || fail "$name.$u is '$st' after dpkg -r"
done
[[ -z $(awk 'FNR > 1 && $2 ~ /:0009$/' /proc/net/udp /proc/net/udp6) ]] || fail "UDP port 9 still bound after dpkg -r"
[[ $(svc socket LoadState) == not-found ]] || fail "$name.socket still loaded after dpkg -r (postrm daemon-reload)"
for f in "${files[@]}"; do
    [[ ! -e /proc/$ct_pid/root$f ]] || fail "$f left after dpkg -r"
done
log "socket + service inactive, port 9 free, ${#files[@]} files gone"
link=/etc/systemd/system/sockets.target.wants/$name.socket
ct test -L $link || fail "dpkg -r removed the admin's enable link (only purge should)"
ctx dpkg --purge $name
left=$(ct find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled /var/cache -name "$name*")
[[ -z $left ]] || fail "left after purge: $left"
log "purged: no $link, no deb-systemd-helper state, no cache directory"

# ---------------------------------------------------------------- 8. original
# The original project's unit, copied to /etc as its README says, before the
# package comes: the install says what shadows what and how to move, and
# changes nothing of it; enabling our socket with it still in /etc then
# works (it is started with the socket passed, serves it, and says its
# --address is not used).
phase "the original project's unit in /etc"
original=/etc/systemd/system/$name.service
sed "s|@BIN@|/usr/bin/$name|" tests/e2e/original-project.service >"/proc/$ct_pid/root$original"
before=$(sha256sum <"/proc/$ct_pid/root$original")
ct systemctl daemon-reload
said=$(ct dpkg -i "$deb_in" 2>&1) || fail "dpkg -i with the original's unit in /etc failed: $said"
sed 's/^/    /' <<<"$said"
grep -qF "$original is not this package's unit" <<<"$said" || fail "the install did not say that $original shadows the package's unit"
grep -qF "systemctl daemon-reload && systemctl enable --now $name.socket" <<<"$said" ||
    fail "the install did not give the commands that move to the socket"
[[ $(sha256sum <"/proc/$ct_pid/root$original") == "$before" ]] || fail "the install changed $original"
[[ $(svc service FragmentPath) == "$original" ]] || fail "$name.service comes from $(svc service FragmentPath), not $original"
ctx systemctl enable --now $name.socket
ct virsh -q -c qemu:///system destroy $domain >/dev/null 2>&1 || true
guest_off() { [[ $(domstate) == "shut off" ]]; }
wait_for "guest $domain shut off" 20 guest_off
ctx wakeonlan -i 127.0.0.1 $mac
wait_for "the original's unit, started by our socket, active" 20 svc_active
wait_for "guest $domain running" 30 guest_running
unused() { ct journalctl -b -u $name.service -o cat | grep -q -- "--listen-address 0.0.0.0:9 is not used"; }
wait_for "journal: its --address is not used, the socket's is" 10 unused
ct systemctl disable --now $name.socket $name.service >/dev/null 2>&1 || true
rm -f "/proc/$ct_pid/root$original"
ctx dpkg --purge $name
log "said once, changed nothing, and worked with our socket"
end_phase
