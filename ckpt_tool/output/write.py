"""The one write path: a WritePlan in, bytes on disk (or a dry run), a WriteReport out.

Every write command ends here. `write()` owns output naming and refusals, dry-run draining,
the dispatch to .pth / .safetensors / sharded safetensors / a model folder / DCP, the
notes of the format written, and closing the readers the plan holds, whatever happens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ckpt_tool.checkpoint import Checkpoint
from ckpt_tool.edit import (
    Output,
    non_tensor_entries,
    refuse_drops,
    safetensors_metadata,
    save,
    training_state,
)
from ckpt_tool.errors import OutputRefused, UsageError
from ckpt_tool.formats.writer import Sources, output_format, storage_backed
from ckpt_tool.reports import CastReport

from .naming import cache_note, is_folder_output, resolve_output
from .options import WriteOptions
from .report import WriteReport


@dataclass
class WritePlan:
    """Everything a command decided; nothing written yet."""

    command: str
    ckpt: Checkpoint
    out: Output
    tag: str  # derived output name: model.TAG.pth
    details: Mapping[str, Any] = field(default_factory=dict)  # a reports.*Details
    sources: Sources | None = None  # bytes produced on the fly (casts, merges, averages)
    kind: Literal["auto", "shards", "dcp"] = "auto"
    max_shard: int | None = None
    in_place_ok: bool = True
    drain: Callable[[], None] | None = None  # a dry run computes what writing would (stats)
    late_details: Callable[[], Mapping[str, Any]] | None = None  # known only after the bytes
    cast_report: Callable[[], CastReport] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)  # readers the plan opened
    warnings: list[str] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()
        self.closers.clear()


def default_ext(ckpt: Checkpoint) -> str | None:
    """Folders (sharded, HF, DCP) get a single-file output of the matching kind."""
    if ckpt.path.is_dir():
        return ".safetensors" if "safetensors" in ckpt.format else ".pth"
    return None


def write(plan: WritePlan, options: WriteOptions) -> WriteReport:
    """Write the plan as options say; the plan's readers are closed on every path out."""
    try:
        if options.in_place and not plan.in_place_ok:
            raise UsageError(f"{plan.command} has no --in-place; name the output with -o")
        if options.dry_run and plan.drain is not None:
            plan.drain()
        if plan.kind == "dcp":
            report = _write_dcp(plan, options)
        elif plan.kind == "shards":
            report = _write_shards(plan, options)
        elif is_folder_output(options.output) and plan.ckpt.path.is_dir():
            report = _write_folder(plan, options)
        else:
            report = _write_file(plan, options)
        if plan.late_details is not None:
            report.details.update(plan.late_details())
        if plan.cast_report is not None:
            report.cast = plan.cast_report()
        report.warnings = plan.warnings + report.warnings
        return report
    finally:
        plan.close()


def unwritten(plan: WritePlan, target: Path, options: WriteOptions) -> WriteReport:
    """The report of a plan refused before writing (e.g. a failed check), nothing written."""
    return _header(plan, target, options, [])


def _header(plan: WritePlan, target: Path, options: WriteOptions, notes: list[str]) -> WriteReport:
    return WriteReport(
        command=plan.command,
        input=str(plan.ckpt.path),
        output=str(target),
        dry_run=options.dry_run,
        weights_key=plan.ckpt.weights_key,
        details={k: v for k, v in plan.details.items() if k != "notes"},
        notes=notes + list(plan.details.get("notes", [])),
    )


def _write_file(plan: WritePlan, options: WriteOptions) -> WriteReport:
    ckpt = plan.ckpt
    # a dry run reports what would be written, even over an existing output (said in a note)
    target = resolve_output(
        ckpt.path,
        options.output,
        tag=plan.tag,
        force=options.force or options.dry_run,
        in_place=options.in_place,
        ext=default_ext(ckpt),
    )
    exists_note = (
        [f"{target} already exists: the real run needs --force"]
        if options.dry_run and not options.force and not options.in_place and target.exists()
        else []
    )
    if options.output is None and not options.in_place:
        exists_note += cache_note(ckpt.path)
    report = _header(plan, target, options, plan.out.notes_for(output_format(target), target))
    report.notes += exists_note
    if not options.dry_run:
        result = save(
            ckpt,
            plan.out,
            target,
            verify=options.verify,
            sources=plan.sources,
            keep_device=options.keep_device,
        )
        report.written, report.format = True, result.format
        report.bytes, report.verified = result.bytes, result.verified
        report.notes += [n for n in result.notes if n not in report.notes]
    return report


def _write_folder(plan: WritePlan, options: WriteOptions) -> WriteReport:
    from .folder import write_hf_folder

    ckpt, out = plan.ckpt, plan.out
    assert options.output is not None
    target = options.output
    if training_state(out):
        raise OutputRefused(
            f"{target}: a model folder holds only the weights; the training state "
            f"({', '.join(training_state(out)[:4])}) would be lost: run `ckpt extract "
            f"{ckpt.path}` first"
        )
    if not out.allow_drops:
        refuse_drops(non_tensor_entries(ckpt), target, "a model folder")
    report = _header(
        plan, target, options, out.notes_for("safetensors", target / "model.safetensors")
    )
    if not options.dry_run:
        sources = plan.sources or Sources(ckpt)
        records = storage_backed(out.weights, sources)
        meta = safetensors_metadata(ckpt, out.weights, out.bn_eval)
        done = write_hf_folder(
            ckpt, records, sources, meta, target,
            max_shard=plan.max_shard, force=options.force, verify=options.verify,
        )  # fmt: skip
        report.written, report.verified = True, options.verify
        report.format, report.bytes = done.pop("format"), done.pop("bytes")
        report.files = done
        if done["copied_files"]:
            report.notes.append(f"copied from the input folder: {', '.join(done['copied_files'])}")
        if done["config_dtype"]:
            report.notes.append(f"config.json torch_dtype set to {done['config_dtype']}")
    return report


def _write_shards(plan: WritePlan, options: WriteOptions) -> WriteReport:
    from .shards import plan_shards, write_sharded

    assert plan.max_shard is not None and options.output is not None
    if output_format(options.output) != "safetensors":
        raise UsageError("--max-shard-size needs a .safetensors output")
    ckpt = plan.ckpt
    target = resolve_output(
        ckpt.path, options.output, tag=plan.tag, force=options.force, in_place=False
    )
    sources = plan.sources or Sources(ckpt)
    backed = storage_backed(plan.out.weights, sources)
    report = _header(plan, target, options, list(plan.out.notes))
    if options.dry_run:
        shards = plan_shards(backed, target, plan.max_shard)
        report.files["shards"] = shards.names
    else:
        meta = safetensors_metadata(ckpt, backed)
        results, index, shards = write_sharded(
            backed, target, sources, meta, plan.max_shard, force=options.force,
            verify=options.verify,
        )  # fmt: skip
        report.written, report.format, report.verified = True, "safetensors", options.verify
        report.bytes = sum(r.bytes for r in results)
        report.files = {
            "shards": [str(r.path) for r in results],
            "index": str(index) if index else None,
        }
        if index is not None:
            report.output = str(index)
    if len(shards.names) == 1:
        report.notes.append("everything fits in one file; no index written")
    for key in shards.oversized:
        report.notes.append(
            f"tensor {key!r} is larger than --max-shard-size: it got a shard of its own"
        )
    return report


def _write_dcp(plan: WritePlan, options: WriteOptions) -> WriteReport:
    from .dcp_out import materialise, write_dcp

    target = options.output
    assert target is not None
    if target.suffix:
        raise UsageError(
            f"{target}: --to-dcp writes a folder; give a folder name without an extension"
        )
    if target.exists() and not options.force:  # refused in a dry run too: a folder is replaced
        raise OutputRefused(f"{target}: already exists; pass --force to overwrite it")
    report = _header(plan, target, options, [])
    if not options.dry_run:
        tensors = materialise(plan.ckpt, plan.out.weights, plan.sources or Sources(plan.ckpt))
        size = write_dcp(tensors, target, verify=options.verify)
        report.written, report.format, report.bytes = True, "dcp", size
        report.verified = options.verify
    return report
