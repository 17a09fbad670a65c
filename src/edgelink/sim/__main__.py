"""``python -m edgelink.sim``: run a device simulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from edgelink.sim import add_sim_arguments, run_sim_from_args


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process arguments) and run the simulator.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m edgelink.sim", description="Run edgelink device simulators."
    )
    add_sim_arguments(parser)
    return run_sim_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
