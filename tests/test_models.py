"""Every registered model: right output shape, a gradient for every parameter, and the
parameter count of the chapter's network (derived by hand from the architecture)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cnnbench.models import (
    ModelError,
    create_model,
    get_spec,
    list_models,
    min_input_size,
)
from cnnbench.models.layers import ScratchBatchNorm
from cnnbench.models.registry import accepts_input


def conv(cin, cout, k, bias=True, groups=1):
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def dense(fin, fout):
    return fin * fout + fout


def bn(c):
    return 2 * c


def inception(cin, c1, c2, c3, c4):
    return conv(cin, c1, 1) + conv(cin, c2[0], 1) + conv(c2[0], c2[1], 3) + conv(cin, c3[0], 1) + conv(c3[0], c3[1], 5) + conv(cin, c4, 1)


def resnext(cin, c, group_width, shortcut):
    g = c // group_width
    return conv(cin, c, 1) + conv(c, c, 3, groups=g) + conv(c, c, 1) + 3 * bn(c) + ((conv(cin, c, 1) + bn(c)) if shortcut else 0)


def residual(cin, c, shortcut):
    return conv(cin, c, 3) + conv(c, c, 3) + 2 * bn(c) + (conv(cin, c, 1) if shortcut else 0)


def densenet_params():
    total, c = conv(1, 64, 7) + bn(64), 64
    for i in range(4):
        for _ in range(4):
            total += bn(c) + conv(c, 32, 3)
            c += 32
        if i < 3:
            total += bn(c) + conv(c, c // 2, 1)
            c //= 2
    return total + bn(c) + dense(c, 10)


# The chapter's networks with one input channel and ten classes, at the chapter's resolution.
EXPECTED_PARAMS = {
    # conv 5x5x6 (pad 2) -> 28, pool 14, conv 5x5x16 -> 10, pool 5: 16*5*5 = 400 features
    "lenet": conv(1, 6, 5) + conv(6, 16, 5) + dense(400, 120) + dense(120, 84) + dense(84, 10),  # 61,706
    # no padding: 24, 12, 8, 4 -> 256 features; BN after the two convs and the two hidden dense layers
    "bn_lenet": conv(1, 6, 5) + bn(6) + conv(6, 16, 5) + bn(16) + dense(256, 120) + bn(120) + dense(120, 84) + bn(84) + dense(84, 10),
    # 224 -> 54 -> 26 -> 26 -> 12 -> 12 -> 5: 256*5*5 = 6400 features
    "alexnet": conv(1, 96, 11) + conv(96, 256, 5) + conv(256, 384, 3) + conv(384, 384, 3) + conv(384, 256, 3)
    + dense(6400, 4096) + dense(4096, 4096) + dense(4096, 10),  # 46,764,746
    # five stages halve 224 to 7: 512*7*7 features
    "vgg11": conv(1, 64, 3) + conv(64, 128, 3) + conv(128, 256, 3) + conv(256, 256, 3) + conv(256, 512, 3) + 3 * conv(512, 512, 3)
    + dense(512 * 49, 4096) + dense(4096, 4096) + dense(4096, 10),
    "nin": sum(conv(i, o, k) + 2 * conv(o, o, 1) for i, o, k in [(1, 96, 11), (96, 256, 5), (256, 384, 3), (384, 10, 3)]),
    "googlenet": conv(1, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    + inception(192, 64, (96, 128), (16, 32), 32) + inception(256, 128, (128, 192), (32, 96), 64)
    + inception(480, 192, (96, 208), (16, 48), 64) + inception(512, 160, (112, 224), (24, 64), 64)
    + inception(512, 128, (128, 256), (24, 64), 64) + inception(512, 112, (144, 288), (32, 64), 64)
    + inception(528, 256, (160, 320), (32, 128), 128) + inception(832, 256, (160, 320), (32, 128), 128)
    + inception(832, 384, (192, 384), (48, 128), 128) + dense(1024, 10),
    "resnet18": conv(1, 64, 7) + bn(64) + 2 * residual(64, 64, False)
    + residual(64, 128, True) + residual(128, 128, False) + residual(128, 256, True) + residual(256, 256, False)
    + residual(256, 512, True) + residual(512, 512, False) + dense(512, 10),  # 11,178,378
    "densenet": densenet_params(),  # 758,226
    "regnetx32": conv(1, 32, 3) + bn(32) + resnext(32, 32, 16, True) + 3 * resnext(32, 32, 16, False)
    + resnext(32, 80, 16, True) + 5 * resnext(80, 80, 16, False) + dense(80, 10),
}
EXPECTED_PARAMS["bn_lenet_scratch"] = EXPECTED_PARAMS["bn_lenet"]


def test_expected_counts_match_published_figures():
    # Figures quoted widely for these networks (one input channel, ten classes).
    assert EXPECTED_PARAMS["lenet"] == 61_706
    assert EXPECTED_PARAMS["alexnet"] == 46_764_746
    assert EXPECTED_PARAMS["resnet18"] == 11_178_378
    # torchvision's VGG-11 (3 channels, 1000 classes) has 132,863,336 parameters.
    assert EXPECTED_PARAMS["vgg11"] == 132_863_336 - (dense(4096, 1000) - dense(4096, 10)) - 2 * 64 * 9


def test_registry_lists_the_chapter_models():
    assert set(list_models()) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_param_count(name):
    torch.manual_seed(0)
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    side = get_spec(name).resolution
    out = model(torch.rand(2, 1, side, side))
    assert out.shape == (2, 10)
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname


def test_quarter_width_vgg11_is_the_chapters():
    model = create_model("vgg11", width=0.25)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 32, 64, 64, 128, 128, 128, 128]
    expected = conv(1, 16, 3) + conv(16, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3) + conv(64, 128, 3) + 3 * conv(128, 128, 3) \
        + dense(128 * 49, 4096) + dense(4096, 4096) + dense(4096, 10)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name, smallest", [("alexnet", 65), ("vgg11", 32), ("lenet", 12), ("bn_lenet", 16), ("nin", 67)])
def test_min_input_size_is_tight(name, smallest):
    assert min_input_size(name) == smallest
    assert accepts_input(name, smallest) and not accepts_input(name, smallest - 1)
    # and a real forward pass agrees
    create_model(name, image_size=smallest)(torch.rand(2, 1, smallest, smallest))
    with pytest.raises(RuntimeError):
        create_model(name, image_size=smallest)(torch.rand(2, 1, smallest - 1, smallest - 1))


def test_flatten_head_follows_image_size():
    assert create_model("alexnet", image_size=96)(torch.rand(2, 1, 96, 96)).shape == (2, 10)
    assert create_model("lenet", image_size=(28, 56))(torch.rand(2, 1, 28, 56)).shape == (2, 10)


def test_unknown_model_lists_the_models():
    with pytest.raises(ModelError, match="resnet18.*vgg11|available: alexnet"):
        create_model("resnet19")


def test_bad_knob_names_key_and_choices():
    with pytest.raises(ModelError, match="model.widht is not a knob of model vgg11; its knobs are: arch, width"):
        create_model("vgg11", widht=0.5)
    with pytest.raises(ModelError, match=r"model.init='he' is not allowed; choose one of: xavier, default"):
        create_model("resnet18", init="he")
    with pytest.raises(ModelError, match=r"model.width='wide' has the wrong type: expected float"):
        create_model("vgg11", width="wide")


def test_init_schemes():
    torch.manual_seed(0)
    xavier = create_model("alexnet", init="xavier").head[0].weight
    torch.manual_seed(0)
    default = create_model("alexnet", init="default").head[0].weight
    fan_in, fan_out = xavier.shape[1], xavier.shape[0]
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert xavier.abs().max() <= bound and xavier.abs().max() > 0.99 * bound
    # PyTorch's default bound is 1/sqrt(fan_in), about half the Xavier bound here
    assert default.abs().max() <= fan_in**-0.5 + 1e-9


def test_scratch_batch_norm_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 5, 5) * 3 + 2
    ours, ref = ScratchBatchNorm(6, num_dims=4), nn.BatchNorm2d(6)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.moving_mean.flatten(), ref.running_mean)
    ours.eval(), ref.eval()
    y = torch.randn(4, 6, 5, 5)
    # the book's moving variance is the biased one, torch's the unbiased: close, not equal
    torch.testing.assert_close(ours(y), ref(y), atol=0.05, rtol=0.05)
    x2 = torch.randn(16, 120)
    torch.testing.assert_close(ScratchBatchNorm(120, num_dims=2)(x2), nn.BatchNorm1d(120)(x2), atol=1e-5, rtol=1e-5)


def test_every_model_yaml_composes_and_matches_its_builder(make_cfg):
    from cnnbench.config import model_knobs

    conf = Path(__file__).parents[1] / "conf" / "model"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert set(list_models()) <= set(names)
    for option in names:
        cfg = make_cfg(f"model={option}")
        knobs = model_knobs(cfg)
        spec = get_spec(cfg.model.name)
        assert set(knobs) == set(spec.knobs), f"conf/model/{option}.yaml and the builder disagree"
        if option == cfg.model.name:  # the YAML's values are the builder's defaults
            assert knobs == {k: (list(p.default) if isinstance(p.default, tuple) else p.default) for k, p in spec.knobs.items()}
        assert sum(p.numel() for p in create_model(cfg.model.name, **knobs).parameters()) > 0
