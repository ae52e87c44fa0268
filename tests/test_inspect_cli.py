"""`ckpt inspect`: JSON per fixture, --stats, --filter/--keys/--depth, escaping, entry points."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES, REPO, run_cli, run_json, run_module

import ckpt_tool

REPORT_KEYS = {
    "file",
    "format",
    "layout",
    "framework",
    "size_bytes",
    "weights",
    "extras",
    "num_tensors",
    "num_params",
    "num_buffer_elements",
    "bytes_by_dtype",
    "devices",
    "prefix",
    "shared",
    "trainable",
    "refused_globals",
    "modules",
    "metadata",
    "top_level",
    "tensors",
}
TENSOR_KEYS = {"key", "shape", "dtype", "numel", "bytes", "kind", "device", "requires_grad"}
STATS_KEYS = {"min", "max", "mean", "std", "nan", "inf"}

# name -> (format, layout, num_tensors, num_params)
EXPECTED = {
    "mlp.pth": ("torch-zip", "state_dict", 4, 203_530),
    "convnet_whole.pth": ("torch-zip", "module", 16, 29_034),
    "convnet_dataparallel.pth": ("torch-zip", "state_dict", 16, 29_034),
    "sigmoidnet_compiled.pth": ("torch-zip", "state_dict", 10, 1_291),
    "sigmoidnet_dp_compiled.pth": ("torch-zip", "state_dict", 10, 1_291),
    "lightning.ckpt": ("torch-zip", "training", 10, 1_291),
    "timm_train.pth.tar": ("torch-zip", "training", 10, 1_291),
    "convnet.safetensors": ("safetensors", "state_dict", 16, 29_034),
    "convnet_sharded": ("safetensors-sharded", "state_dict", 16, 29_034),
    "convnet_fp16.pth": ("torch-zip", "state_dict", 16, 29_034),
    "convnet_frozen.pth": ("torch-zip", "state_dict", 16, 29_034),
    "sigmoidnet_legacy.pth": ("torch-legacy", "state_dict", 10, 1_291),
    "numpy_arrays.pkl": ("pickle", "state_dict", 2, 15),
    "numpy_arrays_p4.pkl": ("pickle", "state_dict", 2, 15),
    "sigmoidnet_dcp": ("dcp", "state_dict", 10, 1_291),
    "hf_model": ("hf-folder (safetensors)", "state_dict", 10, 1_291),
}


def strict_json(text: str) -> Any:
    """Parse JSON refusing NaN/Infinity (not JSON; other tools' parsers reject them)."""

    def bad(token: str) -> Any:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=bad)


def inspect_json(*args: Any) -> dict[str, Any]:
    result = run_cli(["inspect", *[str(a) for a in args], "--json"])
    assert result.exit_code == 0, result.stderr
    return strict_json(result.stdout)  # type: ignore[no-any-return]


def tload(path: Path | str) -> Any:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


# --- every fixture ---------------------------------------------------------------------------


def test_expected_table_covers_fixtures() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir()} - {
        "README.md",
        "make_fixtures.py",
        "__pycache__",
    }
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_inspect_json_every_fixture(name: str) -> None:
    fmt, layout, num_tensors, num_params = EXPECTED[name]
    code, data = run_json(["inspect", FIXTURES / name])
    assert code == 0
    assert data is not None
    assert set(data) >= REPORT_KEYS
    assert data["format"] == fmt
    assert data["layout"] == layout
    assert data["num_tensors"] == num_tensors
    assert data["num_params"] == num_params
    assert len(data["tensors"]) == num_tensors
    assert data["file"] == str(FIXTURES / name)
    assert data["size_bytes"] > 0
    for t in data["tensors"]:
        assert set(t) >= TENSOR_KEYS
        assert math.prod(t["shape"]) == t["numel"]
    assert sum(t["bytes"] for t in data["tensors"]) == sum(data["bytes_by_dtype"].values())
    assert sum(data["devices"].values()) == num_tensors
    assert data["num_params"] + data["num_buffer_elements"] == sum(
        t["numel"] for t in data["tensors"]
    )
    assert set(data["weights"]) == {"key", "candidates", "hint"}
    assert set(data["prefix"]) >= {"prefix", "counts", "partial", "lightning", "suggest"}
    assert set(data["trainable"]) >= {
        "recorded",
        "trainable_params",
        "frozen_params",
        "frozen_keys",
        "bn_eval",
    }
    # keys in the report are the library's keys, in order
    assert [t["key"] for t in data["tensors"]] == list(ckpt_tool.load(FIXTURES / name).tensors)


def test_inspect_json_is_only_json_on_stdout() -> None:
    proc = run_module(["inspect", FIXTURES / "convnet_whole.pth", "--json"])
    assert proc.returncode == 0, proc.stderr
    strict_json(proc.stdout)
    assert proc.stderr == ""


def test_inspect_json_details() -> None:
    dp = inspect_json(FIXTURES / "convnet_dataparallel.pth")
    assert dp["prefix"]["prefix"] == "module."
    assert dp["prefix"]["counts"] == {"module.": 16}
    assert "strip-module" in dp["prefix"]["suggest"]
    assert {r["module"] for r in dp["top_level"]} == {"layer1", "layer2", "fc"}

    light = inspect_json(FIXTURES / "lightning.ckpt")
    assert light["framework"] == "lightning"
    assert light["prefix"]["lightning"] is True
    assert "model." in light["prefix"]["suggest"]
    assert "optimizer_states" in light["extras"]
    assert [r["module"] for r in light["top_level"]] == ["fc"]

    timm = inspect_json(FIXTURES / "timm_train.pth.tar")
    assert timm["weights"]["key"] == "state_dict"
    assert timm["weights"]["candidates"] == ["state_dict", "state_dict_ema"]
    assert "--weights" in timm["weights"]["hint"]

    whole = inspect_json(FIXTURES / "convnet_whole.pth")
    assert whole["modules"][""] == "__main__.ConvNet"
    assert whole["modules"]["layer1.0"] == "torch.nn.modules.conv.Conv2d"
    refused = {g["name"]: g for g in whole["refused_globals"]}
    assert "__main__.ConvNet" in refused
    assert not any(g["dangerous"] for g in whole["refused_globals"])

    frozen = inspect_json(FIXTURES / "convnet_frozen.pth")
    t = frozen["trainable"]
    assert t["recorded"] is True
    assert t["frozen_keys"] == [
        "layer1.0.weight",
        "layer1.0.bias",
        "layer1.1.weight",
        "layer1.1.bias",
    ]
    assert t["frozen_params"] == 16 * 25 + 16 + 16 + 16
    assert t["trainable_params"] == 29_034 - t["frozen_params"]
    by_key = {x["key"]: x for x in frozen["tensors"]}
    assert by_key["layer1.0.weight"]["requires_grad"] is False
    assert by_key["fc.weight"]["requires_grad"] is True

    fp16 = inspect_json(FIXTURES / "convnet_fp16.pth")
    assert set(fp16["bytes_by_dtype"]) == {"float16", "int64"}

    st = inspect_json(FIXTURES / "convnet.safetensors")
    assert st["metadata"].get("format") == "pt"


def test_inspect_weights_option() -> None:
    data = inspect_json(FIXTURES / "timm_train.pth.tar", "--weights", "state_dict_ema", "--stats")
    assert data["weights"]["key"] == "state_dict_ema"
    ema = tload(FIXTURES / "timm_train.pth.tar")["state_dict_ema"]
    for t in data["tensors"]:
        assert t["stats"]["max"] == pytest.approx(float(ema[t["key"]].double().max()))


def test_inspect_unknown_weights_is_an_error() -> None:
    result = run_cli(["inspect", FIXTURES / "timm_train.pth.tar", "--weights", "nope", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["exit_code"] == 1  # --json: the error as a document
    assert "state_dict_ema" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- --stats -----------------------------------------------------------------------------------


def _check_stats(stats: dict[str, Any], t: torch.Tensor, key: str) -> None:
    x = t.detach().double()
    assert set(stats) >= STATS_KEYS, key
    assert stats["nan"] == 0 and stats["inf"] == 0, key
    assert stats["min"] == pytest.approx(float(x.min()), rel=1e-9, abs=1e-12), key
    assert stats["max"] == pytest.approx(float(x.max()), rel=1e-9, abs=1e-12), key
    assert stats["mean"] == pytest.approx(float(x.mean()), rel=1e-9, abs=1e-12), key
    if x.numel() > 1:
        assert stats["std"] == pytest.approx(float(x.std()), rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize(
    "name", ["mlp.pth", "convnet_fp16.pth", "convnet_frozen.pth", "sigmoidnet_legacy.pth"]
)
def test_stats_match_torch(name: str) -> None:
    data = inspect_json(FIXTURES / name, "--stats")
    ref = tload(FIXTURES / name)
    assert [t["key"] for t in data["tensors"]] == list(ref)
    for t in data["tensors"]:
        _check_stats(t["stats"], ref[t["key"]], t["key"])


def test_stats_safetensors_and_dcp() -> None:
    from safetensors.torch import load_file

    ref = load_file(str(FIXTURES / "convnet.safetensors"))
    for t in inspect_json(FIXTURES / "convnet.safetensors", "--stats")["tensors"]:
        _check_stats(t["stats"], ref[t["key"]], t["key"])
    seed = tload(FIXTURES / "sigmoidnet_legacy.pth")  # same seeded SigmoidNet
    for t in inspect_json(FIXTURES / "sigmoidnet_dcp", "--stats")["tensors"]:
        _check_stats(t["stats"], seed[t["key"]], t["key"])


def test_stats_nan_inf_and_edge_cases(tmp_path: Path) -> None:
    sd = OrderedDict(
        [
            ("mixed", torch.tensor([1.0, float("nan"), 3.0, float("inf"), -float("inf"), 5.0])),
            ("mixed_bf16", torch.tensor([float("nan"), 2.0, float("inf")]).bfloat16()),
            ("all_nan", torch.full((3,), float("nan"))),
            ("empty", torch.empty(0, 2)),
            ("scalar", torch.tensor(4.0)),
            ("ints", torch.tensor([3, -7, 10], dtype=torch.int64)),
            ("flags", torch.tensor([True, False, True, True])),
        ]
    )
    path = tmp_path / "special.pth"
    torch.save(sd, path)
    result = run_cli(["inspect", path, "--stats", "--json"])
    assert result.exit_code == 0, result.stderr
    data = strict_json(result.stdout)  # no NaN/Infinity tokens in the document
    s = {t["key"]: t["stats"] for t in data["tensors"]}
    assert (s["mixed"]["nan"], s["mixed"]["inf"]) == (1, 2)
    assert (s["mixed"]["min"], s["mixed"]["max"]) == (1.0, 5.0)
    assert s["mixed"]["mean"] == pytest.approx(3.0)
    assert (s["mixed_bf16"]["nan"], s["mixed_bf16"]["inf"]) == (1, 1)
    assert s["all_nan"]["nan"] == 3 and s["all_nan"]["inf"] == 0
    assert s["empty"]["nan"] == 0 and s["empty"]["inf"] == 0
    assert s["scalar"]["min"] == s["scalar"]["max"] == 4.0
    _check_stats(s["ints"], sd["ints"], "ints")
    _check_stats(s["flags"], sd["flags"], "flags")
    # human output shows the counts
    human = run_cli(["inspect", path, "--stats", "--keys"])
    assert human.exit_code == 0, human.stderr
    assert "NaN 1" in human.stdout and "Inf 2" in human.stdout


# --- --filter / --keys / --depth ---------------------------------------------------------------


def test_filter_json() -> None:
    data = inspect_json(FIXTURES / "convnet.safetensors", "--filter", "layer1.*")
    keys = [t["key"] for t in data["tensors"]]
    assert keys
    assert all(k.startswith("layer1.") for k in keys)
    ref = ckpt_tool.load(FIXTURES / "convnet.safetensors").tensors
    assert sorted(keys) == sorted(k for k in ref if k.startswith("layer1."))


def test_filter_no_match_warns() -> None:
    result = run_cli(["inspect", FIXTURES / "mlp.pth", "--filter", "nothing.*"])
    assert result.exit_code == 0
    assert "nothing.*" in result.stderr


def test_keys_listing() -> None:
    result = run_cli(["inspect", FIXTURES / "mlp.pth", "--keys"])
    assert result.exit_code == 0, result.stderr
    for key in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert key in result.stdout
    assert "[256, 784]" in result.stdout


def test_depth_limits_tree() -> None:
    full = run_cli(["inspect", FIXTURES / "convnet_dataparallel.pth"])
    shallow = run_cli(["inspect", FIXTURES / "convnet_dataparallel.pth", "--depth", "1"])
    assert full.exit_code == shallow.exit_code == 0
    assert "module" in shallow.stdout
    assert "running_mean" in full.stdout
    assert "running_mean" not in shallow.stdout
    two = run_cli(["inspect", FIXTURES / "convnet_dataparallel.pth", "--depth", "2"])
    for name in ("layer1", "layer2", "fc"):
        assert name in two.stdout
    assert "running_mean" not in two.stdout


def test_depth_zero_is_usage_error() -> None:
    result = run_cli(["inspect", FIXTURES / "mlp.pth", "--depth", "0"])
    assert result.exit_code == 2


# --- names from the file are data ----------------------------------------------------------------

HOSTILE_KEYS = ["[bold]x", "layer.\x1b[31mred\x1b[0m.weight", "[red]oops[/red].bias", "ok.weight"]


@pytest.fixture
def hostile_names(tmp_path: Path) -> Path:
    path = tmp_path / "names.pth"
    torch.save(OrderedDict((k, torch.ones(2)) for k in HOSTILE_KEYS), path)
    return path


@pytest.mark.parametrize("mode", [[], ["--keys"], ["--depth", "1"], ["--stats"]])
def test_names_are_escaped_in_human_output(hostile_names: Path, mode: list[str]) -> None:
    result = run_cli(["inspect", hostile_names, *mode])
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    if mode != ["--depth", "1"]:
        assert "[bold]x" in result.stdout  # printed literally, not eaten as markup
        assert "\\x1b" in result.stdout


def test_names_are_escaped_in_real_process(hostile_names: Path) -> None:
    for mode in ([], ["--keys"]):
        proc = run_module(["inspect", hostile_names, *mode])
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr
        assert "[bold]x" in proc.stdout
        assert "[red]oops[/red]" in proc.stdout


def test_hostile_file_name_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "[bold]evil\x1b[2J.pth"
    torch.save({"w": torch.ones(2)}, path)
    result = run_cli(["inspect", path])
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "[bold]evil" in result.stdout
    missing = run_cli(["inspect", tmp_path / "[red]gone\x1b[0m.pth"])
    assert missing.exit_code == 1
    assert "\x1b" not in missing.stderr and missing.stdout == ""


def test_names_exact_in_json(hostile_names: Path) -> None:
    data = inspect_json(hostile_names)
    assert [t["key"] for t in data["tensors"]] == HOSTILE_KEYS


# --- entry points --------------------------------------------------------------------------------


def test_version() -> None:
    result = run_cli(["--version"])
    assert result.exit_code == 0
    assert ckpt_tool.__version__ in result.stdout


def test_module_help() -> None:
    proc = run_module(["--help"])
    assert proc.returncode == 0
    assert "inspect" in proc.stdout


def test_inspect_help() -> None:
    result = run_cli(["inspect", "--help"])
    assert result.exit_code == 0
    for opt in ("--depth", "--filter", "--keys", "--stats", "--weights", "--json"):
        assert opt in result.stdout


def test_no_args_shows_help() -> None:
    result = run_cli([])
    assert result.exit_code in (0, 2)
    assert "Usage" in result.output
    assert "inspect" in result.output


_NO_TORCH = """
import contextlib, io, sys
from ckpt_tool.cli import main
sys.argv = ["ckpt", "inspect", sys.argv[1], "--json"]
buf = io.StringIO()
code = 0
try:
    with contextlib.redirect_stdout(buf):
        main()
except SystemExit as exc:
    code = exc.code or 0
sys.stdout.write(buf.getvalue())
sys.stderr.write(f"exit={code} torch={'torch' in sys.modules}\\n")
"""


@pytest.mark.parametrize(
    "name",
    [
        "mlp.pth",
        "convnet.safetensors",
        "convnet_sharded",
        "convnet_whole.pth",
        "lightning.ckpt",
        "timm_train.pth.tar",
        "sigmoidnet_legacy.pth",
        "numpy_arrays_p4.pkl",
        "sigmoidnet_dcp",
        "hf_model",
    ],
)
def test_inspect_does_not_import_torch(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(FIXTURES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert "exit=0 torch=False" in proc.stderr, proc.stderr
    assert strict_json(proc.stdout)["num_tensors"] == EXPECTED[name][2]


_IMPORTED = """
import contextlib, io, json, sys
from ckpt_tool.cli import main
sys.argv = ["ckpt", *sys.argv[1:]]
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main()
    except SystemExit:
        pass
sys.stderr.write(json.dumps(sorted(sys.modules)))
"""


def _modules_after(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORTED, *args], capture_output=True, text=True, timeout=60,
        cwd=REPO,
    )  # fmt: skip
    return set(json.loads(proc.stderr))


def test_a_command_imports_its_own_module_only() -> None:
    from ckpt_tool.cli import COMMANDS

    every = {f"ckpt_tool.cli.{module}" for _, _, module, _ in COMMANDS}
    got = _modules_after("inspect", str(FIXTURES / "mlp.pth"), "--json")
    assert got & every == {"ckpt_tool.cli.inspect_cmd"}
    assert not {"rich", "numpy", "torch", "tarfile", "logging"} & got  # --json needs none
    got = _modules_after("scan", str(FIXTURES / "mlp.pth"), "--json")
    assert got & every == {"ckpt_tool.cli.scan_cmd"} and "rich" not in got
    assert every <= _modules_after("--help")  # the listing reads every command's help


def test_group_help_lists_what_each_command_says() -> None:
    """`ckpt --help` lists commands without building their options; each line must still
    be what the built command says of itself."""
    from typer.main import get_command

    from ckpt_tool.cli import COMMANDS, app

    listed = run_cli(["--help"]).output
    group = get_command(app)
    for name, panel, _, _ in COMMANDS:
        built = group.commands[name]  # type: ignore[attr-defined]
        assert built.rich_help_panel == panel
        first = " ".join((built.help or "").split("\n\n")[0].split()[:5])
        assert first in " ".join(listed.replace("│", " ").split()), name


def test_entry_point_subprocess_json() -> None:
    for name in ("mlp.pth", "convnet.safetensors"):
        proc = run_module(["inspect", FIXTURES / name, "--json"])
        assert proc.returncode == 0, proc.stderr
        assert strict_json(proc.stdout)["num_tensors"] == EXPECTED[name][2]


# --- files built here ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path_factory.mktemp("resnet34") / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    return path


def test_resnet34_counts(resnet34_file: Path) -> None:
    data = inspect_json(resnet34_file)
    assert data["num_params"] == 21_797_672
    assert data["num_tensors"] == len(torch.load(resnet34_file, weights_only=True, mmap=True))
    shares = data["top_level"]
    assert sum(r["share"] for r in shares) == pytest.approx(1.0)
    assert sum(r["params"] for r in shares) == 21_797_672
    assert shares[0]["module"] == "layer4"  # the largest stage comes first
    assert data["trainable"]["recorded"] is False


def test_resnet34_tree_collapses_identical_blocks(resnet34_file: Path) -> None:
    result = run_cli(["inspect", resnet34_file, "--depth", "all"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "identical" in out
    # layer3 has 6 blocks: 3.0 has a downsample, 3.1..3.5 are one run of 5
    assert "×5" in out
    # expanded children of a collapsed run are shown once, not five times
    assert out.count("downsample") == 3  # layer2.0, layer3.0, layer4.0


def test_cuda_tagged_devices_in_report(tmp_path: Path) -> None:
    registry = torch.serialization._package_registry
    saved = list(registry)
    torch.serialization.register_package(
        -1_000_000, lambda s: "cuda:0" if s.device.type == "cpu" else None, lambda s, loc: None
    )
    try:
        torch.save({"w": torch.ones(2, 2), "b": torch.zeros(2)}, tmp_path / "gpu.pth")
    finally:
        registry[:] = saved
    data = inspect_json(tmp_path / "gpu.pth", "--stats")
    assert data["devices"] == {"cuda:0": 2}
    assert all(t["device"] == "cuda:0" for t in data["tensors"])
    assert {t["key"]: t["stats"]["mean"] for t in data["tensors"]} == {"w": 1.0, "b": 0.0}


def test_shared_reported(tmp_path: Path) -> None:
    w = torch.randn(3, 3)
    torch.save(OrderedDict([("enc.weight", w), ("dec.weight", w)]), tmp_path / "tied.pth")
    data = inspect_json(tmp_path / "tied.pth")
    assert data["shared"] == [["enc.weight", "dec.weight"]]


def test_deep_pickle_is_not_a_crash(tmp_path: Path) -> None:
    depth = 50_000
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + b"]" * (depth + 1) + b"a" * depth + b".")
    for args in (["--json"], []):
        result = run_cli(["inspect", path, *args])
        assert result.exit_code in (0, 1)
        assert "internal error" not in result.stderr
        assert "Traceback" not in result.stderr


def test_print_json_streams_exactly_json_dumps(capsys: pytest.CaptureFixture[str]) -> None:
    """The streamed document (entry by entry, long lists in slices) is json.dumps' bytes."""
    import json as json_mod

    from ckpt_tool.render import print_json

    cases: list[Any] = [
        {"a": 1, "t": [{"k": i, "s": [i, "é", None, i / 3]} for i in range(1000)], "e": []},
        {"z": [0] * 256, "y": [0] * 257, "x": [[1]] * 513},
        {"": [{}] * 1000, "nan": float("nan")},
        {1: "non-string key"},
        [1, 2, {"a": Path("p")}],
        {},
    ]
    for case in cases:
        print_json(case)
        assert capsys.readouterr().out == json_mod.dumps(case, default=str) + "\n"


def test_fast_exit_flushes_output_and_lets_profilers_write(tmp_path: Path) -> None:
    """The executable leaves without tearing the interpreter down, after flushing: piped
    JSON arrives whole, the exit code is kept, and a profiler still writes its file."""
    exe = Path(sys.executable).with_name("ckpt")
    done = subprocess.run(
        [str(exe), "inspect", str(FIXTURES / "mlp.pth"), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["num_tensors"] > 0
    missing = subprocess.run(
        [str(exe), "inspect", str(tmp_path / "nope.pth"), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1 and json.loads(missing.stdout)["exit_code"] == 1
    prof = tmp_path / "run.prof"
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(prof), str(exe), "count",
         str(FIXTURES / "mlp.pth"), "--json"],
        capture_output=True,
        check=True,
    )  # fmt: skip
    assert prof.stat().st_size > 0
