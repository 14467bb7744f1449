"""`vlchat models`: the models you can use; with --endpoint, the ones that server serves."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from vlchat.core.text import clean


def local_models() -> list[dict[str, Any]]:
    """The models vlchat knows by name. For now only the bundled demo model; the registry adds more."""
    from vlchat.demo import DEMO_LABEL, DEMO_NAME

    return [
        {
            "name": DEMO_NAME,
            "source": "bundled",
            "about": f"{DEMO_LABEL}: a tiny LLaVA trained on shapes (knows only colours and shapes)",
        }
    ]


def print_table(rows: list[list[str]], header: list[str], out: TextIO) -> None:
    rows = [[clean(str(cell), keep_newlines=False) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def run_models(args: argparse.Namespace) -> int:
    from vlchat.cli import settings_from

    settings, _sources = settings_from(args)
    out = sys.stdout
    if not settings.endpoint:
        models = local_models()
        if args.json:
            for model in models:
                out.write(json.dumps(model, ensure_ascii=False) + "\n")
        else:
            print_table([[m["name"], m["source"], m["about"]] for m in models], ["MODEL", "SOURCE", "ABOUT"], out)
            out.write("(models served elsewhere: vlchat models --endpoint http://localhost:8000/v1)\n")
        return 0

    from vlchat.engines.openai import OpenAIEngine

    engine = OpenAIEngine.from_settings(settings, None)
    served = engine.list_models()
    if args.json:
        for model in served:
            record = {**model.to_dict(), "id": clean(model.id, keep_newlines=False), "endpoint": engine.endpoint}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif not served:
        print(f"vlchat: the server at {engine.endpoint} serves no models", file=sys.stderr)
    else:
        rows = [[m.id, m.owned_by or "", str(m.context_length or "")] for m in served]
        print_table(rows, ["MODEL", "OWNED BY", "CONTEXT"], out)
    return 0
