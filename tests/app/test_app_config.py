"""What the app remembers shows in `vlchat --print-config`: the theme chosen with /theme."""

from __future__ import annotations

import pytest

from tests.toolkit import app_for, command, run_async

pytestmark = pytest.mark.timeout(120)


@run_async
async def _choose_theme(engine, name: str) -> None:
    app = app_for(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await command(pilot, f"/theme {name}")
        assert app.theme == name


def test_print_config_shows_the_theme_chosen_with_slash_theme(demo_engine, own_config, run_vlchat, tmp_path):
    env = {"VLCHAT_CONFIG_DIR": str(own_config), "VLCHAT_CONFIG": str(tmp_path / "none.toml")}
    _choose_theme(demo_engine, "vlchat-light")
    shown = run_vlchat("--print-config", env=env)
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if line.startswith("theme ="))
    assert line.startswith("theme = 'vlchat-light'    # chosen with /theme, remembered in ")
    assert str(own_config / "state.json") in line
    # A flag or $VLCHAT_THEME still wins, and says so.
    forced = run_vlchat("--print-config", env={**env, "VLCHAT_THEME": "vlchat-contrast"})
    assert "theme = 'vlchat-contrast'    # $VLCHAT_THEME" in forced.stdout
