"""The ``cnnbench`` command's entry point. ``cnnbench.train`` (torch, Hydra: seconds of start-up)
is imported inside it, so a stop in those seconds (Ctrl-C, SIGTERM) says so in one line instead
of a traceback from torch's import or, for SIGTERM, nothing at all."""
from __future__ import annotations

import signal
import sys


def stopped_while_starting(signum: int) -> None:
    print(f"cnnbench: stopped by {signal.Signals(signum).name} while starting; nothing was run", file=sys.stderr)
    sys.exit(128 + signum)


def main() -> None:
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped_while_starting(signum))
    try:
        from .train import cli
    except KeyboardInterrupt:
        stopped_while_starting(signal.SIGINT)
    signal.signal(signal.SIGTERM, previous)
    cli()
