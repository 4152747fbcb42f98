#!/usr/bin/env bash
# Host B: a second libvirt host on a network of its own, for the tests of
# remote URIs (qemu+tcp://, qemu+ssh://). It is the cached Debian 12 root of
# the e2e suite booted with systemd-nspawn --private-network --network-veth:
# its own network namespace, reached from this machine only over the veth
# pair this script addresses (198.51.100.1 here, 198.51.100.2 in B: TEST-NET-2,
# which no real network routes), running its own libvirtd (QEMU/KVM guests,
# listening on TCP with auth_tcp = "none") and sshd (user `wol` in group
# libvirt, logging in with a key made here for this boot).
#
#   sudo tests/e2e/host-b.sh up [--owner PID]   # boots B, prints its facts
#   sudo tests/e2e/host-b.sh env                # prints them again
#   sudo tests/e2e/host-b.sh down               # powers B off, undoes `up`
#   sudo tests/e2e/host-b.sh root               # only builds the cached root
#                                               # (setup-host.sh does, so the
#                                               # tests do not wait for it)
#
# Run from the repository root. `up` prints KEY=VALUE lines (HOST_B_ADDR,
# HOST_B_TCP_URI, HOST_B_SSH_URI, HOST_B_PID for nsenter, ...) on stdout,
# everything else on stderr. With --owner PID, B is powered off as soon as
# that process ends, however it ends: the Rust tests pass their own pid, so
# a failing or killed test run never leaves B behind. `up` first removes a B
# whose owner is gone; it refuses while another owner's B is up.
#
# What `up` adds to this machine, and `down` removes: the veth pair (it goes
# with the container), the state directory /run/wol-e2e-host-b (the key
# pair, B's known_hosts line) and /etc/ssh/ssh_config.d/wol-e2e-host-b.conf,
# which tells this machine's ssh to check B's host key against that
# known_hosts (and nothing else about any other host) and never to prompt.
# What stays: an "unreachable" route for B's /24 (TEST-NET-2, which no real
# network uses), under the pair's own route: whatever still talks to B after
# B is gone (a gateway a killed test left running, a service retrying) is
# refused here and never leaves by the default route.
#
# Environment: WOL_E2E_CACHE (the root's cache), WOL_E2E_HOST_B_NET (the
# first three octets of a /24 for the veth pair, default 198.51.100).
set -euo pipefail

script=host-b
name=wol-libvirt-gateway
domain=""
machine=wol-e2e-b
iface=ve-$machine
state=/run/wol-e2e-host-b
lockfile=/run/wol-e2e-host-b.lock
ssh_conf=/etc/ssh/ssh_config.d/wol-e2e-host-b.conf
net=${WOL_E2E_HOST_B_NET:-198.51.100}
peer=$net.1
addr=$net.2
self=$(realpath "$0")

cd "$(dirname "$self")/../.."
# shellcheck source=tests/e2e/nspawn-lib.sh
source tests/e2e/nspawn-lib.sh
# Progress goes to stderr: stdout carries only the facts.
exec 3>&1 1>&2

[[ $(id -u) -eq 0 ]] || fail "needs root (systemd-nspawn, nsenter, ip)"

# The owner's start time (/proc/PID/stat field 22): a pid reused later by
# another process is not mistaken for the owner.
start_time() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }
owner_alive() {
    local pid start
    pid=$(cat "$state/owner" 2>/dev/null) || return 1
    start=$(cat "$state/owner-start" 2>/dev/null) || return 1
    [[ -n $pid && $(start_time "$pid") == "$start" ]]
}

facts() {
    [[ -f $state/facts ]] || fail "host B is not up (tests/e2e/host-b.sh up)"
    cat "$state/facts" >&3
}

down() {
    if [[ -f $state/facts ]]; then
        nspawn_pid=$(sed -n 's/^HOST_B_NSPAWN_PID=//p' "$state/facts")
        ct_pid=$(sed -n 's/^HOST_B_PID=//p' "$state/facts")
        if [[ -n $nspawn_pid ]] && pid_alive "$nspawn_pid"; then
            phase "power off host B"
            poweroff_container || true
        fi
        nspawn_pid="" ct_pid=""
    fi
    undo_up
}

# What `up` added to this machine (the container aside), gone.
undo_up() {
    ip link del "$iface" 2>/dev/null || true
    rm -f "$ssh_conf"
    rm -rf "$state"
}

up() {
    local owner=""
    if [[ ${1:-} == --owner ]]; then
        owner=${2:?--owner needs a PID}
        [[ -n $(start_time "$owner") ]] || fail "owner $owner is not a running process"
    fi
    if [[ -f $state/facts ]]; then
        if owner_alive; then
            fail "host B is up for process $(cat "$state/owner"); tests/e2e/host-b.sh down first"
        fi
        log "removing a host B whose owner is gone"
        down
    fi
    # B's addresses must be nobody else's.
    local taken
    taken=$(ip -o addr show to "$net.0/24" | grep -v " $iface " || true)
    [[ -z $taken ]] || fail "$net.0/24 is in use on this machine; set WOL_E2E_HOST_B_NET: $taken"

    on_exit+=(undo_failed_up)
    phase "host packages"
    .ci/ensure-packages.sh openssh-client libvirt-clients iproute2
    phase "root ($root)"
    ensure_root ""

    phase "boot host B ($machine, private network)"
    mkdir -p "$state"
    chmod 0700 "$state"
    boot_container "$machine" --private-network --network-veth
    # Written at once, so `down` finds B even if the rest of `up` fails.
    printf 'HOST_B_NSPAWN_PID=%s\nHOST_B_PID=%s\n' "$nspawn_pid" "$ct_pid" >"$state/facts"
    if [[ -n $owner ]]; then
        echo "$owner" >"$state/owner"
        start_time "$owner" >"$state/owner-start"
    fi

    phase "network: $peer (here, $iface) <-> $addr (B, host0)"
    # A safety net under the veth pair's route, kept after `down`: should the
    # pair go (B powered off) while something still talks to B, the kernel
    # refuses at once instead of sending it to this machine's default route.
    ip route replace unreachable "$net.0/24" metric 4096
    ip addr replace "$peer/24" dev "$iface"
    ip link set "$iface" up
    ct ip addr replace "$addr/24" dev host0
    ct ip link set host0 up
    ct ip link set lo up

    phase "libvirtd on TCP, sshd"
    # As the host notes say: libvirtd.service is socket-activated; the TCP
    # socket unit replaces the plain one's listeners only if the daemon
    # starts after it.
    ct sh -c 'echo "auth_tcp = \"none\"" >>/etc/libvirt/libvirtd.conf'
    ct systemctl stop libvirtd.service
    ct systemctl start libvirtd-tcp.socket libvirtd.service
    ct useradd --create-home --shell /bin/sh --groups libvirt wol
    rm -f "$state/id_ed25519" "$state/id_ed25519.pub"
    ssh-keygen -q -t ed25519 -N '' -C "wol-e2e host B $(date +%F)" -f "$state/id_ed25519"
    local home=/proc/$ct_pid/root/home/wol
    install -d -m 0700 "$home/.ssh"
    install -m 0600 "$state/id_ed25519.pub" "$home/.ssh/authorized_keys"
    ct chown -R wol:wol /home/wol/.ssh
    ct systemctl start ssh.service
    # B's own host key, read from its file system: nothing learnt over the
    # network on first use.
    local hostkey
    hostkey=$(cut -d' ' -f1,2 "/proc/$ct_pid/root/etc/ssh/ssh_host_ed25519_key.pub")
    echo "$addr $hostkey" >"$state/known_hosts"
    cat >"$ssh_conf" <<CONF
# Written by wol-libvirt-gateway's tests/e2e/host-b.sh for its test host B;
# removed by 'tests/e2e/host-b.sh down'. Applies to that address only.
Host $addr
    UserKnownHostsFile $state/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    IdentitiesOnly yes
    ConnectTimeout 10
CONF

    local tcp_uri=qemu+tcp://$addr/system
    local ssh_uri="qemu+ssh://wol@$addr/system?keyfile=$state/id_ed25519&no_tty=1"
    wait_for "libvirtd on B answers $tcp_uri" 30 virsh -c "$tcp_uri" version
    wait_for "libvirtd on B answers $ssh_uri" 30 virsh -c "$ssh_uri" version
    cat >>"$state/facts" <<FACTS
HOST_B_ADDR=$addr
HOST_B_PEER=$peer
HOST_B_IFACE=$iface
HOST_B_KEY=$state/id_ed25519
HOST_B_KNOWN_HOSTS=$state/known_hosts
HOST_B_TCP_URI=$tcp_uri
HOST_B_SSH_URI=$ssh_uri
HOST_B_VIRT_TYPE=$virt_type
FACTS

    if [[ -n $owner ]]; then
        # The watcher: B goes when its owner does.
        setsid "$self" watch "$owner" "$(cat "$state/owner-start")" \
            </dev/null >>"$cache/host-b-watch.log" 2>&1 3>&- 9>&- &
        log "host B is powered off when process $owner ends"
    fi
    keep_container=1
    end_phase
    facts
}

# The EXIT hook of `up`: after a failure, nothing of it stays (the lib's
# cleanup then powers B off).
undo_failed_up() {
    ((${keep_container:-0})) || undo_up
}

# watch OWNER START: waits for the owner (pid and start time) to end, then
# takes B down, unless B is another owner's by then (a new `up` after a
# `down`): checked again under the lock.
watch() {
    local owner=$1 start=$2
    while [[ $(start_time "$owner") == "$start" ]]; do sleep 0.5; done
    exec 9>"$lockfile"
    flock 9
    if [[ $(cat "$state/owner" 2>/dev/null) != "$owner" ||
        $(cat "$state/owner-start" 2>/dev/null) != "$start" ]]; then
        return 0 # taken down already, or up again for another owner
    fi
    echo "$(date '+%F %T') owner $owner ended: taking host B down"
    down
    end_phase
}

command=${1:-}
shift || true
case $command in
up)
    exec 9>"$lockfile"
    flock -w 600 9 || fail "another host-b.sh holds $lockfile"
    up "$@"
    ;;
down)
    exec 9>"$lockfile"
    flock -w 600 9 || fail "another host-b.sh holds $lockfile"
    down
    ;;
env) facts ;;
root)
    phase "root ($root)"
    ensure_root ""
    end_phase
    ;;
watch)
    # Not the lib's cleanup: the watcher never powers off by its exit trap.
    trap - EXIT
    watch "${1:?watch needs the owner pid}" "${2:?and its start time}"
    ;;
*)
    echo "usage: $0 up [--owner PID] | env | down | root" >&2
    exit 2
    ;;
esac
