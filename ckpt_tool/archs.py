"""Architecture names -> nn.Module: seed models, torchvision, timm, `pkg.mod:fn`, `file.py:Cls`.

One registry for `transplant --into`, `count --arch` and `smoke-train --arch`. Building never
loads weights: torchvision builders get `weights=None` (and `weights_backbone=None`), timm gets
`pretrained=False`, and arguments that would load weights are refused. Names come from the
user, never from a checkpoint; a `.py` file is the user's own code and runs when named.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import ArchBuildFailed, ArchNotFound, InputNotFound, UsageError
from .keys import natural_key
from .reports import ArchList

if TYPE_CHECKING:
    from torch import nn

SOURCES = ("seed", "torchvision", "timm", "module", "file")
EXTRAS = {"torchvision": "ckpt-tool[vision]", "timm": "ckpt-tool[timm]"}
# Constructor arguments that would make a zoo load (and download) weights.
WEIGHT_ARGS = (
    "weights",
    "weights_backbone",
    "pretrained",
    "pretrained_backbone",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
)
# Seed models whose input is a feature vector: --in-chans does not apply to them.
FEATURE_INPUT = {"mlp": "in_features", "sigmoid_net": "in_features"}


@dataclass
class ArchSpec:
    """Where an architecture name points: its source, its name there, and the factory."""

    source: str  # seed | torchvision | timm | module | file
    name: str
    factory: Callable[..., Any]
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The name as the user can write it to get exactly this architecture."""
        return f"{self.source}/{self.name}" if self.source in EXTRAS else self.name

    @property
    def tag(self) -> str:
        """A file-name-safe short name, for derived output names."""
        short = self.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1] if ":" in self.name else self.name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", short).strip("-.") or "arch"


@dataclass
class Built:
    """A built model with the spec it came from, the arguments used, and what was adapted."""

    model: nn.Module
    spec: ArchSpec
    kwargs: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    input_conv: str | None = None  # module rebuilt for --in-chans after construction
    num_classes: int | None = None  # asked for by --num-classes or --arch-arg num_classes=
    in_chans: int | None = None  # asked for by --in-chans or --arch-arg in_chans=


# --- availability -------------------------------------------------------------------------------


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def seed_names() -> list[str]:
    from .seed_models import SEED_MODELS

    return sorted(SEED_MODELS, key=natural_key)


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """Every torchvision model builder name (classification, detection, video...), or none."""
    if not installed("torchvision"):
        return ()
    from torchvision import models

    return tuple(sorted(models.list_models(), key=natural_key))


@functools.cache
def timm_names() -> tuple[str, ...]:
    if not installed("timm"):
        return ()
    import timm

    return tuple(sorted(timm.list_models(), key=natural_key))


def _in_timm(name: str) -> bool:
    # timm also accepts pretrained tags (resnet34.a1_in1k); the architecture is before the dot
    return bool(timm_names()) and name.split(".", 1)[0] in set(timm_names())


def available(pattern: str | None = None) -> ArchList:
    """What `--into` accepts here, per source, naturally sorted, optionally glob-filtered."""

    def pick(names: Sequence[str]) -> list[str]:
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    out: ArchList = {"seed": {"installed": True, "names": pick(seed_names())}}
    for source, names in (("torchvision", torchvision_names()), ("timm", timm_names())):
        out[source] = {"installed": installed(source), "names": pick(names)}
        if not installed(source):
            out[source]["install"] = f"pip install '{EXTRAS[source]}'"
    for v in out.values():
        v["count"] = len(v["names"])
    return out


# --- resolving names ----------------------------------------------------------------------------


def _seed_spec(name: str) -> ArchSpec | None:
    from .seed_models import SEED_MODELS

    factory = cast("Callable[..., Any] | None", SEED_MODELS.get(name))
    return ArchSpec("seed", name, factory) if factory is not None else None


def _torchvision_spec(name: str) -> ArchSpec:
    from torchvision import models

    builder = models.get_model_builder(name)
    params = inspect.signature(builder).parameters
    fixed: dict[str, Any] = {"weights": None}
    if "weights_backbone" in params:
        fixed["weights_backbone"] = None
    return ArchSpec("torchvision", name, functools.partial(builder, **fixed))


def _timm_spec(name: str) -> ArchSpec:
    import timm

    return ArchSpec("timm", name, functools.partial(timm.create_model, name, pretrained=False))


def _require(source: str, name: str) -> None:
    if not installed(source):
        raise ArchNotFound(
            f"{name}: {source} is not installed here; install {EXTRAS[source]} "
            f"(pip install '{EXTRAS[source]}') or choose another architecture (ckpt archs)"
        )


def resolve(name: str) -> ArchSpec:
    """The architecture a name means: seed model, torchvision, timm, or an import path."""
    name = name.strip()
    if not name:
        raise UsageError("--into/--arch: give an architecture name (list them with `ckpt archs`)")
    source, _, bare = name.partition("/")
    if source in ("seed", "torchvision", "timm") and bare:
        if ":" in bare:
            raise ArchNotFound(
                f"{name}: hub names download files and are not supported; build from a "
                "local name or a package.module:factory"
            )
        if source == "seed":
            spec = _seed_spec(bare)
            if spec is None:
                raise _not_found(name, seed_names())
            return spec
        _require(source, name)
        if source == "torchvision":
            if bare not in torchvision_names():
                raise _not_found(name, torchvision_names(), prefix="torchvision/")
            return _torchvision_spec(bare)
        if not _in_timm(bare):
            raise _not_found(name, timm_names(), prefix="timm/")
        return _timm_spec(bare)
    if ":" in name:
        return _import_spec(name)
    spec = _seed_spec(name)
    if spec is not None:
        return spec
    if name in torchvision_names():
        spec = _torchvision_spec(name)
        if _in_timm(name):
            spec.notes.append(
                f"{name} is both a torchvision and a timm model; built torchvision's "
                f"(write timm/{name} for timm's)"
            )
        return spec
    if _in_timm(name):
        return _timm_spec(name)
    raise _not_found(name, [*seed_names(), *torchvision_names(), *timm_names()])


def _not_found(name: str, candidates: Sequence[str], prefix: str = "") -> ArchNotFound:
    bare = name.split("/", 1)[-1]
    close = difflib.get_close_matches(bare, list(dict.fromkeys(candidates)), n=5, cutoff=0.6)
    text = f"{name}: unknown architecture"
    if close:
        text += "; close matches: " + ", ".join(prefix + c for c in close)
    missing = [f"{EXTRAS[s]} for {s} models" for s in EXTRAS if not installed(s)]
    if missing:
        text += "; not installed here: " + ", ".join(missing)
    return ArchNotFound(text + " (list what is available with `ckpt archs`)")


def _import_spec(name: str) -> ArchSpec:
    where, _, attr = name.rpartition(":")
    if not where or not attr:
        raise UsageError(f"{name}: expected package.module:factory or path/to/file.py:Class")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _run_file(Path(where).expanduser(), name)
        source = "file"
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ArchNotFound(f"{name}: module {where!r} cannot be imported ({exc})") from None
        except Exception as exc:
            raise ArchBuildFailed(
                f"{name}: importing {where!r} failed ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        source = "module"
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [
                n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))
            ]
            close = difflib.get_close_matches(part, public, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ArchNotFound(f"{name}: {where} defines no {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ArchNotFound(f"{name}: {attr!r} in {where} is not a class or factory function")
    return ArchSpec(source, name, obj)


def _run_file(path: Path, name: str) -> Any:
    """Import a Python file the user named (their own code), with its folder on sys.path."""
    if not path.is_file():
        raise InputNotFound(f"{path}: no such Python file (from --into {name})")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"_ckpt_arch_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ArchNotFound(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ArchBuildFailed(
            f"{path}: running it failed ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- arguments ----------------------------------------------------------------------------------


def parse_arch_args(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` options: values as Python literals (4, 0.5, True, (1, 2)), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise UsageError(f"--arch-arg {item!r}: expected NAME=VALUE, e.g. num_classes=4")
        if key in out:
            raise UsageError(f"--arch-arg {key} given twice")
        try:
            out[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = text
    return out


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def accepts(factory: Callable[..., Any], arg: str) -> bool | None:
    """Whether the factory takes a keyword argument (None: cannot tell, it takes **kwargs)."""
    sig = _signature(factory)
    if sig is None:
        return None
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return arg in params or None
    p = params.get(arg)
    return p is not None and p.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def _arg_names(factory: Callable[..., Any]) -> str:
    sig = _signature(factory)
    if sig is None:
        return "unknown"
    names = [
        n
        for n, p in sig.parameters.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]
    return ", ".join(names) or "none"


def _check_args(spec: ArchSpec, kwargs: dict[str, Any]) -> None:
    if spec.source in EXTRAS:
        refused = [k for k in kwargs if k in WEIGHT_ARGS]
        if refused:
            raise UsageError(
                f"--arch-arg {refused[0]}: building never loads weights; transplant them "
                "from a checkpoint instead"
            )
    for key in kwargs:
        if accepts(spec.factory, key) is False:
            raise ArchBuildFailed(
                f"{spec.label} takes no argument {key!r} (it takes: {_arg_names(spec.factory)})"
            )


def _shortcuts(
    spec: ArchSpec, kwargs: dict[str, Any], num_classes: int | None, in_chans: int | None
) -> bool:
    """Map --num-classes/--in-chans onto the source's arguments; True if the stem is adapted."""
    for opt, arg, value in (
        ("--num-classes", "num_classes", num_classes),
        ("--in-chans", "in_chans", in_chans),
    ):
        if value is not None and arg in kwargs:
            raise UsageError(f"give either {opt} or --arch-arg {arg}=..., not both")
    if num_classes is not None:
        if accepts(spec.factory, "num_classes") is False:
            raise ArchBuildFailed(
                f"{spec.label} takes no num_classes argument (it takes: "
                f"{_arg_names(spec.factory)}); pass its own with --arch-arg NAME=VALUE"
            )
        kwargs["num_classes"] = num_classes
    if in_chans is None:
        return False
    if spec.source == "seed" and spec.name in FEATURE_INPUT:
        raise ArchBuildFailed(
            f"{spec.name} takes feature vectors, not image channels: use "
            f"--arch-arg {FEATURE_INPUT[spec.name]}=N instead of --in-chans"
        )
    if spec.source in ("seed", "timm") or accepts(spec.factory, "in_chans"):
        kwargs["in_chans"] = in_chans
        return False
    return True  # torchvision and factories without in_chans: rebuild the first conv


def first_conv(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Conv1d/2d/3d in registration order: the input stem for the usual networks."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return name, module
    return None


def declared_image_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size a model says it takes: timm's patch_embed.img_size or pretrained_cfg,
    torchvision's image_size; None when it says nothing."""
    patch = getattr(getattr(model, "patch_embed", None), "img_size", None)  # timm ViTs as built
    if isinstance(patch, (tuple, list)) and len(patch) == 2:
        return int(patch[0]), int(patch[1])
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if (
        isinstance(size, (tuple, list))
        and len(size) == 3
        and all(isinstance(d, int) and d > 0 for d in size)
    ):
        return int(size[1]), int(size[2])
    image = getattr(model, "image_size", None)  # torchvision's VisionTransformer
    if isinstance(image, int) and not isinstance(image, bool) and image > 0:
        return image, image
    return None


def adapt_stem(model: nn.Module, in_chans: int, label: str) -> str:
    """Rebuild the first convolution for in_chans input channels; returns its module name."""
    found = first_conv(model)
    if found is None:
        raise ArchBuildFailed(f"{label} has no convolution to adapt for --in-chans")
    name, conv = found
    if conv.in_channels == in_chans:  # type: ignore[attr-defined]
        return name
    if conv.groups != 1:  # type: ignore[attr-defined]
        raise ArchBuildFailed(
            f"{label}: first convolution {name} is grouped; cannot adapt it for --in-chans"
        )
    weight = conv.weight  # type: ignore[attr-defined]
    try:
        new = type(conv)(
            in_chans,
            conv.out_channels,  # type: ignore[attr-defined]
            conv.kernel_size,  # type: ignore[attr-defined]
            stride=conv.stride,  # type: ignore[attr-defined]
            padding=conv.padding,  # type: ignore[attr-defined]
            dilation=conv.dilation,  # type: ignore[attr-defined]
            bias=conv.bias is not None,  # type: ignore[attr-defined]
            padding_mode=conv.padding_mode,  # type: ignore[attr-defined]
            device=weight.device,
            dtype=weight.dtype,
        )
    except TypeError:
        raise ArchBuildFailed(
            f"{label}: first convolution {name} ({type(conv).__name__}) cannot be rebuilt for "
            "--in-chans; pass the architecture's own argument with --arch-arg"
        ) from None
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return name


def construct(
    name: str,
    arch_args: dict[str, Any] | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    seed: int | None = None,
) -> Built:
    """Build an architecture (seeded when seed is given) and say what was mapped or adapted."""
    spec = resolve(name)
    kwargs = dict(arch_args or {})
    for opt, value in (("--num-classes", num_classes), ("--in-chans", in_chans)):
        if value is not None and value < 1:
            raise UsageError(f"{opt} must be at least 1, got {value}")
    adapt = _shortcuts(spec, kwargs, num_classes, in_chans)
    _check_args(spec, kwargs)
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = spec.factory(**kwargs)
    except TypeError as exc:
        text = _first_line(exc)
        m = re.search(r"unexpected keyword argument '(\w+)'", text)
        what = f"argument {m.group(1)!r}" if m else "its arguments"
        raise ArchBuildFailed(f"{spec.label} rejected {what}: {text}") from None
    except Exception as exc:
        raise ArchBuildFailed(
            f"building {spec.label} failed ({type(exc).__name__}: {_first_line(exc)}); "
            "check --arch-arg/--num-classes/--in-chans"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise ArchBuildFailed(
            f"{spec.label} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    built = Built(model, spec, kwargs, list(spec.notes))
    for attr in ("num_classes", "in_chans"):
        value = kwargs.get(attr)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(built, attr, value)
    if in_chans is not None:
        built.in_chans = in_chans
    if adapt:
        assert in_chans is not None
        built.input_conv = adapt_stem(model, in_chans, spec.label)
        built.notes.append(
            f"{spec.label} has no in_chans argument: rebuilt its first convolution "
            f"{built.input_conv} for {in_chans} input channel(s)"
        )
    return built


def build(
    name: str,
    arch_args: dict[str, Any] | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    seed: int | None = None,
) -> nn.Module:
    """The model for an architecture name (see `construct` for what was adapted)."""
    return construct(name, arch_args, num_classes, in_chans, seed).model
