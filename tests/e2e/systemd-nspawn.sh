#!/usr/bin/env bash
# End-to-end test of the real binary and the shipped units under a REAL
# systemd (252, Debian 12) booted with systemd-nspawn, with libvirtd and a
# tiny QEMU/KVM guest running inside the container.
#
#   sudo tests/e2e/systemd-nspawn.sh [BINARY]     # from the repo root
#
# BINARY defaults to target/release/wol-libvirt-gateway. Needs root; PID 1 of
# the host need not be systemd. What it does:
#  1. Builds a Debian 12 root (debootstrap + libvirt-daemon-system, polkitd,
#     qemu-system-x86, wakeonlan, jq) ONCE into $WOL_E2E_CACHE (default
#     /var/cache/wol-libvirt-gateway-e2e). The root counts as built only when
#     its stamp file (written last) matches this script's package list; an
#     interrupted build is thrown away and redone.
#  2. Copies the binary and systemd/* (unchanged, checked with cmp) into it.
#  3. Boots it (--volatile=overlay: the cached root stays read-only, every run
#     starts from the same state and writes go to a tmpfs).
#  4. Checks socket activation, guest start, STATUS=, idle exit,
#     re-activation, the journal fields, then the same over the HTTP socket
#     (a token made by `token add`, curl from the host with ?wait=, idle exit
#     and re-activation over TCP, VIA=http in the journal), and the security
#     score.
#  5. Always powers the container off (trap EXIT); nothing is left running.
#
# The container shares the host's network namespace (no --private-network),
# so the shipped sockets' 127.0.0.1:9 (UDP) and 127.0.0.1:9109 (TCP) must be
# free on the host; the host's curl is the HTTP client.
#
# Environment: WOL_E2E_CACHE (cache dir), WOL_E2E_MAX_EXPOSURE (default 1.0).
set -euo pipefail

script=e2e
# shellcheck source=tests/e2e/nspawn-lib.sh
source "$(dirname "$0")/nspawn-lib.sh"

[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap, systemd-nspawn, nsenter)"
[[ -f systemd/wol-libvirt-gateway.service ]] || fail "run from the repo root"

name=wol-libvirt-gateway
bin=${1:-target/release/$name}
[[ -f $bin && -x $bin ]] || fail "binary $bin not found (cargo build --locked --release)"
bin=$(realpath "$bin")

cache=${WOL_E2E_CACHE:-/var/cache/wol-libvirt-gateway-e2e}
root=$cache/root
stamp_file=.wol-e2e-root-ready
max_exposure=${WOL_E2E_MAX_EXPOSURE:-1.0}
machine=wol-e2e
domain=wol-e2e-guest
mac=52:54:00:e2:e0:01
suite=bookworm

# What the root needs. Changing these lists changes the stamp, so the next
# run rebuilds the root.
bootstrap_include=(systemd systemd-sysv dbus iproute2 libvirt0)
root_packages=(libvirt-daemon-system libvirt-clients polkitd qemu-system-x86 wakeonlan jq)
root_format=2 # bump when the build steps below change
stamp="format=$root_format suite=$suite include=${bootstrap_include[*]} packages=${root_packages[*]}"

errors=() # failures that do not stop the later checks


# ---------------------------------------------------------------- 0. host
phase "host packages"
.ci/ensure-packages.sh debootstrap systemd-container systemd
log "debootstrap, systemd-container present"

mkdir -p "$cache"
# One run at a time per cache (the root and 127.0.0.1:9 are shared).
exec 9>"$cache/lock"
flock -w 900 9 || fail "another run holds $cache/lock"
nspawn_log=$cache/nspawn.log

# ---------------------------------------------------------------- 1. root
# Debian packages of the libraries the binary links (for the root).
binary_lib_packages() {
    local libs
    mapfile -t libs < <(ldd "$bin" | awk '$3 ~ /^\// {print $3; print "/usr" $3}')
    ((${#libs[@]} == 0)) || { dpkg -S "${libs[@]}" 2>/dev/null || true; } | cut -d: -f1 | sort -u
}

# apt-get inside the root, in nspawn's private namespaces (nothing mounted on
# the host, so an interrupted run leaves no mount behind under the cache).
root_apt_install() {
    local dir=$1
    shift
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 0755 "$dir/usr/sbin/policy-rc.d"
    systemd-nspawn -q --register=no --keep-unit -D "$dir" \
        -E DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" && apt-get clean' \
        sh "$@" >>"$cache/build.log" 2>&1 ||
        fail "apt-get install $* in $dir failed; see $cache/build.log"
    rm -f "$dir/usr/sbin/policy-rc.d"
}

build_root() {
    local new=$cache/root.new mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [[ -n $mirror ]] || mirror=http://deb.debian.org/debian
    log "building $root from scratch (mirror $mirror); log in $cache/build.log"
    [[ ! -e $new ]] || rm -rf --one-file-system "$new"
    : >"$cache/build.log"
    local include
    include=$(
        IFS=,
        echo "${bootstrap_include[*]}"
    )
    debootstrap --variant=minbase --include="$include" "$suite" "$new" "$mirror" \
        >>"$cache/build.log" 2>&1 || fail "debootstrap failed; see $cache/build.log"
    log "debootstrap done ($(fmt_ms "$(ms_since "$phase_t0")"))"
    local lib_packages
    mapfile -t lib_packages < <(binary_lib_packages)
    root_apt_install "$new" "${root_packages[@]}" "${lib_packages[@]}"
    log "packages installed ($(fmt_ms "$(ms_since "$phase_t0")"))"
    # nspawn's cgroupfs is read-only: libvirt must not try to create its own
    # cgroup controllers for the guest.
    grep -q '^cgroup_controllers' "$new/etc/libvirt/qemu.conf" ||
        echo 'cgroup_controllers = [ ]' >>"$new/etc/libvirt/qemu.conf"
    # No getty on the pipe console. No libvirt-guests: at poweroff it would
    # ask the (bootless, ACPI-deaf) guest to shut down and wait 120 s.
    ln -sf /dev/null "$new/etc/systemd/system/console-getty.service"
    ln -sf /dev/null "$new/etc/systemd/system/libvirt-guests.service"
    echo "$machine" >"$new/etc/hostname"
    echo "127.0.1.1 $machine" >>"$new/etc/hosts"
    # Last: the stamp says the root is complete.
    echo "$stamp" >"$new/$stamp_file"
    [[ ! -e $root ]] || rm -rf --one-file-system "$root"
    mv "$new" "$root"
}

phase "root ($root)"
if [[ -f $root/$stamp_file && $(cat "$root/$stamp_file") == "$stamp" ]]; then
    log "cached root is complete (stamp matches)"
else
    if [[ -e $root ]]; then
        log "cached root is incomplete or outdated (stamp): rebuilding"
    elif [[ -e $cache/root.new ]]; then
        log "discarding an interrupted build ($cache/root.new)"
    fi
    build_root
fi

# ---------------------------------------------------------------- 2. install
phase "install binary and units"
install -D -m 0755 "$bin" "$root/usr/local/bin/$name"
install -D -m 0644 systemd/$name.service "$root/etc/systemd/system/$name.service"
install -D -m 0644 systemd/$name.socket "$root/etc/systemd/system/$name.socket"
install -D -m 0644 systemd/$name-http.socket "$root/etc/systemd/system/$name-http.socket"
install -D -m 0644 systemd/$name.sysusers "$root/usr/lib/sysusers.d/$name.conf"
cmp "$bin" "$root/usr/local/bin/$name"
cmp systemd/$name.service "$root/etc/systemd/system/$name.service"
cmp systemd/$name.socket "$root/etc/systemd/system/$name.socket"
cmp systemd/$name-http.socket "$root/etc/systemd/system/$name-http.socket"
cmp systemd/$name.sysusers "$root/usr/lib/sysusers.d/$name.conf"
log "binary and units byte-identical to the repo's"

# Every library the binary links must resolve in the root.
if chroot "$root" ldd /usr/local/bin/$name | grep -q 'not found'; then
    log "libraries missing in the root; installing the host's packages for them"
    mapfile -t lib_packages < <(binary_lib_packages)
    root_apt_install "$root" "${lib_packages[@]}"
    if chroot "$root" ldd /usr/local/bin/$name | grep 'not found' >&2; then
        fail "the binary's libraries above are missing in $root"
    fi
fi
log "ldd: every library resolves in the root"

# KVM: libvirt-qemu needs a group with the host's /dev/kvm gid (the device is
# bound into the container as is). Without /dev/kvm: plain QEMU emulation.
virt_type=qemu
kvm_args=()
if [[ -c /dev/kvm ]]; then
    if ((($(stat -c '0%a' /dev/kvm) & 060) != 060)) || [[ $(stat -c %g /dev/kvm) == 0 ]]; then
        # A fresh machine has /dev/kvm root-only: what udev does on a normal host.
        getent group kvm >/dev/null || groupadd --system kvm
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
        log "/dev/kvm was root-only: now root:kvm 0660"
    fi
    kvm_gid=$(stat -c %g /dev/kvm)
    kvm_group=$(chroot "$root" getent group "$kvm_gid" | cut -d: -f1 || true)
    if [[ -z $kvm_group ]]; then
        kvm_group=kvm-host
        chroot "$root" groupadd --system --gid "$kvm_gid" "$kvm_group"
    fi
    chroot "$root" id -nG libvirt-qemu | grep -qw "$kvm_group" ||
        chroot "$root" usermod -aG "$kvm_group" libvirt-qemu
    kvm_args=(--bind=/dev/kvm)
    virt_type=kvm
    log "KVM guest (libvirt-qemu in $kvm_group, gid $kvm_gid)"
else
    log "no /dev/kvm: guest type='qemu' (emulation)"
fi

# ---------------------------------------------------------------- 3. boot
phase "boot container"
# The container shares the host's network namespace: the shipped socket's
# 127.0.0.1:9 must be free on the host.
udp9=$(awk 'FNR > 1 && $2 ~ /:0009$/' /proc/net/udp /proc/net/udp6)
[[ -z $udp9 ]] || fail "UDP port 9 is already in use on this host (the shipped socket listens on 127.0.0.1:9 in the container, which shares the host's network):
$udp9"
# 9109 = 0x2395, listening (state 0A).
tcp9109=$(awk 'FNR > 1 && $2 ~ /:2395$/ && $4 == "0A"' /proc/net/tcp /proc/net/tcp6)
[[ -z $tcp9109 ]] || fail "TCP port 9109 is already in use on this host (the shipped HTTP socket listens on 127.0.0.1:9109 in the container):
$tcp9109"
command -v curl >/dev/null || fail "curl not found on the host (.ci/run installs it)"

setsid systemd-nspawn --register=no --keep-unit --volatile=overlay -q \
    -D "$root" -b -M "$machine" --console=pipe "${kvm_args[@]}" \
    >"$nspawn_log" 2>&1 </dev/null &
nspawn_pid=$!
nspawn_started() { [[ $(cat "/proc/$nspawn_pid/comm" 2>/dev/null) == systemd-nspawn ]]; }
wait_for "systemd-nspawn running (pid $nspawn_pid)" 5 nspawn_started
container_init() {
    local p
    for p in $(pgrep -P "$nspawn_pid"); do
        if [[ $(cat "/proc/$p/comm" 2>/dev/null) == systemd ]]; then
            ct_pid=$p
            return 0
        fi
    done
    return 1
}
wait_for "container systemd (child of nspawn)" 20 container_init
log "container PID 1 is host pid $ct_pid"
system_up() {
    local s
    s=$(ct systemctl is-system-running 2>/dev/null) || true
    [[ $s == running || $s == degraded ]]
}
wait_for "systemctl is-system-running: running or degraded" 90 system_up
state=$(ct systemctl is-system-running || true)
log "system: $state"
[[ $state == running ]] || ct systemctl --no-pager --failed --plain --no-legend | sed 's/^/    failed: /'
for f in usr/local/bin/$name:"$bin" etc/systemd/system/$name.service:systemd/$name.service \
    etc/systemd/system/$name.socket:systemd/$name.socket usr/lib/sysusers.d/$name.conf:systemd/$name.sysusers; do
    cmp "/proc/$ct_pid/root/${f%%:*}" "${f#*:}" || fail "/${f%%:*} in the container differs from ${f#*:}"
done
log "the booted system sees the repo's binary and units"

# ---------------------------------------------------------------- 4. units
phase "enable socket"
ct systemd-sysusers
ct id $name | grep -qw libvirt || fail "user $name is not in group libvirt: $(ct id $name)"
log "$(ct id $name)"
ct systemctl daemon-reload
ct systemctl enable --now $name.socket 2>&1 | sed 's/^/    /'
[[ $(ct systemctl is-active $name.socket) == active ]] || fail "$name.socket is not active"
svc_state() { ct systemctl show -p ActiveState --value $name.service; }
[[ $(svc_state) == inactive ]] || fail "$name.service is $(svc_state) before any packet (expected inactive)"
log "socket active, service inactive before any packet"
# Dead ends: a failing service re-triggered by its queued datagram until the
# start limit trips and the socket fails too.
units_guard() {
    if ct systemctl is-failed -q $name.service || ct systemctl is-failed -q $name.socket; then
        fail "$name.service or .socket failed (journal below)"
    fi
}

phase "define guest"
define_guest

# ---------------------------------------------------------------- checks
poll_guard=units_guard
svc_active() { [[ $(svc_state) == active ]]; }
svc_inactive() { [[ $(svc_state) == inactive ]]; }
guest_running() { [[ $(domstate) == running ]]; }
guest_off() { [[ $(domstate) == "shut off" ]]; }
invocation() { ct systemctl show -p InvocationID --value $name.service; }

phase "first packet: activation"
ct wakeonlan -i 127.0.0.1 $mac | sed 's/^/    /'
wait_for "$name.service active" 20 svc_active
inv1=$(invocation)
wait_for "guest $domain running" 30 guest_running
status_text=""
status_woke() {
    status_text=$(ct systemctl show -p StatusText --value $name.service)
    [[ $status_text == *"started $domain"* ]]
}
wait_for "STATUS= names the woken guest" 20 status_woke
log "StatusText: $status_text"
ct systemctl --no-pager status $name.service 2>&1 | grep -F "Status:" | sed 's/^ */    systemctl status: /'

phase "idle exit"
wait_for "$name.service inactive after the idle timeout" 75 svc_inactive
result=$(ct systemctl show -p Result --value $name.service)
[[ $result == success ]] || fail "$name.service ended with Result=$result"
[[ $(ct systemctl is-active $name.socket) == active ]] || fail "$name.socket is not active after the idle exit"
log "service exited (Result=success), socket still listening"

phase "second packet: re-activation"
ct virsh -q -c qemu:///system destroy $domain | sed 's/^/    /'
wait_for "guest $domain shut off" 20 guest_off
ct wakeonlan -i 127.0.0.1 $mac | sed 's/^/    /'
new_invocation() {
    local i
    i=$(invocation)
    [[ -n $i && $i != "$inv1" ]] && svc_active
}
wait_for "$name.service active again (new invocation)" 20 new_invocation
wait_for "guest $domain running again" 30 guest_running

phase "journal fields"
entries=""
journal_entries() {
    # jq runs inside the container (the host need not have it).
    # shellcheck disable=SC2016
    entries=$(ct sh -c 'journalctl -b -u "$1" -o json | jq -c --arg id "$1" --arg mac "$2" --arg dom "$3" "
        select(.MAC == \$mac and .DOMAIN == \$dom and .ACTION == \"start\" and .RESULT == \"ok\")
        | {problems: [
              (if .PRIORITY != \"6\" then \"PRIORITY=\(.PRIORITY) (want 6, info)\" else empty end),
              (if .SYSLOG_IDENTIFIER != \$id then \"SYSLOG_IDENTIFIER=\(.SYSLOG_IDENTIFIER)\" else empty end),
              (if ((.SOURCE // \"\") | test(\"^127[.]0[.]0[.]1:[0-9]+\$\")) | not
               then \"SOURCE=\(.SOURCE) (want 127.0.0.1:PORT)\" else empty end)],
           PRIORITY, SYSLOG_IDENTIFIER, MAC, DOMAIN, STATE, ACTION, RESULT, SOURCE, MESSAGE}"' \
        sh $name $mac $domain)
    (($(grep -c . <<<"$entries") >= 2))
}
wait_for "two ACTION=start RESULT=ok entries for $mac in the journal" 10 journal_entries
while read -r e; do
    log "$e"
    [[ $e == '{"problems":[],'* ]] ||
        errors+=("journal entry with wrong fields ${e%%],*}]: ${e#*],}")
done <<<"$entries"
if ((${#errors[@]} == 0)); then
    log "fields MAC, DOMAIN, ACTION=start, RESULT=ok, SOURCE, SYSLOG_IDENTIFIER=$name, PRIORITY=6 present"
else
    log "FAILED (reported at the end): ${errors[-1]}"
fi

# ---------------------------------------------------------------- HTTP
phase "HTTP wake: token, socket, activation over TCP"
wait_for "$name.service inactive (idle) before the HTTP socket" 75 svc_inactive
ct virsh -q -c qemu:///system destroy $domain | sed 's/^/    /'
wait_for "guest $domain shut off" 20 guest_off
token=$(ct /usr/local/bin/$name token add $domain 2>/dev/null) || fail "token add failed"
[[ ${#token} -ge 43 ]] || fail "token add printed no token"
log "token add $domain: a ${#token}-character token"
ct systemctl enable --now $name-http.socket 2>&1 | sed 's/^/    /'
[[ $(ct systemctl is-active $name-http.socket) == active ]] || fail "$name-http.socket is not active"
[[ $(svc_state) == inactive ]] || fail "$name.service is $(svc_state) before any request (expected inactive)"
inv_http=$(invocation)
answer=$(curl -sS --max-time 60 -H "Authorization: Bearer $token" \
    "http://127.0.0.1:9109/v1/wake/$domain?wait=30" -w ' %{http_code}') || fail "curl failed: $answer"
log "answer: $answer"
[[ $answer == *'"result":"ok"'* && $answer == *'"state":"running"'* && $answer == *' 200' ]] ||
    fail "the HTTP wake did not answer 200 ok/running: $answer"
guest_running || fail "the answer said running but virsh says $(domstate)"
[[ $(invocation) != "$inv_http" ]] || fail "no new service invocation for the HTTP request"
unauthorized=$(curl -sS --max-time 20 -o /dev/null -w '%{http_code}' "http://127.0.0.1:9109/v1/wake/$domain")
[[ $unauthorized == 401 ]] || fail "a request without a token got $unauthorized"

phase "HTTP: idle exit and re-activation over TCP"
wait_for "$name.service inactive after the idle timeout" 75 svc_inactive
[[ $(ct systemctl is-active $name-http.socket) == active ]] || fail "$name-http.socket is not active after the idle exit"
ct virsh -q -c qemu:///system destroy $domain | sed 's/^/    /'
wait_for "guest $domain shut off" 20 guest_off
inv_idle=$(invocation)
answer=$(curl -sS --max-time 60 -H "Authorization: Bearer $token" \
    -d "{\"domain\":\"$domain\"}" -H 'Content-Type: application/json' \
    "http://127.0.0.1:9109/v1/wake?wait=30" -w ' %{http_code}') || fail "curl failed: $answer"
log "answer: $answer"
[[ $answer == *'"action":"start"'* && $answer == *' 200' ]] || fail "re-activation over HTTP: $answer"
[[ $(invocation) != "$inv_idle" ]] || fail "no new service invocation after the idle exit"
wait_for "guest $domain running again" 30 guest_running
via_http() {
    # shellcheck disable=SC2016
    (($(ct sh -c 'journalctl -b -u "$1" -o json | jq -c --arg dom "$2" "
        select(.VIA == \"http\" and .DOMAIN == \$dom and .RESULT == \"ok\")"' sh $name $domain |
        grep -c .) >= 2))
}
wait_for "two VIA=http RESULT=ok journal entries for $domain" 10 via_http
ct journalctl -b -u $name -o cat | grep -F "$token" && fail "the token is in the journal"
log "no token in the journal"

phase "security score"
exposure() { sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'; }
online=$(ct systemd-analyze security $name.service 2>/dev/null | exposure || true)
offline=$(systemd-analyze security --offline=yes --root=/ systemd/$name.service 2>/dev/null | exposure || true)
[[ -n $online ]] || fail "no score from systemd-analyze security inside the container"
[[ -n $offline ]] || fail "no score from systemd-analyze security --offline=yes on the host"
log "exposure: online (in the container) $online, offline (repo file) $offline; limit $max_exposure"
awk -v a="$online" -v b="$offline" -v m="$max_exposure" 'BEGIN { exit !(a <= m && b <= m) }' ||
    errors+=("exposure above $max_exposure (online $online, offline $offline)")

end_phase
if ((${#errors[@]})); then
    printf 'e2e: FAIL: %s\n' "${errors[@]}" >&2
    exit 1
fi

end_phase
