"""Record what the authors' own MiniCPM-o 2.6 code does on the tiny -o checkpoint (see README.md here).

    python run_reference_o.py AUTHORS_O_CODE_DIR [OUT.json]

AUTHORS_O_CODE_DIR holds the Python files of openbmb/MiniCPM-o-2_6 (configuration_minicpm.py,
modeling_minicpmo.py, processing_minicpmo.py, image_processing_minicpmv.py, utils.py,
modeling_navit_siglip.py, resampler.py, tokenization_minicpmo_fast.py); they are never committed
here. Same environment as run_reference.py, plus librosa and soundfile (their utils.py and
modeling_minicpmo.py import them at the top); torchaudio, imported by their processor for speech
only, is stubbed.

The model is loaded with ``init_tts=False`` (no speech decoder: its weights and the vocos and
vector_quantize_pytorch packages it needs are not part of a picture-and-text chat) and with the
audio encoder the config describes (their ``chat()`` reaches for it even without audio); its
weights are not in the recipe, so it keeps the random initialisation of a fixed seed and is never
used, as no message has audio. Their ``chat(sampling=False)`` is beam search here too, so
``num_beams=1, repetition_penalty=1.0`` are passed.
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


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stub_torchaudio() -> None:
    if "torchaudio" not in sys.modules:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")


def main(code: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoProcessor, AutoTokenizer

    tiny = load("minicpm_tiny", HERE / "tiny.py")
    reference = load("minicpm_run_reference", HERE / "run_reference.py")
    reference.stub_torchvision()
    stub_torchaudio()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="minicpm-o-ref-"))
    try:
        tiny.build(folder, variant="o")
        reference.copy_code(code, folder)
        model, info = AutoModel.from_pretrained(
            str(folder), trust_remote_code=True, torch_dtype=torch.float32, init_tts=False,
            output_loading_info=True,
        )
        assert not model.config.init_tts and not hasattr(model, "tts")
        expected = set(tiny.weight_shapes(tiny.config("o")))
        # only the audio encoder and its projection are missing from the recipe: nothing else
        audio = ("apm.", "audio_projection_layer.", "audio_avg_pooler.")
        assert not [k for k in info["missing_keys"] if not k.startswith(audio)], info["missing_keys"]
        assert not info["unexpected_keys"] and not info["mismatched_keys"], info
        state = {k for k in model.state_dict() if not k.startswith(audio)}
        assert state == expected, state ^ expected
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
        assert type(tokenizer).__name__ == "MiniCPMOTokenizerFast"
        pictures = tiny.pictures()

        calls: list[dict] = []
        original = model.generate
        logit_ids = tiny.logit_ids(tiny.config("o")["vocab_size"])

        def recording_generate(*args, **kwargs):
            ids = kwargs["input_ids"]
            record = {"input_ids": ids[0].tolist()}
            with torch.inference_mode():
                data = {"input_ids": ids, "image_bound": kwargs["image_bound"],
                        "pixel_values": kwargs["pixel_values"], "tgt_sizes": kwargs["tgt_sizes"]}
                embeds, _ = model.get_vllm_embedding(data)
                embeds = model.get_omni_embedding(
                    {**data, "audio_features": kwargs.get("audio_features", [])}, input_embeddings=embeds,
                    chunk_length=model.config.audio_chunk_length,
                )
                logits = model.llm(inputs_embeds=embeds, attention_mask=kwargs["attention_mask"]).logits
            last = logits[0, -1]
            record["first_logits"] = [round(float(last[i]), 6) for i in logit_ids]
            record["top_ids"] = last.topk(10).indices.tolist()
            record["tgt_sizes"] = [t.tolist() for t in kwargs["tgt_sizes"][0]] if len(kwargs["tgt_sizes"][0]) else []
            record["attention_mask_zeros"] = int((kwargs["attention_mask"] == 0).sum())
            result, outputs = original(*args, **kwargs)
            record["generated"] = outputs.sequences[0].tolist()
            calls.append(record)
            return result, outputs

        model.generate = recording_generate

        figures: dict = {"logit_ids": logit_ids, "conversations": {}}
        for name, turns in tiny.CONVERSATIONS.items():
            msgs: list[dict] = []
            recorded = []
            for picture, text in turns:
                content = ([pictures[picture]] if picture else []) + [text]
                msgs.append({"role": "user", "content": content})
                answer = model.chat(
                    msgs=msgs, tokenizer=tokenizer, processor=processor,
                    sampling=False, num_beams=1, repetition_penalty=1.0,
                    max_new_tokens=tiny.MAX_NEW_TOKENS,
                )
                call = calls.pop()
                call["answer"] = answer
                recorded.append(call)
                msgs.append({"role": "assistant", "content": answer})
            figures["conversations"][name] = recorded
        figures["recipe"] = "tests/reference/minicpm/tiny.py, variant o"
        import transformers

        figures["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
        out.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "figures_o.json")
