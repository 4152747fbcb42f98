#!/usr/bin/env bash
# Starts this machine's libvirtd (daemonised), as tests/e2e/setup-host.sh
# and the tests that stop and restart it (tests/e2e_faults.rs) do.
#
# libvirt's LXC driver mirrors the host's cgroup mounts into a container and
# fails on a hybrid layout's cgroup2 at /sys/fs/cgroup/unified (v1
# controllers beside it, as on these machines without systemd as PID 1):
# "Unable to create directory /sys/fs/cgroup/unified". systemd-nspawn
# mounts that cgroup2 on the host when it boots a container (host B, the
# systemd tests), and systemd in the containers needs it. So libvirtd runs
# in a mount namespace of its own, private (a later mount on the host does
# not reach it), without that mount: a plain v1 layout, which the LXC and
# QEMU drivers both take.
#
# Find it with: pgrep --ns $$ --nslist pid,net,ipc,uts -x libvirtd
set -euo pipefail
exec unshare --mount --propagation private sh -c '
    if [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ] &&
        [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ]; then
        umount -l /sys/fs/cgroup/unified
    fi
    exec libvirtd -d'
