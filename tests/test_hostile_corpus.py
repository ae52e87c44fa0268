"""The hostile and broken corpus: every file through inspect, scan, strip-module and extract.

Each entry pins the exit code and message of every command. After every command: no canary
(nothing ran), the input folder byte-identical, and no partial output (a failed write leaves
nothing, a successful one leaves a complete file that torch loads). Builders live in
hostile_files.py and write everything at test time.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hostile_files as H
import pytest
import torch
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SCAN_HINT = "ckpt scan"


@dataclass(frozen=True)
class Case:
    """Expected (exit code, stderr pattern) per command; scan: (exit code, finding kind, name)."""

    build: H.Builder
    inspect: tuple[int, str | None]
    scan: tuple[int, str, str | None]
    strip: tuple[int | None, str | None]  # None: 0 or 1 (see the note on the entry)
    extract: tuple[int | None, str | None]


def _hostile(build: H.Builder, name: str | None, why: str = "runs-code") -> Case:
    """Hostile file: inspect reports it and exits 3, scan names it, writes refuse (exit 3) and
    point to scan."""
    return Case(build, (3, SCAN_HINT), (3, why, name), (3, SCAN_HINT), (3, SCAN_HINT))


def _broken(build: H.Builder, message: str | None, scan_why: str = "unreadable") -> Case:
    return Case(build, (1, message), (1, scan_why, None), (1, message), (1, message))


CORPUS: list[Case] = [
    # code execution through the pickle, in every place a payload can hide
    _hostile(H.zip_os_system, "posix.system"),
    _hostile(H.zip_os_system_stack_global, "os.system"),
    _hostile(H.zip_posix_system, "posix.system"),
    _hostile(H.zip_popen, "subprocess.Popen"),
    _hostile(H.zip_subprocess_popen, "subprocess.Popen"),
    _hostile(H.zip_exec, "builtins.exec"),
    _hostile(H.zip_builtins_exec, "builtins.exec"),
    _hostile(H.zip_eval, "builtins.eval"),
    _hostile(H.zip_builtins_eval, "builtins.eval"),
    _hostile(H.zip_dunder_import, "builtins.__import__"),
    _hostile(H.zip_runpy_run_code, "runpy._run_code"),
    _hostile(H.zip_memo_stack_global, "os.system"),
    _hostile(H.zip_memo_callable, "posix.system"),
    _hostile(H.zip_build_state, "posix.system"),
    _hostile(H.zip_persistent_id, "posix.system"),
    _hostile(H.zip_dotted_name, "torch.serialization.os.system"),
    _hostile(H.legacy_os_system, "posix.system"),
    _hostile(H.pickle_os_system, "posix.system"),
    _hostile(H.pickle_protocol0_system, "posix.system"),
    _hostile(H.dcp_metadata_payload, "posix.system"),
    # operands computed at load time: no scanner can name what a real load imports
    _hostile(H.zip_computed_global, None, "computed"),
    _hostile(H.zip_getattr_chain, "builtins.getattr", "called"),
    _hostile(H.zip_extension_code, None, "extension-code"),
    _hostile(H.zip_duplicate_data_pkl, None, "ambiguous"),
    # BUILD on an allowlisted global: refused, and later reads are unaffected (test below)
    _hostile(H.zip_build_on_dtype, None, "tampering"),
    _hostile(H.zip_build_on_ordereddict, None, "tampering"),
    _hostile(H.zip_build_on_rebuild_tensor, None, "tampering"),
    # payloads no load reaches directly, but a loop of pickle.load or a second reader does
    _hostile(H.zip_torchscript_constants, "posix.system"),
    _hostile(H.pickle_trailing_payload, "posix.system"),
    _hostile(H.dcp_bytes_item_payload, "posix.system"),
    # a call of a class whose import runs code: called, not allowlisted
    _hostile(H.zip_import_side_effect, f"{H.EVIL_MODULE}.Thing", "called"),
    # a pickle in a bytes value is data: named (needs code), never run, not dangerous
    Case(
        H.zip_nested_pickle, (0, None), (0, "nested-pickle", "posix.system"), (0, None), (0, None)
    ),
    # broken torch zips
    _broken(H.zip_missing_storage, "no record"),
    _broken(H.zip_record_too_small, "claims 1073741824 bytes"),
    _broken(H.zip_negative_shape, "negative"),
    _broken(H.zip_huge_numel, "reaches past the end"),
    _broken(H.zip_unknown_dtype, "unknown storage type"),
    _broken(H.truncated_zip, "damaged zip"),
    _broken(H.zip_without_data_pkl, "data.pkl"),
    Case(  # tensor bytes are not read by a scan (`--crc` does); writes verify every record
        H.zip_bad_crc,
        (0, None),
        (0, "allowlisted", None),
        (1, "verification failed"),
        (1, "verification failed"),
    ),
    # safetensors, indexes, DCP
    _broken(H.safetensors_absurd_header_len, "header length", "header"),
    _broken(H.safetensors_invalid_utf8, "not valid JSON", "header"),
    _broken(H.safetensors_broken_json, "not valid JSON", "header"),
    _broken(H.safetensors_header_not_object, "not a checkpoint format", "format"),
    _broken(H.safetensors_unknown_dtype, "Q7", "header"),
    _broken(H.safetensors_overlapping_offsets, "overlaps", "header"),
    _broken(H.safetensors_offsets_past_end, "past the end", "header"),
    _broken(H.safetensors_size_mismatch, "needs 16 bytes", "header"),
    Case(
        H.index_outside_folder,
        (3, "outside"),
        (3, "path-traversal", None),
        (3, "outside"),
        (3, "outside"),
    ),
    _broken(H.index_missing_shard, "missing"),
    _broken(H.dcp_corrupt_metadata, "not a readable pickle"),
    # not checkpoints at all
    _broken(H.empty_file, "empty file"),
    _broken(H.random_bytes, "not a checkpoint format", "format"),
    _broken(H.text_named_pth, "not a checkpoint format", "format"),
]
IDS = [c.build.__name__ for c in CORPUS]


def _snapshot(directory: Path) -> dict[str, str]:
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


@pytest.fixture
def hostile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The hostile folder is cwd, on sys.path and PYTHONPATH: any import of its module fires."""
    work = tmp_path / "in"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(work), str(REPO)]))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("CKPT_DEBUG", raising=False)
    yield work
    sys.modules.pop(H.EVIL_MODULE, None)


def _invoke(args: list[object]):
    from ckpt_tool.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"{args[0]} crashed with {exc!r}") from exc
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    result.json_mode = "--json" in args  # type: ignore[attr-defined]
    return result


def _check_error(result, code: int | None, pattern: str | None, report: bool = False) -> None:
    """One stderr line on failure; stdout empty, except a report that exits 3 (dangerous)."""
    if code is None:
        assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    else:
        assert result.exit_code == code, (result.exit_code, result.stdout[-300:], result.stderr)
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        if report and result.exit_code == 3 and result.stdout:
            json.loads(result.stdout)  # the report, then the exit code
        elif result.json_mode:  # the error as one JSON document, the same words
            assert json.loads(result.stdout) == {
                "error": lines[0].removeprefix("error: "),
                "exit_code": result.exit_code,
            }
        else:
            assert result.stdout == "", result.stdout[:300]
        if pattern is not None:
            assert pattern in lines[0], (pattern, lines[0])


def _assert_untouched(work: Path, before: dict[str, str]) -> None:
    assert not H.canary_path(work).exists(), "a payload in the checkpoint was executed"
    assert H.EVIL_MODULE not in sys.modules, "the checkpoint's module was imported"
    assert _snapshot(work) == before, "the input folder changed"


def _check_write(result, out: Path, expected: tuple[int | None, str | None]) -> None:
    _check_error(result, *expected)
    leftovers = [p.name for p in out.parent.iterdir() if p != out]
    assert leftovers == [], f"partial or temporary output left: {leftovers}"
    if result.exit_code == 0:  # complete: every CRC right, and it reads back
        import zipfile

        import ckpt_tool

        with zipfile.ZipFile(out) as zf:
            assert zf.testzip() is None
        assert ckpt_tool.load(out).tensors
        out.unlink()
    else:
        assert not out.exists(), "a failed write left its output"


@pytest.mark.parametrize("case", CORPUS, ids=IDS)
def test_corpus_file(hostile_dir: Path, tmp_path: Path, case: Case) -> None:
    path = case.build(hostile_dir)
    before = _snapshot(hostile_dir)
    outdir = tmp_path / "out"
    outdir.mkdir()

    result = _invoke(["inspect", path, "--json"])
    _check_error(result, *case.inspect, report=True)
    if result.stdout and case.scan[2] is not None and "error" not in json.loads(result.stdout):
        flagged = {g["name"] for g in json.loads(result.stdout)["refused_globals"]}
        assert case.scan[2] in flagged, flagged
    _assert_untouched(hostile_dir, before)

    result = _invoke(["scan", path, "--json"])
    code, why, name = case.scan
    assert result.exit_code == code, (result.stdout[-800:], result.stderr)
    report = json.loads(result.stdout)
    assert report["exit_code"] == code
    findings = report["files"][0]["findings"]
    assert any(f["why"] == why and (name is None or f["name"] == name) for f in findings), (
        why,
        name,
        findings,
    )
    if code != 0:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    _assert_untouched(hostile_dir, before)

    out = outdir / "stripped.pth"
    result = _invoke(["strip-module", path, "--partial", "-o", out])
    _check_write(result, out, case.strip)
    _assert_untouched(hostile_dir, before)

    out = outdir / "weights.pth"
    result = _invoke(["extract", path, "-o", out])
    _check_write(result, out, case.extract)
    time.sleep(0.05)
    _assert_untouched(hostile_dir, before)


def test_corpus_size() -> None:
    assert len(CORPUS) >= 25
    assert len({c.build for c in CORPUS}) == len(CORPUS)


# --- the payloads are real --------------------------------------------------------------------

# How an unrestricted consumer of each file would load it.
ARMED = {
    H.zip_os_system_stack_global: "torch",
    H.zip_posix_system: "torch",
    H.zip_subprocess_popen: "torch",
    H.zip_builtins_exec: "torch",
    H.zip_builtins_eval: "torch",
    H.zip_getattr_chain: "torch",
    H.zip_dunder_import: "torch",
    H.zip_runpy_run_code: "torch",
    H.zip_memo_stack_global: "torch",
    H.zip_memo_callable: "torch",
    H.zip_build_state: "torch",
    H.zip_persistent_id: "torch",
    H.zip_dotted_name: "torch",
    H.zip_computed_global: "torch",
    H.zip_nested_pickle: "nested",
    H.zip_torchscript_constants: "constants",
    H.pickle_trailing_payload: "second",
    H.dcp_bytes_item_payload: "dcp",
    H.dcp_metadata_payload: "dcp",
}
_ARM = r"""
import os, pickle, sys, warnings, zipfile
warnings.simplefilter("ignore")
import torch
for line in sys.stdin:
    how, path, folder = line.split()
    os.chdir(folder)
    sys.path.insert(0, folder)
    try:
        if how == "torch":
            torch.load(path, weights_only=False)
        elif how == "nested":
            pickle.loads(torch.load(path, weights_only=False)["evil"])
        elif how == "constants":
            pickle.loads(zipfile.ZipFile(path).read("archive/constants.pkl"))
        elif how == "second":
            with open(path, "rb") as f:
                pickle.load(f)
                pickle.load(f)
        elif how == "dcp":
            from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
            dcp_to_torch_save(path, os.path.join(folder, "converted.pt"))
    except Exception:
        pass
"""


def test_payloads_are_armed(tmp_path: Path) -> None:
    """Control: an unrestricted load of each hostile file does run its payload."""
    lines, folders = [], {}
    for build, how in ARMED.items():
        folder = tmp_path / build.__name__
        folder.mkdir()
        lines.append(f"{how} {build(folder)} {folder}")
        folders[build.__name__] = folder
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-c", _ARM],
        input="\n".join(lines),
        text=True,
        env=env,
        timeout=300,
        capture_output=True,
        check=True,
    )
    deadline = time.monotonic() + 5
    missing = list(folders)
    while missing and time.monotonic() < deadline:
        missing = [n for n, f in folders.items() if not H.canary_path(f).exists()]
        time.sleep(0.1)
    assert missing == [], f"payloads that did not fire: {missing}"


# --- no allocation for a claimed size; shared state untouched -----------------------------------


@pytest.mark.parametrize("command", ["inspect", "scan", "extract"])
def test_claimed_gigabyte_is_not_allocated(tmp_path: Path, command: str) -> None:
    """A 1 KB record claiming a 1 GB tensor, under a 1 GB address-space limit."""
    path = H.zip_record_too_small(tmp_path)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    env = {k: v for k, v in os.environ.items() if k != "CKPT_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_tool", command, str(path), "-o", str(tmp_path / "o.pth")]
        if command == "extract"
        else [sys.executable, "-m", "ckpt_tool", command, str(path)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.pth").exists()


def _reference(path: Path) -> dict[str, tuple[list[int], str, bytes]]:
    sd = torch.load(path, weights_only=True)
    return {k: (list(v.shape), str(v.dtype).removeprefix("torch."), v.numpy().tobytes())
            for k, v in sd.items()}  # fmt: skip


@pytest.mark.parametrize(
    "build", [H.zip_build_on_dtype, H.zip_build_on_ordereddict, H.zip_build_on_rebuild_tensor]
)
def test_build_on_allowlisted_global_leaves_later_reads_intact(tmp_path: Path, build) -> None:
    import collections

    import ckpt_tool
    from ckpt_tool.errors import CkptError
    from ckpt_tool.formats import safe_pickle
    from ckpt_tool.tensors import TensorReader

    allow_before = dict(safe_pickle.ALLOWLIST)
    od_attrs = dict(vars(collections.OrderedDict))
    f32 = torch.float32.itemsize, torch.float32.is_floating_point
    (tmp_path / "bad").mkdir()
    with pytest.raises(CkptError):
        ckpt_tool.load(build(tmp_path / "bad"))
    clean = tmp_path / "clean.pth"
    g = torch.Generator().manual_seed(0)
    torch.save(
        {"w": torch.rand(3, 4, generator=g), "n": torch.tensor(7), "h": torch.ones(2).half()}, clean
    )
    ckpt = ckpt_tool.load(clean)
    with TensorReader(ckpt) as reader:
        got = {
            e.key: (list(t.shape), str(t.dtype).removeprefix("torch."), t.numpy().tobytes())
            for e, t in reader.iter()
        }
    assert got == _reference(clean)
    assert all(not t.record.requires_grad for t in ckpt.tensors.values())
    assert dict(safe_pickle.ALLOWLIST) == allow_before
    assert all(type(v) is type(allow_before[k]) for k, v in safe_pickle.ALLOWLIST.items())
    assert dict(vars(collections.OrderedDict)) == od_attrs
    assert (torch.float32.itemsize, torch.float32.is_floating_point) == f32
    assert safe_pickle._rebuild_tensor_v2.__defaults__ == (False, None, None)
