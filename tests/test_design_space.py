"""Design spaces (d2l 8.8): deterministic draws that keep each space's constraints and the
compute band, the RegNet rule against torchvision, and the study's EDF analysis."""
from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnbench import design_study as ds
from cnnbench.analysis import count_flops
from cnnbench.models import ModelError, create_model
from cnnbench.models import design_space as space
from cnnbench.models.regnet import REGNETX_200MF


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_constraints(name: str, table: list[list]) -> None:
    """The paper's constraints of space ``name`` (as scaled in design_space.py) on a stage table."""
    depths, widths, groups, ratios = zip(*table)
    assert len(table) == space.NUM_STAGES
    assert all(w <= space.WIDTHS[-1] and w >= space.WIDTHS[0] for w in widths)
    assert all(r in space.BOTTLENECK_RATIOS for r in ratios)
    for w, g, r in zip(widths, groups, ratios):
        inner = round(w * r)
        assert g <= max(space.GROUP_WIDTHS) and inner % g == 0, (w, g, r)  # the group width divides the inner width
    rules = space.CONSTRAINTS[name]
    if name == "regnetx":
        assert sum(depths) in space.REGNET_DEPTHS
    else:
        assert all(d in space.STAGE_DEPTHS for d in depths)
    assert ("shared_ratio" not in rules) or len(set(ratios)) == 1
    if "shared_group" in rules:  # one g, capped at a stage's inner width where that is narrower (as pycls does)
        assert all(g == max(groups) or g == round(w * r) for w, g, r in zip(widths, groups, ratios))
    assert ("widths_grow" not in rules) or list(widths) == sorted(widths)
    assert ("depths_grow" not in rules) or list(depths) == sorted(depths)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(space.SPACES), seed=st.integers(0, 10**9))
def test_every_proposal_keeps_its_spaces_constraints(name, seed):
    rng = random.Random(seed)
    for _ in range(20_000):  # the first proposal that the space accepts (rejections return None)
        proposed = space.propose(name, rng)
        if proposed is not None:
            break
    assert proposed is not None
    table, rule = proposed
    check_constraints(name, table)
    if name == "regnetx":
        assert table == space.regnet_stages(**rule)  # the rule, recorded, rebuilds the table


def test_the_looser_spaces_do_break_the_tighter_constraints():
    # AnyNetX_A draws per-stage ratios and groups, and widths and depths that shrink: the constraints bite
    tables = [t for t, _ in filter(None, (space.propose("anynetx_a", random.Random(i)) for i in range(200)))]
    assert any(len({s[3] for s in t}) > 1 for t in tables) and any(len({s[2] for s in t}) > 1 for t in tables)
    assert any([s[1] for s in t] != sorted(s[1] for s in t) for t in tables)


@pytest.mark.parametrize("name", space.SPACES)
def test_a_draw_is_deterministic_and_in_the_band(name):
    first = space.draw(name, 5, (28, 28), 1, 10, 2.0, 6.0)
    space.draw.cache_clear()
    assert space.draw(name, 5, (28, 28), 1, 10, 2.0, 6.0) == first
    assert 2e6 <= first.flops <= 6e6
    check_constraints(name, first.table())


def test_a_draw_is_the_same_on_every_machine():
    # str seeds go through SHA-512 (no PYTHONHASHSEED), so this pinned table holds everywhere
    d = space.draw("regnetx", 0, (28, 28), 1, 10, 2.0, 6.0)
    assert d.table() == PINNED_REGNETX_0, d.table()


PINNED_REGNETX_0 = [[1, 16, 4, 1.0], [2, 32, 4, 1.0], [3, 56, 4, 1.0], [5, 112, 4, 1.0]]


@pytest.mark.parametrize("name", list(space.SPACES))
def test_a_draw_counts_the_flops_that_pytorchs_counter_counts(name):
    # the draw counts convolutions and linear layers with forward hooks; the project counts with
    # torch.utils.flop_counter: the same figure, on every space, sizes and stem strides
    for sample, side, stride in ((0, 28, 1), (1, 40, 2)):
        d = space.draw(name, sample, (side, side), 1, 10, 0.5, 50.0, 16, stride)
        assert d.flops == count_flops("anynet_sample", (side, side), space=name, sample=sample, min_mflops=0.5,
                                      max_mflops=50.0, stem_stride=stride) > 0


def test_the_model_counts_its_flops_like_the_project_and_records_the_draw():
    model = create_model("anynet_sample", image_size=28, space="anynetx_e", sample=3)
    fields = space.summary_fields("anynet_sample", (28, 28), space="anynetx_e", sample=3)
    assert fields["drawn"]["flops"] == count_flops("anynet_sample", (28, 28), space="anynetx_e", sample=3)
    assert 2e6 <= fields["drawn"]["flops"] <= 6e6
    assert fields["ds_depth"] == sum(fields["drawn"]["depths"]) and fields["ds_max_width"] == max(fields["drawn"]["widths"])
    assert all(not isinstance(v, (dict, list)) for k, v in fields.items() if k != "drawn")  # they reach results.csv
    # the summary rebuilds the run: the chapter's AnyNet with the drawn stage table
    rebuilt = create_model("regnetx32", arch=fields["drawn"]["stages"], stem_channels=16, stem_stride=1)
    assert n_params(rebuilt) == n_params(model)
    assert space.summary_fields("regnetx32", (96, 96)) == {}
    assert space.draw("anynetx_e", 4, (28, 28), 1, 10, 2.0, 6.0).stages != space.draw("anynetx_e", 3, (28, 28), 1, 10, 2.0, 6.0).stages


def test_the_band_redraws_and_says_when_it_cannot_be_met():
    free = space.draw("anynetx_e", 0, (28, 28), 1, 10, 0.0, 0.0)
    banded = space.draw("anynetx_e", 0, (28, 28), 1, 10, free.flops / 1e6 + 0.5, 0.0)
    assert banded.proposals > free.proposals and banded.flops > free.flops + 0.5e6
    with pytest.raises(ModelError, match="every network of anynetx_a is over the band"):
        space.draw("anynetx_a", 0, (28, 28), 1, 10, 0.0, 0.1)
    with pytest.raises(ValueError, match="every network of regnetx is under the band"):  # not a ModelError:
        space.draw("regnetx", 0, (28, 28), 1, 10, 1000.0, 0.0)  # min_input_size reads it as "input too small"
    with pytest.raises(ModelError, match="model.space='anynetx_f' is not allowed \\(did you mean anynetx_e\\?\\); choose one of: anynetx_a, "):
        create_model("anynet_sample", space="anynetx_f")


def test_regnet_rule_gives_the_papers_regnetx_200mf():
    assert space.quantized_linear(13, 24, 36.44, 2.49) == [(1, 24), (1, 56), (4, 152), (7, 368)]
    assert space.regnet_stages(13, 24, 36.44, 2.49, 8) == REGNETX_200MF
    with torch.device("meta"):
        assert n_params(create_model("regnet")) == n_params(create_model("regnetx_200mf"))
    assert space.compatible(24, 1.0, 16) == (32, 16)  # the inner width rounded to a multiple of g
    assert space.compatible(8, 0.25, 16) == (8, 2)  # g capped at the inner width


# torchvision's published RegNetX configurations (depth, w0, wa, wm, group width)
TORCHVISION_REGNETX = {
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24),
    "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120),
}


@pytest.mark.parametrize("name", TORCHVISION_REGNETX)
def test_regnet_rule_matches_torchvision_parameter_counts(name):
    from torchvision.models import regnet as tv

    depth, w0, wa, wm, g = TORCHVISION_REGNETX[name]
    params = tv.BlockParams.from_init_params(depth=depth, w_0=w0, w_a=wa, w_m=wm, group_width=g)  # CPU tensors
    with torch.device("meta"):
        theirs = tv.RegNet(params)  # what torchvision.models.<name>() builds, without its weights
        ours = create_model("regnet", num_classes=1000, in_channels=3, depth=depth, w0=w0, wa=wa, wm=wm,
                            group_width=g, bias=False)
    assert n_params(ours) == n_params(theirs)
    assert [[d, w, gw] for d, w, gw, _ in space.regnet_stages(depth, w0, wa, wm, g)] == \
        [list(x) for x in zip(params.depths, params.widths, params.group_widths)]


def test_the_published_torchvision_builder_agrees_for_one():
    from torchvision.models import regnet_x_400mf

    assert n_params(regnet_x_400mf()) == 5_495_976  # the real builder (CPU, random weights, no download)


# --- the study's analysis ---------------------------------------------------------------


def hand_results() -> pd.DataFrame:
    """Two spaces: a's errors 10, 20, 30, 40 %; b's 20, 30, 40, 50 % (a failed job in b)."""
    rows = [{"model.space": "a", "status": "completed", "final_test_acc": 1 - e / 100, "ds_depth": d}
            for e, d in ((10, 4), (20, 6), (30, 8), (40, 10))]
    rows += [{"model.space": "b", "status": "completed", "final_test_acc": 1 - e / 100, "ds_depth": d}
             for e, d in ((20, 4), (30, 6), (40, 8), (50, 10))]
    rows.append({"model.space": "b", "status": "diverged", "final_test_acc": None, "ds_depth": 12})
    return pd.DataFrame(rows)


def test_edf_and_the_area_between_curves_on_a_hand_made_table():
    done = ds.study_errors(hand_results())
    a, b = (done.loc[done["model.space"] == s, "error"].to_numpy() for s in "ab")
    np.testing.assert_allclose(sorted(a), [10, 20, 30, 40])
    assert len(b) == 4  # the diverged job has no final error
    np.testing.assert_allclose(ds.edf(a, [5, 10, 15, 25, 40, 45]), [0, 0.25, 0.25, 0.5, 1, 1])
    # b is a shifted 10 points right: the EDFs differ by 1/4 over four steps of 10 points
    assert ds.area_between(a, b) == pytest.approx(10.0)
    assert ds.area_between(a, a) == 0
    assert ds.area_between([10, 30], [20]) == pytest.approx(0.5 * 10 + 0.5 * 10)
    table = ds.study_table(done).set_index("space")
    assert table.loc["a", "n"] == 4 and table.loc["b", "error_mean"] == pytest.approx(35)
    assert table.loc["a", "area_vs_b"] == pytest.approx(10.0) == table.loc["b", "area_vs_a"]
    assert list(table.columns)[-2:] == ["area_vs_a", "area_vs_b"]  # in the spaces' order, not the first space's last


def test_good_region_bootstraps_the_best_networks_values():
    values = np.arange(1, 41)
    lo, mid, hi = ds.good_region(values, errors=values, top=0.25)  # the least value is best
    assert lo == 1 and mid <= 4 and hi < 15
    lo, mid, hi = ds.good_region(values, errors=-values, top=0.25)  # the greatest is best
    assert hi == 40 and mid >= 37
    region = ds.good_region_table(ds.study_errors(hand_results())).set_index(["space", "quantity"])
    assert region.loc[("a", "ds_depth"), "low"] == 4  # the shallowest is the best in the hand-made table


def test_the_study_report_writes_its_plots_and_tables(tmp_path, capsys):
    written = ds.study_report(tmp_path, hand_results())
    printed = capsys.readouterr().out
    assert "area_vs_" in printed and "NaN" not in printed  # a space against itself reads "-", as every table's gap
    names = {p.name for p in written}
    assert {"report_edf.png", "report_ds_scatter.png", "design_study.csv", "design_study_good_region.csv"} <= names
    assert (tmp_path / "report_edf.png").stat().st_size > 10_000
    assert ds.study_report(tmp_path, pd.DataFrame([{"status": "completed"}])) == []  # not a study


def test_a_study_compares_networks_trained_alike_only(tmp_path, capsys):
    """A folder may hold networks of the spaces trained in other ways (a smoke run, another size):
    their errors are no evidence about the spaces."""
    results = hand_results()
    results["seed"] = range(len(results))  # seeds differ in any study
    results["optimizer.lr"] = ["0.05", "5e-2"] * 4 + ["0.05"]  # one setting, spelt two ways
    assert ds.study_report(tmp_path, results, ["model.space", "seed", "optimizer.lr"])
    results["data.resize"] = [28] * 8 + [14]  # the diverged run is no part of the study
    assert ds.study_report(tmp_path, results, ["model.space", "data.resize"])
    results.loc[0, "data.resize"] = 14
    assert ds.study_report(tmp_path / "x", results, ["model.space", "seed", "optimizer.lr", "data.resize"]) == []
    assert "design study: not drawn, its 8 networks were not trained alike (they differ in data.resize)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_tiny_study_runs_end_to_end(tiny_data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cnnbench", "experiment=ds_anynet", "trainer=smoke", f"data.root={tiny_data}",
         "model.space=anynetx_a,regnetx", "model.sample=range(0,2)", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["model.space"].tolist() == ["anynetx_a", "regnetx"] * 2  # index by index through the spaces
    assert (results["status"] == "completed").all()
    assert results[["ds_depth", "ds_max_width", "ds_group_width", "ds_bottleneck_ratio"]].notna().all().all()
    assert results["flops"].between(2e6, 6e6).all()
    assert (tmp_path / "report_edf.png").stat().st_size > 10_000
    assert (tmp_path / "design_study.csv").is_file()
    # a draw's index is no quantity: accuracy is plotted against the space, not against model.sample
    assert (tmp_path / "report_vs_model.space.png").is_file() and not (tmp_path / "report_vs_model.sample.png").exists()


def test_a_regnet_run_records_the_stages_its_rule_built():
    """cnnbench -m model=regnet model.depth=8,13,20: results.csv says what each depth built."""
    from cnnbench.models.design_space import summary_fields

    fields = summary_fields("regnet", (96, 96), depth=8)
    assert sum(d for d, *_ in fields["stages"]) == 8 and fields["stages"][0][:2] == [1, 24]  # w0 = 24
    assert [fields[f"ds_d{i + 1}"] for i in range(len(fields["stages"]))] == [s[0] for s in fields["stages"]]
    assert summary_fields("resnet18", (96, 96)) == {}
