#!/bin/sh
# %post of the wol-libvirt-gateway RPM (packaging/build-rpm.sh fills in UNITS
# below with the unit files the package ships). RPM runs it with /bin/sh and
# $1 = the number of instances of the package installed after this
# transaction: 1 on first install, 2 (or more) on upgrade or reinstall.
#
# Creates the system user (sysusers.d) and tells systemd about the units, but
# never enables or starts one: listening for Wake-on-LAN packets, which carry
# no authentication, must be an explicit choice:
#   systemctl enable --now wol-libvirt-gateway.socket
# That is why this is NOT Fedora's %systemd_post: it runs `systemctl preset`
# on first install, which enables the units wherever a preset file says
# "enable" for them (Fedora's own presets end in "disable *", but a spin's or
# an admin's "enable *" would turn the listener on). Same policy as the
# Debian package's postinst.
# Works without systemd as PID 1 (containers, chroots, image builds with
# `dnf --installroot`, where RPM runs this chrooted into the new root).
UNITS="@UNITS@"
rc=0

# On every install and upgrade (a new version may add a group membership).
# rpm >= 4.19 can create the user itself from the package's user() provides
# (which cargo-generate-rpm writes as rpmbuild does), and Fedora's systemd
# runs systemd-sysusers from a file trigger, but neither happens everywhere
# (RHEL 9's rpm 4.16, no systemd package, rpm's feature switched off), so do
# it here too. Idempotent: an existing user is left as it is.
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers wol-libvirt-gateway.conf || rc=1
else
    echo "wol-libvirt-gateway: systemd-sysusers not found; create the user" \
        "described in /usr/lib/sysusers.d/wol-libvirt-gateway.conf yourself" >&2
fi

@NOTE_SHADOWING@

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # On upgrade, running services pick up the new binary; try-restart starts
    # nothing that was not running. The sockets are left alone so no queued
    # datagram is lost (they start the new binary on the next one). Done here
    # rather than in the old package's %postun (%systemd_postun_with_restart)
    # so that this version's own list of units decides, as on Debian.
    if [ "${1:-1}" -ge 2 ]; then
        for unit in $UNITS; do
            case "$unit" in
            *@.service) systemctl try-restart "${unit%@.service}@*.service" >/dev/null 2>&1 || : ;;
            *.service) systemctl try-restart "$unit" >/dev/null 2>&1 || : ;;
            esac
        done
    fi
fi

exit $rc
