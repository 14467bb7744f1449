"""vlchat beside `transformers serve` on the same model, pictures and conversation, in the same run.

    python bench/peers.py [--turns 1,5,10,20] [--runs 3] [--concurrency 4] [--pictures 16] [--json FILE]

`transformers serve` is the server a transformers user would start instead of vlchat (OpenAI-compatible;
pip install 'transformers[serving]'). It is started here on the demo model's folder, on the CPU, in
float32 like vlchat's engine, and stopped at the end; while one side runs the other is idle.

- Time to the first token at turns 1, 5, 10 and 20 of the conversation of bench/ttft.py (a picture
  in turn 1, one question a turn, 32-token greedy answers kept in the history): vlchat's engine with
  its key/value cache reused, against the server streaming /v1/chat/completions with the whole
  conversation each turn (the picture as a data URL), timed from the request to the first piece of
  text. The runs alternate, and the ratio server / vlchat of each pair is taken; the median is quoted.
- Captioning throughput at the same concurrency: `vlchat caption` (caption_all, batch size N)
  against N requests in flight at once to the server, the same pictures and prompt.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import caption  # noqa: E402
import ttft  # noqa: E402
from vlchat.demo import MODEL_DIR, SAMPLES_DIR  # noqa: E402
from vlchat.demo.shapes import QUESTION_TYPES, QUESTIONS  # noqa: E402
from common import report  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformers serve FOLDER --device cpu` in a process of its own, on a free port."""

    def __init__(self, folder: Path, threads: int | None = None):
        command = shutil.which("transformers")
        if command is None:
            raise RuntimeError("`transformers serve` is not installed: pip install 'transformers[serving]'")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(folder)
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [command, "serve", self.model, "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"transformers serve exited: {self.log.read()[-500:].decode(errors='replace')}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("transformers serve did not answer /health in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def server_turn(server: Server, messages: list[dict], max_tokens: int) -> tuple[float, str]:
    """Seconds to the first piece of text of a streamed answer, and the whole answer."""
    import httpx

    body = {"model": server.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first = None
    text = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            piece = (json.loads(line[5:])["choices"][0].get("delta") or {}).get("content") or ""
            if piece and first is None:
                first = time.perf_counter() - started
            text.append(piece)
    return (first if first is not None else time.perf_counter() - started), "".join(text).strip()


def server_conversation(server: Server, turns: list[int], max_tokens: int) -> dict[int, float]:
    """bench/ttft.py's conversation, through the server: seconds to the first token at ``turns``."""
    picture = SAMPLES_DIR / "three-yellow-stars.png"
    messages: list[dict] = []
    found = {}
    for turn in range(1, max(turns) + 1):
        kind = QUESTION_TYPES[turn % len(QUESTION_TYPES)]
        question = QUESTIONS[kind][turn % len(QUESTIONS[kind])]
        content = [{"type": "image_url", "image_url": {"url": data_url(picture)}}] if turn == 1 else []
        messages.append({"role": "user", "content": content + [{"type": "text", "text": question}]})
        seconds, answer = server_turn(server, messages, max_tokens)
        if turn in turns:
            found[turn] = seconds
        messages.append({"role": "assistant", "content": answer})
    return found


def server_captions(server: Server, paths: list[Path], concurrency: int, max_tokens: int) -> float:
    """Seconds for the server to caption every picture with ``concurrency`` requests in flight."""
    import httpx

    def one(path: Path) -> str:
        body = {"model": server.model, "max_tokens": max_tokens, "temperature": 0, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(path)}},
                                         {"type": "text", "text": caption.PROMPT}]}]}
        response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - started


def measure(device: str = "cpu", turns: tuple[int, ...] = (1, 5, 10, 20), runs: int = 3, concurrency: int = 4,
            pictures: int = 16, threads: int | None = None) -> dict:
    from vlchat.engines.transformers import TransformersEngine

    if device != "cpu":
        return {"skipped": "the server is started on the CPU only"}
    engine = TransformersEngine("demo", quant="none", device="cpu", kv_cache_reuse=True)
    engine.load()
    server = Server(MODEL_DIR, threads)
    try:
        server.wait()
        ttft.one_conversation(engine, [1])  # warm up both
        server_conversation(server, [1], ttft.PARAMS.max_new_tokens)
        ours, theirs = [], []
        for _ in range(runs):
            ours.append(ttft.one_conversation(engine, list(turns)))
            theirs.append(server_conversation(server, list(turns), ttft.PARAMS.max_new_tokens))
        first_token = {}
        for t in turns:
            first_token[str(t)] = {
                "vlchat_ms": round(statistics.median(r[t] for r in ours) * 1000, 2),
                "server_ms": round(statistics.median(r[t] for r in theirs) * 1000, 2),
                "server_over_vlchat": round(statistics.median(b[t] / a[t] for a, b in zip(ours, theirs)), 3),
            }
        with tempfile.TemporaryDirectory() as tmp:
            paths = caption.make_pictures(Path(tmp), pictures)
            caption.vlchat_run(engine, Path(tmp), concurrency, ttft.PARAMS.max_new_tokens)  # warm up
            pairs = []
            for _ in range(runs):
                mine, _captions = caption.vlchat_run(engine, Path(tmp), concurrency, ttft.PARAMS.max_new_tokens)
                other = server_captions(server, paths, concurrency, ttft.PARAMS.max_new_tokens)
                pairs.append((pictures / mine, pictures / other))
        captions = {
            "concurrency": concurrency, "pictures": pictures,
            "vlchat_pictures_per_s": round(statistics.median(a for a, _ in pairs), 2),
            "server_pictures_per_s": round(statistics.median(b for _, b in pairs), 2),
            "vlchat_over_server": round(statistics.median(a / b for a, b in pairs), 3),
        }
    finally:
        server.stop()
        engine.unload()
    return {"peer": "transformers serve", "runs": runs, "first_token": first_token, "captions": captions}


def print_table(result: dict) -> None:
    if "skipped" in result:
        print(result["skipped"])
        return
    print(f"{'time to first token':<24}{'vlchat (ms)':>14}{'server (ms)':>14}{'server / vlchat':>18}")
    for turn, row in result["first_token"].items():
        print(f"{'turn ' + turn:<24}{row['vlchat_ms']:>14.1f}{row['server_ms']:>14.1f}{row['server_over_vlchat']:>17.2f}x")
    c = result["captions"]
    print(f"captions, {c['concurrency']} at once: vlchat {c['vlchat_pictures_per_s']} pictures/s, "
          f"server {c['server_pictures_per_s']} pictures/s, vlchat / server {c['vlchat_over_server']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", default="1,5,10,20")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pictures", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch threads, here and in the server")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = measure("cpu", tuple(int(t) for t in args.turns.split(",")), args.runs, args.concurrency, args.pictures,
                     args.threads)
    return report(result, print_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
