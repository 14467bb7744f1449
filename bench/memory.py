"""Memory of every registry model at 4-bit, computed from its config.json as vlchat quantizes it.

    python bench/memory.py [--json FILE] [--check]

Each model is built from its config on the meta device (no weights, nothing downloaded, a few
seconds each) and run through transformers' own bitsandbytes quantizer with vlchat's settings
(nf4, double quantization, the same modules kept unquantized: vlchat.engines.transformers), so the
Linear layers that become 4-bit are exactly those a real load makes 4-bit. Bytes, exactly:

- a 4-bit Linear: half a byte per weight, plus its quantization state: one uint8 absmax per block
  of 64 weights, and for those (double quantization) one float32 absmax per 256 blocks, a 256-entry
  float32 code and a float32 offset, and the 16-entry float32 nf4 code; its bias in 16-bit;
- every other parameter in 16-bit (bfloat16, as vlchat computes on a GPU);
- the KV cache per 1,000 tokens: keys and values of every attention layer in 16-bit
  (2 x layers x key/value heads x head size x 2 bytes x 1,000); pictures are tokens too.

Buffers (rotary tables and the like, a few kB) and the CUDA context are left out. --check loads the
demo model in 4-bit on the CPU and compares the formula with the bytes of its real tensors.

Where the published config.json is in tests/data/families (SOURCES.md there says where each came
from) it is used as is ("real config"; MiniCPM 2.6's in tests/data/minicpm, with its published sizes
set back); for the others the config is a real one of the same family
with the published sizes of the model's parts set in CONFIGS below ("sizes set here").
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import write_json  # noqa: E402

FAMILIES = ROOT / "tests" / "data" / "families"

BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes' 4-bit block size, and its double quantization's

# Llama-shaped text models by their published sizes
LLAMA2_13B = dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                  num_attention_heads=40, num_key_value_heads=40, vocab_size=32064)
MISTRAL_7B = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32064)
LLAMA31_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
VICUNA_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32001)
SMOLLM2_17B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                   num_attention_heads=32, num_key_value_heads=32, vocab_size=49155)
SIGLIP_SO400M = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                     num_attention_heads=16, image_size=384, patch_size=14)


def real(folder: str) -> dict:
    return json.loads((FAMILIES / folder / "config.json").read_text())


def derived(folder: str, **changes) -> dict:
    config = copy.deepcopy(real(folder))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def configs() -> dict[str, tuple[str, dict]]:
    """Registry name -> (where the config comes from, the config as a dict)."""
    return {
        "llava-1.5-7b": ("real config", real("llava-1.5")),
        "llava-1.5-13b": ("LLaVA 1.5's real config, Llama 2 13B sizes", derived("llava-1.5", text_config=LLAMA2_13B)),
        "llava-next-7b": ("LLaVA 1.5's real config, Mistral 7B text, LLaVA-NeXT class",
                          derived("llava-1.5", model_type="llava_next", architectures=["LlavaNextForConditionalGeneration"],
                                  text_config=MISTRAL_7B,
                                  image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])),
        "joycaption": ("LLaVA 1.5's real config, Llama 3.1 8B text, SigLIP so400m vision",
                       derived("llava-1.5", text_config=LLAMA31_8B, vision_config=SIGLIP_SO400M, image_token_index=128077)),
        "minicpm-v-4.6": ("real config", real("minicpm-v-4.6")),
        "minicpm-o-2.6": ("real config, published sizes set back (tests/data/minicpm/o)", minicpm26("minicpm/o")),
        "minicpm-v-2.6": ("real config, published sizes set back (tests/data/minicpm)", minicpm26("minicpm")),
        "blip2-opt-2.7b": ("real config", real("blip-2")),
        "instructblip-7b": ("BLIP-2's real vision config, Vicuna 7B text, InstructBLIP class",
                            derived("blip-2", model_type="instructblip", architectures=["InstructBlipForConditionalGeneration"],
                                    text_config=VICUNA_7B,
                                    qformer_config={"model_type": "instructblip_qformer", "vocab_size": 30523})),
        "qwen2.5-vl-7b": ("real config", real("qwen2.5-vl")),
        "smolvlm": ("Idefics3 with SmolLM2 1.7B text and SigLIP so400m vision (sizes set here)",
                    {"model_type": "idefics3", "architectures": ["Idefics3ForConditionalGeneration"], "scale_factor": 3,
                     "text_config": SMOLLM2_17B, "vision_config": {**SIGLIP_SO400M, "model_type": "idefics3_vision"},
                     "image_token_id": 49190}),
        "blip-base": ("real config", real("blip")),
        "blip-large": ("BLIP base's real config, ViT-L vision at 384",
                       derived("blip", vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                          num_attention_heads=16, image_size=384, patch_size=16))),
        "blip-vqa": ("BLIP base's real config, question-answering class",
                     derived("blip", architectures=["BlipForQuestionAnswering"])),
    }


NOT_COMPUTED: dict[str, str] = {}

# MiniCPM-V/-o 2.6 run on vlchat's own model class (engines/minicpm_model.py) from their published
# config.json; tests/data/minicpm holds them with the sizes shrunk (its README), set back here to the
# published ones (Qwen2-7B / Qwen2.5-7B text, SigLIP so400m vision). MiniCPM-o's audio and speech
# parts are not loaded by vlchat and not counted.
MINICPM26_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, max_window_layers=28,
                      num_attention_heads=28, num_key_value_heads=4)
MINICPM26_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)


def minicpm26(folder: str) -> dict:
    raw = json.loads((ROOT / "tests" / "data" / folder / "config.json").read_text())
    raw.update(MINICPM26_TEXT)
    raw["vision_config"] = {**raw["vision_config"], **MINICPM26_VISION}
    return {**raw, "architectures": ["vlchat:MiniCPM26Model"]}


def build_meta(config_dict: dict):
    """The model of this config on the meta device, quantized as vlchat quantizes it."""
    import tempfile

    import torch
    import transformers
    from transformers import AutoConfig, BitsAndBytesConfig
    from transformers.quantizers import AutoHfQuantizer

    from vlchat.engines.transformers import skip_patterns

    skip = skip_patterns()
    if config_dict["architectures"][0] == "vlchat:MiniCPM26Model":
        from vlchat.engines.minicpm_model import MiniCPM26Config, MiniCPM26Model

        config, model_class = MiniCPM26Config.from_checkpoint(config_dict), MiniCPM26Model
        skip.append(r"(?:.*\.)?vpm")  # as MiniCPMEngine._quantization_config keeps its vision tower
    else:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "config.json").write_text(json.dumps(config_dict))
            config = AutoConfig.from_pretrained(folder)
        model_class = getattr(transformers, config_dict["architectures"][0])
    with torch.device("meta"):
        model = model_class._from_config(config, dtype=torch.bfloat16)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=skip,
    )
    quantizer = AutoHfQuantizer.from_config(quantization, pre_quantized=False)
    quantizer.preprocess_model(model, device_map={"": "cpu"})
    return model


def state_bytes(weights: int) -> int:
    """Bytes of the quantization state of one 4-bit weight matrix of ``weights`` entries."""
    blocks = math.ceil(weights / BLOCK)
    nested = math.ceil(blocks / NESTED_BLOCK)
    return blocks * 1 + nested * 4 + 256 * 4 + 4 + 16 * 4


def weight_bytes(model) -> dict:
    import bitsandbytes as bnb

    quantized = {id(m.weight) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}
    q_params = q_bytes = other = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue  # tied weights count once
        seen.add(id(p))
        if id(p) in quantized:
            q_params += p.numel()
            q_bytes += math.ceil(p.numel() / 2) + state_bytes(p.numel())
        else:
            other += p.numel()
    return {"params": q_params + other, "quantized_params": q_params, "bytes_4bit": q_bytes + 2 * other,
            "bytes_16bit": 2 * (q_params + other)}


def kv_bytes_per_1000(config) -> tuple[int, str]:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = text.num_hidden_layers
    types = getattr(text, "layer_types", None)
    note = ""
    if types:
        attention = [t for t in types if "attention" in t and "linear" not in t]
        if len(attention) != layers:
            note = f"{len(attention)} of {layers} layers keep keys and values (the others a fixed-size state)"
        layers = len(attention)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * layers * kv_heads * head_dim * 2 * 1000, note


def measure(_device: str = "cpu") -> dict:
    rows = {}
    for name, (source, config_dict) in configs().items():
        started = time.perf_counter()
        model = build_meta(config_dict)
        sizes = weight_bytes(model)
        kv, note = kv_bytes_per_1000(model.config)
        rows[name] = {"config": source, **sizes, "kv_cache_bytes_per_1000_tokens": kv, "kv_note": note,
                      "seconds": round(time.perf_counter() - started, 1)}
        del model
    for name, why in NOT_COMPUTED.items():
        rows[name] = {"skipped": why}
    return {"models": rows}


def check_demo() -> str:
    """The formula against the real tensors of the demo model loaded in 4-bit on the CPU."""
    import bitsandbytes as bnb

    from vlchat.demo import MODEL_DIR
    from vlchat.engines.transformers import TransformersEngine

    engine = TransformersEngine("demo", quant="4bit", device="cpu", dtype="bfloat16")
    engine.load()
    try:
        real_bytes = 0
        for module in engine.model.modules():
            for p in module.parameters(recurse=False):
                real_bytes += p.numel() * p.element_size()
            if isinstance(module, bnb.nn.Linear4bit):
                state = module.weight.quant_state
                for t in (state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code):
                    real_bytes += t.numel() * t.element_size()
        with open(MODEL_DIR / "config.json") as file:
            computed = weight_bytes(build_meta(json.load(file)))["bytes_4bit"]
    finally:
        engine.unload()
    return f"demo model: computed {computed:,} bytes, loaded in 4-bit {real_bytes:,} bytes"


def print_table(result: dict) -> None:
    print(f"{'model':<18}{'parameters':>12}{'4-bit nf4':>12}{'16-bit':>10}{'KV / 1k tok':>13}  config")
    for name, row in result["models"].items():
        if "skipped" in row:
            print(f"{name:<18}{'-':>12}{'-':>12}{'-':>10}{'-':>13}  {row['skipped']}")
            continue
        print(f"{name:<18}{row['params'] / 1e9:>11.2f}B{row['bytes_4bit'] / 1e9:>10.2f}GB{row['bytes_16bit'] / 1e9:>8.2f}GB"
              f"{row['kv_cache_bytes_per_1000_tokens'] / 1e6:>10.0f} MB  {row['config']}"
              + (f"; {row['kv_note']}" if row["kv_note"] else ""))
    print("GB = 10^9 bytes; weights only (the KV cache grows with the conversation and its pictures)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true", help="also compare the formula with a real 4-bit load of the demo model")
    args = parser.parse_args()
    from vlchat.engines.transformers import quiet_libraries

    quiet_libraries()
    result = measure()
    print_table(result)
    if args.check:
        print(check_demo())
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
