"""The shared tail of every write command: choose the output, write or dry-run, report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckpt_tool import render
from ckpt_tool.checkpoint import Checkpoint
from ckpt_tool.edit import Output, save
from ckpt_tool.errors import OutputRefused
from ckpt_tool.formats.writer import Sources, cache_note, output_format, resolve_output
from ckpt_tool.hf_folder import is_folder_output


def default_ext(ckpt: Checkpoint) -> str | None:
    """Folders (sharded, HF, DCP) get a single-file output of the matching kind."""
    if ckpt.path.is_dir():
        return ".safetensors" if "safetensors" in ckpt.format else ".pth"
    return None


def finish(
    command: str,
    ckpt: Checkpoint,
    out: Output,
    report: dict[str, Any],
    *,
    output: Path | None,
    tag: str,
    force: bool,
    in_place: bool,
    dry_run: bool,
    verify: bool,
    json_out: bool,
    sources: Sources | None = None,
    late_report: Callable[[], dict[str, Any]] | None = None,
    keep_device: bool = False,
    max_shard: int | None = None,
) -> None:
    """Resolve the target (same refusals in a dry run), write it unless dry-run, print.

    `late_report` adds what is only known after writing (e.g. cast statistics). `-o DIR`
    (no extension) writes a whole model folder (weights, config.json, tokenizer files ...).
    """
    if is_folder_output(output) and ckpt.path.is_dir():
        assert output is not None
        _finish_folder(command, ckpt, out, report, output, force, dry_run, verify, json_out,
                       sources, late_report, max_shard)  # fmt: skip
        return
    # a dry run reports what would be written, even over an existing output (said in a note)
    target = resolve_output(
        ckpt.path, output, tag=tag, force=force or dry_run, in_place=in_place, ext=default_ext(ckpt)
    )
    exists_note = (
        [f"{target} already exists: the real run needs --force"]
        if dry_run and not force and not in_place and target.exists()
        else []
    )
    if output is None and not in_place:
        exists_note += cache_note(ckpt.path)
    report = {
        "command": command,
        "input": str(ckpt.path),
        "output": str(target),
        "dry_run": dry_run,
        "written": False,
        "weights_key": ckpt.weights_key,
        **report,
        "notes": out.notes_for(output_format(target), target)
        + list(report.get("notes", []))
        + exists_note,
    }
    if not dry_run:
        result = save(ckpt, out, target, verify=verify, sources=sources, keep_device=keep_device)
        report.update(
            written=True, format=result.format, bytes=result.bytes, verified=result.verified
        )
        report["notes"] += [n for n in result.notes if n not in report["notes"]]
    emit(report, late_report, json_out)


def emit(
    report: dict[str, Any], late_report: Callable[[], dict[str, Any]] | None, json_out: bool
) -> None:
    """Print a write command's report as JSON or tables."""
    if late_report is not None:
        report.update(late_report())
    if json_out:
        render.print_json(report)
    else:
        render.edit_report(report)


def _finish_folder(
    command: str,
    ckpt: Checkpoint,
    out: Output,
    report: dict[str, Any],
    target: Path,
    force: bool,
    dry_run: bool,
    verify: bool,
    json_out: bool,
    sources: Sources | None,
    late_report: Callable[[], dict[str, Any]] | None,
    max_shard: int | None,
) -> None:
    from ckpt_tool.edit import (
        non_tensor_entries,
        refuse_drops,
        safetensors_metadata,
        training_state,
    )
    from ckpt_tool.formats.writer import storage_backed
    from ckpt_tool.hf_folder import write_hf_folder

    if training_state(out):
        raise OutputRefused(
            f"{target}: a model folder holds only the weights; the training state "
            f"({', '.join(training_state(out)[:4])}) would be lost: run `ckpt extract "
            f"{ckpt.path}` first"
        )
    if not out.allow_drops:
        refuse_drops(non_tensor_entries(ckpt), target, "a model folder")
    report = {
        "command": command,
        "input": str(ckpt.path),
        "output": str(target),
        "dry_run": dry_run,
        "written": False,
        "weights_key": ckpt.weights_key,
        **report,
        "notes": out.notes_for("safetensors", target / "model.safetensors")
        + list(report.get("notes", [])),
    }
    if not dry_run:
        sources = sources or Sources(ckpt)
        records = storage_backed(out.weights, sources)
        meta = safetensors_metadata(ckpt, out.weights, out.bn_eval)
        done = write_hf_folder(
            ckpt, records, sources, meta, target, max_shard=max_shard, force=force, verify=verify
        )
        report.update(written=True, verified=verify, **done)
        if done["copied_files"]:
            report["notes"].append(
                f"copied from the input folder: {', '.join(done['copied_files'])}"
            )
        if done["config_dtype"]:
            report["notes"].append(f"config.json torch_dtype set to {done['config_dtype']}")
    emit(report, late_report, json_out)
