//! Host B: a second libvirt host in a network namespace of its own
//! (`tests/e2e/host-b.sh`), booted for this process and powered off when it
//! ends, however it ends. Shared by `tests/e2e_remote.rs` and
//! `benches/wake.rs` (which includes this file by path): std only.

#![allow(dead_code)] // each user reads different facts

use std::process::{Command, Stdio};

/// Host B, as `tests/e2e/host-b.sh up` describes it.
#[derive(Debug)]
pub struct HostB {
    /// Its address on the veth pair.
    pub addr: String,
    /// Its PID 1, for `nsenter`.
    pub pid: String,
    /// The SSH key its user `wol` accepts.
    pub key: String,
    /// `qemu+tcp://ADDR/system`.
    pub tcp_uri: String,
    /// `qemu+ssh://wol@ADDR/system?keyfile=…&no_tty=1`.
    pub ssh_uri: String,
    /// `kvm`, or `qemu` without /dev/kvm.
    pub virt_type: String,
}

impl HostB {
    /// Boots host B for this process (`host-b.sh up --owner PID`).
    pub fn up() -> Result<HostB, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/host-b.sh");
        let out = Command::new(script)
            .args(["up", "--owner", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {script}: {e}"))?;
        let facts = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "{script} up failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let fact = |key: &str| {
            facts
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(|| format!("{script} up printed no {key}:\n{facts}"))
        };
        Ok(HostB {
            addr: fact("HOST_B_ADDR")?,
            pid: fact("HOST_B_PID")?,
            key: fact("HOST_B_KEY")?,
            tcp_uri: fact("HOST_B_TCP_URI")?,
            ssh_uri: fact("HOST_B_SSH_URI")?,
            virt_type: fact("HOST_B_VIRT_TYPE")?,
        })
    }

    /// How the gateway shows the ssh URI: without its parameters.
    pub fn ssh_shown(&self) -> String {
        format!("qemu+ssh://wol@{}/system", self.addr)
    }
}
