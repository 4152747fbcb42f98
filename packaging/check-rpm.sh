#!/usr/bin/env bash
# Builds the RPM for Fedora / RHEL (packaging/build-rpm.sh) and checks it on
# this Debian machine, which has rpm and rpmlint but is no Fedora: the package
# is never installed into this system, only into a scratch root (rpm --root).
# Run as root (chroot, for the scriptlets) from the repository root:
#
#   packaging/check-rpm.sh
#
# Checks, stage by stage:
#   metadata   name, version, licence, summary as in Cargo.toml; release 1;
#              the machine's architecture; digests (rpm -K)
#   files      `rpm -qlp` lists exactly what packaging/stage-assets.sh and
#              build-rpm.sh staged (derived from target/assets, so a new unit,
#              man page or example is expected without editing this), with
#              Fedora's paths, modes and %doc flags; no drop-in is active
#   deps       Requires: has libvirt.so.0 (auto-req from the binary) and only
#              what the binary links (DT_NEEDED), /bin/sh, rpmlib() and
#              rtld() features and users/groups the package provides itself
#   rpmlint    no error and no warning left that is not explained (and
#              filtered) in packaging/rpm/wol-libvirt-gateway.rpmlintrc;
#              Fedora's settings from packaging/rpm/rpmlint.toml
#   scratch root, with the real scriptlets run by rpm chrooted into it: a
#              /bin/sh (the host's dash), rm/rmdir, and stub `systemctl` and
#              `systemd-sysusers` that only record their calls:
#     install without systemd: files where the units expect them (every
#              Exec*= names an installed executable, every socket's service
#              is installed, User= is created by the sysusers file, which
#              the host's systemd-sysusers --root finds by name as post.sh
#              names it), systemd-sysusers called, NOTHING enabled or
#              started, no daemon-reload (no systemd running)
#     admin's enable: the command preun.sh runs on erase (`systemctl
#              disable` with the shipped units) removes the links, also of a
#              template's instances (the host's real systemctl, --root)
#     erase:   units disabled, cache removed, the root exactly as before
#     install with systemd running (/run/systemd/system exists): only
#              systemd-sysusers and daemon-reload
#     upgrade to release 2: daemon-reload and try-restart of the services,
#              nothing stopped, disabled, enabled or started
#     erase:   sockets stopped before services (and the template's
#              instances), disabled, daemon-reload; nothing left
# Leaves the machine as found: the scratch root and rpm's databases live in a
# temporary directory that is removed on exit (Debian's rpm would otherwise
# create ~/.rpmdb even for a query); like check-deb.sh's .deb, the package
# stays in target/generate-rpm. Prints each stage's duration.
#
# Installs what it needs, idempotently: rpm (rpm, rpmdeps' find-requires),
# rpmlint, binutils (strip), gzip, systemd (systemctl, systemd-sysusers for
# the offline checks), and the cargo-generate-rpm tool from crates.io.
set -euo pipefail

# The version build-rpm.sh pins (0.21.1: the newest release, edition 2024:
# Rust >= 1.85, as this crate; its rpm-rs writes rpm >= 4.19's sysusers
# user()/group() provides).
CARGO_GENERATE_RPM_VERSION=$(sed -n 's/^CARGO_GENERATE_RPM_VERSION=//p' packaging/build-rpm.sh)
pkg=wol-libvirt-gateway

if [ ! -f Cargo.toml ] || [ ! -x packaging/build-rpm.sh ]; then
    echo "check-rpm.sh: run from the repository root" >&2
    exit 1
fi
[ "$(id -u)" -eq 0 ] || { echo "check-rpm.sh: run as root (rpm --root runs the scriptlets in a chroot)" >&2; exit 1; }

total_start=$SECONDS
stage() {
    local name=$1
    shift
    local start=$SECONDS
    echo "==> $name"
    "$@"
    echo "<== $name: $((SECONDS - start)) s"
}
fail() {
    echo "check-rpm.sh: FAIL: $*" >&2
    exit 1
}

# --- Leave the machine as found, whatever happens. ---
work=$(mktemp -d /tmp/check-rpm.XXXXXX)
cleanup() {
    local rc=$?
    # Nothing is mounted in the scratch root, so this removes only files.
    rm -rf "$work" || rc=1
    if [ $rc -eq 0 ]; then
        echo "check-rpm.sh: passed in $((SECONDS - total_start)) s"
    else
        echo "check-rpm.sh: FAILED (exit $rc) after $((SECONDS - total_start)) s" >&2
    fi
    exit $rc
}
trap cleanup EXIT

# Debian's rpm keeps its database in ~/.rpmdb (%_dbpath): every rpm and
# rpmlint call gets a HOME in $work, so none creates /root/.rpmdb.
mkdir -p "$work/home"
rpmq() { HOME="$work/home" rpm "$@"; }
root="$work/root"
# Fedora's database location inside the scratch root.
rpm_root=(--root "$root" --dbpath /var/lib/rpm)
# rpm -i/-U/-e in the scratch root. --force-debian only silences Debian's
# rpm's "use alien" warning (other rpms lack the option; grep without -q
# reads all of rpm's output, so no SIGPIPE under pipefail).
rpm_change=(rpmq "${rpm_root[@]}")
if rpm --help 2>/dev/null | grep -- '--force-debian' >/dev/null; then rpm_change+=(--force-debian); fi

install_tools() {
    .ci/ensure-packages.sh rpm rpmlint binutils gzip systemd
    # build-rpm.sh installs its pinned cargo-generate-rpm if missing; here
    # first, so its time shows as this stage's.
    if [ "$(cargo generate-rpm --version 2>/dev/null)" != "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION" ]; then
        local start=$SECONDS
        cargo install cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION" --locked
        echo "cargo-generate-rpm installed in $((SECONDS - start)) s"
    fi
}
stage "tools (rpm, rpmlint, cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION)" install_tools

# Release 2 of the same files (for the upgrade) first, moved to $work so that
# only the real package stays in target/generate-rpm; then release 1. Each
# build restages target/assets, and the checks below derive what they expect
# from it.
build() {
    local rpm2
    mkdir -p target
    rpm2=$(packaging/build-rpm.sh -s 'release = "2"' | tail -n 1)
    [ -f "$rpm2" ] || fail "build-rpm.sh printed no package path"
    mv "$rpm2" "$work/"
    packaging/build-rpm.sh | tee target/check-rpm.out
}
stage "build-rpm.sh (release 2 for the upgrade, then release 1)" build
rpm_file=$(tail -n 1 target/check-rpm.out)
[ -f "$rpm_file" ] || fail "build-rpm.sh printed no package path"
rpm2_file=$(find "$work" -maxdepth 1 -name "$pkg-*.rpm")
[ -f "$rpm2_file" ] || fail "no release 2 package in $work"

cargo_field() { sed -n "s/^$1 = \"\\(.*\\)\"\$/\\1/p" Cargo.toml | head -n 1; }
version=$(cargo_field version)
units_dir=/usr/lib/systemd/system

check_metadata() {
    rpmq -qip "$rpm_file"
    local got want
    got=$(rpmq -qp --qf '%{NAME}|%{VERSION}|%{RELEASE}|%{ARCH}|%{LICENSE}|%{SUMMARY}' "$rpm_file")
    want="$pkg|$version|1|$(uname -m)|$(cargo_field license)|$(cargo_field description)"
    [ "$got" = "$want" ] || fail "metadata: got '$got', expected '$want'"
    [ "$(basename "$rpm_file")" = "$pkg-$version-1.$(uname -m).rpm" ] || fail "unexpected file name $rpm_file"
    [ "$(rpmq -qp --qf '%{RELEASE}' "$rpm2_file")" = 2 ] || fail "$rpm2_file is not release 2"
    # Header and payload digests (there is no signature to check).
    rpmq -K --nosignature "$rpm_file" || fail "rpm -K: bad digests"
}
stage "metadata (rpm -qip)" check_metadata

# What the package must contain, from what staging generated.
expected=(
    "/usr/bin/$pkg"
    "/usr/lib/sysusers.d/$pkg.conf"
    "/usr/share/doc/$pkg/README.md"
    "/usr/share/licenses/$pkg/LICENSE"
)
docs=("/usr/share/doc/$pkg/README.md")
# The documentation the README links to, every file of docs/.
for f in docs/*.md; do
    expected+=("/usr/share/doc/$pkg/docs/$(basename "$f")")
    docs+=("/usr/share/doc/$pkg/docs/$(basename "$f")")
done
for f in target/assets/units/*; do expected+=("$units_dir/$(basename "$f")"); done
for f in target/assets/*.1; do
    expected+=("/usr/share/man/man1/$(basename "$f").gz")
    docs+=("/usr/share/man/man1/$(basename "$f").gz")
done
for f in target/assets/completions/*; do
    name=$(basename "$f")
    case "$name" in
    _*) expected+=("/usr/share/zsh/site-functions/$name") ;;
    *.fish) expected+=("/usr/share/fish/vendor_completions.d/$name") ;;
    *) expected+=("/usr/share/bash-completion/completions/$name") ;;
    esac
done
shopt -s nullglob
for f in target/assets/examples/*; do
    expected+=("/usr/share/doc/$pkg/examples/$(basename "$f")")
    docs+=("/usr/share/doc/$pkg/examples/$(basename "$f")")
done
for f in systemd/*.d/*.conf; do
    [[ " ${expected[*]} " == *" /usr/share/doc/$pkg/examples/$(basename "$f") "* ]] ||
        fail "$f exists but is not staged as an example"
done
shopt -u nullglob
for unit in $pkg.socket $pkg-http.socket $pkg.service $pkg-idle.service $pkg-idle.timer $pkg-wake@.service $pkg-sleep@.service; do
    [[ " ${expected[*]} " == *" $units_dir/$unit "* ]] || fail "stage-assets.sh did not stage $unit"
done
if [ -f "systemd/$pkg-raw@.service" ]; then
    [[ " ${expected[*]} " == *" $units_dir/$pkg-raw@.service "* ]] ||
        fail "systemd/$pkg-raw@.service exists but is not packaged"
fi
[[ " ${expected[*]} " == *" /usr/share/man/man1/$pkg.1.gz "* ]] || fail "no man page $pkg.1"
[[ " ${expected[*]} " == *" /usr/share/doc/$pkg/examples/remote-hosts.conf "* ]] ||
    fail "the example drop-in remote-hosts.conf is not packaged"

check_files() {
    local listing
    listing=$(rpmq -qlp "$rpm_file")
    echo "$listing"
    diff <(printf '%s\n' "${expected[@]}" | sort) <(sort <<<"$listing") ||
        fail "rpm -qlp differs from what was staged (< expected only, > packaged only)"
    # Modes and owners (cargo-generate-rpm takes them from Cargo.toml, not
    # from the files), and the %doc flag that rpmbuild sets for documentation
    # and man pages: `rpm --excludedocs` leaves those out, nothing else.
    local line path mode owner flags
    while IFS='|' read -r path mode owner flags; do
        case "$path" in
        /usr/bin/*) [ "$mode" = 100755 ] || fail "$path: mode $mode, expected 100755" ;;
        *) [ "$mode" = 100644 ] || fail "$path: mode $mode, expected 100644" ;;
        esac
        [ "$owner" = root:root ] || fail "$path: owned by $owner"
        if [[ " ${docs[*]} " == *" $path "* ]]; then
            [[ $flags == *d* ]] || fail "$path is not marked %doc"
        else
            [[ $flags != *d* ]] || fail "$path is marked %doc (--excludedocs would drop it)"
        fi
    done < <(rpmq -qp --qf '[%{FILENAMES}|%{FILEMODES:octal}|%{FILEUSERNAME}:%{FILEGROUPNAME}|%{FILEFLAGS:fflags}\n]' "$rpm_file")
    # The example drop-ins are documentation: none may be in a unit's .d
    # directory, where systemd would apply it at once.
    if grep -E '^/(usr/lib|etc)/systemd/system/.*\.d(/|$)' <<<"$listing"; then
        fail "package installs a drop-in (the examples must stay in /usr/share/doc)"
    fi
    if grep -q '^/usr/local' <<<"$listing"; then fail "package installs into /usr/local"; fi
}
stage "file list (rpm -qlp)" check_files

check_deps() {
    local requires provides line lib
    requires=$(rpmq -qp --requires "$rpm_file")
    provides=$(rpmq -qp --provides "$rpm_file")
    echo "--- requires:"
    echo "$requires"
    echo "--- provides:"
    echo "$provides"
    grep -qx 'libvirt.so.0()(64bit)' <<<"$requires" || fail "Requires lacks libvirt.so.0()(64bit) (auto-req)"
    # Libraries the binary itself links; anything else would be a library
    # `ldd` pulled in transitively, under Debian's soname.
    local needed
    needed=$(readelf -d "target/release/$pkg" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
    echo "--- DT_NEEDED: $(tr '\n' ' ' <<<"$needed")"
    while read -r line; do
        case "$line" in
        /bin/sh | 'rtld(GNU_HASH)' | 'rpmlib('*) ;;
        'user('* | 'group('*)
            # Only users and groups the package creates itself (its sysusers
            # file): no other Fedora/RHEL package provides them.
            grep -q "^${line%% *}\( \|\$\)" <<<"$provides" || fail "requires $line, which nothing provides"
            ;;
        *.so*)
            lib=${line%%(*}
            grep -qxF "$lib" <<<"$needed" || fail "requires $line, but the binary does not link $lib"
            ;;
        *) fail "unexpected requirement: $line" ;;
        esac
    done <<<"$requires"
}
stage "dependencies (rpm -qp --requires)" check_deps

run_rpmlint() {
    local out rc=0 summary
    echo "--- rpmlint, unfiltered (for information; Fedora's settings from rpmlint.toml):"
    HOME="$work/home" rpmlint -c packaging/rpm/rpmlint.toml "$rpm_file" || true
    echo "--- rpmlint with the explained filters (packaging/rpm/$pkg.rpmlintrc):"
    out=$(HOME="$work/home" rpmlint -c packaging/rpm/rpmlint.toml -r "packaging/rpm/$pkg.rpmlintrc" "$rpm_file") || rc=$?
    echo "$out"
    summary=$(grep -E '[0-9]+ errors?, [0-9]+ warnings?' <<<"$out" | tail -n 1)
    [ -n "$summary" ] || fail "rpmlint printed no summary (exit $rc)"
    [[ $summary == *" 0 errors, 0 warnings"* ]] ||
        fail "rpmlint: $summary; fix it, or explain and filter it in packaging/rpm/$pkg.rpmlintrc"
    [ "$rc" -eq 0 ] || fail "rpmlint exited with $rc"
}
stage "rpmlint" run_rpmlint

# --- The scratch root. ---
# Directories that Fedora's filesystem and systemd packages own, so the
# package need not (and on Fedora must not) own them. Any other directory
# rpm has to create is reported below.
system_dirs=(
    /usr/bin /usr/lib/systemd/system /usr/lib/sysusers.d /usr/share/man/man1
    /usr/share/bash-completion/completions /usr/share/zsh/site-functions
    /usr/share/fish/vendor_completions.d /usr/share/doc /usr/share/licenses
    /etc/systemd/system /var/cache /var/tmp /run /dev
)
# The package's own directories, which cargo-generate-rpm cannot package as
# entries (postun.sh removes them on erase).
unowned_dirs=("/usr/share/doc/$pkg" "/usr/share/doc/$pkg/examples" "/usr/share/doc/$pkg/docs"
    "/usr/share/licenses/$pkg")

copy_with_libs() { # HOST-BINARY ROOT-PATH: a host program and its libraries
    local lib
    cp "$1" "$root$2"
    for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
        [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; }
    done
}
make_root() {
    local d stub
    mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/usr/lib64"
    # Fedora's merged /usr: relative links, so they resolve inside the root.
    ln -s usr/bin "$root/bin"
    ln -s usr/bin "$root/sbin"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    for d in "${system_dirs[@]}"; do mkdir -p "$root$d"; done
    mknod -m 666 "$root/dev/null" c 1 3 # the scriptlets redirect to it
    # RPM runs each scriptlet as `/bin/sh FILE` chrooted into the root.
    copy_with_libs "$(command -v dash)" /usr/bin/sh
    copy_with_libs "$(command -v rm)" /usr/bin/rm
    copy_with_libs "$(command -v rmdir)" /usr/bin/rmdir
    for stub in systemctl systemd-sysusers; do
        printf '#!/bin/sh\n# Stub for check-rpm.sh: records the call.\necho "%s $*" >>/stub-calls.log\n' \
            "$stub" >"$root/usr/bin/$stub"
        chmod 755 "$root/usr/bin/$stub"
    done
    : >"$root/stub-calls.log"
    rpmq "${rpm_root[@]}" --initdb
    chroot "$root" /bin/sh -c 'command -v systemctl && command -v systemd-sysusers && rm -f /none && [ -c /dev/null ]' >/dev/null ||
        fail "the scratch root's /bin/sh and tools do not run"
    : >"$root/stub-calls.log"
}
# The root's paths (not the rpm database's), to compare before and after.
snapshot() { (cd "$root" && find . -path ./var/lib/rpm -prune -o -print | sed 's|^\.||' | sort); }
calls() { cat "$root/stub-calls.log"; }
show_calls() { echo "--- scriptlet calls ($1):"; sed 's/^/    /' "$root/stub-calls.log"; }
reset_calls() { : >"$root/stub-calls.log"; }
# Verbs that would enable, start or restart something unconditionally.
forbidden='^systemctl( --[a-z-]+)* (enable|reenable|start|restart|reload-or-restart|preset|preset-all|unmask|isolate|link)( |$)'
assert_no_forbidden() {
    ! grep -E "$forbidden" "$root/stub-calls.log" || fail "$1: a scriptlet enabled, started or restarted a unit"
}

stage "scratch root (/bin/sh, stub systemctl and systemd-sysusers)" make_root
pristine=$(snapshot)

units=()
for f in target/assets/units/*; do units+=("$(basename "$f")"); done

check_install_no_systemd() {
    reset_calls
    "${rpm_change[@]}" --nodeps -i "$rpm_file"
    show_calls "rpm -i, no systemd running"
    [ "$(calls)" = "systemd-sysusers $pkg.conf" ] ||
        fail "install without systemd: expected only 'systemd-sysusers $pkg.conf'"
    assert_no_forbidden "install"

    # Everything new in the root is the package's (or one of its own
    # directories): rpm created no other directory.
    local new f listing
    listing=$(rpmq "${rpm_root[@]}" -ql "$pkg")
    new=$(comm -13 <(echo "$pristine") <(snapshot))
    for f in "${expected[@]}"; do
        [ -f "$root$f" ] || fail "$f is not installed in the scratch root"
        grep -qxF "$f" <<<"$listing" || fail "rpm -ql does not list $f"
    done
    while read -r f; do
        grep -qxF "$f" <<<"$listing" && continue
        [[ " ${unowned_dirs[*]} " == *" $f "* ]] && continue
        fail "install created $f, which is neither in the package nor a directory Fedora's filesystem/systemd owns"
    done <<<"$new"

    # Where the units expect things. Every ExecStart= (not a reset
    # "ExecStart=") and every other Exec*= that runs the gateway names the
    # installed /usr/bin/wol-libvirt-gateway.
    local unit line path service user
    for unit in "$root$units_dir"/*; do
        while read -r line; do
            path=${line#*=}
            while [[ $path == [-@:+!\|]* ]]; do path=${path:1}; done # systemd's prefixes
            path=${path%% *}
            [ -n "$path" ] || continue
            if [[ $line == ExecStart=* || $(basename "$path") == "$pkg" ]]; then
                [ "$path" = "/usr/bin/$pkg" ] || fail "$(basename "$unit"): $line: not /usr/bin/$pkg"
                { [ -f "$root$path" ] && [ -x "$root$path" ]; } || fail "$(basename "$unit"): $path is not installed"
            fi
        done < <(grep -E '^[[:space:]]*Exec[A-Za-z]*=' "$unit" | sed 's/^[[:space:]]*//' || true)
        case "$unit" in
        *.service)
            grep -Eq '^ExecStart=/' "$unit" || fail "$(basename "$unit") has no ExecStart="
            # User= must be created by the packaged sysusers file.
            user=$(sed -n 's/^User=//p' "$unit")
            if [ -n "$user" ]; then
                grep -Eq "^u!? $user " "$root/usr/lib/sysusers.d/$pkg.conf" ||
                    fail "$(basename "$unit"): User=$user is not created by $pkg.conf"
            fi
            ;;
        *.socket)
            service=$(sed -n 's/^Service=//p' "$unit")
            if [ -z "$service" ]; then
                service=$(basename "$unit" .socket)
                grep -qx 'Accept=yes' "$unit" && service+=@
                service+=.service
            fi
            [ -f "$root$units_dir/$service" ] || fail "$(basename "$unit") activates $service, which is not installed"
            echo "$(basename "$unit") -> $service"
            ;;
        esac
    done
    # systemd-sysusers finds the file by name, as post.sh calls it, under
    # the root (the host's, offline, without writing anything).
    systemd-sysusers --root="$root" --dry-run "$pkg.conf" 2>&1 | tee "$work/sysusers.out"
    grep -q "$pkg" "$work/sysusers.out" || fail "systemd-sysusers --root does not find $pkg.conf"
    [ ! -e "$root/etc/passwd" ] || fail "systemd-sysusers --dry-run wrote /etc/passwd"

    # Nothing enabled (the stub could not have, but no link came in the
    # payload either), and no drop-in made an example active.
    [ -z "$(find "$root/etc/systemd/system" -mindepth 1 | head -n 1)" ] || fail "something is enabled"
    [ -z "$(find "$root$units_dir" -name '*.d' | head -n 1)" ] || fail "a drop-in directory is installed"

    # Each executable has its man page; the pages are gzipped roff.
    for f in "$root"/usr/bin/"$pkg"*; do
        [ -f "$root/usr/share/man/man1/$(basename "$f").1.gz" ] || fail "no man page for $(basename "$f")"
    done
    zcat "$root/usr/share/man/man1/$pkg.1.gz" | grep -q '^\.TH' || fail "$pkg.1.gz is not a gzipped man page"
    # The stripped binary still runs (with the host's libvirt library).
    local out
    out=$("$root/usr/bin/$pkg" --version)
    [ "$out" = "$pkg $version" ] || fail "--version printed '$out', expected '$pkg $version'"
    echo "$out"
}
stage "rpm -i without systemd: files, units, user, nothing enabled" check_install_no_systemd

check_disable_semantics() {
    # The admin enables the socket and a raw instance; preun.sh's
    # `systemctl --no-reload disable UNITS` (UNITS as in the package's
    # scriptlet) must remove both links, the instance's through its template.
    local preun_units
    preun_units=$(rpmq -qp --qf '%{PREUN}' "$rpm_file" | sed -n 's/^UNITS="\(.*\)"$/\1/p')
    [ "$(tr ' ' '\n' <<<"$preun_units" | sort)" = "$(printf '%s\n' "${units[@]}" | sort)" ] ||
        fail "preun.sh's UNITS ($preun_units) are not the shipped units"
    systemctl --root="$root" enable "$pkg.socket" "$pkg-raw@br0.service"
    [ -L "$root/etc/systemd/system/sockets.target.wants/$pkg.socket" ] || fail "enable made no socket link"
    [ -n "$(find "$root/etc/systemd/system" -name "$pkg-raw@br0.service")" ] || fail "enable made no instance link"
    # shellcheck disable=SC2086 # one word per unit, as in preun.sh
    systemctl --root="$root" --no-reload disable $preun_units
    local left
    left=$(find "$root/etc/systemd/system" -name "$pkg*")
    [ -z "$left" ] || fail "disable left: $left"
    find "$root/etc/systemd/system" -mindepth 1 -type d -empty -delete
}
stage "admin's enable, undone by preun.sh's disable (real systemctl --root)" check_disable_semantics

assert_pristine() {
    local diff
    diff=$(diff <(echo "$pristine") <(snapshot)) || fail "left after rpm -e (> new, < gone):"$'\n'"$diff"
    echo "the scratch root is as before the install"
}
check_erase() { # DESCRIPTION
    # The cache systemd creates for CacheDirectory=, as after a first wake.
    mkdir -p "$root/var/cache/$pkg" && echo index >"$root/var/cache/$pkg/index"
    reset_calls
    "${rpm_change[@]}" --nodeps -e "$pkg"
    show_calls "rpm -e, $1"
    assert_no_forbidden "erase"
    local disable unit
    disable=$(grep '^systemctl --no-reload disable ' "$root/stub-calls.log") || fail "erase did not disable the units"
    for unit in "${units[@]}"; do
        [[ "$disable " == *" $unit "* ]] || fail "erase did not disable $unit"
    done
    ! rpmq "${rpm_root[@]}" -q "$pkg" >/dev/null || fail "$pkg is still installed in the scratch root"
    [ ! -e "$root/var/cache/$pkg" ] || fail "erase left /var/cache/$pkg"
}
check_erase_no_systemd() {
    check_erase "no systemd running"
    ! grep -Eq '^systemctl( --[a-z-]+)* (stop|daemon-reload)' "$root/stub-calls.log" ||
        fail "erase without systemd called stop or daemon-reload"
    assert_pristine
}
stage "rpm -e without systemd: disabled, nothing left" check_erase_no_systemd

check_install_systemd() {
    mkdir -p "$root/run/systemd/system" # what the scriptlets test for
    reset_calls
    "${rpm_change[@]}" --nodeps -i "$rpm_file"
    show_calls "rpm -i, systemd running"
    [ "$(calls)" = "systemd-sysusers $pkg.conf"$'\n'"systemctl daemon-reload" ] ||
        fail "install with systemd: expected systemd-sysusers and daemon-reload, nothing else"
}
stage "rpm -i with systemd: sysusers and daemon-reload only" check_install_systemd

check_upgrade() {
    reset_calls
    "${rpm_change[@]}" --nodeps -U "$rpm2_file"
    show_calls "rpm -U to release 2, systemd running"
    [ "$(rpmq "${rpm_root[@]}" -q --qf '%{RELEASE}' "$pkg")" = 2 ] || fail "release 2 is not installed"
    assert_no_forbidden "upgrade"
    ! grep -Eq '^systemctl( --[a-z-]+)* (stop|disable|mask|kill)( |$)' "$root/stub-calls.log" ||
        fail "upgrade stopped or disabled a unit"
    grep -qx "systemctl daemon-reload" "$root/stub-calls.log" || fail "upgrade did not reload systemd"
    local unit want
    for unit in "${units[@]}"; do
        case "$unit" in
        *@.service) want="systemctl try-restart ${unit%@.service}@*.service" ;;
        *.service) want="systemctl try-restart $unit" ;;
        *) ! grep -q "try-restart $unit" "$root/stub-calls.log" || fail "upgrade restarted $unit"; continue ;;
        esac
        grep -qxF "$want" "$root/stub-calls.log" || fail "upgrade did not '$want'"
    done
}
stage "rpm -U (release 2) with systemd: try-restart, nothing stopped" check_upgrade

check_erase_systemd() {
    check_erase "systemd running"
    # Every socket, timer and service stopped (a template's instances by
    # pattern), all sockets and timers before any service.
    local unit want last_socket last_timer first_service
    for unit in "${units[@]}"; do
        case "$unit" in
        *@.*) want="systemctl stop ${unit%%@*}@*.${unit##*.}" ;;
        *) want="systemctl stop $unit" ;;
        esac
        grep -qxF "$want" "$root/stub-calls.log" || fail "erase did not '$want'"
    done
    last_socket=$(grep -n '^systemctl stop .*\.socket$' "$root/stub-calls.log" | tail -n 1 | cut -d: -f1)
    first_service=$(grep -n '^systemctl stop .*\.service$' "$root/stub-calls.log" | head -n 1 | cut -d: -f1)
    [ "$last_socket" -lt "$first_service" ] || fail "erase stopped a service before a socket"
    last_timer=$(grep -n '^systemctl stop .*\.timer$' "$root/stub-calls.log" | tail -n 1 | cut -d: -f1)
    [ "$last_timer" -lt "$first_service" ] || fail "erase stopped a service before a timer"
    [ "$(tail -n 1 "$root/stub-calls.log")" = "systemctl daemon-reload" ] ||
        fail "erase did not end with daemon-reload"
    rmdir "$root/run/systemd/system" "$root/run/systemd"
    assert_pristine
}
stage "rpm -e with systemd: stopped (sockets first), disabled, nothing left" check_erase_systemd
