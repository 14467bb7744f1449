"""`vlchat models`: the registry table, and what the local Hugging Face cache holds."""

from __future__ import annotations

import json

import pytest

from vlchat.engines.registry import NAMED, resolve

pytestmark = pytest.mark.timeout(120)


def cache_model(hf_home, repo: str, config: dict, weights: bool = True) -> None:
    """A model in the hub cache's own layout (blobs, snapshots, refs), as `hf download` leaves it."""
    folder = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("a" * 40)
    blobs = folder / "blobs"
    blobs.mkdir()
    files = {"config.json": json.dumps(config).encode()}
    if weights:
        files["model.safetensors"] = b"\0" * 2048
    for i, (name, data) in enumerate(files.items()):
        blob = blobs / f"{i:040d}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)


def test_models_lists_registry_and_cached_vision_models(run_vlchat, tmp_path):
    hf_home = tmp_path / "hf-home"
    cache_model(hf_home, "llava-hf/llava-1.5-7b-hf", {"model_type": "llava", "vision_config": {}})
    cache_model(hf_home, "Someone/Tiny-VLM", {"model_type": "llava_next", "vision_config": {}})
    cache_model(hf_home, "Someone/text-only", {"model_type": "llama"})
    result = run_vlchat("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}  # JSON lines
    assert set(NAMED) | {"demo"} <= set(rows)
    assert rows["llava-1.5-7b"]["downloaded"] is True
    assert rows["llava-1.5-13b"]["downloaded"] is False
    assert rows["qwen2.5-vl-7b"]["hub_id"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert rows["minicpm-o-2.6"]["remote_code"] is False and rows["minicpm-o-2.6"]["family"] == "minicpm-2.6"
    assert rows["Someone/Tiny-VLM"]["named"] is False and rows["Someone/Tiny-VLM"]["family"] == "llava_next"
    assert "Someone/text-only" not in rows  # not a vision model

    table = run_vlchat("models")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "HUB", "ID", "/", "FOLDER", "FAMILY", "4-BIT", "DOWNLOADED"]
    llava7 = next(line for line in lines if line.startswith("llava-1.5-7b "))
    assert "4.6 GB" in llava7 and "yes" in llava7
    llava13 = next(line for line in lines if line.startswith("llava-1.5-13b "))
    assert llava13.rstrip().endswith("no")
    assert any("Someone/Tiny-VLM" in line for line in lines)


def test_resolve_names_hub_ids_and_folders(tmp_path):
    assert resolve("llava-next-7b").source == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert resolve("joycaption").family == "joycaption"
    # a named model's hub id keeps the registry's family (JoyCaption's quirks live there)
    assert resolve("fancyfeast/llama-joycaption-beta-one-hf-llava").family == "joycaption"
    assert resolve("someone/other-vlm").family == "auto"
    (tmp_path / "config.json").write_text("{}")
    assert resolve(str(tmp_path)).is_local


def test_unknown_name_suggests_the_close_one(run_vlchat):
    from vlchat.demo import SAMPLES_DIR

    result = run_vlchat("ask", "--model", "llava-1.5-7", SAMPLES_DIR / "red-circle.png", "hi")
    assert result.returncode == 2
    assert "llava-1.5-7b" in result.stderr and "Traceback" not in result.stderr


def test_models_table_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys, io, contextlib\n"
        "import vlchat.cli as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['models']) == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'textual') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
