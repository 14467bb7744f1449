"""How fast vlchat starts: `vlchat --help` and `--version`, the app's first frame with a picture
(before the model has loaded), and a 6000x4000 JPEG's preview.

Everything runs the real program as a person would. The CLI is timed as a subprocess, launch to
exit. The app runs in a real terminal (a tmux server of our own, 120x40, pictures in half-blocks,
which every terminal can show): the screen is read every few milliseconds from launch until the
picture pane shows the picture (at least 10 rows of half-block cells under the "1/1" index line).
The model starts loading at launch too, as it does for a person; the frame does not wait for it.
The big JPEG is also timed in-process: ``load_preview`` alone (JPEG draft decoding) against a full
decode of the same file, to show what draft mode saves.

    python bench/startup.py [--runs 5] [--json FILE]

Goals: --help and --version under 0.5 s (issue 2).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import report  # noqa: E402

CLI_GOAL_S = 0.5
HALF_BLOCKS = ("▀", "▄")


def vlchat_command() -> list[str]:
    """The installed `vlchat` script next to this Python, else the module: what a person runs."""
    script = Path(sys.executable).parent / "vlchat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vlchat.cli"]


def quiet_env(tmp: Path) -> dict[str, str]:
    """This checkout's code, no network, and config and sessions in a scratch folder, never the person's."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        HF_HUB_OFFLINE="1",
        VLCHAT_CONFIG_DIR=str(tmp / "config"),
        XDG_DATA_HOME=str(tmp / "data"),
        VLCHAT_SESSIONS_DIR=str(tmp / "sessions"),
    )
    env.pop("VLCHAT_CONFIG", None)
    return env


# -- the command line -------------------------------------------------------------------------
def cli_seconds(args: list[str], runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = quiet_env(Path(tmp))
        command = vlchat_command() + args
        subprocess.run(command, env=env, capture_output=True, check=True, timeout=60)  # warm the disk cache
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, timeout=60)
            samples.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"vlchat {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return {"median_s": statistics.median(samples), "runs": runs, "goal_s": CLI_GOAL_S}


# -- the app in a real terminal ---------------------------------------------------------------------
class Terminal:
    """A tmux server of our own, its socket in ``folder`` (so nothing is left behind in /tmp)."""

    def __init__(self, folder: Path, width: int = 120, height: int = 40):
        self.socket = str(folder / "tmux.sock")
        self.size = (width, height)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=20).stdout

    def start(self, command: str) -> None:
        width, height = self.size
        subprocess.run(
            ["tmux", "-S", self.socket, "-f", "/dev/null", "new-session", "-d", "-s", "bench",
             "-x", str(width), "-y", str(height), command],
            check=True, capture_output=True, timeout=20,
        )

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "bench")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=20)


def picture_drawn(screen: str) -> bool:
    rows = sum(1 for line in screen.splitlines() if any(block in line for block in HALF_BLOCKS))
    return "1/1" in screen and rows >= 10


def app_ready(screen: str) -> bool:
    return "Ask about" in screen


def first_frame_once(picture: Path, timeout: float = 60.0) -> dict:
    """Seconds from launching `vlchat PICTURE` to the first screen with the app, and with the picture."""
    with tempfile.TemporaryDirectory() as tmp:
        env = quiet_env(Path(tmp))
        keep = ("PYTHONPATH", "HF_HUB_OFFLINE", "VLCHAT_CONFIG_DIR", "XDG_DATA_HOME", "VLCHAT_SESSIONS_DIR", "PATH")
        exports = " ".join(f"{k}={shlex.quote(env[k])}" for k in keep if k in env)
        program = " ".join(shlex.quote(part) for part in vlchat_command())
        # COLUMNS/LINES would override the window size the app sees.
        command = (f"env -u COLUMNS -u LINES {exports} VLCHAT_IMAGE_PROTOCOL=halfblock "
                   f"{program} {shlex.quote(str(picture))}; sleep 60")
        terminal = Terminal(Path(tmp))
        started = time.perf_counter()
        terminal.start(command)
        try:
            app_s = None
            while time.perf_counter() - started < timeout:
                screen = terminal.screen()
                now = time.perf_counter() - started
                if app_s is None and app_ready(screen):
                    app_s = now
                if picture_drawn(screen):
                    return {"app_s": app_s if app_s is not None else now, "picture_s": now,
                            "model_still_loading": "loading" in screen}
                time.sleep(0.005)
            raise RuntimeError(f"the picture never appeared within {timeout:.0f} s; the screen was:\n{screen}")
        finally:
            terminal.close()


def first_frame(picture: Path, runs: int) -> dict:
    first_frame_once(picture)  # warm the disk cache and Python's bytecode cache
    samples = [first_frame_once(picture) for _ in range(runs)]
    return {
        "picture": picture.name,
        "runs": runs,
        "app_frame_s": statistics.median(s["app_s"] for s in samples),
        "picture_frame_s": statistics.median(s["picture_s"] for s in samples),
        "model_still_loading": all(s["model_still_loading"] for s in samples),
    }


# -- a 6000x4000 photo ----------------------------------------------------------------------------
def make_big_jpeg(path: Path, size: tuple[int, int] = (6000, 4000)) -> Path:
    """A photo-sized JPEG with detail everywhere (so it compresses like a photo, not like a flat image)."""
    from PIL import Image

    small = Image.effect_noise((size[0] // 8, size[1] // 8), 64).convert("RGB")
    gradient = Image.linear_gradient("L").resize(small.size).convert("RGB")
    mixed = Image.blend(small, gradient, 0.5).resize(size, Image.BILINEAR)
    grain = Image.effect_noise(size, 24).convert("RGB")
    Image.blend(mixed, grain, 0.25).save(path, quality=90)
    return path


def decode_times(path: Path, runs: int) -> dict:
    from PIL import Image

    from vlchat.core.images import load_preview
    from vlchat.ui.preview import PREVIEW_MAX_SIDE

    def timed(work) -> float:
        started = time.perf_counter()
        work()
        return time.perf_counter() - started

    def full() -> None:
        with Image.open(path) as image:
            image.convert("RGB")

    preview = [timed(lambda: load_preview(path, PREVIEW_MAX_SIDE)) for _ in range(runs)]
    whole = [timed(full) for _ in range(runs)]
    return {
        "load_preview_s": statistics.median(preview),
        "full_decode_s": statistics.median(whole),
        "preview_max_side": PREVIEW_MAX_SIDE,
    }


def measure(runs: int = 5, decode_runs: int = 5) -> dict:
    from vlchat.demo import SAMPLES_DIR

    result: dict = {
        "help": cli_seconds(["--help"], runs),
        "version": cli_seconds(["--version"], runs),
    }
    if shutil.which("tmux") is None:
        result["app"] = result["big_jpeg_app"] = {"skipped": "tmux is not installed"}
    else:
        result["app"] = first_frame(SAMPLES_DIR / "red-circle.png", runs)
    with tempfile.TemporaryDirectory() as tmp:
        big = make_big_jpeg(Path(tmp) / "photo-6000x4000.jpg")
        result["big_jpeg_decode"] = decode_times(big, decode_runs)
        if shutil.which("tmux") is not None:
            result["big_jpeg_app"] = first_frame(big, runs)
    return result


def print_table(result: dict) -> None:
    for name in ("help", "version"):
        row = result[name]
        verdict = "ok" if row["median_s"] < row["goal_s"] else "OVER GOAL"
        print(f"{'vlchat --' + name:<44}{row['median_s'] * 1000:>8.0f} ms   goal < {row['goal_s'] * 1000:.0f} ms  {verdict}")
    for name, title in (("app", "app: first frame with the picture"), ("big_jpeg_app", "app: 6000x4000 JPEG, first frame with it")):
        row = result[name]
        if "skipped" in row:
            print(f"{title:<44}{'skipped':>8}   ({row['skipped']})")
        else:
            print(f"{title:<44}{row['picture_frame_s'] * 1000:>8.0f} ms   (app drawn at {row['app_frame_s'] * 1000:.0f} ms; "
                  f"model {'still loading' if row['model_still_loading'] else 'loaded'})")
    row = result["big_jpeg_decode"]
    print(f"{'6000x4000 JPEG: load_preview (draft)':<44}{row['load_preview_s'] * 1000:>8.0f} ms   "
          f"(full decode {row['full_decode_s'] * 1000:.0f} ms, {row['full_decode_s'] / row['load_preview_s']:.1f}x slower)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.runs)
    return report(result, print_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
