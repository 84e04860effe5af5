"""The tasks: what ``task=NAME`` does, one function each, in one table.

Every task takes the composed config, its run dir and the run's summary (a dict that becomes
summary.json), fills the summary and writes its own files; ``train.run`` dispatches, records the
status and writes summary.json. ``describe`` is the set-up every task shares.
"""
from __future__ import annotations

import gc
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from . import confusion, data, distributed, loggers
from .analysis import (
    KINDS,
    layer_table,
    measure_steps,
    memory_estimate,
    meta_counts,
    min_size_report,
    split_by_kind,
)
from .config import ConfigError, ResumeMismatch, enum_value, model_knobs, own_overrides, resolution
from .data import DeviceLoader, Split, build_loaders
from .engine import (
    StopFlag,
    build_trainer,
    compute_settings,
    find_checkpoint,
    fit,
    resolve_device,
    restore,
    save_checkpoint,
    save_weights,
    settings_text,
    training_recipe,
)
from .metrics import (
    MetricsWriter,
    environment,
    plot_bench,
    plot_layers,
    plot_curves,
    show,
    write_csv,
    write_json,
)
from .models.design_space import summary_fields as drawn_fields
from .rundir import read_summary

log = logging.getLogger("cnnbench")


def in_sweep() -> bool:
    """Whether this run is a job of a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def shown_name(cfg: DictConfig) -> str:
    """The model as the command chose it, for the figures' titles: ``vgg11_quarter`` where the
    registry's name is ``vgg11`` (the run dir and the report name it so too)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get("model") or cfg.model.name)
    return str(cfg.model.name)


def describe(cfg: DictConfig, summary: dict[str, Any]) -> tuple[torch.device, tuple[int, int], dict[str, Any]]:
    """Resolve the device, input size and knobs, and record the model and environment."""
    device = resolve_device(cfg.trainer.device)
    size = resolution(cfg)
    knobs = model_knobs(cfg)
    params, flops = meta_counts(cfg.model.name, size, **knobs)
    summary |= {
        "resolution": list(size),
        "params": params,
        "flops": flops,
        **drawn_fields(cfg.model.name, size, **knobs),  # anynet_sample: the drawn architecture, ds_* columns
        **environment(device),
        "processes": distributed.from_env().size,  # torchrun's ranks (1: one process)
    }
    stages = summary.get("stages") or summary.get("drawn", {}).get("stages")
    if stages:  # a design-space network: what its rule or draw built
        log.info("%s stages (blocks x width): %s", cfg.model.name, ", ".join(f"{s[0]}x{s[1]}" for s in stages))
    return device, size, knobs


def train_task(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=train: fit, evaluating every epoch; metrics.csv, curves.png, checkpoints."""
    distributed.init(cfg.trainer.device)  # under torchrun: join the other ranks
    device, size, knobs = describe(cfg, summary)
    meta = {"model": cfg.model.name, "knobs": knobs, "resolution": list(size), "batch_size": cfg.data.batch_size,
            "recipe": training_recipe(cfg), "overrides": own_overrides(summary.get("overrides", [])),
            "processes": summary["processes"], "threads": torch.get_num_threads(),
            # what task=evaluate's report lists; no logger (a tracking URI may hold a password; checkpoints get shared)
            "config": {k: v for k, v in OmegaConf.to_container(cfg, resolve=True, enum_to_str=True).items() if k != "logger"}}
    resume, state = find_checkpoint(cfg.trainer.resume, meta) if cfg.trainer.resume else (None, None)
    if state:
        _check_resume(cfg, resume, state, out_dir)
    train_split, test_split = data.load(cfg.data.root, cfg.data.download)
    train_loader, test_loader = build_loaders(cfg, train_split, test_split, size, device)
    meta["inputs"] = {"mean": train_loader.mean, "std": train_loader.std}  # what task=evaluate must feed the weights
    trainer = build_trainer(cfg, device, size, knobs, len(train_loader))
    summary |= compute_settings(cfg, device)  # auto, resolved: fp32/bf16/fp16, channels_last, compiled, deterministic
    start_epoch, partial = 1, None
    if resume:
        restore(state, trainer, train_loader, cfg.trainer.resume)
        start_epoch, partial = state["epoch"] + 1, state["partial"]
        summary["resumed_from"] = {"checkpoint": str(resume), "epochs_done": state["epoch"],
                                   "steps_into_next_epoch": partial["batches_done"] if partial else 0}
        log.info("resuming from %s: %d epoch%s done%s", resume, state["epoch"], "" if state["epoch"] == 1 else "s",
                 f", {partial['batches_done']} steps into the next" if partial else "")
        threads = state["meta"].get("threads")
        if device.type == "cpu" and threads and threads != meta["threads"]:  # the order of CPU sums: the last digits
            summary["resumed_from"]["threads"] = threads
            log.warning("the checkpoint's run used %d CPU threads, this one %d (trainer.threads): the order of the CPU's "
                        "sums differs, so the resumed run's numbers are not exactly those of an uninterrupted run",
                        threads, meta["threads"])
        before = state["meta"].get("processes", 1)
        if before != summary["processes"]:  # the batch is the same, split otherwise: allowed, but not exact
            summary["resumed_from"]["processes"] = before
            log.warning("the checkpoint's run had %d process(es), this one has %d: each process's batch share and "
                        "batch norm statistics differ, so the resumed run is not the one an uninterrupted run would "
                        "have been", before, summary["processes"])
    # the first write into the dir: a resume refused up to here (its data, its weights) leaves the run it names as it was
    write_json(out_dir / "summary.json", summary)
    log.info(
        "%s: %s params, %.3g GFLOPs/image at %dx%d, %s training images an epoch, batch %d, on %s in %s%s",
        cfg.model.name, f"{summary['params']:,}", summary["flops"] / 1e9, *size,
        f"{train_loader.num_samples:,}", cfg.data.batch_size, distributed.where(device, train_loader.step_batch), settings_text(summary),
        " (the first steps compile the model: a while before the first epoch ends)" if summary["compiled"] and not resume else "",
    )
    # A resumed run continues its metrics.csv from the checkpoint's epoch (later rows dropped).
    writer = MetricsWriter(out_dir / "metrics.csv", keep_epochs=start_epoch - 1 if resume else None,
                           history=resume.parent / "metrics.csv" if resume else None)
    trackers = loggers.start(cfg, out_dir, resumed=resume is not None)  # logger=...: finished by run()
    stop = StopFlag()

    def on_epoch(row: dict[str, float]) -> None:
        best_before = summary.get("best_test_acc")
        writer.write(row)
        trackers.log_epoch(row)
        summary.update(_results(writer.rows))
        log.info(
            "epoch %d/%d  train_loss %.4f  train_acc %.4f  test_loss %.4f  test_acc %.4f  lr %.3g  %.1fs  %.0f img/s",
            row["epoch"], cfg.trainer.max_epochs, row["train_loss"], row["train_acc"], row["test_loss"],
            row["test_acc"], row["lr"], row["epoch_time_s"], row["train_images_per_s"],
        )
        if cfg.trainer.save_best and summary["best_test_acc"] != best_before:
            save_weights(out_dir / "best.pt", trainer, meta | {"epoch": row["epoch"], "test_acc": row["test_acc"]})

    saved = []  # the epochs this run wrote last.pt after

    def checkpoint(epochs_done: int, cut: dict | None) -> None:
        # every epoch when asked to; always when a signal stops the run, so it can resume
        if cfg.trainer.checkpoint or cut is not None or stop:
            save_checkpoint(out_dir / "last.pt", trainer, train_loader, epochs_done, cut, meta)
            saved.append(epochs_done)

    summary.update(_results(writer.rows))
    tally = confusion.final_tally(test_loader)  # the last evaluation counts the per-class files' numbers too
    summary["_epochs_started"] = time.perf_counter()
    try:
        with stop.installed():
            fit(trainer, train_loader, test_loader, cfg.trainer.max_epochs, on_epoch, checkpoint,
                start_epoch=start_epoch, partial=partial, stop=stop, diverge_loss=cfg.trainer.diverge_loss,
                last_tally=tally)
        stale = out_dir / "last.pt"
        if not cfg.trainer.checkpoint and stale.is_file() and saved[-1:] != [cfg.trainer.max_epochs]:
            # an earlier stop's checkpoint (trainer.checkpoint=false): older than the results now,
            # it would evaluate an unfinished model, or resume over the completed run
            stale.unlink()
            log.info("removed %s: a stop's checkpoint, older than this run's results (trainer.checkpoint=true keeps one "
                     "of the last epoch)", stale)
    finally:
        summary["_epochs_ended"] = time.perf_counter()
        summary["training_s"] = summary["_epochs_ended"] - summary["_epochs_started"]
        summary["compile_s"] = trainer.compile_s
        writer.close()
        if writer.rows and cfg.trainer.plot and distributed.from_env().main:  # the other ranks' dirs are deleted
            try:
                h, w = size
                schedule = str(enum_value(cfg.scheduler.name))
                title = (f"{shown_name(cfg)}, {h}x{w} px, batch {cfg.data.batch_size}, "
                         f"{cfg.optimizer._target_.rsplit('.', 1)[-1]} lr {cfg.optimizer.lr:g}"
                         f"{'' if schedule == 'none' else f' ({schedule} schedule)'}, seed {cfg.seed}")
                plot_curves(writer.rows, out_dir / "curves.png", title, smoothed=cfg.trainer.label_smoothing > 0)
            except Exception as err:  # a plot must never cost the run its status
                log.warning("could not plot the learning curves: %s", err)
    confusion.after_training(trainer, test_loader, out_dir, summary, shown_name(cfg), cfg.trainer.plot, tally)  # per_class.csv, ...


def _check_resume(cfg: DictConfig, resume: Path, state: dict, out_dir: Path) -> None:
    """A resume that would train nothing, or overwrite a completed run with an older state of it,
    is refused before anything runs."""
    run = read_summary(resume.parent)
    if run.get("status") != "completed":
        return
    if state["epoch"] >= cfg.trainer.max_epochs:
        # (a run stopped after its last epoch, while writing its results, is resumed to write them)
        raise ResumeMismatch(f"trainer.resume={cfg.trainer.resume}: that run completed its {state['epoch']} epochs, and this "
                          f"run has trainer.max_epochs={cfg.trainer.max_epochs}: nothing is left to train; give "
                          f"trainer.max_epochs=N (more than {state['epoch']}) to train on")
    done = run.get("epochs_completed") or 0
    if state["epoch"] < done and resume.parent.resolve() == out_dir.resolve():
        again = f"epochs {state['epoch'] + 1}-{done}" if done > state["epoch"] + 1 else f"epoch {done}"
        raise ResumeMismatch(f"trainer.resume={cfg.trainer.resume}: {resume.name} is from epoch {state['epoch']}, but the run in "
                          f"{out_dir} completed {done} epochs: resuming there would train {again} again over its results. "
                          f"To branch from epoch {state['epoch']}, resume into another dir (leave hydra.run.dir out)")


def _results(rows: list[dict[str, float]]) -> dict[str, Any]:
    accs = [r["test_acc"] for r in rows if not math.isnan(r["test_acc"])]
    # The first epoch pays warm-up (allocator, cuDNN autotuning, compilation): the steady-state
    # epoch time is the median of the others (the first one's when there is no other). An epoch
    # that diverged (not evaluated; NaN arithmetic runs at another speed) is not a steady one.
    times = [r["epoch_time_s"] for r in rows if not math.isnan(r["test_acc"])] or [r["epoch_time_s"] for r in rows]
    return {
        "steady_epoch_time_s": statistics.median(times[1:] or times) if rows else None,
        "epochs_completed": len(rows),
        "final_test_acc": rows[-1]["test_acc"] if rows else None,
        "best_test_acc": max(accs) if accs else None,
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "final_train_acc": rows[-1]["train_acc"] if rows else None,  # beside final_test_acc: the gap overfitting makes
        "peak_mem_mb": max(r["peak_mem_mb"] for r in rows) if rows else None,
    }


def summary_task(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=summary: layers.csv, totals and their split by layer kind, memory at the batch size."""
    device, size, knobs = describe(cfg, summary)
    rows = layer_table(cfg.model.name, size, **knobs)
    write_csv(out_dir / "layers.csv", rows)
    summary |= split_by_kind(rows)
    summary |= memory_estimate(cfg.model.name, size, cfg.data.batch_size, cfg.optimizer, **knobs)
    summary["batch_size"] = cfg.data.batch_size
    if cfg.trainer.plot:
        try:
            plot_layers(rows, out_dir / "layers.png", f"{shown_name(cfg)} at {size[0]}x{size[1]} px: where the parameters "
                        "and the FLOPs (per image, forward) are")
        except Exception as err:  # a plot must never cost the run its status
            log.warning("could not plot the layers: %s", err)
    if device.type == "cuda":  # the real thing, next to the estimate: eager steps, as the estimate counts them
        train_split, _ = data.load(cfg.data.root, cfg.data.download)
        eager = OmegaConf.merge(cfg, {"trainer": {"compile": False}})  # no compilation for three steps, nor graph pools
        measured = _bench_one(eager, device, size, knobs, train_split, cfg.data.batch_size, warmup=1, steps=2)
        summary["train_peak_mb_measured"] = measured["train"]["peak_mem_mb"]
        summary["infer_peak_mb_measured"] = measured["infer"]["peak_mem_mb"]
    table = format_layers(rows, summary)
    # in a sweep, each job's totals (its layers are in layers.csv and its log; results.csv compares the jobs)
    brief = "\n".join([f"{shown_name(cfg)} at {size[0]}x{size[1]}:", *(line for line in table.splitlines()
                                                                     if line.lstrip().startswith(("total:", "memory at")))])
    show(table, brief if in_sweep() else None)


def bench_task(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=bench: training and inference throughput and peak memory per batch size.
    A batch size that runs out of memory is recorded as such and the others go on.
    ``peak_mem_mb`` is measured (CUDA's peak allocation; on the CPU the process's peak
    resident memory, which only grows); ``estimated_mem_mb`` is ``memory_estimate``'s."""
    device, size, knobs = describe(cfg, summary)
    summary |= compute_settings(cfg, device)
    log.info("%s: %s params, %.3g GFLOPs/image at %dx%d, on %s in %s: %d warm-up and %d timed steps at each batch size of %s",
             cfg.model.name, f"{summary['params']:,}", summary["flops"] / 1e9, *size, device, settings_text(summary),
             cfg.bench.warmup_steps, cfg.bench.steps, list(cfg.bench.batch_sizes))
    train_split, _ = data.load(cfg.data.root, cfg.data.download)
    rows = []
    for batch_size in cfg.bench.batch_sizes:
        try:
            results = _bench_one(cfg, device, size, knobs, train_split, batch_size, cfg.bench.warmup_steps, cfg.bench.steps)
            status = "completed"
        except torch.OutOfMemoryError:
            results, status = {}, "oom"
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        estimate = memory_estimate(cfg.model.name, size, batch_size, cfg.optimizer, **knobs)
        for mode in ("train", "infer"):
            r = results.get(mode, {"images_per_s": math.nan, "step_time_ms": math.nan, "peak_mem_mb": math.nan})
            rows.append({"batch_size": batch_size, "mode": mode, **r, "status": status,
                         "estimated_mem_mb": estimate[f"{mode}_memory_mb"]})
            memory = ("peak", r["peak_mem_mb"]) if device.type == "cuda" else ("estimated", estimate[f"{mode}_memory_mb"])
            log.info("batch %4d %-5s %s: %8.1f img/s  %8.2f ms/step  %8.1f MiB (%s)", batch_size, mode, status,
                     r["images_per_s"], r["step_time_ms"], memory[1], memory[0])
        write_csv(out_dir / "bench.csv", rows)  # after every batch size: an interrupted bench keeps what it measured
    if cfg.trainer.plot:
        plot_bench(rows, out_dir / "bench.png",
                   f"{shown_name(cfg)} at {size[0]}x{size[1]} px on {summary['device_name']} in {settings_text(summary)}",
                   measured=device.type == "cuda")
    best = max((r for r in rows if r["mode"] == "train" and r["status"] == "completed"), key=lambda r: r["images_per_s"], default=None)
    if best:
        summary |= {"best_train_images_per_s": best["images_per_s"], "best_train_batch_size": best["batch_size"]}
    largest = max((r for r in rows if r["mode"] == "train" and r["status"] == "completed"), key=lambda r: r["batch_size"], default=None)
    if largest:  # what training needs at the largest batch that ran: measured on a GPU, estimated on a CPU
        memory = largest["peak_mem_mb"] if device.type == "cuda" else largest["estimated_mem_mb"]
        summary |= {"largest_train_batch": largest["batch_size"], "largest_train_batch_mb": memory}


def _bench_one(cfg, device, size, knobs, train_split, batch_size, warmup, steps) -> dict[str, dict[str, float]]:
    """Training then inference steps at one batch size, on real batches, each with a fresh model:
    inference's peak memory must not hold training's gradients, optimizer state and graphs."""
    idx = torch.arange(batch_size * (warmup + steps)) % len(train_split)  # wraps round a small split
    split = Split(train_split.images[idx], train_split.labels[idx]).to(device)
    loader = DeviceLoader(split, batch_size, size, shuffle=True, drop_last=True, seed=cfg.seed)
    out = {}
    for mode in ("train", "infer"):
        trainer = build_trainer(cfg, device, size, knobs, len(loader))
        out[mode] = measure_steps(trainer, loader, steps, warmup, train=mode == "train")
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def min_size_task(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=min_size: the smallest square input, and the shape each stage gives it (stages.csv)."""
    knobs = model_knobs(cfg)
    sizes, rows = min_size_report(cfg.model.name, **knobs)
    summary |= sizes
    write_csv(out_dir / "stages.csv", rows)
    width = max(len(r["stage"]) for r in rows)
    low, high = (f"{sizes[k]}x{sizes[k]} px" for k in ("min_size", "no_collapse_size"))
    show("\n".join([  # the answer last, as task=summary's: it is what the last lines of a command are read for
        f"{'layer':{width}}  {'output at ' + low:>22}  {'output at ' + high:>22}",
        *(f"{r['stage']:{width}}  {r['shape_at_min_size']:>22}  {r['shape_at_no_collapse_size']:>22}" for r in rows),
        f"{cfg.model.name}: smallest input {low}; every stage keeps more than 1x1 from {high}",
    ]))


def format_layers(rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    """The layer table and its totals, as printed by task=summary."""
    lines = [f"{'layer':28} {'type':18} {'output':>14} {'params':>12} {'MFLOPs':>10} {'act KiB':>9}"]
    for r in rows:
        lines.append(f"{r['layer']:28} {r['type']:18} {r['output_shape']:>14} {r['params']:>12,} "
                     f"{r['flops'] / 1e6:>10.2f} {r['activation_kb']:>9.1f}")
    total_p, total_f = s["params"], s["flops"]
    for kind in (*KINDS, "other"):
        p, f = s[f"params_{kind}"], s[f"flops_{kind}"]
        if p or f:
            lines.append(f"{kind:>8}: {p:>12,} params ({p / total_p:6.1%})  {f / 1e6:10.1f} MFLOPs ({f / max(total_f, 1):6.1%})")
    lines.append(f"   total: {total_p:>12,} params           {total_f / 1e6:10.1f} MFLOPs per image")
    lines.append("FLOPs: 2 per multiply-add of the convolutions and matrix products (torch.utils.flop_counter); "
                 "activations, pooling and normalisation count 0")
    lines.append(
        f"memory at batch {s['batch_size']} (MiB): training {s['train_memory_mb']:.1f} = params {s['params_mb']:.1f} "
        f"+ grads {s['grads_mb']:.1f} + optimizer {s['optimizer_state_mb']:.1f} + activations {s['activations_mb']:.1f}; "
        f"prediction {s['infer_memory_mb']:.1f} = params {s['params_mb']:.1f} + activations {s['infer_activations_mb']:.1f}"
    )
    return "\n".join(lines)


# task name -> what it does (config.TASK_HELP says it in one line for --help)
TASKS: dict[str, Callable[[DictConfig, Path, dict[str, Any]], None]] = {
    "train": train_task,
    "summary": summary_task,
    "bench": bench_task,
    "min_size": min_size_task,
    "evaluate": confusion.evaluate_task,
}
