"""Documented knob variants and the smoke tests' input size, shared by the model, training and recipe tests."""

# Knob variants the exercises use, as (model config, knobs); each must build and run like the rest.
KNOB_VARIANTS = [
    ("lenet", dict(activation="relu", pool="max", dropout=0.5)),
    *[("lenet", dict(norm=kind, norm_at=at)) for kind in ("batch", "mean_only", "variance_only") for at in ("conv", "dense")],
    ("bn_lenet", dict(norm_affine=False, bias=False)),
    ("bn_lenet_scratch", dict(norm_affine=False)),
    ("alexnet", dict(dropout=0.0)),
    ("vgg11_quarter", dict(norm="batch")),
    ("nin", dict(num_1x1=1)),
    ("nin", dict(num_1x1=3)),
    ("nin", dict(kernel_1x1=3)),
    ("nin", dict(head="dense")),
    ("googlenet", dict(norm="batch", bias=False)),
    ("googlenet", dict(inception="v2")),
    ("googlenet", dict(inception="v3", residual=True, norm="batch")),
    ("googlenet28", dict(residual=True)),
    ("resnet18", dict(preact=True, bias=False, shortcut_norm=True)),
    ("resnet18", dict(norm="scratch")),
    ("densenet", dict(norm="none")),
    ("resnet34", dict(groups=2)),
    ("densenet", dict(transition_pool="max", bottleneck=True, compression=0.75)),
    ("regnetx32", dict(block="basic")),
]


def smoke_side(cfg) -> int:
    """A small input the configured model accepts: 32 px, or its smallest input when that is more
    (one shape probe for most models; the search only for those that need more)."""
    from cnnbench.config import model_knobs
    from cnnbench.models import min_input_size
    from cnnbench.models.registry import accepts_input

    name, knobs = cfg.model.name, model_knobs(cfg)
    return 32 if accepts_input(name, 32, **knobs) else min_input_size(name, **knobs)
