"""The model registry: the single source of truth for which networks exist.

A model is a builder function registered under a name. Its keyword arguments are
the model's knobs: each one appears in the model's YAML (``conf/model/<name>.yaml``)
and can be overridden from the command line (``model.width=0.5``).

A family registers one builder several times with different defaults (``vgg11`` and
``vgg16`` are ``vgg`` with another architecture table): a variant is data, not a copy.
"""
from __future__ import annotations

import difflib
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

# Arguments every builder gets from the data, not from the model's YAML.
DATA_ARGS = ("num_classes", "in_channels", "image_size")


class ModelError(ValueError):
    """A model name or knob that cannot be built; the message says what is allowed."""


@dataclass(frozen=True)
class Range:
    """The numbers a knob (or a config key) allows: ``lo`` to ``hi``, each end open or closed.
    A builder declares one as ``Annotated[float, Range(0, 1, open_hi=True)]``; a numeric knob
    without one must be finite and at least 0 (ints: at most 2**31)."""

    lo: float
    hi: float
    open_lo: bool = False
    open_hi: bool = False

    def __contains__(self, value) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.lo if self.open_lo else value >= self.lo
        below = value < self.hi if self.open_hi else value <= self.hi
        return above and below

    def __str__(self) -> str:
        def show(x) -> str:
            return str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}"
        return f"{'(' if self.open_lo else '['}{show(self.lo)}, {show(self.hi)}{')' if self.open_hi else ']'}"


DEFAULT_RANGES = {int: Range(0, 2**31), float: Range(0, math.inf, open_hi=True)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    resolution: int  # the input side the chapter trains it at, in pixels
    description: str
    defaults: dict[str, Any]  # this model's values for the builder's knobs, where they differ

    @property
    def knobs(self) -> dict[str, inspect.Parameter]:
        """The builder's keyword arguments that a config may set, with this model's defaults."""
        params = inspect.signature(self.builder).parameters
        return {
            k: p.replace(default=self.defaults[k]) if k in self.defaults else p
            for k, p in params.items() if k not in DATA_ARGS
        }

    @property
    def takes_image_size(self) -> bool:
        """True for networks whose dense head depends on the input size (flatten, not pooling)."""
        return "image_size" in inspect.signature(self.builder).parameters


_REGISTRY: dict[str, ModelSpec] = {}


def add_model(name: str, builder: Callable[..., nn.Module], resolution: int, description: str = "",
              **defaults: Any) -> None:
    """Register ``builder`` as model ``name``, trained at ``resolution`` px by default, with
    ``defaults`` replacing the builder's own defaults (e.g. another architecture table)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    params = inspect.signature(builder).parameters
    unknown = set(defaults) - set(params) | set(defaults) & set(DATA_ARGS)
    if unknown:
        raise ValueError(f"model {name!r}: {sorted(unknown)} are not knobs of {builder.__name__}")
    doc = description or (inspect.getdoc(builder) or "").split("\n")[0]
    _REGISTRY[name] = ModelSpec(name, builder, resolution, doc, defaults)


def register_model(name: str, resolution: int, description: str = "", **defaults: Any):
    """Decorator form of :func:`add_model`."""

    def wrap(builder):
        add_model(name, builder, resolution, description, **defaults)
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list_models(), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ModelError(
            f"model.name={name!r} is not a registered model{hint}; available: {', '.join(list_models())}"
        ) from None


def check_knobs(name: str, knobs: dict[str, Any], prefix: str = "model") -> dict[str, Any]:
    """Check knob names and types against the builder's signature; return the knobs.

    Types are judged by each knob's default (and its ``Literal`` annotation for choices),
    so an error can name the key, the bad value and what is allowed.
    """
    spec = get_spec(name)
    allowed = spec.knobs
    hints = typing.get_type_hints(spec.builder, include_extras=True)
    out = {}
    for key, value in knobs.items():
        if key not in allowed:
            raise ModelError(
                f"{prefix}.{key} is not a knob of model {name}{did_you_mean(key, allowed, prefix)}; "
                f"its knobs are: {', '.join(allowed) or '(none)'}"
            )
        out[key] = _check_type(f"{prefix}.{key}", value, allowed[key].default, hints.get(key))
    return out


def declared_range(hint: Any) -> Range | None:
    """The Range an ``Annotated[...]`` knob type declares (None without one)."""
    return next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Range)), None)


def knob_range(name: str, knob: str) -> Range | None:
    """The numbers knob ``knob`` of model ``name`` allows (None for a knob that is not a number)."""
    spec = get_spec(name)
    default = spec.knobs[knob].default
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return None
    return declared_range(typing.get_type_hints(spec.builder, include_extras=True).get(knob)) \
        or DEFAULT_RANGES[type(default)]


def did_you_mean(value: Any, choices, prefix: str = "") -> str:
    """" (did you mean PREFIX.X?)" for the choice X nearest ``value`` (case aside), else nothing:
    the one suggestion of every "not a key / not an option / not allowed" message."""
    lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {prefix + '.' if prefix else ''}{lower[close[0]]}?)" if close else ""


def _check_type(key: str, value: Any, default: Any, hint: Any) -> Any:
    bounds = declared_range(hint)
    hint = typing.get_args(hint)[0] if bounds else hint
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
    if choices:
        if value not in choices:
            raise ModelError(f"{key}={value!r} is not allowed{did_you_mean(value, choices)}; "
                             f"choose one of: {', '.join(map(str, choices))}")
        return value
    if default is None or default is inspect.Parameter.empty:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # model.groups=2.0 is 2
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = True
    if not ok:
        raise ModelError(f"{key}={value!r} has the wrong type: expected {type(default).__name__}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        bounds = bounds or DEFAULT_RANGES[type(default)]
        if value not in bounds:
            raise ModelError(f"{key}={value!r} is not allowed; it must be in {bounds}")
    return value


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] | None = None,
    **knobs: Any,
) -> nn.Module:
    """Build model ``name``. ``image_size`` matters only for networks with a flatten head
    (LeNet, AlexNet, VGG); it defaults to the chapter's resolution."""
    spec = get_spec(name)
    kwargs = {**spec.defaults, **check_knobs(name, knobs)}
    if spec.takes_image_size:
        kwargs["image_size"] = image_size or spec.resolution
    return spec.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


def accepts_input(name: str, size: int | tuple[int, int], in_channels: int = 1, **knobs: Any) -> bool:
    """Whether model ``name`` runs on a ``size`` input. Shapes only: it runs on the meta device."""
    return _shape_probe(name, in_channels, knobs)(size)


_FITS: dict[tuple, tuple[bool, str]] = {}  # (fits, why not): models are pure functions of their arguments, so each probe is made once per process


def _shape_probe(name: str, in_channels: int, knobs: dict[str, Any]) -> Callable[[int | tuple[int, int]], bool]:
    """``fits(size)``: whether the model runs on that input, on the meta device (a deep network's
    probe takes about a second: each answer is kept, so a sweep's jobs and a size search share
    them). A model whose layers do not depend on the input size is built once for every probe."""
    spec, built = get_spec(name), None
    every = repr(sorted(({k: p.default for k, p in spec.knobs.items()} | knobs).items()))  # defaults filled in

    def fits(size: int | tuple[int, int]) -> bool:
        h, w = (size, size) if isinstance(size, int) else size
        key = (name, in_channels, h, w, every)
        if key not in _FITS:
            if len(_FITS) > 100_000:
                _FITS.clear()
            _FITS[key] = probe(h, w)
        ok, fits.failure = _FITS[key]
        return ok

    def probe(h: int, w: int) -> tuple[bool, str]:
        nonlocal built
        try:
            with torch.device("meta"):
                model = built if built is not None else \
                    create_model(name, in_channels=in_channels, image_size=(h, w), **knobs).eval()
                built = None if spec.takes_image_size else model
                with torch.no_grad():  # eval mode: the same shapes, half the cost of training mode
                    model(torch.empty(2, in_channels, h, w))
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            if isinstance(err, ModelError):
                raise
            return False, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return True, ""

    fits.failure = ""  # the last answer's error: a knob the builder cannot use fails at every size
    return fits


def min_input_size(name: str, in_channels: int = 1, limit: int = 4096, **knobs: Any) -> int:
    """The smallest square input side the model accepts (binary search; feature-map sizes
    only grow with the input, so acceptance is monotone). The probes' answers are kept, so a
    second search for the same model costs a dozen lookups."""
    fits = _shape_probe(name, in_channels, knobs)
    hi = get_spec(name).resolution
    if not fits(hi):
        if not fits(limit):
            given = "".join(f" model.{k}={v!r}" for k, v in knobs.items() if v != get_spec(name).knobs[k].default)
            raise ModelError(f"model {name}{' with' + given if given else ''} accepts no input up to {limit}x{limit}"
                             + (f" (building or running it fails with {fits.failure})" if fits.failure else ""))
        hi = limit
    lo = 1  # invariant: hi accepted
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
