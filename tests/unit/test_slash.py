"""The slash-command table, and what is built from it: /help, completion, the parser."""

from __future__ import annotations

import pytest

from vlchat.ui import slash
from vlchat.ui.app import VlchatApp
from vlchat.ui.prompt import completion_for
from vlchat.ui.screens.chat import ChatScreen

pytestmark = pytest.mark.timeout(30)


def test_every_command_has_its_handler_where_the_table_says():
    for command in slash.COMMANDS.values():
        owner = VlchatApp if command.app_wide else ChatScreen
        assert callable(getattr(owner, command.method, None)), command.name


def test_help_lists_every_command_with_its_arguments_in_table_order():
    rows = slash.help_rows()
    usages = [usage.split()[0] for usage, _ in rows[:-1]]
    assert usages == [f"/{name}" for name in slash.COMMANDS]
    assert ("/set temperature|top_p|max_tokens|seed VALUE", "change how answers are sampled") in rows
    assert rows[-1][0] == "//TEXT"


def test_completion_comes_from_the_table():
    assert completion_for("/exp") == "ort "
    assert completion_for("/s") == ""  # /system, /set, /save, /sessions: nothing in common yet
    assert completion_for("/se") == ""  # /set, /sessions
    assert completion_for("/ses") == "sions "


def test_the_parser_reads_a_command_and_leaves_a_doubled_slash_as_a_question():
    assert slash.parse("  /Image a.png b.png ") == ("image", "a.png b.png")
    assert slash.parse("//etc is a folder") is None
    assert slash.parse("What is /etc?") is None
