#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (configuration: [package.metadata.deb]
# in Cargo.toml). Run from the repository root:
#
#   packaging/build-deb.sh        # prints the path of the .deb
#
# Needs the cargo-deb tool (`cargo install cargo-deb --locked`; check-deb.sh
# installs it) and dpkg-dev (dpkg-shlibdeps, for Depends: $auto).
#
# cargo-deb's asset list is static, so everything that is generated or
# adapted is staged into target/assets first by packaging/stage-assets.sh
# (shared with build-rpm.sh, which see: man pages, completions, units with
# ExecStart= pointing to /usr/bin, example drop-ins). This script adds:
#   debian/             maintainer scripts from packaging/debian/, @UNITS@
#                       replaced by the shipped unit names
set -euo pipefail

if [ ! -f Cargo.toml ] || [ ! -d systemd ] || [ ! -d packaging/debian ]; then
    echo "build-deb.sh: run from the repository root" >&2
    exit 1
fi

assets=target/assets

# Builds the release binary, wipes and refills target/assets.
packaging/stage-assets.sh >/dev/null
mkdir -p "$assets/debian"
# Services before sockets, as the maintainer scripts have always listed them.
units=()
for unit in "$assets"/units/*.service "$assets"/units/*.socket "$assets"/units/*.timer; do units+=("$(basename "$unit")"); done

# Maintainer scripts, with the unit list filled in.
for script in packaging/debian/*; do
    dst="$assets/debian/$(basename "$script")"
    # @NOTE_SHADOWING@ stands for packaging/note-shadowing.sh, the same
    # words in both families' scripts (awk's getline fails silently).
    [ -r packaging/note-shadowing.sh ] || { echo "packaging/note-shadowing.sh is missing" >&2; exit 1; }
    sed "s|@UNITS@|${units[*]}|g" "$script" |
        awk '/^@NOTE_SHADOWING@$/ { while ((getline l < "packaging/note-shadowing.sh") > 0) print l; next } { print }' >"$dst"
    chmod 755 "$dst"
    if grep -q -e '@UNITS@' -e '@NOTE_SHADOWING@' "$dst"; then
        echo "build-deb.sh: $dst: @UNITS@ not replaced" >&2
        exit 1
    fi
done

# --no-build: package the binary built above. cargo-deb strips it, gzips
# the man pages, writes the copyright file from LICENSE and computes Depends
# with dpkg-shlibdeps. It prints the .deb's path on stdout.
deb=$(cargo deb --no-build)
[ -f "$deb" ] || { echo "build-deb.sh: cargo deb made no package ($deb)" >&2; exit 1; }
echo "$deb"
