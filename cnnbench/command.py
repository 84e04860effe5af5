"""The ``cnnbench`` command's entry point. ``cnnbench.train`` (torch, Hydra: seconds of start-up)
is imported inside it, so a stop while the command starts (Ctrl-C, SIGTERM), until Hydra takes
over, says so in one line instead of a traceback from torch's import or, for SIGTERM, nothing."""
from __future__ import annotations

import signal
import sys

_previous_sigterm = None  # SIGTERM's handler before the command's start-up took it
starting = False  # importing, checking the command: nothing launched yet


def stopped_while_starting(signum: int) -> None:
    print(f"cnnbench: stopped by {signal.Signals(signum).name} while starting; nothing was run", file=sys.stderr)
    sys.exit(128 + signum)


def started() -> None:
    """Hydra takes over (its jobs, or a launcher's, handle their own stops): SIGTERM as it was."""
    global _previous_sigterm, starting
    if starting:
        signal.signal(signal.SIGTERM, _previous_sigterm)
        starting = False


def main() -> None:
    global _previous_sigterm, starting
    _previous_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: stopped_while_starting(signum))
    starting = True
    try:
        from .train import cli
    except KeyboardInterrupt:
        stopped_while_starting(signal.SIGINT)
    cli()
