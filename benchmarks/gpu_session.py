"""Measure cnnbench on a GPU in one call: tests, the book's nine runs, speed and accuracy.

The steps run most important first, each in its own process under a time limit; what no longer
fits the budget is skipped and said so. On a GPU machine of your own, with cnnbench installed:

    python benchmarks/gpu_session.py --out gpu_results --budget 1800

On a lent GPU machine without network (this project's sessions), prepare here, on a machine that
reaches PyPI, once per checkout:

    make gpu-kit        # fills the git-ignored .carry/: wheels the GPU machine lacks, the dataset

There (the device tool's ``run``, with ``carry: [".carry"]`` and ``timeout_s: 600``):

    python3 benchmarks/gpu_session.py --out "$OUT" --budget 540

The GPU machine has torch, torchvision, pandas, matplotlib and pytest but not hydra-core,
omegaconf, antlr4 or the parallel launcher (hydra-submitit-launcher, submitit), and no dataset. This script installs the carried wheels into a scratch
folder, puts Fashion-MNIST where cnnbench and the tests look for it (the Debian package's folder),
starts an empty compile cache (so the first compilation is cold) and runs the steps. It imports
nothing but the standard library, so it runs before any of that is in place.

Steps, in this order (``--steps`` picks some; a second call can take the ones the first skipped):

- ``env``: the GPU, driver, torch and CUDA versions, the carried packages' versions;
- ``gpu_tests``: ``pytest -m gpu``: every model and variant on CUDA's default path, the graphed
  step against eager, fp16 with loss scaling, nccl torchrun with one process;
- ``parallel``: the nine book runs as one sweep, all at once on the one GPU (``hydra/launcher=
  local_parallel``), seed 0, compile cache cold: the two-minute target, from a bare machine;
- ``book``: the same nine one after another, seed 1, compile cache warm: each run's wall time
  against the book's;
- ``speed``: ``benchmarks/chapter_speed.py``: book / eager / graphed / synthetic images/s, kernel
  launches per step, MFU;
- ``seeds``: the nine with seed 2, in parallel, cache warm: each model's final test accuracy as
  mean and spread over seeds 0-2 against the book's figure;
- ``fast``: ``experiment=fast_resnet18`` over seeds 0-2 (the 93.5% in 10 epochs target);
- ``deterministic``: ResNet-18's steady epoch with ``trainer.deterministic`` on and off.

Everything lands in ``--out`` as three files (the device tool returns at most eight):
``session.log`` (every command and its output), ``results.md`` (the tables, ready for
BENCHMARKS.md) and ``runs.tar.gz`` (each run's summary.json and metrics.csv, the sweeps'
results.csv, the benchmark's CSV, the tests' log; no checkpoints).

``--smoke`` runs every step at toy scale (two small recipes, a few batches, data from
``--data-root``): the CPU check of this script's plumbing, run by the slow test suite.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # where cnnbench and the tests look first
BOOK_RUNS = ["alexnet", "vgg11", "nin", "googlenet", "bn_lenet_scratch", "bn_lenet", "resnet18", "densenet", "regnetx32"]
# The book's figures (issue 13): wall seconds of its 10-epoch run, and the accuracy a run must reach
# (the book's final test accuracy minus one point).
BOOK_SECONDS = {"alexnet": 181, "vgg11": 292, "nin": 245, "googlenet": 200, "bn_lenet_scratch": 70,
                "bn_lenet": 70, "resnet18": 161, "densenet": 152, "regnetx32": 197}
BOOK_ACC_FLOOR = {"alexnet": 0.83, "vgg11": 0.90, "nin": 0.865, "googlenet": 0.80, "bn_lenet_scratch": 0.87,
                  "bn_lenet": 0.87, "resnet18": 0.90, "densenet": 0.89, "regnetx32": 0.91}
STEPS = ("env", "gpu_tests", "parallel", "book", "speed", "seeds", "fast", "deterministic")
# The least time a step is started with (seconds): a step that cannot finish is not begun.
MIN_SECONDS = {"env": 5, "gpu_tests": 60, "book": 90, "parallel": 60, "speed": 60, "seeds": 60, "fast": 60,
               "deterministic": 40}
PARALLEL = "hydra/launcher=local_parallel"  # every job of a sweep at once, each in its own process
RESERVE_S = 15  # kept back for packing the results


class Session:
    def __init__(self, args: argparse.Namespace):
        self.out = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="cnnbench-gpu-"))
        self.deadline = time.monotonic() + args.budget - RESERVE_S
        self.smoke = args.smoke
        self.log = open(self.out / "session.log", "a", buffering=1)
        self.results: list[str] = []  # markdown, in step order
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", CNNBENCH_CACHE=str(self.work / "cache"))
        self.data_overrides: list[str] = [f"data.root={args.data_root}"] if args.data_root else []

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], limit: float, **env: str) -> tuple[int | None, float]:
        """Run ``command`` with its output in the log (and on stdout); returns its exit status
        (None when it ran out of time and was stopped) and its wall seconds. The output's last
        lines are kept in ``self.last_lines``."""
        limit = max(1.0, min(limit, self.left()))
        self.say(f"\n$ {' '.join(command)}    # {name}, at most {limit:.0f} s")
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=ROOT, env=self.env | env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        timer = _Stopper(proc, limit)
        self.last_lines: list[str] = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            self.log.write(line)
            self.last_lines = [*self.last_lines[-19:], line.rstrip()]
        code = proc.wait()
        timer.cancel()
        seconds = time.monotonic() - start
        if timer.fired:
            self.say(f"[{name}: stopped after {seconds:.0f} s, its limit]")
            return None, seconds
        self.say(f"[{name}: exit {code} after {seconds:.1f} s]")
        return code, seconds

    def cnnbench(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cnnbench", *args, *self.data_overrides]


class _Stopper:
    """Stops a process group when its time is up."""

    def __init__(self, proc: subprocess.Popen, seconds: float):
        self.fired = False
        self.proc = proc
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            time.sleep(10)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self.timer.cancel()


def prepare(session: Session, kit: Path) -> None:
    """The carried wheels on the path of every command; the dataset where cnnbench looks."""
    wheels = sorted((kit / "whl").glob("*.whl"))
    paths = [str(ROOT)]
    if wheels:
        site = session.work / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--target", str(site), *map(str, wheels)], check=True)
        paths.insert(0, str(site))
    session.env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    carried = kit / "fashion-mnist"
    if not session.data_overrides and not DEBIAN_DIR.is_dir() and carried.is_dir():
        try:
            shutil.copytree(carried, DEBIAN_DIR)
        except OSError:  # not root: pass the folder to every command (the tests that need it skip)
            session.data_overrides = [f"data.root={carried.resolve()}"]
    session.say(f"wheels: {', '.join(w.name for w in wheels) or 'none carried'}; data: "
                f"{session.data_overrides or DEBIAN_DIR}; compile cache: {session.env['CNNBENCH_CACHE']}")


def step_env(session: Session) -> None:
    probe = ("import torch, hydra, omegaconf; print('torch', torch.__version__, 'cuda', torch.version.cuda, "
             "'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none', "
             "'hydra', hydra.__version__, 'omegaconf', omegaconf.__version__)")
    seen = []
    if shutil.which("nvidia-smi"):
        session.run("env", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                            "--format=csv,noheader"], 30)
        seen += session.last_lines
    session.run("env", [sys.executable, "-c", probe], 60)
    seen += session.last_lines
    session.results.append("## Machine\n\n" + "\n".join(f"    {line}" for line in seen) + "\n")


def step_gpu_tests(session: Session) -> None:
    tests = ["tests/test_distributed.py"] if session.smoke else ["tests"]
    if not session.smoke and importlib.util.find_spec("xdist"):
        tests += ["-n", "8", "--dist", "loadgroup"]  # small models share the GPU; 16 cores there
    code, seconds = session.run("gpu_tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                              f"--junitxml={session.work / 'gpu_tests.xml'}", *tests], 180,
                                CNNBENCH_CACHE=str(session.work / "test-cache"))  # the book runs' cache stays cold
    session.results.append(f"## GPU tests\n\n`pytest -m gpu`: {_status(code)} in {seconds:.0f} s "
                           f"(failures in session.log and gpu_tests.xml).\n")


def book_sweep(session: Session, name: str, seed: int, limit: float, *launcher: str) -> tuple[int | None, float, list[dict]]:
    models = ["bn_lenet", "bn_lenet_scratch"] if session.smoke else BOOK_RUNS
    sweep = session.work / name
    args = ["-m", "experiment=" + ",".join(f"d2l_{m}" for m in models), f"seed={seed}", f"hydra.sweep.dir={sweep}", *launcher]
    if session.smoke:
        args += ["trainer=smoke", "trainer.plot=false"]
    code, seconds = session.run(name, session.cnnbench(*args), limit)
    return code, seconds, _summaries(sweep)


def step_parallel(session: Session) -> None:
    code, seconds, runs = book_sweep(session, "parallel", 0, 240, PARALLEL)
    session.results.append(_runs_table(f"The nine book runs at once on the one GPU ({PARALLEL}), seed 0, compile "
                                       f"cache cold: **{seconds:.0f} s** in all ({_status(code)}; target <= 120 s)", runs))


def step_book(session: Session) -> None:
    code, seconds, runs = book_sweep(session, "book", 1, 240)
    session.results.append(_runs_table(f"The nine book runs one after another, seed 1, compile cache warm: "
                                       f"**{seconds:.0f} s** in all ({_status(code)})", runs))


def _runs_table(heading: str, runs: list[dict]) -> str:
    lines = [f"## {heading}\n",
             "| run | status | final test acc | job wall s | book s | book / job | start-up s | compile s | training s | steady epoch s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        book = BOOK_SECONDS.get(_book_run(r))
        wall = r.get("wall_time_s")
        lines.append(f"| {_book_run(r)} | {r['status']} | {_num(r.get('final_test_acc'), 4)} | {_num(wall, 1)} | {book or ''} | "
                     f"{_num(book / wall if book and wall else None, 1)}x | {_num(r.get('startup_s'), 1)} | "
                     f"{_num(r.get('compile_s'), 1)} | {_num(r.get('training_s'), 1)} | {_num(r.get('steady_epoch_time_s'), 2)} |")
    return "\n".join(lines) + "\n"


def step_speed(session: Session) -> None:
    csv = session.work / "chapter_speed.csv"
    args = ["--out", str(csv), "--limit-batches", "100", "--epochs", "2"]  # 12,800 images an epoch: medians, not totals
    if session.smoke:
        args += ["--models", "bn_lenet", "--limit-batches", "2", "--epochs", "1", "--workers", "0", "trainer.plot=false"]
    code, seconds = session.run("speed", [sys.executable, "benchmarks/chapter_speed.py", *args, *session.data_overrides], 240)
    summary = csv.with_name(csv.stem + "_summary.csv")
    tables = "\n\n".join(_csv_as_markdown(p) for p in (summary, csv) if p.exists()) or "(no table: see session.log)"
    session.results.append(f"## chapter_speed.py ({_status(code)}, {seconds:.0f} s)\n\n{tables}\n")


def step_seeds(session: Session) -> None:
    code, seconds, runs = book_sweep(session, "seeds", 2, 180, PARALLEL)
    earlier = _summaries(session.work / "parallel") + _summaries(session.work / "book")
    lines = [f"## The book runs over seeds 0-2 (seed 2 in parallel: {seconds:.0f} s, {_status(code)})\n",
             "| run | seeds | final test acc, mean | spread (std) | book - 1 point | met |", "|---|---|---|---|---|---|"]
    by_model: dict[str, list[float]] = {}
    for r in earlier + runs:
        if r["status"] == "completed" and r.get("final_test_acc") is not None:
            by_model.setdefault(_book_run(r), []).append(r["final_test_acc"])
    for model, accs in by_model.items():
        mean = statistics.mean(accs)
        floor = BOOK_ACC_FLOOR.get(model)
        spread = statistics.stdev(accs) if len(accs) > 1 else None
        met = "" if floor is None else ("yes" if mean >= floor else "**no**")
        lines.append(f"| {model} | {len(accs)} | {mean:.4f} | {_num(spread, 4)} | {floor or ''} | {met} |")
    session.results.append("\n".join(lines) + "\n")


def step_fast(session: Session) -> None:
    sweep = session.work / "fast"
    args = ["-m", "experiment=fast_resnet18", "seed=0,1,2", f"hydra.sweep.dir={sweep}", PARALLEL]
    if session.smoke:
        args = ["-m", "experiment=fast_resnet18", "seed=0,1", f"hydra.sweep.dir={sweep}", "trainer=smoke",
                "trainer.plot=false", "data.resize=32"]
    code, seconds = session.run("fast", session.cnnbench(*args), 300)
    accs = [r["final_test_acc"] for r in _summaries(sweep) if r.get("final_test_acc") is not None]
    mean = f"{statistics.mean(accs):.4f} over {len(accs)} seeds" if accs else "none"
    session.results.append(f"## fast_resnet18 ({_status(code)}, {seconds:.0f} s)\n\nFinal test accuracy: {mean} "
                           f"(target >= 0.935); each: {', '.join(f'{a:.4f}' for a in accs)}\n")


def step_deterministic(session: Session) -> None:
    rows = []
    for flag in ("false", "true"):
        out = session.work / f"deterministic_{flag}"
        args = ["model=resnet18", f"data.resize={32 if session.smoke else 96}", "trainer.max_epochs=2",
                f"trainer.deterministic={flag}", "trainer.plot=false", f"hydra.run.dir={out}"]
        if session.smoke:
            args += ["trainer=smoke"]  # a key given twice is refused: the smoke size is chosen above
        code, _ = session.run("deterministic", session.cnnbench(*args), 90)
        summary = _summaries(out)
        rows.append(f"| {flag} | {_status(code)} | {_num(summary[0].get('steady_epoch_time_s') if summary else None, 2)} |")
    session.results.append("## trainer.deterministic on ResNet-18 at 96 px\n\n| deterministic | status | steady epoch s |\n"
                           "|---|---|---|\n" + "\n".join(rows) + "\n")


def _book_run(summary: dict) -> str:
    """The book run a summary belongs to: its recipe's name less ``d2l_`` (else its model)."""
    recipe = next((o.split("=", 1)[1] for o in summary.get("overrides", []) if o.startswith("experiment=")), "")
    return recipe.removeprefix("d2l_") or summary.get("model", "?")


def _summaries(folder: Path) -> list[dict]:
    runs = []
    for path in sorted(folder.glob("**/summary.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return runs


def _csv_as_markdown(path: Path) -> str:
    import csv

    with path.open() as f:
        rows = list(csv.reader(f))
    if not rows:
        return "(empty)"
    return "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] +
                     ["| " + " | ".join(map(_cell, r)) + " |" for r in rows[1:]])


def _cell(text: str) -> str:
    """A CSV cell for a table: numbers to four significant digits."""
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.4g}" if "." in text else text


def _num(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _status(code: int | None) -> str:
    return "stopped at its time limit" if code is None else ("passed" if code == 0 else f"exit {code}")


def pack(session: Session) -> None:
    """results.md and runs.tar.gz into --out: the run files, no checkpoints."""
    banner = ("**A smoke run: toy data, a few batches, on whatever device there was. Nothing here is a measurement, "
              "and no target is judged.**\n\n" if session.smoke else "")
    (session.out / "results.md").write_text("# GPU session\n\n" + banner + "\n".join(session.results))
    with tarfile.open(session.out / "runs.tar.gz", "w:gz") as tar:
        for path in sorted(session.work.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".csv", ".log", ".xml", ".yaml") \
                    and not any("cache" in part for part in path.parts) and "site" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(session.work)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu_session")),
                        help="where session.log, results.md and runs.tar.gz go (default: $OUT, else outputs/gpu_session)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole session, packing included")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from: {', '.join(STEPS)}")
    parser.add_argument("--kit", type=Path, default=ROOT / ".carry", help="what `make gpu-kit` filled")
    parser.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST's folder, passed as data.root")
    parser.add_argument("--smoke", action="store_true", help="every step at toy scale (a CPU check of this script)")
    args = parser.parse_args()
    steps = args.steps.split(",")
    if unknown := [s for s in steps if s not in STEPS]:
        parser.error(f"--steps: unknown {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    session = Session(args)
    prepare(session, args.kit)
    for name in (s for s in STEPS if s in steps):
        if session.left() < MIN_SECONDS[name] * (0.05 if args.smoke else 1):
            session.say(f"\n[{name}: skipped, {session.left():.0f} s left of the budget]")
            session.results.append(f"## {name}\n\nSkipped: the budget ran out (run it again with --steps {name}).\n")
        else:
            globals()[f"step_{name}"](session)
        pack(session)  # after every step: a call cut short still returns what was measured
    shutil.rmtree(session.work, ignore_errors=True)  # everything worth keeping is in runs.tar.gz
    session.say(f"\nresults in {session.out}: {', '.join(sorted(p.name for p in session.out.iterdir()))}")


if __name__ == "__main__":
    main()
