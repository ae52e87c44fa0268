"""Fuzzing the readers and the scanner with mutated valid files.

Design: hypothesis runs inside a child process. The test builds small valid fixtures with torch
(a torch zip, a legacy torch file, a numpy pickle, a safetensors file, and a hostile zip), then
runs this file as a script. The child first caps its address space (RLIMIT_AS, 2 GB: a reader
that believed a claimed size and allocated it would die with MemoryError, which counts as a
failure) and never imports torch (torch alone maps more than that). For each reader it runs a
derandomized hypothesis test (fixed seed, `max_examples` per reader, no deadline, no database,
no shrinking so a failure cannot stall CI) whose examples are lists of mutations: bit flips,
truncations, spliced bytes, "interesting" integers written over 1-8 bytes, duplicated chunks.
Zip fixtures are also mutated inside data.pkl with the archive rebuilt around it (valid CRCs),
so the pickle reader, not only the zip directory check, meets the damage.

Each example is written to a file and then: `ckpt_tool.load` must return a Checkpoint or raise
a CkptError (any other exception is a failure); a successful read must be consistent (every
tensor's bytes inside the file, `inspect_report` builds); `scan_paths` must never raise and
must return exit code 0, 1 or 3; the canary of the hostile fixture must never appear. A
SIGALRM per example (10 s) turns a hang into a failure. The child prints one JSON summary line,
the test prints it and asserts no failures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MAX_EXAMPLES = 1000  # per reader; the six readers take about 25 s on two cores
ADDRESS_SPACE = 2 << 30
EXAMPLE_TIMEOUT_S = 10
READERS = ("zip", "zip-data-pkl", "hostile-zip-data-pkl", "legacy", "pickle", "safetensors")
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**62,
               2**63 - 1, 2**64 - 1]  # fmt: skip


# --- the parent: pytest --------------------------------------------------------------------------


def _fixtures(folder: Path) -> None:
    import hostile_files as H
    import numpy as np
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {
        "module.conv.weight": torch.rand(4, 2, 3, 3, generator=g),
        "module.conv.bias": torch.rand(4, generator=g),
        "module.bn.num_batches_tracked": torch.tensor(3),
        "module.fc.weight": torch.rand(2, 4, generator=g).half(),
    }
    torch.save(sd, folder / "zip.pth")
    torch.save(sd, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int64)}
    import pickle

    (folder / "pickle.pkl").write_bytes(pickle.dumps(arrays, protocol=2))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "st.safetensors"))
    hostile = folder / "hostile"
    hostile.mkdir()
    H.zip_os_system(hostile).rename(folder / "hostile.pth")


def test_fuzz_readers_in_a_memory_capped_child(tmp_path: Path) -> None:
    _fixtures(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CKPT_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(MAX_EXAMPLES)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    total = sum(r["cases"] for r in summary["readers"].values())
    line = (
        f"fuzz: {total} cases in {time.monotonic() - t0:.0f} s under a 2 GB address-space cap; "
        + "; ".join(
            f"{name} {r['cases']} ({r['read']} read, {r['refused']} CkptError, "
            f"scan exit {r['scan']})"
            for name, r in summary["readers"].items()
        )
        + f"; failures {len(summary['failures'])}"
    )
    print(line)
    (tmp_path / "summary.txt").write_text(line + "\n" + json.dumps(summary, indent=1))
    assert summary["failures"] == [], summary["failures"][:3]
    assert not (tmp_path / "hostile" / "CANARY_EXECUTED").exists()
    assert total >= MAX_EXAMPLES * len(READERS) * 0.9


# --- the child: hypothesis under RLIMIT_AS ------------------------------------------------------


class Hang(BaseException):
    """Raised by SIGALRM; a BaseException so no `except Exception` in a reader swallows it."""


def _mutate(data: bytes, ops: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        n = len(buf)
        kind = op[0]
        if kind == "flip" and n:
            buf[op[1] % n] ^= 1 << op[2]
        elif kind == "truncate":
            del buf[op[1] % (n + 1) :]
        elif kind == "splice":
            at = op[1] % (n + 1)
            buf[at : at + op[2]] = op[3]
        elif kind == "int" and n:
            at = op[1] % n
            raw = (op[2] % (1 << (8 * op[3]))).to_bytes(op[3], "little")
            buf[at : at + op[3]] = raw
        elif kind == "dup" and n:
            start = op[1] % n
            chunk = buf[start : start + op[2]]
            at = op[3] % (n + 1)
            buf[at:at] = chunk
    return bytes(buf)


def _rezip(original: bytes, new_pkl: bytes) -> bytes:
    import io

    src = zipfile.ZipFile(io.BytesIO(original))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info in src.infolist():
            data = src.read(info)
            zf.writestr(info.filename, new_pkl if info.filename.endswith("data.pkl") else data)
    return out.getvalue()


def _data_pkl(original: bytes) -> bytes:
    import io

    with zipfile.ZipFile(io.BytesIO(original)) as zf:
        return next(zf.read(n) for n in zf.namelist() if n.endswith("/data.pkl"))


def _check_read(path: Path, size: int) -> bool:
    """True for a consistent read, False for a CkptError; anything else propagates."""
    from ckpt_tool import load
    from ckpt_tool.errors import CkptError
    from ckpt_tool.inspection import inspect_report

    try:
        ckpt = load(path)
        for entry in ckpt.tensors.values():
            rec = entry.record
            if rec.storage is None:
                continue
            loc = ckpt.locate(rec.storage)
            if rec.storage.nbytes <= loc.available:
                # what TensorReader would mmap: it must lie inside the file
                assert loc.offset + rec.storage.nbytes <= size, (entry.key, loc, size)
        json.dumps(inspect_report(ckpt, None), default=str)
    except CkptError as exc:
        assert "\n" not in exc.message
        return False
    return True


def _strategies() -> Any:
    from hypothesis import strategies as st

    position = st.integers(0, 2**32)
    width = st.sampled_from([1, 2, 4, 8])
    mutation = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(0, 7)),
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("splice"), position, st.integers(0, 64), st.binary(max_size=32)),
        st.tuples(st.just("int"), position, st.sampled_from(INTERESTING), width),
        st.tuples(st.just("dup"), position, st.integers(1, 256), position),
    )
    return st.lists(mutation, min_size=0, max_size=6)


def _fuzz_reader(reader: str, source: Path, folder: Path, max_examples: int) -> dict[str, Any]:
    """Run one reader's hypothesis test; returns its statistics (raises on a failure)."""
    from hypothesis import HealthCheck, Phase, given, settings

    from ckpt_tool import load
    from ckpt_tool.errors import CkptError
    from ckpt_tool.scanning import scan_paths

    original = source.read_bytes()
    inner = reader.endswith("data-pkl")
    base = _data_pkl(original) if inner else original
    stats: dict[str, Any] = {"cases": 0, "read": 0, "refused": 0, "scan": Counter()}
    messages: Counter[str] = Counter()
    path = folder / "work" / f"case{source.suffix}"

    @settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(ops=_strategies())
    def run(ops: list[tuple[Any, ...]]) -> None:
        data = _mutate(base, ops)
        if inner:
            data = _rezip(original, data)
        path.write_bytes(data)
        stats["cases"] += 1
        signal.alarm(EXAMPLE_TIMEOUT_S)
        try:
            ok = _check_read(path, len(data))
            report = scan_paths([path])
            json.dumps(report.as_dict())
        except Hang:
            raise AssertionError(f"hang over {EXAMPLE_TIMEOUT_S} s") from None
        finally:
            signal.alarm(0)
        assert report.exit_code in (0, 1, 3)
        if not ops:
            assert ok, "the unmutated fixture must read"
        stats["read" if ok else "refused"] += 1
        stats["scan"][report.exit_code] += 1
        if not ok:
            try:
                load(path)
            except CkptError as exc:
                messages[exc.message.split(": ", 1)[-1][:40]] += 1
        assert not (folder / "hostile" / "CANARY_EXECUTED").exists(), "payload ran"

    try:
        run()
    finally:
        stats["scan"] = dict(sorted(stats["scan"].items()))
        stats["top_errors"] = messages.most_common(4)
    return stats


def _child(folder: Path, max_examples: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    sources = {
        "zip": folder / "zip.pth",
        "zip-data-pkl": folder / "zip.pth",
        "hostile-zip-data-pkl": folder / "hostile.pth",
        "legacy": folder / "legacy.pth",
        "pickle": folder / "pickle.pkl",
        "safetensors": folder / "st.safetensors",
    }
    (folder / "work").mkdir(exist_ok=True)
    summary: dict[str, Any] = {"readers": {}, "failures": []}
    for reader in READERS:
        try:
            summary["readers"][reader] = _fuzz_reader(reader, sources[reader], folder, max_examples)
        except BaseException as exc:  # report it, keep going with the other readers
            case = folder / "work" / f"case{sources[reader].suffix}"
            keep = folder / f"failure-{reader}{sources[reader].suffix}"
            if case.exists():
                keep.write_bytes(case.read_bytes())
            error = f"{type(exc).__name__}: {str(exc)[:500]}"
            summary["failures"].append({"reader": reader, "error": error, "file": str(keep)})
            summary["readers"][reader] = {"cases": 0, "read": 0, "refused": 0, "scan": {}}
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), int(sys.argv[2]))
