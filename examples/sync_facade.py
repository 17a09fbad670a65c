"""The blocking facade: `SyncConnectionManager` used from plain threads, no asyncio in sight.

The manager runs on a background event loop thread; every method blocks and
is thread-safe, and supervision (health checks, polling, reconnects) goes on
between calls. The devices come from ``connections.json`` next to this file;
the example starts two simulated devices (``python -m edgelink.sim tcp``) on
free ports and points the config at them.

Run: ``python examples/sync_facade.py``
"""

import json
import subprocess
import sys
import threading
from pathlib import Path

from edgelink import Event, SyncConnectionManager

CONFIG = Path(__file__).with_name("connections.json")


def start_simulator(count: int) -> tuple[subprocess.Popen[str], list[int]]:
    """Start ``count`` simulated PING/PONG devices; return the process and their ports."""
    sim = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "edgelink.sim", "tcp", "--count", str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sim.stdout is not None
    line = sim.stdout.readline()  # "listening: 2 devices on 127.0.0.1:41234-41236"
    first, last = line.rsplit(":", 1)[1].split("-")
    return sim, [int(first), int(last)]


def main() -> None:
    sim, ports = start_simulator(2)
    try:
        config = json.loads(CONFIG.read_text(encoding="utf-8"))
        for spec, port in zip(config["connections"].values(), ports, strict=True):
            spec["config"]["port"] = port

        manager = SyncConnectionManager.from_config(config)
        # Callbacks run on the manager's callback threads, never on its loop;
        # this one collects, and the main thread prints.
        connected: list[str] = []
        all_connected = threading.Event()

        def on_connected(ev: Event) -> None:
            connected.append(ev.connection_id or "")
            if len(connected) == len(config["connections"]):
                all_connected.set()

        manager.on_event("connected", on_connected)
        polled = threading.Semaphore(0)
        manager.on_data(lambda cid, tag, value, quality, ts: polled.release())

        with manager:
            if not all_connected.wait(timeout=10):
                raise SystemExit("not every device connected within 10 s")
            print("connected:", ", ".join(sorted(connected)))
            results: list[tuple[str, str]] = []
            lock = threading.Lock()

            def worker(n: int) -> None:
                connection_id = ["boiler", "pump"][n % 2]
                manager.execute_with_retry(connection_id, lambda c: c.write(f"setpoint_{n}", n))
                value = manager.execute_with_retry(connection_id, lambda c: c.read(f"setpoint_{n}"))
                temperature = manager.execute_with_retry(
                    connection_id, lambda c: c.read("temperature")
                )
                float(temperature)  # the simulator's temperature drifts around 20..25 °C
                with lock:
                    results.append((connection_id, value))

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
            print(f"{len(threads)} threads wrote and read back {len(results)} setpoints")
            if not polled.acquire(timeout=5):
                raise SystemExit("no polled datapoint within 5 s")
            print("polled data arrives: yes")
            for connection_id, status in sorted(manager.get_status().items()):
                print(f"{connection_id}: {status['status']} health={status['health']}")
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        if sim.stdout is not None:
            sim.stdout.close()
    print("done")


if __name__ == "__main__":
    main()
