"""The model process's log: kept in the cache folder, rotated, and read back for its last meaningful line."""

from __future__ import annotations

import pytest

from vlchat.engines.process import LOG_MAX_BYTES, LOG_NAME, last_meaningful_line, open_log

pytestmark = pytest.mark.timeout(30)


def test_the_model_process_log_names_its_last_meaningful_line():
    # What transformers printed before the process was killed: a warning and the source line under it.
    log = (
        "--- vlchat model process, started 2026-11-29 20:00:00 ---\n"
        "Loading weights: 100%|██████████| 57/57\n"
        "/venv/lib/python3.11/site-packages/vlchat/engines/transformers.py:456: FutureWarning: `past_key_values` is deprecated\n"
        "  out = model.generate(**kwargs)\n"
        "\n"
    )
    assert last_meaningful_line(log) == "Loading weights: 100%|██████████| 57/57"
    crash = log + "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: CUDA error: device-side assert\n\n"
    assert last_meaningful_line(crash) == "RuntimeError: CUDA error: device-side assert"
    assert last_meaningful_line("--- vlchat model process, started x ---\n\n") == ""


def test_the_log_is_rotated_past_its_size_and_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "vlchat" / LOG_NAME
    path.parent.mkdir()
    path.write_bytes(b"x" * (LOG_MAX_BYTES + 1))
    log, start = open_log()
    log.close()
    assert (tmp_path / "vlchat" / (LOG_NAME + ".1")).stat().st_size == LOG_MAX_BYTES + 1
    assert path.read_text().startswith("--- vlchat model process") and start == path.stat().st_size
    assert path.stat().st_mode & 0o077 == 0
