"""Every vlchat benchmark, one table of figures and ratios, also written as JSON.

    python bench/run.py                       # the whole table on this machine's CPU
    python bench/run.py --quick               # fewer runs (about half the time)
    python bench/run.py --device cuda         # the model benchmarks on the GPU
    python bench/run.py --json results.json   # default: bench/results/<device>-latest.json
    python bench/run.py --only ttft,stream    # some of: ttft, families, peers, stream, startup, sessions, memory, caption, tui

The rows come from the benchmark modules beside this file (each also runs on its own, with more
options): ttft.py (time to first token as a conversation grows, with and without KV-cache reuse),
families.py (the same per native family, on tiny models of the published files), peers.py
(vlchat beside `transformers serve` on the same model and conversation),
stream_overhead.py (streaming against plain generate), startup.py (`vlchat --help`/`--version`,
the app's first frame with a picture, a 6000x4000 JPEG's preview), sessions.py (save and load at
500 turns), memory.py (weights at 4-bit, computed from each model's config) and caption.py (`vlchat
caption` against a plain generate loop). Every figure is the median
of several runs. The load average is recorded before and after each benchmark, since a busy
machine slows everything down.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import caption  # noqa: E402
import families  # noqa: E402
import memory  # noqa: E402
import peers  # noqa: E402
import sessions  # noqa: E402
import startup  # noqa: E402
import stream_overhead  # noqa: E402
import ttft  # noqa: E402
import tui_stream  # noqa: E402

NAMES = ("ttft", "families", "peers", "stream", "startup", "sessions", "memory", "caption", "tui")


def run_ttft(device: str, quick: bool) -> dict:
    return ttft.measure(device, (1, 5, 10, 20), runs=2 if quick else 5)


def run_families(device: str, quick: bool) -> dict:
    if device != "cpu":
        return {"skipped": "the tiny family models run on the CPU only"}
    return families.measure((1, 20), runs=1 if quick else 3)


def run_peers(device: str, quick: bool) -> dict:
    import torch

    threads = torch.get_num_threads()
    try:
        return peers.measure(device, (1, 5, 10, 20), runs=1 if quick else 5, concurrency=4,
                             pictures=8 if quick else 32, threads=int(os.environ.get("OMP_NUM_THREADS", 0)) or None)
    finally:
        torch.set_num_threads(threads)


def run_stream(device: str, quick: bool) -> dict:
    return stream_overhead.measure(device, tokens=256, runs=7 if quick else 25)


def run_startup(_device: str, quick: bool) -> dict:
    return startup.measure(runs=3 if quick else 5)


def run_sessions(_device: str, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return sessions.measure(Path(tmp), turns=500, pictures=20, runs=5 if quick else 15)


def run_memory(device: str, _quick: bool) -> dict:
    return memory.measure(device)


def run_caption(device: str, quick: bool) -> dict:
    import torch

    threads = torch.get_num_threads()
    try:  # the caption benchmark sets torch's threads as the caption command does
        return caption.measure("demo", device, 32 if quick else 64, 2 if quick else 3, [1, 4, 8, 16], 32)
    finally:
        torch.set_num_threads(threads)


def run_tui(device: str, quick: bool) -> dict:
    if device != "cpu":
        return {"skipped": "the app benchmark runs the demo model on the CPU only"}
    result = tui_stream.measure(tokens=1000 if quick else 2000, runs=2 if quick else 41, window_answers=1 if quick else 6)
    # For comparison: the model on a thread of the app's own process, as before it had its own.
    result["in_process"] = tui_stream.measure(tokens=1000 if quick else 2000, runs=2 if quick else 3, in_process=True,
                                              window_tokens=None)
    return result


RUNNERS = {"families": run_families, "peers": run_peers, "tui": run_tui, "caption": run_caption, "ttft": run_ttft, "stream": run_stream, "startup": run_startup, "sessions": run_sessions, "memory": run_memory}


def table_rows(results: dict) -> list[dict]:
    """One row per figure: what, value, unit, goal, and whether the goal is met (None: no goal)."""
    rows: list[dict] = []

    def row(section, what, value, unit, goal=None, ok=None, note=""):
        rows.append({"section": section, "what": what, "value": value, "unit": unit, "goal": goal, "ok": ok, "note": note})

    def failed(section, name):
        if "error" in results.get(name, {}):
            row(section, "failed", None, "", note=results[name]["error"])
            return True
        return name not in results

    section = "1. time to first token, demo model, 32-token answers"
    if not failed(section, "ttft"):
        r = results["ttft"]
        for mode in ("with reuse", "without reuse"):
            turns = r[mode]["first_token_ms"]
            for turn, ms in turns.items():
                prompt = r[mode].get("prompt_tokens", {}).get(turn)
                reused = r[mode].get("reused_tokens", {}).get(turn)
                note = "" if prompt is None else f"prompt {prompt} tokens" + (f", {reused} reused" if reused else "")
                row(section, f"turn {turn:>2}, {mode}", ms, "ms", note=note)
        for mode in ("with reuse", "without reuse"):
            key = next(k for k in r[mode] if k.endswith("_over_turn1"))
            ratio = r[mode][key]
            if mode == "with reuse":
                row(section, f"turn 20 / turn 1, {mode}", ratio, "x", "<= 1.5", ratio <= 1.5)
            else:
                row(section, f"turn 20 / turn 1, {mode}", ratio, "x", note="how it grows without reuse")

    section = "1b. time to first token per family, tiny models on the published files, 6-token answers"
    if not failed(section, "families") and "skipped" not in results["families"]:
        r = results["families"]
        first, last = (str(t) for t in (r["turns"][0], r["turns"][-1]))
        for family, modes in r["families"].items():
            for mode in ("with reuse", "without reuse"):
                m = modes[mode]
                note = (f"turn {first} {m['first_token_ms'][first]:.1f} ms, turn {last} {m['first_token_ms'][last]:.1f} ms; "
                        f"turn {last} prompt {m['prompt_tokens'][last]} tokens, {m['reused_tokens'][last]} reused")
                if mode == "with reuse":
                    row(section, f"{family}: turn {last} / turn {first}, {mode}", m["last_over_first"], "x", "<= 1.5",
                        m["last_over_first"] <= 1.5, note)
                else:
                    row(section, f"{family}: turn {last} / turn {first}, {mode}", m["last_over_first"], "x", note=note)

    section = "1c. vlchat beside `transformers serve`, demo model, same pictures and conversation"
    if not failed(section, "peers") and "skipped" not in results["peers"]:
        r = results["peers"]
        for turn, m in r["first_token"].items():
            row(section, f"first token, turn {turn:>2}: server / vlchat", m["server_over_vlchat"], "x",
                note=f"vlchat (reuse) {m['vlchat_ms']:.1f} ms, server {m['server_ms']:.1f} ms; median of {r['runs']} paired runs")
        c = r["captions"]
        row(section, f"captions, {c['concurrency']} at once: vlchat / server", c["vlchat_over_server"], "x",
            note=f"vlchat caption {c['vlchat_pictures_per_s']} pictures/s (batch {c['concurrency']}), server "
            f"{c['server_pictures_per_s']} pictures/s ({c['concurrency']} requests in flight), {c['pictures']} pictures")

    section = "2. streaming overhead, demo model, 256 tokens"
    if not failed(section, "stream"):
        r = results["stream"]
        row(section, "plain model.generate", r["plain_generate_tokens_per_s"], "tok/s")
        row(section, "vlchat streaming (as `vlchat ask`)", r["vlchat_stream_tokens_per_s"], "tok/s")
        row(section, "streaming / plain (median of paired runs)", r["ratio"], "x", f">= {r['goal']}", r["ratio"] >= r["goal"],
            f"ratio of medians {r['ratio_of_medians']:.3f}, of best runs {r['ratio_of_best']:.3f}, "
            f"per CPU-second {r['ratio_cpu_time']:.3f}" + ("" if r["same_text"] else "; TEXT DIFFERS"))

    section = "3-5. starting up"
    if not failed(section, "startup"):
        r = results["startup"]
        for name in ("help", "version"):
            ms = r[name]["median_s"] * 1000
            row(section, f"vlchat --{name}", round(ms), "ms", "< 500 ms", ms < 500)
        for name, what in (("app", "app: first frame with the picture"),
                           ("big_jpeg_app", "app: first frame with a 6000x4000 JPEG")):
            if "skipped" in r[name]:
                row(section, what, None, "", note=r[name]["skipped"])
            else:
                loading = "; the model still loading" if r[name]["model_still_loading"] else ""
                row(section, what, round(r[name]["picture_frame_s"] * 1000), "ms",
                    note=f"app itself drawn at {r[name]['app_frame_s'] * 1000:.0f} ms{loading}")
        d = r["big_jpeg_decode"]
        row(section, "6000x4000 JPEG: preview decode (draft)", round(d["load_preview_s"] * 1000), "ms",
            note=f"full decode {d['full_decode_s'] * 1000:.0f} ms ({d['full_decode_s'] / d['load_preview_s']:.1f}x)")

    section = "6. sessions, 500 turns, 20 pictures"
    if not failed(section, "sessions"):
        r = results["sessions"]
        row(section, "autosave", round(r["save_ms"], 1), "ms", f"< {r['save_goal_ms']:.0f} ms", r["save_ms"] < r["save_goal_ms"],
            f"session.json {r['session_json_bytes'] / 1024:.0f} KiB")
        row(section, "load", round(r["load_ms"], 1), "ms", f"< {r['load_goal_ms']:.0f} ms", r["load_ms"] < r["load_goal_ms"])

    section = "7. weights at 4-bit nf4, computed from each model's config.json (bench/memory.py)"
    if not failed(section, "memory"):
        for model, m in results["memory"]["models"].items():
            if "skipped" in m:
                row(section, model, None, "", note=m["skipped"])
                continue
            row(section, model, math.ceil(m["bytes_4bit"] / 1e8) / 10, "GB",  # rounded up, as in the registry
                note=f"KV cache {m['kv_cache_bytes_per_1000_tokens'] / 1e6:.0f} MB per 1,000 tokens; {m['config']}")
    section = "8. vlchat caption, demo model, pictures per second"
    if not failed(section, "caption"):
        r = results["caption"]
        row(section, f"plain generate loop ({r['loop_reference']})",
            r["loop_pictures_per_s"][r["loop_reference"]], "pictures/s")
        for batch in r["vlchat"]:
            row(section, f"vlchat caption, batch size {batch['batch_size']}", batch["pictures_per_s"], "pictures/s",
                note=f"{batch['vs_loop']:.2f}x the loop; same captions {batch['same_captions_as_loop']}")
        best = r["best"]
        row(section, f"best (batch size {best['batch_size']}) / loop", best["vs_loop"], "x", ">= 3x", best["vs_loop"] >= 3)
    section = "9. the app while a long answer streams (demo model, headless app)"
    if not failed(section, "tui") and "skipped" not in results["tui"]:
        r = results["tui"]
        row(section, "plain generate, conversation to text", round(r["tokens"] / r["plain_generate_s"]), "tok/s")
        row(section, "through the app", round(r["tokens"] / r["app_s"]), "tok/s",
            note=f"{r['frames_per_s']:.1f} frames/s")
        goal = r.get("goal", 1.05)
        if "ratio_ci95" in r:
            low, high = r["ratio_ci95"]
            q = r["ratio_quartiles"]
            row(section, "app / plain, total time", round(r["ratio"], 3), "x", f"<= {goal}", r["ratio"] <= goal,
                f"model in its own process (as vlchat runs it), plain generate in a clean one; median of {r['runs']} "
                f"paired runs, processes started again every {r['renew']}; 95% interval of the median {low:.3f} to "
                f"{high:.3f}, quartiles {q[0]:.3f} to {q[1]:.3f}; UI thread CPU {100 * r.get('ui_cpu_share', 0):.1f} % of the time")
            if r.get("drawing") is not None:
                dq = r["drawing_quartiles"]
                row(section, "  of which drawing the answer", round(r["drawing"], 4), "x",
                    note=f"the model's rate in {r['drawing_windows']} windows of {r['window_s']} s with frames drawing "
                    f"the answer against the windows beside them without (median; quartiles {dq[0]:.3f} to {dq[1]:.3f})")
            row(section, "  of which the app around the model", round(r["around_model_ms"], 1), "ms",
                note=f"an answer: Enter to the model starting, its last token to the answer shown whole "
                f"({r['around_model_share'] * 100:.2f} % of plain generate)")
            if r.get("faults_model") is not None:
                row(section, "  page faults an answer, model's process", round(r["faults_model"]), "",
                    note=f"plain generate's process {r['faults_plain']:.0f} (medians over the blocks of pairs; "
                    "freeing and taking the KV cache's blocks again at every token, a few µs each)")
        elif "app_share" in r:  # a results file of the first issue-17 bench (two shares)
            row(section, "app / plain, total time", round(r["ratio"], 3), "x", f"<= {goal}", r["ratio"] <= goal,
                f"the app / its model's stream {r['app_share']:.3f} times the stream / plain generate {r['stream_share']:.3f}")
        else:  # a results file from before issue 17
            q = r.get("ratio_quartiles") or (r["ratio"], r["ratio"])
            row(section, "app / plain, total time", round(r["ratio"], 3), "x", f"<= {goal}", r["ratio"] <= goal,
                f"model in its own process (as vlchat runs it); median of {r['runs']} paired runs, quartiles "
                f"{q[0]:.3f} to {q[1]:.3f}; UI thread CPU {100 * r.get('ui_cpu_share', 0):.1f} % of the time")
        other = r.get("in_process")
        if other:
            row(section, "app / plain, model on a thread of the app", round(other["ratio"], 3), "x",
                note=f"for comparison, not how vlchat runs it; median of {other['runs']} paired runs, "
                f"{other['frames_per_s']:.1f} frames/s")
        if r.get("lag_max_s") is not None:
            fps = r["frames_per_s_streaming"]
            threads = r.get("torch_threads")
            free = threads is not None and threads < r.get("cores", 0)
            row(section, "frames per second while it streams", round(fps, 1), "frames/s",
                ">= 20" if free else None, fps >= 20 if free else None,
                f"torch {threads} thread(s) on {r.get('cores')} cores (the goal holds where the model "
                "leaves a core free and nothing else takes it)")
            row(section, "screen behind the model, largest", round(r["lag_max_s"] * 1000), "ms", "<= 500 ms",
                r["lag_max_s"] <= 0.5, f"95th percentile {r['lag_p95_s'] * 1000:.0f} ms; from a token's arrival in the app to the frame that shows it")
        if r["key_delay_max_ms"] is not None:
            row(section, "key press to its effect, largest", round(r["key_delay_max_ms"], 1), "ms", "< 50 ms",
                r["key_delay_max_ms"] < 50, f"median {r['key_delay_median_ms']:.1f} ms over {r['key_presses']} presses")
    return rows


def format_value(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3f}x" if value < 10 else f"{value:.1f}x"
    if isinstance(value, float):
        return f"{value:,.1f} {unit}"
    return f"{value:,} {unit}"


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    section = None
    for r in rows:
        if r["section"] != section:
            section = r["section"]
            print(f"\n{section}")
        verdict = "" if r["ok"] is None else ("ok" if r["ok"] else "MISSED")
        goal = f"goal {r['goal']}" if r["goal"] else ""
        print(f"  {r['what']:<52}{format_value(r['value'], r['unit']):>17}  {goal:<14}{verdict:<7}{r['note']}")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| figure | median | goal | notes |", "|---|---:|---|---|"]
    section = None
    for r in rows:
        if r["section"] != section:
            section = r["section"]
            lines.append(f"| **{section}** | | | |")
        goal = "" if not r["goal"] else f"{r['goal']} {'✓' if r['ok'] else '✗ missed'}"
        lines.append(f"| {r['what'].replace('|', '/')} | {format_value(r['value'], r['unit'])} | {goal} | {r['note']} |")
    return "\n".join(lines)


def machine(device: str) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "device": device,
    }
    try:
        import torch
        import transformers

        info["torch"] = torch.__version__
        info["transformers"] = transformers.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the model benchmarks run")
    parser.add_argument("--quick", action="store_true", help="fewer runs of each")
    parser.add_argument("--json", type=Path, help="write the results here (default bench/results/<device>-latest.json)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(NAMES)}")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice, one per core)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for the README)")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("bench: --device cuda, but torch sees no CUDA GPU here; run without --device for the CPU table",
                  file=sys.stderr)
            return 2
    if args.threads:
        import torch

        # On a machine shared with other work, fewer threads than cores avoids threads that wait
        # for a core someone else holds; the subprocesses (the app) get the same limit.
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    names = NAMES if not args.only else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        print(f"bench: unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    results: dict = {}
    timing: dict = {}
    for name in names:
        load_before = os.getloadavg()[0]
        print(f"[bench] {name} ... (load {load_before:.2f})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = RUNNERS[name](args.device, args.quick)
        except Exception as error:  # one broken benchmark must not hide the others
            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
        timing[name] = {"seconds": round(time.perf_counter() - t0, 1), "load_before": round(load_before, 2),
                        "load_after": round(os.getloadavg()[0], 2)}
        print(f"[bench] {name} done in {timing[name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - started

    info = machine(args.device)
    info["total_seconds"] = round(total, 1)
    info["quick"] = args.quick
    rows = table_rows(results)
    loads = ", ".join(f"{n} {t['load_before']:.1f}->{t['load_after']:.1f}" for n, t in timing.items())
    header = (f"vlchat benchmarks on {info['device']} ({info['cpus']} CPUs, torch {info.get('torch', '?')}, "
              f"commit {info.get('commit') or '?'}), {info['date']}, {total:.0f} s"
              f"{', quick' if args.quick else ''}\nload average (1 min) before->after: {loads}")
    print_table(rows, header)
    if args.markdown:
        print()
        print(markdown_table(rows))

    path = args.json or HERE / "results" / f"{args.device.split(':')[0]}-latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "timing": timing, "table": rows, "results": results}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwritten to {path}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
