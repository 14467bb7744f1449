"""Tiny random models of each native family, saved as folders the engine loads like hub downloads.

Where the published non-weight files of a checkpoint were found (tests/data/families, SOURCES.md
there) a family's model is built on them: the real config shrunk (few layers, small hidden sizes;
token ids, image token and patch settings kept), the real tokenizer, template and processor files.
The others are made here, hidden sizes multiples of 64 so bitsandbytes can quantize the linear
layers to 4-bit on the CPU. Weights are random: tests check the plumbing and the prompts, never the
words.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = 384
IMAGE = 32  # picture side the vision towers see
PATCH = 8

# A chat template of the common shape: pictures where they were added, string or list content.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}@IMG@{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def _seed():
    import torch

    torch.manual_seed(0)


def build_tokenizer(special: list[str], image_token: str = "<image>", vocab: int = VOCAB, corpus=(), **extra_special):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    base = ["<s>", "</s>", "<pad>", "<unk>", image_token, *special]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab - 32,
        special_tokens=base,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["What colour is the shape?", "The shape is red.", "Describe the picture.", "And this one?", *corpus] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": image_token, **extra_special},
        model_max_length=1024,
    )


def _llama(vocab_size=VOCAB, **kw):
    from transformers import LlamaConfig

    kw = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2, **kw}
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **kw,
    )


def _clip():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE, patch_size=PATCH, projection_dim=64,
    )


def _save(folder: Path, model, processor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config.max_length = None
    # Random weights pick any token; keeping special ones out means every step shows as text.
    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    model.generation_config.suppress_tokens = sorted(special)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# Answers full of code and punctuation, as a conversation about a screenshot of code has them.
CODE = (
    "def f(x): return {'a': [x, x], 'b': (x,)}; print(f(1))  # -> {'a': [1, 1], 'b': (1,)}",
    "for i in range(3): print(i, i ** 2, [i] * 2, {i: -i}); x += (i, i)",
    "if (a && b) || !c { return x[0]->y; } else { return *p++; } // ok?",
    "SELECT a.b, c.d FROM t1 a JOIN t2 c ON (a.id = c.id) WHERE x > 1; -- done",
)


def build_qwen2_vl(folder: Path) -> Path:
    _seed()
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_tokenizer(["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"], image_token="<|image_pad|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=0, eos_token_id=1, pad_token_id=2,
            rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
        ),
        vision_config=dict(depth=1, embed_dim=64, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=PATCH,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": IMAGE * IMAGE, "longest_edge": IMAGE * IMAGE},
    )
    # Saved part by part: transformers 5.23 builds a Qwen2VLProcessor only with torchvision at hand
    # (for its video half), and the folder must exist either way to test what the engine says.
    folder.mkdir(parents=True, exist_ok=True)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.max_length = None
    model.generation_config.suppress_tokens = sorted(set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(
        TEMPLATE.replace("@IMG@", "<|vision_start|><|image_pad|><|vision_end|>")
    )
    (folder / "processor_config.json").write_text('{"processor_class": "Qwen2VLProcessor"}')
    return folder


# JoyCaption's shape: Llama 3.1 header template over string contents, with a tokenizer that adds
# <|begin_of_text|> by itself, as Llama 3's does (the source of a doubled BOS). The template is
# project-made (the published one was not found); the tokens are JoyCaption's: Llama 3.1's special
# tokens at their ids (128000-128255), the image token and the BOS/EOS/padding roles as
# llama-joycaption-alpha-two-hf-llava publishes them (tests/data/families/joycaption-alpha-two).
JOY_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA31_SPECIAL = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])  # ids 128000-128255


def llama31_layout_tokenizer():
    """Llama 3.1's special tokens at their published ids (128000-128255) over a byte-level
    vocabulary of placeholders (Llama 3.1's own 128000 tokens are not here): text goes byte by
    byte, every special token keeps its id, and <|begin_of_text|> is put first as Llama 3's does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"\u2400unused{i}\u2400": i for i in range(len(vocab), 128000)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA31_SPECIAL])
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 128000)])
    roles = {key: value["content"] for key, value in real_json("joycaption-alpha-two", "special_tokens_map.json").items()}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=131072, **roles)
    assert tokenizer.convert_tokens_to_ids("<|reserved_special_token_69|>") == 128077
    return tokenizer


def build_joycaption(folder: Path) -> Path:
    _seed()
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = llama31_layout_tokenizer()
    published = real_json("joycaption-alpha-two", "processor_config.json")
    image_token = published["image_token"]
    config = LlavaConfig(
        vision_config=_clip(),
        text_config=_llama(vocab_size=128256, bos_token_id=128000, eos_token_id=128009, pad_token_id=128004),
        image_token_index=tokenizer.convert_tokens_to_ids(image_token),
        vision_feature_select_strategy=published["vision_feature_select_strategy"], vision_feature_layer=-1,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, do_center_crop=False,
                                              crop_size={"height": IMAGE, "width": IMAGE}),
        tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy=published["vision_feature_select_strategy"],
        num_additional_image_tokens=published["num_additional_image_tokens"], image_token=image_token,
        chat_template=JOY_TEMPLATE,
    )
    return _save(folder, LlavaForConditionalGeneration(config), processor)


# -- from the published files -----------------------------------------------------------------
# tests/data/families/<name>/ holds the non-weight files of the published checkpoints (SOURCES.md
# there says where each came from); a large file is stored compressed (.xz).
DATA = Path(__file__).parent / "data" / "families"


def real_file(family: str, name: str) -> bytes:
    import lzma

    folder = DATA / family
    if (folder / name).is_file():
        return (folder / name).read_bytes()
    return lzma.decompress((folder / (name + ".xz")).read_bytes())


def real_json(family: str, name: str) -> dict:
    import json

    return json.loads(real_file(family, name))


def bert_uncased_tokenizer(*, bos: str | None = None, extra: tuple[str, ...] = ()):
    """bert-base-uncased from its real vocab.txt, with the tokens BLIP and InstructBLIP add to it."""
    from transformers import BertTokenizerFast

    words = real_file("bert-base-uncased", "vocab.txt").decode("utf-8").splitlines()
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)}, do_lower_case=True,
                                  model_max_length=512)
    if bos:
        tokenizer.add_special_tokens({"bos_token": bos})
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra)})
    return tokenizer


TINY_BERT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)


def build_blip(folder: Path, *, vqa: bool = False) -> Path:
    """Salesforce/blip-image-captioning-base's config and image processor, and its tokenizer as
    published: bert-base-uncased's vocabulary with the BLIP repositories' tokenizer_config.json and
    special_tokens_map.json, which name no [DEC] or [ENC] (the model puts those in itself, from its
    config: bos_token_id 30522); for ``vqa`` the same with the question-answering architecture
    (blip-vqa-base has BLIP-base's sizes, tokenizer and image settings)."""
    _seed()
    from transformers import (AutoTokenizer, BlipConfig, BlipForConditionalGeneration, BlipForQuestionAnswering,
                              BlipImageProcessor, BlipProcessor)

    data = real_json("blip", "config.json")
    text, vision = data["text_config"], data["vision_config"]
    text.update(TINY_BERT, encoder_hidden_size=64)
    vision.update(TINY_BERT)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=64, image_text_hidden_size=64)
    model_class = BlipForQuestionAnswering if vqa else BlipForConditionalGeneration
    config.architectures = [model_class.__name__]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_bytes(real_file("blip", "preprocessor_config.json"))
    image_processor = BlipImageProcessor.from_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes(real_file("bert-base-uncased" if name == "vocab.txt" else "blip", name))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = BlipProcessor(image_processor, tokenizer)
    model = model_class(config)
    model.generation_config.max_length = None
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def copy_real(family: str, folder: Path) -> Path:
    """The stored files of a family into ``folder``, decompressed (SOURCES.md is not a model file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((DATA / family).iterdir()):
        if path.name == "SOURCES.md":
            continue
        name = path.name.removesuffix(".xz")
        (folder / name).write_bytes(real_file(family, name))
    head = folder / "tokenizer.head.json"
    if head.is_file():
        fill_tokenizer(head, folder / "tokenizer.json")
        head.unlink()
    return folder


def fill_tokenizer(head: Path, out: Path) -> None:
    """A tokenizer.json whose byte tokens and added tokens keep their real ids, from a file that
    holds only those (its BPE vocabulary cut to the 256 byte tokens, no merges): the ids between are
    filled with placeholders no text can produce, since the tokenizers library numbers added tokens
    after the vocabulary, not where the file says."""
    import json

    data = json.loads(head.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    first_added = min(token["id"] for token in data["added_tokens"])
    vocab.update({f"\u2400unused{i}\u2400": i for i in range(len(vocab), first_added)})
    out.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2)
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


def shrink_llava(config: dict) -> None:
    config["text_config"].update(TINY_TEXT)
    config["vision_config"].update(TINY_VISION, projection_dim=64)


def shrink_llava_next(config: dict) -> None:
    shrink_llava(config)


def shrink_blip2(config: dict) -> None:
    config["text_config"].update(hidden_size=64, ffn_dim=128, num_hidden_layers=1, num_attention_heads=2,
                                 word_embed_proj_dim=64)
    config["vision_config"].update(TINY_VISION, num_hidden_layers=1)
    config["qformer_config"].update(TINY_BERT, encoder_hidden_size=64)


def shrink_instructblip(config: dict) -> None:
    config["text_config"].update(TINY_TEXT, head_dim=32)
    config["vision_config"].update(TINY_VISION, num_hidden_layers=1)
    config["qformer_config"].update(TINY_BERT, encoder_hidden_size=64)


def shrink_qwen2_5_vl(config: dict) -> None:
    config.update(TINY_TEXT)
    # the rotary sections split a head's half (here 32 / 2 = 16) as the real ones split 128 / 2
    config["rope_scaling"]["mrope_section"] = [4, 6, 6]
    config["vision_config"].update(depth=1, hidden_size=64, intermediate_size=128, num_heads=2,
                                   out_hidden_size=64, fullatt_block_indexes=[0])


def shrink_minicpmv4_6(config: dict) -> None:
    text = config["text_config"]
    text.update(TINY_TEXT, head_dim=32, layer_types=["full_attention"], mtp_num_hidden_layers=0)
    config["vision_config"].update(TINY_VISION)
    config["insert_layer_id"] = 0  # its merger sits after this vision layer: there are two


SHRINK = {"llava": shrink_llava, "llava_next": shrink_llava_next, "blip-2": shrink_blip2, "instructblip": shrink_instructblip, "qwen2_5_vl": shrink_qwen2_5_vl,
          "minicpmv4_6": shrink_minicpmv4_6}


def build_real(family: str, folder: Path) -> Path:
    """A tiny random model beside the real processor and tokenizer files of ``family``."""
    import json

    import transformers
    from transformers import AutoConfig, GenerationConfig

    _seed()
    copy_real(family, folder)
    if family in TOKENIZER_FROM:
        TOKENIZER_FROM[family](folder)
    data = json.loads((folder / "config.json").read_text())
    SHRINK[data["model_type"]](data)
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    config = AutoConfig.from_pretrained(folder)
    model = getattr(transformers, data["architectures"][0])(config)
    generation = model.generation_config
    if (folder / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(folder)
    model.save_pretrained(folder)
    # Random weights pick any token; keeping special ones and lone blank bytes (a tiny model can
    # repeat one newline for ever) out means every step shows as text.
    tokenizer = load_tokenizer(folder)
    blank = {i for i in range(256) if not tokenizer.decode([i]).strip()}
    generation.suppress_tokens = sorted(set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder) | blank)
    generation.max_length = None
    generation.save_pretrained(folder)
    return folder


def mistral_tokenizer_for_llava_next(folder: Path) -> None:
    """llava-v1.6-mistral-7b-hf's tokenizer as transformers' LLaVA-NeXT conversion script made it:
    Mistral 7B's (its own files, tests/data/families/mistral-7b) with <image> added as a special
    token (32000) and <pad> (32001) as the padding token, which the published added_tokens.json
    records; padded on the left, as the published tokenizer is."""
    import tempfile

    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as source:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (Path(source) / name).write_bytes(real_file("mistral-7b", name))
        tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
    tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    added = json.loads((folder / "added_tokens.json").read_text())
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in added} == added, "the published ids"
    tokenizer.save_pretrained(folder)
    (folder / "added_tokens.json").write_bytes(real_file("llava-next", "added_tokens.json"))


def vicuna_tokenizer_for_instructblip(folder: Path) -> None:
    """Salesforce/instructblip-vicuna-7b's two tokenizers. Vicuna's is LLaMA's 32000-token
    SentencePiece vocabulary, the same as Llama 2's (llava-1.5's published tokenizer.json, its own
    added tokens taken out); the published tokenizer_config.json adds [PAD], <image> and <video> at
    32000-32002 and makes "</s>" the BOS, which is what the tokenizer puts first (transformers'
    InstructBLIP code notes the authors' "</s>" BOS, id 2); its legacy normalizer is llava-1.5's too.
    The Q-Former's is bert-base-uncased with [DEC] added as BOS (30522, the published
    qformer_tokenizer/added_tokens.json)."""
    data = json.loads(real_file("llava-1.5", "tokenizer.json"))
    data["added_tokens"] = [token for token in data["added_tokens"] if token["id"] < 32000]
    bos = next(token["id"] for token in data["added_tokens"] if token["content"] == "</s>")
    first = {"SpecialToken": {"id": "</s>", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [first, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"</s>": {"id": "</s>", "ids": [bos], "tokens": ["</s>"]}},
    }
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    qformer = bert_uncased_tokenizer(bos="[DEC]")
    assert qformer.convert_tokens_to_ids("[DEC]") == 30522
    qformer.save_pretrained(folder / "qformer_tokenizer")


TOKENIZER_FROM = {"llava-next": mistral_tokenizer_for_llava_next, "instructblip": vicuna_tokenizer_for_instructblip}


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)




# SmolVLM-Instruct (HuggingFaceTB): its published processor files are stored (tests/data/families/smolvlm,
# SOURCES.md); its tokenizer (SmolLM2's 49152-token BPE) and config.json were not found whole. The
# tokenizer here keeps the published special-token layout: SmolLM2's 17 special tokens at ids 0-16,
# the three added_tokens.json ones at 49152-49154, the roles SmolLM2 and SmolVLM give them (BOS
# <|im_start|>, which the template writes itself; EOS <end_of_utterance>, the generation_config's
# 49154; padding <|im_end|>, its 2); text goes byte by byte through placeholder ids in between.
# The config carries the published vision-language values: image token 49153, pixel shuffle
# scale 3, 384-pixel tiles of 14-pixel patches (so 81 tokens a tile, the processor's image_seq_len),
# a 49155-token vocabulary and untied output embeddings.
SMOLLM2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                   "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                   "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>",
                   "<empty_output>"]


def smolvlm_tokenizer(folder: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    added = json.loads(real_file("smolvlm", "added_tokens.json"))
    vocab = {token: i for i, token in enumerate(SMOLLM2_SPECIAL)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    vocab.update({f"\u2400unused{i}\u2400": i for i in range(len(vocab), min(added.values()))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SMOLLM2_SPECIAL])
    for token, _ in sorted(added.items(), key=lambda item: item[1]):
        tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", additional_special_tokens=sorted(added, key=added.get), model_max_length=16384,
    )
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in added} == added, "the published ids"
    return tokenizer


def build_smolvlm(folder: Path) -> Path:
    _seed()
    from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration

    copy_real("smolvlm", folder)
    tokenizer = smolvlm_tokenizer(folder)
    tokenizer.save_pretrained(folder)
    config = Idefics3Config(
        image_token_id=49153, scale_factor=3, tie_word_embeddings=False,
        text_config=dict(model_type="llama", vocab_size=49155, head_dim=32, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, max_position_embeddings=16384, tie_word_embeddings=False, **TINY_TEXT),
        vision_config=dict(image_size=384, patch_size=14, **TINY_VISION),
    )
    config.architectures = ["Idefics3ForConditionalGeneration"]
    model = Idefics3ForConditionalGeneration(config)
    model.save_pretrained(folder)
    generation = GenerationConfig.from_pretrained(folder)
    blank = {i for i in range(len(SMOLLM2_SPECIAL), len(SMOLLM2_SPECIAL) + 256) if not tokenizer.decode([i]).strip()}
    generation.suppress_tokens = sorted(set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder) | blank)
    generation.max_length = None
    generation.save_pretrained(folder)
    return folder


# The tiny model of each native family, by the name tests use (conftest.tiny_models builds them once).
# Where the published files were found they are used (build_real); the rest are made here.
BUILDERS = {
    "llava": lambda folder: build_real("llava-1.5", folder),
    "llava_next": lambda folder: build_real("llava-next", folder),
    "blip-2": lambda folder: build_real("blip-2", folder),
    "instructblip": lambda folder: build_real("instructblip", folder),
    "idefics3": build_smolvlm,
    "qwen2_vl": build_qwen2_vl,  # Qwen2-VL (not a seed family): small pictures for the batching tests
    "qwen2_5_vl": lambda folder: build_real("qwen2.5-vl", folder),
    "minicpmv4_6": lambda folder: build_real("minicpm-v-4.6", folder),
}
