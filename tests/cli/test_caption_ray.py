"""`vlchat caption --ray` as a user runs it: a Ray vlchat starts itself, and a cluster started with
`ray start --head` on 127.0.0.1 and joined by address, each with two CPU workers and the demo model.

The captions must be the ones a run without Ray writes (greedy decoding); a run stopped half-way
(Ctrl-C, the driver killed, one worker killed) and run again leaves exactly one record a picture.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import vlchat_command
from vlchat.demo.shapes import PLURALS, Scene, draw_scene

ray = pytest.importorskip("ray")  # the test extra installs it; `pip install 'vlchat[ray]'` for users

pytestmark = pytest.mark.timeout(120)

FAST = ("--max-new-tokens", "16", "--device", "cpu", "--quant", "none")
COLOURS = ["red", "green", "yellow", "purple", "blue", "white"]


def draw40(folder: Path) -> list[str]:
    rng = random.Random(18)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(40):
        colour, background = rng.sample(COLOURS, 2)
        scene = Scene(rng.choice(list(PLURALS)), colour, background, rng.randint(1, 3))
        path = folder / f"{i:03d}.png"
        draw_scene(scene, size=192, rng=random.Random(i)).save(path)
        paths.append(str(path))
    return paths


def records(path: Path) -> list[dict]:
    """The whole lines of the file (a driver killed hard may leave half a line at the end)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n"):
            rows.append(json.loads(line))
    return rows


def captions(path: Path) -> dict[str, str]:
    return {row["path"]: row["caption"] for row in records(path)}


def env(tmp_path) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """40 pictures and their captions from a run without Ray."""
    folder = tmp_path_factory.mktemp("ray-pics")
    paths = draw40(folder / "pics")
    out = folder / "plain.jsonl"
    result = subprocess.run([*vlchat_command(), "caption", str(folder / "pics"), "-o", str(out), *FAST],
                            capture_output=True, text=True, timeout=120, env=env(folder))
    assert result.returncode == 0, result.stderr
    plain = captions(out)
    assert sorted(plain) == sorted(paths) and all(plain.values())
    return folder / "pics", plain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster as people start one (`ray start --head`), two CPUs, on 127.0.0.1 only."""
    ray_cli = Path(sys.executable).parent / "ray"
    port = free_port()
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # Ray's socket paths must stay short
    run_env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    try:
        started = subprocess.run(
            [str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp],
            capture_output=True, text=True, timeout=90, env=run_env,
        )
        assert started.returncode == 0, started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=60, env=run_env)
        shutil.rmtree(temp, ignore_errors=True)


def start(args, tmp_path, name) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / f"{name}.err"
    process = subprocess.Popen([*vlchat_command(), "caption", *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=open(err, "w"), env=env(tmp_path))
    return process, err


def wait_for(what, process, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        if process.poll() is not None:
            return what()
        time.sleep(0.01)
    raise AssertionError("waited too long")


def test_a_ray_vlchat_starts_gives_the_captions_of_a_run_without_ray(pictures, tmp_path):
    folder, plain = pictures
    out = tmp_path / "ray.jsonl"
    result = subprocess.run([*vlchat_command(), "caption", str(folder), "-o", str(out), "--ray", "--workers", "2", *FAST],
                            capture_output=True, text=True, timeout=110, env=env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr
    assert "40 captioned" in result.stderr and "2 Ray workers of 1 CPU on a local Ray" in result.stderr
    assert len(re.findall(r"Ray worker \d ready on", result.stderr)) == 2
    assert captions(out) == plain
    assert len(records(out)) == 40


@pytest.mark.timeout(240)
def test_joined_cluster_stopped_three_ways_and_run_again_has_one_record_a_picture(pictures, cluster, tmp_path):
    folder, plain = pictures
    out = tmp_path / "joined.jsonl"
    args = [folder, "-o", out, "--ray", cluster, "--workers", "2", "--batch-size", "1", *FAST]

    # more workers than the cluster can place: one line, before any picture is handed out
    too_many = subprocess.run([*vlchat_command(), "caption", str(folder), "-o", str(out), "--ray", cluster, "--workers", "3", *FAST],
                              capture_output=True, text=True, timeout=60, env=env(tmp_path))
    assert too_many.returncode != 0 and "3 CPU workers need 3 CPUs, and the Ray cluster has 2" in too_many.stderr
    assert "Traceback" not in too_many.stderr and records(out) == []

    # Ctrl-C once the first records are in: the cluster's work stops, the file is whole, exit 130
    process, err = start(args, tmp_path, "sigint")
    wait_for(lambda: len(records(out)) >= 2, process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130, err.read_text()
    stopped = err.read_text()
    assert "stopped" in stopped and "run the same command again" in stopped and "Traceback" not in stopped
    first = records(out)
    assert out.read_text().endswith("\n") and 2 <= len(first) < 40

    # the driver killed outright: at most half a line is left, and the next run drops it
    process, err = start(args, tmp_path, "sigkill")
    wait_for(lambda: len(records(out)) >= len(first) + 2, process)
    process.kill()
    process.wait(timeout=30)
    second = records(out)
    assert len(second) < 40

    # one worker killed while it has pictures: they are captioned by the other, nothing twice
    process, err = start(args, tmp_path, "worker")
    pid = wait_for(lambda: re.search(r"Ray worker 1 ready on .*, pid (\d+)", err.read_text()), process)
    assert pid, err.read_text()
    os.kill(int(pid.group(1)), signal.SIGKILL)
    assert process.wait(timeout=90) == 0, err.read_text()
    said = err.read_text()
    assert "Traceback" not in said
    rows = records(out)
    assert sorted(row["path"] for row in rows) == sorted(plain), "each picture exactly once"
    assert captions(out) == plain
    assert f"{len(second)} already done" in said
    if len(second) < 38:  # it had pictures in hand when it died (it always does unless the run was all but over)
        assert "Ray worker 1" in said and "go to another" in said, said


def test_without_ray_the_option_says_how_to_get_it(tmp_path, run_vlchat):
    hide = tmp_path / "no-ray" / "ray"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    draw40(tmp_path / "pics")
    result = run_vlchat("caption", tmp_path / "pics", "-o", tmp_path / "out.jsonl", "--ray", *FAST,
                        env={"PYTHONPATH": str(tmp_path / "no-ray")})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "--ray needs Ray, which is not installed" in last and "pip install 'vlchat[ray]'" in last, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists() or records(tmp_path / "out.jsonl") == []
