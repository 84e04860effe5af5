"""Shared fixtures: composed configs, synthetic IDX datasets, the real data when installed."""
from __future__ import annotations

import gzip
import os
import struct
import tempfile
from pathlib import Path

import pytest
import torch

from cnnbench.data import DEBIAN_DIR, FILES

# Decompressed copies of the data go to a temporary cache (reused between sessions), never
# the user's home; subprocesses inherit it.
os.environ.setdefault("CNNBENCH_CACHE", str(Path(tempfile.gettempdir()) / "cnnbench-test-cache"))

# pytest-xdist runs one worker per core: each takes its share of the cores (and so do the commands
# it starts), or their thread pools oversubscribe the machine and spin against each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The Debian package's Fashion-MNIST folder; tests that need it skip when it is missing
    (`make test` installs it)."""
    if not DEBIAN_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {DEBIAN_DIR} (apt-get install dataset-fashion-mnist)")
    return DEBIAN_DIR


def write_idx(folder: Path, n_train: int = 96, n_test: int = 32, gz: bool = False, seed: int = 0) -> Path:
    """A tiny Fashion-MNIST look-alike in IDX format: class k images are bright in row band k,
    so a model can learn them."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
        for i, k in enumerate(labels.tolist()):
            images[i, 2 * k + 4 : 2 * k + 6] = 250
        payloads = {
            f"{split}-images-idx3-ubyte": struct.pack(">iiii", FILES[f"{split}-images-idx3-ubyte"], n, 28, 28) + images.numpy().tobytes(),
            f"{split}-labels-idx1-ubyte": struct.pack(">ii", FILES[f"{split}-labels-idx1-ubyte"], n) + labels.to(torch.uint8).numpy().tobytes(),
        }
        for name, payload in payloads.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
    return folder


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_idx(tmp_path / "tiny")


@pytest.fixture
def make_cfg():
    """Compose the real config from conf/ with overrides, as the command line would; runs draw no
    PNGs (a second a run) unless the overrides say ``trainer.plot=true``: the tests of the pictures do."""
    from cnnbench.config import compose

    return lambda *overrides, **kwargs: compose("trainer.plot=false", *overrides, **kwargs)



def sigterm_after_step(monkeypatch, n: int) -> None:
    """SIGTERM this process as the run's ``n``-th training step returns (``monkeypatch.undo()``
    takes it back): a stop mid-epoch, at a known step."""
    import signal

    from cnnbench import engine

    step, calls = engine.Trainer.step, []

    def step_then_sigterm(self, x, y):
        out = step(self, x, y)
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(engine.Trainer, "step", step_then_sigterm)
