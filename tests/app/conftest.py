"""Fixtures for every test of the app."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def own_config(tmp_path, monkeypatch):
    """A config folder of the test's own: no theme or keymap of the person running the tests."""
    folder = tmp_path / "config"
    monkeypatch.setenv("VLCHAT_CONFIG_DIR", str(folder))
    return folder
