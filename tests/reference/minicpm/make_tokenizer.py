"""Writes tests/data/minicpm/tokenizer.json: a small byte-level BPE with Qwen2's pre-tokenizer and
MiniCPM-V 2.6's special tokens (the real 151k-token vocabulary was not to be had here; see README).

Run once with the `tokenizers` package; the output is committed, so the tests do not need this.
"""

import json
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# Qwen2's pre-tokenizer split (from Qwen2TokenizerFast's tokenizer.json)
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# MiniCPM-V's added tokens: picture and slice brackets, the query token, grounding marks, picture ids
ADDED = ["<unk>", "<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>",
         "<point>", "</point>", "<slice>", "</slice>", "<image_id>", "</image_id>"]
CORPUS = """You are a helpful assistant.
What colour is the shape? The shape is red. It is a red circle on a white background.
And this one? This one is a green triangle on black. Describe the picture. The picture shows a blue
square with a black line across it. Say it again. What is in the image? A cat, a dog, a tree, a house.
Colours: red, green, blue, yellow, black, white, orange, purple, brown, grey. Shapes: circle, square,
triangle, rectangle, line, star. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100. user assistant system
"""


def main(out: Path) -> None:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=560, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    tok.add_special_tokens(ADDED)
    tok.save(str(out))
    # merges as "a b" strings, which older tokenizers (0.19, used with transformers 4.44) read too
    data = json.loads(out.read_text(encoding="utf-8"))
    data["model"]["merges"] = [" ".join(pair) if isinstance(pair, list) else pair for pair in data["model"]["merges"]]
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "data" / "minicpm" / "tokenizer.json")
