"""`ckpt smoke-train`: build the architecture, load the checkpoint strictly, train a few steps.

Proves that an edited checkpoint still trains: it loads strictly into the architecture, the
forward pass is finite and shaped [batch, outputs], the loss falls on a fixed synthetic batch,
trainable parameters move while frozen ones (and BatchNorm layers kept in eval) stay
bit-identical, and with `nproc > 1` every DistributedDataParallel rank ends with the same
parameters. Tensors are read with TensorReader (never torch.load); nothing in the file runs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpt_tool import progress
from ckpt_tool.apply import AppliedFreeze, apply_freeze
from ckpt_tool.archs import Built, construct, declared_image_size
from ckpt_tool.checkpoint import Checkpoint, load
from ckpt_tool.edit import refuse_dangerous
from ckpt_tool.errors import UsageError, WeightsNotFound
from ckpt_tool.formats.raw import tensor_bytes
from ckpt_tool.reports import CheckResult, SmokeReport
from ckpt_tool.surgery.prefixes import detect_prefix

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECKS = ("loads_strictly", "forward_ok", "loss_decreases", "gradients_flow", "ranks_agree")
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}


@dataclass
class Check:
    """One named check: ok is None when it was not run."""

    name: str
    ok: bool | None
    detail: str

    def as_json(self) -> CheckResult:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class SmokeConfig:
    """Everything that decides a smoke-train run (plain values: it crosses process spawns)."""

    path: str
    arch: str
    arch_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    in_chans: int | None = None
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    task: str = "classification"  # classification | regression
    batch_size: int = 8
    steps: int = 20
    lr: float | None = None
    optimizer: str = "adam"  # adam | sgd
    seed: int = 0
    lr_for: list[str] = field(default_factory=list)
    scheduler: str | None = None  # None | step
    step_size: int = 10
    gamma: float = 0.1
    amp: str | None = None  # None | fp16 | bf16
    nproc: int = 1
    fsdp: bool = False  # shard with FSDP2 (fully_shard) instead of DDP
    save_dcp: str | None = None  # folder for the trained state, written by every rank


@dataclass
class Prepared:
    """A built model with the checkpoint loaded into it (when it loaded strictly)."""

    ckpt: Checkpoint
    built: Built
    prefix: str
    load_check: Check
    applied: AppliedFreeze | None = None
    notes: list[str] = field(default_factory=list)


# --- options --------------------------------------------------------------------------------------


_SHAPE = re.compile(r"\s*[1-9]\d*\s*(?:[,x]\s*[1-9]\d*\s*)*")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'3,224,224' or '3x224x224' -> (3, 224, 224); anything else is refused, whole."""
    if not _SHAPE.fullmatch(text):
        raise UsageError(
            f"--input-shape {text!r}: expected positive integers separated by ',' or 'x', "
            "such as 3,224,224"
        )
    return tuple(int(p) for p in re.split(r"[,x]", text))


def parse_lr_for(items: list[str]) -> list[tuple[str, float]]:
    """'fc.*=0.01' -> ('fc.*', 0.01), in the order given."""
    out = []
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            lr = float(value)
        except ValueError:
            lr = -1.0
        if not sep or not pattern or lr < 0:
            raise UsageError(f"--lr-for {item!r}: expected GLOB=LR such as 'fc.*=0.01'")
        out.append((pattern, lr))
    return out


def validate(cfg: SmokeConfig) -> None:
    if cfg.task not in ("classification", "regression"):
        raise UsageError(f"--task {cfg.task!r}: choose classification or regression")
    if cfg.optimizer not in DEFAULT_LR:
        raise UsageError(f"--optimizer {cfg.optimizer!r}: choose adam or sgd")
    if cfg.amp not in (None, "fp16", "bf16"):
        raise UsageError(f"--amp {cfg.amp!r}: choose fp16 or bf16")
    if cfg.steps < 2:
        raise UsageError("--steps must be at least 2 (the loss is compared first to last)")
    if cfg.batch_size < 1 or cfg.nproc < 1:
        raise UsageError("--batch-size and --nproc must be at least 1")
    if cfg.nproc > 1 and cfg.batch_size < cfg.nproc:
        raise UsageError(
            f"--batch-size {cfg.batch_size} cannot be sharded over --nproc {cfg.nproc}; "
            "give at least one sample per process"
        )
    if cfg.lr is not None and cfg.lr < 0:
        raise UsageError("--lr must not be negative")
    parse_lr_for(cfg.lr_for)


# --- loading --------------------------------------------------------------------------------------


def open_checkpoint(cfg: SmokeConfig) -> Checkpoint:
    """The checkpoint, refused when it reaches dangerous callables or holds no tensors."""
    ckpt = load(cfg.path, weights=cfg.weights)
    refuse_dangerous(ckpt)
    if not ckpt.tensors:
        raise WeightsNotFound(
            f"{ckpt.path}: no tensors to train (layout {ckpt.layout}); pass a checkpoint that "
            "holds weights, or choose them with --weights"
        )
    return ckpt


def strict_diff(
    model_shapes: dict[str, tuple[int, ...]], file_shapes: dict[str, tuple[int, ...]]
) -> dict[str, list[Any]]:
    """What load_state_dict(strict=True) would complain about, as lists of names."""
    return {
        "missing": [k for k in model_shapes if k not in file_shapes],
        "unexpected": [k for k in file_shapes if k not in model_shapes],
        "shape_mismatch": [
            {"key": k, "model": list(s), "file": list(file_shapes[k])}
            for k, s in model_shapes.items()
            if k in file_shapes and tuple(file_shapes[k]) != tuple(s)
        ],
    }


def _few(items: list[Any], n: int = 3) -> str:
    shown = ", ".join(
        str(i["key"]) + f" {i['file']}→{i['model']}" if isinstance(i, dict) else str(i)
        for i in items[:n]
    )
    return shown + (f" … (+{len(items) - n})" if len(items) > n else "")


def plan_load(
    cfg: SmokeConfig, ckpt: Checkpoint
) -> tuple[Built, dict[str, Any], str, Check | None, list[str]]:
    """Build the architecture (seeded) and match the file's keys to its state_dict: the
    model, model key -> entry, the prefix removed, a failed loads_strictly check or None,
    notes."""
    built = construct(cfg.arch, cfg.arch_args, cfg.num_classes, cfg.in_chans, cfg.seed)
    model = built.model
    found = detect_prefix(ckpt.tensors)
    prefix = found.prefix
    if found.lightning and not any(k in model.state_dict() for k in ckpt.tensors):
        prefix = "model."  # a Lightning module's `self.model`
    entries = {k[len(prefix) :]: e for k, e in ckpt.tensors.items()}
    own = model.state_dict()
    diff = strict_diff({k: tuple(v.shape) for k, v in own.items()},
                       {k: tuple(e.shape) for k, e in entries.items()})  # fmt: skip
    notes = list(built.notes)
    if prefix:
        notes.append(f"prefix {prefix!r} removed from every key")
    failed = None
    if any(diff.values()):
        parts = [f"{name.replace('_', ' ')}: {_few(v)}" for name, v in diff.items() if v]
        failed = Check("loads_strictly", False, "; ".join(parts))
    return built, entries, prefix, failed, notes


def prepare(cfg: SmokeConfig, ckpt: Checkpoint | None = None) -> Prepared:
    """Build the architecture (seeded), load the checkpoint strictly, apply its freeze state."""
    from ckpt_tool.tensors import TensorReader

    ckpt = ckpt or open_checkpoint(cfg)
    built, entries, prefix, failed, notes = plan_load(cfg, ckpt)
    if failed is not None:
        return Prepared(ckpt, built, prefix, failed, notes=notes)
    model = built.model
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    cast = 0
    with TensorReader(ckpt) as reader:
        for key, entry in entries.items():
            t = reader.read(entry)
            target = own[key]
            if t.dtype != target.dtype and t.is_floating_point() and target.is_floating_point():
                t = t.to(target.dtype)
                cast += 1
            state[key] = t
    model.load_state_dict(state, strict=True)
    detail = f"{len(state)} tensors loaded with strict=True"
    if cast:
        detail += f" ({cast} cast to the model's dtype)"
    applied = apply_freeze(model, ckpt)
    return Prepared(ckpt, built, prefix, Check("loads_strictly", True, detail), applied, notes)


# --- shapes and data ------------------------------------------------------------------------------


def infer_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The input size the model declares (timm's pretrained_cfg, torchvision's image_size),
    else the first layer with weights: Conv2d (C, S, S), Conv1d (C, 64), Linear (F,)."""
    from torch import nn

    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    image = declared_image_size(model)
    if image is not None and first_conv is not None:
        return (first_conv.in_channels, *image)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(size, (tuple, list)) and size and all(isinstance(d, int) and d > 0 for d in size):
        return tuple(size)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            c = module.in_channels
            size = 28 if c == 1 else 64
            return (c, size, size)
        if isinstance(module, nn.Conv1d):
            return (module.in_channels, 64)
        if isinstance(module, nn.Linear):
            return (module.in_features,)
        if next(module.parameters(recurse=False), None) is not None:
            return None
    return None


def synthetic_batch(
    shape: tuple[int, ...], batch: int, seed: int
) -> tuple[torch.Tensor, torch.Generator]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=gen), gen


def make_targets(task: str, batch: int, outputs: int, gen: torch.Generator) -> torch.Tensor:
    import torch

    if task == "classification":
        return torch.randint(0, outputs, (batch,), generator=gen)
    return torch.randn((batch, outputs), generator=gen)


# --- checks ---------------------------------------------------------------------------------------


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN-safe, -0.0 != 0.0), as DESIGN's verification rule asks."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.detach().contiguous().reshape(-1).view(torch.uint8),
        b.detach().contiguous().reshape(-1).view(torch.uint8),
    )


def check_forward(out: torch.Tensor, batch: int, outputs: int | None) -> Check:
    import torch

    if not isinstance(out, torch.Tensor):
        return Check(
            "forward_ok", False, f"the model returned a {type(out).__name__}, not one tensor"
        )
    shape = list(out.shape)
    if out.dim() != 2 or shape[0] != batch or (outputs is not None and shape[1] != outputs):
        want = f"[{batch}, {outputs if outputs is not None else 'outputs'}]"
        return Check("forward_ok", False, f"output shape {shape}, expected {want}")
    bad = int((~torch.isfinite(out.detach().float())).sum())
    if bad:
        return Check("forward_ok", False, f"output {shape} has {bad} NaN/Inf value(s)")
    return Check("forward_ok", True, f"output {shape}, finite")


def check_loss(losses: list[float]) -> Check:
    if not losses:
        return Check("loss_decreases", False, "no step ran")
    bad = [i + 1 for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        return Check("loss_decreases", False, f"loss not finite at step(s) {_few(bad, 5)}")
    first, last = losses[0], losses[-1]
    if last < first:
        return Check("loss_decreases", True, f"{first:.4g} → {last:.4g}")
    # A few steps of Adam on a transformer are noisy: a healthy model still gets below its
    # first loss somewhere in the second half of the run; a model that cannot learn does not.
    best = min(losses[len(losses) // 2 :])
    if best < first:
        return Check("loss_decreases", True, f"{first:.4g} → {last:.4g} (best {best:.4g})")
    return Check("loss_decreases", False, f"{first:.4g} → {last:.4g}: did not fall")


def check_gradients(
    before: dict[str, torch.Tensor],
    after: dict[str, torch.Tensor],
    trainable: list[str],
    got_grad: dict[str, bool],
    nonzero_grad: dict[str, bool],
    bn_before: dict[str, torch.Tensor] | None = None,
    bn_after: dict[str, torch.Tensor] | None = None,
) -> tuple[Check, dict[str, list[str]]]:
    """Trainable parameters got non-zero gradients and changed; frozen ones stayed bit-identical
    and got no gradient; buffers of BatchNorm layers kept in eval are unchanged."""
    changed = {n: not same_bits(before[n], after[n]) for n in before}
    bn_b, bn_a = bn_before or {}, bn_after or {}
    bn_changed = {n: not same_bits(bn_b[n], bn_a[n]) for n in bn_b}
    return gradient_check(trainable, changed, got_grad, nonzero_grad, bn_changed)


def gradient_check(
    trainable: list[str],
    changed: dict[str, bool],
    got_grad: dict[str, bool],
    nonzero_grad: dict[str, bool],
    bn_changed: dict[str, bool],
) -> tuple[Check, dict[str, list[str]]]:
    """The gradients_flow check from what happened to each parameter (every name in changed)."""
    train = set(trainable)
    problems: dict[str, list[str]] = {
        "no_gradient": [n for n in trainable if not nonzero_grad.get(n, False)],
        "unchanged": [n for n in trainable if not changed[n]],
        "frozen_changed": [n for n in changed if n not in train and changed[n]],
        "frozen_got_gradient": [n for n in changed if n not in train and got_grad.get(n, False)],
        "bn_eval_stats_changed": [n for n, c in bn_changed.items() if c],
    }
    frozen = len(changed) - len(train)
    if not any(problems.values()):
        detail = f"{len(train)} trainable changed, {frozen} frozen identical"
        if bn_changed:
            detail += f", {len(bn_changed)} eval BatchNorm buffers unchanged"
        return Check("gradients_flow", True, detail), problems
    parts = [f"{k.replace('_', ' ')}: {_few(v)}" for k, v in problems.items() if v]
    return Check("gradients_flow", False, "; ".join(parts)), problems


def local_view(t: Any) -> Any:
    """This rank's part of a tensor: the local shard of an FSDP2 DTensor, else the tensor."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _all_ranks_ok(ok: bool, world: int, device: Any) -> bool:
    """Whether every rank says ok (all ranks call this together); True alone."""
    if world == 1:
        return ok
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _merge_flags(flags: list[dict[str, bool]], world: int) -> list[dict[str, bool]]:
    """Per-name flags OR-ed over every rank (all ranks call this together)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, flags)
    return [
        {n: any(g[i].get(n, False) for g in gathered) for n in flags[i]} for i in range(len(flags))
    ]


def checksum(t: torch.Tensor) -> str:

    raw = tensor_bytes(t)
    return hashlib.sha256(raw).hexdigest()[:16]


def check_ranks(per_rank: list[dict[str, str]]) -> Check:
    ref = per_rank[0]
    differ = sorted({n for other in per_rank[1:] for n in ref if other.get(n) != ref[n]})
    if differ:
        return Check("ranks_agree", False, f"{len(differ)} parameter(s) differ: {_few(differ)}")
    return Check("ranks_agree", True, f"{len(ref)} parameters identical on {len(per_rank)} ranks")


# --- training -------------------------------------------------------------------------------------


def param_groups(
    named: list[tuple[str, nn.Parameter]], lr: float, lr_for: list[tuple[str, float]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Optimizer groups: the first --lr-for glob a parameter matches sets its rate."""
    buckets: list[list[nn.Parameter]] = [[] for _ in lr_for]
    names: list[list[str]] = [[] for _ in lr_for]
    rest: list[nn.Parameter] = []
    for name, p in named:
        for i, (pattern, _) in enumerate(lr_for):
            if fnmatch.fnmatchcase(name, pattern):
                buckets[i].append(p)
                names[i].append(name)
                break
        else:
            rest.append(p)
    unused = [pattern for (pattern, _), b in zip(lr_for, buckets, strict=True) if not b]
    if unused:
        raise UsageError(
            f"--lr-for {unused[0]!r} matches no trainable parameter (e.g. "
            f"{named[0][0] if named else '(none)'!r}); globs match whole parameter names"
        )
    groups: list[dict[str, Any]] = [
        {"params": b, "lr": r} for b, (_, r) in zip(buckets, lr_for, strict=True)
    ]
    summary = [
        {"pattern": pat, "lr": r, "parameters": len(n)}
        for n, (pat, r) in zip(names, lr_for, strict=True)
    ]
    if rest:
        groups.append({"params": rest, "lr": lr})
        summary.append({"pattern": "(rest)", "lr": lr, "parameters": len(rest)})
    return groups, summary


def _model_outputs(cfg: SmokeConfig, built: Built) -> int | None:
    return cfg.num_classes if cfg.num_classes is not None else built.num_classes


def train(
    cfg: SmokeConfig,
    prep: Prepared,
    rank: int = 0,
    world: int = 1,
    model: Any = None,
    device: Any = None,
    sharded: bool = False,
) -> SmokeReport:
    """Train cfg.steps steps on this rank's shard of the fixed synthetic batch; run the checks.

    `model` is the module to call (a DDP wrapper in distributed runs); the checks look at
    prep.built.model, the module underneath. `sharded` (FSDP2): each rank sees only its
    slices of the parameters, so the gradient checks combine every rank's view.
    """
    import torch

    device = device if device is not None else torch.device("cpu")

    inner = prep.built.model
    model = model if model is not None else inner
    shape = cfg.input_shape or infer_input_shape(inner)
    if shape is None:
        raise UsageError(
            f"{prep.built.spec.label}: cannot tell the input shape from its first layer; "
            "give --input-shape, e.g. 3,224,224"
        )
    x_all, gen = synthetic_batch(shape, cfg.batch_size, cfg.seed)
    x = x_all[rank::world].to(device)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
    named = [(n, p) for n, p in inner.named_parameters() if p.requires_grad]
    groups, group_summary = param_groups(named, lr, parse_lr_for(cfg.lr_for))
    optimizer: torch.optim.Optimizer | None = None
    if groups:
        opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
        optimizer = opt_cls(groups, lr=lr)
    scheduler = None
    if cfg.scheduler == "step" and optimizer is not None:
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=cfg.step_size, gamma=cfg.gamma
        )
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.amp or "")
    scaler = None
    if cfg.amp == "fp16":
        try:
            scaler = torch.amp.GradScaler("cpu")
        except Exception as exc:
            raise UsageError(f"--amp fp16 is not supported by this torch on CPU ({exc})") from None

    trainable = [n for n, _ in named]
    before = {n: local_view(p).detach().clone() for n, p in inner.named_parameters()}
    bn_paths = prep.applied.bn_eval if prep.applied else []
    modules = dict(inner.named_modules())

    def bn_state() -> dict[str, torch.Tensor]:
        return {
            f"{path}.{b}": t.detach().clone()
            for path in bn_paths
            for b, t in modules[path].named_buffers(recurse=False)
            if t is not None
        }

    bn_before = bn_state()
    got_grad = dict.fromkeys(before, False)
    nonzero = dict.fromkeys(before, False)
    losses: list[float] = []
    lrs: list[float] = []
    forward: Check | None = None
    targets: torch.Tensor | None = None
    n_out: int | None = None
    outputs = _model_outputs(cfg, prep.built)
    peer_failed = False
    model.train()
    for _ in range(cfg.steps):
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.bfloat16, enabled=bool(amp_dtype)
        ):
            first = forward is None
            try:
                out = model(x)
            except Exception as exc:
                if not first:
                    raise
                text = (str(exc).strip().splitlines() or [""])[0]
                forward = Check(
                    "forward_ok",
                    False,
                    f"the forward pass on {[x.shape[0], *shape]} raised "
                    f"{type(exc).__name__}: {text} (check --input-shape)",
                )
            if first:
                if forward is None:
                    forward = check_forward(out, x.shape[0], outputs)
                # ranks stop together: one rank leaving the loop alone would hang the others
                peers_ok = _all_ranks_ok(bool(forward.ok), world, device)
                if not forward.ok:
                    break
                if not peers_ok:
                    peer_failed = True
                    break
                n_out = int(out.shape[1])
                targets = make_targets(cfg.task, cfg.batch_size, n_out, gen)[rank::world]
                targets = targets.to(device)
            assert targets is not None
            if cfg.task == "classification":
                loss = torch.nn.functional.cross_entropy(out.float(), targets)
            else:
                loss = torch.nn.functional.mse_loss(out.float(), targets)
        if scaler is not None:
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        else:
            loss.backward()  # type: ignore[no-untyped-call]
        for n, p in inner.named_parameters():
            if p.grad is not None:
                got_grad[n] = True
                if not nonzero[n] and bool(local_view(p.grad).detach().ne(0).any()):
                    nonzero[n] = True
        if optimizer is not None:
            lrs.append(float(optimizer.param_groups[-1]["lr"]))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = loss.detach().float()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(value)
            value = value / world
        losses.append(float(value))
        if rank == 0:
            progress.report(f"training, loss {losses[-1]:.4g}", len(losses), cfg.steps)
    progress.report("training", cfg.steps, cfg.steps)
    assert forward is not None
    after = {n: local_view(p).detach().clone() for n, p in inner.named_parameters()}
    checks = [prep.load_check, forward]
    problems: dict[str, list[str]] = {}
    if peer_failed:
        for name in ("loss_decreases", "gradients_flow"):
            checks.append(Check(name, None, "not run: the forward pass failed on another rank"))
    elif forward.ok:
        checks.append(check_loss(losses))
        changed = {n: not same_bits(before[n], after[n]) for n in before}
        bn_after = bn_state()
        bn_changed = {n: not same_bits(bn_before[n], bn_after[n]) for n in bn_before}
        if sharded:  # a slice can be empty or unchanged on one rank: any rank decides
            changed, got_grad, nonzero, bn_changed = _merge_flags(
                [changed, got_grad, nonzero, bn_changed], world
            )
        grad_check, problems = gradient_check(trainable, changed, got_grad, nonzero, bn_changed)
        checks.append(grad_check)
    else:
        checks.append(Check("loss_decreases", None, "not run: the forward pass failed"))
        checks.append(Check("gradients_flow", None, "not run: the forward pass failed"))
    return {
        "input_shape": list(shape),
        "batch": [cfg.batch_size, *shape],
        "outputs": outputs if outputs is not None else n_out,
        "lr": lr,
        "param_groups": group_summary,
        "lrs": lrs,
        "losses": losses,
        "checks": [c.as_json() for c in checks],
        "problems": problems,
        "trainable": len(trainable),
        "frozen": len(before) - len(trainable),
        "checksums": {n: checksum(t) for n, t in after.items()}
        if world > 1 and not sharded
        else None,
    }


# --- distributed ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the whole run --------------------------------------------------------------------------------


def report_header(cfg: SmokeConfig, prep: Prepared) -> SmokeReport:
    """What every smoke-train report starts with: input, architecture, freeze state, config."""
    ckpt = prep.ckpt
    return {
        "command": "smoke-train",
        "input": str(ckpt.path),
        "format": ckpt.format,
        "weights_key": ckpt.weights_key,
        "arch": {"name": cfg.arch, "label": prep.built.spec.label, "kwargs": prep.built.kwargs},
        "prefix_removed": prep.prefix or None,
        "freeze": {
            "recorded": bool(prep.applied and prep.applied.recorded),
            "frozen": len(prep.applied.frozen) if prep.applied else 0,
            "bn_eval": prep.applied.bn_eval if prep.applied else [],
        },
        "config": {
            "task": cfg.task, "batch_size": cfg.batch_size, "steps": cfg.steps,
            "optimizer": cfg.optimizer, "lr_for": cfg.lr_for, "seed": cfg.seed,
            "scheduler": cfg.scheduler,
            "step_size": cfg.step_size if cfg.scheduler else None,
            "gamma": cfg.gamma if cfg.scheduler else None,
            "amp": cfg.amp, "nproc": cfg.nproc, "fsdp": cfg.fsdp,
        },
        "notes": prep.notes,
    }  # fmt: skip


def not_run(cfg: SmokeConfig, prep: Prepared, distributed: bool) -> SmokeReport:
    """The checks when the checkpoint does not load strictly: that one failed, the rest not run."""
    skipped = "not run: the checkpoint does not load strictly"
    names = [c for c in CHECKS if distributed or c != "ranks_agree"][1:]
    return {
        "checks": [prep.load_check.as_json()] + [Check(n, None, skipped).as_json() for n in names],
        "losses": [],
        "lrs": [],
    }


def smoke_train(cfg: SmokeConfig) -> SmokeReport:
    """Run every check; returns the report (the caller decides the exit code from `ok`).

    One process, or distributed (DDP, or FSDP2 with `fsdp`) when launched by torchrun, with
    `nproc > 1`, or for `fsdp` / `save_dcp` (then on `nproc` ranks of our own launch)."""
    import torch

    from ckpt_tool import train_dist

    validate(cfg)
    if train_dist.launched() or cfg.nproc > 1 or cfg.fsdp or cfg.save_dcp:
        train_dist.refuse_existing_dcp(cfg.save_dcp)
        if train_dist.launched():
            world = int(os.environ["WORLD_SIZE"])
            if cfg.nproc not in (1, world):
                raise UsageError(
                    f"--nproc {cfg.nproc} under torchrun, which started {world} processes; "
                    "drop --nproc (torchrun decides the ranks)"
                )
            report = train_dist.run_rank(cfg)
        else:
            report = train_dist.launch(cfg)
    else:
        ckpt = open_checkpoint(cfg)
        torch.manual_seed(cfg.seed)
        prep = prepare(cfg, ckpt)
        report = report_header(cfg, prep)
        if not prep.load_check.ok:
            report.update(not_run(cfg, prep, distributed=False))
        else:
            torch.manual_seed(cfg.seed)
            report.update(train(cfg, prep))
    report.pop("checksums", None)
    report["ok"] = all(c["ok"] for c in report["checks"])
    report["failed"] = [c["name"] for c in report["checks"] if c["ok"] is False]
    return report
