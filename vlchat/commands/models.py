"""`vlchat models`: the named models, whether each is downloaded, and other cached vision models;
with --endpoint, the ones that server serves."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from vlchat.core.text import clean, clean_data
from vlchat.engines.catalog import ModelRow, local_models_table


def _gb(value: float | int | None, *, bytes_: bool = False) -> str:
    if value is None:
        return "-"
    if bytes_:
        value = value / 1e9
    return f"{value:.1f} GB" if value >= 0.1 else "<0.1 GB"


def format_table(rows: list[ModelRow]) -> str:
    header = ("NAME", "HUB ID / FOLDER", "FAMILY", "4-BIT", "DOWNLOADED")
    lines = [header]
    for row in rows:
        downloaded = "yes" if row.downloaded else "no"
        if row.downloaded and row.size_bytes:
            downloaded = f"yes ({_gb(row.size_bytes, bytes_=True)})"
        family = row.family + (" (remote code)" if row.remote_code else "")
        name = row.name if row.named else "-"
        lines.append((name, row.hub_id, family, _gb(row.memory_4bit_gb), downloaded))
    widths = [max(len(clean(str(line[i]), keep_newlines=False)) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        out.append("  ".join(clean(str(cell), keep_newlines=False).ljust(w) for cell, w in zip(line, widths)).rstrip())
    return "\n".join(out)


def print_table(rows: list[list[str]], header: list[str], out: TextIO) -> None:
    rows = [[clean(str(cell), keep_newlines=False) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def run_models(args: argparse.Namespace) -> int:
    from vlchat.config import settings_from

    settings, _sources = settings_from(args)
    out = sys.stdout
    if not settings.endpoint:
        rows = local_models_table()
        if args.json:
            for row in rows:
                out.write(json.dumps(clean_data(row.to_dict()), ensure_ascii=False) + "\n")
            return 0
        out.write(format_table(rows) + "\n\n")
        others = [row for row in rows if not row.named]
        out.write(
            "Use a name with --model (or /model in the app); any hub id or local folder of an image-text-to-text "
            "model works too." + ("" if others else " No other vision models were found in the Hugging Face cache.")
            + "\n(models served elsewhere: vlchat models --endpoint http://localhost:8000/v1)\n"
        )
        return 0

    from vlchat.engines.openai import OpenAIEngine

    engine = OpenAIEngine.from_settings(settings, None)
    served = engine.list_models()
    if args.json:
        for model in served:
            record = {**model.to_dict(), "id": clean(model.id, keep_newlines=False), "endpoint": engine.endpoint}
            out.write(json.dumps(clean_data(record), ensure_ascii=False) + "\n")
    elif not served:
        print(f"vlchat: the server at {engine.endpoint} serves no models", file=sys.stderr)
    else:
        rows = [[m.id, m.owned_by or "", str(m.context_length or "")] for m in served]
        print_table(rows, ["MODEL", "OWNED BY", "CONTEXT"], out)
    return 0
