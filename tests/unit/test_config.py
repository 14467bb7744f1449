"""Settings: defaults < config file < VLCHAT_* < flags, and a clear line for every mistake."""

from __future__ import annotations

import pytest

from vlchat.config import Settings, describe_settings, load_settings
from vlchat.core.errors import InputError

pytestmark = pytest.mark.timeout(30)


def test_precedence_and_sources(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('model = "from-file/model"\ntemperature = 0.5\ntheme = "vlchat-light"\n[bindings]\nstop = "ctrl+g"\n')
    env = {"VLCHAT_TEMPERATURE": "0.7", "VLCHAT_THEME": "vlchat-contrast"}
    settings, sources = load_settings({"theme": "vlchat-dark", "model": None}, env=env, path=path)
    assert settings.model == "from-file/model" and sources["model"].startswith("config file")
    assert settings.temperature == 0.7 and sources["temperature"] == "$VLCHAT_TEMPERATURE"
    assert settings.theme == "vlchat-dark" and sources["theme"] == "flag --theme"
    assert settings.bindings == {"stop": "ctrl+g"}
    assert settings.quant == Settings().quant and sources["quant"] == "default"
    text = describe_settings(settings, sources)
    assert "temperature = 0.7    # $VLCHAT_TEMPERATURE" in text


def test_missing_file_means_defaults(tmp_path):
    settings, sources = load_settings({}, env={}, path=tmp_path / "none.toml")
    assert settings == Settings() and set(sources.values()) == {"default"}


@pytest.mark.parametrize(
    "content, words",
    [
        ("model = \n", ["not valid TOML"]),
        ("colour_scheme = 'x'\n", ["unknown setting", "colour_scheme"]),
        ("max_new_tokens = 'lots'\n", ["max_new_tokens", "whole number"]),
        ("trust_remote_code = 'maybe'\n", ["trust_remote_code", "true or false"]),
    ],
)
def test_broken_config_file_is_one_clear_line(tmp_path, content, words):
    path = tmp_path / "config.toml"
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        load_settings({}, env={}, path=path)
    message = str(caught.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert path.read_text() == content  # never rewritten


def test_print_config_shows_where_each_setting_came_from(run_vlchat, tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('quant = "none"\n')
    result = run_vlchat("--print-config", env={"VLCHAT_CONFIG": str(path), "VLCHAT_SEED": "4"})
    assert result.returncode == 0, result.stderr
    assert f"quant = 'none'    # config file {path}" in result.stdout
    assert "seed = 4    # $VLCHAT_SEED" in result.stdout
