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
#     and re-activation over TCP, VIA=http in the journal), the security
#     score, the idle check its timer starts (a guest managed-saved, its
#     VIA=idle journal entry, the next packet restoring it, the idle
#     service's score); then, with host B up (tests/e2e/host-b.sh: a libvirtd in a
#     network namespace of its own) and the shipped remote-hosts drop-in
#     installed (only its address replaced), a packet wakes a KVM guest on B
#     over qemu+ssh://, the journal's HOST= names B without the URI's
#     parameters, the local guest still wakes, the service idles out, and
#     the score with the drop-in.
#  5. Always powers the container off (trap EXIT); nothing is left running.
#
# The container shares the host's network namespace (no --private-network),
# so the shipped sockets' 127.0.0.1:9 (UDP) and 127.0.0.1:9109 (TCP) must be
# free on the host; the host's curl is the HTTP client.
#
# Environment: WOL_E2E_CACHE (cache dir), WOL_E2E_MAX_EXPOSURE (default 1.0),
# WOL_E2E_MAX_EXPOSURE_REMOTE (with the drop-in, default 1.2),
# WOL_E2E_HOST_B_NET (host B's /24, see host-b.sh).
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

max_exposure=${WOL_E2E_MAX_EXPOSURE:-1.0}
machine=wol-e2e
domain=wol-e2e-guest
mac=52:54:00:e2:e0:01

errors=() # failures that do not stop the later checks

# ---------------------------------------------------------------- 0. host
phase "host packages"
.ci/ensure-packages.sh debootstrap systemd-container systemd iproute2
log "debootstrap, systemd-container present"

mkdir -p "$cache"
# One run at a time per cache (127.0.0.1:9 and 9109 are the host's).
exec 9>"$cache/lock"
flock -w 900 9 || fail "another run holds $cache/lock"

# ---------------------------------------------------------------- 1. root
phase "root ($root)"
ensure_root "$bin"

# ---------------------------------------------------------------- 2. install
phase "install binary and units"
install -D -m 0755 "$bin" "$root/usr/local/bin/$name"
install -D -m 0644 systemd/$name.service "$root/etc/systemd/system/$name.service"
install -D -m 0644 systemd/$name.socket "$root/etc/systemd/system/$name.socket"
install -D -m 0644 systemd/$name-http.socket "$root/etc/systemd/system/$name-http.socket"
install -D -m 0644 systemd/$name.sysusers "$root/usr/lib/sysusers.d/$name.conf"
install -D -m 0644 systemd/$name-idle.service "$root/etc/systemd/system/$name-idle.service"
install -D -m 0644 systemd/$name-idle.timer "$root/etc/systemd/system/$name-idle.timer"
install -D -m 0644 systemd/$name-wake@.service "$root/etc/systemd/system/$name-wake@.service"
install -D -m 0644 systemd/$name-sleep@.service "$root/etc/systemd/system/$name-sleep@.service"
# Nothing of an earlier run's admin: no options file, no extra units.
rm -f "$root/etc/default/$name" "$root/etc/sysconfig/$name" "$root/etc/systemd/system/wol-original.service"
rm -rf "$root/etc/systemd/system/$name-wake@"*.timer* "$root/etc/systemd/system/$name-sleep@"*.timer*
cmp systemd/$name-idle.service "$root/etc/systemd/system/$name-idle.service"
cmp systemd/$name-idle.timer "$root/etc/systemd/system/$name-idle.timer"
cmp "$bin" "$root/usr/local/bin/$name"
cmp systemd/$name.service "$root/etc/systemd/system/$name.service"
cmp systemd/$name.socket "$root/etc/systemd/system/$name.socket"
cmp systemd/$name-http.socket "$root/etc/systemd/system/$name-http.socket"
cmp systemd/$name.sysusers "$root/usr/lib/sysusers.d/$name.conf"
log "binary and units byte-identical to the repo's"

# Every library the binary links must resolve in the root.
if chroot "$root" ldd /usr/local/bin/$name | grep -q 'not found'; then
    log "libraries missing in the root; installing the host's packages for them"
    mapfile -t lib_packages < <(binary_lib_packages "$bin")
    root_apt_install "$root" "${lib_packages[@]}"
    if chroot "$root" ldd /usr/local/bin/$name | grep 'not found' >&2; then
        fail "the binary's libraries above are missing in $root"
    fi
fi
log "ldd: every library resolves in the root"

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

boot_container "$machine"
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
# The unit file alone: next to the repo's copy, systemd/$name.service.d/
# (the remote-hosts drop-in) would count too.
mkdir -p "$cache/unit-alone"
cp systemd/$name.service "$cache/unit-alone/"
offline=$(systemd-analyze security --offline=yes --root=/ "$cache/unit-alone/$name.service" 2>/dev/null | exposure || true)
[[ -n $online ]] || fail "no score from systemd-analyze security inside the container"
[[ -n $offline ]] || fail "no score from systemd-analyze security --offline=yes on the host"
log "exposure: online (in the container) $online, offline (repo file) $offline; limit $max_exposure"
awk -v a="$online" -v b="$offline" -v m="$max_exposure" 'BEGIN { exit !(a <= m && b <= m) }' ||
    errors+=("exposure above $max_exposure (online $online, offline $offline)")

# ---------------------------------------------------------------- idle
# The shipped idle check and its timer: the guest, given a policy of a few
# seconds, is managed-saved by the check the timer starts (the timer made
# to fire every 5 s by a drop-in instead of every minute), the journal has
# the VIA=idle line, and the next packet restores the guest.
phase "idle check: the timer puts an idle guest to sleep"
wait_for "guest $domain running" 30 guest_running
ct /usr/local/bin/$name idle set $domain --after 5s --action managedsave 2>&1 | sed 's/^/    /'
ct mkdir -p /etc/systemd/system/$name-idle.timer.d
ct sh -c "printf '[Timer]\nOnCalendar=\nOnCalendar=*:*:0/5\nAccuracySec=1s\n' >/etc/systemd/system/$name-idle.timer.d/every-5s.conf"
ct systemctl daemon-reload
ct systemctl start $name-idle.timer
idle_saved() { [[ $(ct virsh -q -c qemu:///system domstate $domain --reason 2>/dev/null) == "shut off (saved)" ]]; }
wait_for "guest $domain managed-saved by the timer's check" 90 idle_saved
ct systemctl stop $name-idle.timer
ct systemctl is-failed -q $name-idle.service && fail "$name-idle.service failed (journal below)"
idle_entry=""
idle_journal() {
    # shellcheck disable=SC2016
    idle_entry=$(ct sh -c 'journalctl -b -u "$1-idle.service" -o json | jq -c --arg dom "$2" "
        select(.VIA == \"idle\" and .DOMAIN == \$dom and .ACTION == \"managedsave\" and .RESULT == \"ok\")
        | {DOMAIN, HOST, ACTION, RESULT, VIA, IDLE_FOR_S, CPU_PERMILLE, PRIORITY}"' sh $name $domain | tail -n 1)
    [[ -n $idle_entry ]]
}
wait_for "a VIA=idle ACTION=managedsave RESULT=ok journal entry for $domain" 10 idle_journal
log "$idle_entry"
ct wakeonlan -i 127.0.0.1 $mac | sed 's/^/    /'
wait_for "guest $domain restored by the next packet" 30 guest_running
ct /usr/local/bin/$name idle clear $domain 2>&1 | sed 's/^/    /'
idle_online=$(ct systemd-analyze security $name-idle.service 2>/dev/null | exposure || true)
[[ -n $idle_online ]] || fail "no score for $name-idle.service inside the container"
log "exposure of $name-idle.service: online $idle_online; limit $max_exposure"
awk -v a="$idle_online" -v m="$max_exposure" 'BEGIN { exit !(a <= m) }' ||
    errors+=("exposure of $name-idle.service above $max_exposure (online $idle_online)")

# ---------------------------------------------------------------- schedules
# (Files go in through /proc/PID/root: the container's root is an overlay
# of $root, whose later changes it need not see.)
# docs/power.md's timer, as written there, for the shipped sleep@ and wake@
# templates, its calendar made to fire every 5 s by a drop-in: the sleep
# timer managed-saves the guest (its policy's action), the wake timer
# restores it, and the journal has both VIA=cli lines.
phase "schedules: the docs' timer sleeps and wakes a guest"
timer_text=$(awk '/^# \/etc\/systemd\/system\/wol-libvirt-gateway-wake@build01.timer$/ { f = 1; next }
    f && /^```/ { exit } f' docs/power.md)
grep -qx 'OnCalendar=Mon..Fri 06:30' <<<"$timer_text" || fail "no timer found in docs/power.md"
ct /usr/local/bin/$name idle set $domain --after 1h --action managedsave 2>&1 | sed 's/^/    /'
for verb in sleep wake; do
    printf '%s\n' "$timer_text" >"/proc/$ct_pid/root/etc/systemd/system/$name-$verb@$domain.timer"
    mkdir -p "/proc/$ct_pid/root/etc/systemd/system/$name-$verb@$domain.timer.d"
    printf '[Timer]\nOnCalendar=\nOnCalendar=*:*:0/5\nAccuracySec=1s\nPersistent=false\n' \
        >"/proc/$ct_pid/root/etc/systemd/system/$name-$verb@$domain.timer.d/soon.conf"
done
ct systemctl daemon-reload
cli_entry=""
cli_journal() {
    # shellcheck disable=SC2016
    cli_entry=$(ct sh -c 'journalctl -b -u "$1-$2@$3.service" -o json | jq -c --arg dom "$3" --arg act "$4" "
        select(.VIA == \"cli\" and .DOMAIN == \$dom and .ACTION == \$act and .RESULT == \"ok\")
        | {DOMAIN, HOST, ACTION, RESULT, VIA, STATE}"' sh $name "$1" $domain "$2" | tail -n 1)
    [[ -n $cli_entry ]]
}
ct systemctl start $name-sleep@$domain.timer
wait_for "guest $domain managed-saved by the sleep timer" 60 idle_saved
ct systemctl stop $name-sleep@$domain.timer
wait_for "a VIA=cli ACTION=managedsave RESULT=ok journal entry" 10 cli_journal sleep managedsave
log "$cli_entry"
ct systemctl start $name-wake@$domain.timer
wait_for "guest $domain restored by the wake timer" 60 guest_running
ct systemctl stop $name-wake@$domain.timer
wait_for "a VIA=cli ACTION=restore RESULT=ok journal entry" 10 cli_journal wake restore
log "$cli_entry"
for verb in sleep wake; do
    ! ct systemctl is-failed -q $name-$verb@$domain.service || fail "$name-$verb@$domain.service failed"
    rm -rf "/proc/$ct_pid/root/etc/systemd/system/$name-$verb@$domain.timer" "/proc/$ct_pid/root/etc/systemd/system/$name-$verb@$domain.timer.d"
done
ct systemctl daemon-reload
ct /usr/local/bin/$name idle clear $domain 2>&1 | sed 's/^/    /'

# ---------------------------------------------------------------- environment
# Options from the environment file the shipped service reads (Debian's
# /etc/default/NAME): a changed --allow and a changed URI take effect at the
# next activation, and a malformed value stops the service with one line
# naming the variable.
phase "options from /etc/default/$name"
env_file=/proc/$ct_pid/root/etc/default/$name
mkdir -p "$(dirname "$env_file")"
journal_has() {
    # shellcheck disable=SC2016
    [[ -n $(ct sh -c 'journalctl -b -u "$1.service" -o json | jq -c "select($2)"' sh $name "$1" | tail -n 1) ]]
}
ct systemctl stop $name.service
ct virsh -q -c qemu:///system destroy $domain | sed 's/^/    /'
wait_for "guest $domain shut off" 20 guest_off
printf '# written by the test\nWOL_ALLOW=someone-else\n' >"$env_file"
ct wakeonlan -i 127.0.0.1 $mac | sed 's/^/    /'
wait_for "WOL_ALLOW from the file: $domain refused (RESULT=refused)" 20 \
    journal_has "select(.DOMAIN == \"$domain\" and .RESULT == \"refused\")"
[[ $(domstate) == "shut off" ]] || fail "guest $domain was started despite WOL_ALLOW"
ct systemctl stop $name.service
printf 'WOL_LIBVIRT_URI=test:///default\n' >"$env_file"
ct wakeonlan -i 127.0.0.1 aa:bb:cc:dd:ee:ff | sed 's/^/    /'
wait_for "WOL_LIBVIRT_URI from the file: the test driver's domain found" 20 \
    journal_has "select(.DOMAIN == \"test\" and .HOST == \"test:///default\" and .RESULT == \"already-up\")"
ct systemctl stop $name.service
printf 'WOL_LIBVIRT_TIMEOUT=0\n' >"$env_file"
poll_guard=""
svc_failed() { ct systemctl is-failed -q $name.service; }
ct wakeonlan -i 127.0.0.1 $mac | sed 's/^/    /'
wait_for "a malformed WOL_LIBVIRT_TIMEOUT stops $name.service" 20 svc_failed
env_line=$(ct journalctl -b -u $name.service -o cat | grep -F "WOL_LIBVIRT_TIMEOUT in the environment" | tail -n 1)
[[ -n $env_line ]] || fail "no journal line naming WOL_LIBVIRT_TIMEOUT"
log "$env_line"
rm -f "$env_file"
ct systemctl stop $name.socket
ct systemctl reset-failed $name.service $name.socket
ct systemctl start $name.socket
poll_guard=units_guard
ct wakeonlan -i 127.0.0.1 $mac | sed 's/^/    /'
wait_for "guest $domain running once the file is gone" 30 guest_running

# ---------------------------------------------------------------- original
# The original project's unit as its README tells users to install it, our
# binary in its place: an always-on Type=simple service with --address and
# --libvirt-uri, binding 0.0.0.0:9 with CAP_NET_BIND_SERVICE as an
# unprivileged user. A packet wakes the guest; killed, it is restarted
# (Restart=always) and serves again; it never idles out.
phase "the original project's unit runs our binary"
ct systemctl stop $name.socket $name.service
ct virsh -q -c qemu:///system destroy $domain | sed 's/^/    /'
wait_for "guest $domain shut off" 20 guest_off
sed "s|@BIN@|/usr/local/bin/$name|" tests/e2e/original-project.service \
    >"/proc/$ct_pid/root/etc/systemd/system/wol-original.service"
ct systemctl daemon-reload
ct systemctl start wol-original.service
original_listening() {
    ct journalctl -b -u wol-original.service -o cat | grep -q "listening on 0.0.0.0:9;.*running until stopped"
}
wait_for "wol-original.service listening on 0.0.0.0:9, running until stopped" 20 original_listening
ct wakeonlan -i 127.0.0.1 $mac | sed 's/^/    /'
wait_for "guest $domain woken through the original's unit" 30 guest_running
pid_before=$(ct systemctl show -p MainPID --value wol-original.service)
ct systemctl kill -s KILL wol-original.service
restarted() {
    local pid
    pid=$(ct systemctl show -p MainPID --value wol-original.service)
    [[ $pid != 0 && $pid != "$pid_before" && $(ct systemctl is-active wol-original.service) == active ]]
}
wait_for "wol-original.service restarted after SIGKILL (Restart=always)" 20 restarted
ct virsh -q -c qemu:///system destroy $domain | sed 's/^/    /'
wait_for "guest $domain shut off" 20 guest_off
served_again() {
    ct wakeonlan -i 127.0.0.1 $mac >/dev/null
    [[ $(domstate) == running ]]
}
wait_for "the restarted process wakes the guest" 30 served_again
ct systemctl stop wol-original.service
rm -f "/proc/$ct_pid/root/etc/systemd/system/wol-original.service"
ct systemctl daemon-reload
ct systemctl start $name.socket

# ---------------------------------------------------------------- remote
# The shipped drop-in for remote URIs, byte for byte but for the address:
# the service, socket-activated by a packet, wakes a KVM guest on host B (a
# libvirtd of its own in a network namespace of its own) over qemu+ssh://,
# and the local guest still over qemu:///system.
phase "remote host: host B up"
dropin=systemd/$name.service.d/remote-hosts.conf
remote_domain=wol-e2e-remote-guest
remote_mac=52:54:00:e2:e0:03
host_b_facts=$(tests/e2e/host-b.sh up --owner $$) || fail "tests/e2e/host-b.sh up failed"
host_b_down() { tests/e2e/host-b.sh down >/dev/null 2>&1 || true; }
on_exit+=(host_b_down)
fact() { sed -n "s/^$1=//p" <<<"$host_b_facts"; }
b_addr=$(fact HOST_B_ADDR)
b_tcp=$(fact HOST_B_TCP_URI)
b_key=$(fact HOST_B_KEY)
b_known=$(fact HOST_B_KNOWN_HOSTS)
[[ -n $b_addr && -n $b_tcp && -f $b_key && -f $b_known ]] || fail "host B's facts are incomplete: $host_b_facts"
log "host B at $b_addr (libvirtd on TCP and behind sshd)"
bvirsh() { virsh -q -c "$b_tcp" "$@"; }
bdomstate() { bvirsh domstate $remote_domain 2>/dev/null | head -n1; }
guest_xml "$remote_domain" "$remote_mac" >"$cache/$remote_domain.xml"
bvirsh define "$cache/$remote_domain.xml" | sed 's/^/    /'
[[ $(bdomstate) == "shut off" ]] || fail "guest $remote_domain on host B is '$(bdomstate)', expected 'shut off'"

phase "remote host: the drop-in, the key, host B's host key"
wait_for "$name.service inactive (idle) before the drop-in" 75 svc_inactive
sed "s/198\.51\.100\.10/$b_addr/g" "$dropin" >"$cache/remote-hosts.conf"
changed=$(diff "$dropin" "$cache/remote-hosts.conf" | grep -c '^>' || true)
addr_lines=$(grep -c '198\.51\.100\.10' "$dropin")
((changed == addr_lines)) || fail "replacing the address changed $changed lines of $dropin, expected $addr_lines"
ct install -d -m 0755 /etc/systemd/system/$name.service.d
install -m 0644 "$cache/remote-hosts.conf" "/proc/$ct_pid/root/etc/systemd/system/$name.service.d/remote-hosts.conf"
# As the drop-in's comment says: the key readable by root only, host B's key
# for everyone in /etc/ssh/ssh_known_hosts.
ct install -d -m 0700 /etc/wol-libvirt-gateway
install -m 0600 "$b_key" "/proc/$ct_pid/root/etc/wol-libvirt-gateway/ssh-key"
cat "$b_known" >>"/proc/$ct_pid/root/etc/ssh/ssh_known_hosts"
ct systemctl daemon-reload
dropins=$(ct systemctl show -p DropInPaths --value $name.service)
[[ $dropins == *remote-hosts.conf* ]] || fail "the drop-in is not loaded: DropInPaths=$dropins"
log "drop-in loaded ($changed address lines replaced), key and known_hosts in place"

phase "remote host: a packet wakes the guest on host B over qemu+ssh://"
inv_remote=$(invocation)
ct wakeonlan -i 127.0.0.1 $remote_mac | sed 's/^/    /'
b_running() { [[ $(bdomstate) == running ]]; }
wait_for "guest $remote_domain on host B running" 30 b_running
[[ $(invocation) != "$inv_remote" ]] || fail "no new service invocation for the packet"
b_host="qemu+ssh://wol@$b_addr/system"
remote_entry=""
remote_journal() {
    # shellcheck disable=SC2016
    remote_entry=$(ct sh -c 'journalctl -b -u "$1" -o json | jq -c --arg dom "$2" "
        select(.DOMAIN == \$dom and .ACTION == \"start\" and .RESULT == \"ok\")
        | {HOST, DOMAIN, MAC, ACTION, RESULT, PRIORITY}"' sh $name $remote_domain | tail -n 1)
    [[ -n $remote_entry ]]
}
wait_for "a journal entry: $remote_domain started" 10 remote_journal
log "$remote_entry"
[[ $remote_entry == *"\"HOST\":\"$b_host\""* ]] || fail "HOST= is not $b_host: $remote_entry"
ct journalctl -b -u $name -o cat | grep -F "keyfile" && fail "the URI's parameters are in the journal"
log "HOST=$b_host, without its parameters"

phase "remote host: the local guest still wakes with the drop-in"
ct virsh -q -c qemu:///system destroy $domain | sed 's/^/    /'
wait_for "guest $domain shut off" 20 guest_off
ct wakeonlan -i 127.0.0.1 $mac | sed 's/^/    /'
wait_for "guest $domain running (qemu:///system)" 30 guest_running
wait_for "$name.service inactive after the idle timeout" 75 svc_inactive
result=$(ct systemctl show -p Result --value $name.service)
[[ $result == success ]] || fail "$name.service ended with Result=$result (with the drop-in)"
log "idle exit with the drop-in: Result=success"

phase "remote host: security score with the drop-in"
# What the drop-in's network and ssh cost (its comment lists each item).
dropin_max=${WOL_E2E_MAX_EXPOSURE_REMOTE:-1.2}
online=$(ct systemd-analyze security $name.service 2>/dev/null | exposure || true)
# Offline, the repo's unit with its systemd/$name.service.d/ beside it.
offline=$(systemd-analyze security --offline=yes --root=/ systemd/$name.service 2>/dev/null | exposure || true)
[[ -n $online ]] || fail "no score from systemd-analyze security inside the container"
[[ -n $offline ]] || fail "no score from systemd-analyze security --offline=yes for the unit with its drop-in"
log "exposure with the drop-in: online (in the container) $online, offline (repo unit + drop-in) $offline; limit $dropin_max"
ct systemd-analyze security $name.service 2>/dev/null | grep -E '^✗' | sed 's/^/    /' || true
awk -v a="$online" -v b="$offline" -v m="$dropin_max" 'BEGIN { exit !(a <= m && b <= m) }' ||
    errors+=("exposure with the drop-in above $dropin_max (online $online, offline $offline)")

end_phase
if ((${#errors[@]})); then
    printf 'e2e: FAIL: %s\n' "${errors[@]}" >&2
    exit 1
fi

end_phase
