"""`vlchat caption DIR_OR_FILES... -o captions.jsonl`: a caption for every picture, resumable.

Three threads of work, so the model never waits for the disk: a reader hashes and decodes the
pictures ahead of the model (and, for a local model that batches, runs the processor on the whole
batch), the main thread generates and writes each record as it finishes, and for a server a small
pool keeps ``--concurrency`` requests in flight. Ctrl-C only sets an event: the model stops within
a step, the line being written is finished, and the file stays valid.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

from vlchat.commands.caption_reading import (  # noqa: F401  (also re-exported: imported from here before)
    Item,
    Progress,
    Reader,
    Tally,
    Work,
    decode_workers,
    picture_name,
    regular_file_sha256,
    share_cpu,
)
from vlchat.commands.caption_common import MAX_FAILING, caption_on_server, error_line, per_picture_error, picture_ref
from vlchat.core.errors import InputError
from vlchat.core.text import clean
from vlchat.engines.base import usable_cores

if TYPE_CHECKING:  # Pillow and the stores load with the command, not with `vlchat --help`
    from vlchat.core.captions import Store
    from vlchat.core.conversation import GenerationParams
    from vlchat.core.pictures import Found

PRESETS = {
    "short": "Describe the picture in one sentence.",
    "detailed": "Describe the picture in detail.",
    "tags": "List what is in the picture as comma-separated tags.",
}
# The demo model knows only its own questions (vlchat/demo/shapes.py); asked for tags it would
# answer that it cannot, so with it the tags preset asks what it can answer.
DEMO_PRESETS = {"tags": "What is in the picture?"}
DEFAULT_PRESET = "short"
DEFAULT_BATCH = 8
DEFAULT_CONCURRENCY = 4


def add_caption_parser(commands, add_model_options, add_server_options, add_generation_options) -> None:
    caption = commands.add_parser(
        "caption",
        help="caption every picture in folders or files, to JSON lines (resumable)",
        description="Caption pictures (files, or the pictures found in folders by their content) and write one "
        "record per picture as each finishes: path, sha256, caption, model, prompt, tokens, seconds. Run the "
        "same command again to go on where it stopped: pictures already captioned with the same model and "
        "prompt are skipped. A picture that cannot be read becomes a record with an error and the run goes on.",
    )
    caption.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="pictures, or folders of pictures")
    caption.add_argument("-o", "--output", metavar="FILE", help="where the records go (not needed with --format txt-sidecar)")
    caption.add_argument(
        "--format",
        choices=("jsonl", "json", "csv", "txt-sidecar"),
        help="jsonl (default; or as FILE's extension says: .json, .csv), json (one array, written at the end "
        "and every few seconds), csv, or txt-sidecar (photo.txt beside photo.jpg, as training tools expect)",
    )
    prompt = caption.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="what to ask about each picture")
    prompt.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help=f"a ready prompt: short (default: {PRESETS['short']!r}), detailed, tags",
    )
    caption.add_argument("--recursive", "-r", action="store_true", help="look in sub-folders too")
    caption.add_argument(
        "--batch-size", type=int, metavar="N", help=f"pictures per generate call for a local model (default {DEFAULT_BATCH})"
    )
    caption.add_argument(
        "--concurrency", type=int, metavar="N",
        help=f"requests in flight at once with --endpoint (default {DEFAULT_CONCURRENCY})",
    )
    caption.add_argument("--limit", type=int, metavar="N", help="caption at most N new pictures this run, then stop")
    caption.add_argument("--retry-errors", action="store_true", help="try again the pictures an earlier run could not caption")
    caption.add_argument(
        "--overwrite", action="store_true", help="with txt-sidecar: replace .txt files that vlchat did not write"
    )
    add_model_options(caption)
    add_server_options(caption, many_endpoints=True)
    add_generation_options(caption)
    from vlchat.commands.caption_scale import add_scale_options

    add_scale_options(caption)


# -- the command ----------------------------------------------------------------------------------
def _positive(value: int | None, name: str, default: int) -> int:
    if value is None:
        return default
    if value < 1:
        raise InputError(f"{name} must be at least 1, not {value}", f"give e.g. {name} {default}")
    return value


def prompt_for(args: argparse.Namespace, model: str) -> str:
    if args.prompt is not None:
        return args.prompt
    preset = args.preset or DEFAULT_PRESET
    from vlchat.demo import DEMO_NAME

    if model == DEMO_NAME and preset in DEMO_PRESETS:
        return DEMO_PRESETS[preset]
    return PRESETS[preset]


def run_caption(args: argparse.Namespace) -> int:
    from vlchat.config import settings_from
    from vlchat.commands.ask import generation_params as _params
    from vlchat.core.captions import format_for, open_store
    from vlchat.core.pictures import find_pictures
    from vlchat.engines import make_engine

    from vlchat.commands.caption_scale import apply_like, split_endpoints

    endpoints = split_endpoints(args)  # args.endpoint is the first of them from here on
    settings, _sources = settings_from(args)
    apply_like(args, settings, _sources)
    params = _params(settings)
    batch_size = _positive(args.batch_size, "--batch-size", DEFAULT_BATCH)
    concurrency = _positive(args.concurrency, "--concurrency", DEFAULT_CONCURRENCY)
    limit = None if args.limit is None else _positive(args.limit, "--limit", 1)
    fmt = format_for(args.output, args.format)
    if fmt == "txt-sidecar" and args.output:
        raise InputError("--format txt-sidecar writes a .txt beside each picture, so -o is not used", "leave out -o")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("the prompt is empty", "give --prompt some text, or use --preset short, detailed or tags")
    if args.overwrite and fmt != "txt-sidecar":
        raise InputError("--overwrite is for --format txt-sidecar", "leave it out")
    # Everything a person can get wrong is checked before the (slow) model load.
    store = open_store(fmt, args.output, overwrite=args.overwrite)
    try:
        found = list(find_pictures(args.inputs, recursive=args.recursive, exclude=[args.output] if args.output else []))
        engine = make_engine(settings)
        return caption_all(
            engine, found, store, args=args, settings=settings, params=params,
            batch_size=batch_size, concurrency=concurrency, limit=limit, endpoints=endpoints,
        )
    finally:
        store.close()


def caption_all(engine, found: list[Found], store: Store, *, args, settings, params: GenerationParams,
                batch_size: int, concurrency: int, limit: int | None, err=None,
                endpoints: list[str] | None = None) -> int:
    from vlchat.core.captions import PictureWriteError
    from vlchat.engines.batch import can_batch
    from vlchat.engines.base import LoadProgress

    err = err or sys.stderr
    spec = getattr(engine, "spec", None)
    if getattr(spec, "name", None) == "demo" and getattr(spec, "label", ""):
        print(f"vlchat: using the {spec.label} (it knows only colours and shapes); choose a real one with --model", file=err)
    if not found:
        print("vlchat: no pictures found" + (" (add --recursive to look in sub-folders)" if not args.recursive else ""), file=err)
        return 0

    def loading(step: LoadProgress) -> None:
        if err.isatty():
            print(f"\rvlchat: {step.stage}\x1b[K", end="", file=err, flush=True)

    on_ray = getattr(args, "ray", None) is not None
    if on_ray and settings.endpoint:
        raise InputError("--ray runs a local model on Ray workers, and --endpoint uses servers", "leave out one of them")
    servers = None
    if endpoints and len(endpoints) > 1:
        from vlchat.commands.caption_scale import open_servers

        servers = open_servers(settings, endpoints, loading)
    if on_ray:
        from vlchat.commands.caption_ray import import_ray

        import_ray(args.ray or None)  # says how to get it before anything else happens
    elif servers is None and getattr(engine, "model", None) is None:  # a caller (the benchmark) may hand in a loaded one
        engine.load(loading)
        if err.isatty():
            print("\r\x1b[K", end="", file=err, flush=True)
    model = (servers.model if servers else engine.describe().name) if settings.endpoint else engine.name
    prompt = prompt_for(args, model)
    if args.prompt is None and getattr(engine, "captions_without_text", False):
        prompt = ""  # a captioner (BLIP) captions the picture alone; a text would start its caption
    remote = bool(settings.endpoint)
    batching = not remote and can_batch(engine)
    if servers:
        mode = f"{concurrency} request{'' if concurrency == 1 else 's'} at a time on each of {len(servers.all)} servers"
    elif remote:
        mode = f"{concurrency} request{'' if concurrency == 1 else 's'} at a time"
    elif on_ray:
        mode = "Ray"
    elif batching:
        mode = f"batches of {batch_size}"
    else:
        mode = "one at a time: this model cannot batch"
        if args.batch_size and args.batch_size > 1:
            print(f"vlchat: note: {clean(model, keep_newlines=False)} builds its own prompts, so it captions one picture at a time", file=err)
    if not remote and not on_ray:
        share_cpu(engine)
    tally = Tally(total=len(found))
    progress = Progress(tally, mode, err)
    stop = threading.Event()
    system = settings.system

    prepare = None
    if batching and not on_ray:
        from vlchat.engines.batch import prepare_batch

        rendered: dict[str, str] = {}

        def prepare(items: list[Item]):
            return prepare_batch(engine, [i.picture.image for i in items], [prompt] * len(items),
                                 system=system, rendered=rendered)

    reader = Reader(found, store, model, prompt, group=batch_size if batching or on_ray else 1,
                    retry_errors=args.retry_errors, limit=limit, stop=stop, prepare=prepare,
                    workers=max(1, min(4, usable_cores() - 1)) if on_ray else decode_workers(engine, remote))

    failing = [0]  # pictures in a row the model or server failed on

    def record(item: Item, caption=None, seconds: float | None = None, model_failed: bool = False,
               copied: bool = False) -> None:
        # Absolute, so that a run started from another folder knows the picture as done.
        entry: dict[str, Any] = {"path": os.path.abspath(item.found.path), "sha256": item.sha256}
        failing[0] = failing[0] + 1 if model_failed else 0 if caption is not None and not copied else failing[0]
        if caption is not None:
            entry.update(caption=caption.text, model=model, prompt=prompt, tokens=caption.tokens,
                         seconds=round(seconds or 0.0, 4))
        else:
            entry.update(model=model, prompt=prompt, error=item.error)
        again = caption is None and store.done.has_error(entry["path"], model, prompt)
        try:
            if not again:  # a retried picture that fails again keeps its one error record
                store.write(entry)
        except PictureWriteError as error:  # this picture's .txt or folder only: the others go on
            tally.failed += 1
            progress.say(f"vlchat: {clean(error.line(), keep_newlines=False)}")
            return
        if caption is not None:
            if copied:
                tally.skipped += 1
            else:
                tally.captioned += 1
        else:
            tally.failed += 1
            message = clean(item.error or "", keep_newlines=False)
            name = picture_name(item.found)
            progress.say(f"vlchat: {message}" if name in message else f"vlchat: {name}: {message}")
        progress.draw()
        if failing[0] >= MAX_FAILING:
            from vlchat.engines.base import GenerationError

            raise GenerationError(
                f"the model failed on {failing[0]} pictures in a row, so the run stops (the last: {clean(item.error or '', keep_newlines=False)})",
                "fix the model or server, then run the same command again with --retry-errors",
            )

    previous = signal.signal(signal.SIGINT, lambda _s, _f: stop.set()) if threading.current_thread() is threading.main_thread() else None
    reader.start()
    try:
        if on_ray:
            from vlchat.commands.caption_ray import run_on_ray

            run_on_ray(_messages(reader, tally, progress, stop, record), record, progress, stop, settings=settings,
                       prompt=prompt, params=params, system=system, address=args.ray or None,
                       workers=args.workers, gpus_per_worker=args.gpus_per_worker, batch_size=batch_size)
        elif servers:
            servers.run(_messages(reader, tally, progress, stop, record), record, progress, stop,
                        prompt=prompt, params=params, system=system, concurrency=concurrency)
        elif remote:
            _run_remote(engine, reader, record, progress, tally, prompt, params, system, concurrency, stop)
        else:
            _run_local(engine, reader, record, progress, tally, prompt, params, system, batching, stop, prepare)
        interrupted = stop.is_set()
    finally:
        stop.set()  # the reader stops too, whatever ended the run
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        progress.clear()
    reader.join(timeout=5)
    if reader.failure is not None:
        raise reader.failure
    elapsed = time.perf_counter() - tally.started
    rate = tally.captioned / elapsed if elapsed > 0 else 0.0
    parts = [f"{tally.captioned} captioned"]
    if tally.failed:
        parts.append(f"{tally.failed} failed (recorded with their error)")
    if tally.skipped:
        parts.append(f"{tally.skipped} already done")
    if tally.failed_before:
        parts.append(f"{tally.failed_before} failed in an earlier run (--retry-errors tries them again)")
    if tally.blocked:
        parts.append(f"{tally.blocked} left alone")
    left = tally.total - tally.handled
    if left > 0 and limit is not None and not interrupted:
        parts.append(f"{left} left for the next run (--limit {limit})")
    summary = (f"vlchat: {tally.total} picture{'' if tally.total == 1 else 's'}: {', '.join(parts)}; {elapsed:.1f} s, {rate:.1f} pictures/s "
               f"({progress.mode}) -> {store.where()}")
    if interrupted:
        print(f"vlchat: stopped; {summary[len('vlchat: '):]}; run the same command again to go on", file=err)
        return 130
    if not args.recursive:
        folders = _subfolders(getattr(args, "inputs", None) or [])
        if folders:
            print(f"vlchat: note: {folders} sub-folder{'' if folders == 1 else 's'} not looked in (add --recursive)", file=err)
    if servers:
        print(servers.summary(), file=err)
    print(summary, file=err)  # the last line, as scripts read it
    return 0


def _subfolders(inputs: list[str]) -> int:
    """Sub-folders (not hidden) of the folders named, which a run without --recursive leaves out."""
    count = 0
    for item in inputs:
        try:
            if os.path.isdir(item):
                with os.scandir(item) as entries:
                    count += sum(1 for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return count


def _messages(reader: Reader, tally: Tally, progress: Progress, stop: threading.Event, record) -> Iterator[tuple[str, Any]]:
    """What the reader sends, with skips and blocked pictures counted on the way."""
    while True:
        try:
            kind, value = reader.out.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set() or not reader.is_alive() and reader.out.empty():
                return
            continue
        if kind == "end":
            return
        if kind in ("skip", "failed-before"):
            if kind == "skip":
                tally.skipped += 1
            else:
                tally.failed_before += 1
            progress.draw()
            continue
        if kind == "copy":
            from vlchat.engines.batch import Caption

            item, earlier = value
            record(item, Caption(str(earlier.get("caption", "")), int(earlier.get("tokens") or 0)), 0.0, copied=True)
            continue
        if kind == "blocked":
            tally.blocked += 1
            progress.say(f"vlchat: skipped {picture_name(value.found)}: {clean(value.error, keep_newlines=False)}")
            continue
        yield kind, value


def _run_local(engine, reader, record, progress, tally, prompt, params, system, batching, stop, prepare) -> None:
    from vlchat.engines.base import OutOfMemoryError
    from vlchat.engines.batch import caption_one_by_one, generate_batch

    def run(items: list[Item], batch) -> bool:
        """Caption these pictures and write their records; False when stopped part-way."""
        started = time.perf_counter()
        try:
            if batching:
                captions = generate_batch(engine, batch, params, stop)
            else:
                captions = caption_one_by_one(engine, [picture_ref(i) for i in items], prompt, params,
                                              system=system, cancel=stop)
        except OutOfMemoryError as error:
            if not batching or len(items) == 1:
                raise OutOfMemoryError(error.message, "try a smaller --batch-size, or --quant 4bit") from error
            # Too many at once for this device: halve the batch, for this one and the rest of the run.
            batch = None
            _free_device_memory()
            half = (len(items) + 1) // 2
            if reader.group > half:
                reader.group = half
                progress.mode = f"batches of {half}"
                progress.say(f"vlchat: note: out of memory with {len(items)} pictures at once; going on with batches of {half}")
            return run(items[:half], prepare(items[:half])) and run(items[half:], prepare(items[half:]))
        except Exception as error:
            if not per_picture_error(error):
                raise
            for item in items:
                item.error = error_line(error)
                record(item, model_failed=True)
            return True
        if captions is None:  # stopped part-way: nothing half-made is written
            return False
        share = (time.perf_counter() - started) / len(items)
        for item, caption in zip(items, captions):
            record(item, caption, share)
        return not stop.is_set()

    for kind, value in _messages(reader, tally, progress, stop, record):
        if kind == "error":
            record(value)
            continue
        work: Work = value
        batch, work.batch = work.batch, None
        if not run(work.items, batch):
            return


def _free_device_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _run_remote(engine, reader, record, progress, tally, prompt, params, system, concurrency, stop) -> None:
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from vlchat.core.images import ImageError
    from vlchat.engines.batch import Caption

    building = threading.Lock()  # see caption_on_server

    def ask(item: Item) -> tuple[Caption | None, float]:
        return caption_on_server(engine, item, prompt=prompt, system=system, params=params, stop=stop, building=building)

    running: dict[Any, Item] = {}

    def collect(done) -> None:
        for future in done:
            item = running.pop(future)
            try:
                caption, seconds = future.result()
            except Exception as error:
                if not per_picture_error(error):
                    raise
                item.error = error_line(error)
                record(item, model_failed=not isinstance(error, ImageError))
                continue
            if caption is not None:
                record(item, caption, seconds)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vlchat-caption") as pool:
        try:
            for kind, value in _messages(reader, tally, progress, stop, record):
                if kind == "error":
                    record(value)
                    continue
                for item in value.items:
                    while len(running) >= concurrency and not stop.is_set():
                        done, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                        collect(done)
                    if stop.is_set():
                        break
                    running[pool.submit(ask, item)] = item
                if stop.is_set():
                    break
            while running:
                done, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                collect(done)
        except BaseException:
            stop.set()  # the other requests stop too, then the error goes up
            raise
