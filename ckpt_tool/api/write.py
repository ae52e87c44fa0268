"""The write commands as functions: each builds a WritePlan and hands it to output.write."""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool import progress
from ckpt_tool.checkpoint import Checkpoint
from ckpt_tool.edit import (
    Output,
    apply_plan,
    non_tensor_entries,
    rebuild,
    refuse_dangerous,
    refuse_drops,
    weight_items,
)
from ckpt_tool.errors import (
    EXIT_CHECK_FAILED,
    CheckFailed,
    OutputRefused,
    SurgeryError,
    UsageError,
    WeightsNotFound,
)
from ckpt_tool.memory import paused_gc
from ckpt_tool.output.naming import is_folder_output, resolve_output
from ckpt_tool.output.options import DEFAULT_MIN_COVERAGE, PathLike, WriteArgs, WriteOptions
from ckpt_tool.output.report import WriteReport
from ckpt_tool.output.write import WritePlan, unwritten, write
from ckpt_tool.surgery.rename import RenamePlan, add_plan, regex_plan, strip_plan

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ckpt_tool.casting import Casting
    from ckpt_tool.reports import (
        CastReport,
        ConvertDetails,
        DropDetails,
        ExtractDetails,
        MergeDetails,
        RenameDetails,
        TransplantDetails,
    )


from .read import loaded


def write_options(args: WriteArgs) -> WriteOptions:
    out = args.get("output")
    return WriteOptions(
        output=Path(out) if out is not None else None,
        force=args.get("force", False),
        in_place=args.get("in_place", False),
        dry_run=args.get("dry_run", False),
        verify=args.get("verify", True),
        keep_device=args.get("keep_device", False),
    )


# --- key surgery -------------------------------------------------------------------------------


def _rename_details(plan: RenamePlan) -> RenameDetails:
    return {
        "total_keys": len(plan.pairs),
        "changed": len(plan.changed),
        "unchanged": len(plan.pairs) - len(plan.changed),
        "groups": plan.groups(),
        "changes": [{"from": a, "to": b} for a, b in plan.changed],
        "unmatched_maps": plan.unmatched,
        "notes": plan.notes,
    }


@paused_gc()
def strip_module(
    path: PathLike,
    *,
    prefix: str | None = None,
    partial: bool = False,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Remove DataParallel/DDP `module.` (and torch.compile `_orig_mod.`) from every key."""
    ckpt = loaded(path, weights)
    plan = strip_plan([k for k, _ in weight_items(ckpt)], prefix, partial, ckpt.framework)
    return write(
        WritePlan("strip-module", ckpt, apply_plan(ckpt, plan), "stripped", _rename_details(plan)),
        write_options(options),
    )


@paused_gc()
def add_module(
    path: PathLike,
    *,
    prefix: str | None = None,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Add `module.` (or prefix) to every key, to load into a DataParallel/DDP model."""
    ckpt = loaded(path, weights)
    plan = add_plan([k for k, _ in weight_items(ckpt)], prefix or "module.")
    out = apply_plan(ckpt, plan, add_root=True)
    return write(
        WritePlan("add-module", ckpt, out, "module", _rename_details(plan)),
        write_options(options),
    )


@paused_gc()
def rename(
    path: PathLike,
    maps: Sequence[str],
    *,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Rename keys with regular expressions ('REGEX=REPLACEMENT'), applied in order."""
    ckpt = loaded(path, weights)
    plan = regex_plan([k for k, _ in weight_items(ckpt)], list(maps))
    return write(
        WritePlan("rename", ckpt, apply_plan(ckpt, plan), "renamed", _rename_details(plan)),
        write_options(options),
    )


def select_items(
    items: list[tuple[str, Any]], globs: Sequence[str]
) -> tuple[list[tuple[str, Any]], list[str]]:
    """Items whose key matches one of the globs, and the keys left out; every glob must
    match something."""
    used = dict.fromkeys(globs, False)
    kept: list[tuple[str, Any]] = []
    left: list[str] = []
    for key, value in items:
        hit = next((g for g in globs if fnmatch.fnmatchcase(key, g)), None)
        if hit is None:
            left.append(key)
        else:
            used[hit] = True
            kept.append((key, value))
    unused = [g for g, u in used.items() if not u]
    if unused:
        raise SurgeryError(
            f"--keep {unused[0]!r} matches no key (keys look like "
            f"{', '.join(repr(k) for k, _ in items[:3])})"
        )
    return kept, left


@paused_gc()
def extract(
    path: PathLike,
    *,
    keep: Sequence[str] = (),
    strip_prefix: str | None = None,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Only the weights, as a bare state_dict (optimizer, epoch ... dropped and listed)."""
    ckpt = loaded(path, weights, rewrite=False)
    items = weight_items(ckpt)
    left_out: list[str] = []
    if keep:
        items, left_out = select_items(items, keep)
    meta_fn = None
    strip_notes: list[str] = []
    if strip_prefix is not None:
        plan = strip_plan(
            [k for k, _ in items],
            strip_prefix,
            partial=False,
            partial_hint=f"keep only those with --keep '{strip_prefix}*'",
        )
        strip_notes = plan.notes
        mapping = dict(plan.pairs)
        items = [(mapping.get(k, k), v) for k, v in items]
        meta_fn = plan.meta_fn
    out = rebuild(ckpt, items, meta_fn, weights_only=True)
    out.notes += strip_notes
    out.allow_drops = True  # extract keeps the tensors and lists what it drops
    if not out.weights:
        raise WeightsNotFound(f"{ckpt.path}: no tensors to extract")
    details: ExtractDetails = {
        "total_keys": len(out.weights),
        "tensors": len(out.weights),
        "dropped": [str(k) for k in ckpt.extras] if ckpt.layout == "training" else [],
        "left_out": left_out,
        "strip_prefix": strip_prefix,
        "layout": ckpt.layout,
    }
    if left_out:
        out.notes.append(f"--keep left out {len(left_out)} keys (e.g. {', '.join(left_out[:3])})")
    return write(
        WritePlan("extract", ckpt, out, "weights", details, in_place_ok=False),
        write_options(options),
    )


@paused_gc()
def drop(
    path: PathLike,
    patterns: Sequence[str],
    *,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Remove weights by glob, or training-checkpoint entries by name; keep the rest."""
    ckpt = loaded(path, weights)
    entries = [str(k) for k in ckpt.root] if ckpt.layout == "training" else []
    items = weight_items(ckpt)
    gone_entries: list[str] = []
    gone_keys: list[str] = []
    for pattern in patterns:
        entries_hit = [
            e for e in entries if e != ckpt.weights_key and fnmatch.fnmatchcase(e, pattern)
        ]
        keys_hit = [k for k, _ in items if fnmatch.fnmatchcase(k, pattern)]
        if not entries_hit and not keys_hit:
            shown = ", ".join(repr(e) for e in entries[:6]) or ", ".join(
                repr(k) for k, _ in items[:3]
            )
            raise SurgeryError(f"{ckpt.path}: {pattern!r} matches nothing (the file holds {shown})")
        gone_entries += [e for e in entries_hit if e not in gone_entries]
        gone_keys += [k for k in keys_hit if k not in gone_keys]
    gone = set(gone_keys)
    kept = [(k, v) for k, v in items if k not in gone]
    if not kept:
        raise SurgeryError(f"{ckpt.path}: the patterns would remove every weight; use extract")
    out = rebuild(ckpt, kept)
    root_entries = {str(k): v for k, v in ckpt.root.items()} if isinstance(ckpt.root, dict) else {}
    for entry in gone_entries:
        for k in [k for k in out.root if str(k) == entry]:
            del out.root[k]
    saved = _tensor_bytes([root_entries[e] for e in gone_entries]) + _tensor_bytes(
        [v for k, v in items if k in gone]
    )
    details: DropDetails = {
        "dropped_entries": gone_entries,
        "dropped_keys": gone_keys,
        "bytes_saved": saved,
        "tensors": len(out.weights),
    }
    out.notes.insert(
        0,
        f"dropped {len(gone_entries)} entries ({', '.join(gone_entries) or '-'}) and "
        f"{len(gone_keys)} weight keys; about {saved:,} bytes of tensors less",
    )
    return write(WritePlan("drop", ckpt, out, "dropped", details), write_options(options))


def _tensor_bytes(values: list[Any]) -> int:
    """Bytes of the distinct storages the values hold."""
    from ckpt_tool.formats.safe_pickle import TensorRecord, walk

    seen: set[int] = set()
    total = 0
    for obj in walk(values):
        if (
            isinstance(obj, TensorRecord)
            and obj.storage is not None
            and id(obj.storage) not in seen
        ):
            seen.add(id(obj.storage))
            total += obj.storage.nbytes
    return total


# --- freeze ------------------------------------------------------------------------------------


@paused_gc()
def freeze(
    path: PathLike,
    patterns: Sequence[str],
    *,
    mode: str = "freeze",
    regex: bool = False,
    bn_eval: bool = False,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Freeze parameters by name (mode 'freeze'), make them trainable ('unfreeze'), or freeze
    everything but them ('only'); recorded in the output file."""
    from ckpt_tool.apply import freeze_checkpoint, freeze_report, parameter_state
    from ckpt_tool.checkpoint import FROZEN_META_KEY
    from ckpt_tool.surgery.freeze import batchnorm_layers, plan_freeze

    if mode not in ("freeze", "unfreeze", "only"):
        raise UsageError(f"mode {mode!r}: use freeze, unfreeze or only")
    ckpt = loaded(path, weights)
    params, others = parameter_state(ckpt)
    plan = plan_freeze(
        params,
        others,
        list(patterns),
        where=str(ckpt.path),
        mode=mode,
        regex=regex,
        bn_layers=batchnorm_layers(ckpt.tensors, ckpt.modules),
        bn_eval=ckpt.bn_eval,
        keep_bn_eval=bn_eval,
    )
    out = freeze_checkpoint(ckpt, plan)
    out.format_notes.setdefault("pth", []).append(
        "requires_grad is stored on each parameter (written as nn.Parameter); "
        "ckpt_tool.apply_freeze(model, {path}) applies it to a live model"
    )
    out.format_notes.setdefault("safetensors", []).append(
        f"safetensors tensors carry no requires_grad: the frozen names are stored in the "
        f"header's __metadata__[{FROZEN_META_KEY!r}]; ckpt_tool.apply_freeze(model, {{path}}) "
        "applies them"
    )
    tag = "unfrozen" if mode == "unfreeze" else "frozen"
    return write(
        WritePlan("freeze", ckpt, out, tag, freeze_report(ckpt, plan)), write_options(options)
    )


# --- cast and convert --------------------------------------------------------------------------

_SHORT = {
    "float16": "fp16",
    "bfloat16": "bf16",
    "float32": "fp32",
    "float64": "fp64",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8e5m2",
}


def _casting(
    ckpt: Checkpoint,
    dtype: str,
    keep: Sequence[str],
    keep_norm: bool,
    strict: bool,
    fp8_scale: bool,
) -> Casting:
    from ckpt_tool.casting import cast_weights
    from ckpt_tool.formats.safe_pickle import view_key
    from ckpt_tool.surgery.cast import FP8_MAX, parse_dtype, plan_cast

    entries = [(k, e.dtype, e.shape) for k, e in ckpt.tensors.items()]
    target = parse_dtype(dtype)
    if fp8_scale and target not in FP8_MAX:
        raise UsageError(f"--fp8-scale needs an fp8 --dtype (fp8_e4m3fn or fp8_e5m2), not {dtype}")
    views: dict[Any, list[str]] = {}
    for k, e in ckpt.tensors.items():
        views.setdefault(view_key(e.record), []).append(k)
    ties = [keys for keys in views.values() if len(keys) > 1]
    plan = plan_cast(entries, target, list(keep), keep_norm, ties=ties)
    return cast_weights(ckpt, plan, strict, fp8_scale)


def _cast_warnings(report: CastReport) -> list[str]:
    said = [
        f"--keep {pattern!r} matched no tensor; nothing was kept by it"
        for pattern in report.get("unused_keep_patterns", [])
    ]
    if report.get("saturated_total"):
        said.append(
            f"{report['saturated_total']} values beyond the {report['dtype']} range saturated "
            f"to its largest value in {', '.join(report['saturating'][:4])}; --fp8-scale scales "
            "each tensor into range, --strict refuses"
        )
    if report.get("overflow_total"):
        said.append(
            f"{report['overflow_total']} values overflowed to inf in "
            f"{', '.join(report['overflowing'][:4])}; keep them with --keep/--keep-norm, or "
            "use --strict to refuse"
        )
    return said


def _cast_into(plan: WritePlan, casting: Casting) -> None:
    """The cast's reader closed with the plan, its statistics reported after the bytes."""
    ckpt = plan.ckpt
    plan.closers.append(casting.reader.close)
    plan.drain = casting.drain

    def stats() -> CastReport:
        report = casting.report(ckpt)
        plan.warnings += _cast_warnings(report)
        return report

    plan.cast_report = stats
    plan.sources = casting.sources


def _refuse_no_change(ckpt: Checkpoint, casting: Casting) -> None:
    """A cast that would change no tensor writes an identical copy: refused, saying why."""
    if any(t is not None for t in casting.plan.targets.values()):
        return
    if not ckpt.tensors:
        what = ", ".join(list(ckpt.extras)[:4]) or "nothing"
        raise SurgeryError(f"{ckpt.path}: holds no tensors (it holds {what}); nothing to cast")
    reasons = sorted(set(casting.plan.reasons.values()))
    raise SurgeryError(
        f"{ckpt.path}: no tensor would change ({'; '.join(reasons[:3])}); nothing to cast"
    )


@paused_gc()
def cast(
    path: PathLike,
    dtype: str,
    *,
    keep: Sequence[str] = (),
    keep_norm: bool = False,
    strict: bool = False,
    fp8_scale: bool = False,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Cast floating-point weights to dtype (fp16, bf16, fp32, fp64, fp8_e4m3fn, fp8_e5m2);
    integers, bools and everything else survive."""
    from ckpt_tool.casting import insert_after, replace_items

    ckpt = loaded(path, weights)
    casting = _casting(ckpt, dtype, keep, keep_norm, strict, fp8_scale)
    with casting.reader:
        _refuse_no_change(ckpt, casting)
        items = insert_after(replace_items(weight_items(ckpt), casting.records), casting.scales)
        plan = WritePlan("cast", ckpt, rebuild(ckpt, items), _SHORT[casting.plan.dtype])
        _cast_into(plan, casting)
        return write(plan, write_options(options))


@paused_gc()
def convert(
    path: PathLike,
    output: PathLike,
    *,
    dtype: str | None = None,
    keep: Sequence[str] = (),
    keep_norm: bool = False,
    strict: bool = False,
    fp8_scale: bool = False,
    max_shard_size: str | int | None = None,
    to_dcp: bool = False,
    dequantize: bool = False,
    drop_extras: bool = False,
    force: bool = False,
    dry_run: bool = False,
    verify: bool = True,
    keep_device: bool = False,
    weights: str | None = None,
) -> WriteReport:
    """Any readable checkpoint's weights to .pth, .safetensors (sharded past max_shard_size),
    a model folder (from a model folder), or a DCP folder (to_dcp)."""
    from ckpt_tool.casting import (
        dequantize_records,
        insert_after,
        parse_size,
        quantized_keys,
        replace_items,
    )
    from ckpt_tool.formats.writer import output_format

    target = Path(output)
    ckpt = loaded(path, weights, rewrite=False)
    if not ckpt.tensors:
        what = ", ".join(list(ckpt.extras)[:4]) or "nothing"
        raise SurgeryError(f"{ckpt.path}: holds no tensors (it holds {what}); nothing to convert")
    if fp8_scale and not dtype:
        raise UsageError("--fp8-scale needs --dtype fp8_e4m3fn or fp8_e5m2")
    if to_dcp and target.suffix:
        raise UsageError(
            f"{target}: --to-dcp writes a folder; give a folder name without an extension"
        )
    max_shard = parse_size(max_shard_size) if isinstance(max_shard_size, str) else max_shard_size
    casting = _casting(ckpt, dtype, keep, keep_norm, strict, fp8_scale) if dtype else None
    plan = WritePlan("convert", ckpt, Output(None, {}, None), "converted", in_place_ok=False)
    if casting is not None:
        _cast_into(plan, casting)
    try:
        items = weight_items(ckpt)
        if casting is not None:
            items = insert_after(replace_items(items, casting.records), casting.scales)
        out = plan.out = rebuild(ckpt, items, weights_only=True)
        out.allow_drops = drop_extras
        if not drop_extras and (to_dcp or max_shard is not None):
            refuse_drops(non_tensor_entries(ckpt), target, "DCP" if to_dcp else "safetensors")
        folder_out = is_folder_output(target) and ckpt.path.is_dir() and not to_dcp
        plan.kind = (
            "dcp" if to_dcp else "shards" if max_shard is not None and not folder_out else "auto"
        )
        plan.max_shard = max_shard
        details: ConvertDetails = {
            "input_format": ckpt.format,
            "layout": ckpt.layout,
            "tensors": len(out.weights),
        }
        plan.details = details
        quantized = quantized_keys(out.weights)
        pth_out = plan.kind != "dcp" and not folder_out and output_format(target) == "pth"
        if dequantize and (pth_out or not quantized):
            raise UsageError(
                "--dequantize is for .safetensors and DCP outputs of quantized checkpoints "
                "(.pth keeps quantized tensors as they are)"
                if pth_out
                else f"--dequantize: {ckpt.path} holds no quantized tensors"
            )
        if quantized and not pth_out:
            if not dequantize:
                raise OutputRefused(
                    f"{target}: {len(quantized)} quantized tensors ({', '.join(quantized[:3])}"
                    f"{' ...' if len(quantized) > 3 else ''}) cannot be stored there; pass "
                    "--dequantize to write them as float32, or write a .pth"
                )
            from ckpt_tool.formats.writer import Sources

            plan.sources = plan.sources or Sources(ckpt)
            out.weights, details["dequantized"] = dequantize_records(
                ckpt, out.weights, plan.sources
            )
    except BaseException:
        plan.close()
        raise
    options = WriteOptions(target, force, False, dry_run, verify, keep_device)
    return write(plan, options)


# --- merges ------------------------------------------------------------------------------------


@paused_gc()
def merge_lora(
    base: PathLike,
    adapter: PathLike,
    *,
    config: PathLike | None = None,
    scale: float = 1.0,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Merge a PEFT LoRA adapter into its base weights (W + scale · B @ A, PEFT's rules)."""
    from ckpt_tool.casting import replace_items
    from ckpt_tool.lora import load_adapter, plan_merge, prepare, scale_option

    ckpt = loaded(base, weights)
    adapter_ckpt, cfg = load_adapter(Path(adapter), Path(config) if config else None)
    refuse_dangerous(adapter_ckpt)
    merge = plan_merge(ckpt.tensors, adapter_ckpt.tensors, cfg, scale_option(scale))
    merging = prepare(ckpt, adapter_ckpt, merge)
    try:
        out = rebuild(ckpt, replace_items(weight_items(ckpt), merging.records))
    except BaseException:
        merging.close()
        raise
    details: MergeDetails = {
        "adapter": str(adapter),
        "scale": scale,
        "use_rslora": bool(cfg.get("use_rslora")),
        "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")),
        "copied": sorted(merge.copies),
    }
    plan = WritePlan(
        "merge-lora", ckpt, out, "merged", details, merging.sources, in_place_ok=False,
        drain=merging.compute_all, closers=[merging.close],
        late_details=lambda: {"targets": [t.as_json() for t in merge.targets]},
    )  # fmt: skip
    return write(plan, write_options(options))


@paused_gc()
def average(
    paths: Sequence[PathLike],
    *,
    coef: str | Sequence[float] | None = None,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Average the weights of several checkpoints (float64 math, original dtypes kept)."""
    from ckpt_tool.compare import average as plan_average
    from ckpt_tool.compare import parse_coef

    ckpts = [loaded(p, weights, rewrite=False) for p in paths]
    if coef is None or isinstance(coef, str):
        weights_per_file = parse_coef(coef, len(ckpts))
    else:
        weights_per_file = parse_coef(",".join(f"{c!r}" for c in coef), len(ckpts))
    avg = plan_average(ckpts, weights_per_file)
    norm = ", ".join(f"{c / sum(avg.coef):.4g}" for c in avg.coef)
    notes = [
        f"averaged {len(avg.averaged)} floating tensor(s) over {len(ckpts)} files in float64 "
        f"(coefficients {norm}), written in their original dtypes",
        *avg.notes,
    ]
    if avg.from_last:
        notes.append(
            f"{len(avg.from_last)} non-floating tensor(s) not averaged, taken from the last "
            f"file ({ckpts[-1].path.name}): "
            + ", ".join(avg.from_last[:4])
            + (" ..." if len(avg.from_last) > 4 else "")
        )
    if any(c.layout == "training" for c in ckpts):
        notes.append("training state (optimizer, epoch ...) is not averaged; only weights written")
    out = Output(OrderedDict(avg.root), dict(avg.root), None, notes, whole_container=False)
    plan = WritePlan(
        "average", ckpts[0], out, "avg", avg.report(), avg.sources, in_place_ok=False,
        closers=[avg.close],
    )  # fmt: skip
    return write(plan, write_options(options))


# --- transplant and smoke-train ----------------------------------------------------------------

WARN_UNDER_PCT = 50.0


def transplant(
    path: PathLike,
    into: str,
    *,
    arch_args: Sequence[str] = (),
    num_classes: int | None = None,
    in_chans: int | None = None,
    maps: Sequence[str] = (),
    match: str = "exact",
    init: str = "default",
    seed: int = 0,
    keep_dtype: bool = False,
    resize_patch: bool = False,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    weights: str | None = None,
    **options: Unpack[WriteArgs],
) -> WriteReport:
    """Copy pretrained weights into a new architecture, reporting every key's fate.

    Under min_coverage % of the target's parameters copied raises CheckFailed (exit 3,
    nothing written) with the report attached as `.report`."""
    from ckpt_tool.archs import construct, parse_arch_args
    from ckpt_tool.output.naming import cache_note
    from ckpt_tool.surgery.transplant import report as transplant_details
    from ckpt_tool.transplanting import transplant as run_transplant

    if match not in ("exact", "suffix"):
        raise UsageError(f"match {match!r}: use exact or suffix")
    opts = write_options(options)
    ckpt = loaded(path, weights, rewrite=False)
    if not ckpt.tensors:
        raise WeightsNotFound(
            f"{ckpt.path}: no tensors to transplant (layout {ckpt.layout}); pass a checkpoint "
            "that holds weights, or choose them with --weights"
        )
    progress.report(f"building {into}", 0, 1)
    built = construct(into, parse_arch_args(list(arch_args)), num_classes, in_chans, seed)
    progress.report(f"building {into}", 1, 1)
    ext = ".safetensors" if "safetensors" in ckpt.format else ".pth"
    opts.output = resolve_output(
        ckpt.path, opts.output, tag=built.spec.tag, force=opts.force, in_place=False, ext=ext
    )
    plan, out = run_transplant(
        ckpt, built, maps=list(maps), match=match, init=init, seed=seed,
        keep_dtype=keep_dtype, resize_patch=resize_patch,
    )  # fmt: skip
    fates = transplant_details(plan)
    pct = fates["totals"]["coverage_pct"]
    ok = pct >= min_coverage
    details: TransplantDetails = {
        "arch": {
            "name": into,
            "label": built.spec.label,
            "source": built.spec.source,
            "kwargs": built.kwargs,
            "input_conv_rebuilt": built.input_conv,
        },
        "match": match,
        "maps": list(maps),
        "init": init,
        "seed": seed,
        "keep_dtype": keep_dtype,
        **fates,
        "notes": plan.notes + (cache_note(ckpt.path) if options.get("output") is None else []),
        "coverage": {"pct": pct, "min": min_coverage, "ok": ok},
    }
    write_plan = WritePlan("transplant", ckpt, out, built.spec.tag, details, in_place_ok=False)
    if not ok:
        assert opts.output is not None
        refused = unwritten(write_plan, opts.output, opts)
        refused.exit_code = EXIT_CHECK_FAILED
        raise CheckFailed(
            f"{ckpt.path}: only {pct:.1f}% of {built.spec.label}'s parameters were copied, under "
            f"--min-coverage {min_coverage:g}; nothing written (check the architecture, "
            "--map or --match suffix)",
            report=refused,
        )
    if pct < WARN_UNDER_PCT:
        write_plan.warnings.append(
            f"only {pct:.1f}% of {built.spec.label}'s parameters were copied from {ckpt.path}; "
            "the rest keeps its initialisation (check the architecture, --map, --match suffix; "
            f"--min-coverage {WARN_UNDER_PCT:g} makes this an error)"
        )
    return write(write_plan, opts)
