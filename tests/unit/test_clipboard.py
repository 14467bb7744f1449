"""Kitty's clipboard protocol (OSC 5522) as vlchat reads it, the input splitter that keeps every
reply out of the prompt, and what a paste of dropped files looks like. The replies are written as
kitty writes them (kitty/clipboard.py, ReadRequest.encode_response)."""

from __future__ import annotations

import base64

import pytest

from vlchat.ui import clipboard as cb

pytestmark = pytest.mark.timeout(30)


def b64(data: bytes | str) -> str:
    return base64.standard_b64encode(data.encode() if isinstance(data, str) else data).decode()


def osc(body: str) -> str:
    return f"\x1b]5522;{body}\x1b\\"


def test_a_read_request_is_kittys_format():
    assert cb.read_request(["image/png"], request_id="vlchat1") == f"\x1b]5522;type=read:id=vlchat1;{b64('image/png')}\x1b\\"
    with_pw = cb.read_request(["image/png"], password="otp", name="Paste event")
    assert f":pw={b64('otp')}:name={b64('Paste event')};" in with_pw
    # A password without a name means nothing to the terminal: it is not sent.
    assert "pw=" not in cb.read_request(["."], password="otp")


def test_a_whole_read_is_assembled_across_chunks():
    data = bytes(range(256)) * 40  # 10240 bytes: three chunks of at most 4096
    assembler = cb.ReadAssembler()
    bodies = ["type=read:status=OK:id=x"]
    bodies += [f"type=read:status=DATA:id=x:mime={b64('image/png')};{b64(data[i:i + 4096])}" for i in range(0, len(data), 4096)]
    bodies += ["type=read:status=DONE:id=x"]
    results = [assembler.push(cb.parse_packet(body)) for body in bodies]
    assert results[:-1] == [None] * (len(bodies) - 1)
    assert results[-1].data == {"image/png": data} and not results[-1].error


def test_a_paste_event_lists_types_with_a_one_time_password():
    pw = f":pw={b64('uuid-1')}"
    assembler = cb.ReadAssembler(cb.MAX_LIST_BYTES)
    assert assembler.push(cb.parse_packet(f"type=read:status=OK{pw}")) is None
    assert assembler.push(cb.parse_packet(f"type=read:status=DATA:mime={b64('.')}{pw};{b64('text/plain image/png' + chr(10))}")) is None
    result = assembler.push(cb.parse_packet(f"type=read:status=DONE{pw}"))
    assert result.password == "uuid-1"
    types = cb.offered_types(result)
    assert cb.picture_type(types) == "image/png" and cb.text_type(types) == "text/plain"


@pytest.mark.parametrize("status, words", [("EPERM", "denied"), ("ENOSYS", "no such clipboard"), ("EBUSY", "busy")])
def test_an_error_status_ends_the_read_with_one_line(status, words):
    result = cb.ReadAssembler().push(cb.parse_packet(f"type=read:status={status}:id=x"))
    assert result.status == status and words in result.error and "\n" not in result.error
    assert not result.data


@pytest.mark.parametrize(
    "body",
    [
        "type=read:status=DATA:mime=aW1hZ2UvcG5n;not base64!",  # payload
        "type=read:status=OK:mime=@@@",  # a metadata value
        "type=read:status",  # not key=value
        "type=write:status=DONE",  # not a read's reply
        "type=read:status=WHAT",
        "type=read:status=OK;" + "A" * (cb.MAX_PACKET + 10),  # far larger than any terminal's chunk
    ],
)
def test_malformed_replies_are_refused(body):
    with pytest.raises(cb.ProtocolError):
        cb.parse_packet(body)


def test_a_read_that_grows_past_its_limit_fails_and_ignores_the_rest():
    assembler = cb.ReadAssembler(limit=5000)
    assembler.push(cb.parse_packet("type=read:status=OK"))
    chunk = f"type=read:status=DATA:mime={b64('image/png')};{b64(bytes(4096))}"
    assert assembler.push(cb.parse_packet(chunk)) is None
    result = assembler.push(cb.parse_packet(chunk))
    assert result.status == "too large" and not result.data
    assert assembler.push(cb.parse_packet("type=read:status=DONE")) is None  # already over
    # Out of order (data before OK), or a malformed packet: the read fails.
    assert cb.ReadAssembler().push(cb.parse_packet(chunk)).status == "malformed"
    assert cb.ReadAssembler().push(None).status == "malformed"


def test_the_splitter_takes_replies_out_of_the_input_wherever_they_are_cut():
    keys = "ab\x1b[Acd"
    message = osc(f"type=read:status=DATA:id=x:mime={b64('image/png')};{b64(bytes(3000))}")
    stream = "ab" + message + "\x1b[A" + osc("type=read:status=DONE:id=x") + "cd"
    for cut in range(1, len(stream), 97):
        for hold in (False, True):
            splitter = cb.OscSplitter(hold_escape=hold)
            out1, got1 = splitter.feed(stream[:cut], now=0)
            out2, got2 = splitter.feed(stream[cut:], now=0)
            assert out1 + out2 + splitter.release(now=10) == keys
            assert got1 + got2 == [message[len("\x1b]5522;"):-2], "type=read:status=DONE:id=x"]
    # Cut right after the ESC that starts a message: with hold_escape the ESC waits for the rest.
    splitter = cb.OscSplitter(hold_escape=True)
    at = stream.index("\x1b]")
    out, got = splitter.feed(stream[: at + 1], now=0)
    assert out == "ab" and splitter.holding
    assert splitter.release(now=0.01) == ""  # not yet
    out, got = splitter.feed(stream[at + 1:], now=0.01)
    assert out == "\x1b[Acd" and len(got) == 2


def test_a_lone_escape_is_handed_on_once_nothing_follows():
    splitter = cb.OscSplitter(hold_escape=True, delay=0.05)
    assert splitter.feed("\x1b", now=0) == ("", [])
    assert splitter.release(now=0.01) == ""
    assert splitter.release(now=0.2) == "\x1b"
    # Without hold_escape, a lone ESC goes on at once; other escapes are never held.
    assert cb.OscSplitter().feed("\x1b", now=0) == ("\x1b", [])
    assert cb.OscSplitter(hold_escape=True).feed("\x1b]11;rgb:0/0/0\x1b\\", now=0)[0] == "\x1b]11;rgb:0/0/0\x1b\\"


def test_an_oversized_or_cut_message_is_swallowed_whole():
    splitter = cb.OscSplitter()
    huge = "\x1b]5522;type=read:status=DATA;" + "A" * (cb.MAX_PACKET * 3) + "\x1b\\"
    out, got = splitter.feed("x" + huge[:20000], now=0)
    out2, got2 = splitter.feed(huge[20000:] + "y", now=0)
    assert out + out2 == "xy" and got + got2 == [None]
    # An ESC inside a message cancels it: reported as malformed, and what follows is keys again.
    out, got = cb.OscSplitter().feed("\x1b]5522;type=read\x1b[Az", now=0)
    assert got == [None] and out == "\x1b[Az"


def test_the_start_probe_finds_paste_events_and_reads():
    listing = osc("type=read:status=OK:id=vlchat-probe") + osc("type=read:status=DONE:id=vlchat-probe")
    assert cb.parse_probe("\x1b[?5522;2$y" + listing + "\x1b[?62;22c") == (True, True)
    assert cb.parse_probe(listing + "\x1b[?62c") == (False, True)  # kitty before 0.44.1: reads, no paste events
    assert cb.parse_probe("\x1b[?5522;0$y\x1b[?62c") == (False, False)
    assert cb.parse_probe("\x1b[?62c") == (False, False)
    assert "\x1b[?5522$p" in cb.PROBE_QUERY and f";{b64('.')}" in cb.PROBE_QUERY


@pytest.mark.parametrize(
    "text, paths",
    [
        ("'/home/me/My Pictures/shot 1.png'", ["/home/me/My Pictures/shot 1.png"]),  # quoted (kitty, GNOME)
        ("/home/me/My\\ Pictures/shot\\ 1.png ", ["/home/me/My Pictures/shot 1.png"]),  # backslash-escaped (iTerm2)
        ("file:///home/me/a%20b.JPG\r\nfile:///tmp/c.webp", ["/home/me/a b.JPG", "/tmp/c.webp"]),  # URIs
        ("/tmp/a.png /tmp/b.gif", ["/tmp/a.png", "/tmp/b.gif"]),
        ("~/Desktop/x.jpeg", ["~/Desktop/x.jpeg"]),
    ],
)
def test_dropped_picture_paths_are_recognised(text, paths):
    assert cb.dropped_paths(text) == paths


@pytest.mark.parametrize(
    "text",
    ["what is in /tmp/a.png?", "/tmp/notes.txt", "hello", "", "relative.png", "/tmp/a.png and more", "'unclosed /tmp/a.png"],
)
def test_text_stays_text(text):
    assert cb.dropped_paths(text) is None


def test_paste_support_says_what_was_found():
    assert "OSC 5522 paste events" in cb.PasteSupport(paste_events=True, osc_read=True).describe()
    assert "xclip" in cb.PasteSupport(local="xclip").describe()
    assert "/image PATH" in cb.PasteSupport(reason="inside tmux").describe()
    assert cb.local_clipboard({"DISPLAY": ""}, platform="linux") == ""
