# Shared by tests/e2e/systemd-nspawn.sh, tests/e2e/host-b.sh and
# packaging/check-deb-systemd.sh (sourced, not run): phase timing, the cached
# Debian 12 root they all boot, booting it, running commands in the booted
# container, polling with a deadline, and a cleanup that always powers the
# container off. The caller sets `script` (a name for messages), `name` (the
# unit name), `domain` (the guest to destroy before poweroff), and, once the
# container runs, `nspawn_pid`, `ct_pid` and `nspawn_log` (boot_container
# sets the last three). A script whose container must outlive it on success
# (host-b.sh up) sets `keep_container=1` before it exits 0.

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

# guest_xml NAME MAC: the tiny test guest ($virt_type, 32 MiB, no disk, one
# user-mode NIC with MAC, boot ROM off: it boots nothing and idles).
guest_xml() {
    cat <<XML
<domain type='$virt_type'>
  <name>$1</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <interface type='user'>
      <mac address='$2'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <graphics type='vnc' port='-1' listen='127.0.0.1'/>
  </devices>
</domain>
XML
}

# Waits for libvirtd in the container and defines the guest $domain with
# $mac (guest_xml), shut off.
define_guest() {
    wait_for "libvirtd answers on qemu:///system" 30 ct virsh -c qemu:///system version
    guest_xml "$domain" "$mac" >"/proc/$ct_pid/root/tmp/$domain.xml"
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

# ---------------------------------------------------------------- the root
# The Debian 12 root every container here boots, built once into $cache
# (default /var/cache/wol-libvirt-gateway-e2e) and then only read: each boot
# uses --volatile=overlay, so every run starts from the same state and
# several containers (host B beside the e2e container) can boot it at once.
cache=${WOL_E2E_CACHE:-/var/cache/wol-libvirt-gateway-e2e}
root=$cache/root
root_stamp_file=.wol-e2e-root-ready
suite=bookworm
# What the root needs. Changing these lists changes the stamp, so the next
# run rebuilds the root. openssh-server: host B's sshd (qemu+ssh://);
# openssh-client: the gateway's ssh to host B from the e2e container.
bootstrap_include=(systemd systemd-sysv dbus iproute2 libvirt0)
root_packages=(libvirt-daemon-system libvirt-clients polkitd qemu-system-x86 wakeonlan jq
    openssh-server openssh-client)
root_format=4 # bump when the build steps below change
root_stamp="format=$root_format suite=$suite include=${bootstrap_include[*]} packages=${root_packages[*]}"

# Debian packages of the libraries BINARY links (for the root).
binary_lib_packages() {
    local libs
    mapfile -t libs < <(ldd "$1" | awk '$3 ~ /^\// {print $3; print "/usr" $3}')
    ((${#libs[@]} == 0)) || { dpkg -S "${libs[@]}" 2>/dev/null || true; } | cut -d: -f1 | sort -u
}

# apt-get inside a root, in nspawn's private namespaces (nothing mounted on
# the host, so an interrupted run leaves no mount behind under the cache).
root_apt_install() {
    local dir=$1
    shift
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 0755 "$dir/usr/sbin/policy-rc.d"
    systemd-nspawn -q --register=no --keep-unit -D "$dir" \
        -E DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" && apt-get clean' \
        sh "$@" >>"$cache/build.log" 2>&1 ||
        fail "apt-get install $* in $dir failed; see $cache/build.log"
    rm -f "$dir/usr/sbin/policy-rc.d"
}

build_root() {
    local bin=$1 new=$cache/root.new mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [[ -n $mirror ]] || mirror=http://deb.debian.org/debian
    log "building $root from scratch (mirror $mirror); log in $cache/build.log"
    [[ ! -e $new ]] || rm -rf --one-file-system "$new"
    : >"$cache/build.log"
    local include
    include=$(
        IFS=,
        echo "${bootstrap_include[*]}"
    )
    debootstrap --variant=minbase --include="$include" "$suite" "$new" "$mirror" \
        >>"$cache/build.log" 2>&1 || fail "debootstrap failed; see $cache/build.log"
    log "debootstrap done ($(fmt_ms "$(ms_since "$phase_t0")"))"
    local lib_packages=()
    [[ -z $bin ]] || mapfile -t lib_packages < <(binary_lib_packages "$bin")
    root_apt_install "$new" "${root_packages[@]}" "${lib_packages[@]}"
    log "packages installed ($(fmt_ms "$(ms_since "$phase_t0")"))"
    # nspawn's cgroupfs is read-only: libvirt must not try to create its own
    # cgroup controllers for the guest.
    grep -q '^cgroup_controllers' "$new/etc/libvirt/qemu.conf" ||
        echo 'cgroup_controllers = [ ]' >>"$new/etc/libvirt/qemu.conf"
    # No getty on the pipe console. No libvirt-guests: at poweroff it would
    # ask the (bootless, ACPI-deaf) guest to shut down and wait 120 s.
    ln -sf /dev/null "$new/etc/systemd/system/console-getty.service"
    ln -sf /dev/null "$new/etc/systemd/system/libvirt-guests.service"
    # No sshd at boot: the e2e and package containers share this machine's
    # network, and theirs would listen on its port 22. Host B, on a network
    # of its own, starts it (tests/e2e/host-b.sh).
    systemctl --root="$new" disable ssh.service >>"$cache/build.log" 2>&1 ||
        fail "cannot disable ssh.service in $new; see $cache/build.log"
    echo "wol-e2e" >"$new/etc/hostname"
    echo "127.0.1.1 wol-e2e" >>"$new/etc/hosts"
    # Last: the stamp says the root is complete.
    echo "$root_stamp" >"$new/$root_stamp_file"
    [[ ! -e $root ]] || rm -rf --one-file-system "$root"
    mv "$new" "$root"
}

# ensure_root [BINARY]: the cached root, built if missing or outdated (its
# stamp file, written last, must match the package lists above; an
# interrupted build is thrown away and redone), with the packages of the
# libraries BINARY links, and KVM set up for it (kvm_for_root). One builder
# at a time ($cache/root.lock), so host B and the e2e container can ask for
# it at once.
ensure_root() {
    local bin=${1:-}
    .ci/ensure-packages.sh debootstrap systemd-container systemd iproute2
    mkdir -p "$cache"
    exec 8>"$cache/root.lock"
    flock -w 900 8 || fail "another run has been building $root for 15 minutes ($cache/root.lock)"
    if [[ -f $root/$root_stamp_file && $(cat "$root/$root_stamp_file") == "$root_stamp" ]]; then
        log "cached root is complete (stamp matches)"
    else
        if [[ -e $root ]]; then
            log "cached root is incomplete or outdated (stamp): rebuilding"
        elif [[ -e $cache/root.new ]]; then
            log "discarding an interrupted build ($cache/root.new)"
        fi
        build_root "$bin"
    fi
    kvm_for_root
    flock -u 8
    exec 8>&-
}

# KVM: libvirt-qemu in the root needs a group with the host's /dev/kvm gid
# (the device is bound into the container as is). Sets virt_type (kvm or,
# without /dev/kvm, qemu: plain emulation) and kvm_args for boot_container.
virt_type=qemu
kvm_args=()
kvm_for_root() {
    virt_type=qemu
    kvm_args=()
    if [[ ! -c /dev/kvm ]]; then
        log "no /dev/kvm: guest type='qemu' (emulation)"
        return
    fi
    if ((($(stat -c '0%a' /dev/kvm) & 060) != 060)) || [[ $(stat -c %g /dev/kvm) == 0 ]]; then
        # A fresh machine has /dev/kvm root-only: what udev does on a normal host.
        getent group kvm >/dev/null || groupadd --system kvm
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
        log "/dev/kvm was root-only: now root:kvm 0660"
    fi
    local kvm_gid kvm_group
    kvm_gid=$(stat -c %g /dev/kvm)
    kvm_group=$(chroot "$root" getent group "$kvm_gid" | cut -d: -f1 || true)
    if [[ -z $kvm_group ]]; then
        kvm_group=kvm-host
        chroot "$root" groupadd --system --gid "$kvm_gid" "$kvm_group"
    fi
    chroot "$root" id -nG libvirt-qemu | grep -qw "$kvm_group" ||
        chroot "$root" usermod -aG "$kvm_group" libvirt-qemu
    kvm_args=(--bind=/dev/kvm)
    virt_type=kvm
    log "KVM guests (libvirt-qemu in $kvm_group, gid $kvm_gid)"
}

# boot_container MACHINE [NSPAWN_ARGS...]: boots the cached root in the
# background (--volatile=overlay: the cache stays read-only, writes go to a
# tmpfs) and waits until its systemd runs. Sets nspawn_pid, ct_pid and
# nspawn_log ($cache/nspawn-MACHINE.log). nspawn gets none of the caller's
# fds 3, 8 and 9 (a pipe a reader waits to close, the scripts' locks): it
# may outlive the caller.
boot_container() {
    local machine=$1
    shift
    nspawn_log=$cache/nspawn-$machine.log
    setsid systemd-nspawn --register=no --keep-unit --volatile=overlay -q \
        -D "$root" -b -M "$machine" --console=pipe "${kvm_args[@]}" "$@" \
        >"$nspawn_log" 2>&1 </dev/null 3>&- 8>&- 9>&- &
    nspawn_pid=$!
    wait_for "systemd-nspawn running (pid $nspawn_pid)" 5 nspawn_started
    wait_for "container systemd (child of nspawn)" 20 container_init
    log "container $machine: PID 1 is host pid $ct_pid"
    wait_for "systemctl is-system-running: running or degraded" 90 system_up
    local state
    state=$(ct systemctl is-system-running || true)
    log "system: $state"
    [[ $state == running ]] || ct systemctl --no-pager --failed --plain --no-legend | sed 's/^/    failed: /'
}
nspawn_started() { [[ $(cat "/proc/$nspawn_pid/comm" 2>/dev/null) == systemd-nspawn ]]; }
container_init() {
    local p
    for p in $(pgrep -P "$nspawn_pid"); do
        if [[ $(cat "/proc/$p/comm" 2>/dev/null) == systemd ]]; then
            ct_pid=$p
            return 0
        fi
    done
    return 1
}
system_up() {
    local s
    s=$(ct systemctl is-system-running 2>/dev/null) || true
    [[ $s == running || $s == degraded ]]
}

# Powers the container off (escalating to SIGTERM and SIGKILL of nspawn);
# destroys every running guest first, so libvirtd's stop does not wait for
# them. Returns 1 if it had to kill.
poweroff_container() {
    local rc=0
    if [[ -n $ct_pid ]] && pid_alive "$ct_pid"; then
        local guests
        guests=$(ct virsh -q -c qemu:///system list --name 2>/dev/null || true)
        for g in ${domain:-} $guests; do
            ct virsh -q -c qemu:///system destroy "$g" >/dev/null 2>&1
        done
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
        rc=1
    fi
    # Reaped here when it is this shell's child; another process's (host B
    # powered off by `host-b.sh down`) is only waited for above.
    wait "$nspawn_pid" 2>/dev/null
    return $rc
}

# Hooks a script adds to the EXIT trap (run first, in order), e.g. host B's
# teardown in the e2e script.
on_exit=()

# The EXIT trap: diagnostics on failure, the on_exit hooks, then poweroff,
# then the verdict with the total time.
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((rc != 0)); then
        dump_diagnostics
    fi
    local hook
    for hook in "${on_exit[@]}"; do
        $hook
    done
    if ((rc == 0)) && ((${keep_container:-0})); then
        :
    elif [[ -n $nspawn_pid ]] && pid_alive "$nspawn_pid"; then
        phase "poweroff"
        poweroff_container || { ((rc != 0)) || rc=1; }
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
