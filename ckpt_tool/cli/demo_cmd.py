"""`ckpt demo`."""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.cli.common import JsonOpt, boundary, runs_models
from ckpt_tool.errors import CheckFailed, OutputRefused
from ckpt_tool.reports import DemoStep


@boundary
@runs_models
def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            metavar="DIR",
            help="Folder to work in (must be empty or absent); default: a new temp folder.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Walk through the whole card on an embedded model: every step a real `ckpt` run, checked.

    Example: ckpt demo --workdir /tmp/ckpt-demo
    """
    from ckpt_tool.demo import build_inputs, run_step, steps

    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="ckpt-demo-"))
    elif workdir.exists() and not workdir.is_dir():
        raise OutputRefused(f"{workdir}: is a file, not a folder; give --workdir a folder")
    elif workdir.exists() and any(workdir.iterdir()):
        raise OutputRefused(f"{workdir}: not empty; the demo writes only into an empty folder")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".ckpt-demo-probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputRefused(
            f"{workdir}: cannot be used as the demo's folder ({exc.strerror or exc}); "
            "choose another --workdir"
        ) from None
    build_inputs(workdir)
    if not json_out:
        render.out.print(
            f"[bold]ckpt demo[/] in {render.safe(workdir)}: the seed MNIST ConvNet, "
            "saved as DataParallel would (convnet_dp.pth) and as a whole pickled "
            "model (convnet_whole.pth)"
        )
    results = []
    for step in steps():
        result = run_step(step, workdir)
        results.append(result)
        if not json_out:
            render.demo_step(step.title, "ckpt " + shlex.join(step.args), result.output)
        if not result.ok:
            break
    rows: list[DemoStep] = [
        {
            "step": r.step.title,
            "command": "ckpt " + shlex.join(r.step.args),
            "exit_code": r.exit_code,
            "ok": r.ok,
            "problem": r.problem,
            "output": r.output,
        }
        for r in results
    ]
    ok = len(results) == len(steps()) and all(r.ok for r in results)
    if json_out:
        render.print_json({"workdir": str(workdir), "ok": ok, "steps": rows})
    else:
        render.demo_summary(rows, str(workdir))
    if not ok:
        failed = next((r for r in results if not r.ok), None)
        what = failed.step.title if failed else "?"
        raise CheckFailed(f"demo step {what!r} did not do what it should; see {workdir}")
