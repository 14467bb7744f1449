"""Build and train the vlchat demo model, deterministically, on synthetic pictures.

    python -m vlchat.demo.train [--steps N] [--out DIR] [--eval-only]

The result is a real LLaVA-architecture model (CLIP vision tower, Llama text model, a BPE
tokenizer trained with `tokenizers`, a chat template) saved like any hub model, so the engine loads
it through exactly the same code path as ``llava-hf/llava-1.5-7b-hf``. Hidden sizes are multiples
of 64 so bitsandbytes can quantise it to 4-bit on the CPU. At the end the script prints the
accuracy per question type on fresh pictures, in full precision and in 4-bit nf4.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vlchat.demo import MODEL_DIR
from vlchat.demo.shapes import (
    NO_PICTURE_ANSWER,
    OFF_TOPIC,
    OFF_TOPIC_ANSWER,
    QUESTIONS,
    QUESTION_TYPES,
    SHAPES,
    COLOURS,
    SYSTEM_PROMPTS,
    WORDING,
    answer,
    draw_scene,
    draw_scene_cells,
    random_scene,
)

IMAGE_SIZE = 64
PATCH_SIZE = 16
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # LLaVA's "default" strategy drops the CLS token
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
UNK, BOS, EOS, PAD, IMAGE = range(5)

# The prompt format, as Jinja for the processor and as Python for building training data; the
# training script checks that both agree before it trains.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for part in parts if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}{{- '\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- 'USER: ' -}}"
    "{%- for part in parts if part['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}"
    "{%- for part in parts if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}{{- '\n' -}}"
    "{%- else -%}"
    "{{- 'ASSISTANT: ' -}}"
    "{%- for part in parts if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{{- eos_token + '\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def render(messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The template above as (text, is_answer) segments; answers are what the loss is taken on."""
    segments: list[tuple[str, bool]] = [("<s>", False)]
    for m in messages:
        if m["role"] == "system":
            segments.append((m["text"] + "\n", False))
        elif m["role"] == "user":
            segments.append(("USER: " + "<image>\n" * m.get("images", 0) + m["text"] + "\n", False))
        else:
            segments.append(("ASSISTANT:", False))
            segments.append((" " + m["text"] + "</s>", True))
            segments.append(("\n", False))
    if add_generation_prompt:
        segments.append(("ASSISTANT:", False))
    return segments


def as_template_messages(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        if m["role"] == "user":
            content = [{"type": "image"}] * m.get("images", 0) + [{"type": "text", "text": m["text"]}]
        else:
            content = m["text"]
        out.append({"role": m["role"], "content": content})
    return out


KEPT_ON_RESUME = (
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


# -- building the parts ----------------------------------------------------------------------
def corpus() -> list[str]:
    lines = ["USER: ASSISTANT: <image>\n", OFF_TOPIC_ANSWER, NO_PICTURE_ANSWER, *OFF_TOPIC, *SYSTEM_PROMPTS]
    for qs in QUESTIONS.values():
        lines.extend(qs)
    rng = random.Random(1)
    for _ in range(3000):
        scene = random_scene(rng)
        lines.extend(answer(scene, kind) for kind in QUESTION_TYPES)
    lines.extend(COLOURS)
    lines.extend(SHAPES)
    return lines


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=448,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    set_wording(tok)
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=2048,
    )


def set_wording(tok) -> None:
    """The normalizer and decoder that map grammatical text to the spellings the weights know
    and back (see WORDING in shapes.py)."""
    from tokenizers import decoders, normalizers

    tok.normalizer = normalizers.Sequence([normalizers.Replace(good, known) for good, known in WORDING])
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), *(decoders.Replace(known, good) for good, known in WORDING)])


def fix_wording(folder: Path) -> None:
    """Give an existing demo model's tokenizer.json the WORDING normalizer and decoder (no retraining)."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    set_wording(tok)
    tok.save(str(path))


def build_processor(tokenizer):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    # Squash to 64x64 rather than crop: a crop could cut a shape out of a wide picture.
    image_processor = CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(vocab_size: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=128,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=IMAGE_TOKENS,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = BOS
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    return model


# -- data --------------------------------------------------------------------------------------
class PicturePool:
    """Pictures drawn once, turned into pixel values once; conversations sample from them."""

    def __init__(self, count: int, seed: int, image_processor):
        import torch

        rng = random.Random(seed)
        self.scenes = []
        self.cells = []
        images = []
        for _ in range(count):
            scene = random_scene(rng)
            size = rng.choice((64, 96, 128, 192))
            image, cells = draw_scene_cells(scene, size=size, rng=rng)
            images.append(image)
            self.scenes.append(scene)
            self.cells.append(cells)
        chunks = [
            image_processor(images=images[i : i + 512], return_tensors="pt")["pixel_values"]
            for i in range(0, len(images), 512)
        ]
        self.pixels = torch.cat(chunks)


def pretrain_vision(
    model, pool: PicturePool, steps: int, lr: float, batch_size: int = 64, seed: int = 0, whole_picture: bool = True
) -> None:
    """Stage 1: teach the vision tower to see, patch by patch, before the model learns to talk.

    Real LLaVA models start from a CLIP tower pretrained on millions of pictures; ours starts from
    nothing, and a vision transformer learns shapes slowly through a language model's loss. So the
    tower first learns, with throwaway linear heads, what each of its patches shows: which shape (or
    none), the colour in front, and the background colour. Stage 2 then trains the whole model on
    conversations, reading those patch features.
    """
    import torch

    from vlchat.demo.shapes import COLOURS, SHAPES

    colours = sorted(COLOURS)
    patches = IMAGE_TOKENS
    shape_labels = torch.zeros((len(pool.scenes), patches), dtype=torch.long)  # 0: no shape
    front_labels = torch.zeros((len(pool.scenes), patches), dtype=torch.long)
    back_labels = torch.zeros((len(pool.scenes), patches), dtype=torch.long)
    for i, (scene, cells) in enumerate(zip(pool.scenes, pool.cells)):
        back_labels[i] = colours.index(scene.background)
        front_labels[i] = colours.index(scene.background)
        for cell in cells:
            shape_labels[i, cell] = SHAPES.index(scene.shape) + 1
            front_labels[i, cell] = colours.index(scene.colour)
    # The same facts for the whole picture, read from the mean of its patches: this keeps them
    # readable by a language model that has not yet learnt where to look (without it, shapes
    # stayed invisible to stage 2 while colours and counts were learnt).
    picture_labels = torch.tensor(
        [[SHAPES.index(s.shape), colours.index(s.colour), colours.index(s.background), s.count - 1] for s in pool.scenes]
    )
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in (len(SHAPES) + 1, len(colours), len(colours)))
    picture_heads = torch.nn.ModuleList(
        torch.nn.Linear(width, n) for n in (len(SHAPES), len(colours), len(colours), 3)
    )
    targets = (shape_labels, front_labels, back_labels)
    optimizer = torch.optim.AdamW(
        list(tower.parameters()) + list(heads.parameters()) + list(picture_heads.parameters()), lr=lr, weight_decay=0.05
    )
    warmup = max(1, steps // 40)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps))),
    )
    generator = torch.Generator().manual_seed(seed)
    tower.train()
    started = time.time()
    for step in range(steps):
        index = torch.randint(0, len(pool.scenes), (batch_size,), generator=generator)
        features = tower(pixel_values=pool.pixels[index]).last_hidden_state[:, 1:]
        logits = [head(features) for head in heads]
        loss = sum(
            torch.nn.functional.cross_entropy(out.flatten(0, 1), target[index].flatten())
            for out, target in zip(logits, targets)
        )
        pooled = features.mean(1)
        loss = loss + whole_picture * sum(
            torch.nn.functional.cross_entropy(head(pooled), picture_labels[index, i])
            for i, head in enumerate(picture_heads)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 250 == 0 or step == steps - 1:
            right = [
                (out.argmax(-1) == target[index]).float().mean().item() for out, target in zip(logits, targets)
            ]
            print(
                f"vision step {step:5d}  loss {loss.item():.4f}  patch accuracy shape/front/background "
                + "/".join(f"{r:.3f}" for r in right)
                + f"  {time.time() - started:.0f}s",
                flush=True,
            )


def whiten_projector(model, pool: PicturePool, pictures: int = 1000) -> None:
    """Start the projector as a whitening of the tower's patch features.

    The frozen features have a large shared mean and directions of very different loudness
    (colour is loud, shape is quiet). A language model fed them raw learnt whichever facts were
    loudest and stalled on the rest; centred and whitened, every fact starts equally audible.
    """
    import torch

    with torch.no_grad():
        features = torch.cat(
            [
                model.model.vision_tower(pixel_values=pool.pixels[i : i + 250]).last_hidden_state[:, 1:]
                for i in range(0, pictures, 250)
            ]
        ).flatten(0, 1).double()
        mean = features.mean(0)
        centred = features - mean
        covariance = centred.T @ centred / (len(centred) - 1)
        values, vectors = torch.linalg.eigh(covariance)
        whitening = vectors @ torch.diag(values.clamp_min(1e-4).rsqrt()) @ vectors.T
        first = model.model.multi_modal_projector.linear_1
        if first.weight.shape != whitening.shape:
            raise ValueError("whitening needs the projector's first layer to be square")
        first.weight.copy_(whitening.float())
        first.bias.copy_((-whitening @ mean).float())


def sample_conversation(rng: random.Random, pool: PicturePool, max_turns: int = 3, no_picture: float = 0.0):
    """A conversation of 1..max_turns turns; a later turn may add a picture, and is then about it.

    With probability ``no_picture`` it starts with one or more turns that have no picture yet:
    a question about the picture then gets NO_PICTURE_ANSWER (off-topic ones their usual answer),
    until a turn brings one. (No random number is drawn for it when ``no_picture`` is 0, so the
    conversations of the first recipe are drawn as they were.)
    """
    messages: list[dict] = []
    if rng.random() < 0.25:
        messages.append({"role": "system", "text": rng.choice(SYSTEM_PROMPTS)})
    picture_ids: list[int] = []
    current = None
    turns = rng.choices(range(1, max_turns + 1), weights=(5, 3, 2)[:max_turns])[0]
    blind = rng.randint(1, turns) if no_picture and rng.random() < no_picture else 0
    for turn in range(turns):
        new_picture = turn >= blind and (turn == blind or rng.random() < 0.5)
        if new_picture:
            current = rng.randrange(len(pool.scenes))
            picture_ids.append(current)
        if rng.random() < 0.04:
            question, reply = rng.choice(OFF_TOPIC), OFF_TOPIC_ANSWER
        elif current is None:
            question, reply = rng.choice(QUESTIONS[rng.choice(QUESTION_TYPES)]), NO_PICTURE_ANSWER
        else:
            kind = rng.choice(QUESTION_TYPES)
            question, reply = rng.choice(QUESTIONS[kind]), answer(pool.scenes[current], kind)
        messages.append({"role": "user", "text": question, "images": 1 if new_picture else 0})
        messages.append({"role": "assistant", "text": reply})
    return messages, picture_ids


def encode(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for text, is_answer in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        expanded = []
        for t in piece:
            expanded.extend([IMAGE] * IMAGE_TOKENS if t == IMAGE else [t])
        ids.extend(expanded)
        labels.extend(expanded if is_answer else [-100] * len(expanded))
    return ids, labels


def make_batch(tokenizer, rng, pool, size, no_picture: float = 0.0):
    import torch

    rows, pictures = [], []
    for _ in range(size):
        messages, picture_ids = sample_conversation(rng, pool, no_picture=no_picture)
        rows.append(encode(tokenizer, render(messages, add_generation_prompt=False)))
        pictures.extend(picture_ids)
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((size, width), PAD)
    labels = torch.full((size, width), -100)
    mask = torch.zeros((size, width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        mask[i, : len(ids)] = 1
    return input_ids, mask, labels, pool.pixels[pictures]


# -- evaluation --------------------------------------------------------------------------------
def evaluate(model, tokenizer, image_processor, per_type: int, seed: int, mode: str = "first"):
    """Greedy answers to fresh pictures; exact match with the expected answer, per question type.

    ``mode``: "first", the question in the first turn with its picture; "follow-up", asked in a
    second turn about a newly added picture, after a first turn about a different one; "after
    none", the same after a first turn with no picture; "none", with no picture at all (the
    expected answer is then NO_PICTURE_ANSWER).
    """
    import torch

    rng = random.Random(seed)
    results = {}
    device = next(model.parameters()).device
    for kind in QUESTION_TYPES:
        prompts, pictures, expected = [], [], []
        for _ in range(per_type):
            scene = random_scene(rng)
            messages = []
            if mode == "follow-up":
                first = random_scene(rng)
                pictures.append(draw_scene(first, size=rng.choice((64, 128, 256)), rng=rng))
                first_kind = rng.choice(QUESTION_TYPES)
                messages.append({"role": "user", "text": rng.choice(QUESTIONS[first_kind]), "images": 1})
                messages.append({"role": "assistant", "text": answer(first, first_kind)})
            elif mode == "after none":
                messages.append({"role": "user", "text": rng.choice(QUESTIONS[rng.choice(QUESTION_TYPES)]), "images": 0})
                messages.append({"role": "assistant", "text": NO_PICTURE_ANSWER})
            if mode == "none":
                messages.append({"role": "user", "text": rng.choice(QUESTIONS[kind]), "images": 0})
                expected.append(NO_PICTURE_ANSWER)
            else:
                pictures.append(draw_scene(scene, size=rng.choice((64, 128, 256)), rng=rng))
                messages.append({"role": "user", "text": rng.choice(QUESTIONS[kind]), "images": 1})
                expected.append(answer(scene, kind))
            ids, _ = encode(tokenizer, render(messages, add_generation_prompt=True))
            prompts.append(ids)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), PAD)
        mask = torch.zeros_like(input_ids)
        for i, p in enumerate(prompts):  # left padding for batched generation
            input_ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        extra = {}
        if pictures:
            pixels = image_processor(images=pictures, return_tensors="pt")["pixel_values"]
            dtype = next(model.parameters()).dtype if pixels.dtype.is_floating_point else pixels.dtype
            extra["pixel_values"] = pixels.to(device, dtype)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=48,  # the no-picture answer is 33 tokens
                do_sample=False,
                pad_token_id=PAD,
                eos_token_id=EOS,
                **extra,
            )
        answers = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        correct = sum(a.strip() == e for a, e in zip(answers, expected))
        results[kind] = correct / len(expected)
    return results


def load_4bit(path: Path):
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    from vlchat.engines.transformers import skip_patterns

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=skip_patterns(),
    )
    return AutoModelForImageTextToText.from_pretrained(path, quantization_config=quant, device_map="cpu")


def write_model_card(out: Path, figures: dict, resumed: str | None = None, per_type: int = 200) -> None:
    """The model card; ``resumed``: the command line of a --resume run that made these weights."""
    lines = [
        "# vlchat demo model",
        "",
        "A tiny LLaVA-architecture model (CLIP vision tower, Llama text model) trained by",
        "`python -m vlchat.demo.train` on synthetic pictures: one to three shapes of one colour on a",
        "background of another. It answers questions about the shapes' colour, kind and number and the",
        "background's colour, and nothing else; asked about a picture when it was given none, it says so.",
        "It exists so vlchat can be tried and tested without downloading a real model; it is not a",
        "general vision-language model.",
        "",
    ]
    if resumed:
        lines += [
            "These weights: the first recipe (`python -m vlchat.demo.train` at commit 6e454f2, before",
            "conversations without a picture were part of it), then stage 2 resumed with them:",
            "",
            f"    {resumed}",
            "",
            "`python -m vlchat.demo.train` alone now trains all of it from the start (another draw of",
            "the same abilities, not these weights).",
            "",
        ]
    lines += [
        f"Accuracy on fresh pictures, {per_type} per question type (exact answers, greedy decoding; 4-bit:",
        "the language model in nf4, vision tower and projector unquantized, as the engine loads it; no",
        "picture: the answer is that it sees none):",
        "",
        "```",
        json.dumps(figures, indent=2),
        "```",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def print_table(title: str, results: dict) -> None:
    print(f"  {title}: " + ", ".join(f"{k} {v:.1%}" for k, v in results.items()), flush=True)


def run_evaluation(path: Path, per_type: int) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    full = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    figures = {
        "full precision": evaluate(full, processor.tokenizer, processor.image_processor, per_type, seed=1001),
        "full precision, follow-up picture": evaluate(
            full, processor.tokenizer, processor.image_processor, per_type, seed=1002, mode="follow-up"
        ),
        "full precision, no picture": evaluate(
            full, processor.tokenizer, processor.image_processor, per_type, seed=1003, mode="none"
        ),
        "full precision, a picture after none": evaluate(
            full, processor.tokenizer, processor.image_processor, per_type, seed=1004, mode="after none"
        ),
    }
    quant = load_4bit(path).eval()
    figures["4-bit nf4"] = evaluate(quant, processor.tokenizer, processor.image_processor, per_type, seed=1001)
    figures["4-bit nf4, no picture"] = evaluate(
        quant, processor.tokenizer, processor.image_processor, per_type, seed=1003, mode="none"
    )
    for title, results in figures.items():
        print_table(title, results)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlchat.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--vision-steps", type=int, default=1500, help="stage 1: vision tower pretraining")
    parser.add_argument("--vision-lr", type=float, default=2e-3)
    parser.add_argument("--picture-heads", type=int, default=1, help="also train whole-picture heads in stage 1")
    parser.add_argument("--steps", type=int, default=1200, help="stage 2: conversations")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--pictures", type=int, default=16000, help="size of the training picture pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-per-type", type=int, default=200)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--eval-only", action="store_true", help="evaluate the model in --out and stop")
    parser.add_argument("--fix-wording", action="store_true",
                        help="give the model in --out the tokenizer's wording normalizer and decoder, and stop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 gives the same numbers everywhere)")
    parser.add_argument("--check-every", type=int, default=200, help="quick accuracy check every N steps")
    parser.add_argument("--no-picture", type=float, default=0.08,
                        help="share of stage 2 conversations that start with no picture (NO_PICTURE_ANSWER)")
    parser.add_argument("--resume", action="store_true",
                        help="start from the model in --out (its tokenizer, processor and vision tower) and train stage 2 only")
    args = parser.parse_args(argv)
    if args.fix_wording:
        fix_wording(args.out)
        return 0

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.eval_only:
        run_evaluation(args.out, args.eval_per_type)
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    if args.resume:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(args.out)
        tokenizer = processor.tokenizer
    else:
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer)

    # The Python renderer and the Jinja template must agree token for token.
    check_rng = random.Random(7)
    probe_pool = type("P", (), {"scenes": [random_scene(check_rng) for _ in range(50)]})()
    for _ in range(50):
        messages, _ = sample_conversation(check_rng, probe_pool, no_picture=0.3)
        jinja = processor.apply_chat_template(as_template_messages(messages), tokenize=False)
        python = "".join(text for text, _ in render(messages, add_generation_prompt=False))
        assert jinja == python, (jinja, python)
        whole = tokenizer(python, add_special_tokens=False)["input_ids"]
        pieces = [t for text, _ in render(messages, False) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
        assert whole == pieces, "segment tokenisation differs from whole-text tokenisation"

    if args.resume:
        model = AutoModelForImageTextToText.from_pretrained(args.out, dtype=torch.float32)
    else:
        model = build_model(len(tokenizer))
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}", flush=True)
    started = time.time()
    pool = PicturePool(args.pictures, args.seed + 1, processor.image_processor)
    print(f"drew {args.pictures} training pictures in {time.time() - started:.0f}s", flush=True)

    if not args.resume:
        pretrain_vision(model, pool, args.vision_steps, args.vision_lr, seed=args.seed, whole_picture=bool(args.picture_heads))
        whiten_projector(model, pool)
    # Stage 2: conversations. The tower stays frozen, as LLaVA keeps its CLIP tower frozen: the
    # gradients of a language model that does not yet know what to look for would wash out the
    # subtle shape features first (seen here: colours and counts survive, shapes do not).
    for parameter in model.model.vision_tower.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98)
    )
    warmup = max(1, args.steps // 30)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = random.Random(args.seed + 2)
    model.train()
    started = time.time()
    running = None
    for step in range(args.steps):
        input_ids, mask, labels, pixels = make_batch(tokenizer, rng, pool, args.batch_size, args.no_picture)
        loss = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {running:.4f}  {time.time() - started:.0f}s", flush=True)
        if args.check_every and step and step % args.check_every == 0:
            model.eval()
            print_table(f"step {step} quick check", evaluate(model, tokenizer, processor.image_processor, 16, seed=99))
            if args.no_picture:
                print_table("  no picture", evaluate(model, tokenizer, processor.image_processor, 16, seed=98, mode="none"))
            model.train()
    model.eval()

    tmp = Path(tempfile.mkdtemp(prefix="vlchat-demo-"))
    try:
        model.save_pretrained(tmp)
        if args.resume:
            # The same architecture, tokenizer and processor: their files are kept as they were
            # (a save would only add this transformers' version and defaults to them).
            for name in KEPT_ON_RESUME:
                shutil.copy2(args.out / name, tmp / name)
        else:
            processor.save_pretrained(tmp)
        figures = run_evaluation(tmp, args.eval_per_type)
        write_model_card(tmp, figures, "python -m vlchat.demo.train " + " ".join(argv if argv is not None else sys.argv[1:]) if args.resume else None,
                        args.eval_per_type)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(tmp, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"saved the demo model to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
