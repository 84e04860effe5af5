"""``python -m cnnbench``: the same as the ``cnnbench`` command."""
from .command import main

main()
