#!/usr/bin/env bash
# Prepares this machine for the end-to-end tests (tests/e2e_libvirtd.rs):
# libvirtd with the QEMU driver, a real QEMU/KVM, and the `wakeonlan` sender;
# and the cached Debian root the containers boot (host B of
# tests/e2e_remote.rs, tests/e2e/systemd-nspawn.sh).
# Idempotent; needs root. PID 1 need not be systemd: the daemons are started
# by hand, the way ../shared/HOST-NOTES.md describes.
#
#   sudo tests/e2e/setup-host.sh
#
# Prints "virt-type kvm" or "virt-type qemu" last: the guest type the tests
# use (they check /dev/kvm themselves too; KVM boots a guest in ~0.4 s, plain
# QEMU emulation works without /dev/kvm, only slower).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: needs root (it installs packages and starts libvirtd)" >&2
    exit 1
fi

# etherwake: the raw Ethernet tests (tests/raw.rs) send with it; iproute2: the
# IPv6 tests make network namespaces of their own (util::NetNs).
# libvirt-daemon-driver-lxc: the LXC containers of tests/e2e_lxc.rs.
"$(dirname "$0")/../../.ci/ensure-packages.sh" libvirt-daemon libvirt-clients qemu-system-x86 \
    libvirt-daemon-driver-lxc wakeonlan etherwake iproute2

# What libvirt-daemon-system would do (it drags in systemd packages we do not
# want on a machine whose PID 1 is not systemd).
getent group libvirt >/dev/null || groupadd --system libvirt
getent passwd libvirt-qemu >/dev/null ||
    useradd --system --no-create-home --home-dir /var/lib/libvirt \
        --shell /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /etc/libvirt
if [ ! -f /etc/libvirt/libvirtd.conf ] || ! grep -q '^unix_sock_group' /etc/libvirt/libvirtd.conf; then
    # Debian's own socket settings: members of "libvirt" may manage.
    cat >>/etc/libvirt/libvirtd.conf <<'CONF'
unix_sock_group = "libvirt"
unix_sock_rw_perms = "0770"
unix_sock_ro_perms = "0777"
auth_unix_rw = "none"
auth_unix_ro = "none"
CONF
fi

virt_type=qemu
if [ -e /dev/kvm ]; then
    # Without this every start takes ~4 s (libvirt re-probes QEMU).
    getent group kvm >/dev/null || groupadd --system kvm
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
    id -nG libvirt-qemu | grep -qw kvm || usermod -aG kvm libvirt-qemu
    virt_type=kvm
fi

# A qemu hook that makes starting a guest slow, the way a VFIO / GPU
# passthrough start looks to a client: `prepare` of a domain whose name
# contains "slowhook" sleeps 8 s, everything else returns at once. The marker
# line tells our hook from someone else's; a foreign hook is left alone.
hook=/etc/libvirt/hooks/qemu
hook_marker='# wol-libvirt-gateway e2e hook'
hook_text=$(cat <<'HOOK'
#!/bin/sh
# wol-libvirt-gateway e2e hook
# Installed (and rewritten) by tests/e2e/setup-host.sh of wol-libvirt-gateway.
# $1 domain name, $2 operation, $3 sub-operation; the domain XML on stdin is
# not read (libvirt copes with a hook that never reads it).
case "$2" in
prepare)
    case "$1" in
    *slowhook*)
        echo "$(date '+%F %T') $1 prepare: sleeping 8 s" \
            >>/var/log/libvirt/wolgw-e2e-hook.log 2>/dev/null || :
        sleep 8
        ;;
    esac
    ;;
esac
exit 0
HOOK
)
hook_changed=false
if [ -e "$hook" ] && ! grep -qxF "$hook_marker" "$hook" 2>/dev/null; then
    echo "setup-host: warning: $hook is not ours (no \"$hook_marker\" line): left alone;" \
        "tests that need a slow start will not get one" >&2
elif [ ! -x "$hook" ] || [ "$(cat "$hook")" != "$hook_text" ]; then
    mkdir -p "$(dirname "$hook")"
    printf '%s\n' "$hook_text" >"$hook.tmp"
    chmod 0755 "$hook.tmp"
    mv -f "$hook.tmp" "$hook"
    hook_changed=true
fi

# libvirtd runs in a mount namespace of its own (see start-libvirtd.sh).
# pgrep --ns compares these namespaces only: libvirtd's mount namespace is
# its own.
same_ns="--ns $$ --nslist pid,net,ipc,uts"
lxc_restart=false
# A libvirtd started before the LXC driver was installed starts no container.
if pgrep $same_ns -x libvirtd >/dev/null && ! virsh -c lxc:/// version >/dev/null 2>&1; then
    lxc_restart=true
fi
# (A libvirtd that sees the hybrid layout answers lxc:/// but starts no
# container.)
# One started in the host's mount namespace (by an earlier version of this
# script, or by hand) sees systemd-nspawn's cgroup2 mount come and go.
for pid in $(pgrep $same_ns -x libvirtd); do
    if [ "$(readlink /proc/"$pid"/ns/mnt)" = "$(readlink /proc/$$/ns/mnt)" ]; then
        lxc_restart=true
    fi
done

pgrep --ns $$ -x virtlogd >/dev/null || virtlogd -d
if { "$hook_changed" || "$lxc_restart"; } && pgrep $same_ns -x libvirtd >/dev/null; then
    # libvirtd looks hooks and drivers up only when it starts.
    echo "setup-host: restarting libvirtd to pick up $hook and its drivers"
    pkill $same_ns -x libvirtd || true
    for _ in $(seq 1 300); do
        pgrep $same_ns -x libvirtd >/dev/null || break
        sleep 0.1
    done
    if pgrep $same_ns -x libvirtd >/dev/null; then
        echo "setup-host: libvirtd did not exit within 30 s" >&2
        exit 1
    fi
fi
if ! pgrep $same_ns -x libvirtd >/dev/null; then
    "$(dirname "$0")/start-libvirtd.sh"
fi

# The Debian root that host B (tests/e2e_remote.rs) and the systemd
# containers boot: built once (a few minutes) and cached, here rather than
# in the middle of the tests, where it would slow the others down.
"$(dirname "$0")/host-b.sh" root

for _ in $(seq 1 100); do
    if virsh -c qemu:///system version >/dev/null 2>&1; then
        echo "setup-host: libvirtd answers on qemu:///system"
        echo "virt-type $virt_type"
        exit 0
    fi
    sleep 0.1
done
echo "setup-host: libvirtd did not answer on qemu:///system within 10 s" >&2
exit 1
