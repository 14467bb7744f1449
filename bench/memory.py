"""Weights memory of the same model in 4-bit nf4, 8-bit and full precision, as ratios.

    python bench/memory.py [--device cpu] [--skip-8bit] [--json FILE]

Two models: the demo model, and a larger random LLaVA (Llama text model of 1024 hidden, 8 layers,
32k vocabulary) whose shape is closer to a real one, where the embeddings and the vision tower's
convolution (which stay unquantized) weigh less. Figures are transformers' get_memory_footprint()
of the loaded model (parameters and buffers), and on CUDA also the allocator's bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_larger(folder: Path) -> Path:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16
        ),
        text_config=LlamaConfig(
            vocab_size=32064, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
            num_attention_heads=16, num_key_value_heads=16,
        ),
        image_token_id=32000,
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    # The engine loads a processor with every model: borrow the demo model's (only the weights are measured).
    from vlchat.demo import MODEL_DIR

    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        if (MODEL_DIR / name).exists():
            shutil.copy(MODEL_DIR / name, folder / name)
    return folder


def footprint(source: str, quant: str, device: str) -> int:
    import torch

    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine(source, quant=quant, device=device, dtype="float32" if device == "cpu" else "auto")
    engine.load()
    try:
        if device.startswith("cuda"):
            return int(torch.cuda.memory_allocated())
        return int(engine.model.get_memory_footprint())
    finally:
        engine.unload()


def measure(device: str = "cpu", skip_8bit: bool = False) -> dict:
    from vlchat.demo import MODEL_DIR

    quants = ["none", "4bit"] if skip_8bit else ["none", "8bit", "4bit"]
    result = {"device": device, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in (("demo", str(MODEL_DIR)), ("random llava 1024x8", str(build_larger(Path(tmp) / "big")))):
            sizes = {q: footprint(source, q, device) for q in quants}
            full = sizes["none"]
            result["models"][name] = {
                "bytes": sizes,
                "ratio_to_full": {q: round(v / full, 3) for q, v in sizes.items()},
            }
    return result


def print_table(result: dict) -> None:
    print(f"{'weights memory':<24}{'full (MB)':>12}{'8-bit':>16}{'4-bit nf4':>16}")
    for name, row in result["models"].items():
        full = row["bytes"]["none"] / 1e6
        cells = []
        for q in ("8bit", "4bit"):
            if q in row["bytes"]:
                cells.append(f"{row['bytes'][q] / 1e6:>7.1f} ({row['ratio_to_full'][q]:.2f}x)")
            else:
                cells.append(f"{'n/a':>15}")
        print(f"{name:<24}{full:>12.1f}" + "".join(f"{c:>16}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-8bit", action="store_true", help="bitsandbytes 8-bit loads very slowly on a CPU")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.device, args.skip_8bit)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
