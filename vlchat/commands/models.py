"""`vlchat models`: the named models, whether each is downloaded, and other cached vision models;
with --endpoint, the ones that server serves."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from vlchat.core.text import clean, clean_data

# model_type values of image-text-to-text models, for spotting them in the cache by their config
_VISION_HINTS = ("vision_config", "vision_tower", "image_token_index", "image_token_id", "qformer_config")


@dataclass
class ModelRow:
    name: str
    hub_id: str
    family: str
    memory_4bit_gb: float | None
    downloaded: bool
    size_bytes: int | None = None  # on disk, when downloaded
    named: bool = True
    remote_code: bool = False
    label: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _scan_cache() -> dict[str, tuple[int, Path | None]]:
    """hub id (lower case) -> (bytes on disk, the newest snapshot folder) for every cached model."""
    try:
        from huggingface_hub import constants, scan_cache_dir

        info = scan_cache_dir(constants.HF_HUB_CACHE)  # looked up now, so the cache can be changed at run time
    except Exception:  # no cache yet, or one we cannot read: nothing is downloaded
        return {}
    found: dict[str, tuple[int, Path | None]] = {}
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        snapshot = None
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        if revisions:
            snapshot = Path(revisions[0].snapshot_path)
        found[repo.repo_id.lower()] = (int(repo.size_on_disk), snapshot)
    return found


def _is_image_text_model(snapshot: Path | None) -> tuple[bool, str, bool]:
    """Whether the cached model is an image-text-to-text one, its family, and whether it brings
    its own code (an ``auto_map`` in its config: it only loads with trust_remote_code)."""
    if snapshot is None or not (snapshot / "config.json").is_file():
        return False, "", False
    try:
        config = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, "", False
    if not isinstance(config, dict):
        return False, "", False
    family = str(config.get("model_type", "?"))
    return any(key in config for key in _VISION_HINTS), family, bool(config.get("auto_map"))


def _has_weights(snapshot: Path | None) -> bool:
    if snapshot is None:
        return False
    return any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))


def local_models_table() -> list[ModelRow]:
    """Every named model (downloaded or not) and then the other image-text-to-text models in the cache."""
    from vlchat.demo import DEMO_LABEL, DEMO_NAME, MODEL_DIR
    from vlchat.engines.registry import REGISTRY

    cache = _scan_cache()
    rows = [ModelRow(DEMO_NAME, "bundled", "llava", 0.01, (MODEL_DIR / "config.json").is_file(), label=DEMO_LABEL)]
    for model in REGISTRY:
        size, snapshot = cache.get(model.hub_id.lower(), (None, None))
        rows.append(
            ModelRow(
                model.name,
                model.hub_id,
                model.family,
                model.memory_4bit_gb,
                _has_weights(snapshot),
                size_bytes=size,
                remote_code=model.remote_code,
                label=model.label,
            )
        )
    known = {model.hub_id.lower() for model in REGISTRY}
    for repo_id, (size, snapshot) in sorted(cache.items()):
        if repo_id in known:
            continue
        vision, family, own_code = _is_image_text_model(snapshot)
        if not vision:
            continue
        # the cache folder name keeps the hub's spelling; the key was lower-cased for matching
        hub_id = snapshot.parent.parent.name.removeprefix("models--").replace("--", "/") if snapshot else repo_id
        rows.append(ModelRow(hub_id, hub_id, family, None, _has_weights(snapshot), size_bytes=size, named=False,
                             remote_code=own_code))
    return rows


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
    from vlchat.cli import settings_from

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
