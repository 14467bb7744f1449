"""Record what the authors' own MiniCPM-V 2.6 code does on the tiny checkpoint (see README.md here).

    python run_reference.py AUTHORS_CODE_DIR [OUT.json]

AUTHORS_CODE_DIR holds the published Python files of openbmb/MiniCPM-V-2_6 (configuration_minicpm.py,
modeling_minicpmv.py, modeling_navit_siglip.py, resampler.py, image_processing_minicpmv.py,
processing_minicpmv.py, tokenization_minicpmv_fast.py). They are never committed here. Run in a
throwaway environment with transformers 4.44.2 (what that code was written for), torch and pillow.

For each conversation in tiny.CONVERSATIONS it calls their ``chat()`` turn by turn, greedily:
``sampling=False`` alone would be beam search with 3 beams and repetition penalty 1.2, so
``num_beams=1, repetition_penalty=1.0`` are passed too. It records the prompt ids their processor
builds, the first decoding step's logits at ``tiny.logit_ids`` (every 101st id and all the special
ones: the vocabulary is the real 151,666) with the ten highest ids, and the generated token ids and
answer text.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_tiny():
    spec = importlib.util.spec_from_file_location("minicpm_tiny", HERE / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stub_torchvision() -> None:
    """modeling_minicpmv.py imports torchvision at the top and never uses it for pictures."""
    if "torchvision" not in sys.modules:
        sys.modules["torchvision"] = types.ModuleType("torchvision")


def copy_code(code: Path, folder: Path) -> None:
    for path in code.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name == "resampler.py":
            # it takes List/Tuple from `from torch.nn.functional import *`, which torch 2.13 no longer exports
            text = "from typing import List, Optional, Tuple\n" + text
        (folder / path.name).write_text(text, encoding="utf-8")


def main(code: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoProcessor, AutoTokenizer

    tiny = load_tiny()
    stub_torchvision()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="minicpm-ref-"))
    try:
        tiny.build(folder)
        copy_code(code, folder)
        model, info = AutoModel.from_pretrained(
            str(folder), trust_remote_code=True, torch_dtype=torch.float32, output_loading_info=True
        )
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"the weight names are not the published ones: {problems}"
        expected = set(tiny.weight_shapes(tiny.config()))
        assert set(model.state_dict()) == expected, set(model.state_dict()) ^ expected
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
        pictures = tiny.pictures()

        calls: list[dict] = []
        original = model.generate

        def recording_generate(*args, **kwargs):
            ids = kwargs["input_ids"]
            record = {"input_ids": ids[0].tolist()}
            with torch.inference_mode():
                embeds, _ = model.get_vllm_embedding(
                    {"input_ids": ids, "image_bound": kwargs["image_bound"],
                     "pixel_values": kwargs["pixel_values"], "tgt_sizes": kwargs["tgt_sizes"]}
                )
                logits = model.llm(inputs_embeds=embeds, attention_mask=kwargs["attention_mask"]).logits
            last = logits[0, -1]
            record["first_logits"] = [round(float(last[i]), 6) for i in logit_ids]
            record["top_ids"] = last.topk(10).indices.tolist()
            record["tgt_sizes"] = [t.tolist() for t in kwargs["tgt_sizes"][0]] if len(kwargs["tgt_sizes"][0]) else []
            kwargs["decode_text"] = False
            result = original(*args, **kwargs)
            record["generated"] = result[0].tolist()
            calls.append(record)
            kwargs["decode_text"] = True
            return model._decode_text(result, tokenizer)

        model.generate = recording_generate

        logit_ids = tiny.logit_ids(tiny.config()["vocab_size"])
        figures: dict = {"logit_ids": logit_ids, "conversations": {}}
        for name, turns in tiny.CONVERSATIONS.items():
            msgs: list[dict] = []
            recorded = []
            for picture, text in turns:
                content = ([pictures[picture]] if picture else []) + [text]
                msgs.append({"role": "user", "content": content})
                answer = model.chat(
                    image=None, msgs=msgs, tokenizer=tokenizer, processor=processor,
                    sampling=False, num_beams=1, repetition_penalty=1.0,
                    max_new_tokens=tiny.MAX_NEW_TOKENS,
                )
                call = calls.pop()
                call["answer"] = answer
                recorded.append(call)
                msgs.append({"role": "assistant", "content": answer})
            figures["conversations"][name] = recorded
        figures["recipe"] = "tests/reference/minicpm/tiny.py"
        import transformers

        figures["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
        out.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "figures.json")
