"""Pictures per second of `vlchat caption` at batch sizes 1, 4, 8 and 16, against a plain loop.

    python bench/caption.py [--model demo] [--device cpu] [--pictures 64] [--runs 3]
                            [--batch-sizes 1,4,8,16] [--max-new-tokens 32] [--json FILE]

The plain loop is what people write around ``generate``: for each picture, open it, build the
chat-template inputs with the processor, ``model.generate``, decode. vlchat's run is the real
command's code (``caption_all``: pictures read and hashed ahead on a thread, one processor call
per batch, left-padded batched generation, a JSON line written per picture) on the same loaded
model and the same pictures. Each figure is the median of ``--runs`` runs after one warm-up.

The loop is timed twice, with torch's default number of threads and with the number the caption
command uses on a CPU (one core left to the reader thread), and the faster of the two is the
reference every ratio is taken against. The captions of every batch size are compared with the
loop's: under greedy decoding they must be the same.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlchat.core.captions import JsonLinesStore  # noqa: E402
from vlchat.core.conversation import GenerationParams  # noqa: E402
from vlchat.core.images import load_image  # noqa: E402
from vlchat.core.pictures import find_pictures  # noqa: E402
from vlchat.demo.shapes import draw_scene, random_scene  # noqa: E402
from common import write_json  # noqa: E402

PROMPT = "Describe the picture."


def make_pictures(folder: Path, n: int) -> list[Path]:
    rng = random.Random(8)
    paths = []
    for i in range(n):
        scene = random_scene(rng)
        path = folder / f"{i:04d}-{scene.colour}-{scene.shape}.png"
        draw_scene(scene, size=256, rng=random.Random(i)).save(path)
        paths.append(path)
    return paths


def plain_loop(engine, paths: list[Path], max_new_tokens: int) -> tuple[float, list[str]]:
    """One picture at a time, as a script around generate would do it."""
    import torch

    model, processor = engine.model, engine.processor
    captions = []
    started = time.perf_counter()
    for path in paths:
        image = load_image(path).image
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}]}]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(engine.dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        captions.append(processor.decode(out[0, inputs["input_ids"].shape[-1]:], skip_special_tokens=True).strip())
    return time.perf_counter() - started, captions


def vlchat_run(engine, folder: Path, batch_size: int, max_new_tokens: int) -> tuple[float, list[str]]:
    import argparse as _argparse
    import io

    from vlchat.commands.caption import caption_all
    from vlchat.config import Settings

    settings = Settings(model=engine.name, max_new_tokens=max_new_tokens)
    args = _argparse.Namespace(prompt=PROMPT, preset=None, recursive=False, batch_size=batch_size, retry_errors=False)
    found = list(find_pictures([str(folder)]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "captions.jsonl"
        store = JsonLinesStore(out)
        started = time.perf_counter()
        try:
            code = caption_all(engine, found, store, args=args, settings=settings,
                               params=GenerationParams(max_new_tokens=max_new_tokens),
                               batch_size=batch_size, concurrency=1, limit=None, err=io.StringIO())
        finally:
            store.close()
        elapsed = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"vlchat caption exited {code}")
        records = {r["path"]: r["caption"] for r in map(json.loads, out.read_text().splitlines())}
    return elapsed, [records[f.path] for f in found]


def measure(model: str, device: str, n: int, runs: int, batch_sizes: list[int], max_new_tokens: int) -> dict:
    import torch

    from vlchat.commands.caption import share_cpu
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine(model, device=device)
    engine.load()
    default_threads = torch.get_num_threads()
    share_cpu(engine)
    caption_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_pictures(folder, n)

        loop = {}
        reference = None
        for threads in sorted({default_threads, caption_threads}):
            torch.set_num_threads(threads)
            plain_loop(engine, paths[: min(4, n)], max_new_tokens)  # warm up
            times = []
            for _ in range(runs):
                elapsed, reference = plain_loop(engine, paths, max_new_tokens)
                times.append(elapsed)
            loop[threads] = n / statistics.median(times)
        best_threads = max(loop, key=loop.get)
        base = loop[best_threads]

        torch.set_num_threads(caption_threads)
        table = []
        for size in batch_sizes:
            vlchat_run(engine, folder, size, max_new_tokens)  # warm up
            times, same = [], None
            for _ in range(runs):
                elapsed, captions = vlchat_run(engine, folder, size, max_new_tokens)
                times.append(elapsed)
                same = sum(a == b for a, b in zip(captions, reference or []))
            rate = n / statistics.median(times)
            table.append({"batch_size": size, "pictures_per_s": round(rate, 2), "vs_loop": round(rate / base, 2),
                          "same_captions_as_loop": f"{same}/{n}"})
    info = engine.describe()
    engine.unload()
    best = max(table, key=lambda row: row["pictures_per_s"])
    return {
        "model": info.name, "device": info.device, "dtype": info.dtype, "quantization": info.quantization,
        "pictures": n, "runs": runs, "max_new_tokens": max_new_tokens,
        "loop_pictures_per_s": {f"{t} threads": round(r, 2) for t, r in loop.items()},
        "loop_reference": f"{best_threads} threads",
        "torch_threads_for_caption": caption_threads,
        "vlchat": table,
        "best": {"batch_size": best["batch_size"], "vs_loop": best["vs_loop"]},
        "goal": ">= 3x at the best batch size",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pictures", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    result = measure(args.model, args.device, args.pictures, args.runs, sizes, args.max_new_tokens)
    print(f"model {result['model']} on {result['device']} ({result['dtype']}, {result['quantization']}), "
          f"{result['pictures']} pictures, median of {result['runs']} runs, max {result['max_new_tokens']} new tokens")
    for label, rate in result["loop_pictures_per_s"].items():
        print(f"  plain generate loop, torch {label}: {rate:8.2f} pictures/s")
    print(f"  reference: the loop with {result['loop_reference']}")
    print(f"  {'batch size':>10}  {'pictures/s':>10}  {'vs loop':>8}  same captions")
    for row in result["vlchat"]:
        print(f"  {row['batch_size']:>10}  {row['pictures_per_s']:>10.2f}  {row['vs_loop']:>7.2f}x  {row['same_captions_as_loop']}")
    best = result["best"]
    verdict = "meets" if best["vs_loop"] >= 3 else "misses"
    print(f"best: batch size {best['batch_size']}, {best['vs_loop']:.2f}x the loop ({verdict} the goal of 3x)")
    write_json(result, args.json)


if __name__ == "__main__":
    main()
