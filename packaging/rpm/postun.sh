#!/bin/sh
# %postun of the wol-libvirt-gateway RPM. RPM runs it with /bin/sh and $1 =
# the number of instances left: 0 on erase, 1 on upgrade (the old version's
# %postun, after its files are gone).
#
# Tells a running systemd that unit files changed or are gone. On erase also
# removes the package's empty directories and the MAC index cache (CacheDirectory=; rebuilt from libvirt on
# demand), as the Debian package's purge does: RPM has no separate purge. The
# system user stays, as Fedora and Debian keep system users: files it owned
# may still exist.
# Works without systemd as PID 1 (containers, chroots).
if [ "${1:-0}" -eq 0 ]; then
    rm -rf /var/cache/wol-libvirt-gateway
    # The package's own directories: cargo-generate-rpm 0.21 cannot package a
    # directory entry (its `dir = true` assets fail to build), so RPM does not
    # know it created them and would leave them behind, empty. rmdir removes
    # only empty directories (an admin's file keeps its directory).
    rmdir /usr/share/doc/wol-libvirt-gateway/examples /usr/share/doc/wol-libvirt-gateway/docs \
        /usr/share/doc/wol-libvirt-gateway \
        /usr/share/licenses/wol-libvirt-gateway 2>/dev/null || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi

exit 0
