"""`vlchat sessions` (the table of saved sessions) and `vlchat export SESSION` (a Markdown transcript)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from vlchat.core.sessions import SessionInfo, SessionStore, json_bytes, parse_iso, shown_path, store_root
from vlchat.core.text import clean, clean_data


def store_from(args: argparse.Namespace) -> SessionStore:
    from vlchat.cli import settings_from

    settings, _sources = settings_from(args)
    return SessionStore(store_root(settings))


def _local(iso: str) -> str:
    return parse_iso(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(infos: list[SessionInfo]) -> str:
    """Title, updated (local time), turns, pictures, model, id: one row per session, newest first."""
    headers = ("TITLE", "UPDATED", "TURNS", "PICTURES", "MODEL", "ID")
    rows = [
        tuple(clean(c, keep_newlines=False) for c in (_cut(i.title, 48), _local(i.updated), str(i.turns), str(i.pictures), _cut(i.model, 32), i.id))
        for i in infos
    ]
    widths = [max(len(h), *(len(r[n]) for r in rows)) for n, h in enumerate(headers)]
    right = {2, 3}  # numbers line up on the right

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if n in right else c.ljust(w) for n, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), *map(line, rows)])


def run_sessions(args: argparse.Namespace) -> int:
    store = store_from(args)
    infos = store.list()
    good = [i for i in infos if not i.error]
    if args.json:
        print(json_bytes(clean_data([i.to_dict() for i in infos]), indent=1).decode("utf-8"))
    elif good:
        print(table(good))
    elif infos:
        print(f"no readable sessions in {clean(str(store.root), keep_newlines=False)} (see the warnings)")
    else:
        print(f"no sessions yet in {clean(str(store.root), keep_newlines=False)} "
              "(start one with: vlchat ask --session new PICTURE \"QUESTION\")")
    for info in infos:
        if info.error:
            print(f"vlchat: warning: {clean(info.error, keep_newlines=False)}", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from vlchat.core.export import default_name, export_markdown

    store = store_from(args)
    # Read-only: exporting works while the session is open in the app, and never changes it.
    with store.open(args.session, read_only=True) as session:
        for problem in session.problems:
            print(f"vlchat: warning: {clean(problem, keep_newlines=False)}", file=sys.stderr)
        target = Path(args.output) if args.output else Path(default_name(session))
        result = export_markdown(session, target, force=args.force)
    for name in result.changed:
        print(f"vlchat: warning: the picture {name} in the session no longer matches its sha256 (it changed after it "
              "was attached), so it is left out of the export and the transcript says so", file=sys.stderr)
    pictures = len(result.pictures)
    where = f" and {pictures} picture{'s' if pictures != 1 else ''} in {shown_path(result.assets_dir)}" if pictures else ""
    print(f"wrote {shown_path(result.path)}{where}")
    return 0
