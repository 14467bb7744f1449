"""What every benchmark does with its figures at the end: the table on the terminal, the JSON where asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def write_json(result: Any, path: str | Path | None) -> None:
    """The figures as JSON at ``path`` (--json), when one was given."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def report(result: Any, print_table: Callable[[Any], None], path: str | Path | None) -> int:
    """The table printed and the JSON written where asked; the exit status of a benchmark's main()."""
    print_table(result)
    write_json(result, path)
    return 0
