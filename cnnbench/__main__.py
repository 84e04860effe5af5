"""``python -m cnnbench``: the same as the ``cnnbench`` command."""
from .train import cli

cli()
