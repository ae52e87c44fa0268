"""smoke-train on many processes: DDP or FSDP2, launched by torchrun or by `--nproc N`.

Under torchrun every process is one rank: it reads RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT from the environment, joins the process group (NCCL when CUDA is there,
gloo otherwise), trains its shard of the fixed batch, and all ranks gather every rank's
checks, so each exits with the same code. `--nproc N` starts N such ranks on this machine
with torch's own launcher (torch.distributed.launcher, what torchrun runs).

With FSDP2 (`fully_shard` over a device mesh) each rank reads only the slices of the
checkpoint its shards hold: DCP chunks through torch's planner, other formats one tensor at
a time from their memory map, so no rank holds the whole checkpoint.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ckpt_tool.errors import CkptError, OutputRefused, UsageError

if TYPE_CHECKING:
    from ckpt_tool.reports import CheckResult, RankChecks, SavedDcp, SmokeReport
    from ckpt_tool.train import Check, Prepared, SmokeConfig

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """This process is one rank of a torchrun (or our launcher's) job."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def reporting_rank() -> bool:
    """Only rank 0 prints the report; every rank exits with its code."""
    return not launched() or os.environ.get("RANK") == "0"


def launch(cfg: SmokeConfig) -> SmokeReport:
    """`--nproc N`: N local ranks through torch's launcher; rank 0's report."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ckpt_tool.train import free_port

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.ERROR)  # its INFO/WARNING lines are not ours
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=cfg.nproc,
        run_id=f"ckpt-smoke-{os.getpid()}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        results = elastic_launch(config, _rank_entry)(asdict(cfg))
    except ChildFailedError as exc:
        failure = next(iter(exc.failures.values()), None)
        said = failure.message if failure is not None else str(exc)
        if isinstance(said, dict):  # the child's error record
            said = said.get("message", said)
        last = next((ln for ln in reversed(str(said).splitlines()) if ln.strip()), "failed")
        raise CkptError(f"distributed smoke-train failed: {last.strip()}") from None
    return cast("SmokeReport", results[0])  # the report rank 0's process returned


def _rank_entry(cfg_fields: dict[str, Any]) -> SmokeReport:
    """One rank started by `launch` (a fresh process): the same work as under torchrun."""
    from ckpt_tool.train import SmokeConfig

    cfg_fields["arch_args"] = dict(cfg_fields.get("arch_args") or {})
    if cfg_fields.get("input_shape") is not None:
        cfg_fields["input_shape"] = tuple(cfg_fields["input_shape"])
    return run_rank(SmokeConfig(**cfg_fields))


def run_rank(cfg: SmokeConfig) -> SmokeReport:
    """This process's part of a distributed smoke-train; every rank returns the full report
    (per-rank checks gathered), so every rank decides the same exit code."""
    import torch
    import torch.distributed as dist

    from ckpt_tool.train import open_checkpoint

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if cfg.batch_size < world:
        raise UsageError(
            f"--batch-size {cfg.batch_size} cannot be sharded over {world} ranks; "
            "give at least one sample per rank"
        )
    cfg = replace(cfg, nproc=world)  # the report says how many ranks trained
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=120))
    try:
        ckpt = open_checkpoint(cfg)
        torch.manual_seed(cfg.seed)
        if cfg.fsdp:
            prep, model = _prepare_fsdp(cfg, ckpt, world, device)
        else:
            prep, model = _prepare_ddp(cfg, ckpt, device)
        report = _train_and_gather(cfg, prep, model, rank, world, device)
        if cfg.save_dcp and prep.load_check.ok:
            report["saved_dcp"] = _save_dcp(prep, Path(cfg.save_dcp), rank)
        dist.barrier()
        return report
    finally:
        dist.destroy_process_group()


def _prepare_ddp(cfg: SmokeConfig, ckpt: Any, device: Any) -> tuple[Prepared, Any]:
    from torch.nn.parallel import DistributedDataParallel

    from ckpt_tool.train import prepare

    prep = prepare(cfg, ckpt)
    prep.built.model.to(device)
    if not prep.load_check.ok:
        return prep, prep.built.model
    return prep, DistributedDataParallel(prep.built.model)


def _prepare_fsdp(cfg: SmokeConfig, ckpt: Any, world: int, device: Any) -> tuple[Prepared, Any]:
    """Build, check the keys, apply the freeze state, shard with fully_shard, then fill each
    rank's shards from the file (only the slices this rank holds are kept)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ckpt_tool.apply import apply_freeze
    from ckpt_tool.train import Check, plan_load

    built, entries, prefix, failed, notes = plan_load(cfg, ckpt)
    from ckpt_tool.train import Prepared

    if failed is not None:
        return Prepared(ckpt, built, prefix, failed, notes=notes), built.model
    model = built.model.to(device)
    applied = apply_freeze(model, ckpt)  # requires_grad and eval BatchNorm, before sharding
    mesh = init_device_mesh(device.type, (world,))
    _shard_blocks(model, mesh)
    fully_shard(model, mesh=mesh)
    loaded, cast = _load_sharded(ckpt, model, entries)
    detail = f"{loaded} tensors loaded into FSDP2 shards with strict=True"
    if cast:
        detail += f" ({cast} cast to the model's dtype)"
    notes.append(
        f"FSDP2: parameters sharded over {world} ranks; each rank read only its slices of "
        f"{ckpt.path.name}"
    )
    return Prepared(ckpt, built, prefix, Check("loads_strictly", True, detail), applied, notes), (
        model
    )


def _shard_blocks(module: Any, mesh: Any) -> None:
    """Each top-level block with parameters its own FSDP2 unit (the blocks of a ModuleList
    or ModuleDict, which have no forward of their own, one by one); the root gets the rest."""
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    for child in module.children():
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            _shard_blocks(child, mesh)
        elif any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh)


def _load_sharded(ckpt: Any, model: Any, entries: dict[str, Any]) -> tuple[int, int]:
    """Fill the FSDP model's parameters and buffers from the checkpoint, each rank its slices."""
    import torch
    from torch.distributed.tensor import DTensor, distribute_tensor

    from ckpt_tool.tensors import TensorReader, load_dcp_into

    own = model.state_dict()
    cast = 0
    dcp_items = {k: e for k, e in entries.items() if e.record.rebuild == "dcp"}
    if dcp_items:
        # torch's planner reads exactly the chunks that overlap this rank's shards
        state = {}
        for key, entry in dcp_items.items():
            target = own[key]
            fqn = entry.record.metadata if isinstance(entry.record.metadata, str) else key
            state[fqn] = target
            cast += entry.record.dtype != str(target.dtype).removeprefix("torch.")
        load_dcp_into(ckpt.path, state)
    with TensorReader(ckpt) as reader, torch.no_grad():
        for key, entry in entries.items():
            if key in dcp_items:
                continue
            target = own[key]
            full = reader.read(entry)
            if full.dtype != target.dtype and full.is_floating_point():
                full = full.to(target.dtype)
                cast += 1
            if isinstance(target, DTensor):
                # every rank reads the tensor from the same memory map and keeps its slice
                piece = distribute_tensor(
                    full.to(target.device), target.device_mesh, target.placements,
                    src_data_rank=None,
                )  # fmt: skip
                target.to_local().copy_(piece.to_local())
            else:
                target.copy_(full)
    return len(entries), int(cast)


def _train_and_gather(
    cfg: SmokeConfig, prep: Prepared, model: Any, rank: int, world: int, device: Any
) -> SmokeReport:
    """Train this rank, then gather every rank's checks; a check passes only on every rank."""
    import torch
    import torch.distributed as dist

    from ckpt_tool.train import Check, check_ranks, not_run, report_header, train

    if not prep.load_check.ok:
        mine = not_run(cfg, prep, distributed=True)
    else:
        torch.manual_seed(cfg.seed)
        mine = train(cfg, prep, rank, world, model=model, device=device, sharded=cfg.fsdp)
    gathered: list[Any] = [None] * world  # every rank's SmokeReport, with its rank
    dist.all_gather_object(gathered, {"rank": rank, **mine})
    first = gathered[0]
    trained = {k: v for k, v in first.items() if k not in ("rank", "checks", "checksums")}
    report = cast("SmokeReport", {**report_header(cfg, prep), **trained})
    per_rank: list[RankChecks] = [{"rank": g["rank"], "checks": g["checks"]} for g in gathered]
    names = [c["name"] for c in first["checks"]]
    checks: list[CheckResult] = []
    for name in names:
        mine_all = [next(c for c in g["checks"] if c["name"] == name) for g in gathered]
        bad = [(g["rank"], c) for g, c in zip(gathered, mine_all, strict=True) if c["ok"] is False]
        if bad:
            r, c = bad[0]
            where = f"rank {r}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            checks.append(Check(name, False, f"{where}: {c['detail']}").as_json())
        else:
            checks.append(mine_all[0])
    if prep.load_check.ok:
        if cfg.fsdp:
            checks.append(_fsdp_agreement(gathered).as_json())
        else:
            checks.append(check_ranks([g["checksums"] for g in gathered]).as_json())
    report["checks"], report["ranks"], report["world_size"] = checks, per_rank, world
    return report


def _fsdp_agreement(gathered: list[dict[str, Any]]) -> Check:
    """Sharded ranks hold different slices; they agree when each ran every step and saw the
    same all-reduced losses and the same verdicts."""
    from ckpt_tool.train import Check

    ref = gathered[0]
    odd = [
        g["rank"]
        for g in gathered[1:]
        if g["losses"] != ref["losses"]
        or [c["ok"] for c in g["checks"]] != [c["ok"] for c in ref["checks"]]
    ]
    if odd:
        return Check("ranks_agree", False, f"rank(s) {odd} differ from rank 0 (losses or checks)")
    return Check(
        "ranks_agree", True, f"{len(gathered)} FSDP2 ranks: same losses and checks on every rank"
    )


def _save_dcp(prep: Prepared, target: Path, rank: int) -> SavedDcp:
    """The trained model state written with DCP by every rank (a folder `ckpt` reads back);
    written beside the target and renamed into place by rank 0 when every rank is done."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.checkpoint.state_dict_saver import save

    tmp = target.parent / f".{target.name}.ckpt-tmp-dcp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    state = get_model_state_dict(prep.built.model)
    save(state, checkpoint_id=str(tmp))
    dist.barrier()
    if rank == 0:
        os.replace(tmp, target)
    dist.barrier()
    return {"path": str(target), "tensors": len(state)}


def refuse_existing_dcp(path: str | None) -> None:
    """--save-dcp never replaces a folder (nothing is written until the steps are done)."""
    if path is not None and Path(path).exists():
        raise OutputRefused(f"{path}: already exists; choose a new folder for --save-dcp")
