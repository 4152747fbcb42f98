#!/usr/bin/env bash
# Builds the RPM for Fedora / RHEL with cargo-generate-rpm (configuration:
# [package.metadata.generate-rpm] in Cargo.toml). Run from the repository root:
#
#   packaging/build-rpm.sh [ARG...]   # prints the path of the .rpm
#
# ARGs go to `cargo generate-rpm` (e.g. -s 'release = "2"', as check-rpm.sh
# does to test an upgrade). The package lands in target/generate-rpm/, which
# keeps no older package of this name.
#
# Needs the cargo-generate-rpm tool (installed from crates.io, the version
# pinned below, when missing or another version), binutils (strip), gzip,
# and rpm's dependency generator /usr/lib/rpm/find-requires (Debian: package
# rpm; Fedora: rpm-build).
#
# No rpmbuild and no spec file: cargo-generate-rpm writes the RPM directly, so
# nothing of rpmbuild's post-processing happens unless done here. On top of
# what packaging/stage-assets.sh stages into target/assets (shared with the
# .deb: man pages, completions, units with ExecStart= pointing to /usr/bin,
# example drop-ins), this script adds target/assets/rpm/:
#   wol-libvirt-gateway the release binary, stripped (rpmbuild's brp-strip;
#                       Fedora would split the symbols into a -debuginfo
#                       package, which cargo-generate-rpm cannot make)
#   man1/*.1.gz         the man pages, gzipped as Fedora's brp-compress does
#   post.sh preun.sh postun.sh
#                       the scriptlets from packaging/rpm/, @UNITS@ replaced
#                       by the shipped unit names
set -euo pipefail

if [ ! -f Cargo.toml ] || [ ! -d systemd ] || [ ! -d packaging/rpm ]; then
    echo "build-rpm.sh: run from the repository root" >&2
    exit 1
fi
# Pinned: its output (tags, dependency handling, what rpmlint says of it) is
# what check-rpm.sh checks. 0.21.1 builds with Rust 1.85+, --locked.
CARGO_GENERATE_RPM_VERSION=0.21.1
if [ "$(cargo generate-rpm --version 2>/dev/null)" != "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION" ]; then
    echo "build-rpm.sh: installing cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION from crates.io" >&2
    cargo install cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION" --locked >&2
fi
# cargo-generate-rpm's fallback ("builtin") dependency finder lists what
# `ldd` prints, i.e. every library loaded transitively (libxml2, gnutls, ...,
# with Debian's sonames); rpm's find-requires reads only the binary's own
# DT_NEEDED entries and symbol versions, as rpmbuild does.
find_requires=/usr/lib/rpm/find-requires
if [ ! -x "$find_requires" ]; then
    echo "build-rpm.sh: $find_requires is missing (Debian: apt-get install rpm; Fedora: dnf install rpm-build)" >&2
    exit 1
fi

assets=target/assets
bin=wol-libvirt-gateway

# Builds the release binary, wipes and refills target/assets.
packaging/stage-assets.sh >/dev/null
mkdir -p "$assets/rpm/man1"

strip --strip-unneeded -o "$assets/rpm/$bin" "target/release/$bin"
chmod 755 "$assets/rpm/$bin"

for page in "$assets"/*.1; do
    # -n: no name or time stamp in the .gz, so the package is reproducible.
    gzip -9 -n -c "$page" >"$assets/rpm/man1/$(basename "$page").gz"
done

# Sockets before services, so that preun.sh stops a socket before the
# service it would otherwise start again.
units=()
for unit in "$assets"/units/*.socket "$assets"/units/*.service "$assets"/units/*.timer; do units+=("$(basename "$unit")"); done
for script in packaging/rpm/*.sh; do
    dst="$assets/rpm/$(basename "$script")"
    # @NOTE_SHADOWING@ stands for packaging/note-shadowing.sh, the same
    # words in both families' scripts (awk's getline fails silently).
    [ -r packaging/note-shadowing.sh ] || { echo "packaging/note-shadowing.sh is missing" >&2; exit 1; }
    sed "s|@UNITS@|${units[*]}|g" "$script" |
        awk '/^@NOTE_SHADOWING@$/ { while ((getline l < "packaging/note-shadowing.sh") > 0) print l; next } { print }' >"$dst"
    if grep -q -e '@UNITS@' -e '@NOTE_SHADOWING@' "$dst"; then
        echo "build-rpm.sh: $dst: @UNITS@ not replaced" >&2
        exit 1
    fi
done
# cargo-generate-rpm packages a scriptlet path that does not exist as the
# scriptlet's text, silently: check that every configured one exists.
for key in post_install_script pre_uninstall_script post_uninstall_script; do
    path=$(sed -n "s/^$key = \"\\(.*\\)\"\$/\\1/p" Cargo.toml)
    if [ -z "$path" ] || [ ! -f "$path" ]; then
        echo "build-rpm.sh: Cargo.toml's $key '$path' does not exist" >&2
        exit 1
    fi
done

# Only this build's package stays in target/generate-rpm, so that
# `dnf install ./target/generate-rpm/wol-libvirt-gateway-*.rpm` means it.
mkdir -p target/generate-rpm
rm -f "target/generate-rpm/$bin"-*.rpm
# --payload-compress zstd: what Fedora uses (and the default); rpm >= 4.14,
# so RHEL 8 and later, reads it.
cargo generate-rpm --auto-req "$find_requires" --payload-compress zstd \
    -o target/generate-rpm/ "$@" >&2
shopt -s nullglob
rpms=("target/generate-rpm/$bin"-*.rpm)
if [ "${#rpms[@]}" -ne 1 ]; then
    echo "build-rpm.sh: expected one .rpm in target/generate-rpm, found: ${rpms[*]:-none}" >&2
    exit 1
fi
echo "${rpms[0]}"
