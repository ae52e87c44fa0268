"""Tables, trees, bars and colours for people (rich); imported by `ckpt_tool.render` on
first use, so JSON output and error lines never pay for rich."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ckpt_tool.render import _CONTROL, human_bytes

if TYPE_CHECKING:
    from ckpt_tool.inspection import ModuleNode
    from ckpt_tool.output.report import WriteReport
    from ckpt_tool.reports import (
        ArchList,
        BlockRow,
        CastReport,
        CountReport,
        DemoStep,
        DiffReport,
        ExtractDetails,
        FindingInfo,
        FreezeDetails,
        InspectData,
        KeyFate,
        MergeDetails,
        ModuleShare,
        RenameDetails,
        ScanDoc,
        SmokeReport,
        TensorStats,
        TransplantDetails,
    )


# Piped output gets a fixed, wide layout instead of rich's 80-column default.
def _piped_width() -> int:
    """Output width when stdout is not a terminal: $COLUMNS if it is a number, else 120."""
    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return 120
    return width if width >= 20 else 120


out = Console(
    highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else _piped_width()
)
err = Console(stderr=True, highlight=False)


def safe(text: object) -> str:
    """A name from a file made printable: control characters shown as escapes, markup escaped."""
    cleaned = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
    return escape(cleaned)


def warn(message: str) -> None:
    """A warning line on a terminal's stderr, in colour."""
    err.print(f"[yellow]warning:[/] {safe(message)}")


def human_count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def bar(share: float, width: int = 30) -> str:
    """A horizontal bar for a share in [0, 1], with eighth-block resolution."""
    eighths = round(max(0.0, min(1.0, share)) * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + ("" if rest == 0 else " ▏▎▍▌▋▊▉"[rest])


# --- inspect ----------------------------------------------------------------------------------


def _header_rows(r: InspectData) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [
        ("file", safe(r["file"])),
        ("format", r["format"]),
        ("layout", r["layout"] + (f" ({r['framework']})" if r["framework"] else "")),
        ("size", human_bytes(r["size_bytes"])),
    ]
    w = r["weights"]
    if w["key"] is not None:
        text = f"under [bold]{safe(w['key'])}[/]"
        others = [c for c in w["candidates"] if c != w["key"]]
        if others:
            text += f"  (also: {safe(', '.join(others))}; choose with --weights)"
        rows.append(("weights", text))
    kinds = "" if not r["param_kinds_inferred"] else "  [dim](parameter/buffer split by name)[/]"
    rows.append(
        (
            "tensors",
            f"{r['num_tensors']}  ({r['num_params']:,} parameters, "
            f"{r['num_buffer_elements']:,} buffer elements){kinds}",
        )
    )
    rows.append(
        (
            "dtypes",
            "  ".join(f"{d} {human_bytes(b)}" for d, b in r["bytes_by_dtype"].items()) or "-",
        )
    )
    rows.append(("devices", ", ".join(f"{safe(d)} ({n})" for d, n in r["devices"].items()) or "-"))
    p = r["prefix"]
    if p["prefix"]:
        rows.append(
            (
                "prefix",
                f"[bold]{safe(p['prefix'])}[/] on every key  →  [cyan]{safe(p['suggest'])}[/]",
            )
        )
    elif p["lightning"]:
        who = "Lightning " if r.get("framework") == "lightning" else ""
        rows.append(
            ("prefix", f"{who}[bold]model.[/] on every key  →  [cyan]{safe(p['suggest'])}[/]")
        )
    elif p["partial"]:
        counts = ", ".join(f"{safe(k)} on {n}" for k, n in p["counts"].items())
        rows.append(
            (
                "prefix",
                f"[yellow]partial[/]: {counts} of {p['prefix'] or ''}"
                f"{sum(p['counts'].values())}/{r['num_tensors']} keys",
            )
        )
    else:
        rows.append(("prefix", "none"))
    rows.append(
        ("shared", "; ".join(" = ".join(safe(k) for k in g) for g in r["shared"]) or "none")
    )
    for group in r.get("views", []):
        shown = ", ".join(safe(k) for k in group[:4]) + (" ..." if len(group) > 4 else "")
        rows.append(("views", f"{len(group)} views of one storage: {shown}"))
    t = r["trainable"]
    if t["recorded"]:
        text = f"{t['trainable_params']:,} trainable, {t['frozen_params']:,} frozen"
        if t["bn_eval"]:
            text += f"; BatchNorm kept in eval: {len(t['bn_eval'])} layers"
    else:
        text = "not recorded (plain tensors: all parameters would train)"
    rows.append(("trainable", text))
    refused = r["refused_globals"]
    dangerous = [g["name"] for g in refused if g["dangerous"]]
    unknown = [g["name"] for g in refused if not g["dangerous"]]
    if dangerous:
        rows.append(
            (
                "unsafe",
                f"[bold red]DANGEROUS: {safe('; '.join(dangerous[:4]))}[/]  (nothing was run; "
                "see `ckpt scan`)",
            )
        )
    if unknown:
        more = f" +{len(unknown) - 6} more" if len(unknown) > 6 else ""
        rows.append(
            (
                "needs code",
                f"{safe(', '.join(unknown[:6]))}{more}  [dim](recorded, not imported)[/]",
            )
        )
    if not refused:
        rows.append(("unsafe", "none"))
    if r["extras"]:
        items = list(r["extras"].items())
        shown = ", ".join(f"{safe(k)}: {safe(v)}" for k, v in items[:8])
        more = f" +{len(items) - 8} more" if len(items) > 8 else ""
        rows.append(("other", shown + more))
    if r["metadata"]:
        rows.append(
            ("metadata", safe(", ".join(f"{k}={v}" for k, v in list(r["metadata"].items())[:6])))
        )
    return rows


def inspect_header(r: InspectData) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for k, v in _header_rows(r):
        table.add_row(k, v)
    out.print(table)


def _tensor_line(t: Any, name: str, stats: dict[str, TensorStats] | None) -> str:
    line = f"{safe(name)}  [cyan]{list(t.shape)}[/]  {t.dtype}  [dim]{human_count(t.numel)}[/]"
    if t.kind == "parameter" and t.record.is_parameter and not t.record.requires_grad:
        line += "  [blue]frozen[/]"
    if t.kind == "buffer":
        line += "  [dim]buffer[/]"
    s = (stats or {}).get(t.key)
    if s is not None:
        line += "  " + stats_text(s)
    return line


def stats_text(s: TensorStats) -> str:
    if s["min"] is None:
        text = "[dim]no finite values[/]"
    else:
        text = (
            f"[dim]min[/] {s['min']:.4g} [dim]max[/] {s['max']:.4g} "
            f"[dim]mean[/] {s['mean']:.4g} [dim]std[/] {s['std']:.4g}"
        )
    if s["nan"] or s["inf"]:
        text += f"  [bold red]NaN {s['nan']} Inf {s['inf']}[/]"
    return text


def _node_label(node: ModuleNode) -> str:
    cls = f"  [magenta]{safe(node.class_name.rsplit('.', 1)[-1])}[/]" if node.class_name else ""
    return f"[bold]{safe(node.name)}[/]{cls}  [dim]{human_count(node.numel)} elements[/]"


def _runs(children: list[ModuleNode]) -> list[list[ModuleNode]]:
    """Consecutive children with the same structure, grouped (layer1.1 ... layer1.5)."""
    runs: list[list[ModuleNode]] = []
    for c in children:
        if (
            runs
            and c.name.isdigit()
            and runs[-1][-1].name.isdigit()
            and runs[-1][-1].signature() == c.signature()
        ):
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def percent(share: float) -> str:
    """A share as a percentage with enough digits: 2,052 of 21 M is '<0.1%', not '0.0%'."""
    pct = share * 100
    if 0 < pct < 0.1:
        return "<0.1%"
    if 99.9 < pct < 100:
        return ">99.9%"
    return f"{pct:.1f}%"


def tree_lines(root: ModuleNode, depth: int | None) -> int:
    """How many lines module_tree prints at a depth (runs of identical blocks count once)."""
    lines = 1
    stack: list[tuple[ModuleNode, int]] = [(root, 0)]
    while stack:
        node, level = stack.pop()
        lines += len(node.tensors)
        for run in _runs(list(node.children.values())):
            lines += 1
            if depth is None or level + 1 < depth:
                stack.append((run[0], level + 1))
    return lines


def auto_depth(root: ModuleNode, max_lines: int = 40) -> int | None:
    """The deepest tree that fits a screen (at least one level); None when all of it does."""
    full = tree_lines(root, None)
    if full <= max_lines:
        return None
    depth = 1
    while tree_lines(root, depth + 1) <= max_lines and tree_lines(root, depth + 1) < full:
        depth += 1
    return depth


def module_tree(
    root: ModuleNode,
    depth: int | None,
    stats: dict[str, TensorStats] | None = None,
    title: str = "",
) -> Tree:
    tree = Tree(title or "[bold]weights[/]")
    stack: list[tuple[ModuleNode, Tree, int]] = [(root, tree, 0)]
    while stack:
        node, branch, level = stack.pop()
        for t in node.tensors:
            branch.add(_tensor_line(t, t.key.rsplit(".", 1)[-1], stats))
        pending: list[tuple[ModuleNode, Tree, int]] = []
        children = list(node.children.values())  # file order: conv1, bn1, layer1, ..., fc
        for run in _runs(children):
            first = run[0]
            label = _node_label(first)
            if len(run) > 1:
                label = (
                    f"[bold]{safe(first.name)}[/]  [magenta]×{len(run)} identical "
                    f"blocks {safe(first.name)}–{safe(run[-1].name)}[/]  "
                    f"[dim]{human_count(first.numel)} elements each[/]"
                )
            sub = branch.add(label)
            if depth is None or level + 1 < depth:
                pending.append((first, sub, level + 1))
        stack.extend(reversed(pending))
    return tree


def keys_table(tensors: list[Any], stats: dict[str, TensorStats] | None = None) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("key", "shape", "dtype", "numel", "kind"):
        table.add_column(col, justify="right" if col == "numel" else "left")
    if stats:
        table.add_column("stats", no_wrap=True)
    for t in tensors:
        quant = t.record.quant
        dtype = t.dtype + (f" [dim]({safe(quant.describe())})[/]" if quant is not None else "")
        row = [safe(t.key), str(list(t.shape)), dtype, f"{t.numel:,}", t.kind]
        if stats:
            row.append(stats_text(stats[t.key]) if t.key in stats else "")
        table.add_row(*row)
    return table


def share_bars(rows: list[ModuleShare], label: str = "parameters by top-level module") -> None:
    if not rows:
        return
    out.print(f"[bold]{label}[/]")
    table = Table(box=None, pad_edge=False)
    table.add_column("module")
    table.add_column("params", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    shown = rows[:12]
    for row in shown:
        table.add_row(
            safe(row["module"]),
            human_count(row["params"]),
            percent(row["share"]),
            Text(bar(row["share"]), style="green"),
        )
    if len(rows) > len(shown):
        rest = rows[len(shown) :]
        table.add_row(
            f"({len(rest)} more)",
            human_count(sum(r["params"] for r in rest)),
            percent(sum(r["share"] for r in rest)),
            "",
        )
    out.print(table)


def show(renderable: Any) -> None:
    out.print(renderable)


# --- write commands -------------------------------------------------------------------------


def merge_table(r: MergeDetails) -> None:
    """merge-lora: one row per target module: rank, scale, relative change."""
    targets = r.get("targets", [])
    out.print(
        f"[bold]merge-lora[/]: {len(targets)} LoRA target(s) merged from "
        f"{safe(r.get('adapter', ''))}"
        + (f", scale ×{r.get('scale', 1.0):g}" if r.get("scale", 1.0) != 1.0 else "")
    )
    table = Table(box=None, pad_edge=False)
    for col in ("module", "kind", "rank", "scale", "||ΔW|| / ||W||"):
        table.add_column(
            col, justify="right" if col in ("rank", "scale", "||ΔW|| / ||W||") else "left"
        )
    shown = targets[:16]
    for t in shown:
        rel = t["rel_change"]
        table.add_row(
            safe(t["module"]), t["kind"], str(t["rank"]), f"{t['scale']:.4g}",
            "-" if rel is None else f"{rel:.3g}",
        )  # fmt: skip
    out.print(table)
    if len(targets) > len(shown):
        out.print(f"[dim]+{len(targets) - len(shown)} more targets (--json lists all)[/]")
    copied = r.get("copied", [])
    if copied:
        out.print(
            f"copied from the adapter (modules_to_save, saved base layers): "
            f"{safe(', '.join(copied[:4]))}{' ...' if len(copied) > 4 else ''}"
        )


def _rename_lines(command: str, r: RenameDetails) -> None:
    """The renames a key-surgery command made, grouped by rule."""
    groups = r["groups"]
    if groups:
        out.print(f"[bold]{command}: keys changed[/]")
        table = Table(box=None, pad_edge=False)
        table.add_column("rule")
        table.add_column("keys", justify="right")
        table.add_column("example: before → after")
        for g in groups:
            ex = g["examples"][0]
            table.add_row(
                safe(g["rule"]), str(g["count"]), f"{safe(ex['from'])} → [green]{safe(ex['to'])}[/]"
            )
        out.print(table)
    out.print(f"{r['changed']} of {r['total_keys']} keys renamed, {r['unchanged']} unchanged")


def _extract_line(r: ExtractDetails) -> None:
    out.print(
        f"{r['tensors']} tensors extracted from a {r['layout']} checkpoint"
        + (f"; dropped: {safe(', '.join(r['dropped']))}" if r["dropped"] else "")
    )


def edit_report(report: WriteReport) -> None:
    """What a write command did, then its notes and where it wrote (or would write)."""
    # what each command shows above the common tail (notes, where it wrote); the details
    # are the command's reports.*Details (the one place their type is asserted)
    d, command = report.details, report.command
    if command in ("strip-module", "add-module", "rename"):
        _rename_lines(command, cast("RenameDetails", d))
    elif command == "extract":
        _extract_line(cast("ExtractDetails", d))
    elif command == "freeze":
        freeze_tables(cast("FreezeDetails", d))
    elif command == "merge-lora":
        merge_table(cast("MergeDetails", d))
    elif command == "transplant":
        transplant_report(cast("TransplantDetails", d), report.input)
    if report.cast is not None:
        cast_tables(report.cast)
    shards = report.shards
    if shards:
        out.print(
            f"{len(shards)} shard(s): "
            + ", ".join(safe(x) for x in shards[:4])
            + (" ..." if len(shards) > 4 else "")
        )
    for note in report.notes:
        out.print(f"[yellow]note:[/] {safe(note)}")
    if report.dry_run:
        out.print(f"dry run: would write [bold]{safe(report.output)}[/]; nothing written")
    else:
        check = "verified" if report.verified else "[yellow]not verified (--no-verify)[/]"
        out.print(
            f"wrote [bold]{safe(report.output)}[/] ({report.format}, "
            f"{human_bytes(report.bytes or 0)}, {check})"
        )


def cast_tables(c: CastReport) -> None:
    """Bytes per dtype before/after, and the largest relative error per module."""
    out.print(f"[bold]cast to {c['dtype']}[/]: {c['cast']} tensors cast, {c['kept']} kept")
    reasons = Counter(
        r["reason"] for r in c["tensors"] if r["from"] == r["to"] and "->" not in r["reason"]
    )
    if reasons:
        shown = "; ".join(f"{n} × {safe(why)}" for why, n in reasons.most_common(4))
        out.print(f"kept: {shown}" + (" ..." if len(reasons) > 4 else ""))
    if c.get("scales"):
        out.print(f"fp8 scales: {len(c['scales'])} float32 tensors (KEY_scale, after each weight)")
    table = Table(box=None, pad_edge=False)
    table.add_column("dtype")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for d in sorted(set(c["bytes_before"]) | set(c["bytes_after"])):
        table.add_row(
            d, human_bytes(c["bytes_before"].get(d, 0)), human_bytes(c["bytes_after"].get(d, 0))
        )
    table.add_row("[bold]total[/]", human_bytes(c["total_before"]), human_bytes(c["total_after"]))
    out.print(table)
    if c["modules"]:
        out.print("[bold]largest relative error per module[/]")
        errs = Table(box=None, pad_edge=False)
        errs.add_column("module")
        errs.add_column("rel. error", justify="right")
        for m in c["modules"][:10]:
            errs.add_row(safe(m["module"]), f"{m['max_rel_error']:.2e}")
        if len(c["modules"]) > 10:
            errs.add_row(f"({len(c['modules']) - 10} more)", "")
        out.print(errs)
    if c["overflow_total"] or c["underflow_total"]:
        out.print(
            f"[yellow]overflow[/] {c['overflow_total']} values, [yellow]underflow to "
            f"zero[/] {c['underflow_total']} values"
        )


# --- freeze and count ---------------------------------------------------------------------------


def _change(before: int, after: int) -> str:
    if before == after:
        return f"{after:,}"
    return f"{before:,} → [bold]{after:,}[/]"


def freeze_tables(r: FreezeDetails) -> None:
    """What matched, then trainable and frozen parameters per top-level module, before → after."""
    what = {"freeze": "freeze", "unfreeze": "unfreeze", "only": "freeze all but"}[r["mode"]]
    matched = "; ".join(
        f"{safe(p)} → {m['parameters']} parameters"
        + (f", {m['buffers']} buffers" if m["buffers"] else "")
        for p, m in r["matched"].items()
    )
    kind = "regex" if r["regex"] else "glob"
    out.print(f"[bold]{what}[/] ({kind}): {matched}")
    table = Table(box=None, pad_edge=False)
    table.add_column("module")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="right")
    table.add_column("frozen", justify="right")
    for m in [*r["modules"], r["totals"]]:
        name = "[bold]total[/]" if m is r["totals"] else safe(m["module"])
        table.add_row(
            name,
            f"{m['params']:,}",
            _change(m["before"]["trainable"], m["after"]["trainable"]),
            _change(m["before"]["frozen"], m["after"]["frozen"]),
        )
    out.print(table)
    out.print(f"{len(r['changed_keys'])} parameter tensors changed")
    bn = r["bn_eval"]
    if bn["after"]:
        shown = ", ".join(safe(p) for p in bn["after"][:4]) + (
            " ..." if len(bn["after"]) > 4 else ""
        )
        n = len(bn["after"])
        out.print(f"BatchNorm kept in eval mode: {n} layer{'s' if n != 1 else ''} ({shown})")


def _split_bar(trainable: int, frozen: int, total: int) -> Text:
    text = Text(bar(trainable / total) if total else "", style="green")
    text.append(bar(frozen / total) if total else "", style="blue")
    return text


def count_report(r: CountReport) -> None:
    """`ckpt count`: totals, then one row and bar per module (green trains, blue is frozen)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    if r["file"] is not None:
        grid.add_row("file", f"{safe(r['file'])}  ({r['format']}, {r['layout']})")
    if r["arch"] is not None:
        grid.add_row("arch", safe(r["arch"]))
    if r.get("dangerous"):
        grid.add_row(
            "unsafe",
            f"[bold red]DANGEROUS: {safe('; '.join(r['dangerous'][:4]))}[/] (nothing was run; "
            "see `ckpt scan`)",
        )
    total = r["params"]
    grid.add_row("parameters", f"{total:,}  ({human_count(total)}, {r['param_tensors']} tensors)")
    grid.add_row("trainable", f"[green]{r['trainable']:,}[/]  ({percent(r['trainable_share'])})")
    grid.add_row(
        "frozen",
        f"[blue]{r['frozen']:,}[/]  ({percent(1 - r['trainable_share'])})" if total else "0",
    )
    f = r["freeze"]
    if r["arch"] is not None:
        state = "applied from the file" if f["recorded"] else "as built"
    elif f["recorded"]:
        state = "recorded in the file"
    else:
        state = "[yellow]assumed[/]: nothing recorded, every parameter trains"
    grid.add_row("freeze state", state)
    b = r["buffers"]
    grid.add_row(
        "buffers",
        f"{b['tensors']} tensors, {b['elements']:,} elements ({human_bytes(b['bytes'])})",
    )
    grid.add_row(
        "dtypes",
        "  ".join(f"{d} {human_bytes(n)}" for d, n in r["bytes_by_dtype"].items()) or "-",
    )
    if f.get("bn_eval"):
        n = len(f["bn_eval"])
        grid.add_row("BatchNorm", f"kept in eval mode: {n} layer{'s' if n != 1 else ''}")
    if r["shared_keys"]:
        grid.add_row("shared", f"{len(r['shared_keys'])} tied keys counted once")
    out.print(grid)
    table = Table(box=None, pad_edge=False)
    table.add_column("module" if r["depth"] == 1 else f"module (depth {r['depth']})")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="right")
    table.add_column("frozen", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    rows = [m for m in r["modules"] if m["params"]]
    for m in rows[:40]:
        table.add_row(
            safe(m["module"]),
            f"{m['params']:,}",
            f"{m['trainable']:,}",
            f"{m['frozen']:,}",
            percent(m["share"]),
            _split_bar(m["trainable"], m["frozen"], total),
        )
    if len(rows) > 40:
        rest = rows[40:]
        table.add_row(f"({len(rest)} more)", f"{sum(m['params'] for m in rest):,}", "", "", "", "")
    out.print(table)
    for note in r["notes"]:
        out.print(f"[yellow]note:[/] {safe(note)}")


# --- transplant and archs -----------------------------------------------------------------------

_STATUS_TEXT = {
    "copied": "[green]copied[/]",
    "renamed": "[cyan]renamed[/]",
    "adapted": "[cyan]adapted[/]",
    "reinitialised": "[yellow]re-initialised[/]",
    "shape_mismatch": "[red]shape mismatch[/]",
    "missing": "[yellow]missing in source[/]",
    "unused": "[dim]unused from source[/]",
    "mixed": "mixed",
}
# Statuses whose rows carry shapes: always shown key by key.
_PER_KEY = ("adapted", "reinitialised", "shape_mismatch", "mixed")


def _key_status(row: KeyFate) -> str:
    text = _STATUS_TEXT[row["status"]]
    if row["status"] == "renamed" and row["source_key"]:
        text += f" from {safe(row['source_key'])}"
    if row["rule"]:
        text += f" [dim]({safe(row['rule'])})[/]"
    if row["status"] == "shape_mismatch":
        text += f": source {row['source_shape']} ≠ target {row['shape']}"
    elif row["status"] == "adapted":
        text += f" {row['source_shape']} → {row['shape']}"
    if row["detail"]:
        text += f" ({safe(row['detail'])})"
    if row["init"]:
        text += f"; [dim]{safe(row['init'])}[/]"
    return text


def _transplant_table(title: str, groups: list[BlockRow]) -> Table:
    out.print(f"[bold]{title}[/]")
    table = Table(box=None, pad_edge=False)
    table.add_column("module")
    table.add_column("keys", justify="right")
    table.add_column("params", justify="right")
    table.add_column("status")
    for g in groups:
        blocks = len(g["blocks"])
        label = safe(g["module"]) + (f" [dim](×{blocks})[/]" if blocks > 1 else "")
        keys = str(g["keys"] * blocks)
        rows = g["rows"]
        same = len({(r["status"], r["rule"], r["detail"], r["init"]) for r in rows}) == 1
        if g["status"] not in _PER_KEY and same:
            first: KeyFate = (
                {**rows[0], "source_key": None} if len(rows) > 1 or blocks > 1 else rows[0]
            )
            table.add_row(label, keys, human_count(g["params"]), _key_status(first))
            continue
        if len(rows) == 1 and blocks == 1:
            table.add_row(
                safe(rows[0]["full_key"]), keys, human_count(g["params"]), _key_status(rows[0])
            )
            continue
        table.add_row(label, keys, human_count(g["params"]), _STATUS_TEXT[g["status"]])
        for r in rows:
            each = human_count(r["numel"]) if r["kind"] == "parameter" else "[dim]buffer[/]"
            table.add_row(f"  {safe(r['key'])}", "", each, _key_status(r))
    return table


def transplant_report(r: TransplantDetails, source: str) -> None:
    """`ckpt transplant`: per-module status table, unused source keys, totals."""
    a = r["arch"]
    title = f"transplant {safe(source)} → {safe(a['label'])}"
    if r["prefix_removed"]:
        title += f"  [dim](prefix {safe(r['prefix_removed'])} removed)[/]"
    out.print(_transplant_table(title, r["modules"]))
    if r["unused_modules"]:
        out.print(_transplant_table("unused from source", r["unused_modules"]))
    t = r["totals"]
    pct = t["coverage_pct"]
    style = "green" if pct >= 90 else "yellow" if pct >= 50 else "red"
    shown = f"{pct:.1f}" if pct >= 100 or round(pct, 1) < 100 else "99.9"  # never a false 100
    out.print(
        f"copied {t['copied_keys']} of {t['target_keys']} keys; {t['copied_params']:,} of "
        f"{t['target_params']:,} parameters ([bold {style}]{shown}%[/])"
    )
    parts = [f"{n['keys']} {_STATUS_TEXT[s]}" for s, n in t["by_status"].items() if s != "copied"]
    if parts:
        out.print("  " + ", ".join(parts))


def arch_list(data: ArchList, pattern: str | None) -> None:
    """`ckpt archs`: names per source, with how to install what is missing."""
    from rich.columns import Columns

    for source, info in data.items():
        head = f"[bold]{source}[/] ({info['count']}"
        head += f" matching {safe(pattern)})" if pattern else ")"
        if not info["installed"]:
            out.print(f"{head}  [yellow]not installed[/]: {safe(info['install'])}")
            continue
        out.print(head)
        if info["names"]:
            out.print(Columns([safe(n) for n in info["names"]], padding=(0, 2)))
    out.print(
        "[dim]bare names resolve seed → torchvision → timm; force one with "
        "torchvision/NAME or timm/NAME; also package.module:factory, file.py:Class[/]"
    )


# --- scan ---------------------------------------------------------------------------------------

_VERDICT_STYLE = {
    "dangerous": "[bold red]dangerous[/]",
    "error": "[red]damaged[/]",
    "needs code": "[yellow]needs code[/]",
    "safe": "[green]safe[/]",
}
_FILE_VERDICT = {
    "dangerous": "[bold red]DANGEROUS[/]",
    "error": "[red]unreadable or damaged[/]",
    "needs code": "[yellow]needs code[/]",
    "safe": "[green]safe[/]",
}


def _where(f: FindingInfo) -> str:
    where = safe(f["member"] or "")
    if f["offset"] is not None:
        where += f" [dim]@{f['offset']}[/]"
    if f.get("opcode"):
        where += f" [dim]{f['opcode']}[/]"
    return where


def scan_report(r: ScanDoc) -> None:
    """`ckpt scan`: per file its verdict, what is not on the allowlist, and where it is."""
    for f in r["files"]:
        out.print(f"[bold]{safe(f['path'])}[/]  {safe(f['format'])}  {_FILE_VERDICT[f['verdict']]}")
        flagged = [x for x in f["findings"] if x["verdict"] in ("dangerous", "error")]
        code: dict[str, list[str]] = {}
        for x in f["findings"]:
            if x["verdict"] == "needs code":
                label = safe(x["name"] or x["message"])
                code.setdefault(x["why"], []).append(label)
        if flagged:
            table = Table(box=None, pad_edge=False, show_header=False, padding=(0, 1))
            for col in ("verdict", "what", "where", "why"):
                table.add_column(col, overflow="fold")
            for x in flagged:
                what = safe(x["name"] or x["why"])
                if x["count"] > 1:
                    what += f" [dim]×{x['count']}[/]"
                table.add_row(
                    "  " + _VERDICT_STYLE[x["verdict"]],
                    what,
                    _where(x),
                    f"[dim]{safe(x['why'])}:[/] {safe(x['message'])}",
                )
            out.print(table)
        for why, names in code.items():
            shown = ", ".join(dict.fromkeys(names[:12])) + (
                f" +{len(names) - 12} more" if len(names) > 12 else ""
            )
            out.print(f"  [yellow]needs code[/] [dim]{safe(why)}:[/] {shown}")
        counts: dict[str, int] = {}
        for x in f["findings"]:
            if x["verdict"] == "safe" and x["name"]:
                counts[x["name"]] = counts.get(x["name"], 0) + x["count"]
        if counts:
            text = ", ".join(safe(n) + (f" ×{c}" if c > 1 else "") for n, c in counts.items())
            out.print(f"  [green]allowlisted:[/] [dim]{text}[/]")
        for x in f["findings"]:
            if x["verdict"] == "safe" and not x["name"]:
                out.print(f"  [dim]{safe(x['message'])}[/]")
    s = r["summary"]
    out.print(
        f"scanned {s['files']} file{'s' if s['files'] != 1 else ''}: {s['safe']} safe, "
        f"{s['needs code']} need code, {s['dangerous']} dangerous, "
        f"{s['error']} unreadable or damaged"
    )
    if s["dangerous"]:
        out.print(
            "[bold red]do not load dangerous files with torch.load(weights_only=False) or "
            "pickle.load[/]; nothing in them was run by this scan"
        )
    elif s["needs code"]:
        out.print(
            "[yellow]needs code[/]: torch.load(weights_only=True) refuses these files; "
            "loading them imports the classes listed, so do that only if you trust their source"
        )


# --- diff / average -------------------------------------------------------------------------


def _rel_text(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:.3g}"


def diff_report(r: DiffReport) -> None:
    """Key differences, per-module relative change bars, changed tensors, then the verdict."""
    a, b = r["a"], r["b"]
    out.print(f"A: [bold]{safe(a['path'])}[/] ({a['format']}, {a['tensors']} tensors)")
    out.print(f"B: [bold]{safe(b['path'])}[/] ({b['format']}, {b['tensors']} tensors)")
    for note in r["notes"]:
        out.print(f"[yellow]note:[/] {safe(note)}")
    for label, keys in (("only in A", r["only_a"]), ("only in B", r["only_b"])):
        if keys:
            shown = ", ".join(safe(k) for k in keys[:8])
            more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            out.print(f"[red]{label}[/] ({len(keys)}): {shown}{more}")
    for row in r["shape_changed"][:12]:
        out.print(
            f"[red]shape changed[/] {safe(row['key'])}: {tuple(row['a'])} → {tuple(row['b'])}"
        )
    for change in r["dtype_changed"][:12]:
        out.print(f"[red]dtype changed[/] {safe(change['key'])}: {change['a']} → {change['b']}")
    mods = r["modules"]
    if mods:
        out.print("[bold]relative change ||a-b|| / ||a|| by module[/]")
        finite = [m["rel_change"] for m in mods if not isinstance(m["rel_change"], str)]
        top = max(finite, default=0.0) or 1.0
        table = Table(box=None, pad_edge=False)
        table.add_column("module")
        table.add_column("changed", justify="right")
        table.add_column("rel change", justify="right")
        table.add_column("")
        for m in mods:
            rel = m["rel_change"]
            share = 1.0 if isinstance(rel, str) else rel / top
            style = "green" if m["changed"] == 0 else "yellow"
            table.add_row(
                safe(m["module"]),
                f"{m['changed']}/{m['tensors']}",
                "identical" if m["changed"] == 0 else _rel_text(rel),
                Text(bar(share), style=style),
            )
        out.print(table)
    changed = [t for t in r["tensors"] if not t["within_tolerance"]]
    if changed:
        table = Table(box=None, pad_edge=False, title="changed tensors", title_justify="left")
        table.add_column("key")
        table.add_column("max |a-b|", justify="right")
        table.add_column("rel change", justify="right")
        for t in changed[:20]:
            table.add_row(safe(t["key"]), _rel_text(t["max_abs_diff"]), _rel_text(t["rel_change"]))
        if len(changed) > 20:
            table.add_row(f"({len(changed) - 20} more)", "", "")
        out.print(table)
    s = r["summary"]
    tol = f" (atol {r['atol']:g}, rtol {r['rtol']:g})" if r["atol"] or r["rtol"] else ""
    if r["identical"]:
        out.print(
            f"[green]identical{tol}[/]: {s['common']} common tensors, "
            f"{s['bit_identical']} bit-identical"
        )
    else:
        out.print(
            f"[red]different{tol}[/]: {s['changed']} of {s['common']} common tensors changed, "
            f"{s['only_a']} only in A, {s['only_b']} only in B, "
            f"{s['shape_changed']} shape and {s['dtype_changed']} dtype changes"
        )


# --- smoke-train ----------------------------------------------------------------------------------

_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """A one-line curve; non-finite values shown as ×."""
    if not values:
        return ""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = hi - lo
    chars = []
    for v in values:
        if v != v or abs(v) == float("inf"):
            chars.append("×")
        else:
            level = 0 if span == 0 else round((v - lo) / span * (len(_SPARKS) - 1))
            chars.append(_SPARKS[level])
    return "".join(chars)


def sampled_steps(n: int, rows: int = 20) -> list[int]:
    """Step indexes to show: all of them, or `rows` spread evenly with first and last."""
    if n <= rows:
        return list(range(n))
    return sorted({round(i * (n - 1) / (rows - 1)) for i in range(rows)})


_CHECK_STATUS = {True: "[green]ok[/]", False: "[bold red]FAIL[/]", None: "[dim]skipped[/]"}


def smoke_train_report(r: SmokeReport) -> None:
    """`ckpt smoke-train`: setup line, per-step losses, the curve, and each check."""
    cfg = r["config"]
    out.print(
        f"[bold]{safe(r['input'])}[/] → {safe(r['arch']['label'])}  "
        f"batch {safe(r.get('batch') or cfg['batch_size'])}  {cfg['steps']} steps  "
        f"{cfg['optimizer']}"
        + (f" lr {r['lr']:g}" if "lr" in r else "")
        + (f"  amp {cfg['amp']}" if cfg["amp"] else "")
        + (f"  nproc {cfg['nproc']}" if cfg["nproc"] > 1 else "")
        + ("  FSDP2" if cfg.get("fsdp") else "")
    )
    fz = r["freeze"]
    if fz["recorded"]:
        out.print(
            f"freeze state applied: {fz['frozen']} frozen parameter(s), "
            f"{len(fz['bn_eval'])} BatchNorm layer(s) kept in eval"
        )
    for note in r.get("notes", []):
        out.print(f"[dim]note: {safe(note)}[/]")
    losses = r.get("losses") or []
    if losses:
        table = Table(box=None, pad_edge=False, padding=(0, 2))
        table.add_column("step", justify="right")
        table.add_column("loss", justify="right")
        lrs = r.get("lrs") or []
        if lrs:
            table.add_column("lr", justify="right")
        for i in sampled_steps(len(losses)):
            row = [str(i + 1), f"{losses[i]:.4f}"]
            if lrs:
                row.append(f"{lrs[i]:.3g}")
            table.add_row(*row)
        out.print(table)
        out.print(f"loss  {sparkline(losses)}  {losses[0]:.4f} → {losses[-1]:.4f}")
    checks = Table(box=None, pad_edge=False, show_header=False, padding=(0, 1))
    for col in ("status", "check", "detail"):
        checks.add_column(col, overflow="fold")
    for c in r["checks"]:
        checks.add_row(_CHECK_STATUS[c["ok"]], c["name"], safe(c["detail"]))
    out.print(checks)
    if r["ok"]:
        out.print("[bold green]smoke-train passed[/]")


# --- demo ---------------------------------------------------------------------------------------


def demo_step(title: str, command: str, output: str) -> None:
    """One walk-through step: its title, the command, and what the command printed."""
    out.print(f"\n[bold cyan]== {safe(title)}[/]")
    out.print(f"$ {safe(command)}")
    out.print(Text(output))


def demo_summary(rows: list[DemoStep], workdir: str) -> None:
    out.print("\n[bold]summary[/]")
    table = Table(box=None, pad_edge=False)
    table.add_column("step")
    table.add_column("command")
    table.add_column("result")
    for r in rows:
        verdict = (
            "[green]ok[/]"
            if r["ok"]
            else f"[red]failed[/] {safe(r['problem'] or 'exit ' + str(r['exit_code']))}"
        )
        table.add_row(safe(r["step"]), safe(r["command"]), verdict)
    out.print(table)
    out.print(f"files are in {safe(workdir)}")


def read_report(command: str, data: Mapping[str, Any]) -> None:
    """The tables of a read command's report (count, diff, smoke-train, archs); data is the
    command's reports.* shape (the one place that is asserted)."""
    if command == "count":
        count_report(cast("CountReport", data))
    elif command == "diff":
        diff_report(cast("DiffReport", data))
    elif command == "smoke-train":
        smoke_train_report(cast("SmokeReport", data))
    elif command == "archs":
        arch_list(cast("ArchList", data), None)
