"""A tiny MiniCPM-V 2.6 checkpoint, laid out exactly as the published one, with seeded random weights.

Used twice: by ``run_reference.py`` (in a throwaway environment, with the authors' own code) to
record prompt ids, logits and greedy answers, and by ``tests/test_minicpm.py`` to load the same
checkpoint with vlchat's native family and compare. Only this file and the non-weight files in
tests/data/minicpm are committed; the weights are rebuilt from the recipe below each time.

The recipe: every tensor of the published weight names (``llm.*``, ``vpm.*``, ``resampler.*``) is
drawn from a torch generator seeded with the CRC-32 of its name. Matrices are normal with standard
deviation 1/sqrt(fan-in); norm weights 1 + 0.1 N(0,1), biases and the resampler's query 0.1 N(0,1)
(a random init would leave these constant, and a mistake in them would go unseen). This file needs
only torch, safetensors, tokenizers and PIL: no transformers, no authors' code.

The tokenizer is the published one: Qwen2's byte-level BPE (vocab.json and merges.txt, stored
compressed in tests/data/minicpm) with MiniCPM-V 2.6's added tokens at their published ids
(added_tokens.json, and ``<unk>`` at 128244, where Qwen2's vocabulary already has it).
``write_tokenizer`` writes the checkpoint's vocab.json, merges.txt and tokenizer.json from them.
"""

from __future__ import annotations

import json
import lzma
import shutil
import zlib
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "data" / "minicpm"
# MiniCPM-o 2.6's own non-weight files (its config, a Qwen2.5 tokenizer with more added tokens)
VARIANTS = {"v": DATA, "o": DATA / "o"}


def config(variant: str = "v") -> dict:
    return json.loads((VARIANTS[variant] / "config.json").read_text(encoding="utf-8"))


def weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint by its published name."""
    h = cfg["hidden_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // heads
    inter = cfg["intermediate_size"]
    vocab = cfg["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {"llm.model.embed_tokens.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"llm.model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (heads * hd, h)
        shapes[p + "self_attn.q_proj.bias"] = (heads * hd,)
        shapes[p + "self_attn.k_proj.weight"] = (kv * hd, h)
        shapes[p + "self_attn.k_proj.bias"] = (kv * hd,)
        shapes[p + "self_attn.v_proj.weight"] = (kv * hd, h)
        shapes[p + "self_attn.v_proj.bias"] = (kv * hd,)
        shapes[p + "self_attn.o_proj.weight"] = (h, heads * hd)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["llm.model.norm.weight"] = (h,)
    shapes["llm.lm_head.weight"] = (vocab, h)

    v = cfg["vision_config"]
    d, vi, patch = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    side = v["image_size"] // patch
    shapes["vpm.embeddings.patch_embedding.weight"] = (d, 3, patch, patch)
    shapes["vpm.embeddings.patch_embedding.bias"] = (d,)
    shapes["vpm.embeddings.position_embedding.weight"] = (side * side, d)
    layers = v["num_hidden_layers"] - (1 if cfg.get("drop_vision_last_layer") else 0)
    for i in range(layers):
        p = f"vpm.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (d, d)
            shapes[p + f"self_attn.{proj}.bias"] = (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{norm}.weight"] = (d,)
            shapes[p + f"{norm}.bias"] = (d,)
        shapes[p + "mlp.fc1.weight"] = (vi, d)
        shapes[p + "mlp.fc1.bias"] = (vi,)
        shapes[p + "mlp.fc2.weight"] = (d, vi)
        shapes[p + "mlp.fc2.bias"] = (d,)
    shapes["vpm.post_layernorm.weight"] = (d,)
    shapes["vpm.post_layernorm.bias"] = (d,)

    shapes["resampler.query"] = (cfg["query_num"], h)
    shapes["resampler.kv_proj.weight"] = (h, d)
    shapes["resampler.attn.in_proj_weight"] = (3 * h, h)
    shapes["resampler.attn.in_proj_bias"] = (3 * h,)
    shapes["resampler.attn.out_proj.weight"] = (h, h)
    shapes["resampler.attn.out_proj.bias"] = (h,)
    for norm in ("ln_q", "ln_kv", "ln_post"):
        shapes[f"resampler.{norm}.weight"] = (h,)
        shapes[f"resampler.{norm}.bias"] = (h,)
    shapes["resampler.proj"] = (h, h)
    return shapes


def tensor(name: str, shape: tuple[int, ...]):
    import torch

    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    last = name.rsplit(".", 1)[-1]
    is_norm = any(key in name for key in ("norm", "ln_q", "ln_kv", "ln_post"))
    if is_norm and last == "weight":
        return 1.0 + 0.1 * noise
    if last in ("bias", "in_proj_bias") or name.endswith("resampler.query"):
        return 0.1 * noise
    if name.endswith("embed_tokens.weight") or name.endswith("position_embedding.weight"):
        return 0.5 * noise
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    return noise / fan_in**0.5


def state_dict(cfg: dict | None = None) -> dict:
    cfg = cfg or config()
    return {name: tensor(name, shape) for name, shape in weight_shapes(cfg).items()}


# Qwen2's pre-tokenizer split, as its tokenizer.json has it
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
UNK_ID = 128244  # MiniCPM-V 2.6's tokenizer_config.json marks Qwen2's own "<unk>" entry special


def write_tokenizer(folder: Path, variant: str = "v") -> None:
    """vocab.json, merges.txt and tokenizer.json of the checkpoint: Qwen2's BPE plus the added tokens,
    at the ids and with the special flags of the variant's tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab_text = lzma.decompress((DATA / "vocab.json.xz").read_bytes()).decode("utf-8")
    merges_text = lzma.decompress((DATA / "merges.txt.xz").read_bytes()).decode("utf-8")
    (folder / "vocab.json").write_text(vocab_text, encoding="utf-8")
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    vocab = json.loads(vocab_text)
    merges = [tuple(line.split(" ")) for line in merges_text.splitlines() if line and not line.startswith("#version")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                     byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    data = VARIANTS[variant]
    added = json.loads((data / "added_tokens.json").read_text(encoding="utf-8"))
    decoder = json.loads((data / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
    assert decoder[str(UNK_ID)]["content"] == "<unk>"
    assert all(decoder[str(i)]["content"] == t for t, i in added.items())
    for token_id in sorted(int(i) for i in decoder):  # in id order, so each new token takes the next id
        entry = decoder[str(token_id)]
        token = AddedToken(entry["content"], special=entry["special"], normalized=entry["normalized"])
        if entry["special"]:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
        assert tokenizer.token_to_id(entry["content"]) == token_id, (entry, tokenizer.token_to_id(entry["content"]))
    tokenizer.save(str(folder / "tokenizer.json"))


def build(folder: Path, *, variant: str = "v", extra_tensors: dict | None = None) -> Path:
    """Write the checkpoint: the committed non-weight files, the tokenizer, and model.safetensors from the recipe.

    ``variant`` "v" is MiniCPM-V 2.6, "o" MiniCPM-o 2.6 (its audio and speech weights are not written)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in VARIANTS[variant].iterdir():
        if path.is_file() and path.suffix in (".json", ".txt", ".jinja"):
            shutil.copy(path, folder / path.name)
    write_tokenizer(folder, variant)
    weights = state_dict(config(variant))
    if extra_tensors:
        weights.update(extra_tensors)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def pictures() -> dict:
    """The pictures of the recorded conversations, drawn here so that nothing binary is committed."""
    from PIL import Image, ImageDraw

    red = Image.new("RGB", (200, 150), "white")
    ImageDraw.Draw(red).ellipse((50, 25, 150, 125), fill=(220, 30, 30))
    blue = Image.new("RGB", (1300, 900), (245, 240, 230))
    draw = ImageDraw.Draw(blue)
    draw.rectangle((400, 200, 900, 700), fill=(20, 40, 200))
    draw.line((0, 0, 1299, 899), fill=(0, 0, 0), width=9)
    green = Image.new("RGB", (120, 160), "black")
    ImageDraw.Draw(green).polygon([(60, 10), (110, 150), (10, 150)], fill=(30, 200, 60))
    return {"red": red, "blue": blue, "green": green}


# The recorded conversations: (picture name or None, text) per user turn; every assistant turn
# is the greedy answer to the turn before it.
CONVERSATIONS = {
    "one_turn": [("red", "What colour is the shape?")],
    "two_turns": [("red", "What colour is the shape?"), ("green", "And this one?")],
    "sliced": [("blue", "Describe the picture.")],
    "text_second": [("red", "What colour is the shape?"), (None, "Say it again.")],
}
MAX_NEW_TOKENS = 12


def logit_ids(vocab_size: int) -> list[int]:
    """The vocabulary positions whose first-step logits are recorded (all 151,666 would be megabytes):
    every 101st id, and every id from 151,643 on (the special and added tokens), plus ``<unk>``."""
    return sorted(set(range(0, vocab_size, 101)) | set(range(151643, vocab_size)) | {UNK_ID})
