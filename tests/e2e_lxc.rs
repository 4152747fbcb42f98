//! LXC containers through libvirtd's real LXC driver (`lxc:///`): a magic
//! packet starts a container by its interface's MAC, `list` shows it, a
//! suspend and the next packet's resume work as for a VM, and what the LXC
//! driver lacks (a managed save) is one clear line, not a failure of
//! anything else. Needs root and libvirtd with the LXC driver, so `cargo
//! test` skips it:
//!
//! ```sh
//! sudo tests/e2e/setup-host.sh
//! sudo cargo test -- --ignored e2e_lxc
//! ```

use std::process::Command;

use crate::util::{DEADLINE, Launch, command_on, libvirtd_shared, ran, wait_until, wake};

const URI: &str = "lxc:///";

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output()
        .expect("run virsh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_owned())
}

/// A container (`/bin/sleep` as its init, one `ethernet` interface: a veth
/// pair, nothing on the host's network) defined for one test and removed
/// on drop.
struct Container {
    name: String,
    mac: &'static str,
}

impl Container {
    fn define(test: &str, mac: &'static str) -> Container {
        let name = format!("wolgw-e2e-{test}-{}", std::process::id());
        let xml = format!(
            "<domain type='lxc'><name>{name}</name><memory unit='MiB'>64</memory>\
             <os><type>exe</type><init>/bin/sleep</init><initarg>3600</initarg></os>\
             <devices><interface type='ethernet'><mac address='{mac}'/></interface>\
             <console type='pty'/></devices></domain>"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("container.xml");
        std::fs::write(&path, xml).expect("write the XML");
        let (ok, said) = virsh(&["define", &path.to_string_lossy()]);
        assert!(ok, "virsh define: {said}");
        Container { name, mac }
    }

    fn state(&self) -> String {
        virsh(&["domstate", &self.name]).1
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
    }
}

/// Runs the binary on `lxc:///`: exit code and its output.
fn run(args: &[&str], cache: &std::path::Path) -> (i32, String) {
    let (code, stdout, stderr) = ran(command_on(URI, args).env("XDG_CACHE_HOME", cache));
    (code, format!("{stdout}{stderr}"))
}

#[test]
#[ignore = "needs root and libvirtd with the LXC driver: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_lxc"]
fn e2e_lxc_a_packet_starts_a_container_and_what_lxc_lacks_is_one_line() {
    let _libvirtd = libvirtd_shared();
    let container = Container::define("lxc", "52:54:00:e2:30:01");
    let cache = tempfile::tempdir().expect("tempdir");
    let name = container.name.as_str();

    // Indexed and shown like a VM.
    let (code, listed) = run(&["list"], cache.path());
    assert_eq!(code, 0, "{listed}");
    let row = listed
        .lines()
        .find(|l| l.contains(name))
        .unwrap_or_else(|| panic!("not listed: {listed}"));
    assert!(
        row.contains(container.mac) && row.contains("start"),
        "{row}"
    );

    // A packet starts it. (No de-duplication window: the sleeps below come
    // from other processes, which this gateway does not hear of.)
    let gateway = Launch::new(&["-a", "127.0.0.1:0", "-l", URI, "--dedupe-window", "0"]).spawn();
    wake(gateway.listen_addr(), container.mac);
    gateway.wait_for_log(&format!("started {name}"));
    assert!(
        wait_until(DEADLINE, || container.state() == "running"),
        "{}",
        container.state()
    );

    // Paused by its policy's action, resumed by the next packet.
    let (code, said) = run(
        &["idle", "set", name, "--after", "1h", "--action", "suspend"],
        cache.path(),
    );
    assert_eq!(code, 0, "{said}");
    let (code, said) = run(&["sleep", name], cache.path());
    assert_eq!(code, 0, "{said}");
    assert_eq!(container.state(), "paused");
    wake(gateway.listen_addr(), container.mac);
    gateway.wait_for_log(&format!("resumed {name}"));
    assert!(
        wait_until(DEADLINE, || container.state() == "running"),
        "{}",
        container.state()
    );

    // The LXC driver has no managed save: one line with libvirt's words,
    // nothing stopped, and the gateway goes on.
    let (code, said) = run(
        &[
            "idle",
            "set",
            name,
            "--after",
            "1h",
            "--action",
            "managedsave",
        ],
        cache.path(),
    );
    assert_eq!(code, 0, "{said}");
    let (code, said) = run(&["sleep", name], cache.path());
    assert_eq!(code, 1, "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains(&format!("cannot put {name} to sleep (managedsave")),
        "{said}"
    );
    assert_eq!(container.state(), "running");
    virsh(&["destroy", name]);
    wake(gateway.listen_addr(), container.mac);
    assert!(
        wait_until(DEADLINE, || container.state() == "running"),
        "the gateway no longer wakes it: {}",
        gateway.log()
    );
}
