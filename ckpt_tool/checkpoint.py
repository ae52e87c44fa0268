"""Checkpoint: what a file is (format, layout), where its weights live, and its other contents.

`load(path)` reads only metadata: the zip directory and `data.pkl`, a safetensors header, an
index, or a DCP `.metadata` file. Tensor bytes stay on disk; `Checkpoint.locate` says where.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    CkptError,
    InputNotFound,
    UnreadableCheckpoint,
    UnsafeCheckpoint,
    WeightsNotFound,
)
from .formats import dcp, safetensors_io, torch_zip
from .formats.pickle_rules import DANGEROUS, NEEDS_CODE, SAFE
from .formats.safe_pickle import (
    DTYPE_SIZES,
    Inert,
    NumpyArray,
    PickleResult,
    StorageRef,
    TensorRecord,
    contiguous_stride,
    fortran_to_c,
    global_name,
    walk,
)
from .formats.survey import Finding, Mapped, Survey, survey_file
from .memory import paused_gc

# Keys under which training checkpoints keep their weights, in the order we pick a default.
WEIGHT_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "model_state",
    "weights",
    "params",
    "generator",
    "state_dict_ema",
    "model_ema",
    "ema_state_dict",
    "ema",
    "teacher",
    "student",
)
# Names that are buffers, not parameters, when the file does not say (plain state_dicts).
BUFFER_SUFFIXES = (
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "position_ids",
    "relative_position_index",
    "attn_mask",
    "anchor_grid",
    "anchors",
    "inv_freq",
)
# A pickled model whose modules are shared under many names can name exponentially many paths.
MAX_MODULE_PATHS = 200_000
# Metadata keys our safetensors output uses for the freeze state (DESIGN "Freeze state").
FROZEN_META_KEY = "ckpt.frozen"
BN_EVAL_META_KEY = "ckpt.bn_eval"
ALIASES_META_KEY = "ckpt.aliases"  # alias -> key whose bytes it shares
# In .pth files the BatchNorm eval marks live in the weights' `_metadata`, per module path:
# `sd._metadata["layer1.1"]["ckpt_bn_eval"] = True` (load_state_dict ignores unknown fields).
BN_EVAL_FIELD = "ckpt_bn_eval"


@dataclass(slots=True)
class TensorEntry:
    """One tensor of the chosen weights, by its key in that weight set."""

    key: str
    record: TensorRecord
    kind: str  # parameter | buffer | tensor

    @property
    def dtype(self) -> str:
        return self.record.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.record.shape

    @property
    def numel(self) -> int:
        return self.record.numel

    @property
    def nbytes(self) -> int:
        return self.record.nbytes


@dataclass
class Location:
    """Where a storage's bytes are: file, absolute offset, bytes available there."""

    path: Path
    offset: int
    available: int


@dataclass
class Checkpoint:
    """A checkpoint as read from disk, weights chosen, no tensor bytes loaded."""

    path: Path
    format: str
    layout: str
    size_bytes: int
    tensors: dict[str, TensorEntry]
    weight_sets: list[str] = field(default_factory=list)
    weights_key: str | None = None
    framework: str | None = None
    modules: dict[str, str] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)
    survey: Survey | None = field(default=None, repr=False)
    metadata: dict[str, str] = field(default_factory=dict)
    root: Any = None
    frozen_recorded: bool = False
    bn_eval: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    _locations: dict[str, Location] = field(default_factory=dict, repr=False)
    _zip: torch_zip.ZipIndex | None = field(default=None, repr=False)
    _legacy: dict[str, int] | None = field(default=None, repr=False)
    # a DCP folder's tensors by FQN: where each chunk's item lies (tensors.TensorReader reads
    # the plain ones without torch)
    dcp_stored: dict[str, tuple[dcp.StoredChunk, ...]] = field(default_factory=dict, repr=False)

    @property
    def zip_index(self) -> torch_zip.ZipIndex | None:
        """The zip directory (members, CRCs, data offsets) of a zip-based file."""
        return self._zip

    def open_reader(self) -> Any:
        """A TensorReader over this checkpoint (the writers' formats.writer.RecordReader)."""
        from .tensors import TensorReader

        return TensorReader(self)

    def locate(self, storage: StorageRef) -> Location:
        """The file bytes behind a storage (zip member, legacy offset, safetensors range)."""
        if storage.key in self._locations:
            return self._locations[storage.key]
        if self._zip is not None:
            info = self._zip.storage_member(storage.key)
            if info is None:
                raise UnreadableCheckpoint(f"{self.path}: storage {storage.key} is missing")
            loc = Location(self.path, self._zip.data_offset(info), info.file_size)
        elif self._legacy is not None and storage.key in self._legacy:
            loc = Location(self.path, self._legacy[storage.key], storage.nbytes)
        else:
            raise UnreadableCheckpoint(
                f"{self.path}: tensor bytes of storage {storage.key} cannot be located"
            )
        self._locations[storage.key] = loc
        return loc

    @property
    def verdict(self) -> str:
        """safe, needs code or dangerous: the one verdict every command gives this file."""
        return self.survey.verdict if self.survey is not None else SAFE

    @property
    def findings(self) -> list[Finding]:
        return self.survey.findings if self.survey is not None else []

    @property
    def dangerous(self) -> list[str]:
        """What makes the file dangerous (global names, or what is ambiguous about it)."""
        return _unique(f.name or f.message for f in self.findings if f.verdict == DANGEROUS)

    @property
    def needs_code(self) -> list[str]:
        """Globals outside the allowlist that a real load would import."""
        return _unique(f.name or f.message for f in self.findings if f.verdict == NEEDS_CODE)

    @property
    def frozen(self) -> list[str]:
        """Keys of parameters the file records as frozen (requires_grad False)."""
        if not self.frozen_recorded:
            return []
        return [
            k
            for k, t in self.tensors.items()
            if t.kind == "parameter" and not t.record.requires_grad
        ]


def _unique(items: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(items))


def counts_as_parameter(ckpt: Checkpoint, entry: TensorEntry) -> bool:
    """A parameter by what the file records (Parameters present) or else by its name; the one
    rule `inspect` and `count` share."""
    if ckpt.frozen_recorded and entry.record.quant is None:
        return entry.record.is_parameter
    # quantized weights are never nn.Parameters (they do not train), but they are the weights
    return entry.kind == "parameter"


def unique_numel(entries: Iterable[TensorEntry]) -> int:
    """Elements of distinct tensors: a tied weight listed under two keys counts once."""
    seen: set[tuple[Any, ...]] = set()
    total = 0
    for e in entries:
        rec = e.record
        if rec.view not in seen:
            seen.add(rec.view)
            total += rec.numel
    return total


# --- walking object graphs ----------------------------------------------------------------------


def _fields(obj: Any) -> dict[str, Any]:
    return dcp.fields(obj)


def is_module_record(obj: Any) -> bool:
    f = _fields(obj)
    return "_modules" in f and "_parameters" in f


def module_tensors(root: Any) -> tuple[dict[str, TensorRecord], dict[str, str], set[str]]:
    """Parameters and persistent buffers of a pickled nn.Module, by dotted name, in order.

    Also returns module path -> class name, and the keys that are buffers.
    """
    tensors: dict[str, TensorRecord] = {}
    modules: dict[str, str] = {}
    buffers: set[str] = set()
    # A module shared under two names appears under both, as state_dict() does; only a module
    # that contains itself (a cycle, possible in a hostile file) is cut off.
    stack: list[tuple[str, Any, frozenset[int]]] = [("", root, frozenset())]
    visits = 0
    while stack:
        prefix, mod, ancestors = stack.pop()
        if id(mod) in ancestors:
            continue
        visits += 1
        if visits > MAX_MODULE_PATHS:
            raise UnreadableCheckpoint(
                f"pickled model expands to more than {MAX_MODULE_PATHS:,} module paths "
                "(modules shared under many names); refusing to enumerate them"
            )
        inner = ancestors | {id(mod)}
        f = _fields(mod)
        modules[prefix.rstrip(".")] = global_name(mod) or type(mod).__name__
        for name, param in _items(f.get("_parameters")):
            if isinstance(param, TensorRecord):
                param.is_parameter = True
                tensors[prefix + name] = param
        non_persistent = f.get("_non_persistent_buffers_set") or set()
        for name, buf in _items(f.get("_buffers")):
            if isinstance(buf, TensorRecord) and name not in non_persistent:
                tensors[prefix + name] = buf
                buffers.add(prefix + name)
        subs = [
            (prefix + str(n) + ".", m, inner) for n, m in _items(f.get("_modules")) if m is not None
        ]
        stack.extend(reversed(subs))
    return tensors, modules, buffers


def _items(d: Any) -> list[tuple[str, Any]]:
    return [(str(k), v) for k, v in d.items()] if isinstance(d, dict) else []


def as_record(value: Any) -> TensorRecord | None:
    if isinstance(value, TensorRecord):
        return value
    if isinstance(value, NumpyArray):
        return value.as_record()
    return None


# Entries of a training dict that hold state, not weights, even when they hold tensors.
STATE_KEYS = frozenset(
    {
        "optimizer",
        "optimizers",
        "optimizer_states",
        "optimizer_state_dict",
        "optim",
        "optim_state",
        "lr_scheduler",
        "lr_schedulers",
        "scheduler",
        "schedulers",
        "scaler",
        "grad_scaler",
        "amp",
        "callbacks",
        "loops",
        "rng_state",
        "rng_states",
    }
)
MAX_TENSOR_PATHS = 2_000_000


def tensors_in(value: Any, numpy_top: bool = True) -> dict[str, TensorRecord]:
    """Every tensor a value holds, by dotted path (dict keys, list and tuple indices, the
    attributes of inert records, module parameters and buffers), in file order.

    A tensor reachable under two paths is listed under both (tied weights); a container is
    walked once, so cycles end. numpy arrays count as tensors only at the top level of a
    mapping (`numpy_top`): deeper ones stay data.
    """
    out: dict[str, TensorRecord] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any, bool]] = [("", value, True)]
    while stack:
        path, obj, top = stack.pop()
        rec = obj if isinstance(obj, TensorRecord) else None
        if rec is None and isinstance(obj, NumpyArray) and top and numpy_top and path:
            rec = obj.as_record()
        if rec is not None:
            if path:
                out[path] = rec
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if len(out) > MAX_TENSOR_PATHS:
            raise UnreadableCheckpoint(
                f"more than {MAX_TENSOR_PATHS:,} tensor paths; refusing to enumerate them"
            )
        prefix = f"{path}." if path else ""
        children: list[tuple[str, Any, bool]] = []
        if type(obj) in (dict, collections.OrderedDict) and _all_records(obj):
            # a plain state_dict (the common case, often of 100,000 tensors): no stack entries
            for k, v in obj.items():
                key = prefix + (k if type(k) is str else str(k))
                if key:
                    out[key] = v
            continue
        if is_module_record(obj):
            records, _, _ = module_tensors(obj)
            children = [(prefix + k, r, False) for k, r in records.items()]
        elif isinstance(obj, dict):
            children = [(prefix + str(k), v, top and not path) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple)):
            children = [(f"{prefix}{i}", v, False) for i, v in enumerate(obj)]
        elif isinstance(obj, Inert):
            items = {**_fields(obj), **{str(k): v for k, v in obj.dictitems.items()}}
            children = [(prefix + k, v, False) for k, v in items.items()]
            children += [(f"{prefix}{i}", v, False) for i, v in enumerate(obj.listitems)]
        stack.extend(reversed(children))
    return out


def _all_records(d: dict[Any, Any]) -> bool:
    for v in d.values():  # noqa: SIM110 (all() over a generator is twice this loop's time)
        if type(v) is not TensorRecord:
            return False
    return True


def _tensor_dict(value: Any) -> dict[str, TensorRecord] | None:
    """The tensors of a state_dict-like mapping (nested lists, tuples and dicts included,
    state entries such as `optimizer` left out), or None if it holds none."""
    if not isinstance(value, dict):
        return None
    if STATE_KEYS.isdisjoint(value):  # a state_dict: no copy of 100,000 entries
        return tensors_in(value) or None
    kept = {k: v for k, v in value.items() if str(k) not in STATE_KEYS}
    return tensors_in(kept) or None


def _holds_weights(value: Any) -> bool:
    if type(value) is TensorRecord:
        return False  # a tensor of a state_dict, not a set of weights
    if is_module_record(value):
        return True
    if isinstance(value, dict):
        return _tensor_dict(value) is not None
    return isinstance(value, Inert) and bool(tensors_in(value))


def _direct_tensors(value: dict[Any, Any]) -> bool:
    return any(as_record(v) is not None for v in value.values())


def _describe(value: Any) -> str:
    """A short description of a non-weight entry for reports."""
    name = global_name(value)
    if name is not None:
        return name
    if isinstance(value, (TensorRecord, NumpyArray)):
        rec = as_record(value)
        assert rec is not None
        return f"tensor {list(rec.shape)} {rec.dtype}"
    if isinstance(value, dict):
        n = sum(1 for o in walk(value) if isinstance(o, TensorRecord))
        return f"dict of {len(value)}" + (f" ({n} tensors)" if n else "")
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return type(value).__name__


def _framework(root: dict[Any, Any]) -> str | None:
    keys = root.keys()  # the names below are strings; other keys never equal them
    if "pytorch-lightning_version" in keys or "lightning_version" in keys:
        return "lightning"
    if "meta" in keys and isinstance(root.get("meta"), dict):
        return "mmengine"
    if "arch" in keys and "state_dict" in keys:
        return "timm"
    if "__author__" in keys or ("model" in keys and "iteration" in keys):
        return "detectron2"
    return None


# --- layout -----------------------------------------------------------------------------------


def _buffer_by_name(key: str, rec: TensorRecord) -> bool:
    name = key.rsplit(".", 1)[-1]
    if name in ("scale", "zero_point") and rec.numel <= 1:
        return True  # quantized modules' output quantization parameters
    return name in BUFFER_SUFFIXES or rec.dtype in ("int64", "int32", "bool")


def _entries(records: dict[str, TensorRecord], buffers: set[str] | None) -> dict[str, TensorEntry]:
    out = {}
    for key, rec in records.items():
        if buffers is not None:
            kind = "buffer" if key in buffers else "parameter"
        elif rec.is_parameter:
            kind = "parameter"
        else:
            kind = "buffer" if _buffer_by_name(key, rec) else "parameter"
        out[key] = TensorEntry(key, rec, kind)
    return out


def _from_pickle(ckpt: Checkpoint, result: PickleResult, weights: str | None) -> None:
    root = result.root
    ckpt.root = root
    records: dict[str, TensorRecord] | None = None
    buffers: set[str] | None = None
    if is_module_record(root):
        ckpt.layout = "module"
        records, ckpt.modules, buffers = module_tensors(root)
        if weights is not None:
            raise WeightsNotFound(
                f"{ckpt.path}: --weights {weights} given, but the file is a whole pickled model "
                "with a single set of weights; drop --weights"
            )
    elif isinstance(root, dict):
        ckpt.framework = _framework(root)
        candidates = [str(k) for k in root if str(k) not in STATE_KEYS and _holds_weights(root[k])]
        known = [k for k in candidates if k in WEIGHT_KEYS]
        ckpt.weight_sets = known + [k for k in candidates if k not in WEIGHT_KEYS]
        if weights is not None:
            if weights not in {str(k) for k in root} or not _holds_weights(root[weights]):
                options = ", ".join(ckpt.weight_sets) or "none"
                raise WeightsNotFound(
                    f"{ckpt.path}: no weights under {weights!r}; weight sets found: {options}"
                )
            chosen: str | None = weights
        elif known:
            chosen = min(known, key=WEIGHT_KEYS.index)
        elif not _direct_tensors(root) and len(candidates) == 1:
            chosen = candidates[0]
        else:
            chosen = None
        if chosen is not None:
            ckpt.layout = "training"
            ckpt.weights_key = chosen
            value = next(v for k, v in root.items() if str(k) == chosen)
            if is_module_record(value):
                records, ckpt.modules, buffers = module_tensors(value)
            elif isinstance(value, dict):
                records = _tensor_dict(value)
            else:
                records = tensors_in(value)
            ckpt.extras = {str(k): _describe(v) for k, v in root.items() if str(k) != chosen}
        else:
            records = _tensor_dict(root)
            if records and not _direct_tensors(root):
                ckpt.layout = "collection"  # {"G": sd, "D": sd}: several sets, none chosen
            else:
                ckpt.layout = "state_dict" if records else "other"
            ckpt.extras = {
                str(k): _describe(v)
                for k, v in root.items()
                if type(v) is not TensorRecord
                and as_record(v) is None
                and not (ckpt.layout == "collection" and _holds_weights(v))
            }
    elif isinstance(root, (Inert, list, tuple)) and tensors_in(root):
        if weights is not None:
            raise WeightsNotFound(
                f"{ckpt.path}: --weights {weights} given, but the file holds a "
                f"{_describe(root)} rather than a dict of weight sets; drop --weights"
            )
        ckpt.layout = "object"  # tensors held by an object (PyG Data, a dataclass, a list)
        records = tensors_in(root)
        ckpt.extras = {"root": _describe(root)}
    elif as_record(root) is not None:
        ckpt.layout = "tensor"
        rec = as_record(root)
        assert rec is not None
        records = {"tensor": rec}
    else:
        ckpt.layout = "other"
        ckpt.extras = {"root": _describe(root)}
        if weights is not None:
            raise WeightsNotFound(f"{ckpt.path}: no weights under {weights!r}")
    ckpt.tensors = _entries(records or {}, buffers)
    ckpt.frozen_recorded = any(t.record.is_parameter for t in ckpt.tensors.values())
    container = root.get(ckpt.weights_key) if ckpt.layout == "training" else root
    meta = getattr(container, "_metadata", None) if isinstance(container, dict) else None
    if isinstance(meta, dict):
        ckpt.bn_eval = [
            str(path)
            for path, info in meta.items()
            if isinstance(info, dict) and info.get(BN_EVAL_FIELD) is True
        ]


def _check_storages(ckpt: Checkpoint, result: PickleResult, what: str = "data.pkl") -> None:
    """Refuse tensors that claim more bytes than their record holds (mmap would over-read)."""
    if ckpt._zip is not None:
        for key, storage in result.storages.items():
            info = ckpt._zip.storage_member(storage.key)
            if info is None:
                folder = "" if "/" in storage.key else "data/"
                raise UnreadableCheckpoint(
                    f"{ckpt.path}: {what} references storage {key} but the archive has no "
                    f"record {ckpt._zip.prefix}/{folder}{storage.key}"
                )
            if storage.nbytes > info.file_size:
                raise UnreadableCheckpoint(
                    f"{ckpt.path}: storage {key} claims {storage.nbytes} bytes but its record "
                    f"holds {info.file_size}: corrupt or hostile file"
                )
    for rec in result.records:
        if rec.storage is not None:
            _check_view(ckpt, rec)


def _check_view(ckpt: Checkpoint, rec: TensorRecord) -> None:
    assert rec.storage is not None
    size = DTYPE_SIZES.get(rec.dtype)
    if size is None:
        raise UnreadableCheckpoint(f"{ckpt.path}: tensor of unknown dtype {rec.dtype!r}")
    shape, stride = rec.shape, rec.stride
    if len(stride) != len(shape) or (stride and min(stride) < 0):
        raise UnreadableCheckpoint(f"{ckpt.path}: tensor with malformed strides {rec.stride}")
    if rec.numel == 0:
        return
    extent = rec.offset + 1
    for d, s in zip(shape, stride, strict=True):
        extent += (d - 1) * s
    if extent * size > rec.storage.nbytes:
        raise UnreadableCheckpoint(
            f"{ckpt.path}: a tensor of shape {list(rec.shape)} reaches past the end of its "
            f"storage {rec.storage.key}: corrupt or hostile file"
        )


# --- formats ----------------------------------------------------------------------------------


def detect(path: Path) -> str:
    """The kind of input: a folder's (dcp, sharded, hf-folder), or "file" (read by content)."""
    if not path.exists():
        raise InputNotFound(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / ".metadata").is_file():
            return "dcp"
        if _index_in(path) is not None:
            return "sharded"
        if _single_weights_in(path) is not None:
            return "hf-folder"
        raise InputNotFound(
            f"{path}: folder holds no checkpoint we know (no .metadata, *.index.json, "
            "model.safetensors or pytorch_model.bin); pass the checkpoint file itself"
        )
    if path.name.endswith(".index.json"):
        return "sharded"
    if not path.is_file():
        raise UnreadableCheckpoint(
            f"{path}: not a regular file (a pipe, device or socket); pass a checkpoint file"
        )
    return "file"


def _index_in(folder: Path) -> Path | None:
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.index.json"))
    return found[0] if len(found) == 1 else None


def _single_weights_in(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    return None


def _main_pickle(ckpt: Checkpoint, survey: Survey) -> PickleResult:
    """The pickle torch.load would unpickle, read to its end; else the one-line refusal."""
    main = survey.main
    if main is not None and main.complete:
        return main
    if survey.verdict == DANGEROUS:
        names = ", ".join(ckpt.dangerous[:3])
        raise UnsafeCheckpoint(
            f"{ckpt.path}: reaches dangerous content ({names}) and cannot be read; refused. "
            f"Nothing was run. See `ckpt scan {ckpt.path}` for details"
        )
    errors = survey.errors
    if errors:
        raise UnreadableCheckpoint(f"{ckpt.path}: {errors[0].message}")
    raise UnreadableCheckpoint(f"{ckpt.path}: {survey.main_member or 'the pickle'} cannot be read")


def _load_zip(ckpt: Checkpoint, survey: Survey, weights: str | None) -> None:
    assert survey.zip is not None
    index = survey.zip.index
    ckpt._zip = index
    if ckpt.format == "torch-export":
        _load_pt2(ckpt, survey, weights)
        return
    if not index.prefix or f"{index.prefix}/data.pkl" not in index.members:
        raise UnreadableCheckpoint(
            f"{ckpt.path}: zip archive without a data.pkl record where torch looks for it "
            f"({index.prefix or 'no folder'}/data.pkl): not a torch checkpoint"
        )
    result = _main_pickle(ckpt, survey)
    order = index.members.get(f"{index.prefix}/byteorder")
    if order is not None:
        index.byteorder = _member_text(ckpt, survey, order) or "little"
    if index.byteorder != "little":
        raise UnreadableCheckpoint(
            f"{ckpt.path}: saved on a {index.byteorder}-endian machine; not supported yet"
        )
    for info in index.members.values():
        if info.compress_type != 0 and not torch_zip.deflated_by_torchscript(info.filename):
            raise UnreadableCheckpoint(
                f"{ckpt.path}: member {info.filename!r} is compressed; torch checkpoints "
                "store members uncompressed (was the file re-zipped?)"
            )
    _check_storages(ckpt, result)
    if ckpt.format == "torchscript":
        _load_torchscript(ckpt, survey, result, weights)
        return
    _from_pickle(ckpt, result, weights)


# --- TorchScript ---------------------------------------------------------------------------

_CLASS_DECL = re.compile(r"^class (\w+)\(Module\):\n((?:  .*\n)*)", re.M)
_NAMES = re.compile(r'"([^"]*)"')


def _declared_kinds(ckpt: Checkpoint, survey: Survey) -> dict[str, tuple[set[str], set[str]]]:
    """`__torch__` class -> (parameter names, buffer names), from the archive's code/ files
    (`__parameters__ = ["weight", "bias", ]`): read as text, never compiled."""
    assert survey.zip is not None
    index = survey.zip.index
    code = f"{index.prefix}/code/"
    out: dict[str, tuple[set[str], set[str]]] = {}
    with Mapped(ckpt.path) as buf:
        for name, info in index.members.items():
            if not name.startswith(code) or not name.endswith(".py"):
                continue
            try:
                text = torch_zip.member_bytes(buf, survey.zip, info)[0].decode("utf-8", "replace")
            except CkptError:
                continue
            module = name[len(code) : -len(".py")].replace("/", ".")
            for cls, body in _CLASS_DECL.findall(text):
                params = re.search(r"^  __parameters__ = \[(.*)\]", body, re.M)
                buffers = re.search(r"^  __buffers__ = \[(.*)\]", body, re.M)
                out[f"{module}.{cls}"] = (
                    set(_NAMES.findall(params.group(1))) if params else set(),
                    set(_NAMES.findall(buffers.group(1))) if buffers else set(),
                )
    return out


def _is_script_module(obj: Any) -> bool:
    name = global_name(obj)
    return isinstance(obj, Inert) and name is not None and name.startswith("__torch__.")


def script_tensors(
    root: Any, declared: dict[str, tuple[set[str], set[str]]]
) -> tuple[dict[str, TensorRecord], dict[str, str], set[str]]:
    """Parameters and buffers of a TorchScript module tree, named as torch.jit.load(...)
    .state_dict() names them: each module's own tensors, then its submodules, in attribute
    order (a module shared under two names appears under both; only cycles are cut)."""
    tensors: dict[str, TensorRecord] = {}
    modules: dict[str, str] = {}
    buffers: set[str] = set()
    stack: list[tuple[str, Any, frozenset[int]]] = [("", root, frozenset())]
    visits = 0
    while stack:
        prefix, mod, ancestors = stack.pop()
        if id(mod) in ancestors:
            continue
        visits += 1
        if visits > MAX_MODULE_PATHS:
            raise UnreadableCheckpoint(
                f"scripted model expands to more than {MAX_MODULE_PATHS:,} module paths"
            )
        cls = global_name(mod) or ""
        modules[prefix.rstrip(".")] = cls.removeprefix("__torch__.")
        params, bufs = declared.get(cls, (set(), set()))
        subs = []
        for name, value in _fields(mod).items():
            if isinstance(value, TensorRecord):
                known = name in params or name in bufs
                if known or value.requires_grad:  # undeclared: a parameter if it trains
                    tensors[prefix + name] = value
                    if name in bufs or (not known and not value.requires_grad):
                        buffers.add(prefix + name)
                    else:
                        value.is_parameter = True
            elif _is_script_module(value):
                subs.append((f"{prefix}{name}.", value, ancestors | {id(mod)}))
        stack.extend(reversed(subs))
    return tensors, modules, buffers


def _load_torchscript(
    ckpt: Checkpoint, survey: Survey, result: PickleResult, weights: str | None
) -> None:
    """A TorchScript archive's weights from data.pkl (the module tree) and, with
    `--weights constants`, the tensors of constants.pkl; its code is never run."""
    assert survey.zip is not None
    ckpt.root = result.root
    ckpt.layout = "module"
    if not _is_script_module(result.root):
        raise UnreadableCheckpoint(f"{ckpt.path}: TorchScript data.pkl holds no module")
    records, ckpt.modules, buffers = script_tensors(result.root, _declared_kinds(ckpt, survey))
    constants = dict(survey.pickles).get(f"{survey.zip.index.prefix}/constants.pkl")
    consts: dict[str, TensorRecord] = {}
    if constants is not None and constants.complete:
        for ref in constants.storages.values():
            ref.key = f"constants/{ref.key}"
        _check_storages(ckpt, constants, "constants.pkl")
        root = constants.root
        items = root if isinstance(root, (list, tuple)) else []
        consts = {str(i): t for i, t in enumerate(items) if isinstance(t, TensorRecord)}
    ckpt.weight_sets = ["state_dict"] + (["constants"] if consts else [])
    if weights == "constants" and consts:
        ckpt.weights_key = "constants"
        records, buffers = consts, set(consts)
    elif weights not in (None, "state_dict"):
        raise WeightsNotFound(
            f"{ckpt.path}: no weights under {weights!r}; a TorchScript archive has "
            f"{' and '.join(ckpt.weight_sets)}"
        )
    ckpt.tensors = _entries(records, buffers)
    ckpt.frozen_recorded = False
    ckpt.extras = {"constants": f"{len(consts)} tensors"} if consts else {}


# --- torch.export (.pt2) -------------------------------------------------------------------

# torch.export's ScalarType numbers (torch/_export/serde/schema.py)
PT2_DTYPES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    10: "complex64",
    11: "complex128",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    29: "float8_e4m3fn",
    30: "float8_e5m2",
    31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz",
    34: "uint32",
    35: "uint64",
}


def _pt2_config(ckpt: Checkpoint, survey: Survey, name: str) -> dict[str, Any]:
    assert survey.zip is not None
    info = survey.zip.index.members.get(f"{survey.zip.index.prefix}/{name}")
    if info is None:
        return {}
    with Mapped(ckpt.path) as buf:
        text = torch_zip.member_bytes(buf, survey.zip, info)[0]
    try:
        config = json.loads(text).get("config")
    except (ValueError, AttributeError):
        raise UnreadableCheckpoint(f"{ckpt.path}: {name} is not valid JSON") from None
    return config if isinstance(config, dict) else {}


def _pt2_records(
    ckpt: Checkpoint, config: dict[str, Any], folder: str, prefix: str
) -> dict[str, TensorRecord]:
    out: dict[str, TensorRecord] = {}
    storages: dict[str, StorageRef] = {}
    for fqn, meta in config.items():
        if not isinstance(meta, dict):
            continue
        tm = meta.get("tensor_meta")
        path_name = meta.get("path_name")
        if meta.get("use_pickle") or not isinstance(tm, dict) or not isinstance(path_name, str):
            raise UnreadableCheckpoint(
                f"{ckpt.path}: {fqn!r} is stored as a pickled tensor in the .pt2 archive; "
                "not supported yet"
            )
        dtype = PT2_DTYPES.get(tm.get("dtype", 0))
        try:
            shape = tuple(int(d["as_int"]) for d in tm["sizes"])
            stride = tuple(int(d["as_int"]) for d in tm["strides"])
            offset = int(tm["storage_offset"]["as_int"])
        except (KeyError, TypeError, ValueError):
            raise UnreadableCheckpoint(
                f"{ckpt.path}: {fqn!r} has a malformed tensor_meta"
            ) from None
        if dtype is None:
            raise UnreadableCheckpoint(f"{ckpt.path}: {fqn!r} has a dtype ckpt does not read")
        key = f"{folder}/{path_name}"
        info = ckpt._zip.storage_member(key) if ckpt._zip is not None else None
        if info is None:
            raise UnreadableCheckpoint(f"{ckpt.path}: {fqn!r}: record {key} is missing")
        ref = storages.get(key)
        if ref is None:
            ref = storages[key] = StorageRef(
                key, dtype, "cpu", info.file_size // max(1, DTYPE_SIZES[dtype])
            )
        rec = TensorRecord(ref, offset, shape, stride, dtype, bool(tm.get("requires_grad")))
        rec.is_parameter = bool(meta.get("is_param"))
        _check_view(ckpt, rec)
        out[prefix + str(fqn)] = rec
    return out


def _load_pt2(ckpt: Checkpoint, survey: Survey, weights: str | None) -> None:
    """A torch.export archive: its weights (and, with `--weights constants`, its lifted
    constants) from the archive's own JSON index; raw tensor records read in place."""
    assert survey.zip is not None
    if survey.verdict == DANGEROUS:
        _main_pickle(ckpt, Survey(ckpt.path, survey.format, survey.findings))
    index = survey.zip.index
    models = sorted(
        n[len(f"{index.prefix}/models/") : -len(".json")]
        for n in index.members
        if n.startswith(f"{index.prefix}/models/") and n.endswith(".json")
    )
    if not models:
        raise UnreadableCheckpoint(f"{ckpt.path}: .pt2 archive without models/*.json")
    sets: dict[str, dict[str, TensorRecord]] = {"weights": {}, "constants": {}}
    for model in models:
        prefix = f"{model}." if len(models) > 1 else ""
        for kind, folder in (("weights", "data/weights"), ("constants", "data/constants")):
            config = _pt2_config(ckpt, survey, f"{folder}/{model}_{kind}_config.json")
            sets[kind].update(_pt2_records(ckpt, config, folder, prefix))
    ckpt.layout = "state_dict"
    ckpt.weight_sets = [k for k, v in sets.items() if v]
    chosen = weights or "weights"
    if chosen not in sets or (weights is not None and not sets[chosen]):
        raise WeightsNotFound(
            f"{ckpt.path}: no weights under {weights!r}; this .pt2 has "
            f"{', '.join(ckpt.weight_sets) or 'none'}"
        )
    ckpt.weights_key = chosen if weights is not None else None
    chosen_set = sets[chosen]
    ckpt.tensors = _entries(chosen_set, {k for k, r in chosen_set.items() if not r.is_parameter})
    ckpt.frozen_recorded = any(r.is_parameter for r in chosen_set.values())
    ckpt.extras = {"models": ", ".join(models)}
    if sets["constants"] and chosen != "constants":
        ckpt.extras["constants"] = f"{len(sets['constants'])} tensors (--weights constants)"


def _member_text(ckpt: Checkpoint, survey: Survey, info: Any) -> str:
    assert survey.zip is not None
    with open(ckpt.path, "rb") as f:
        f.seek(survey.zip.index.data_offset(info))
        return f.read(min(info.file_size, 64)).decode("ascii", "replace").strip()


def _load_pickle(ckpt: Checkpoint, survey: Survey, weights: str | None) -> None:
    result = _main_pickle(ckpt, survey)
    if survey.legacy is not None:
        ckpt._legacy = survey.legacy.offsets
        for rec in result.records:
            if rec.storage is not None:
                _check_view(ckpt, rec)
    elif ckpt.format == "torch-legacy":
        raise UnreadableCheckpoint(f"{ckpt.path}: {survey.errors[0].message}")
    elif result.storages:
        raise UnreadableCheckpoint(
            f"{ckpt.path}: pickle references tensor storages but has no legacy torch header"
        )
    _from_pickle(ckpt, result, weights)


def _load_numpy(ckpt: Checkpoint, survey: Survey, weights: str | None) -> None:
    """`.npy` and `.npz` files: numpy arrays read in place (object arrays are refused)."""
    if survey.errors:
        raise UnreadableCheckpoint(f"{ckpt.path}: {survey.errors[0].message}")
    if weights is not None:
        raise WeightsNotFound(f"{ckpt.path}: --weights is not supported for numpy files")
    records: dict[str, TensorRecord] = {}
    for key, arr in survey.npy.items():
        if arr.dtype is None:
            raise UnreadableCheckpoint(
                f"{ckpt.path}: array {key!r} has dtype {arr.descr!r}, which ckpt does not read"
            )
        if arr.big_endian:
            raise UnreadableCheckpoint(
                f"{ckpt.path}: array {key!r} is big-endian; rewrite it with numpy "
                "(arr.astype(arr.dtype.newbyteorder('<'))) first"
            )
        numel = 1
        for d in arr.shape:
            numel *= d
        storage = StorageRef(f"npy:{key}", arr.dtype, "cpu", numel)
        if arr.data_offset >= 0:
            ckpt._locations[storage.key] = Location(
                ckpt.path, arr.data_offset, numel * DTYPE_SIZES[arr.dtype]
            )
        stride = (
            tuple(reversed(contiguous_stride(tuple(reversed(arr.shape)))))
            if arr.fortran
            else contiguous_stride(arr.shape)
        )  # Fortran order: the first index varies fastest
        if arr.inline is not None:  # compressed .npz member: its bytes, inflated, in C order
            data = arr.inline[: numel * DTYPE_SIZES[arr.dtype]]
            if arr.fortran and len(arr.shape) > 1:
                data = fortran_to_c(data, arr.shape, DTYPE_SIZES[arr.dtype])
            records[key] = TensorRecord(
                None, 0, arr.shape, contiguous_stride(arr.shape), arr.dtype, inline=data,
                rebuild="numpy",
            )  # fmt: skip
            continue
        records[key] = TensorRecord(storage, 0, arr.shape, stride, arr.dtype, rebuild="numpy")
    if not records:
        raise UnreadableCheckpoint(f"{ckpt.path}: numpy file holds no arrays ckpt can read")
    ckpt.layout = "tensor" if ckpt.format == "numpy" else "state_dict"
    ckpt.tensors = _entries(records, None)


def _load_file(ckpt: Checkpoint, weights: str | None) -> None:
    """Any file: one survey of its bytes decides the format and the verdict; then its layout.

    A dangerous file whose layout cannot be read is refused as dangerous, not as damaged:
    the verdict is what a user must not miss.
    """
    survey = survey_file(ckpt.path)
    ckpt.survey = survey
    ckpt.format = survey.format
    try:
        _read_layout(ckpt, survey, weights)
    except (UnreadableCheckpoint, WeightsNotFound):
        if survey.verdict != DANGEROUS:
            raise
        _main_pickle(ckpt, Survey(ckpt.path, survey.format, survey.findings))


def _read_layout(ckpt: Checkpoint, survey: Survey, weights: str | None) -> None:
    if survey.format in ("torch-zip", "torchscript", "torch-export"):
        _load_zip(ckpt, survey, weights)
    elif survey.format in ("pickle", "torch-legacy"):
        _load_pickle(ckpt, survey, weights)
    elif survey.format in ("numpy", "numpy-zip"):
        _load_numpy(ckpt, survey, weights)
    elif survey.format == "safetensors":
        _load_safetensors(ckpt, [ckpt.path], weights)
    elif survey.format == "torch-legacy-tar":
        if survey.verdict == DANGEROUS:
            _main_pickle(ckpt, Survey(ckpt.path, survey.format, survey.findings))
        raise UnreadableCheckpoint(
            f"{ckpt.path}: legacy tar checkpoint (torch before 0.1.10); not supported yet: "
            "convert it with torch.load(weights_only=False) and torch.save if you trust it"
        )
    else:
        _main_pickle(ckpt, survey)


def _safetensors_records(
    ckpt: Checkpoint, header: safetensors_io.STHeader, records: dict[str, TensorRecord]
) -> None:
    for t in header.tensors:
        numel = t.nbytes // DTYPE_SIZES[t.dtype] if DTYPE_SIZES.get(t.dtype) else t.nbytes
        storage_key = f"{header.path.name}:{t.name}"
        storage = StorageRef(storage_key, t.dtype, "cpu", numel)
        ckpt._locations[storage_key] = Location(header.path, t.start, t.nbytes)
        records[t.name] = TensorRecord(storage, 0, t.shape, contiguous_stride(t.shape), t.dtype)


def _apply_st_metadata(ckpt: Checkpoint) -> None:
    frozen = _json_list(ckpt.metadata.get(FROZEN_META_KEY))
    if frozen is not None:
        ckpt.frozen_recorded = True
        for key, entry in ckpt.tensors.items():
            if entry.kind == "parameter":
                entry.record.is_parameter = True
                entry.record.requires_grad = key not in frozen
    ckpt.bn_eval = _json_list(ckpt.metadata.get(BN_EVAL_META_KEY)) or []


def _json_dict(text: str | None) -> dict[str, str]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _json_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def _load_safetensors(ckpt: Checkpoint, files: list[Path], weights: str | None) -> None:
    if weights is not None:
        raise WeightsNotFound(
            f"{ckpt.path}: --weights {weights} given, but safetensors files hold a single set "
            "of weights; drop --weights"
        )
    records: dict[str, TensorRecord] = {}
    aliases: dict[str, str] = {}
    for f in files:
        header = safetensors_io.read_header(f)
        if not ckpt.metadata:
            ckpt.metadata = dict(header.metadata)
        _safetensors_records(ckpt, header, records)
        aliases.update(_json_dict(header.metadata.get(ALIASES_META_KEY)))
    # tied weights written once by our writer come back as one shared tensor under each name
    for alias, target in aliases.items():
        if target in records and alias not in records:
            records[alias] = records[target]
    ckpt.layout = "state_dict"
    ckpt.tensors = _entries(records, None)
    ckpt.files = files
    _apply_st_metadata(ckpt)


def _load_sharded(ckpt: Checkpoint, index_path: Path, weights: str | None) -> None:
    index = safetensors_io.read_index(index_path)
    shard_paths = [index_path.parent / s for s in index.shards]
    if all(p.name.endswith(".safetensors") for p in shard_paths):
        ckpt.format = "safetensors-sharded"
        _load_safetensors(ckpt, shard_paths, weights)
        # index order is the HF convention; keep the key order the index gives
        missing = [k for k in index.weight_map if k not in ckpt.tensors]
        if missing:
            raise UnreadableCheckpoint(
                f"{index_path}: key {missing[0]!r} is in the index but not in its shard"
            )
        ckpt.tensors = {k: ckpt.tensors[k] for k in index.weight_map} | ckpt.tensors
    else:
        raise UnreadableCheckpoint(
            f"{index_path}: sharded .bin checkpoints are not supported yet; convert each shard "
            "with `ckpt convert`"
        )
    ckpt.metadata = {**ckpt.metadata, **{f"index.{k}": str(v) for k, v in index.metadata.items()}}
    ckpt.files = [index_path, *shard_paths]


def _load_dcp(ckpt: Checkpoint, weights: str | None) -> None:
    """A DCP folder. Saved as `dcp.save({"model": ..., "optim": ...})` (the tutorials' way)
    it is a training layout whose weight sets are the top-level entries; tensors are read
    one batch at a time through torch's own DCP reader."""
    index = dcp.read_dcp(ckpt.path)
    ckpt.survey = index.survey
    ckpt.files = sorted(p for p in ckpt.path.iterdir() if p.is_file())
    nested = [e for e in index.tensors if len(e.path) > 1]
    groups = list(dict.fromkeys(e.path[0] for e in nested))
    candidates = [g for g in groups if g not in STATE_KEYS]
    if weights is not None:
        if weights not in groups:
            raise WeightsNotFound(
                f"{ckpt.path}: no weights under {weights!r}; weight sets found: "
                f"{', '.join(groups) or 'none (a flat state_dict)'}"
            )
        chosen: str | None = weights
    elif any(g in WEIGHT_KEYS for g in candidates):
        chosen = min((g for g in candidates if g in WEIGHT_KEYS), key=WEIGHT_KEYS.index)
    else:
        chosen = candidates[0] if len(candidates) == 1 else None
    records: dict[str, TensorRecord] = {}
    for e in index.tensors:
        if chosen is not None and (len(e.path) < 2 or e.path[0] != chosen):
            continue
        name = ".".join(e.path[1:]) if chosen is not None else e.key
        records[name] = TensorRecord(
            None, 0, e.shape, contiguous_stride(e.shape), e.dtype, rebuild="dcp", metadata=e.key
        )
    ckpt.dcp_stored = {e.key: e.stored for e in index.tensors if e.stored}
    ckpt.weight_sets = groups
    if chosen is not None:
        ckpt.layout, ckpt.weights_key = "training", chosen
        counts: dict[str, int] = {}
        for e in index.tensors:
            group = e.path[0] if len(e.path) > 1 else e.key
            if group != chosen:
                counts[group] = counts.get(group, 0) + 1
        ckpt.extras = {g: f"{n} tensors" for g, n in counts.items()}
        others = [k for k in index.other_items if not k.startswith(f"{chosen}.")]
        if others:
            ckpt.extras["non-tensor items"] = f"{len(others)} ({', '.join(others[:3])} ...)"
    else:
        ckpt.layout = "state_dict"
        ckpt.extras = dict.fromkeys(index.other_items, "non-tensor item")
    ckpt.tensors = _entries(records, None)


def load(path: str | Path, weights: str | None = None) -> Checkpoint:
    """Read a checkpoint's metadata (never its tensor bytes) and choose its weights."""
    with paused_gc():
        return _load(Path(path), weights)


def _load(p: Path, weights: str | None) -> Checkpoint:
    fmt = detect(p)
    size = (
        sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        if p.is_dir()
        else p.stat().st_size
    )
    ckpt = Checkpoint(path=p, format=fmt, layout="state_dict", size_bytes=size, tensors={})
    try:
        if fmt == "file":
            _load_file(ckpt, weights)
        elif fmt == "sharded":
            _load_sharded(ckpt, p if p.is_file() else _index_in(p) or p, weights)
        elif fmt == "dcp":
            _load_dcp(ckpt, weights)
        elif fmt == "hf-folder":
            inner = _single_weights_in(p)
            assert inner is not None
            sub = _load(inner, weights)
            sub.path, sub.format = p, f"hf-folder ({sub.format})"
            config = p / "config.json"
            if config.is_file():
                sub.metadata = {**sub.metadata, "config": config.name}
            sub.size_bytes = size
            return sub
    except OSError as exc:
        raise UnreadableCheckpoint(f"{p}: cannot read ({exc.strerror or exc})") from None
    return ckpt
