# (packaging/note-shadowing.sh, inserted into the Debian postinst and the
# RPM %post by build-deb.sh and build-rpm.sh.)
# A unit of our name in /etc that is not the package's (the original
# project's README has users copy its always-on unit there) overrides the
# package's. Say so, and how to move to the socket; change nothing of the
# admin's. The package's unit is Type=notify; the original's is not.
etc_unit=${DPKG_ROOT:-}/etc/systemd/system/wol-libvirt-gateway.service
if [ -f "$etc_unit" ] && ! grep -q '^Type=notify' "$etc_unit"; then
    cat >&2 <<NOTE
wol-libvirt-gateway: $etc_unit is not this package's unit (the original
  project's?): it overrides the package's wol-libvirt-gateway.service and runs
  as before, unchanged. To use the package's socket-activated service instead:
    systemctl disable --now wol-libvirt-gateway.service && rm $etc_unit
    systemctl daemon-reload && systemctl enable --now wol-libvirt-gateway.socket
  (/usr/share/doc/wol-libvirt-gateway/docs/original.md)
NOTE
fi
