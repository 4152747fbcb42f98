#!/usr/bin/env bash
# Static checks of the systemd units in systemd/, without a running systemd
# (PID 1 need not be systemd; only the systemd package's tools are used).
#
#   tests/check-units.sh [BINARY]
#
# 1. `systemd-analyze verify` on the .socket and .service. verify refuses a
#    unit whose ExecStart= binary does not exist, and /usr/local/bin/
#    wol-libvirt-gateway is not installed on a build or CI machine. So the
#    units are copied into a temporary directory with ExecStart= pointing at
#    BINARY (default target/debug/wol-libvirt-gateway), or at /bin/true when
#    that is not built: verify checks the unit syntax, not our program. verify
#    exits 0 even on unknown keys or bad values, so any message about our
#    files counts as a failure. --man=no: the Documentation= man pages need
#    not be installed.
# 2. `systemd-sysusers --dry-run` on the sysusers file, in an empty root.
# 3. Consistency: the service runs as the static user the sysusers file
#    creates, that user is in group libvirt, and no DynamicUser= (polkit
#    refuses a dynamic user; see the comments in the service).
# 4. `systemd-analyze security --offline=yes` on the service: prints the
#    overall exposure and fails above MAX_EXPOSURE (default 1.0).
#    Note: the offline score cannot tell whether the sandbox lets the program
#    run (a system call filter can kill it with SIGSYS); only a start under a
#    real systemd shows that.
set -euo pipefail

cd "$(dirname "$0")/.."
max_exposure=${MAX_EXPOSURE:-1.0}
name=wol-libvirt-gateway
service=systemd/$name.service
socket=systemd/$name.socket
sysusers=systemd/$name.sysusers

fail() {
    echo "check-units: FAIL: $*" >&2
    exit 1
}

command -v systemd-analyze >/dev/null ||
    fail "systemd-analyze not found (Debian: apt-get install systemd)"
for f in "$service" "$socket" "$sysusers"; do
    [[ -f $f ]] || fail "$f is missing"
done

bin=${1:-target/debug/$name}
if [[ -x $bin && -f $bin ]]; then
    bin=$(realpath "$bin")
else
    echo "check-units: $bin not built; verifying with ExecStart=/bin/true"
    bin=/bin/true
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$socket" "$tmp/"
http_socket=systemd/$name-http.socket
[[ -f $http_socket ]] && cp "$http_socket" "$tmp/"
sed "s|^ExecStart=.*|ExecStart=$bin|" "$service" >"$tmp/$name.service"
grep -q "^ExecStart=$bin\$" "$tmp/$name.service" || fail "$service has no ExecStart= line"

export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat SYSTEMD_LOG_COLOR=0

# 1. verify (the directory of the files joins the unit search path, so the
#    socket finds its service there).
sockets=("$tmp/$name.socket")
[[ -f $tmp/$name-http.socket ]] && sockets+=("$tmp/$name-http.socket")
if ! out=$(systemd-analyze verify --man=no "${sockets[@]}" "$tmp/$name.service" 2>&1); then
    echo "$out" >&2
    fail "systemd-analyze verify failed"
fi
if problems=$(grep -F -e "$tmp" -e "$name." <<<"$out"); then
    echo "$problems" >&2
    fail "systemd-analyze verify complained about our units"
fi
echo "check-units: systemd-analyze verify: ok ($socket, ${http_socket:-}, $service)"

# 1b. The raw-Ethernet template unit, verified as an instance (a template
#     itself cannot be loaded). It is always on and needs CAP_NET_RAW and the
#     real network, so it is not held to the socket-activated unit's score.
raw=systemd/$name-raw@.service
if [[ -f $raw ]]; then
    sed "s|^ExecStart=[^ ]*|ExecStart=$bin|" "$raw" >"$tmp/$name-raw@.service"
    if ! out=$(systemd-analyze verify --man=no "$tmp/$name-raw@eth0.service" 2>&1) ||
        problems=$(grep -F -e "$tmp" -e "$name-raw" <<<"$out"); then
        echo "$out" >&2
        fail "systemd-analyze verify failed for $raw"
    fi
    grep -qx "User=$name" "$raw" || fail "$raw must run as User=$name"
    raw_score=$(systemd-analyze security --offline=yes --root=/ --no-pager "$tmp/$name-raw@eth0.service" 2>&1 |
        sed -n 's/.*Overall exposure level for .*: \([0-9][0-9]*\.[0-9]*\).*/\1/p' | tail -n 1)
    echo "check-units: systemd-analyze verify: ok ($raw); offline exposure ${raw_score:-?}"
fi

# 1c. The example drop-in for remote hosts, applied to the service in a
#     directory of their own (systemd reads NAME.service.d/ beside the
#     unit): it must verify, and its offline exposure, printed, may not
#     exceed MAX_EXPOSURE_REMOTE (default 1.2: what the network and ssh cost,
#     see the drop-in's comments).
dropin=systemd/$name.service.d/remote-hosts.conf
if [[ -f $dropin ]]; then
    mkdir -p "$tmp/remote/$name.service.d"
    cp "$tmp/$name.service" "$tmp/remote/"
    cp "$dropin" "$tmp/remote/$name.service.d/remote-hosts.conf"
    # The URIs through the environment: the shipped ExecStart= stays.
    ! grep -q "^ExecStart=" "$dropin" || fail "$dropin repeats ExecStart= (set WOL_LIBVIRT_URI instead)"
    grep -q '^Environment="WOL_LIBVIRT_URI=qemu:///system qemu+ssh://' "$dropin" ||
        fail "$dropin sets no WOL_LIBVIRT_URI"
    if ! out=$(systemd-analyze verify --man=no "$tmp/remote/$name.service" 2>&1) ||
        problems=$(grep -F -e "$tmp" -e "$name." <<<"$out"); then
        echo "$out" >&2
        fail "systemd-analyze verify failed for $name.service with $dropin"
    fi
    remote_score=$(systemd-analyze security --offline=yes --root=/ --no-pager "$tmp/remote/$name.service" 2>&1 |
        sed -n 's/.*Overall exposure level for .*: \([0-9][0-9]*\.[0-9]*\).*/\1/p' | tail -n 1)
    [[ -n $remote_score ]] || fail "no exposure level for $name.service with $dropin"
    echo "check-units: systemd-analyze verify: ok ($dropin); offline exposure with it ${remote_score} (max ${MAX_EXPOSURE_REMOTE:-1.2})"
    if awk -v s="$remote_score" -v m="${MAX_EXPOSURE_REMOTE:-1.2}" 'BEGIN { exit !(s > m) }'; then
        fail "exposure with $dropin is $remote_score, above ${MAX_EXPOSURE_REMOTE:-1.2}"
    fi
fi

# 2. sysusers syntax.
mkdir "$tmp/root"
# (An absolute path: a relative one is looked up under --root.)
if ! out=$(systemd-sysusers --dry-run --root="$tmp/root" "$PWD/$sysusers" 2>&1); then
    echo "$out" >&2
    fail "systemd-sysusers rejected $sysusers"
fi
# Like verify, it skips a bad line with a message naming the file, exit 0.
if problems=$(grep -F "$sysusers" <<<"$out"); then
    echo "$problems" >&2
    fail "systemd-sysusers complained about $sysusers"
fi
grep -q "Creating user '$name'" <<<"$out" || {
    echo "$out" >&2
    fail "$sysusers does not create user $name"
}
echo "check-units: systemd-sysusers --dry-run: ok ($sysusers)"

# 3. Consistency between the service and the sysusers file.
grep -qx "User=$name" "$service" || fail "$service must run as User=$name"
grep -Eq '^DynamicUser=(yes|true|on|1)' "$service" &&
    fail "$service uses DynamicUser=: polkit refuses it for qemu:///system"
grep -Eq "^u[[:space:]]+$name[[:space:]]" "$sysusers" || fail "$sysusers has no 'u $name' line"
grep -Eq "^m[[:space:]]+$name[[:space:]]+libvirt[[:space:]]*$" "$sysusers" ||
    fail "$sysusers does not put $name in group libvirt"
grep -qx "Type=notify" "$service" || fail "$service must be Type=notify"
echo "check-units: service/sysusers consistency: ok"

# 3b. The idle check: a oneshot service and its timer, as hardened as the
#     gateway (held to the same score below), and the timer starts it.
idle_service=systemd/$name-idle.service
idle_timer=systemd/$name-idle.timer
[[ -f $idle_service && -f $idle_timer ]] || fail "missing $idle_service or $idle_timer"
sed "s|^ExecStart=[^ ]*|ExecStart=$bin|" "$idle_service" >"$tmp/$name-idle.service"
grep -q "^ExecStart=$bin idle check\$" "$tmp/$name-idle.service" ||
    fail "$idle_service must run '$name idle check'"
cp "$idle_timer" "$tmp/"
if ! out=$(systemd-analyze verify --man=no "$tmp/$name-idle.timer" "$tmp/$name-idle.service" 2>&1) ||
    problems=$(grep -F -e "$tmp" -e "$name-idle" <<<"$out"); then
    echo "$out" >&2
    fail "systemd-analyze verify failed for $idle_service or $idle_timer"
fi
grep -qx "Type=oneshot" "$idle_service" || fail "$idle_service must be Type=oneshot"
grep -qx "User=$name" "$idle_service" || fail "$idle_service must run as User=$name"
# The offline exposure of the unit file $1 (named $2 in messages), held
# to $max_exposure.
held_to_max() {
    local out score
    out=$(systemd-analyze security --offline=yes --root=/ --no-pager "$1" 2>&1)
    score=$(sed -n 's/.*Overall exposure level for .*: \([0-9][0-9]*\.[0-9]*\).*/\1/p' <<<"$out" | tail -n 1)
    [[ -n $score ]] || {
        echo "$out" >&2
        fail "no exposure level for $2"
    }
    echo "check-units: $2 verify: ok; offline exposure $score (max $max_exposure)"
    if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s > m) }'; then
        grep -E '^✗' <<<"$out" || true
        fail "exposure of $2 $score is above $max_exposure"
    fi
}
held_to_max "$tmp/$name-idle.service" "$name-idle.service/.timer"

# 3c. The scheduled wake and sleep: oneshot templates run by a timer of the
#     same name (docs/power.md), as hardened as the idle check. An instance
#     and a timer like the docs' are verified and scored.
for verb in wake sleep; do
    template=systemd/$name-$verb@.service
    [[ -f $template ]] || fail "missing $template"
    instance=$tmp/$name-$verb@build01.service
    sed "s|^ExecStart=[^ ]*|ExecStart=$bin|" "$template" >"$instance"
    grep -q "^ExecStart=$bin $verb %i " "$instance" || fail "$template must run '$name $verb %i'"
    grep -qx "Type=oneshot" "$template" || fail "$template must be Type=oneshot"
    grep -qx "User=$name" "$template" || fail "$template must run as User=$name"
    printf '[Timer]\nOnCalendar=Mon..Fri 06:30\n[Install]\nWantedBy=timers.target\n' \
        >"$tmp/$name-$verb@build01.timer"
    if ! out=$(systemd-analyze verify --man=no "$tmp/$name-$verb@build01.timer" "$instance" 2>&1) ||
        problems=$(grep -F -e "$tmp" -e "$name-$verb" <<<"$out"); then
        echo "$out" >&2
        fail "systemd-analyze verify failed for $template or a timer of its name"
    fi
    held_to_max "$instance" "$name-$verb@.service and a timer"
done

# 4. Exposure score.
out=$(systemd-analyze security --offline=yes --root=/ --no-pager "$tmp/$name.service" 2>&1) || {
    echo "$out" >&2
    fail "systemd-analyze security failed"
}
score=$(sed -n 's/.*Overall exposure level for .*: \([0-9][0-9]*\.[0-9]*\).*/\1/p' <<<"$out" | tail -n 1)
[[ -n $score ]] || {
    echo "$out" >&2
    fail "no overall exposure level in systemd-analyze security output"
}
# The items still counting against the unit, for the log.
grep -E '^✗' <<<"$out" || true
echo "check-units: offline exposure of $name.service: $score (max $max_exposure)"
if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s > m) }'; then
    fail "exposure $score is above $max_exposure"
fi
echo "check-units: all unit checks passed"
