"""Rich tables for the terminal: what each pass did, the pass list, the target list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.markup import escape
from rich.table import Table


def _delta(before: int, after: int) -> str:
    if before == after:
        return f"{after:,}"
    return f"{after:,} ({after - before:+,})"


def _bytes_delta(before: int, after: int) -> str:
    if before == after:
        return _bytes(after)
    sign = "+" if after > before else "-"
    return f"{_bytes(after)} ({sign}{_bytes(abs(after - before))})"


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return str(count)


_STATUS_STYLE = {"applied": "green", "unchanged": "dim", "rolled back": "yellow", "skipped": "dim",
                 "failed": "red"}


def pass_table(records: Iterable[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("step", "status", "time", "nodes", "params", "weights"):
        table.add_column(column, justify="right" if column in ("time",) else "left",
                         no_wrap=column in ("status", "time"))
    # One change per line, folded rather than cut with "…": in an 80-column terminal the counts are the point.
    table.add_column("changes", overflow="fold")
    for record in records:
        before, after = record.before, record.after or record.before
        lines = [f"{k}={v}" for k, v in record.counts.items()]
        if record.reason:
            lines.append(record.reason)
        if record.verify is not None and "max_abs" in record.verify:
            lines.append(f"verify max abs {record.verify['max_abs']:.1e}")
        changes = "\n".join(lines)
        style = _STATUS_STYLE.get(record.status, "")
        table.add_row(
            escape(record.step), f"[{style}]{record.status}[/]" if style else record.status,
            f"{record.seconds * 1000:.1f} ms",
            (f"{before.nodes} → {after.nodes}" if before.nodes != after.nodes else str(after.nodes)) if before else "",
            _delta(before.params, after.params) if before else "",
            _bytes_delta(before.bytes, after.bytes) if before else "",
            escape(changes),
        )
    return table


def passes_table(passes: Mapping[str, Any]) -> Table:
    from edgeopt.passes.options import describe_options

    table = Table("pass", "what it does", "options", "from", title="registered passes",
                  title_justify="left")
    for name, entry in passes.items():
        options = "\n".join(
            escape(f"{o.name}: {o.type_name} = {o.default}") + (f"  [dim]{escape(o.help)}[/]" if o.help else "")
            for o in describe_options(entry.cls.Options)
        )
        table.add_row(name, escape(entry.cls.summary()), options or "[dim]none[/]", escape(entry.origin))
    return table


def targets_table(targets: Iterable[Any]) -> Table:
    table = Table("target", "kind", "backends (default first)", "peak FP32 / FP16 / INT8",
                  "memory", "power", title="hardware targets", title_justify="left")

    def peak(target: Any, precision: str) -> str:
        value = target.peak(precision)
        if value is None:
            return "-"
        for scale, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G")):
            if value >= scale:
                return f"{value / scale:.3g}{unit}"
        return f"{value:.3g}"

    for target in targets:
        backends = [target.default_backend] + [b for b in target.backends if b != target.default_backend]
        memory = target.memory or {}
        mem = []
        if memory.get("size_gb"):
            mem.append(f"{memory['size_gb']:g} GB")
        if memory.get("bandwidth_gbps"):
            mem.append(f"{memory['bandwidth_gbps']:g} GB/s")
        table.add_row(
            target.name, target.kind, ", ".join(backends),
            " / ".join(peak(target, p) for p in ("fp32", "fp16", "int8")),
            ", ".join(mem) or "-", f"{target.power_w:g} W" if target.power_w else "-",
        )
    return table
