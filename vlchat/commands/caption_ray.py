"""`vlchat caption ... --ray [ADDRESS]`: the same job, its pictures captioned by workers on a Ray cluster.

Ray actors, not Ray Data: the job is already a stream the driver owns (what is left is decided from
the output file, each record is written and flushed as it comes back, Ctrl-C must leave the file
whole). Actors give exactly that: one long-lived worker per GPU holding one copy of the model, a
batch handed to it as its last one comes back, a dead worker seen at once (its batch goes to
another), and nothing left running when the driver stops. Ray Data would own the order, the
retries and the output, and a resumable run would have to be rebuilt around it.

The driver reads, hashes and checks each picture as `vlchat caption` always does, then ships the
file's bytes (no shared filesystem); the worker decodes them exactly as the driver would have, and
captions its batch with the same code as a local run (vlchat/engines/batch.py). Ray is imported
here only, so `vlchat` works without it.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from vlchat.core.errors import InputError
from vlchat.core.text import clean

INSTALL_HINT = "install it with: pip install 'vlchat[ray]'"
IN_FLIGHT = 2  # batches queued on a worker: the next is there when the last one ends
MAX_TRIES = 3  # workers that may die on one batch before its pictures are recorded as failed


def import_ray(address: str | None = None):
    """Ray, imported with the settings it reads as it loads (it reads its auth mode only then)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if "RAY_AUTH_MODE" not in os.environ:
        # A Ray started here asks for Ray's token (made in ~/.ray on first use), as `ray start` does
        # once one exists; a cluster is joined with that token when there is one.
        token = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
        if not address or os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(os.environ.get("RAY_AUTH_TOKEN_PATH", token)):
            os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray, which is not installed", INSTALL_HINT) from None
    return ray


# -- the worker ------------------------------------------------------------------------------------
class CaptionWorker:
    """One copy of the model on one worker (one GPU, or a few CPU cores), captioning batches.

    A picture it cannot use comes back as an error; anything that means every picture would fail
    (the model broken, out of memory on a single picture) is raised, and the driver stops the run.
    """

    def __init__(self, settings, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from vlchat.engines import make_engine
        from vlchat.engines.batch import can_batch

        self.engine = make_engine(settings)
        self.engine.load(lambda _step: None)
        self.batching = can_batch(self.engine)
        self.rendered: dict[str, str] = {}

    def hello(self) -> tuple[str, int, str]:
        return socket.gethostname(), os.getpid(), str(getattr(self.engine, "device", "?"))

    def caption(self, pictures: list[tuple[str, bytes]], prompt: str, system: str | None, params) -> list[tuple]:
        """For each (path, bytes): ("caption", text, tokens, seconds) or ("error", line, model_failed)."""
        from vlchat.core.images import MODEL_MAX_SIDE, ImageError, load_image_bytes

        results: list[Any] = [None] * len(pictures)
        loaded = []
        for index, (path, data) in enumerate(pictures):
            try:
                loaded.append((index, load_image_bytes(data, _display(path), path=path, max_side=MODEL_MAX_SIDE)))
            except ImageError as error:
                results[index] = ("error", error.line(), False)
        if loaded:
            self._run([i for i, _ in loaded], [p for _, p in loaded], prompt, system, params, results)
        return results

    def _run(self, indexes, pictures, prompt, system, params, results) -> None:
        from vlchat.commands.caption_common import error_line, per_picture_error
        from vlchat.engines.base import OutOfMemoryError
        from vlchat.engines.batch import caption_one_by_one, generate_batch, prepare_batch

        started = time.perf_counter()
        try:
            if self.batching:
                try:
                    batch = prepare_batch(self.engine, [p.image for p in pictures], [prompt] * len(pictures),
                                          system=system, rendered=self.rendered)
                except Exception as error:  # noqa: BLE001 - find the picture the processor refuses
                    if len(pictures) > 1:
                        for i, picture in zip(indexes, pictures):
                            self._run([i], [picture], prompt, system, params, results)
                        return
                    results[indexes[0]] = ("error", "the model's processor refused it: "
                                           f"{type(error).__name__}: {clean(str(error), keep_newlines=False)[:200]}", False)
                    return
                captions = generate_batch(self.engine, batch, params)
            else:
                captions = caption_one_by_one(self.engine, [self._ref(p) for p in pictures], prompt, params, system=system)
        except OutOfMemoryError:
            if len(pictures) == 1:
                raise
            import gc

            gc.collect()
            half = (len(pictures) + 1) // 2
            self._run(indexes[:half], pictures[:half], prompt, system, params, results)
            self._run(indexes[half:], pictures[half:], prompt, system, params, results)
            return
        except Exception as error:
            if not per_picture_error(error):
                raise
            for i in indexes:
                results[i] = ("error", error_line(error), True)
            return
        share = (time.perf_counter() - started) / len(pictures)
        for i, caption in zip(indexes, captions or []):
            results[i] = ("caption", caption.text, caption.tokens, share)

    def _ref(self, picture):
        """A model that builds its own prompts reads its picture by reference: the worker keeps a
        copy of the decoded picture in a folder of its own and points the reference there."""
        import tempfile

        folder = getattr(self, "_folder", None) or tempfile.mkdtemp(prefix="vlchat-ray-")
        self._folder = folder
        local = os.path.join(folder, picture.ref.sha256 + ".png")
        if not os.path.exists(local):
            picture.image.save(local, format="PNG")
        from vlchat.core.images import load_image

        return load_image(local).ref


def _display(path: str) -> str:
    from vlchat.core.sessions import shown_path

    return shown_path(path)


# -- the driver ------------------------------------------------------------------------------------
@dataclass
class Worker:
    number: int
    actor: Any
    where: str = "starting"
    in_flight: int = 0
    dead: bool = False
    done: int = 0


@dataclass
class Task:
    worker: Worker
    items: list
    tries: int


@dataclass
class Pool:
    """The workers and what each has in hand."""

    ray: Any
    make: Any  # () -> actor
    workers: list[Worker] = field(default_factory=list)
    deaths: int = 0

    def add(self) -> Worker:
        worker = Worker(len(self.workers) + 1, self.make())
        self.workers.append(worker)
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if not w.dead]

    def free(self) -> Worker | None:
        # Only a worker that has said it is ready: one Ray cannot place would hold its batches forever.
        ready = [w for w in self.alive() if w.where != "starting" and w.in_flight < IN_FLIGHT]
        return min(ready, key=lambda w: w.in_flight) if ready else None

    def stop(self) -> None:
        for worker in self.workers:
            try:
                self.ray.kill(worker.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def start_ray(ray, address: str | None, workers: int | None) -> bool:
    """Join the cluster at ``address`` (auto, HOST:PORT) or start a local one on 127.0.0.1 only.
    True when this run started it (and so stops it)."""
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)  # its start-up notes are not the user's business
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    if address is None:
        ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=max(usable_cpus(), workers or 1), **quiet)
        return True
    quiet.pop("include_dashboard")
    try:
        ray.init(address=address, **quiet)
    except Exception as error:  # noqa: BLE001 - Ray says why in its own words: one line of them
        raise InputError(f"could not join the Ray cluster at {clean(address, keep_newlines=False)}: "
                         f"{clean(str(error), keep_newlines=False)[:200]}",
                         "start one with `ray start --head`, then give its address (HOST:PORT) or auto") from None
    return False


def usable_cpus() -> int:
    from vlchat.engines.base import usable_cores

    return max(1, usable_cores())


def plan_workers(ray, settings, workers: int | None, gpus_per_worker: float | None,
                 driver_here: bool = False) -> tuple[int, float, int]:
    """(workers, GPUs each, CPU threads each) from what the cluster has and what was asked. On a
    Ray started here, one core is left to the driver (it reads and hashes the pictures): torch's
    threads spin while they wait for each other, and one sharing its core stalls every step."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = slots = int(resources.get("CPU", 1))
    if driver_here and cpus > 1:
        cpus -= 1
    on_gpu = gpus > 0 and settings.device not in ("cpu", "mps")
    if gpus_per_worker is not None and not on_gpu:
        raise InputError("--gpus-per-worker was given, but the Ray cluster has no GPU" if gpus == 0 else
                         "--gpus-per-worker was given with --device cpu",
                         "leave it out to caption on CPU workers (--workers N)")
    if on_gpu:
        each = gpus_per_worker or 1.0
        count = workers or max(1, int(gpus // each))
        if count * each > gpus:
            raise InputError(f"{count} workers of {each:g} GPU need {count * each:g} GPUs, and the Ray cluster has {gpus:g}",
                             "ask for fewer with --workers, or add GPUs to the cluster")
        return count, each, 0
    count = workers or 1
    if count > slots:
        raise InputError(f"{count} CPU workers need {count} CPUs, and the Ray cluster has {slots}",
                         f"give --workers {slots} or fewer, or add machines to the cluster")
    return count, 0.0, max(1, cpus // count)


def run_on_ray(messages: Iterator[tuple[str, Any]], record, progress, stop, *, settings, prompt: str, params,
               system: str | None, address: str | None, workers: int | None, gpus_per_worker: float | None,
               batch_size: int) -> None:
    """Caption what ``messages`` (the reader's work) hands on, on Ray workers; ``record`` writes each
    picture's record as its batch comes back."""
    from vlchat.engines.base import GenerationError
    from vlchat.engines.batch import Caption

    ray = import_ray(address)
    started_here = start_ray(ray, address, workers)
    pool: Pool | None = None
    try:
        count, gpus_each, threads = plan_workers(ray, settings, workers, gpus_per_worker, driver_here=started_here)
        remote = ray.remote(num_cpus=0 if gpus_each else threads, num_gpus=gpus_each)(CaptionWorker)
        pool = Pool(ray, lambda: remote.remote(settings, threads or None))
        for _ in range(count):
            pool.add()
        kind = f"{gpus_each:g} GPU" if gpus_each else f"{threads} CPU{'s' if threads > 1 else ''}"
        where = "a local Ray" if started_here else "the Ray cluster"
        progress.mode = f"{count} Ray worker{'s' if count > 1 else ''} of {kind} on {where}, batches of {batch_size}"
        greeting = {pool.workers[i].actor.hello.remote(): pool.workers[i] for i in range(count)}
        _drive(ray, pool, messages, record, progress, stop, greeting, prompt, system, params, Caption, GenerationError)
    finally:
        if pool is not None:
            pool.stop()
        ray.shutdown()


def _drive(ray, pool: Pool, messages, record, progress, stop, greeting, prompt, system, params, Caption, GenerationError) -> None:
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError, WorkerCrashedError

    from vlchat.commands.caption_common import draw_batches

    pending: deque[tuple[list, int]] = deque()
    running: dict[Any, Task] = {}
    source = iter(messages)
    exhausted = False

    def ship(items: list) -> list[tuple[str, bytes]]:
        shipped = []
        for item in items:
            with open(item.found.path, "rb") as handle:  # read again: the reader keeps only the pixels
                shipped.append((os.path.abspath(item.found.path), handle.read()))
        return shipped

    def lost(task: Task, why: str) -> None:
        worker = task.worker
        if not worker.dead:
            worker.dead = True
            pool.deaths += 1
            progress.say(f"vlchat: Ray worker {worker.number} ({worker.where}) stopped ({why}); "
                         f"its {len(task.items)} pictures go to another")
            if pool.deaths <= 2 * len(pool.workers):  # a replacement, unless workers keep dying
                new = pool.add()
                greeting[new.actor.hello.remote()] = new
        for other_ref, other in list(running.items()):
            if other.worker is worker:
                running.pop(other_ref)
                pending.appendleft((other.items, other.tries + 1))
        if task.tries + 1 >= MAX_TRIES:
            for item in task.items:
                item.error = f"the Ray workers captioning it stopped {MAX_TRIES} times ({why})"
                record(item, model_failed=True)
        else:
            pending.appendleft((task.items, task.tries + 1))

    while not stop.is_set():
        room = sum(IN_FLIGHT - w.in_flight for w in pool.alive())
        if not exhausted:
            exhausted = draw_batches(source, record, lambda: len(pending) < max(1, room),
                                     lambda batch: pending.append((batch.items, 0)))
        while pending and (worker := pool.free()) is not None:
            items, tries = pending.popleft()
            try:
                shipped = ship(items)
            except OSError as error:  # changed or gone since it was read: recorded, as a local run would
                for item in items:
                    item.error = f"{_display(item.found.path)} could not be read again: {error.strerror or error}"
                    record(item)
                continue
            ref = worker.actor.caption.remote(shipped, prompt, system, params)
            worker.in_flight += 1
            running[ref] = Task(worker, items, tries)
        if exhausted and not pending and not running:
            return
        if not pool.alive() and not greeting:
            raise GenerationError("every Ray worker stopped", "look at the cluster's logs (ray logs), then run the same command again")
        waiting = list(running) + list(greeting)
        if not waiting:
            continue
        done, _ = ray.wait(waiting, num_returns=1, timeout=0.1)
        for ref in done:
            if ref in greeting:
                worker = greeting.pop(ref)
                try:
                    host, pid, device = ray.get(ref, timeout=0)
                    worker.where = f"{host}, pid {pid}, {device}"
                    progress.say(f"vlchat: Ray worker {worker.number} ready on {clean(worker.where, keep_newlines=False)}")
                    if not any(w.done for w in pool.workers):  # the rate counts captioning, not Ray's start
                        progress.tally.started = time.perf_counter()
                except (RayActorError, WorkerCrashedError, GetTimeoutError) as error:
                    worker.dead = True  # died as it started: a replacement, unless workers keep dying
                    pool.deaths += 1
                    progress.say(f"vlchat: Ray worker {worker.number} stopped as it started ({type(error).__name__})")
                    if pool.deaths <= 2 * len(pool.workers):
                        new = pool.add()
                        greeting[new.actor.hello.remote()] = new
                except RayTaskError as error:
                    raise GenerationError(f"a Ray worker could not load the model: {_cause(error)}",
                                          "check the model on the workers, then run the same command again") from None
                continue
            task = running.pop(ref, None)
            if task is None:  # already handed on, its worker lost
                continue
            task.worker.in_flight -= 1
            try:
                results = ray.get(ref, timeout=0)
            except (RayActorError, WorkerCrashedError) as error:
                lost(task, type(error).__name__)
                continue
            except RayTaskError as error:
                raise GenerationError(f"a Ray worker failed: {_cause(error)}",
                                      "fix the model or the cluster, then run the same command again") from None
            task.worker.done += len(task.items)
            for item, result in zip(task.items, results):
                if result[0] == "caption":
                    _, text, tokens, seconds = result
                    record(item, Caption(text, tokens), seconds)
                else:
                    item.error = result[1]
                    record(item, model_failed=result[2])
        for ref, worker in list(greeting.items()):
            if worker.dead:
                greeting.pop(ref)


def _cause(error) -> str:
    cause = getattr(error, "cause", None) or error
    from vlchat.commands.caption_common import error_line

    return error_line(cause)
