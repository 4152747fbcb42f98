#!/bin/sh
# %preun of the wol-libvirt-gateway RPM (packaging/build-rpm.sh fills in UNITS
# below with the unit files the package ships). RPM runs it with /bin/sh and
# $1 = the number of instances left after this transaction: 0 on erase, 1 on
# upgrade (the old version's %preun). Nothing to do on upgrade: running units
# keep running (post.sh restarts services).
#
# On erase:
# - stop the units and every instance of a template (raw@br0…), sockets and
#   timers first so that none re-activates a service stopped a moment before,
#   so that no process keeps running the deleted binary and systemd releases
#   the ports;
# - disable them, as Fedora's %systemd_preun does (`disable --now`): RPM has
#   no "purge" after the erase that could remove an admin's enablement links
#   later, as dpkg's does, so left here they would dangle forever. Disabling a
#   template (name@.service) removes the links of all its instances.
# Works without systemd as PID 1: `systemctl disable` edits links on disk
# (also chrooted into an image root), stop needs a running systemd.
UNITS="@UNITS@"

if [ "${1:-0}" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        for kind in socket timer service; do
            for unit in $UNITS; do
                case "$unit" in
                *@."$kind") systemctl stop "${unit%%@*}@*.$kind" >/dev/null 2>&1 || : ;;
                *."$kind") systemctl stop "$unit" >/dev/null 2>&1 || : ;;
                esac
            done
        done
    fi
    if command -v systemctl >/dev/null 2>&1; then
        # shellcheck disable=SC2086 # one word per unit
        systemctl --no-reload disable $UNITS >/dev/null 2>&1 || :
    fi
fi

exit 0
