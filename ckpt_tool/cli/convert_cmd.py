"""`ckpt cast` and `ckpt convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ckpt_tool import render
from ckpt_tool.checkpoint import Checkpoint, load
from ckpt_tool.cli.common import (
    DryRunOpt,
    ForceOpt,
    InPlaceOpt,
    InputArg,
    JsonOpt,
    KeepDeviceOpt,
    NoVerifyOpt,
    OutputOpt,
    WeightsOpt,
    boundary,
)
from ckpt_tool.cli.write import emit, finish
from ckpt_tool.convert import (
    Casting,
    cast_weights,
    dequantize_records,
    insert_after,
    materialise,
    parse_size,
    quantized_keys,
    replace_items,
    write_dcp,
    write_sharded,
)
from ckpt_tool.edit import (
    non_tensor_entries,
    rebuild,
    refuse_dangerous,
    refuse_drops,
    refuse_rewrite,
    safetensors_metadata,
    weight_items,
)
from ckpt_tool.errors import OutputRefused, SurgeryError, UsageError
from ckpt_tool.formats import writer
from ckpt_tool.formats.safe_pickle import view_key
from ckpt_tool.hf_folder import is_folder_output
from ckpt_tool.surgery.cast import FP8_MAX, parse_dtype, plan_cast

KeepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--keep", metavar="GLOB", help="Keep matching tensors in their dtype (repeatable)."
    ),
]
KeepNormOpt = Annotated[
    bool,
    typer.Option(
        "--keep-norm",
        help="Hold normalisation layers (BatchNorm, LayerNorm, "
        "GroupNorm: weights and running stats) in float32.",
    ),
]
Fp8ScaleOpt = Annotated[
    bool,
    typer.Option(
        "--fp8-scale",
        help="With an fp8 --dtype: divide each tensor by a per-tensor scale (amax / the "
        "format's largest value) and store it as a float32 KEY_scale tensor after it.",
    ),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Values overflowing the target dtype are an error (exit 3) instead of a warning.",
    ),
]
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
    keep: list[str] | None,
    keep_norm: bool,
    strict: bool,
    fp8_scale: bool = False,
) -> Casting:
    entries = [(k, e.dtype, e.shape) for k, e in ckpt.tensors.items()]
    target = parse_dtype(dtype)
    if fp8_scale and target not in FP8_MAX:
        raise UsageError(f"--fp8-scale needs an fp8 --dtype (fp8_e4m3fn or fp8_e5m2), not {dtype}")
    views: dict[Any, list[str]] = {}
    for k, e in ckpt.tensors.items():
        views.setdefault(view_key(e.record), []).append(k)
    ties = [keys for keys in views.values() if len(keys) > 1]
    plan = plan_cast(entries, target, keep or [], keep_norm, ties=ties)
    return cast_weights(ckpt, plan, strict, fp8_scale)


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


def _warn_overflow(report: dict[str, Any]) -> None:
    for pattern in report.get("unused_keep_patterns", []):
        render.warn(f"--keep {pattern!r} matched no tensor; nothing was kept by it")
    if report.get("saturated_total"):
        render.warn(
            f"{report['saturated_total']} values beyond the {report['dtype']} range saturated "
            f"to its largest value in {', '.join(report['saturating'][:4])}; --fp8-scale scales "
            "each tensor into range, --strict refuses"
        )
    if report.get("overflow_total"):
        render.warn(
            f"{report['overflow_total']} values overflowed to inf in "
            f"{', '.join(report['overflowing'][:4])}; keep them with --keep/--keep-norm, or "
            "use --strict to refuse"
        )


@boundary
def cast(
    path: InputArg,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", "-t", help="fp16, bf16, fp32, fp64, or fp8_e4m3fn / fp8_e5m2 (saturating)."
        ),
    ],
    keep: KeepOpt = None,
    keep_norm: KeepNormOpt = False,
    strict: StrictOpt = False,
    fp8_scale: Fp8ScaleOpt = False,
    output: OutputOpt = None,
    force: ForceOpt = False,
    in_place: InPlaceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Cast floating-point weights (integers and bools keep their dtype); the rest survives.

    Example: ckpt cast model.pth --dtype fp16 --keep-norm      (writes model.fp16.pth)
    """
    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    refuse_rewrite(ckpt)
    casting = _casting(ckpt, dtype, keep, keep_norm, strict, fp8_scale)
    with casting.reader:
        _refuse_no_change(ckpt, casting)
        items = insert_after(replace_items(weight_items(ckpt), casting.records), casting.scales)
        out = rebuild(ckpt, items)
        if dry_run:
            casting.drain()
        finish(
            "cast",
            ckpt,
            out,
            {},
            output=output,
            tag=_SHORT[casting.plan.dtype],
            force=force,
            in_place=in_place,
            dry_run=dry_run,
            verify=not no_verify,
            keep_device=keep_device,
            json_out=json_out,
            sources=casting.sources,
            late_report=lambda: _cast_report(ckpt, casting),
        )


def _cast_report(ckpt: Checkpoint, casting: Casting) -> dict[str, Any]:
    report = casting.report(ckpt)
    _warn_overflow(report)
    return {"cast_report": report}


@boundary
def convert(
    path: InputArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="OUT",
            help="Output: .pth/.pt/.bin/.ckpt, .safetensors, a folder with --to-dcp, or (from a "
            "model folder) a new model folder: weights, config.json and the other files.",
        ),
    ],
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", "-t", help="Cast on the way: fp16, bf16, fp32, fp8_e4m3fn, fp8_e5m2."
        ),
    ] = None,
    keep: KeepOpt = None,
    keep_norm: KeepNormOpt = False,
    strict: StrictOpt = False,
    fp8_scale: Fp8ScaleOpt = False,
    max_shard_size: Annotated[
        str | None,
        typer.Option(
            "--max-shard-size",
            metavar="SIZE",
            help="Write sharded safetensors (Hugging Face names + index.json), e.g. 5GB.",
        ),
    ] = None,
    to_dcp: Annotated[
        bool, typer.Option("--to-dcp", help="Write a torch.distributed.checkpoint folder.")
    ] = False,
    dequantize: Annotated[
        bool,
        typer.Option(
            "--dequantize",
            help="Write quantized tensors (qint8, quint8, qint32) as float32 into .safetensors "
            "or DCP, which cannot hold them (.pth keeps them quantized).",
        ),
    ] = False,
    drop_extras: Annotated[
        bool,
        typer.Option(
            "--drop-extras",
            help="Let a .safetensors output leave out non-tensor entries of the weights "
            "(refused otherwise, naming them).",
        ),
    ] = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert any readable checkpoint's weights to .pth, .safetensors (sharded) or DCP.

    Example: ckpt convert model.pth -o model.safetensors --dtype bf16
    """
    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    if not ckpt.tensors:
        what = ", ".join(list(ckpt.extras)[:4]) or "nothing"
        raise SurgeryError(f"{ckpt.path}: holds no tensors (it holds {what}); nothing to convert")
    if fp8_scale and not dtype:
        raise UsageError("--fp8-scale needs --dtype fp8_e4m3fn or fp8_e5m2")
    casting = _casting(ckpt, dtype, keep, keep_norm, strict, fp8_scale) if dtype else None
    try:
        items = weight_items(ckpt)
        if casting is not None:
            items = insert_after(replace_items(items, casting.records), casting.scales)
        out = rebuild(ckpt, items, weights_only=True)
        out.allow_drops = drop_extras
        if not drop_extras and (to_dcp or max_shard_size is not None):
            refuse_drops(non_tensor_entries(ckpt), output, "DCP" if to_dcp else "safetensors")
        sources = casting.sources if casting else writer.Sources(ckpt)
        base: dict[str, Any] = {
            "input_format": ckpt.format,
            "layout": ckpt.layout,
            "tensors": len(out.weights),
        }
        if to_dcp and output.suffix:
            raise UsageError(
                f"{output}: --to-dcp writes a folder; give a folder name without an extension"
            )
        folder_out = is_folder_output(output) and ckpt.path.is_dir() and not to_dcp
        quantized = quantized_keys(out.weights)
        pth_out = not to_dcp and not folder_out and writer.output_format(output) == "pth"
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
                    f"{output}: {len(quantized)} quantized tensors ({', '.join(quantized[:3])}"
                    f"{' ...' if len(quantized) > 3 else ''}) cannot be stored there; pass "
                    "--dequantize to write them as float32, or write a .pth"
                )
            out.weights, base["dequantized"] = dequantize_records(ckpt, out.weights, sources)

        def late() -> dict[str, Any]:
            if casting is None:
                return {}
            return _cast_report(ckpt, casting)

        if dry_run and casting is not None:
            casting.drain()
        if folder_out:
            finish(
                "convert",
                ckpt,
                out,
                base,
                output=output,
                tag="converted",
                force=force,
                in_place=False,
                dry_run=dry_run,
                verify=not no_verify,
                json_out=json_out,
                sources=sources,
                late_report=late,
                max_shard=parse_size(max_shard_size) if max_shard_size else None,
            )
        elif to_dcp:
            _convert_to_dcp(
                ckpt,
                out.weights,
                sources,
                output,
                base,
                force=force,
                dry_run=dry_run,
                verify=not no_verify,
                json_out=json_out,
                late=late,
            )
        elif max_shard_size is not None:
            if writer.output_format(output) != "safetensors":
                raise UsageError("--max-shard-size needs a .safetensors output")
            _convert_sharded(
                ckpt,
                out.weights,
                sources,
                output,
                parse_size(max_shard_size),
                base,
                force=force,
                dry_run=dry_run,
                verify=not no_verify,
                json_out=json_out,
                late=late,
                notes=out.notes,
            )
        else:
            finish(
                "convert",
                ckpt,
                out,
                base,
                output=output,
                tag="converted",
                force=force,
                in_place=False,
                dry_run=dry_run,
                verify=not no_verify,
                keep_device=keep_device,
                json_out=json_out,
                sources=sources,
                late_report=late,
            )
    finally:
        if casting is not None:
            casting.reader.close()


def _convert_sharded(
    ckpt: Checkpoint,
    records: dict[str, Any],
    sources: writer.Sources,
    output: Path,
    max_bytes: int,
    base: dict[str, Any],
    *,
    force: bool,
    dry_run: bool,
    verify: bool,
    json_out: bool,
    late: Any,
    notes: list[str],
) -> None:
    from ckpt_tool.convert import plan_shards

    target = writer.resolve_output(ckpt.path, output, tag="converted", force=force, in_place=False)
    backed = writer.storage_backed(records, sources)
    report: dict[str, Any] = {
        "command": "convert",
        "input": str(ckpt.path),
        "output": str(target),
        "dry_run": dry_run,
        "written": False,
        "weights_key": ckpt.weights_key,
        **base,
        "notes": list(notes),
    }
    if dry_run:
        plan = plan_shards(backed, target, max_bytes)
        report["shards"] = plan.names
    else:
        meta = safetensors_metadata(ckpt, backed)
        results, index, plan = write_sharded(
            backed, target, sources, meta, max_bytes, force=force, verify=verify
        )
        report.update(
            written=True,
            format="safetensors",
            verified=verify,
            bytes=sum(r.bytes for r in results),
            shards=[str(r.path) for r in results],
            index=str(index) if index else None,
        )
        if index is not None:
            report["output"] = str(index)
    if len(plan.names) == 1:
        report["notes"].append("everything fits in one file; no index written")
    for key in plan.oversized:
        report["notes"].append(
            f"tensor {key!r} is larger than --max-shard-size: it got a shard of its own"
        )
    emit(report, late, json_out)


def _convert_to_dcp(
    ckpt: Checkpoint,
    records: dict[str, Any],
    sources: writer.Sources,
    output: Path,
    base: dict[str, Any],
    *,
    force: bool,
    dry_run: bool,
    verify: bool,
    json_out: bool,
    late: Any,
) -> None:
    if output.exists() and not force:
        from ckpt_tool.errors import OutputRefused

        raise OutputRefused(f"{output}: already exists; pass --force to overwrite it")
    report: dict[str, Any] = {
        "command": "convert",
        "input": str(ckpt.path),
        "output": str(output),
        "dry_run": dry_run,
        "written": False,
        "weights_key": ckpt.weights_key,
        **base,
        "notes": [],
    }
    if not dry_run:
        tensors = materialise(ckpt, records, sources)
        size = write_dcp(tensors, output, force=force, verify=verify)
        report.update(written=True, format="dcp", bytes=size, verified=verify)
    emit(report, late, json_out)
