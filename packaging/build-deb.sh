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
# adapted goes into target/assets first (wiped on every run):
#   *.1                 man pages (examples/assets.rs, from the clap definition)
#   completions/        bash, zsh and fish completions (same)
#   units/              every systemd/*.service and *.socket, with
#                       ExecStart=/usr/local/bin/… rewritten to /usr/bin/… (the
#                       repository's units are for a binary installed in /usr/local/bin)
#   debian/             maintainer scripts from packaging/debian/, @UNITS@
#                       replaced by the shipped unit names
set -euo pipefail

if [ ! -f Cargo.toml ] || [ ! -d systemd ] || [ ! -d packaging/debian ]; then
    echo "build-deb.sh: run from the repository root" >&2
    exit 1
fi

assets=target/assets
bin=wol-libvirt-gateway

cargo build --locked --release
rm -rf "$assets"
mkdir -p "$assets/units" "$assets/debian"
cargo run --locked --quiet --example assets -- "$assets" >/dev/null

# Units: copy, pointing ExecStart= (and any other Exec*= line) at /usr/bin.
shopt -s nullglob
units=()
for src in systemd/*.service systemd/*.socket; do
    unit=$(basename "$src")
    dst="$assets/units/$unit"
    {
        echo "# Installed by the $bin Debian package, which enables and starts no unit;"
        echo "# the binary is /usr/bin/$bin."
        # Commented examples (#ExecStart=) too, so they show the real path.
        sed -E "s|^(#?Exec[A-Za-z]*=[-@:+!]*)/usr/local/bin/$bin|\1/usr/bin/$bin|" "$src"
    } >"$dst"
    if grep -Eq '^[^#]*/usr/local/' "$dst"; then
        echo "build-deb.sh: $unit still refers to /usr/local after the rewrite:" >&2
        grep -En '^[^#]*/usr/local/' "$dst" >&2
        exit 1
    fi
    units+=("$unit")
done
shopt -u nullglob
if ! grep -Eq "^ExecStart=/usr/bin/$bin( |\$)" "$assets/units/$bin.service"; then
    echo "build-deb.sh: $bin.service: ExecStart= was not rewritten to /usr/bin/$bin" >&2
    exit 1
fi
[ -f "$assets/units/$bin.socket" ] || { echo "build-deb.sh: $bin.socket missing" >&2; exit 1; }
echo "units: ${units[*]}" >&2

# Maintainer scripts, with the unit list filled in.
for script in packaging/debian/*; do
    dst="$assets/debian/$(basename "$script")"
    sed "s|@UNITS@|${units[*]}|g" "$script" >"$dst"
    chmod 755 "$dst"
    if grep -q '@UNITS@' "$dst"; then
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
