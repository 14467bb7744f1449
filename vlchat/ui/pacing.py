"""Frame pacing for a streamed answer: how often the transcript is redrawn while the model writes.

FRAME_S is the most often (30 a second). A frame costs a few milliseconds of Python on the UI
thread (the same at any length of answer: see transcript.AnswerView), and that can be taken from
the model in two cases. A model on a thread of this process (a test's, say) waits for it: the
interpreter lock is one for all threads. A model in its own process (as `vlchat` runs it) that
keeps every core busy (torch's threads spin while one of them is held up) loses a core to it,
and so does any model when other programs keep the rest of the cores busy (a fully loaded CPU,
read from /proc/stat where there is one). Then frames are spaced so that the UI thread uses at most UI_SHARE of the time (measured: all its
work since the last frame, the screen's redraw included), and still come at least every
FRAME_MAX_S, so the screen is never more than about a quarter of a second behind the model.
Otherwise (a GPU model, a CPU model limited to fewer threads than there are cores, a server
writing the answer) the UI thread has a core of its own and may use UI_SHARE_IDLE of it: 30
frames a second, as a rule.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable

from vlchat.engines.base import usable_cores

FRAME_S = 1 / 30
UI_SHARE = 0.01
UI_SHARE_IDLE = 0.25
BUSY_CORES = 0.75  # a model in this process that uses this much CPU (in cores) is at work
SPARE_CORES = 0.75  # a model in its own process that leaves less than this of the cores free holds them all
FRAME_MAX_S = 0.25
MACHINE_S = 0.25  # how often the machine's load is looked at


def machine_busy_seconds() -> float | None:
    """CPU seconds all the cores have spent on anything but idling since boot (Linux; else None)."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(fields) < 5:
        return None
    values = [int(f) for f in fields[:8]]
    return (sum(values) - values[3] - values[4]) / ticks  # all but idle and waiting for the disk


class FramePacer:
    """Wakes at most twice a frame and asks for a paint through ``paint`` (called on the event loop,
    never inside the timer callback itself: ``schedule`` puts it in the app's message loop).

    ``engine`` is read each time (the model can be switched mid-conversation); ``on_cpu`` says
    whether the model computes on the CPU (kept for callers; the rule is the same either way).
    """

    def __init__(self, engine: Callable[[], Any], on_cpu: Callable[[], bool], schedule: Callable[[], None]) -> None:
        self._engine = engine
        self._on_cpu = on_cpu
        self._schedule = schedule
        self._timer: asyncio.TimerHandle | None = None
        self._painted_at: tuple[float, float, float | None] = (0.0, 0.0, None)
        self.running = False
        # The machine's CPU time (all cores) at the last look, and whether it was fully loaded.
        self._machine: tuple[float, float, float] | None = None
        self._machine_full = False

    def start(self) -> None:
        self.running = True
        self._painted_at = self._clocks()
        self._after(FRAME_S, True)

    def stop(self) -> None:
        self.running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def painted(self) -> None:
        """A paint is over: the next check comes a frame later (unless one is already set)."""
        if self.running and self._timer is None:
            self._after(FRAME_S, True)

    def _after(self, delay: float, check: bool) -> None:
        # A bare event-loop timer: a Textual Timer costs a task per shot.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, delay), self._wake, check)

    def _wake(self, check: bool) -> None:
        """A frame comes once the UI thread has used at most UI_SHARE of the time since the last
        one began (all its work counted, the screen's redraw included), and at least every
        FRAME_MAX_S: FRAME_S after a frame a check measures what it cost and sets the next one."""
        self._timer = None
        if not self.running:
            return
        if check:
            began, ui_began, cpu_began = self._painted_at
            wall = time.perf_counter() - began
            used = time.thread_time() - ui_began
            cpu = self._engine().cpu_seconds()
            busy = self._full_machine()
            if cpu is not None and cpu_began is not None and not busy:
                busy = (cpu - cpu_began) / max(wall, 1e-6) >= self._busy_cores()
            share = UI_SHARE if busy else UI_SHARE_IDLE
            gap = min(FRAME_MAX_S, used / share)
            if gap > wall + 0.001:
                self._after(gap - wall, False)
                return
        self._painted_at = self._clocks()
        self._schedule()

    def _clocks(self) -> tuple[float, float, float | None]:
        """Wall clock, the UI thread's CPU time and the model's (the engine's cpu_seconds: its own
        process, or this whole one, the UI thread included, since while the model holds the
        interpreter lock, time the UI thread spends on a frame is time the model's thread waits)."""
        return time.perf_counter(), time.thread_time(), self._engine().cpu_seconds()

    def _full_machine(self) -> bool:
        """Whether everything but this thread keeps all the cores but a spare share busy (looked at
        over MACHINE_S at least: the kernel counts in ticks of 10 ms)."""
        now, ui = time.perf_counter(), time.thread_time()
        if self._machine is not None and now - self._machine[0] < MACHINE_S:
            return self._machine_full
        busy = machine_busy_seconds()
        if busy is None:
            return False
        if self._machine is not None:
            began, ui_began, busy_began = self._machine
            others = (busy - busy_began - (ui - ui_began)) / (now - began)
            self._machine_full = others >= usable_cores() - SPARE_CORES
        self._machine = (now, ui, busy)
        return self._machine_full

    def _busy_cores(self) -> float:
        """How much CPU (in cores) the model must use for frames to be economical: in this process,
        any work (it shares the interpreter lock); in its own, all the cores but one's spare
        share, on the CPU or a GPU alike (a model limited to fewer threads than there are cores
        leaves the UI a core of its own)."""
        if self._engine().separate_process:
            return max(BUSY_CORES, usable_cores() - SPARE_CORES)
        return BUSY_CORES
