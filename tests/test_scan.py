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

from ckpt_tool.formats.pickle_rules import Use, judge
from ckpt_tool.scanning import scan_paths

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


def test_fixtures_scan_safe_or_needs_code_and_complete() -> None:
    code, report = _scan_json(FIXTURES)
    assert code == 0, [f for f in report["files"] if f["verdict"] not in ("safe", "needs code")]
    by_name = {Path(f["path"]).name: f for f in report["files"]}
    expected = {
        p.name
        for p in FIXTURES.rglob("*")
        if p.is_file()
        and p.name.endswith((".pth", ".pt", ".tar", ".pkl", ".safetensors", ".ckpt"))
        and "sigmoidnet_dcp" not in p.parts
    }
    expected |= {"model.safetensors.index.json", "sigmoidnet_dcp"}
    assert expected <= set(by_name), expected - set(by_name)
    assert len(report["files"]) == len(by_name), "a file was scanned twice"
    assert by_name["sigmoidnet_legacy.pth"]["format"] == "torch-legacy"
    assert by_name["sigmoidnet_legacy.pth"]["pickles"] == 5
    assert by_name["sigmoidnet_dcp"]["format"] == "dcp"
    assert by_name["sigmoidnet_dcp"]["verdict"] == "safe"
    whole = {f["name"]: f for f in by_name["convnet_whole.pth"]["findings"]}
    assert whole["__main__.ConvNet"]["verdict"] == "needs code"
    assert whole["__main__.ConvNet"]["why"] == "constructed"
    assert whole["torch._utils._rebuild_tensor_v2"]["verdict"] == "safe"
    assert by_name["convnet_whole.pth"]["verdict"] == "needs code"
    assert by_name["timm_train.pth.tar"]["verdict"] == "needs code"  # argparse.Namespace
    assert by_name["mlp.pth"]["verdict"] == "safe"
    s = report["summary"]
    assert s["files"] == len(by_name) and s["dangerous"] == 0 and s["error"] == 0
    assert s["safe"] + s["needs code"] == len(by_name)


def test_json_schema(tmp_path: Path) -> None:
    code, report = _scan_json(H.zip_os_system(tmp_path))
    assert code == 3 and report["exit_code"] == 3
    assert set(report) == {"files", "summary", "strict", "exit_code"}
    f = report["files"][0]
    assert set(f) == {"path", "format", "verdict", "pickles", "counts", "findings"}
    assert f["verdict"] == "dangerous" and f["format"] == "torch-zip" and f["pickles"] == 1
    assert set(f["counts"]) == {"safe", "needs code", "dangerous", "error"}
    for finding in f["findings"]:
        assert set(finding) == {
            "verdict", "why", "name", "member", "offset", "opcode", "count", "message"
        }  # fmt: skip
    first = f["findings"][0]
    assert first["verdict"] == "dangerous" and first["name"] == "posix.system", "worst first"
    assert first["opcode"] == "GLOBAL" and first["member"] == "zip_os_system/data.pkl"
    rebuild = next(x for x in f["findings"] if x["name"] == "torch._utils._rebuild_tensor_v2")
    assert rebuild["count"] == 1 and rebuild["verdict"] == "safe"  # named once, then memoised


def test_exit_codes_over_several_paths(tmp_path: Path) -> None:
    clean = FIXTURES / "mlp.pth"
    broken = H.truncated_zip(tmp_path)
    hostile = H.zip_exec(tmp_path)
    assert _scan_json(clean)[0] == 0
    assert _scan_json(clean, broken)[0] == 1
    code, report = _scan_json(clean, broken, hostile)
    assert code == 3
    assert [f["verdict"] for f in report["files"]] == ["safe", "error", "dangerous"]
    result = _cli("scan", clean, broken, hostile)
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        "error: 1 of 3 scanned file(s) are dangerous; nothing was run"
    ]
    assert "DANGEROUS" in result.stdout and "builtins.exec" in result.stdout


def test_strict_fails_needs_code() -> None:
    whole = FIXTURES / "convnet_whole.pth"
    assert _scan_json(whole)[0] == 0
    code, report = _scan_json("--strict", whole)
    assert code == 3 and report["strict"] is True
    assert report["files"][0]["verdict"] == "needs code"
    assert _scan_json("--strict", FIXTURES / "mlp.pth")[0] == 0
    result = _cli("scan", "--strict", whole)
    assert "--strict" in result.stderr


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, report = _scan_json(tmp_path / "nope.pth", tmp_path / "empty")
    assert code == 1
    assert [f["verdict"] for f in report["files"]] == ["error", "error"]


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


def test_folder_scan_finds_misnamed_pickles(tmp_path: Path) -> None:
    (tmp_path / "weights.data2").write_bytes(pickle.dumps(H._OsSystem(H.canary_path(tmp_path))))
    code, report = _scan_json(tmp_path)
    assert code == 3 and report["files"][0]["path"].endswith("weights.data2")


def test_index_given_directly_scans_its_shards(tmp_path: Path) -> None:
    code, report = _scan_json(FIXTURES / "convnet_sharded" / "model.safetensors.index.json")
    assert code == 0
    assert [f["format"] for f in report["files"]] == ["sharded index", "safetensors", "safetensors"]


# --- the reading ---------------------------------------------------------------------------------


def test_memoised_stack_global_is_named_at_its_offset(tmp_path: Path) -> None:
    path = H.zip_memo_stack_global(tmp_path)
    _, report = _scan_json(path)
    hit = next(f for f in _findings(report) if f["name"] == "os.system")
    assert hit["verdict"] == "dangerous" and hit["member"].endswith("/data.pkl")
    with zipfile.ZipFile(path) as zf:
        data = zf.read(hit["member"])
    assert hit["opcode"] == "STACK_GLOBAL"
    assert data[hit["offset"] : hit["offset"] + 1] == b"\x93", "offset is the STACK_GLOBAL"


def test_global_offset_is_the_opcode(tmp_path: Path) -> None:
    path = tmp_path / "p0.pkl"
    path.write_bytes(b"(dp0\nVa\np1\nI1\nsVb\np2\nc__builtin__\neval\np3\ns.")
    _, report = _scan_json(path)
    hit = next(f for f in _findings(report) if f["name"] == "builtins.eval")
    assert hit["opcode"] == "GLOBAL" and path.read_bytes()[hit["offset"] :].startswith(b"c__b")
    assert "written as __builtin__.eval" in hit["message"] and hit["why"] == "runs-code"


def test_computed_stack_global(tmp_path: Path) -> None:
    _, report = _scan_json(H.zip_computed_global(tmp_path))
    assert report["files"][0]["verdict"] == "dangerous"
    assert any(f["why"] == "computed" for f in _findings(report)), _findings(report)


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


def test_pickles_in_bytes_values_are_named_not_run(tmp_path: Path) -> None:
    """A bytes value is data (a load never unpickles it): what it would run is reported as
    `needs code` (so --strict fails it), and the file is not called dangerous."""
    evil = pickle.dumps(H._OsSystem(H.canary_path(tmp_path)), protocol=2)
    buf = io.BytesIO()
    torch.save({"x": H._OsSystem(H.canary_path(tmp_path))}, buf)
    cases = {
        "two_levels.pkl": _nested(evil, 2),
        "zip_in_bytes.pkl": pickle.dumps({"blob": buf.getvalue()}, protocol=4),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        code, report = _scan_json(tmp_path / name)
        assert code == 0 and report["files"][0]["verdict"] == "needs code", name
        hits = [f for f in _findings(report) if f["why"] == "nested-pickle"]
        assert hits and all(f["name"] == "posix.system" for f in hits), (name, hits)
        assert _scan_json("--strict", tmp_path / name)[0] == 3
    # data that merely starts like a pickle is data
    (tmp_path / "noise.pkl").write_bytes(pickle.dumps({"b": b"\x80\x04garbage bytes here"}))
    code, report = _scan_json(tmp_path / "noise.pkl")
    assert code == 0 and report["files"][0]["verdict"] == "safe"


def test_persistent_id_that_is_not_a_storage(tmp_path: Path) -> None:
    path = tmp_path / "persid.pkl"
    path.write_bytes(b"(dp0\nVkey\np1\nPsome-remote-object\np2\ns.")
    code, report = _scan_json(path)
    assert code == 1  # no loader reads it (torch asserts a tuple), and neither do we
    assert report["files"][0]["verdict"] == "error"


def test_trailing_bytes_are_noted_not_failed(tmp_path: Path) -> None:
    path = tmp_path / "trailing.pkl"
    path.write_bytes(pickle.dumps({"a": 1}) + b"\x00\xffnot a pickle")
    code, report = _scan_json(path)
    assert code == 0
    assert any(f["why"] == "trailing-data" for f in _findings(report))


def test_crc_mismatch_is_damage_with_crc(tmp_path: Path) -> None:
    path = H.zip_bad_crc(tmp_path)
    code, report = _scan_json(path)
    assert code == 0  # tensor records are not read by default: the verdict is about code
    code, report = _scan_json("--crc", path)
    assert code == 1
    hit = next(f for f in _findings(report) if f["why"] == "crc")
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
    assert report["files"][0]["verdict"] == "needs code"
    assert any(f["why"] == "torchscript" for f in _findings(report))
    assert report["files"][0]["pickles"] >= 2  # data.pkl and constants.pkl / debug pickles


def test_dcp_item_outside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "dcp"
    H._dcp_save(folder, {"w": torch.arange(4.0), "x": {"a": 1}})
    meta = folder / ".metadata"
    data = meta.read_bytes()
    assert data.count(b"__0_0.distcp") == 1
    meta.write_bytes(data.replace(b"__0_0.distcp", b"../../etc/pw"))
    code, report = _scan_json(folder)
    assert code == 3
    assert any(f["why"] == "path-traversal" for f in _findings(report))


HOSTILE_READABLE = [
    H.zip_os_system, H.zip_exec, H.zip_popen, H.zip_import_side_effect, H.legacy_os_system,
    H.pickle_protocol0_system, H.zip_memo_callable, H.zip_build_state, H.zip_persistent_id,
    H.zip_dotted_name, H.zip_runpy_run_code, H.zip_subprocess_popen,
]  # fmt: skip
AGREE = [
    *(FIXTURES / n for n in ("convnet_whole.pth", "lightning.ckpt", "sigmoidnet_legacy.pth",
                             "numpy_arrays.pkl", "timm_train.pth.tar", "mlp.pth")),
]  # fmt: skip


def test_scan_and_reader_give_one_verdict(tmp_path: Path) -> None:
    """One reading: the verdict and the names behind it are the same in scan and load."""
    import ckpt_tool

    paths = list(AGREE)
    for build in HOSTILE_READABLE:
        (tmp_path / build.__name__).mkdir()
        paths.append(build(tmp_path / build.__name__))
    report = scan_paths(paths)
    for path, scan in zip(paths, report.files, strict=True):
        ckpt = ckpt_tool.load(path)
        assert scan.verdict == ckpt.verdict, (path.name, scan.verdict, ckpt.verdict)
        dangerous = {f.name or f.message for f in scan.findings if f.verdict == "dangerous"}
        assert dangerous == set(ckpt.dangerous), path.name


def test_text_output_escapes_names_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "markup.pkl"
    name = "[bold red]Fake[/]\x1b[2J"
    path.write_bytes(H._pickle(H._call(H._sg("evil_mod", name)), 4))
    result = _cli("scan", path)
    assert "\x1b" not in result.stdout
    assert "[bold red]Fake" in result.stdout and "\\x1b" in result.stdout


# --- the rules ---------------------------------------------------------------------------------


def _use(module: str, attr: str, **how: int | bool) -> Use:
    use = Use(f"{module}.{attr}", module, attr, "GLOBAL", 0)
    for k, v in how.items():
        setattr(use, k, v)
    return use


@pytest.mark.parametrize(
    ("module", "attr", "how", "verdict"),
    [
        ("torch", "serialization.os.system", {}, "dangerous"),
        ("torch", "hub.load", {}, "dangerous"),
        ("collections", "_sys.modules", {}, "dangerous"),
        ("torch", "_utils._rebuild_tensor_v2.__globals__", {}, "dangerous"),
        ("torch.storage", "_load_from_bytes", {}, "dangerous"),
        ("torch.jit._script", "RecursiveScriptModule", {}, "dangerous"),
        ("torch.fx.graph_module", "reduce_graph_module", {}, "dangerous"),
        ("pydoc", "pipepager", {}, "dangerous"),
        ("bdb", "Bdb", {}, "dangerous"),
        ("code", "InteractiveInterpreter", {}, "dangerous"),
        ("copyreg", "add_extension", {}, "dangerous"),
        ("numpy", "load", {}, "dangerous"),
        ("timm.models._helpers", "load_state_dict", {}, "dangerous"),
        ("lib2to3.pgen2.grammar", "Grammar.loads", {"calls": 1}, "dangerous"),
        # called, not allowlisted: dangerous whatever the name
        ("uuid", "_get_command_stdout", {"calls": 1, "one_literal_calls": 1}, "dangerous"),
        ("torch.utils.collect_env", "run", {"calls": 1, "one_literal_calls": 1}, "dangerous"),
        ("logging", "FileHandler", {"calls": 1, "one_literal_calls": 1}, "dangerous"),
        ("aiohttp.client", "ClientSession", {"calls": 1}, "dangerous"),
        ("mylib", "Thing", {"calls": 1}, "dangerous"),
        ("mylib", "Mode", {"calls": 1, "nonliteral_calls": 1}, "dangerous"),
        ("mylib", "Mode", {"calls": 1, "one_literal_calls": 1, "result_called": True},
         "dangerous"),
        ("mylib", "Mode", {"built": True}, "dangerous"),
        ("mylib", "Mode", {"computed": True}, "dangerous"),
        # the ordinary ways
        ("transformers.trainer_utils", "IntervalStrategy", {"calls": 2, "one_literal_calls": 2},
         "needs code"),
        ("__main__", "Net", {"constructed": 1}, "needs code"),
        ("__main__", "Net", {}, "needs code"),
        ("builtins", "len", {}, "needs code"),
        ("mylib.models", "Outer.Inner", {"constructed": 1}, "needs code"),
        ("datetime", "datetime", {"calls": 1}, "needs code"),
        ("pathlib", "PosixPath", {"calls": 3}, "needs code"),
    ],
)  # fmt: skip
def test_rules(module: str, attr: str, how: dict[str, int | bool], verdict: str) -> None:
    assert judge(_use(module, attr, **how))[0] == verdict


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("torch._utils._rebuild_tensor_v2", "safe"),
        ("collections.OrderedDict", "safe"),
        ("copyreg._reconstructor", "safe"),
        ("torch.float32", "safe"),
        ("torch.jit._pickle.build_intlist", "safe"),
    ],
)
def test_allowlisted(name: str, verdict: str) -> None:
    from ckpt_tool.formats.safe_pickle import ALLOWLIST

    module, _, attr = name.rpartition(".")
    use = _use(module, attr, calls=1)
    use.allowlisted = name in ALLOWLIST
    assert judge(use)[0] == verdict


# --- every command ----------------------------------------------------------------------------

# How each command is invoked on a file; what it does with a dangerous one.
# "refuse": exit 3, one stderr line pointing to `ckpt scan`, nothing written.
# "flag": the report, with the dangerous callable named in it, then exit 3.
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
    "drop": (["{p}", "evil", "-o", "{o}"], "refuse"),
    "merge-lora": (["{p}", "{p}", "-o", "{o}"], "refuse"),
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
        assert result.exit_code == 3, (result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "ckpt scan" in lines[0] and "posix.system" in lines[0]
    elif expect == "flag":
        assert result.exit_code == 3, result.stderr
        assert "posix.system" in result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "ckpt scan" in lines[0] and "posix.system" in lines[0]
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
    assert report["summary"]["dangerous"] == 5, report["summary"]
    assert "Traceback" not in proc.stderr


def test_scan_is_in_the_check_panel() -> None:
    result = _cli("--help")
    assert "Check" in result.stdout and "scan" in result.stdout


# --- nothing dangerous goes out -----------------------------------------------------------------


def test_output_re_scan_refuses_dangerous_and_new_code(tmp_path: Path) -> None:
    """The writer's last check before renaming: the output is never dangerous and never names
    code its input did not (checked on real files, as write_pth calls it)."""
    import ckpt_tool
    from ckpt_tool.errors import WriteFailed
    from ckpt_tool.formats.writer import check_output_safety

    evil = H.zip_os_system(tmp_path)
    with pytest.raises(WriteFailed, match="would be dangerous"):
        check_output_safety(evil, tmp_path / "out.pth", None)
    whole = FIXTURES / "convnet_whole.pth"
    plain = ckpt_tool.load(FIXTURES / "mlp.pth")
    with pytest.raises(WriteFailed, match="name code its input does not"):
        check_output_safety(whole, tmp_path / "out.pth", plain)
    check_output_safety(whole, tmp_path / "out.pth", ckpt_tool.load(whole))  # same code: fine
    check_output_safety(FIXTURES / "mlp.pth", tmp_path / "out.pth", None)


def test_container_writes_keep_needs_code_and_nothing_more(tmp_path: Path) -> None:
    """strip/cast of a training dict keep its classes (re-scanned: needs code, same names);
    extract and convert write only tensors (safe)."""
    src = FIXTURES / "timm_train.pth.tar"
    out = tmp_path / "cast.pth"
    assert _cli("cast", src, "--dtype", "fp16", "-o", out).exit_code == 0
    code, report = _scan_json(out)
    assert code == 0 and report["files"][0]["verdict"] == "needs code"
    names = {f["name"] for f in _findings(report) if f["verdict"] == "needs code"}
    assert names == {"argparse.Namespace"}
    for cmd, target in (("extract", tmp_path / "w.pth"), ("convert", tmp_path / "w2.pth")):
        assert _cli(cmd, src, "-o", target).exit_code == 0
        assert _scan_json(target)[1]["files"][0]["verdict"] == "safe", cmd
