"""Per-class accuracy, the confusion matrix and the most confident mistakes: counted on the
device, checked against plain counts; written at the end of training and by task=evaluate."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import torch
from torch import nn

from cnnbench.confusion import analyse, class_names
from cnnbench.data import DeviceLoader, Split, load
from cnnbench.train import run


def test_class_names_are_the_datasets():
    from torchvision.datasets import FashionMNIST

    assert class_names() == FashionMNIST.classes and class_names()[6] == "Shirt"


def test_analyse_matches_a_plain_count_across_batches():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (53, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (53,), generator=g))
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    loader = DeviceLoader(split, batch_size=8)  # 7 batches, the last one partial
    errors = analyse(model, loader, top=5)

    with torch.no_grad():
        logits = model(split.images.float().div(255).unsqueeze(1))
    prob, pred = logits.softmax(1).max(1)
    expected = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(split.labels.tolist(), pred.tolist()):
        expected[t, p] += 1
    assert torch.equal(errors.confusion, expected)
    assert torch.equal(errors.counts, torch.bincount(split.labels, minlength=10))  # rows sum to the class counts
    assert errors.accuracy == pytest.approx((pred == split.labels).float().mean().item())
    wrong = (pred != split.labels).nonzero().squeeze(1)
    top = wrong[prob[wrong].argsort(descending=True)[:5]]
    assert errors.mistake_confidence == pytest.approx(prob[top].tolist(), abs=1e-6)
    assert errors.mistake_true == split.labels[top].tolist() and errors.mistake_pred == pred[top].tolist()
    assert torch.equal(errors.mistake_images, split.images[top])


def test_the_tally_keeps_only_real_mistakes_and_never_reads_the_device():
    from cnnbench.confusion import Tally

    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    split = Split(torch.zeros(8, 28, 28, dtype=torch.uint8), labels)
    logits = torch.nn.functional.one_hot(labels, 10).float() * 5
    logits[2] = torch.nn.functional.one_hot(torch.tensor(9), 10).float() * 3  # two mistakes, fewer than the top 5
    logits[6] = torch.nn.functional.one_hot(torch.tensor(0), 10).float() * 6
    tally = Tally(split, top=5)
    tally.add(logits[:4], labels[:4])
    tally.add(logits[4:], labels[4:])
    errors = tally.errors()
    assert errors.mistake_true == [6, 2] and errors.mistake_pred == [0, 9]  # most confident first
    assert errors.confusion.trace() == 6 and errors.confusion[2, 9] == 1 and errors.confusion[6, 0] == 1
    # On the meta device every value is unknown: a shape or a count that depended on one (a boolean
    # mask, bincount's size) would raise here, and on a GPU it would be a host sync per batch.
    meta = Tally(Split(split.images.to("meta"), labels.to("meta")), top=5)
    meta.add(logits[:4].to("meta"), labels[:4].to("meta"))
    meta.add(logits[4:].to("meta"), labels[4:].to("meta"))
    assert meta.best_conf.shape == (5,) and meta.confusion.shape == (100,)


def test_a_training_run_writes_per_class_results(make_cfg, tiny_data, tmp_path, monkeypatch):
    # The figures are drawn without pyplot (no backend, no figure registry): importing it fails here.
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    summary = run(make_cfg("trainer=smoke", f"data.root={tiny_data}", "trainer.plot=true"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    _, test = load(str(tiny_data))
    evaluated = test.labels[:16]  # trainer=smoke: two test batches of 8
    confusion = pd.read_csv(tmp_path / "confusion.csv", index_col=0)
    assert list(confusion.columns) == class_names() and list(confusion.index) == class_names()
    assert confusion.sum(axis=1).tolist() == torch.bincount(evaluated, minlength=10).tolist()
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    assert per_class["count"].tolist() == confusion.sum(axis=1).tolist()
    assert per_class["correct"].tolist() == [confusion.iloc[k, k] for k in range(10)]
    assert per_class["accuracy"].isna().tolist() == (per_class["count"] == 0).tolist()  # no image of a class: no accuracy
    # the final pass agrees with the last epoch's evaluation (same weights, same images)
    saved = json.loads((tmp_path / "summary.json").read_text())
    trace = sum(confusion.iloc[k, k] for k in range(10))
    assert trace / 16 == pytest.approx(saved["final_test_acc"]) == pytest.approx(saved["eval_test_acc"])
    assert saved["per_class_acc"] == pytest.approx(dict(zip(per_class["class"], per_class["accuracy"])))
    assert saved["worst_class_acc"] == per_class["accuracy"].min()
    assert saved["per_class_acc"][saved["worst_class"]] == saved["worst_class_acc"]
    for png in ("confusion.png", "mistakes.png", "curves.png"):
        assert (tmp_path / png).stat().st_size > 10_000, png


def test_the_last_evaluation_counts_the_per_class_files_without_a_pass_of_their_own(make_cfg, tiny_data, tmp_path, monkeypatch):
    from cnnbench import confusion

    def no_second_pass(*args, **kwargs):
        raise AssertionError("a training run made a separate per-class pass over the test set")

    monkeypatch.setattr(confusion, "analyse", no_second_pass)
    summary = run(make_cfg("trainer=smoke", f"data.root={tiny_data}", "trainer.max_epochs=3"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["eval_images"] == 16 and summary["eval_test_acc"] == pytest.approx(summary["final_test_acc"])


def test_a_run_resized_once_draws_its_mistakes_at_its_own_size(make_cfg, tiny_data, tmp_path, caplog):
    # without augmentation the test split is resized once to the run's size: the sheet tiles that size
    summary = run(make_cfg("trainer=smoke", f"data.root={tiny_data}", "data.resize=40", "trainer.plot=true"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert not [r for r in caplog.records if "could not plot" in r.getMessage()]
    assert (tmp_path / "mistakes.png").stat().st_size > 10_000


def test_plot_false_writes_the_tables_without_the_pictures(make_cfg, tiny_data, tmp_path):
    summary = run(make_cfg("trainer=smoke", f"data.root={tiny_data}", "trainer.plot=false"), tmp_path)
    assert summary["status"] == "completed" and summary["per_class_acc"]
    assert {"metrics.csv", "per_class.csv", "confusion.csv"} <= {p.name for p in tmp_path.iterdir()}
    assert not list(tmp_path.glob("*.png"))


def test_evaluate_a_checkpoint(make_cfg, tiny_data, tmp_path):
    train = ["trainer=smoke", f"data.root={tiny_data}", "trainer.checkpoint=true", "trainer.save_best=true"]
    assert run(make_cfg(*train, "trainer.deterministic=true"), tmp_path / "run")["status"] == "completed"
    # the model comes from the checkpoint: no model= override needed
    summary = run(make_cfg("task=evaluate", f"trainer.resume={tmp_path / 'run'}", f"data.root={tiny_data}",
                           "trainer.limit_test_batches=2", "data.test_batch_size=8"), tmp_path / "dir")
    assert summary["status"] == "completed", summary.get("error")
    assert not torch.are_deterministic_algorithms_enabled()  # its own switches, not the training job's
    assert summary["model"] == "bn_lenet" and summary["eval_images"] == 16 and summary["checkpoint"].endswith("last.pt")
    trained = pd.read_csv(tmp_path / "run" / "confusion.csv", index_col=0)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "dir" / "confusion.csv", index_col=0), trained)
    best = run(make_cfg("task=evaluate", f"trainer.resume={tmp_path / 'run' / 'best.pt'}", f"data.root={tiny_data}", "trainer.plot=true"),
               tmp_path / "best")
    assert best["status"] == "completed" and best["eval_images"] == 32  # the whole (tiny) test set
    assert (tmp_path / "best" / "mistakes.png").is_file() and (tmp_path / "best" / "per_class.csv").is_file()
    assert best["resolution"] == [28, 28]
    # a few test images miss classes: theirs have no accuracy ("-"), not a crash of the printout
    few = run(make_cfg("task=evaluate", f"trainer.resume={tmp_path / 'run'}", f"data.root={tiny_data}", "data.test_subset=3"),
              tmp_path / "few")
    assert few["status"] == "completed" and few["eval_images"] == 3, few.get("error")
    assert pd.read_csv(tmp_path / "few" / "per_class.csv")["count"].eq(0).sum() >= 7
    larger = run(make_cfg("task=evaluate", f"trainer.resume={tmp_path / 'run'}", f"data.root={tiny_data}", "data.resize=36"),
                 tmp_path / "36")
    # BN-LeNet's dense head is sized by its input: another size is refused, with the reason
    assert larger["bad_input"] and "was trained at 28x28 and its layers do not fit 36x36" in larger["error"]


def test_evaluate_feeds_the_weights_inputs_normalised_as_in_training(make_cfg, tiny_data, tmp_path, caplog):
    train = [f"data.root={tiny_data}", "data.normalize=true", "trainer.max_epochs=3", "data.batch_size=16", "trainer.checkpoint=true"]
    trained = run(make_cfg(*train), tmp_path / "run")
    asked = ["task=evaluate", f"trainer.resume={tmp_path / 'run'}", f"data.root={tiny_data}", "model=resnet18"]
    summary = run(make_cfg(*asked), tmp_path / "eval", overrides=asked)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["eval_test_acc"] == trained["final_test_acc"]  # data.normalize is false here: the checkpoint says
    assert summary["model"] == "bn_lenet"
    assert "takes the model from the checkpoint (bn_lenet): model=resnet18 is ignored" in caplog.text


def test_evaluate_needs_a_checkpoint(make_cfg, tmp_path):
    summary = run(make_cfg("task=evaluate"), tmp_path / "a")
    assert summary["status"] == "failed" and summary["bad_input"] and "trainer.resume=RUN_DIR" in summary["error"]
    summary = run(make_cfg("task=evaluate", f"trainer.resume={tmp_path}"), tmp_path / "b")
    assert summary["bad_input"] and "no checkpoint at" in summary["error"] and "trainer.checkpoint=true" in summary["error"]


def test_an_evaluation_dir_is_named_after_the_checkpoints_run(make_cfg):
    # the configured model (bn_lenet by default) need not be the checkpoint's
    def named(*overrides):
        return make_cfg(*overrides, hydra=True).hydra.run.dir.rsplit("/", 1)[1].split("_", 1)[1]

    assert named("task=evaluate", "trainer.resume=outputs/runs/2026-11-28/21-47-47_resnet18") == "evaluate_21-47-47_resnet18"
    assert named("task=evaluate", "trainer.resume=outputs/runs/2026-11-28/21-47-47_resnet18/best.pt") == "evaluate_21-47-47_resnet18"
    assert named("task=evaluate", "trainer.resume=outputs/sweeps/2026-11-28/21-00-00/3") == "evaluate_21-00-00_3"
    assert named("model=resnet18") == "resnet18" and named("task=summary", "trainer.resume=x") == "bn_lenet"
    assert named("experiment=d2l_vgg11") == "vgg11_quarter"  # the model as chosen, not the registry's vgg11 it widens


def test_evaluating_a_mid_epoch_checkpoint_says_how_far_into_the_epoch(make_cfg, tiny_data, tmp_path, capsys):
    """A stop signal writes last.pt mid-epoch: its weights are not epoch 2's, and the files say so."""
    from cnnbench.engine import load_checkpoint

    run(make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=2", "data.batch_size=16", "trainer.checkpoint=true"), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    state["partial"] = {"batches_done": 3}  # as a stop 3 steps into epoch 3 leaves it
    torch.save(state, tmp_path / "run" / "last.pt")
    summary = run(make_cfg("task=evaluate", f"trainer.resume={tmp_path / 'run'}", f"data.root={tiny_data}"), tmp_path / "eval")
    assert summary["checkpoint_epoch"] == 2 and summary["checkpoint_steps_into_next_epoch"] == 3
    assert "(after epoch 2 and 3 steps of the next): test accuracy" in capsys.readouterr().out


def test_a_report_lists_an_evaluation_with_the_settings_its_model_was_trained_with(make_cfg, tiny_data, tmp_path):
    """An evaluation's own config holds the command's defaults (optimizer.lr=0.1, 10 epochs): the
    report showed those as if the checkpoint had been trained with them, and no accuracy."""
    from cnnbench import report

    trained = ["trainer=smoke", f"data.root={tiny_data}", "trainer.checkpoint=true", "optimizer.lr=0.05"]
    run(make_cfg(*trained), tmp_path / "run", overrides=trained)
    evaluate = ["task=evaluate", f"trainer.resume={tmp_path / 'run'}", f"data.root={tiny_data}", "data.test_batch_size=8"]
    summary = run(make_cfg(*evaluate), tmp_path / "eval", overrides=evaluate)
    assert summary["trained_config"]["optimizer"]["lr"] == 0.05 and summary["config"]["optimizer"]["lr"] == 0.1
    results, _ = report.report(tmp_path, plots=False)
    row = results.set_index("job").loc["eval"]
    assert float(row["optimizer.lr"]) == 0.05  # as trained (the evaluate command's own config says 0.1)
    assert int(row["data.test_batch_size"]) == 8 and row["eval_test_acc"] == summary["eval_test_acc"]  # as evaluated
    assert pd.isna(results.set_index("job").loc["run", "eval_test_acc"])  # the training run's is its final_test_acc
