"""`vlchat caption` past one model on one machine: several servers, a Ray cluster (caption_ray.py),
and the model, prompt and sampling of a saved session (--like).

Several servers: each keeps ``--concurrency`` requests in flight; a server that fails (refuses the
connection, drops a stream, answers 5xx) is rested, longer each time, and the picture it had is
asked of another; the summary says how many pictures each one captioned.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlchat.core.errors import InputError
from vlchat.core.text import clean

REST_S = 5.0  # the first rest of a failing server; doubled each time it fails again, up to REST_MAX_S
REST_MAX_S = 120.0


def add_scale_options(caption) -> None:
    group = caption.add_argument_group("more than one machine")
    group.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS",
        help="caption on Ray workers: alone, a Ray started here (127.0.0.1 only); auto or HOST:PORT joins a "
        "cluster (needs pip install 'vlchat[ray]')",
    )
    group.add_argument("--workers", type=int, metavar="N",
                       help="with --ray: how many workers, each with its own copy of the model (default: one per GPU; 1 on CPUs)")
    group.add_argument("--gpus-per-worker", type=float, metavar="N",
                       help="with --ray on GPUs: GPUs each worker holds (default 1)")
    group.add_argument("--endpoints-file", metavar="FILE",
                       help="servers to spread the pictures over, one URL a line (with or besides --endpoint)")
    group.add_argument("--like", metavar="SESSION",
                       help="the model, system prompt, last question and sampling of a saved session (name, id or folder)")


def split_endpoints(args) -> list[str]:
    """Every server named by --endpoint (given once or more) and --endpoints-file; ``args.endpoint``
    becomes the first (or None), as the settings expect one."""
    urls = list(args.endpoint or []) if isinstance(args.endpoint, list) else ([args.endpoint] if args.endpoint else [])
    if getattr(args, "endpoints_file", None):
        path = Path(args.endpoints_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read {clean(str(path), keep_newlines=False)}: {getattr(error, 'strerror', None) or error}",
                             "give a text file with one server URL a line") from None
        urls += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    seen: list[str] = []
    for url in urls:
        if url not in seen:
            seen.append(url)
    if any(getattr(args, name, None) for name in ("workers", "gpus_per_worker")) and getattr(args, "ray", None) is None:
        raise InputError("--workers and --gpus-per-worker are for --ray", "add --ray, or leave them out")
    args.endpoint = seen[0] if seen else None
    return seen


def apply_like(args, settings, sources) -> None:
    """--like SESSION: its model, system prompt, last question and sampling, where the command line
    chose nothing else."""
    ref = getattr(args, "like", None)
    if not ref:
        return
    from vlchat.core.sessions import SessionStore, store_root
    from vlchat.engines.remember import apply_remembered

    session = SessionStore(store_root(settings)).open(ref, read_only=True)
    try:
        for note in apply_remembered(session, settings, sources):
            import sys

            print(f"vlchat: note: {note}", file=sys.stderr)
        if not str(sources.get("system", "")).startswith("flag"):
            settings.system = session.conversation.system
        if args.prompt is None and args.preset is None:
            asked = [m.text for m in session.conversation.messages if m.role == "user" and m.text.strip()]
            if not asked:
                raise InputError(f"session {clean(session.title, keep_newlines=False)} has no question to ask of each picture",
                                 "give one with --prompt")
            args.prompt = asked[-1]
    finally:
        session.close()


# -- several servers -------------------------------------------------------------------------------
@dataclass
class Server:
    url: str  # as it may be shown
    engine: Any
    busy: int = 0
    done: int = 0
    rests: int = 0
    resting_until: float = 0.0
    last_error: str = ""

    def ready(self, now: float, concurrency: int) -> bool:
        return self.busy < concurrency and now >= self.resting_until


@dataclass
class Servers:
    all: list[Server]
    model: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        for server in self.all:
            part = f"{server.url}: {server.done}"
            if server.rests:
                part += f" (rested {server.rests} time{'s' if server.rests > 1 else ''})"
            parts.append(part)
        return "vlchat: captioned by server: " + ", ".join(parts)

    def run(self, messages, record, progress, stop, *, prompt, params, system, concurrency) -> None:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from vlchat.commands.caption_common import (
            MAX_FAILING,
            caption_on_server,
            draw_batches,
            error_line,
            per_picture_error,
        )
        from vlchat.core.images import ImageError
        from vlchat.engines.base import GenerationError

        for note in self.notes:
            progress.say(note)
        building = threading.Lock()  # an engine's picture cache is not made for several threads

        def ask(server: Server, item):
            return caption_on_server(server.engine, item, prompt=prompt, system=system, params=params, stop=stop,
                                     building=building)

        pending: list = []
        running: dict[Any, tuple[Server, Any]] = {}
        failures_in_a_row = [0]
        source = iter(messages)
        exhausted = False

        def collect(done) -> None:
            for future in done:
                server, item = running.pop(future)
                server.busy -= 1
                try:
                    caption, seconds = future.result()
                except Exception as error:
                    if per_picture_error(error):
                        item.error = error_line(error)
                        record(item, model_failed=not isinstance(error, ImageError))
                        continue
                    # The server, not the picture: rest it, and ask another.
                    failures_in_a_row[0] += 1
                    server.rests += 1
                    server.last_error = error_line(error)
                    rest = min(REST_MAX_S, REST_S * 2 ** (server.rests - 1))
                    server.resting_until = time.monotonic() + rest
                    progress.say(f"vlchat: {server.url} failed ({clean(server.last_error, keep_newlines=False)}); "
                                 f"resting it {rest:.0f} s, its pictures go to the others")
                    pending.insert(0, item)
                    if failures_in_a_row[0] >= MAX_FAILING * len(self.all):
                        raise GenerationError(f"the servers failed {failures_in_a_row[0]} times in a row (the last: {server.last_error})",
                                              "fix the servers, then run the same command again") from None
                    continue
                failures_in_a_row[0] = 0
                if caption is not None:
                    server.done += 1
                    record(item, caption, seconds)

        total_slots = concurrency * len(self.all)
        with ThreadPoolExecutor(max_workers=total_slots, thread_name_prefix="vlchat-caption") as pool:
            try:
                while not stop.is_set():
                    if not exhausted:
                        exhausted = draw_batches(source, record, lambda: len(pending) + len(running) < total_slots,
                                                 lambda batch: pending.extend(batch.items))
                    now = time.monotonic()
                    while pending:
                        free = [s for s in self.all if s.ready(now, concurrency)]
                        if not free:
                            break
                        server = min(free, key=lambda s: s.busy)
                        item = pending.pop(0)
                        server.busy += 1
                        running[pool.submit(ask, server, item)] = (server, item)
                    if exhausted and not pending and not running:
                        return
                    if running:
                        done, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                        collect(done)
                    else:
                        time.sleep(0.05)  # every server resting: wait for the first rest to end
                while running:
                    done, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                    collect(done)
            except BaseException:
                stop.set()
                raise


def open_servers(settings, endpoints: list[str], loading) -> Servers:
    """Every server connected to and asked for its model; a server that cannot be reached at the
    start is left out with a note (all of them: the first one's error)."""
    from dataclasses import replace

    from vlchat.engines import make_engine
    from vlchat.engines.openai import display_endpoint

    servers: list[Server] = []
    notes: list[str] = []
    first_error: BaseException | None = None
    for url in endpoints:
        engine = make_engine(replace(settings, endpoint=url))
        shown = clean(display_endpoint(url), keep_newlines=False)
        try:
            engine.load(loading)
        except Exception as error:  # noqa: BLE001 - the others may be up
            from vlchat.commands.caption_common import error_line

            first_error = first_error or error
            notes.append(f"vlchat: {shown} left out: {clean(error_line(error), keep_newlines=False)}")
            continue
        servers.append(Server(shown, engine))
    if not servers:
        assert first_error is not None
        raise first_error
    names = {s.engine.describe().name for s in servers}
    if len(names) > 1:
        raise InputError("the servers serve different models (" + ", ".join(sorted(clean(n, keep_newlines=False) for n in names)) + ")",
                         "give --model NAME for the one to use on all of them")
    return Servers(servers, names.pop(), notes)
