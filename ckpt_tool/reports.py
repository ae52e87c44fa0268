"""The shapes of every report: what `--json` prints, what render reads, checked by mypy.

Producers return these, render takes them; a key misspelled on either side is a type error.
Names with a Python keyword in them ("from") use TypedDict's call form.
"""

from __future__ import annotations

from typing import Any, TypedDict

# --- key surgery ------------------------------------------------------------------------------

Change = TypedDict("Change", {"from": str, "to": str})


class RenameGroup(TypedDict):
    rule: str
    count: int
    examples: list[Change]


class RenameDetails(TypedDict):
    total_keys: int
    changed: int
    unchanged: int
    groups: list[RenameGroup]
    changes: list[Change]
    unmatched_maps: list[str]
    notes: list[str]


class ExtractDetails(TypedDict):
    total_keys: int
    tensors: int
    dropped: list[str]
    left_out: list[str]
    strip_prefix: str | None
    layout: str


class DropDetails(TypedDict):
    dropped_entries: list[str]
    dropped_keys: list[str]
    bytes_saved: int
    tensors: int


# --- freeze and count -------------------------------------------------------------------------


class Trainability(TypedDict):
    trainable: int
    frozen: int


class FreezeRow(TypedDict):
    module: str
    params: int
    before: Trainability
    after: Trainability


class BnEvalChange(TypedDict):
    before: list[str]
    after: list[str]
    unmarked: list[str]


class MatchCount(TypedDict):
    parameters: int
    buffers: int


class FreezeDetails(TypedDict):
    mode: str  # freeze | unfreeze | only
    patterns: list[str]
    regex: bool
    matched: dict[str, MatchCount]
    matched_buffers: list[str]
    changed_keys: list[str]
    frozen_keys: list[str]
    kinds_inferred: bool
    recorded_before: bool
    modules: list[FreezeRow]
    totals: FreezeRow
    bn_eval: BnEvalChange
    notes: list[str]


# --- casts --------------------------------------------------------------------------------------

CastRow = TypedDict(
    "CastRow",
    {
        "key": str,
        "from": str,
        "to": str,
        "reason": str,
        "overflow": int,
        "saturated": int,
        "underflow": int,
        "rel_error": float,
        "max_abs_error": float,
    },
)


class ModuleError(TypedDict):
    module: str
    max_rel_error: float


class CastReport(TypedDict):
    dtype: str
    cast: int
    kept: int
    bytes_before: dict[str, int]
    bytes_after: dict[str, int]
    total_before: int
    total_after: int
    overflow_total: int
    underflow_total: int
    overflowing: list[str]
    saturated_total: int
    saturating: list[str]
    scales: dict[str, str]
    modules: list[ModuleError]
    unused_keep_patterns: list[str]
    tensors: list[CastRow]


DequantizedRow = TypedDict("DequantizedRow", {"key": str, "from": str, "to": str})


class ConvertDetails(TypedDict, total=False):
    input_format: str
    layout: str
    tensors: int
    dequantized: list[DequantizedRow]


# --- merges -------------------------------------------------------------------------------------


class MergeTarget(TypedDict):
    module: str
    kind: str
    key: str
    rank: int
    alpha: float
    scale: float
    rel_change: float | None


class MergeDetails(TypedDict, total=False):
    adapter: str
    scale: float
    use_rslora: bool
    fan_in_fan_out: bool
    copied: list[str]
    targets: list[MergeTarget]  # known after the merge ran


class AverageDetails(TypedDict):
    inputs: list[str]
    coef: list[float]
    normalised_coef: list[float]
    tensors: int
    averaged: int
    from_last: list[str]


# --- transplant ---------------------------------------------------------------------------------


class ArchInfo(TypedDict):
    name: str
    label: str
    source: str
    kwargs: dict[str, Any]
    input_conv_rebuilt: str | None  # the first convolution rebuilt for in_chans


class StatusCount(TypedDict):
    keys: int
    params: int


class TransplantTotals(TypedDict):
    target_keys: int
    target_params: int
    copied_keys: int
    copied_params: int
    coverage_pct: float
    source_keys: int
    unused_keys: int
    by_status: dict[str, StatusCount]


class Coverage(TypedDict):
    pct: float
    min: float
    ok: bool


class TransplantPlanReport(TypedDict):
    prefix_removed: str | None
    keys: list[KeyFate]  # per target key
    unused: list[KeyFate]
    modules: list[BlockRow]  # rows per block, for the table
    unused_modules: list[BlockRow]
    totals: TransplantTotals


class TransplantDetails(TransplantPlanReport):
    arch: ArchInfo
    match: str
    maps: list[str]
    init: str
    seed: int
    keep_dtype: bool
    notes: list[str]
    coverage: Coverage


# --- count --------------------------------------------------------------------------------------


class CountModule(TypedDict, total=False):
    module: str
    params: int
    trainable: int
    frozen: int
    buffer_elements: int
    share: float  # of all parameters; set once the total is known


class BufferCount(TypedDict):
    tensors: int
    elements: int
    bytes: int


class CountTotals(TypedDict):
    params: int
    trainable: int
    frozen: int
    trainable_share: float
    param_tensors: int
    buffers: BufferCount
    bytes_by_dtype: dict[str, int]
    tensor_bytes: int
    shared_keys: list[str]
    depth: int
    modules: list[CountModule]


class CountFreeze(TypedDict, total=False):
    recorded: bool
    assumed: bool
    kinds_inferred: bool
    bn_eval: list[str]


class ApplyResult(TypedDict):
    missing: list[str]
    unexpected: list[str]


class CountReport(CountTotals, total=False):
    file: str | None
    arch: str | None
    format: str | None
    layout: str
    weights_key: str | None
    freeze: CountFreeze
    applied: ApplyResult | None  # --arch with a file: what applying its freeze state did
    notes: list[str]
    dangerous: list[str]


# --- inspect ------------------------------------------------------------------------------------


class WeightSets(TypedDict):
    key: str | None
    candidates: list[str]
    hint: str | None


class PrefixInfo(TypedDict):
    prefix: str | None
    counts: dict[str, int]
    partial: bool
    lightning: bool
    suggest: str | None


class TrainableInfo(TypedDict):
    recorded: bool
    trainable_params: int
    frozen_params: int
    frozen_keys: list[str]
    bn_eval: list[str]


class RefusedGlobal(TypedDict):
    name: str
    dangerous: bool
    verdict: str


class ModuleShare(TypedDict):
    module: str
    params: int
    share: float


class TensorStats(TypedDict):
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    nan: int
    inf: int


class TensorInfo(TypedDict, total=False):
    key: str
    shape: list[int]
    dtype: str
    numel: int
    bytes: int
    kind: str
    device: str
    requires_grad: bool | None
    quant: dict[str, Any]  # quantized tensors only: scheme, scale / axis ...
    stats: TensorStats | None  # with --stats


class InspectData(TypedDict):
    file: str
    format: str
    layout: str
    framework: str | None
    size_bytes: int
    weights: WeightSets
    extras: dict[str, str]
    num_tensors: int
    num_params: int
    num_buffer_elements: int
    param_kinds_inferred: bool
    bytes_by_dtype: dict[str, int]
    tensor_bytes: int
    devices: dict[str, int]
    prefix: PrefixInfo
    shared: list[list[str]]
    views: list[list[str]]
    trainable: TrainableInfo
    verdict: str
    refused_globals: list[RefusedGlobal]
    modules: dict[str, str]
    metadata: dict[str, str]
    top_level: list[ModuleShare]
    filter: str | None
    tensors: list[TensorInfo]


# --- diff ---------------------------------------------------------------------------------------


class DiffSide(TypedDict):
    path: str
    format: str
    weights_key: str | None
    prefix_removed: str
    tensors: int


class ShapeChange(TypedDict):
    key: str
    a: list[int]
    b: list[int]


class DtypeChange(TypedDict):
    key: str
    a: str
    b: str


class TensorDiff(TypedDict):
    key: str
    shape: list[int]
    dtype: str
    bit_identical: bool
    max_abs_diff: float | str  # "inf" / "nan" as text: JSON has no infinities
    rel_change: float | str
    beyond_tolerance: int
    within_tolerance: bool


class ModuleDiff(TypedDict):
    module: str
    tensors: int
    changed: int
    rel_change: float | str


class DiffSummary(TypedDict):
    common: int
    bit_identical: int
    changed: int
    only_a: int
    only_b: int
    shape_changed: int
    dtype_changed: int


class DiffReport(TypedDict):
    command: str
    a: DiffSide
    b: DiffSide
    atol: float
    rtol: float
    identical: bool
    summary: DiffSummary
    only_a: list[str]
    only_b: list[str]
    shape_changed: list[ShapeChange]
    dtype_changed: list[DtypeChange]
    changed: list[str]
    modules: list[ModuleDiff]
    tensors: list[TensorDiff]
    notes: list[str]
    exit_code: int


# --- archs --------------------------------------------------------------------------------------


class ArchSource(TypedDict, total=False):
    installed: bool
    names: list[str]
    install: str  # how to get a source that is not installed
    count: int


ArchList = dict[str, ArchSource]  # source (seed, torchvision, timm) -> its names


# --- smoke-train --------------------------------------------------------------------------------


class CheckResult(TypedDict):
    name: str
    ok: bool | None  # None: not run
    detail: str


class SmokeArch(TypedDict):
    name: str
    label: str
    kwargs: dict[str, Any]


class SmokeFreeze(TypedDict):
    recorded: bool
    frozen: int
    bn_eval: list[str]


class SmokeConfigInfo(TypedDict):
    task: str
    batch_size: int
    steps: int
    optimizer: str
    lr_for: list[str]
    seed: int
    scheduler: str | None
    step_size: int | None
    gamma: float | None
    amp: str | None
    nproc: int
    fsdp: bool


class RankChecks(TypedDict):
    rank: int
    checks: list[CheckResult]


class SavedDcp(TypedDict):
    path: str
    tensors: int


class SmokeReport(TypedDict, total=False):
    command: str
    input: str
    format: str
    weights_key: str | None
    arch: SmokeArch
    prefix_removed: str | None
    freeze: SmokeFreeze
    config: SmokeConfigInfo
    notes: list[str]
    input_shape: list[int]
    batch: list[int]
    outputs: int | None
    lr: float
    param_groups: list[dict[str, Any]]
    lrs: list[float]
    losses: list[float]
    checks: list[CheckResult]
    problems: dict[str, list[str]]
    trainable: int
    frozen: int
    checksums: dict[str, str] | None  # per-parameter hashes a DDP rank sends (not printed)
    ranks: list[RankChecks]  # distributed: every rank's own checks
    world_size: int
    saved_dcp: SavedDcp
    ok: bool
    failed: list[str]


# --- transplant rows ----------------------------------------------------------------------------


class Resampled(TypedDict):
    what: str
    prefix_tokens: int


class KeyFate(TypedDict, total=False):
    key: str
    status: str  # copied | renamed | adapted | reinitialised | shape_mismatch | missing | unused
    source_key: str | None
    shape: list[int]
    source_shape: list[int] | None
    dtype: str
    source_dtype: str | None
    kind: str
    numel: int
    rule: str | None
    detail: str | None
    init: str | None
    resampled: dict[str, Any] | None
    full_key: str  # in grouped rows, where key is relative to the block


class BlockRow(TypedDict, total=False):
    module: str
    blocks: list[str]
    status: str
    keys: int
    params: int
    rows: list[KeyFate]
    _parent: str | None  # while grouping only
    _last: int


# --- scan ---------------------------------------------------------------------------------------


class FindingInfo(TypedDict):
    verdict: str
    why: str
    name: str | None
    member: str | None
    offset: int | None
    opcode: str | None
    count: int
    message: str


class FileScanInfo(TypedDict):
    path: str
    format: str
    verdict: str
    pickles: int
    counts: dict[str, int]
    findings: list[FindingInfo]


ScanSummary = TypedDict(
    "ScanSummary",
    {"files": int, "safe": int, "needs code": int, "dangerous": int, "error": int},
)


class ScanDoc(TypedDict):
    files: list[FileScanInfo]
    summary: ScanSummary
    strict: bool
    exit_code: int


# --- demo ---------------------------------------------------------------------------------------


class DemoStep(TypedDict):
    step: str
    command: str
    exit_code: int
    ok: bool
    problem: str | None
    output: str
