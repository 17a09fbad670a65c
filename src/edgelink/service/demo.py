"""``edgelink demo``: simulated devices, a config folder that uses them, and the gateway.

It starts simulators in this process — a fleet of PING/PONG TCP devices, two
Modbus TCP inverters with batteries, an HTTP device — writes a config folder
for them (connections, a few routes) into a temporary directory, runs a
`Gateway` on it (the admin API on 127.0.0.1, the token printed) and shows a
live status table. Every few seconds it unplugs one TCP device and plugs it
back, so you can watch the reconnect: in the table, in ``GET
/api/connections`` and on ``/api/stream``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edgelink.events import Event
from edgelink.manager import ConnectionManager
from edgelink.redact import redact_text
from edgelink.service.gateway import Gateway

__all__ = ["demo_config", "run_demo"]


#: The demo's routes: a unit conversion, an alarm with a condition, a chain.
DEMO_ROUTES: dict[str, Any] = {
    "version": "1.0",
    "routes": [
        {
            "id": "inverter_kw",
            "from": "*.ir:1:float32",
            "to": "calc.{source}_kw",
            "transform": "scale(0.001) | round(2)",
            "description": "AC power of each inverter in kW",
        },
        {
            "id": "hot_device",
            "from": "*.temperature",
            "to": "log.alarms",
            "condition": "value > 24.5",
            "description": "log a warm device",
        },
        {
            "id": "http_ac_kw",
            "from": "meter.*",
            "to": "calc.meter_kw",
            "transform": "scale(0.001) | round(2)",
        },
    ],
}


def demo_config(
    ports: list[int],
    modbus_ports: list[int] | None = None,
    http_url: str | None = None,
    bms_ports: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Return the ``connections.json`` of the demo for its simulated devices.

    ``bms_ports``: parser (``daly``, ``jbd``) -> the pty of a simulated BMS.
    """
    config: dict[str, Any] = {
        "settings": {
            "health_check_interval": 2.0,
            "health_check_timeout": 1.0,
            "connect_timeout": 1.0,
            "reconnect_initial_delay": 0.2,
            "reconnect_max_delay": 4.0,
            "stable_after": 5.0,
            "reconnect_max_attempts": None,
        },
        "connections": {
            f"device_{i + 1:02d}": {
                "type": "tcp",
                "name": f"Simulated device {i + 1}",
                "config": {"host": "127.0.0.1", "port": port, "identity_request": "ID?"},
                "poll": [{"tags": ["temperature", "power"], "interval": 1.0}],
            }
            for i, port in enumerate(ports)
        },
    }
    for i, port in enumerate(modbus_ports or []):
        config["connections"][f"inverter_{i + 1}"] = {
            "type": "modbus_tcp",
            "name": f"Simulated inverter {i + 1}",
            "config": {"host": "127.0.0.1", "port": port, "unit_id": 1},
            "poll": [{"tags": ["ir:1:float32", "ir:8*0.1"], "interval": 1.0}],
        }
    for i, (parser, tty) in enumerate((bms_ports or {}).items()):
        config["connections"][f"bt.bms_{i + 1:03d}"] = {
            "type": "bms",
            "name": f"Simulated {parser} BMS",
            "config": {"parser": parser, "port": tty, "interval": 2.0},
        }
    if http_url is not None:
        config["connections"]["meter"] = {
            "type": "http",
            "name": "Simulated HTTP meter",
            "config": {"base_url": http_url, "health_path": "/health"},
            "poll": [{"tags": ["/status#/power/ac"], "interval": 1.0}],
        }
    return config


def _free_or_any(port: int) -> int:
    """Return ``port`` if nothing listens on it at 127.0.0.1, else 0 (any free port)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


async def run_demo(
    args: argparse.Namespace, *, start_api: Callable[[Gateway], Awaitable[object]] | None = None
) -> None:
    """Run the demo until ``--duration`` passes or SIGINT/SIGTERM.

    Args:
        args: The parsed ``edgelink demo`` arguments.
        start_api: Awaited with the started gateway (the command line starts
            the API server here; the service does not know the API).
    """
    from edgelink.sim.tcp import TcpSimulator

    sim = TcpSimulator(count=args.devices, base_port=0)
    await sim.start()
    modbus: Any = None
    http: Any = None
    with contextlib.suppress(ImportError):  # without the modbus extra: no inverters
        from edgelink.sim.modbus import ModbusSimulator

        modbus = ModbusSimulator(2)
        await modbus.start()
    with contextlib.suppress(ImportError, RuntimeError):  # without uvicorn: no meter
        from edgelink.sim.http import HttpSimulator

        http = HttpSimulator()
        await asyncio.to_thread(http.start)
    with tempfile.TemporaryDirectory(prefix="edgelink-demo-") as tmp:
        folder = Path(tmp)
        bms = await _start_bms(folder) if args.bms else []
        config = demo_config(
            sim.ports,
            modbus.ports if modbus else None,
            http.url if http else None,
            {device.kind: str(link.path) for link, device in bms},
        )
        service: dict[str, Any] = {"api": {"host": "127.0.0.1", "port": _free_or_any(args.port)}}
        if args.mqtt:
            host, _, port = args.mqtt.rpartition(":")
            config["connections"]["broker"] = {
                "type": "mqtt",
                "name": "MQTT broker (bridge)",
                "config": {"host": host or "127.0.0.1", "port": int(port or 1883)},
                "settings": {"spam_max_pps": None},
            }
            service["bridge"] = {"connection": "broker", "base_topic": "smarthome"}
        (folder / "connections.json").write_text(json.dumps(config, indent=2))
        (folder / "routing.json").write_text(json.dumps(DEMO_ROUTES, indent=2))
        (folder / "edgelink.json").write_text(json.dumps(service, indent=2))
        gateway = Gateway(folder, watch=False)
        try:
            await _run(args, sim, gateway, start_api)
        finally:
            await gateway.stop()
            await sim.stop()
            if modbus is not None:
                await modbus.stop()
            if http is not None:
                await asyncio.to_thread(http.stop)
            for link, device in bms:
                device.detach()
                await link.stop()


async def _start_bms(folder: Path) -> list[tuple[Any, Any]]:
    """Start a simulated Daly and JBD BMS, each on a socat pty pair in ``folder``.

    Raises:
        SystemExit: with the reason if socat is missing (``--bms`` needs it).
    """
    if shutil.which("socat") is None:
        raise SystemExit("edgelink demo --bms needs socat (apt-get install socat)")
    from edgelink.sim.bms import BmsDevice, BmsModel
    from edgelink.sim.serial import SerialLink

    started: list[tuple[Any, Any]] = []
    for kind, cells in (("daly", 16), ("jbd", 8)):
        link = SerialLink(folder / f"tty{kind.upper()}")
        await link.start()
        device = BmsDevice(link.device_path, kind, BmsModel(cells=cells))
        device.attach()
        started.append((link, device))
    return started


async def _run(
    args: argparse.Namespace,
    sim: Any,
    gateway: Gateway,
    start_api: Callable[[Gateway], Awaitable[object]] | None,
) -> None:
    log: deque[str] = deque(maxlen=8)
    values: dict[tuple[str, str], Any] = {}
    counts: Counter[str] = Counter()

    def on_event(ev: Event) -> None:
        if ev.type in ("disconnected", "reconnect_ok", "connected", "suspended"):
            counts[ev.type] += 1
            stamp = time.strftime("%H:%M:%S", time.localtime(ev.ts))
            extra = ev.data.get("reason") or ev.data.get("attempts") or ""
            log.append(f"{stamp}  {ev.connection_id:<10} {ev.type:<13} {extra}")

    def on_data(cid: str, tag: str, value: Any, quality: str, ts: float) -> None:
        shown = value if quality == "good" else "-"
        values[(cid, tag)] = shown
        values[(cid, "")] = f"{tag}={shown}"

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    await gateway.start()
    if start_api is not None:
        await start_api(gateway)
    manager = gateway.manager
    manager.on_event("*", on_event)
    manager.on_data(on_data)
    print(
        f"edgelink demo: {args.devices} simulated devices on 127.0.0.1 ports "
        f"{sim.ports[0]}-{sim.ports[-1]}; Ctrl-C to stop",
        flush=True,
    )
    others = [
        f"{cid} ({manager.get_spec(cid).type})"
        for cid in manager.connections
        if not cid.startswith("device_")
    ]
    if others:
        print(f"edgelink demo: also {', '.join(others)}; routes from routing.json", flush=True)
    if gateway.bridge is not None:
        print(
            f"edgelink demo: MQTT bridge on {args.mqtt}: mosquitto_sub -h "
            f"{args.mqtt.rpartition(':')[0] or '127.0.0.1'} -t 'smarthome/#' -v",
            flush=True,
        )
    if gateway.api_address is not None:
        host, port = gateway.api_address
        print(
            f"edgelink demo: API on http://{host}:{port}  token {gateway.token}\n"
            f'  try: curl -H "Authorization: Bearer {gateway.token}" '
            f"http://{host}:{port}/api/connections",
            flush=True,
        )
        if gateway.ui_path is not None:
            print(
                f"edgelink demo: web UI on http://{host}:{port}{gateway.ui_path}"
                "  (log in with the token)",
                flush=True,
            )
    started = time.monotonic()
    next_chaos = started + args.chaos_every if args.chaos_every > 0 else None
    revive: list[tuple[float, int]] = []
    rng = random.Random()
    while not stop.is_set():
        now = time.monotonic()
        if args.duration is not None and now - started >= args.duration:
            break
        if next_chaos is not None and now >= next_chaos:
            victim = rng.randrange(args.devices)
            await sim.stop_device(victim)
            log.append(
                f"{time.strftime('%H:%M:%S')}  device_{victim + 1:02d} "
                f"unplugged for {args.outage:g} s (simulated)"
            )
            revive.append((now + args.outage, victim))
            next_chaos = now + args.chaos_every
        for due, idx in list(revive):
            if now >= due:
                await sim.start_device(idx)
                revive.remove((due, idx))
        _render(manager, values, log, counts, plain=args.plain)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.refresh):
                await stop.wait()
    print(
        f"demo finished: connected={counts['connected']} "
        f"disconnected={counts['disconnected']} reconnected={counts['reconnect_ok']}",
        flush=True,
    )


def _render(
    manager: ConnectionManager,
    values: dict[tuple[str, str], Any],
    log: deque[str],
    counts: Counter[str],
    *,
    plain: bool,
) -> None:
    rows = [
        f"{'connection':<11} {'type':<10} {'state':<13} {'health':<9} {'last value':<24} "
        f"{'rx':>6} {'attempts':>8}  reason"
    ]
    for cid, st in sorted(manager.get_status().items()):
        last = values.get((cid, "temperature")) or values.get((cid, "")) or "-"
        rows.append(
            f"{cid:<11} {st['type']:<10} {st['status']:<13} {st['health']:<9} {last!s:<24.24} "
            f"{st['stats']['packets_received']:>6} {st['reconnect_attempts']:>8}  "
            f"{st['reason'] or ''}"
        )
    calc = sorted(manager.router.data.children("calc"))
    routed = [
        f"{address} = {dp.value}"
        for address in calc
        if (dp := manager.router.data.get(address)) is not None
    ]
    summary = Counter(st["status"] for st in manager.get_status().values())
    head = "  ".join(f"{k}={v}" for k, v in sorted(summary.items()))
    lag = manager.loop_lag()
    text = "\n".join(
        [
            f"edgelink demo  {time.strftime('%H:%M:%S')}  {head}  "
            f"(reconnects so far: {counts['reconnect_ok']})  "
            f"loop lag p99 {lag['p99_ms'] if lag['p99_ms'] is not None else '-'} ms "
            f"max {lag['max_ms']} ms",
            "",
            *rows,
            "",
            "routed (routing.json): " + ("  ".join(routed) if routed else "-"),
            "",
            "recent events:",
            *log,
            "",
        ]
    )
    text = redact_text(text)  # reasons and events may quote a device's URL
    if plain:
        print(text, flush=True)
    else:
        sys.stdout.write("\x1b[2J\x1b[H" + text)
        sys.stdout.flush()
