"""`ckpt scan`: static listing of every global a checkpoint's pickles reach, with verdicts.

Per-file expectations for the whole hostile corpus are in test_hostile_corpus.py; here: the
scanner's own contract (JSON schema, exit codes, folders, offsets, nesting, agreement with the
restricted reader) and that every other command refuses dangerous files.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import hostile_files as H
import pytest
import torch
from typer.testing import CliRunner

from ckpt_tool.formats.safe_pickle import classify_ref
from ckpt_tool.scan import scan_paths

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"


def _cli(*args: object):
    from ckpt_tool.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"crashed: {result.exception!r}") from result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result


def _scan_json(*paths: object) -> tuple[int, dict]:
    result = _cli("scan", *paths, "--json")
    return result.exit_code, json.loads(result.stdout)


def _findings(report: dict, index: int = 0) -> list[dict]:
    return report["files"][index]["findings"]


# --- contract ---------------------------------------------------------------------------------


def test_fixtures_scan_clean_and_complete() -> None:
    code, report = _scan_json(FIXTURES)
    assert code == 0, [f for f in report["files"] if f["status"] != "clean"]
    by_name = {Path(f["path"]).name: f for f in report["files"]}
    expected = {
        p.name
        for p in FIXTURES.rglob("*")
        if p.is_file() and p.name.endswith((".pth", ".pt", ".tar", ".pkl", ".safetensors", ".ckpt"))
    }
    expected |= {"model.safetensors.index.json", "sigmoidnet_dcp"}
    assert expected <= set(by_name), expected - set(by_name)
    assert len(report["files"]) == len(by_name), "a file was scanned twice"
    assert by_name["sigmoidnet_legacy.pth"]["format"] == "torch-legacy"
    assert by_name["sigmoidnet_legacy.pth"]["pickles"] == 5
    assert by_name["sigmoidnet_dcp"]["format"] == "dcp"
    whole = {f["name"]: f["severity"] for f in by_name["convnet_whole.pth"]["findings"]}
    assert whole["__main__.ConvNet"] == "unknown"
    assert whole["torch._utils._rebuild_tensor_v2"] == "safe"
    assert report["summary"] == {"files": len(by_name), "clean": len(by_name), "dangerous": 0,
                                 "error": 0}  # fmt: skip


def test_json_schema(tmp_path: Path) -> None:
    code, report = _scan_json(H.zip_os_system(tmp_path))
    assert code == 3 and report["exit_code"] == 3
    assert set(report) == {"files", "summary", "exit_code"}
    f = report["files"][0]
    assert set(f) == {"path", "format", "status", "pickles", "counts", "findings"}
    assert f["status"] == "dangerous" and f["format"] == "torch-zip" and f["pickles"] == 1
    assert set(f["counts"]) == {"safe", "unknown", "corrupt", "dangerous"}
    for finding in f["findings"]:
        assert set(finding) == {"severity", "kind", "name", "member", "offset", "count", "message"}
    assert f["findings"][0]["severity"] == "dangerous", "worst first"
    rebuild = next(x for x in f["findings"] if x["name"] == "torch._utils._rebuild_tensor_v2")
    assert rebuild["count"] == 1 and rebuild["severity"] == "safe"  # named once, then memoised


def test_exit_codes_over_several_paths(tmp_path: Path) -> None:
    clean = FIXTURES / "mlp.pth"
    broken = H.truncated_zip(tmp_path)
    hostile = H.zip_exec(tmp_path)
    assert _scan_json(clean)[0] == 0
    assert _scan_json(clean, broken)[0] == 1
    code, report = _scan_json(clean, broken, hostile)
    assert code == 3
    assert [f["status"] for f in report["files"]] == ["clean", "error", "dangerous"]
    result = _cli("scan", clean, broken, hostile)
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        "error: 1 of 3 scanned file(s) reach dangerous callables; nothing was run"
    ]
    assert "DANGEROUS" in result.stdout and "builtins.exec" in result.stdout


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, report = _scan_json(tmp_path / "nope.pth", tmp_path / "empty")
    assert code == 1
    assert [f["status"] for f in report["files"]] == ["error", "error"]


def test_folder_recursion_and_dedupe(tmp_path: Path) -> None:
    tree = tmp_path / "downloads"
    (tree / "a" / "b").mkdir(parents=True)
    H.zip_eval(tree / "a" / "b")
    (tree / "notes.txt").write_text("not a checkpoint")
    index = H.index_missing_shard(tree)
    code, report = _scan_json(tree, index)  # the index twice: once through the folder
    names = [Path(f["path"]).name for f in report["files"]]
    assert sorted(names) == sorted(
        ["zip_eval.pth", "model.safetensors.index.json", "model-00001-of-00001.safetensors"]
    )
    assert code == 3


def test_index_given_directly_scans_its_shards(tmp_path: Path) -> None:
    code, report = _scan_json(FIXTURES / "convnet_sharded" / "model.safetensors.index.json")
    assert code == 0
    assert [f["format"] for f in report["files"]] == ["sharded index", "safetensors", "safetensors"]


# --- the static reading ---------------------------------------------------------------------


def test_memoised_stack_global_is_named_at_its_offset(tmp_path: Path) -> None:
    path = H.zip_memo_stack_global(tmp_path)
    _, report = _scan_json(path)
    hit = next(f for f in _findings(report) if f["name"] == "os.system")
    assert hit["severity"] == "dangerous" and hit["member"].endswith("/data.pkl")
    with zipfile.ZipFile(path) as zf:
        data = zf.read(hit["member"])
    assert data[hit["offset"] : hit["offset"] + 1] == b"\x93", "offset is the STACK_GLOBAL"


def test_unresolvable_stack_global(tmp_path: Path) -> None:
    _, report = _scan_json(H.zip_computed_global(tmp_path))
    hit = next(f for f in _findings(report) if f["kind"] == "unresolvable-global")
    assert hit["severity"] == "dangerous" and "computed" in hit["message"]


def test_deflated_member_is_scanned(tmp_path: Path) -> None:
    """Re-zipped with compression: still read, payload still found, and the file refused."""
    src = H.zip_os_system(tmp_path)
    out = tmp_path / "deflated.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    code, report = _scan_json(out)
    assert code == 3
    assert any(f["name"] == "posix.system" for f in _findings(report))


def _nested(payload: bytes, depth: int) -> bytes:
    for _ in range(depth):
        payload = pickle.dumps({"blob": payload}, protocol=4)
    return payload


def test_nested_pickles_and_zips(tmp_path: Path) -> None:
    evil = pickle.dumps(H._OsSystem(H.canary_path(tmp_path)), protocol=2)
    buf = io.BytesIO()
    torch.save({"x": H._OsSystem(H.canary_path(tmp_path))}, buf)
    cases = {
        "two_levels.pkl": _nested(evil, 2),
        "zip_in_bytes.pkl": pickle.dumps({"blob": buf.getvalue()}, protocol=4),
        "too_deep.pkl": _nested(evil, 6),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        code, report = _scan_json(tmp_path / name)
        assert code == 3, name
        kinds = {(f["kind"], f["name"]) for f in _findings(report)}
        assert ("nested-pickle", None) in kinds, (name, kinds)
        if name != "too_deep.pkl":
            assert ("global", "posix.system") in kinds, (name, kinds)
    _, report = _scan_json(tmp_path / "too_deep.pkl")
    assert any("nested more than" in f["message"] for f in _findings(report))
    # data that merely starts like a pickle is data
    (tmp_path / "noise.pkl").write_bytes(pickle.dumps({"b": b"\x80\x04garbage bytes here"}))
    assert _scan_json(tmp_path / "noise.pkl")[0] == 0


def test_persistent_id_that_is_not_a_storage(tmp_path: Path) -> None:
    path = tmp_path / "persid.pkl"
    path.write_bytes(b"(dp0\nVkey\np1\nPsome-remote-object\np2\ns.")
    code, report = _scan_json(path)
    hit = next(f for f in _findings(report) if f["kind"] == "persistent-id")
    assert hit["severity"] == "unknown" and "not a torch storage" in hit["message"]
    assert code in (0, 1)  # our reader refuses it, but nothing dangerous is reached


def test_trailing_bytes_are_noted_not_failed(tmp_path: Path) -> None:
    path = tmp_path / "trailing.pkl"
    path.write_bytes(pickle.dumps({"a": 1}) + b"\x00\xffnot a pickle")
    code, report = _scan_json(path)
    assert code == 0
    assert any(f["kind"] == "trailing-data" for f in _findings(report))


def test_crc_mismatch_is_damage(tmp_path: Path) -> None:
    code, report = _scan_json(H.zip_bad_crc(tmp_path))
    assert code == 1
    hit = next(f for f in _findings(report) if f["kind"] == "crc")
    assert hit["member"] == "archive/data/0" and "damaged" in hit["message"]


def test_torchscript_archive(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()))
        torch.jit.save(module, str(tmp_path / "ts.pt"))
    code, report = _scan_json(tmp_path / "ts.pt")
    assert code == 0, _findings(report)
    assert report["files"][0]["format"] == "torchscript"
    assert any(f["kind"] == "torchscript" for f in _findings(report))
    assert report["files"][0]["pickles"] >= 2  # data.pkl and the debug pickles


def test_dcp_item_outside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "dcp"
    H._dcp_save(folder, {"w": torch.arange(4.0)})
    meta = folder / ".metadata"
    data = meta.read_bytes()
    assert data.count(b"__0_0.distcp") == 1
    meta.write_bytes(data.replace(b"__0_0.distcp", b"../../etc/pw"))
    code, report = _scan_json(folder)
    assert code == 3
    assert any(f["kind"] == "path-traversal" for f in _findings(report))


def _refused_by_reader(path: Path) -> dict[str, str]:
    import ckpt_tool

    return {g.name: g.kind for g in ckpt_tool.load(path).globals if g.kind != "safe"}


STATIC_VS_READER = [
    *(FIXTURES / n for n in ("convnet_whole.pth", "lightning.ckpt", "sigmoidnet_legacy.pth",
                             "numpy_arrays.pkl", "timm_train.pth.tar")),
]  # fmt: skip
HOSTILE_READABLE = [
    H.zip_os_system, H.zip_exec, H.zip_popen, H.zip_import_side_effect, H.legacy_os_system,
    H.pickle_protocol0_system, H.zip_memo_callable, H.zip_build_state, H.zip_persistent_id,
    H.zip_dotted_name, H.zip_runpy_run_code, H.zip_subprocess_popen,
]  # fmt: skip


def test_static_scan_agrees_with_the_restricted_reader(tmp_path: Path) -> None:
    """Every non-allowlisted global the reader met, the scan names with the same verdict."""
    paths = list(STATIC_VS_READER)
    for build in HOSTILE_READABLE:
        (tmp_path / build.__name__).mkdir()
        paths.append(build(tmp_path / build.__name__))
    report = scan_paths(paths)
    for path, scan in zip(paths, report.files, strict=True):
        static = {f.name: f.severity for f in scan.findings if f.kind == "global"}
        for name, kind in _refused_by_reader(path).items():
            assert static.get(name) == kind, (path.name, name, kind, static)


def test_text_output_escapes_names_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "markup.pkl"
    name = "[bold red]Fake[/]\x1b[2J"
    path.write_bytes(H._pickle(H._call(H._sg("evil_mod", name)), 4))
    result = _cli("scan", path)
    assert "\x1b" not in result.stdout
    assert "[bold red]Fake" in result.stdout and "\\x1b" in result.stdout


# --- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "kind"),
    [
        ("torch", "serialization.os.system", "dangerous"),
        ("torch", "hub.load", "dangerous"),
        ("collections", "_sys.modules", "dangerous"),
        ("torch", "_utils._rebuild_tensor_v2.__globals__", "dangerous"),
        ("torch.storage", "_load_from_bytes", "dangerous"),
        ("torch.jit._script", "RecursiveScriptModule", "dangerous"),
        ("torch.fx.graph_module", "reduce_graph_module", "dangerous"),
        ("pydoc", "pipepager", "dangerous"),
        ("bdb", "Bdb", "dangerous"),
        ("code", "InteractiveInterpreter", "dangerous"),
        ("copyreg", "add_extension", "dangerous"),
        ("numpy", "load", "dangerous"),
        ("builtins", "type", "dangerous"),
        ("torch.jit._pickle", "build_intlist", "unknown"),
        ("__main__", "Net", "unknown"),
        ("mylib.models", "Outer.Inner", "unknown"),
        ("torch._utils", "_rebuild_tensor_v2", "safe"),
        ("collections", "OrderedDict", "safe"),
        ("copyreg", "_reconstructor", "safe"),
    ],
)
def test_classify_ref(module: str, name: str, kind: str) -> None:
    assert classify_ref(module, name) == kind


# --- every command ----------------------------------------------------------------------------

# How each command is invoked on a file; what it does with a dangerous one.
# "refuse": exit 1, one stderr line pointing to `ckpt scan`, nothing written.
# "flag": exit 0 with the dangerous callable named in its output.
COMMANDS: dict[str, tuple[list[str], str]] = {
    "inspect": (["{p}"], "flag"),
    "scan": (["{p}"], "scan"),
    "count": (["{p}"], "flag"),
    "strip-module": (["{p}", "--partial", "-o", "{o}"], "refuse"),
    "add-module": (["{p}", "-o", "{o}"], "refuse"),
    "rename": (["{p}", "--map", "a=b", "-o", "{o}"], "refuse"),
    "extract": (["{p}", "-o", "{o}"], "refuse"),
    "transplant": (["{p}", "--into", "mlp", "-o", "{o}"], "refuse"),
    "freeze": (["*", "{p}", "-o", "{o}"], "refuse"),
    "cast": (["{p}", "--dtype", "fp16", "-o", "{o}"], "refuse"),
    "convert": (["{p}", "-o", "{o}"], "refuse"),
    "smoke-train": (["{p}", "--arch", "mlp"], "refuse"),
    "diff": (["{p}", "{p}"], "refuse"),
    "average": (["{p}", "{p}", "-o", "{o}"], "refuse"),
}
NO_INPUT = {"archs", "demo"}  # demo builds its own model


def _registered() -> list[str]:
    from typer.main import get_command

    from ckpt_tool.cli import app

    return sorted(get_command(app).commands)  # type: ignore[attr-defined]


def test_every_command_is_covered() -> None:
    missing = [c for c in _registered() if c not in COMMANDS and c not in NO_INPUT]
    assert missing == [], f"add {missing} to COMMANDS: how it treats dangerous files"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "smoke-train"] + ["smoke-train"])
def test_every_command_refuses_or_flags_dangerous_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    if command not in _registered():
        pytest.skip(f"`ckpt {command}` does not exist (yet)")
    args, expect = COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = H.zip_posix_system(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out.pth"
    result = _cli(command, *[a.format(p=path, o=out) for a in args])
    time.sleep(0.1)
    assert not H.canary_path(tmp_path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"
    if expect == "refuse":
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "ckpt scan" in lines[0] and "posix.system" in lines[0]
    elif expect == "flag":
        assert result.exit_code == 0, result.stderr
        assert "posix.system" in result.stdout
    else:
        assert result.exit_code == 3


# --- a real process -----------------------------------------------------------------------------


def test_scan_real_process_on_a_hostile_folder(tmp_path: Path) -> None:
    for build in (H.zip_import_side_effect, H.zip_dotted_name, H.pickle_protocol0_system,
                  H.legacy_os_system, H.dcp_bytes_item_payload):  # fmt: skip
        build(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CKPT_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_tool", "scan", str(tmp_path), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    time.sleep(0.2)
    assert not H.canary_path(tmp_path).exists()
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["dangerous"] == 4 and report["summary"]["clean"] == 1
    assert "Traceback" not in proc.stderr


def test_scan_is_in_the_check_panel() -> None:
    result = _cli("--help")
    assert "Check" in result.stdout and "scan" in result.stdout
