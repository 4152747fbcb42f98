"""The power switch driven by Home Assistant's real `rest` switch platform.

Not a reproduction of its requests: a real Home Assistant test instance
(pytest-homeassistant-custom-component) loads its own `rest` integration
with the YAML of docs/power.md and talks HTTP to the real gateway binary,
which serves a libvirt `test:///` node file (state kept in the gateway
process, so the switch's GET sees what its POSTs did).

Run through tests/ha/run.sh, which passes the binary in WOL_HA_GATEWAY_BIN.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path
import re
import subprocess
import time
import urllib.request

import pytest

from homeassistant.const import ATTR_ENTITY_ID, STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component

pytest_plugins = ["pytest_homeassistant_custom_component"]

# A token that may wake and sleep web01, and one that may only wake it.
SLEEP_TOKEN = "web01-sleep-Hq4nX8vLr1Tz6KcW3mPy0sB"
WAKE_TOKEN = "web01-wake-9fJd2LsQw7ZxC4vBn8MkT1rYe"
MAC = "52:54:00:aa:bb:01"
NS = "https://wol-libvirt-gateway/xmlns/1"


def token_hash(token: str) -> str:
    """What `token add` stores (src/secret.rs `token_hash`): SHA-256 of the UTF-8 text."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def node_xml() -> str:
    """A libvirt test-driver node with web01 running and both tokens."""
    meta = (
        f"<wol:wake xmlns:wol='{NS}' opt-in='no'>"
        f"<token sha256='{token_hash(SLEEP_TOKEN)}' may='wake sleep'/>"
        f"<token sha256='{token_hash(WAKE_TOKEN)}'/>"
        "<idle after='1800' action='managedsave' cpu-permille='50' net-bps='8192' "
        "disk-bps='65536'/></wol:wake>"
    )
    return (
        "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
        "<active>2</active><mhz>2000</mhz><model>i686</model></cpu><memory>8388608</memory>\n"
        "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
        "<name>web01</name><uuid>4c3b9a1e-5f2d-4e60-8a7b-1d2c3e4f5a01</uuid>"
        "<memory>65536</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
        f"<metadata>{meta}</metadata><devices><interface type='user'>"
        f"<mac address='{MAC}'/></interface></devices>"
        "<test:runstate>1</test:runstate></domain>\n</node>\n"
    )


class Gateway:
    """The gateway binary run by hand, its stderr in a file."""

    def __init__(self, binary: str, tmp: Path) -> None:
        node = tmp / "node.xml"
        node.write_text(node_xml())
        (tmp / "cache").mkdir()
        self.log_path = tmp / "gateway.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("WOL_")
            and k
            not in (
                "LISTEN_FDS",
                "LISTEN_PID",
                "LISTEN_FDNAMES",
                "NOTIFY_SOCKET",
                "JOURNAL_STREAM",
                "WATCHDOG_USEC",
                "CACHE_DIRECTORY",
            )
        }
        env.update(XDG_CACHE_HOME=str(tmp / "cache"), RUST_LOG="info")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--libvirt-uri",
                    f"test://{node.resolve()}",
                    "--http-listen",
                    "127.0.0.1:0",
                    "--listen-address",
                    "127.0.0.1:0",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        line = self.wait_for_log_blocking("listening on ", timeout=15)
        found = re.search(r"(127\.0\.0\.1:\d+) \(HTTP\)", line)
        assert found, line
        self.base = f"http://{found.group(1)}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines_with(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]

    def wait_for_log_blocking(self, needle: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if lines := self.lines_with(needle):
                return lines[-1]
            if self.process.poll() is not None:
                pytest.fail(f"gateway exited ({self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {needle!r} in the gateway's log:\n{self.log()}")
            time.sleep(0.01)

    async def wait_for_log(self, needle: str, timeout: float = 10) -> str:
        """A journal line may follow the HTTP answer by a moment."""
        deadline = time.monotonic() + timeout
        while not (lines := self.lines_with(needle)):
            if time.monotonic() > deadline:
                pytest.fail(f"no {needle!r} in the gateway's log:\n{self.log()}")
            await asyncio.sleep(0.01)
        return lines[-1]

    def power(self) -> str:
        """The domain's state as the gateway answers it, outside Home Assistant."""
        request = urllib.request.Request(
            f"{self.base}/v1/power/web01",
            headers={"Authorization": f"Bearer {WAKE_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def gateway(tmp_path: Path, socket_enabled):
    binary = os.environ.get("WOL_HA_GATEWAY_BIN") or str(
        Path(__file__).resolve().parents[2] / "target/debug/wol-libvirt-gateway"
    )
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no gateway binary at {binary} (set WOL_HA_GATEWAY_BIN)")
    gw = Gateway(binary, tmp_path)
    yield gw
    gw.stop()
    # Shown by pytest -rA / on failure: what the gateway logged for HA's requests.
    print(gw.log())
    assert SLEEP_TOKEN not in gw.log() and WAKE_TOKEN not in gw.log()


async def setup_switches(hass: HomeAssistant, *confs: dict) -> None:
    """The `switch:` list of configuration.yaml; `homeassistant` for update_entity."""
    assert await async_setup_component(hass, "homeassistant", {})
    assert await async_setup_component(hass, "switch", {"switch": list(confs)})
    await hass.async_block_till_done()


def switch_conf(gw: Gateway, name: str, token: str) -> dict:
    """docs/power.md's YAML, as the dict Home Assistant reads from it."""
    return {
        "platform": "rest",
        "name": name,
        "resource": f"{gw.base}/v1/power/web01",
        "headers": {"Authorization": f"Bearer {token}"},
    }


async def call(hass: HomeAssistant, domain: str, service: str, entity_id: str) -> None:
    await hass.services.async_call(
        domain, service, {ATTR_ENTITY_ID: entity_id}, blocking=True
    )
    await hass.async_block_till_done()


def state(hass: HomeAssistant, entity_id: str) -> str:
    entity = hass.states.get(entity_id)
    assert entity is not None, f"{entity_id} was not set up"
    return entity.state


async def test_documented_switch_sleeps_and_wakes(
    hass: HomeAssistant, gateway: Gateway
) -> None:
    await setup_switches(hass, switch_conf(gateway, "web01", SLEEP_TOKEN))
    assert state(hass, "switch.web01") == STATE_ON

    await call(hass, "switch", "turn_off", "switch.web01")
    assert state(hass, "switch.web01") == STATE_OFF
    await gateway.wait_for_log("put web01 to sleep (managedsave")
    assert gateway.power() == "OFF"
    # A poll reads the same.
    await call(hass, "homeassistant", "update_entity", "switch.web01")
    assert state(hass, "switch.web01") == STATE_OFF

    await call(hass, "switch", "turn_on", "switch.web01")
    assert state(hass, "switch.web01") == STATE_ON
    await gateway.wait_for_log("restored web01")
    assert gateway.power() == "ON"
    await call(hass, "homeassistant", "update_entity", "switch.web01")
    assert state(hass, "switch.web01") == STATE_ON

    assert len(gateway.lines_with("put web01 to sleep (managedsave")) == 1
    assert len(gateway.lines_with("restored web01")) == 1


async def test_wake_only_token_turns_on_but_not_off(
    hass: HomeAssistant, gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await setup_switches(
        hass,
        switch_conf(gateway, "web01 wake only", WAKE_TOKEN),
        switch_conf(gateway, "web01", SLEEP_TOKEN),
    )
    waker = "switch.web01_wake_only"
    assert state(hass, waker) == STATE_ON

    # 403: the rest switch logs an error and keeps its state; the poll that
    # follows every service call on a polling entity reads ON again.
    caplog.clear()
    await call(hass, "switch", "turn_off", waker)
    assert state(hass, waker) == STATE_ON
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"Can't turn off {gateway.base}/v1/power/web01. Is resource/endpoint offline?"
    ], caplog.text
    assert '"HTTP/1.1 403 Forbidden"' in caplog.text, caplog.text
    assert gateway.power() == "ON"
    refused = await gateway.wait_for_log("refused to put web01 to sleep")
    assert "the token may only wake it" in refused, refused
    assert not gateway.lines_with("put web01 to sleep (managedsave")
    await call(hass, "homeassistant", "update_entity", waker)
    assert state(hass, waker) == STATE_ON

    # What it may do: wake. Put web01 to sleep with the other switch first.
    await call(hass, "switch", "turn_off", "switch.web01")
    await gateway.wait_for_log("put web01 to sleep (managedsave")
    await call(hass, "homeassistant", "update_entity", waker)
    assert state(hass, waker) == STATE_OFF
    await call(hass, "switch", "turn_on", waker)
    assert state(hass, waker) == STATE_ON
    await gateway.wait_for_log("restored web01")
    assert gateway.power() == "ON"
