#!/usr/bin/env bash
# Builds the release binary and stages everything the packages ship that is
# generated or adapted from the repository, into target/assets (wiped on every
# run). Shared by packaging/build-deb.sh and packaging/build-rpm.sh, so the
# .deb and the .rpm ship the same files; each build script then adds its own
# format's pieces (target/assets/debian/, target/assets/rpm/). Run from the
# repository root:
#
#   packaging/stage-assets.sh     # prints the staged files on stdout
#
# Stages:
#   *.1                 man pages (examples/assets.rs, from the clap definition;
#                       uncompressed: cargo-deb gzips them itself, build-rpm.sh
#                       gzips its own copies)
#   completions/        bash, zsh and fish completions (same)
#   units/              every systemd/*.service, *.socket and *.timer, with the binary's
#                       path in Exec*= lines rewritten from /usr/local/bin to
#                       /usr/bin (the repository's units are for a binary
#                       installed by hand in /usr/local/bin)
#   examples/           every drop-in under systemd/*.d/ (e.g.
#                       wol-libvirt-gateway.service.d/remote-hosts.conf), with
#                       the same rewrite. The packages ship them as
#                       documentation (/usr/share/doc/wol-libvirt-gateway/
#                       examples/), NOT in a unit's .d directory: a drop-in
#                       there would be active at once, and these change the
#                       sandbox and the command line, which is the admin's call.
#
# The check scripts derive the files they expect from this directory, so a new
# unit, man page or example is packaged and checked without further edits.
set -euo pipefail

if [ ! -f Cargo.toml ] || [ ! -d systemd ] || [ ! -d packaging ]; then
    echo "stage-assets.sh: run from the repository root" >&2
    exit 1
fi

assets=target/assets
bin=wol-libvirt-gateway

cargo build --locked --release
rm -rf "$assets"
mkdir -p "$assets/units" "$assets/examples"
cargo run --locked --quiet --example assets -- "$assets" >/dev/null

# rewrite SRC DST [HEADER]: copy SRC to DST (after the HEADER comment, if
# any), pointing every Exec*= line's /usr/local/bin/$bin at /usr/bin/$bin.
# Commented lines (#ExecStart=…) too, so the examples an admin copies show
# the real path. The prefixes systemd allows before the path (-@:+!|) stay.
rewrite() {
    local src=$1 dst=$2 header=${3:-}
    {
        [ -z "$header" ] || printf '%s\n' "$header"
        sed -E "s%^([[:space:]]*#?[[:space:]]*Exec[A-Za-z]*=[-@:+!|]*)/usr/local/bin/$bin%\1/usr/bin/$bin%" "$src"
    } >"$dst"
    # What the rewrite could not reach (a path in the middle of a line, another
    # binary) must not go out silently: the packages install nothing in
    # /usr/local.
    if grep -Eq '^[^#]*/usr/local/' "$dst" || grep -Eq '^[[:space:]]*#?[[:space:]]*Exec[A-Za-z]*=.*/usr/local/' "$dst"; then
        echo "stage-assets.sh: $src still refers to /usr/local after the rewrite:" >&2
        grep -En '^[^#]*/usr/local/|^[[:space:]]*#?[[:space:]]*Exec[A-Za-z]*=.*/usr/local/' "$dst" >&2
        exit 1
    fi
}

# Units.
shopt -s nullglob
units=()
for src in systemd/*.service systemd/*.socket systemd/*.timer; do
    unit=$(basename "$src")
    rewrite "$src" "$assets/units/$unit" \
        "# Installed by the $bin package (.deb or .rpm), which enables and
# starts no unit; the binary is /usr/bin/$bin."
    units+=("$unit")
done
if ! grep -Eq "^ExecStart=/usr/bin/$bin( |\$)" "$assets/units/$bin.service"; then
    echo "stage-assets.sh: $bin.service: ExecStart= was not rewritten to /usr/bin/$bin" >&2
    exit 1
fi
[ -f "$assets/units/$bin.socket" ] || { echo "stage-assets.sh: $bin.socket missing" >&2; exit 1; }
echo "units: ${units[*]}" >&2

# Example drop-ins. Their content is maintained in systemd/ (and may change at
# any time, including how to install them): they are copied as they are,
# apart from the rewrite.
examples=()
for src in systemd/*.d/*.conf; do
    name=$(basename "$src")
    # One flat examples/ directory: two drop-ins of the same name (for two
    # units) would overwrite each other.
    if [ -e "$assets/examples/$name" ]; then
        echo "stage-assets.sh: two example drop-ins are named $name; rename one" >&2
        exit 1
    fi
    rewrite "$src" "$assets/examples/$name"
    examples+=("$name")
done
shopt -u nullglob
echo "examples: ${examples[*]:-none}" >&2

find "$assets" -type f | sort
