"""Device simulators for ``edgelink demo``, tests and benchmarks, and their command line.

``python -m edgelink.sim tcp|modbus --count N --base-port P``, ``... http --port P``
or ``... zkteco --port P --password KEY``
(and ``edgelink sim``, which reuses `add_sim_arguments` and `run_sim_from_args`)
runs simulators until SIGTERM or SIGINT; ``... sim serial --link PATH`` runs a
serial device behind a new socat pty pair whose driver end is PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from edgelink.drivers.framing import LENGTH_PREFIXES, Framing
from edgelink.sim.bms import BMS_TYPES, BmsFault, BmsModel, run_bms_simulator
from edgelink.sim.http import HttpDevice, HttpSimulator, run_http_simulator
from edgelink.sim.serial import run_serial_simulator
from edgelink.sim.tcp import TcpSimulator, run_tcp_simulator
from edgelink.sim.zkteco import ZkDevice, ZkFault, ZkSimulator, run_zk_simulator

__all__ = [
    "HttpDevice",
    "HttpSimulator",
    "TcpSimulator",
    "ZkDevice",
    "ZkFault",
    "ZkSimulator",
    "add_sim_arguments",
    "run_bms_simulator",
    "run_http_simulator",
    "run_serial_simulator",
    "run_sim_from_args",
    "run_tcp_simulator",
    "run_zk_simulator",
]


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    """Return an argparse type: an integer ``low..high``, else an error saying ``what``."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


_count = _int_in(1, sys.maxsize, "at least 1")
_port = _int_in(0, 65535, "a port 0..65535")
_amount = _int_in(0, 1_000_000, "0..1000000")
_key = _int_in(0, 0xFFFFFFFF, "a number 0..4294967295")


def _cells(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 32:
        raise argparse.ArgumentTypeError(f"must be 1..32, got {value}")
    return value


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator subcommands (``tcp``, ``serial``, ``bms``, ``modbus``, ``http``).

    The parsed namespace is what `run_sim_from_args` takes.
    """
    kinds = parser.add_subparsers(dest="sim_kind", metavar="KIND", required=True)
    tcp = kinds.add_parser(
        "tcp",
        help="PING/PONG line-protocol devices",
        description="Run COUNT PING/PONG line-protocol devices on consecutive ports.",
    )
    tcp.add_argument("--count", type=_count, default=1, help="number of devices (default 1)")
    tcp.add_argument(
        "--base-port",
        type=_port,
        default=0,
        help="port of the first device; 0 = ephemeral ports (default 0)",
    )
    tcp.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    ser = kinds.add_parser(
        "serial",
        help="a line-protocol device on a socat pty pair",
        description="Create a socat pty pair and run a PING/PONG device on its far end; "
        "point the serial driver's port at --link.",
    )
    ser.add_argument("--link", required=True, help="path of the driver's end (a symlink)")
    ser.add_argument(
        "--device-link", default=None, help="path of the device's end (default LINK.device)"
    )
    ser.add_argument("--framing", choices=("line", "length"), default="line", help="default: line")
    ser.add_argument(
        "--delimiter", default="\\n", help="line delimiter, backslash escapes allowed (default \\n)"
    )
    ser.add_argument(
        "--length-prefix",
        choices=tuple(LENGTH_PREFIXES),
        default="u16be",
        help="length framing prefix (default u16be)",
    )
    bms = kinds.add_parser(
        "bms",
        help="a Daly, JBD or Victron BMS on a socat pty pair",
        description="Create a socat pty pair and run a battery management system on its far "
        "end; point a bms connection's port at --link.",
    )
    bms.add_argument("--type", dest="bms_type", choices=BMS_TYPES, required=True)
    bms.add_argument("--link", required=True, help="path of the driver's end (a symlink)")
    bms.add_argument(
        "--device-link", default=None, help="path of the device's end (default LINK.device)"
    )
    bms.add_argument("--cells", type=_cells, default=16, help="number of cells, 1..32 (default 16)")
    bms.add_argument(
        "--temperature",
        type=float,
        action="append",
        default=None,
        help="a sensor's base temperature in °C; repeat for more sensors (default 21 and 23)",
    )
    bms.add_argument(
        "--alarm", action="append", default=[], help="raise this alarm (name as in docs/bms.md)"
    )
    bms.add_argument(
        "--fault",
        choices=[f.value for f in BmsFault],
        default=None,
        help="misbehave: garbage, cut, corrupt or silence",
    )
    modbus = kinds.add_parser(
        "modbus",
        help="Modbus TCP inverters with a battery (needs the modbus extra)",
        description=(
            "Run COUNT Modbus TCP devices on consecutive ports, each an inverter with a "
            "battery whose registers change over time (the map: edgelink.sim.modbus)."
        ),
    )
    modbus.add_argument("--count", type=_count, default=1, help="number of devices (default 1)")
    modbus.add_argument(
        "--base-port",
        type=_port,
        default=0,
        help="port of the first device; 0 = ephemeral ports (default 0)",
    )
    modbus.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    modbus.add_argument(
        "--units", type=_count, default=1, help="unit ids per device, 1..N (default 1)"
    )
    modbus.add_argument(
        "--control",
        action="store_true",
        help="read 'down' / 'up' lines from stdin: every device stops / starts listening",
    )
    http = kinds.add_parser(
        "http",
        help="an HTTP device with a JSON API (needs uvicorn)",
        description="Run one simulated HTTP device: /health, /status, /values, /settings.",
    )
    http.add_argument(
        "--port", type=_port, default=0, help="listen port; 0 = an ephemeral port (default 0)"
    )
    http.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    http.add_argument(
        "--api-key", default=None, help="require this key (X-API-Key or Bearer); default none"
    )
    http.add_argument("--no-animate", action="store_true", help="keep the power figures still")
    zk = kinds.add_parser(
        "zkteco",
        help="a ZKTeco attendance terminal (the ZK protocol over TCP)",
        description="Run one simulated ZKTeco terminal with generated users and attendance "
        "records; --event-interval makes someone punch in every so many seconds.",
    )
    zk.add_argument("--port", type=_port, default=4370, help="listen port (default 4370)")
    zk.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    zk.add_argument(
        "--password", type=_key, default=0, help="the comm key, a number (default 0: none)"
    )
    zk.add_argument("--users", type=_amount, default=10, help="users (default 10)")
    zk.add_argument("--records", type=_amount, default=100, help="attendance records (default 100)")
    zk.add_argument(
        "--event-interval",
        type=float,
        default=0.0,
        help="seconds between real-time attendance events (default 0: none)",
    )


def run_sim_from_args(args: argparse.Namespace) -> int:
    """Run the simulator ``args`` describe until SIGTERM or SIGINT.

    Returns:
        The exit status: 0 after a signal, 1 if the simulator could not start.
    """
    if args.sim_kind == "tcp":
        if args.base_port and args.base_port + args.count - 1 > 65535:
            print("edgelink sim: --base-port + --count exceeds 65535", file=sys.stderr)
            return 2
        return asyncio.run(
            _run_until_signal(run_tcp_simulator(args.count, args.base_port, args.host))
        )
    if args.sim_kind == "serial":
        delimiter = args.delimiter.encode("utf-8").decode("unicode_escape")
        try:
            framing = Framing.from_config(
                {
                    "framing": args.framing,
                    "delimiter": delimiter,
                    "length_prefix": args.length_prefix,
                }
            )
        except ValueError as exc:
            print(f"edgelink sim: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(
            _run_until_signal(
                run_serial_simulator(args.link, device_path=args.device_link, framing=framing)
            )
        )
    if args.sim_kind == "bms":
        model = BmsModel(
            cells=args.cells,
            temperatures=tuple(args.temperature or (21.0, 23.0)),
            alarms=set(args.alarm),
        )
        return asyncio.run(
            _run_until_signal(
                run_bms_simulator(
                    args.bms_type,
                    args.link,
                    device_path=args.device_link,
                    model=model,
                    fault=BmsFault(args.fault) if args.fault else None,
                )
            )
        )
    if args.sim_kind == "modbus":
        if args.base_port and args.base_port + args.count - 1 > 65535:
            print("edgelink sim: --base-port + --count exceeds 65535", file=sys.stderr)
            return 2
        if args.units > 247:
            print("edgelink sim: --units must be at most 247", file=sys.stderr)
            return 2
        try:
            from edgelink.sim.modbus import run_modbus_simulator
        except ImportError as exc:
            print(f"edgelink sim: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(
            _run_until_signal(
                run_modbus_simulator(
                    args.count, args.base_port, args.host, args.units, control=args.control
                )
            )
        )
    if args.sim_kind == "http":
        try:
            return asyncio.run(
                _run_until_signal(
                    run_http_simulator(
                        args.port, args.host, api_key=args.api_key, animate=not args.no_animate
                    )
                )
            )
        except RuntimeError as exc:  # uvicorn missing, or the server did not come up
            print(f"edgelink sim: {exc}", file=sys.stderr)
            return 1
    if args.sim_kind == "zkteco":
        return asyncio.run(
            _run_until_signal(
                run_zk_simulator(
                    args.port,
                    args.host,
                    comm_key=args.password,
                    users=args.users,
                    records=args.records,
                    event_interval=args.event_interval,
                )
            )
        )
    print(f"edgelink sim: unknown simulator {args.sim_kind!r}", file=sys.stderr)
    return 2


async def _run_until_signal(simulator: Coroutine[Any, Any, None]) -> int:
    loop = asyncio.get_running_loop()
    task = loop.create_task(simulator, name="edgelink.sim")
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        # The simulator task was cancelled by a signal: a clean stop.
        return 0
    except OSError as exc:
        print(f"edgelink sim: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    return 0
