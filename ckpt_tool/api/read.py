"""The read commands as functions: inspect, count, scan, diff, archs, smoke_train."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.checkpoint import Checkpoint, load
from ckpt_tool.errors import EXIT_CHECK_FAILED, UsageError
from ckpt_tool.memory import paused_gc
from ckpt_tool.output.options import PathLike
from ckpt_tool.output.report import Report
from ckpt_tool.reports import InspectData, TensorStats

if TYPE_CHECKING:
    from ckpt_tool.inspection import ModuleNode
    from ckpt_tool.reports import ArchList, CountReport, DiffReport, SmokeReport
    from ckpt_tool.scanning import ScanReport


def loaded(path: PathLike, weights: str | None, rewrite: bool = True) -> Checkpoint:
    """Load a checkpoint a command may use: never a dangerous one (nor, for rewriting, one
    that cannot be rewritten)."""
    from ckpt_tool.edit import refuse_dangerous, refuse_rewrite

    ckpt = load(Path(path), weights=weights)
    refuse_dangerous(ckpt)
    if rewrite:
        refuse_rewrite(ckpt)
    return ckpt


@dataclass
class InspectReport(Report[InspectData]):
    """inspect's report, and what its tree view needs."""

    checkpoint: Checkpoint | None = None
    entries: list[Any] = field(default_factory=list)
    stats: dict[str, TensorStats] | None = None

    def tree(self) -> ModuleNode:
        from ckpt_tool.inspection import build_tree

        assert self.checkpoint is not None
        return build_tree(self.entries, self.checkpoint.modules)


@paused_gc()
def inspect(
    path: PathLike,
    *,
    filter: str | None = None,
    stats: bool = False,
    weights: str | None = None,
) -> InspectReport:
    """What a checkpoint holds, without loading tensor bytes or running its code.

    exit_code is 3 (after the report) when the file is dangerous, as `scan` would say."""
    from ckpt_tool.inspection import inspect_report, select

    ckpt = load(Path(path), weights=weights)
    data = inspect_report(ckpt, filter)
    entries = select(ckpt.tensors, filter)
    values = None
    if stats and not ckpt.dangerous:
        from ckpt_tool.stats import tensor_stats  # threads and numpy: only when asked for

        values = tensor_stats(ckpt, entries)
    if values is not None:
        for t in data["tensors"]:
            t["stats"] = values.get(t["key"])
    report = InspectReport(
        "inspect",
        data,
        exit_code=EXIT_CHECK_FAILED if ckpt.dangerous else 0,
        dangerous=list(ckpt.dangerous),
        checkpoint=ckpt,
        entries=entries,
        stats=values,
    )
    if filter is not None and not entries:
        report.warnings.append(f"no key matches {filter!r}")
    return report


@paused_gc()
def count(
    path: PathLike | None = None,
    *,
    arch: str | None = None,
    arch_args: Sequence[str] = (),
    num_classes: int | None = None,
    in_chans: int | None = None,
    depth: int = 1,
    weights: str | None = None,
) -> Report[CountReport]:
    """Parameters trainable and frozen (as recorded), buffers, bytes, per module; with arch,
    of the built model after applying the file's freeze state."""
    from ckpt_tool.apply import count_checkpoint, count_model

    if path is None and arch is None:
        raise UsageError("give a checkpoint, --arch ARCH, or both")
    if arch is None and (arch_args or num_classes is not None or in_chans is not None):
        raise UsageError("--arch-arg, --num-classes and --in-chans need --arch")
    if depth < 1:
        raise UsageError(f"--depth {depth}: give 1 or more")
    ckpt = load(Path(path), weights=weights) if path is not None else None
    if arch is not None:
        from ckpt_tool import archs

        built = archs.construct(arch, archs.parse_arch_args(list(arch_args)), num_classes, in_chans)
        data = count_model(built.model, built.spec.label, ckpt, depth)
        data["notes"] = built.notes + data["notes"]
    else:
        assert ckpt is not None
        data = count_checkpoint(ckpt, depth)
    # counting reads only records (nothing runs), but a hostile file must not look clean
    dangerous = list(ckpt.dangerous) if ckpt is not None else []
    data["dangerous"] = dangerous
    return Report("count", data, EXIT_CHECK_FAILED if dangerous else 0, dangerous=dangerous)


@paused_gc()
def scan(
    paths: PathLike | Sequence[PathLike], *, strict: bool = False, crc: bool = False
) -> ScanReport:
    """Judge every pickle of files and folders as torch.load would read it, running none."""
    from ckpt_tool.scanning import scan_paths

    items = [paths] if isinstance(paths, str | Path) else list(paths)
    return scan_paths([Path(p) for p in items], strict=strict, check_crc=crc)


@paused_gc()
def diff(
    a: PathLike,
    b: PathLike,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    depth: int = 1,
    weights: str | None = None,
    weights_b: str | None = None,
) -> Report[DiffReport]:
    """Compare the weights of two checkpoints; exit_code 3 when they differ."""
    from ckpt_tool.compare import diff as compare

    ca = loaded(a, weights, rewrite=False)
    cb = loaded(b, weights_b if weights_b is not None else weights, rewrite=False)
    result = compare(ca, cb, atol=atol, rtol=rtol, depth=depth)
    return Report("diff", result.as_dict(), 0 if result.identical else EXIT_CHECK_FAILED)


def archs(filter: str | None = None) -> Report[ArchList]:
    """The architectures --into/--arch accept here: seed models, torchvision, timm."""
    from ckpt_tool.archs import available

    return Report("archs", available(filter))


def smoke_train(
    path: PathLike,
    arch: str,
    *,
    arch_args: Sequence[str] = (),
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    task: str = "classification",
    batch_size: int = 8,
    steps: int = 20,
    lr: float | None = None,
    optimizer: str = "adam",
    lr_for: Sequence[str] = (),
    scheduler: str | None = None,
    step_size: int = 10,
    gamma: float = 0.1,
    amp: str | None = None,
    nproc: int = 1,
    seed: int = 0,
    weights: str | None = None,
    fsdp: bool = False,
    save_dcp: PathLike | None = None,
) -> Report[SmokeReport]:
    """Load a checkpoint strictly into arch and train a few steps on a fixed batch; the
    report's exit_code is 3 when a check failed (data['failed'] names them)."""
    from ckpt_tool.archs import parse_arch_args
    from ckpt_tool.train import SmokeConfig, parse_input_shape
    from ckpt_tool.train import smoke_train as run

    shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
    cfg = SmokeConfig(
        path=str(path), arch=arch, arch_args=parse_arch_args(list(arch_args)),
        num_classes=num_classes, in_chans=in_chans, weights=weights,
        input_shape=tuple(shape) if shape else None, task=task, batch_size=batch_size,
        steps=steps, lr=lr, optimizer=optimizer, seed=seed, lr_for=list(lr_for),
        scheduler=scheduler, step_size=step_size, gamma=gamma, amp=amp, nproc=nproc,
        fsdp=fsdp, save_dcp=str(save_dcp) if save_dcp is not None else None,
    )  # fmt: skip
    data = run(cfg)
    return Report("smoke-train", data, 0 if data["ok"] else EXIT_CHECK_FAILED)
