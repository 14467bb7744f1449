"""`vlchat [IMAGE...]` and `vlchat demo`: open the app."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import threading

from vlchat.core.errors import InputError
from vlchat.core.text import clean


def _check_pictures(paths: list[str]):
    from vlchat.core.images import ImageNotFoundError, inspect_image

    refs = []
    for path in paths:
        try:
            # Checked without a full decode where that is safe: the preview decodes it downscaled.
            refs.append(inspect_image(path))
        except ImageNotFoundError as error:
            # `vlchat aks photo.jpg` reads as a picture called "aks": say what was probably meant.
            close = difflib.get_close_matches(path, ["ask", "demo"], n=1, cutoff=0.6)
            if close and os.path.sep not in path:
                raise InputError(f"{clean(path, keep_newlines=False)} is neither a picture nor a command", f"if you meant the command, it is spelled `vlchat {close[0]}`") from None
            raise error
    return refs


def run_app(args: argparse.Namespace, *, demo: bool = False) -> int:
    from vlchat.config import settings_from

    if demo:
        args.model = "demo"
    settings, sources = settings_from(args)
    images = list(args.images)
    if demo and not images:
        from vlchat.demo import SAMPLES_DIR

        images = [str(SAMPLES_DIR / "red-circle.png")]
    # A typo'd picture fails here, at once, as one line, before the screen is taken over.
    refs = _check_pictures(images)
    session, notes = None, []
    if getattr(args, "resume", None) is not None:
        # A missing or damaged session is one line and exit 2, before the screen is taken over.
        session, notes = resume_session(args.resume, settings, sources)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InputError(
            "the vlchat app needs a terminal, and stdin or stdout is not one",
            "in scripts use `vlchat ask IMAGE... QUESTION`",
        )

    from vlchat.ui.terminal import detect

    graphics = detect(settings.image_protocol)

    from vlchat.engines import make_engine
    from vlchat.ui.app import make_app
    from vlchat.ui.driver import accept_invalid_utf8, route_clipboard_replies

    accept_invalid_utf8()
    if graphics.paste.paste_events or graphics.paste.osc_read:
        route_clipboard_replies(hold_escape=True)

    engine = make_engine(settings, separate=True)  # the model in its own process: see engines/process.py
    try:
        app = make_app(settings, refs, engine=engine, graphics=graphics, sources=sources, session=session, session_notes=notes)
        app.run()
    finally:
        if session is not None:
            session.close()
        if graphics.paste.paste_events:
            # The terminal's paste key must paste text again even if the app ended abruptly.
            from vlchat.ui.clipboard import PASTE_EVENTS_OFF

            sys.__stdout__.write(PASTE_EVENTS_OFF)
            sys.__stdout__.flush()
    code = app.return_code or 0
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if busy:
        # Quitting while the model is still loading: the loader thread cannot be interrupted, and
        # Python would wait for it at exit. The screen is restored and nothing is left to save.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    try:
        app.engine.unload()  # the one in use: /model may have switched it
    except Exception:
        pass
    return code



def resume_session(name: str, settings, sources):
    """The session --resume names, locked (or read-only when it is open elsewhere), with the model
    and sampling it used, unless flags, the environment or the config file say otherwise."""
    from vlchat.core.session_writer import open_or_read_only
    from vlchat.core.sessions import SessionStore, SessionWriteRefusedError, store_root
    from vlchat.engines.remember import apply_remembered

    store = SessionStore(store_root(settings))
    notes = []
    folder, note = store.choose(name or None)  # an ambiguous title: the most recent, said aloud
    if note:
        notes.append(note)
    session, locked = open_or_read_only(store, folder)
    if locked is not None:
        why = "" if isinstance(locked, SessionWriteRefusedError) else " (quit the other vlchat to continue it here)"
        notes.append(f"{locked.message}: opened read-only, so nothing you add here is saved{why}")
    notes += apply_remembered(session, settings, sources)
    return session, notes
