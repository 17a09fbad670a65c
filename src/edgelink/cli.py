"""The ``edgelink`` command: ``run``, ``status``, ``demo``, ``check``, ``schema``, ``sim``...

``edgelink run --config DIR`` runs a gateway from a config folder (see
`edgelink.service`); ``edgelink status`` asks a running one for its
connections and prints a table.

``edgelink demo`` starts a fleet of simulated PING/PONG TCP devices in this
process, supervises a connection to each, polls their values and prints a
live status table; every few seconds it unplugs one device and plugs it back
so you can watch the reconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from edgelink import __version__
from edgelink.config import check_config, config_json_schema
from edgelink.errors import ConfigError, RouteError
from edgelink.sim import add_sim_arguments, run_sim_from_args

if TYPE_CHECKING:
    from edgelink.service.gateway import Gateway

__all__ = ["main"]


#: Libraries whose INFO/DEBUG records are per request or per file change (httpx
#: logs every request's URL): WARNING unless ``--log-level-libs`` says otherwise.
LIBRARY_LOGGERS = (
    "httpx",
    "httpcore",
    "watchfiles",
    "uvicorn",
    "uvicorn.access",
    "uvicorn.error",
    "paho",
    "pymodbus",
    "asyncio",
    "websockets",
)


def _add_log_level_libs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level-libs",
        default="WARNING",
        metavar="LEVEL",
        help=f"level of third-party loggers ({', '.join(LIBRARY_LOGGERS)}; default WARNING)",
    )


def _setup_logging(level: int | str, libs_level: str, fmt: str) -> None:
    """Log to stderr with every record redacted (`RedactingFilter`); libraries at ``libs_level``."""
    from edgelink.redact import RedactingFilter

    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=fmt)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(libs_level.upper())


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgelink", description="Supervised device connections for edge gateways."
    )
    parser.add_argument("--version", action="version", version=f"edgelink {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run simulated devices and supervise them, live")
    demo.add_argument("--devices", type=int, default=6, help="simulated devices (default 6)")
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument(
        "--chaos-every",
        type=float,
        default=8.0,
        help="unplug a random device every N seconds (0 = never; default 8)",
    )
    demo.add_argument("--outage", type=float, default=3.0, help="how long it stays unplugged")
    demo.add_argument("--refresh", type=float, default=1.0, help="status refresh, s")
    demo.add_argument("--plain", action="store_true", help="no screen clearing (logs, pipes)")
    demo.add_argument(
        "--port", type=int, default=8080, help="API port (default 8080; a free one if taken)"
    )
    _add_log_level_libs(demo)
    demo.add_argument(
        "--bms",
        action="store_true",
        help="also two simulated battery monitors (Daly, JBD) on socat ptys: bt.bms_001/002",
    )
    demo.add_argument(
        "--mqtt",
        metavar="HOST:PORT",
        default=None,
        help="mirror every datapoint to this MQTT broker under smarthome/ (default: no bridge)",
    )

    run = sub.add_parser("run", help="run a gateway from a config folder")
    run.add_argument("--config", required=True, help="folder with connections.json (YAML too)")
    run.add_argument("--port", type=int, default=None, help="API port (overrides edgelink.json)")
    run.add_argument("--no-watch", action="store_true", help="do not reload on file changes")
    run.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    run.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("EDGELINK_LOOP", "asyncio"),
        help="event loop: asyncio's own (the default), uvloop (the 'fast' extra), "
        "or auto: uvloop if installed ($EDGELINK_LOOP). uvloop is opt-in: the tcp "
        "driver's links failed to connect on it in `edgelink run`",
    )
    _add_log_level_libs(run)

    status = sub.add_parser("status", help="show the connections of a running gateway")
    status.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's API")
    status.add_argument(
        "--token",
        default=None,
        help="API token (default: $EDGELINK_TOKEN, else --config DIR's token file)",
    )
    status.add_argument("--config", default=None, help="config folder, to find the token file")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    check = sub.add_parser(
        "check", help="validate a config folder (as run would) or a connections.json / YAML file"
    )
    check.add_argument("config", help="the config folder, or one config file")

    sub.add_parser("schema", help="print the JSON Schema of connections.json")

    doctor = sub.add_parser("doctor", help="self-test an installation from its config folder")
    doctor.add_argument("--config", required=True, help="folder with connections.json (YAML too)")
    doctor.add_argument(
        "--faults", action="store_true", help="also drill drop, stall and half-open per TCP device"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--max-detect",
        type=float,
        default=60.0,
        help="warn when a pulled cable goes unnoticed longer than this, s (default 60)",
    )

    migrate = sub.add_parser("migrate", help="turn an older config into edgelink's")
    what = migrate.add_subparsers(dest="what", required=True)
    plc = what.add_parser(
        "plc-configs",
        help="Edge OS v4.x plc_configs.json / plc_ams_net_id config -> connections.json entries",
    )
    plc.add_argument("file", help="the v4.x config (JSON)")
    plc.add_argument(
        "-o",
        "--output",
        default=None,
        help="add the connections to this connections.json (made if missing); default: print them",
    )

    sim = sub.add_parser("sim", help="run device simulators")
    add_sim_arguments(sim)

    sub.add_parser(
        "hash-password",
        help="print the argon2 hash of a password for ui.users in edgelink.json "
        "(asks twice on a terminal, else reads one line from stdin)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _build_parser().parse_args(argv)
    if args.command == "check":
        lines = _check(args.config)
        for line in lines:
            print(line)
        return 0 if lines and lines[0].startswith("OK") else 1
    if args.command == "schema":
        with contextlib.suppress(BrokenPipeError):  # `edgelink schema | head`
            print(json.dumps(config_json_schema(), indent=2))
        return 0
    if args.command == "sim":
        return run_sim_from_args(args)
    if args.command == "run":
        return _run_gateway(args)
    if args.command == "status":
        return _print_status(args)
    if args.command == "doctor":
        return _run_doctor(args)
    if args.command == "hash-password":
        return _hash_password()
    if args.command == "migrate":
        return _migrate_plc_configs(args.file, args.output)
    if args.command == "demo":
        _setup_logging(logging.WARNING, args.log_level_libs, "%(levelname)s %(name)s: %(message)s")
        # The live table shows the connection events; the log keeps to real trouble.
        logging.getLogger("edgelink.events").setLevel(logging.ERROR)
        from edgelink.api.server import ApiServer
        from edgelink.service.demo import run_demo
        from edgelink.ui import mount_ui

        async def start_api(gateway: Gateway) -> None:
            await ApiServer(gateway, mounts=[mount_ui]).start()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_demo(args, start_api=start_api))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


def _migrate_plc_configs(file: str, output: str | None) -> int:
    """``edgelink migrate plc-configs FILE [-o OUT]``."""
    from edgelink.compat.plc_configs import migrate_plc_file, write_connections

    notes: list[str] = []
    try:
        migrated = migrate_plc_file(file, notes)
        if output is not None:
            added = write_connections(migrated, output)
    except ConfigError as exc:
        print(f"edgelink: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"edgelink: {note}", file=sys.stderr)
    if output is None:
        print(json.dumps(migrated, indent=2))
    else:
        print(f"added {', '.join(added)} to {output} (type ads); check it: edgelink check {output}")
    return 0


def _hash_password() -> int:
    """``edgelink hash-password``: a password in, its argon2 hash for ``ui.users`` out."""
    import getpass

    if importlib.util.find_spec("argon2") is None:
        print("edgelink: hash-password needs argon2: pip install 'edgelink[ui]'", file=sys.stderr)
        return 1
    from edgelink.ui.auth import hash_password

    if sys.stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 1
        if password != again:
            print("edgelink: the passwords differ; nothing printed", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        print(hash_password(password))
    except ValueError as exc:
        print(f"edgelink: {exc}; nothing printed", file=sys.stderr)
        return 1
    return 0


def _announce_ui(gateway: Gateway, prefix: str) -> None:
    """Print where the web UI is, or why there is none."""
    from edgelink.ui import is_available

    if gateway.api_address is None:
        return
    host, port = gateway.api_address
    if gateway.ui_path is not None:
        print(f"{prefix}: web UI on http://{host}:{port}{gateway.ui_path} (log in with the token)")
    elif not gateway.settings.ui.enabled:
        print(f"{prefix}: web UI off (ui.enabled is false in edgelink.json)", flush=True)
    elif not is_available():
        print(f"{prefix}: no web UI: pip install 'edgelink[ui]'", flush=True)


#: The ``--loop`` choices of ``edgelink run``.
LOOPS: Final = ("auto", "uvloop", "asyncio")


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``edgelink run`` runs on: uvloop's when installed (``auto``), or asyncio's.

    uvloop (the optional extra ``fast``) makes a loop turn cheaper: the MQTT
    route path spends less CPU per message (bench/RESULTS.md). None means
    asyncio's own loop.

    Raises:
        ConfigError: for ``uvloop`` when it is not installed, or an unknown choice.
    """
    if choice not in LOOPS:
        raise ConfigError(f"--loop must be one of {', '.join(LOOPS)}, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise ConfigError(
                "--loop uvloop: uvloop is not installed (pip install 'edgelink[fast]')"
            ) from exc
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run_gateway(args: argparse.Namespace) -> int:
    from edgelink.api.server import ApiServer
    from edgelink.service.gateway import Gateway
    from edgelink.ui import mount_ui

    _setup_logging(
        args.log_level, args.log_level_libs, "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    gateway = Gateway(args.config, watch=not args.no_watch)

    async def start_api(gw: Gateway) -> None:
        await ApiServer(gw, port=args.port, mounts=[mount_ui]).start()

    def announce(gw: Gateway) -> None:
        if gw.api_address is not None:
            host, port = gw.api_address
            print(f"edgelink: API on http://{host}:{port} (token from {gw.token_origin})")
            _announce_ui(gw, "edgelink")
        print("edgelink: running; Ctrl-C or SIGTERM stops, SIGHUP reloads", flush=True)

    try:
        loop_factory = event_loop_factory(args.loop)
    except ConfigError as exc:
        print(f"edgelink: {exc.message}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(gateway.run(after_start=start_api, on_started=announce))
    except (ConfigError, RouteError) as exc:
        print(f"edgelink: {_one_line(exc, args.config)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _run_doctor(args: argparse.Namespace) -> int:
    from edgelink.errors import ConfigError
    from edgelink.service.doctor import print_report, run_doctor

    logging.basicConfig(level=logging.CRITICAL)
    try:
        report = asyncio.run(
            run_doctor(args.config, faults=args.faults, max_detect_s=args.max_detect)
        )
    except ConfigError as exc:
        print(f"edgelink: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report)
    return report.exit_code


def _one_line(exc: ConfigError | RouteError, config_dir: str) -> str:
    """Return a start-up error as one line: the file, the JSON path and the reason."""
    if len(exc.errors) > 1:
        path, reason = exc.errors[0]
        reason += f" (and {len(exc.errors) - 1} more; `edgelink check {config_dir}` lists all)"
    else:
        path = exc.path or ""
        reason = exc.detail if isinstance(exc, RouteError) else exc.message
    return f"{exc.file or config_dir}: {path or '(root)'}: {reason}"


def _check(target: str) -> list[str]:
    """Return the lines of ``edgelink check``: ``OK: …`` or ``ERROR: …`` first.

    A folder is loaded exactly as ``edgelink run`` loads it (`load_folder`),
    minus the lock, the token, the database and any connecting. A file is
    checked by its name: ``routing.*`` as a route table, ``edgelink.*`` as
    service settings, anything else as a connections file whose drivers are
    built as run builds them.
    """
    from pathlib import Path

    from edgelink.manager import ConnectionManager
    from edgelink.router import check_routes
    from edgelink.service.config import load_service_settings
    from edgelink.service.gateway import load_folder

    path = Path(target)
    try:
        if path.is_dir():
            loaded = load_folder(path)
            routes = len(loaded.manager.router.routes)
            ok = check_config(loaded.folder.connections)[0]
            return [f"{ok}; {routes} route{'' if routes == 1 else 's'}"]
        if path.stem == "routing":
            routes = check_routes(path)
            return [f"OK: {routes} route{'' if routes == 1 else 's'}"]
        if path.stem == "edgelink":
            load_service_settings(path)
            return ["OK: service settings"]
        lines = check_config(path)
        if lines[0].startswith("OK"):
            ConnectionManager.from_config(path)
        return lines
    except (ConfigError, RouteError) as exc:
        first, *rest = str(exc).splitlines()
        return [f"ERROR: {first}", *rest]


def _print_status(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import httpx

    from edgelink.redact import redact_text
    from edgelink.service.token import TOKEN_ENV

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token and args.config:
        with contextlib.suppress(OSError):
            token = (Path(args.config) / ".edgelink_token").read_text().strip()
    if not token:
        print(f"edgelink: no token: pass --token, set {TOKEN_ENV} or --config DIR", file=sys.stderr)
        return 2
    url = args.url.rstrip("/")
    try:
        response = httpx.get(
            f"{url}/api/connections", headers={"Authorization": f"Bearer {token}"}, timeout=5.0
        )
    except httpx.HTTPError as exc:
        print(f"edgelink: cannot reach {redact_text(url)}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"edgelink: {redact_text(url)} answered {response.status_code}", file=sys.stderr)
        return 1
    connections = response.json()["connections"]
    if args.json:
        print(json.dumps(connections, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"edgelink at {redact_text(url)}")
    for column in ("connection", "type", "state", "health", "reason", "attempts", "rx", "tx"):
        table.add_column(column)
    for st in sorted(connections, key=lambda c: c["connection_id"]):
        table.add_row(
            st["connection_id"],
            st["type"],
            st["status"],
            st["health"],
            st["reason"] or "",
            str(st["reconnect_attempts"]),
            str(st["stats"]["packets_received"]),
            str(st["stats"]["packets_sent"]),
        )
    Console().print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
