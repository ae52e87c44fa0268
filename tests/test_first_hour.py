"""A new user's first hour: odd inputs get one clear line (never a traceback or a hang), one
exit-code rule, readable numbers and screens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, REPO, run_cli, run_json


def _one_error(result, code: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, (result.exit_code, result.stdout[-300:], result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def _run(args: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "ckpt_tool", *args],
        capture_output=True, text=True, timeout=timeout, cwd=kw.pop("cwd", REPO), **kw,
    )  # fmt: skip


# --- odd paths -------------------------------------------------------------------------------


def test_demo_workdir_that_is_a_file_or_unusable(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    _one_error(run_cli(["demo", "--workdir", notes]), 1, "is a file, not a folder")
    assert notes.read_text() == "keep"
    _one_error(run_cli(["demo", "--workdir", "/proc/ckpt-demo-nope"]), 1, "cannot be used")


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    for command in ("scan", "inspect"):
        result = run_cli([command, tmp_path / "loop1"])
        assert result.exit_code == 1, (command, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    code, report = run_json(["scan", tmp_path])  # a folder holding the loop: walked, no hang
    assert code == 1 and report["files"][0]["verdict"] == "error"


@pytest.mark.parametrize("command", ["inspect", "scan", "count"])
def test_named_pipe_is_refused_not_read(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    proc = _run([command, str(fifo)], timeout=20)  # a read would block forever
    assert proc.returncode == 1, proc.stderr
    assert "not a regular file" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


_READY = """
import os
os.write(int(os.environ["CKPT_TEST_READY_FD"]), b"r")  # Python's own start-up is over
"""


def test_ctrl_c_during_start_up_is_one_line(tmp_path: Path) -> None:
    """SIGINT at many moments of ckpt's start-up (its imports, typer's and rich's included):
    exit 130 with one line, or the command finished first; never a KeyboardInterrupt
    traceback. The delays count from the end of Python's own start-up (a sitecustomize
    writes a byte then): an interrupt inside the interpreter's start is not ckpt's to catch."""
    (tmp_path / "sitecustomize.py").write_text(_READY)
    interrupted = 0
    for delay in [0.01 + i / 200 for i in range(40)] + [0.6]:  # 10 ms: runpy and __main__
        ready, signal_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
        env["CKPT_TEST_READY_FD"] = str(signal_w)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckpt_tool", "inspect", str(FIXTURES / "mlp.pth"), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
            pass_fds=(signal_w,),
        )  # fmt: skip
        os.close(signal_w)
        assert os.read(ready, 1) == b"r", "the sitecustomize marker did not run"
        os.close(ready)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        if proc.returncode in (130, -signal.SIGINT):  # a shell reports both as 130
            interrupted += 1
            assert err.strip().splitlines() == ["error: interrupted; nothing was written"], err
        else:
            assert proc.returncode == 0, (delay, proc.returncode, err)
    assert interrupted >= 5  # most delays land inside start-up


# --- one exit-code rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["freeze", "--regex", "[bad", "{src}"], "not a valid regular expression"),
        (["rename", "{src}", "--map", "(fc=x"], "invalid regular expression"),
        (["strip-module", "{dp}", "-o", "{tmp}/out.txt"], "unsupported output extension"),
        (["convert", "{src}", "-o", "{tmp}/out.txt"], "unsupported output extension"),
        (["smoke-train", "{src}", "--arch", "mlp", "--input-shape", "3,x,2"], "--input-shape"),
        (["smoke-train", "{src}", "--arch", "mlp", "--input-shape", "784x"], "--input-shape"),
        (["inspect", "{src}", "--depth", "deep"], "--depth"),
    ],
)
def test_command_line_mistakes_are_usage_errors(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    src, dp = FIXTURES / "mlp.pth", FIXTURES / "convnet_dataparallel.pth"
    argv = [a.format(src=src, dp=dp, tmp=tmp_path) for a in args]
    _one_error(run_cli(argv), 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_file_problems_stay_exit_1(tmp_path: Path) -> None:
    """What is wrong with the file (not the command line) is exit 1."""
    _one_error(run_cli(["freeze", "nothing.*", FIXTURES / "mlp.pth"]), 1, "matches no key")
    _one_error(run_cli(["inspect", tmp_path / "missing.pth"]), 1, "no such file")


# --- readable numbers and screens ---------------------------------------------------------------


def test_count_shows_tiny_shares(tmp_path: Path) -> None:
    big = torch.nn.Sequential(torch.nn.Linear(2000, 1000), torch.nn.Linear(1000, 2))
    big[0].weight.requires_grad_(False)
    big[0].bias.requires_grad_(False)
    sd = big.state_dict(keep_vars=True)
    torch.save(sd, tmp_path / "m.pth")
    result = run_cli(["count", tmp_path / "m.pth"])
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("trainable"))
    assert "2,002" in line and "(<0.1%)" in line, line


def test_inspect_default_tree_fits_a_screen(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    short = run_cli(["inspect", tmp_path / "r18.pth"])
    full = run_cli(["inspect", tmp_path / "r18.pth", "--depth", "all"])
    assert short.exit_code == 0 and full.exit_code == 0
    assert len(short.stdout.splitlines()) <= 50 < len(full.stdout.splitlines())
    assert "--depth all shows every level" in short.stdout
    assert "layer4" in short.stdout and "num_batches_tracked" in full.stdout


def test_columns_is_honoured_when_piped() -> None:
    env = {**os.environ, "COLUMNS": "80"}
    proc = _run(["inspect", str(FIXTURES / "convnet_whole.pth"), "--keys"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    env["COLUMNS"] = "200"
    wide = _run(["inspect", str(FIXTURES / "convnet_whole.pth"), "--keys"], env=env)
    assert max(len(line) for line in wide.stdout.splitlines()) > 80


def test_smoke_train_reads_timm_input_size_and_passes(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from ckpt_tool.train import infer_input_shape

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)
    assert infer_input_shape(vit) == (3, 32, 32)  # the size it was built with
    assert infer_input_shape(timm.create_model("resnet18")) == (3, 224, 224)  # pretrained_cfg
    torch.manual_seed(0)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    code, report = run_json(
        ["smoke-train", tmp_path / "vit.pth", "--arch", "timm/vit_tiny_patch16_224",
         "--arch-arg", "img_size=32", "--num-classes", "5", "--steps", "3"]
    )  # fmt: skip
    assert code == 0, report
    assert report["input_shape"] == [3, 32, 32]
    assert all(c["ok"] for c in report["checks"]), report["checks"]


def test_ctrl_c_wrapped_by_class_creation_is_still_an_interrupt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Python 3.11 wraps Ctrl-C during a class's creation (a dataclass mid-import) in
    RuntimeError: it is still an interrupt, not an internal error."""
    import typer

    from ckpt_tool.cli.common import boundary
    from ckpt_tool.errors import caused_by_interrupt

    @boundary
    def command(json_out: bool = False) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from exc

    with pytest.raises(typer.Exit) as done:
        command(json_out=False)
    assert done.value.exit_code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted; nothing was written"
    assert not caused_by_interrupt(RuntimeError("a real bug"))


def test_ctrl_c_inside_a_callback_python_only_prints_is_delivered_again() -> None:
    """Ctrl-C in an import lock's weakref callback is printed and dropped by Python; the
    entry point's hook raises it again in the main thread, where the guard catches it."""
    import types

    from ckpt_tool import entry

    lost = types.SimpleNamespace(exc_value=KeyboardInterrupt(), exc_type=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        entry._unraisable(lost)
        for _ in range(1000):  # the interrupt is raised at the next check of pending signals
            time.sleep(0.001)
