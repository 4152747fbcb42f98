# Shared by tests/e2e/systemd-nspawn.sh and packaging/check-deb-systemd.sh
# (sourced, not run): phase timing, running commands in the booted
# container, polling with a deadline, and a cleanup that always powers the
# container off. The caller sets `script` (a name for messages), `name` (the
# unit name), `domain` (the guest to destroy before poweroff), and, once the
# container runs, `nspawn_pid`, `ct_pid` and `nspawn_log`.

t0=${EPOCHREALTIME/./}
phase_name=""
phase_t0=$t0
nspawn_pid=""
ct_pid=""
nspawn_log=""
# A command wait_for runs before each try, to fail fast on a known dead end.
poll_guard=""

ms_since() { echo $(((${EPOCHREALTIME/./} - $1) / 1000)); }
fmt_ms() { printf '%d.%03d s' $(($1 / 1000)) $(($1 % 1000)); }
end_phase() {
    if [[ -n $phase_name ]]; then
        echo "<== $phase_name: $(fmt_ms "$(ms_since "$phase_t0")")"
        phase_name=""
    fi
}
phase() {
    end_phase
    phase_name=$1
    phase_t0=${EPOCHREALTIME/./}
    echo "==> $phase_name"
}
log() { echo "    $*"; }
fail() {
    echo "$script: FAIL${phase_name:+ ($phase_name)}: $*" >&2
    exit 1
}

# Alive and not a zombie.
pid_alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# Runs a command inside the booted container, with a clean environment.
ct() {
    nsenter -t "$ct_pid" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive "$@"
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: polls COMMAND every 0.2 s
# until it succeeds; fails with DESCRIPTION after the deadline, or at once
# if the container is gone or $poll_guard fails.
wait_for() {
    local desc=$1 timeout=$2
    shift 2
    local start=${EPOCHREALTIME/./}
    while true; do
        [[ -z $nspawn_pid ]] || pid_alive "$nspawn_pid" ||
            fail "systemd-nspawn exited; see ${nspawn_log:-its log}"
        [[ -z $poll_guard ]] || $poll_guard
        if "$@" >/dev/null 2>&1; then
            log "ok: $desc ($(fmt_ms "$(ms_since "$start")"))"
            return 0
        fi
        (($(ms_since "$start") < timeout * 1000)) || fail "timed out after $timeout s waiting for: $desc"
        sleep 0.2
    done
}

# Waits for libvirtd in the container and defines the tiny guest $domain
# ($virt_type, 32 MiB, no disk, one user-mode NIC with $mac, boot ROM off:
# it boots nothing and idles), shut off.
define_guest() {
    wait_for "libvirtd answers on qemu:///system" 30 ct virsh -c qemu:///system version
    cat >"/proc/$ct_pid/root/tmp/$domain.xml" <<XML
<domain type='$virt_type'>
  <name>$domain</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <interface type='user'>
      <mac address='$mac'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <graphics type='vnc' port='-1' listen='127.0.0.1'/>
  </devices>
</domain>
XML
    ct virsh -q -c qemu:///system define "/tmp/$domain.xml" | sed 's/^/    /'
    [[ $(domstate) == "shut off" ]] || fail "guest $domain is '$(domstate)', expected 'shut off'"
    log "guest $domain ($virt_type, $mac) defined, shut off"
}
domstate() { ct virsh -c qemu:///system domstate "$domain" 2>/dev/null | head -n1; }

dump_diagnostics() {
    echo "---- diagnostics ----" >&2
    if [[ -n $ct_pid ]] && pid_alive "$ct_pid"; then
        ct systemctl --no-pager status "$name.socket" "$name.service" >&2 || true
        echo "---- journalctl -u $name.service -u $name.socket ----" >&2
        ct journalctl -b --no-pager -o short-precise -u "$name.service" -u "$name.socket" >&2 || true
        echo "---- journalctl -u libvirtd (last 30) ----" >&2
        ct journalctl -b --no-pager -n 30 -u libvirtd.service >&2 || true
        echo "---- failed units ----" >&2
        ct systemctl --no-pager --failed >&2 || true
    fi
    if [[ -n $nspawn_log && -f $nspawn_log ]]; then
        echo "---- tail of $nspawn_log ----" >&2
        tail -n 30 "$nspawn_log" >&2 || true
    fi
}

# The EXIT trap: diagnostics on failure, then poweroff (escalating to
# SIGTERM and SIGKILL of nspawn), then the verdict with the total time.
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((rc != 0)); then
        dump_diagnostics
    fi
    if [[ -n $nspawn_pid ]] && pid_alive "$nspawn_pid"; then
        phase "poweroff"
        if [[ -n $ct_pid ]] && pid_alive "$ct_pid"; then
            ct virsh -q -c qemu:///system destroy "$domain" >/dev/null 2>&1
            ct systemctl poweroff >/dev/null 2>&1
        else
            kill -TERM "$nspawn_pid" 2>/dev/null
        fi
        local start=${EPOCHREALTIME/./}
        while pid_alive "$nspawn_pid" && (($(ms_since "$start") < 30000)); do sleep 0.2; done
        if pid_alive "$nspawn_pid"; then
            echo "$script: container did not power off within 30 s; sending SIGTERM to nspawn $nspawn_pid" >&2
            kill -TERM "$nspawn_pid" 2>/dev/null
            start=${EPOCHREALTIME/./}
            while pid_alive "$nspawn_pid" && (($(ms_since "$start") < 10000)); do sleep 0.2; done
        fi
        if pid_alive "$nspawn_pid"; then
            echo "$script: killing nspawn $nspawn_pid and container init ${ct_pid:-?}" >&2
            [[ -z $ct_pid ]] || kill -KILL "$ct_pid" 2>/dev/null
            kill -KILL "$nspawn_pid" 2>/dev/null
            ((rc != 0)) || rc=1
        fi
        wait "$nspawn_pid" 2>/dev/null
        log "container stopped"
    fi
    end_phase
    local total
    total=$(fmt_ms "$(ms_since "$t0")")
    if ((rc == 0)); then
        echo "$script: PASS in $total"
    else
        echo "$script: FAILED (exit $rc) after $total" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
