"""Every registered model: right output shape, a gradient for every parameter, and the
parameter count of the chapter's network (derived by hand from the architecture)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from variants import KNOB_VARIANTS

from cnnbench.analysis import count_flops, min_size_report
from cnnbench.models import (
    ModelError,
    create_model,
    get_spec,
    list_models,
    min_input_size,
)
from cnnbench.models.googlenet import InceptionBlock
from cnnbench.models.layers import (
    ResidualBlock,
    ScratchBatchNorm,
    norm_layer,
    output_shape,
)
from cnnbench.models.registry import accepts_input
from cnnbench.models.regnet import REGNETX32, REGNETX_200MF


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


@pytest.mark.parametrize("name, published", [
    ("lenet", 61_706), ("alexnet", 46_764_746), ("resnet18", 11_178_378),
    # torchvision's VGG-11 (3 channels, 1000 classes) has 132,863,336 parameters: less the
    # wider output layer and the two extra input channels of the first convolution.
    ("vgg11", 132_863_336 - (dense(4096, 1000) - dense(4096, 10)) - 2 * 64 * 9),
])
def test_models_have_the_published_parameter_counts(name, published):
    """Figures quoted widely for these networks (one input channel, ten classes), against what
    cnnbench builds."""
    with torch.device("meta"):
        assert sum(p.numel() for p in create_model(name).parameters()) == published


BOOK_MODELS = sorted(EXPECTED_PARAMS)


def test_registry_has_the_chapter_models_and_the_families():
    assert set(BOOK_MODELS) <= set(list_models())
    for family in ("vgg", "resnet", "densenet", "nin_vgg", "vionet", "alexnet", "googlenet"):
        assert sum(n.startswith(family) for n in list_models()) >= 2, family


@pytest.mark.parametrize("name", BOOK_MODELS)
def test_book_models_have_the_chapters_param_counts(name):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def model_configs() -> dict[str, dict]:
    """Every model config in conf/model, composed: the registered models and the variants."""
    from omegaconf import OmegaConf

    from cnnbench.config import CONF_DIR, compose

    return {path.stem: OmegaConf.to_container(compose(f"model={path.stem}").model, resolve=True)
            for path in sorted((CONF_DIR / "model").glob("*.yaml"))}


MODEL_CONFIGS = model_configs()
def variant_cases():
    cases = []
    for option, model in MODEL_CONFIGS.items():
        knobs = {k: v for k, v in model.items() if k != "name"}
        cases.append(pytest.param(model["name"], knobs, id=option, marks=pytest.mark.xdist_group(model["name"])))
    for option, extra in KNOB_VARIANTS:
        model = MODEL_CONFIGS[option]
        knobs = {k: v for k, v in model.items() if k != "name"} | extra
        cases.append(pytest.param(model["name"], knobs, id=f"{option}:" + ",".join(f"{k}={v}" for k, v in extra.items())))
    return cases


def test_every_registered_model_has_a_config():
    assert set(list_models()) <= {m["name"] for m in MODEL_CONFIGS.values()}


def forward_backward(model: nn.Module, side: int, finite: bool = True) -> None:
    device = next(model.parameters()).device
    out = model(torch.rand(2, 1, side, side, device=device))
    assert out.shape == (2, 10)
    nn.functional.cross_entropy(out, torch.tensor([0, 1], device=device)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        if finite and device.type != "meta":
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name, knobs", variant_cases())
def test_every_model_and_variant_runs_at_its_smallest_and_default_size(name, knobs):
    torch.manual_seed(0)
    smallest = min_input_size(name, **knobs)
    default = get_spec(name).resolution
    assert smallest <= default, f"{name} does not accept its own default resolution"
    # At the smallest size deep networks see 1x1 maps, where batch norm over two values can
    # overflow the gradient: it must flow to every parameter, finite only at the default size
    # (shapes and gradient flow on the meta device here; the arithmetic in the slow test below).
    forward_backward(create_model(name, image_size=smallest, **knobs), smallest, finite=False)
    with torch.device("meta"):
        forward_backward(create_model(name, image_size=default, **knobs), default)


@pytest.mark.slow
@pytest.mark.parametrize("name, knobs", variant_cases())
def test_every_model_and_variant_has_finite_gradients_at_its_default_size(name, knobs):
    torch.manual_seed(0)
    default = get_spec(name).resolution
    forward_backward(create_model(name, image_size=default, **knobs), default)


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
    with pytest.raises(ModelError, match=r"model.widht is not a knob of model vgg11 \(did you mean model.width\?\); its knobs are: arch, width"):
        create_model("vgg11", widht=0.5)
    with pytest.raises(ModelError, match=r"model.init='he' is not allowed; choose one of: xavier, pytorch"):
        create_model("resnet18", init="he")
    with pytest.raises(ModelError, match=r"model.width='wide' has the wrong type: expected float"):
        create_model("vgg11", width="wide")


def test_init_schemes():
    torch.manual_seed(0)
    xavier = create_model("alexnet", init="xavier").head[0].weight
    torch.manual_seed(0)
    default = create_model("alexnet", init="pytorch").head[0].weight
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lite", [{}, {"scale": False}, {"center": False}, {"affine": False}])
def test_scratch_batch_norm_under_autocast_keeps_fp32_statistics(dtype, lite):
    """Under autocast a convolution hands the norm a bf16/fp16 tensor: statistics and moving
    averages stay fp32, the output has the input's dtype (as nn.BatchNorm's), and the result
    equals the fp32 layer's to the low precision's rounding."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    x = torch.randn(8, 3, 7, 7) * 3 + 2
    amp, ref = ScratchBatchNorm(6, num_dims=4, **lite), ScratchBatchNorm(6, num_dims=4, **lite)
    with torch.autocast("cpu", dtype=dtype):
        y = amp(conv(x))
    y_ref = ref(conv(x))
    assert y.dtype == dtype and amp.moving_mean.dtype == amp.moving_var.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref, atol=0.05, rtol=0.02)
    torch.testing.assert_close(amp.moving_mean, ref.moving_mean, atol=0.02, rtol=0.01)
    torch.testing.assert_close(amp.moving_var, ref.moving_var, atol=0.05, rtol=0.02)
    amp.eval()
    with torch.autocast("cpu", dtype=dtype):
        assert amp(conv(x)).dtype == dtype


def test_every_model_yaml_composes_and_matches_its_builder():
    conf = Path(__file__).parents[1] / "conf" / "model"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert set(list_models()) <= set(names) == set(MODEL_CONFIGS)
    for option in names:  # MODEL_CONFIGS: each YAML composed as `model=OPTION` composes it
        name, knobs = MODEL_CONFIGS[option]["name"], {k: v for k, v in MODEL_CONFIGS[option].items() if k != "name"}
        spec = get_spec(name)
        assert set(knobs) == set(spec.knobs), f"conf/model/{option}.yaml and the builder disagree"
        if option == name:  # the YAML's values are the builder's defaults
            assert knobs == {k: (list(p.default) if isinstance(p.default, tuple) else p.default) for k, p in spec.knobs.items()}
        with torch.device("meta"):  # the config builds the model its builder builds with those knobs
            from_config = create_model(name, **knobs)
            direct = spec.builder(num_classes=10, in_channels=1, **({"image_size": spec.resolution} if spec.takes_image_size else {}),
                                  **(spec.defaults | knobs))
        assert [tuple(p.shape) for p in from_config.parameters()] == [tuple(p.shape) for p in direct.parameters()]


# --- the paper settings, against torchvision's own builders -------------------------------

PAPER = dict(in_channels=3, num_classes=1000, image_size=224)
NO_BIAS = dict(bias=False)  # torchvision's convolutions before batch norm have no bias
TORCHVISION = {
    "vgg11": ("vgg11", {}), "vgg13": ("vgg13", {}), "vgg16": ("vgg16", {}), "vgg19": ("vgg19", {}),
    "vgg11_bn": ("vgg11", dict(norm="batch")), "vgg13_bn": ("vgg13", dict(norm="batch")),
    "vgg16_bn": ("vgg16", dict(norm="batch")), "vgg19_bn": ("vgg19", dict(norm="batch")),
    "resnet18": ("resnet18", NO_BIAS | dict(shortcut_norm=True)),
    "resnet34": ("resnet34", NO_BIAS | dict(shortcut_norm=True)),
    "resnet50": ("resnet50", NO_BIAS), "resnet101": ("resnet101", NO_BIAS), "resnet152": ("resnet152", NO_BIAS),
    "resnext50_32x4d": ("resnext50", NO_BIAS),
    "densenet121": ("densenet121", NO_BIAS), "densenet169": ("densenet169", NO_BIAS),
    "densenet201": ("densenet201", NO_BIAS),
    # torchvision's third Inception path is 3x3, not 5x5 (a bug it keeps for its weights)
    "googlenet": ("googlenet", dict(norm="batch", bias=False, kernel5=3)),
}


@pytest.mark.parametrize("tv_name", TORCHVISION)
def test_paper_settings_match_torchvision_param_counts(tv_name):
    import torchvision

    ours, knobs = TORCHVISION[tv_name]
    extra = dict(aux_logits=False, init_weights=False) if tv_name == "googlenet" else {}
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        reference = getattr(torchvision.models, tv_name)(weights=None, **extra)
        model = create_model(ours, **PAPER, **knobs)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model) == count(reference)
    # and layer for layer: the same parameter shapes in the same order
    assert sorted(p.shape for p in model.parameters()) == sorted(p.shape for p in reference.parameters())


# --- what each knob does --------------------------------------------------------------------


def layers_of(model: nn.Module, kind) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("norm_at, conv_norms, dense_norms", [("none", 0, 0), ("conv", 2, 0), ("dense", 0, 2), ("all", 2, 2)])
def test_lenet_norm_placement(norm_at, conv_norms, dense_norms):
    model = create_model("lenet", norm="batch", norm_at=norm_at, bias=False)
    assert len(layers_of(model, nn.BatchNorm2d)) == conv_norms
    assert len(layers_of(model, nn.BatchNorm1d)) == dense_norms
    # bias=False drops the bias only where a norm follows; the output layer keeps its own
    with_bias = [m for m in layers_of(model, (nn.Conv2d, nn.Linear)) if m.bias is not None]
    assert len(with_bias) == 1 + (2 - conv_norms) + (2 - dense_norms)


def test_lenet_activation_pool_and_dropout():
    model = create_model("lenet", activation="relu", pool="max", dropout=0.3)
    assert not layers_of(model, nn.Sigmoid) and len(layers_of(model, nn.ReLU)) == 4
    assert len(layers_of(model, nn.MaxPool2d)) == 2 and not layers_of(model, nn.AvgPool2d)
    assert [m.p for m in layers_of(model, nn.Dropout)] == [0.3, 0.3]
    assert not layers_of(create_model("lenet"), nn.Dropout)


def test_lite_batch_norms_remove_only_the_mean_or_only_the_variance():
    torch.manual_seed(0)
    x = torch.randn(64, 6, 4, 4) * 3 + 2
    (mean_only,) = norm_layer("mean_only", 6, 4, affine=False)
    (var_only,) = norm_layer("variance_only", 6, 4, affine=False)
    y = mean_only(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))  # the spread is kept
    z = var_only(x)
    torch.testing.assert_close(z.var(dim=(0, 2, 3), unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), x.mean(dim=(0, 2, 3)) / x.std(dim=(0, 2, 3), unbiased=False),
                               atol=1e-4, rtol=1e-4)  # the mean is kept, only rescaled
    assert not list(mean_only.parameters())  # affine=False: nothing learned


def test_fixed_affine_norms_have_no_parameters():
    learned = create_model("bn_lenet")
    for norm in ("batch", "scratch"):
        fixed = create_model("lenet", norm=norm, padding=0, norm_affine=False)
        assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in fixed.parameters()) == 2 * (6 + 16 + 120 + 84)


def test_alexnet_variants():
    assert all(m.p == 0 for m in layers_of(create_model("alexnet", dropout=0.0), nn.Dropout))
    full, lite = (sum(p.numel() for p in create_model(n).parameters()) for n in ("alexnet", "alexnet_lite"))
    assert lite < full / 5
    assert count_flops("alexnet_lite", (224, 224)) < count_flops("alexnet", (224, 224)) / 2


@pytest.mark.parametrize("num_1x1, kernel_1x1", [(1, 1), (2, 1), (3, 1), (2, 3)])
def test_nin_blocks(num_1x1, kernel_1x1):
    model = create_model("nin", num_1x1=num_1x1, kernel_1x1=kernel_1x1)
    convs = layers_of(model, nn.Conv2d)
    assert len(convs) == 4 * (1 + num_1x1)  # four NiN blocks
    assert sum(c.kernel_size == (kernel_1x1, kernel_1x1) for c in convs) >= 4 * num_1x1


def test_nin_dense_head_replaces_global_pooling():
    gap, dense = create_model("nin"), create_model("nin", head="dense")
    assert not layers_of(gap, nn.Linear) and not layers_of(dense, nn.AdaptiveAvgPool2d)
    (linear,) = layers_of(dense, nn.Linear)
    assert linear.in_features == 10 * 5 * 5  # ten class channels on a 5x5 map at 224 px


def test_nin_vgg_family_grows_in_depth():
    depths = [len(layers_of(create_model(f"nin_vgg{d}", image_size=96), nn.Conv2d)) for d in (11, 13, 16, 19)]
    assert depths == [3 * n + 3 for n in (8, 10, 13, 16)]  # (conv + two 1x1) per VGG conv, plus the class block


def test_googlenet_block_versions():
    """Per Inception block, v1 has a 3x3 on path 2 and a 5x5 on path 3; v2 turns the 5x5 into two
    3x3; v3 splits every 3x3 of the blocks into a 1x3 and a 3x1. Nine blocks; the stem keeps one 3x3."""
    def count(block):
        kinds = [c.kernel_size for c in layers_of(create_model("googlenet", inception=block), nn.Conv2d)]
        return {k: kinds.count(k) for k in [(5, 5), (3, 3), (1, 3), (3, 1)]}

    assert count("v1") == {(5, 5): 9, (3, 3): 1 + 9, (1, 3): 0, (3, 1): 0}
    assert count("v2") == {(5, 5): 0, (3, 3): 1 + 9 * 3, (1, 3): 0, (3, 1): 0}
    assert count("v3") == {(5, 5): 0, (3, 3): 1, (1, 3): 9 * 3, (3, 1): 9 * 3}
    with pytest.raises(ModelError, match="model.kernel5=3 applies to inception=v1 only"):
        create_model("googlenet", inception="v2", kernel5=3)


def test_residual_inception_adds_its_input():
    block = InceptionBlock(64, 16, [16, 16], [8, 16], 16, residual=True)  # 64 channels in, 64 out: identity shortcut
    assert block.shortcut is None
    with torch.no_grad():
        block.mix[0].weight.zero_(), block.mix[0].bias.zero_()
    x = torch.rand(2, 64, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_googlenet28_keeps_the_resolution_in_the_stem():
    # the stages run at 14, 7 and 4 px; the book's stem would leave 28 px at 1x1 by the last stage
    assert output_shape(create_model("googlenet28").features, (1, 1, 28, 28)) == (1, 1024, 4, 4)
    assert output_shape(create_model("googlenet").features, (1, 1, 28, 28)) == (1, 1024, 1, 1)
    assert min_size_report("googlenet28")[0]["no_collapse_size"] <= 28 < min_size_report("googlenet")[0]["no_collapse_size"]


def test_preact_blocks_put_norm_before_conv():
    block = ResidualBlock(64, 128, "basic", stride=2, preact=True)
    assert isinstance(block.pre[0], nn.BatchNorm2d) and isinstance(block.branch[0], nn.Conv2d)
    post = ResidualBlock(64, 128, "basic", stride=2)
    assert isinstance(post.branch[0], nn.Conv2d) and isinstance(post.branch[1], nn.BatchNorm2d)
    # a post-activation block's output is a ReLU's; a pre-activation block's sum is not activated
    x = torch.randn(2, 64, 8, 8)
    assert (post(x) >= 0).all() and (block(x) < 0).any()


def test_resnext_groups_and_width():
    block = ResidualBlock(256, 256, "bottleneck", groups=32, bottleneck_ratio=0.5)
    grouped = [c for c in layers_of(block, nn.Conv2d) if c.groups > 1]
    assert [(c.in_channels, c.groups) for c in grouped] == [(128, 32)]
    with pytest.raises(ModelError, match="model.groups=3: the block's inner width 64"):
        create_model("resnet50", groups=3)


def test_densenet_transition_pool_and_compression():
    model = create_model("densenet", transition_pool="max", compression=0.75)
    assert len(layers_of(model, nn.MaxPool2d)) == 1 + 3 and not layers_of(model, nn.AvgPool2d)  # stem + 3 transitions
    transitions = [c for c in layers_of(model, nn.Conv2d) if c.kernel_size == (1, 1)]
    assert [c.out_channels for c in transitions] == [int(c.in_channels * 0.75) for c in transitions]
    with pytest.raises(ModelError, match=r"model.compression=0.0 is not allowed; it must be in \(0, 1\]"):
        create_model("densenet", compression=0.0)


def test_anynet_block_switch_and_stage_errors():
    resnet_blocks = layers_of(create_model("regnetx32", block="basic"), ResidualBlock)
    assert all(len(layers_of(b.branch, nn.Conv2d)) == 2 and all(c.groups == 1 for c in layers_of(b, nn.Conv2d))
               for b in resnet_blocks)
    resnext_blocks = layers_of(create_model("regnetx32"), ResidualBlock)
    assert all(len(layers_of(b.branch, nn.Conv2d)) == 3 for b in resnext_blocks)
    with pytest.raises(ModelError, match=r"model.arch\[1\]: group_width 16 does not divide the inner width 40"):
        create_model("regnetx32", arch=[[1, 32, 16, 1.0], [1, 80, 16, 0.5]])
    with pytest.raises(ModelError, match=r"model.arch\[0\]=\[1, 32\]: give \[depth, width, group_width"):
        create_model("regnetx32", arch=[[1, 32]])


def test_vionets_each_break_one_regnet_rule():
    def rules(stages):
        depth, width, group, ratio = zip(*stages)
        return {"width": list(width) == sorted(width), "depth": list(depth) == sorted(depth),
                "ratio": len(set(ratio)) == 1, "groups": len(set(group)) == 1}

    assert all(rules(get_spec("regnetx32").defaults.get("arch", REGNETX32)).values())
    assert all(rules(REGNETX_200MF).values())
    for rule in ("width", "depth", "ratio", "groups"):
        broken = rules(get_spec(f"vionet_{rule}").defaults["arch"])
        assert [k for k, ok in broken.items() if not ok] == [rule]


README = Path(__file__).parents[1] / "README.md"


def readme_model_rows() -> dict[str, str]:
    """The README's models table: model name -> its row, in the README's order."""
    from cnnbench import catalog

    readme = README.read_text()
    assert catalog.BEGIN in readme, "the README lost its generated models table"
    section = readme.split(catalog.BEGIN, 1)[1].split("\n\n", 2)[1]
    return {line.split("`")[1]: line for line in section.splitlines()[len(catalog.MODELS_HEADER):]}


def test_readme_models_table_is_generated_from_the_registry():
    """Everything but the measured columns of each row (the next test checks those, model by model)."""
    from cnnbench import catalog

    rows = readme_model_rows()
    assert list(rows) == list_models(), "the README's models table is stale: run `make models-table`"
    readme = README.read_text()
    assert readme == catalog.replace_section(readme, catalog.markdown(list(rows.values()))), \
        "the README's models table is stale: run `make models-table`"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in list_models()])
def test_readme_models_row_is_measured_from_the_model(name):
    from cnnbench import catalog

    assert readme_model_rows().get(name) == catalog.model_row(name), "stale: run `make models-table`"

def test_a_knob_the_builder_cannot_use_is_named_with_its_error_every_time():
    from cnnbench.models import ModelError, min_input_size

    for _ in range(2):  # the second answer comes from the probe cache, and keeps the reason
        with pytest.raises(ModelError, match=r"model alexnet with model.hidden=\['foo'\] accepts no input up to 4096x4096 "
                                             r"\(building or running it fails with TypeError"):
            min_input_size("alexnet", hidden=["foo"])


@pytest.mark.parametrize("name", ["bn_lenet", "resnet18", "densenet", "regnetx32"])
def test_dropping_the_biases_keeps_every_other_initial_weight(name):
    """ex_bn_bias compares a network with and without the biases before its norms: from the same
    seed, the two start from the same weights, so the curves differ by the bias alone."""
    torch.manual_seed(0)
    with_bias = create_model(name).state_dict()
    torch.manual_seed(0)
    without = create_model(name, bias=False).state_dict()
    assert set(without) < set(with_bias)  # some biases are gone ...
    for key, value in without.items():  # ... and nothing else moved
        assert torch.equal(value, with_bias[key]), key
