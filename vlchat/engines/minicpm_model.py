"""The MiniCPM-V 2.6 / MiniCPM-o 2.6 vision-language model on transformers 5 building blocks.

Loaded from the checkpoint exactly as published (its config.json and safetensors weight names:
``llm.*`` a Qwen2 causal LM, ``vpm.*`` the SigLIP "navit" vision tower, ``resampler.*`` the
perceiver resampler), without the checkpoint's own Python code. MiniCPM-o's audio encoder
(``apm.*``, ``audio_*``) and speech decoder (``tts.*``) are not built; their weights are skipped.

This module imports torch and transformers at the top: only minicpm.py's load() imports it.

What follows the authors' code to the letter, because a difference shows in every answer:
- vision tower: each slice's patches lie in one row ``(3, patch, n_patches * patch)``; position ids
  are SigLIP's 70x70 grid sampled at ``arange(0, 1 - 1e-6, 1 / n)`` bucketed (as their
  modeling_navit_siglip.py does), padding patches are masked out of attention;
- resampler: 64 learned queries cross-attend (one torch multi-head attention) to the slice's
  features plus a 2-D sin-cos position embedding of the slice's own patch grid, then LayerNorm and
  a projection; the sin-cos table is computed in float32 numpy as theirs is;
- the features replace the embeddings of the ``<unk>`` query tokens between each ``<image>`` /
  ``<slice>`` and its closing tag.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionEmbeddings, Idefics2VisionTransformer

_LLM_TAKES_CACHE = "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters

# config.json keys that are not the language model's
_NOT_TEXT = {
    "vision_config", "slice_config", "audio_config", "tts_config", "auto_map", "architectures", "model_type",
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "query_num", "image_size", "patch_size",
    "drop_vision_last_layer", "batch_vision_input", "use_image_id", "vision_batch_size", "slice_mode",
    "version", "init_vision", "init_audio", "init_tts", "audio_pool_step", "audio_chunk_length",
    "stream_input", "listen_speak_type",
}
_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout")


class MiniCPM26Config(PretrainedConfig):
    model_type = "vlchat_minicpm_2_6"
    sub_configs = {"text_config": Qwen2Config, "vision_config": Idefics2VisionConfig}

    def __init__(self, text_config=None, vision_config=None, query_num=64, vision_batch_size=16,
                 drop_vision_last_layer=False, **kwargs):
        if isinstance(text_config, dict):
            text_config = Qwen2Config(**text_config)
        if isinstance(vision_config, dict):
            vision_config = Idefics2VisionConfig(**vision_config)
        self.text_config = text_config or Qwen2Config()
        self.vision_config = vision_config or Idefics2VisionConfig()
        self.query_num = query_num
        self.vision_batch_size = vision_batch_size
        self.drop_vision_last_layer = drop_vision_last_layer
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @classmethod
    def from_checkpoint(cls, raw: dict) -> "MiniCPM26Config":
        """From the published config.json (model_type minicpmv or minicpmo, version 2.6)."""
        text = {k: v for k, v in raw.items() if k not in _NOT_TEXT}
        text["model_type"] = "qwen2"
        vision_raw = raw.get("vision_config") or {}
        vision = {k: vision_raw[k] for k in _VISION_KEYS if k in vision_raw}
        vision.setdefault("hidden_act", "gelu_pytorch_tanh")
        vision.setdefault("layer_norm_eps", 1e-6)
        drop = bool(raw.get("drop_vision_last_layer", False))
        if drop:
            vision["num_hidden_layers"] = int(vision["num_hidden_layers"]) - 1
        return cls(
            text_config=text,
            vision_config=vision,
            query_num=int(raw.get("query_num", 64)),
            vision_batch_size=int(raw.get("vision_batch_size", 16)),
            drop_vision_last_layer=drop,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        )


class NavitEmbeddings(Idefics2VisionEmbeddings):
    """Idefics2's NaViT embeddings, fed the authors' one-row patch layout and per-slice grid sizes."""

    def forward(self, pixel_values: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        patch_embeds = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        embeddings = patch_embeds.flatten(2).transpose(1, 2)
        batch, length = embeddings.shape[:2]
        side = self.num_patches_per_side
        boundaries = torch.arange(1 / side, 1.0, 1 / side)
        position_ids = torch.zeros((batch, length), dtype=torch.long)
        for row, (h, w) in enumerate(tgt_sizes.tolist()):
            # arange over fractions, bucketed on the 70x70 grid: exactly their rounding
            coords_h = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / h), boundaries, right=True)
            coords_w = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / w), boundaries, right=True)
            position_ids[row, : h * w] = (coords_h[:, None] * side + coords_w).flatten()
        position_ids = position_ids.to(self.position_embedding.weight.device)
        return embeddings + self.position_embedding(position_ids)


class NavitVisionTower(Idefics2VisionTransformer):
    """SigLIP-so400m with NaViT embeddings (weights ``vpm.embeddings/encoder/post_layernorm``)."""

    def __init__(self, config: Idefics2VisionConfig):
        super().__init__(config)
        self.embeddings = NavitEmbeddings(config)

    def forward(self, pixel_values: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lengths = (tgt_sizes[:, 0] * tgt_sizes[:, 1]).to(pixel_values.device)
        hidden = self.embeddings(pixel_values, tgt_sizes)
        mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        attention = None
        if not bool(mask.all()):
            attention = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=attention).last_hidden_state
        return self.post_layernorm(hidden)


def sincos_2d(embed_dim: int, height: int, width: int) -> np.ndarray:
    """The resampler's 2-D sin-cos position table (height, width, embed_dim), in float32 as theirs."""
    grid = np.stack(np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)), axis=0)

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float32)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("hw,d->hwd", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=-1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=-1)


class Resampler(nn.Module):
    """Perceiver resampler: learned queries, one cross-attention, LayerNorm, projection."""

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_post = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Parameter(torch.zeros(embed_dim, embed_dim))
        self._tables: dict[tuple[int, int], torch.Tensor] = {}

    def _positions(self, h: int, w: int) -> torch.Tensor:
        table = self._tables.get((h, w))
        if table is None:
            table = torch.from_numpy(sincos_2d(self.embed_dim, h, w)).float().reshape(h * w, -1)
            self._tables[(h, w)] = table
        return table

    def forward(self, x: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape[:2]
        dtype, device = x.dtype, x.device
        sizes = tgt_sizes.tolist()
        pad = torch.zeros((batch, length), dtype=torch.bool, device=device)
        pos = torch.zeros((batch, length, self.embed_dim), dtype=dtype, device=device)
        for row, (h, w) in enumerate(sizes):
            pos[row, : h * w] = self._positions(h, w).to(device=device, dtype=dtype)
            pad[row, h * w :] = True
        x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # L, B, D
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, batch, 1)  # Q, B, D
        out = self.attn(q, x + pos.permute(1, 0, 2), x, key_padding_mask=pad, need_weights=False)[0]
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj


class MiniCPM26Model(PreTrainedModel, GenerationMixin):
    config_class = MiniCPM26Config
    base_model_prefix = ""
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["Qwen2DecoderLayer", "Idefics2EncoderLayer"]
    # MiniCPM-o's audio encoder, audio projection and speech decoder: not built, not loaded
    _keys_to_ignore_on_load_unexpected = [r"^apm\.", r"^audio_", r"^tts\."]

    def __init__(self, config: MiniCPM26Config):
        super().__init__(config)
        self.llm = Qwen2ForCausalLM(config.text_config)
        self.vpm = NavitVisionTower(config.vision_config)
        hidden = config.text_config.hidden_size
        self.resampler = Resampler(config.query_num, hidden, hidden // 128 or 1, config.vision_config.hidden_size)
        # set by the engine: the tokens that open and close a picture's or a slice's query tokens
        self.opening_ids: tuple[int, ...] = ()
        self.closing_ids: tuple[int, ...] = ()
        self.post_init()

    def _init_weights(self, module):
        # every weight comes from the checkpoint; nothing to initialise beyond torch's defaults
        return

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self):
        return self.llm.get_output_embeddings()

    def picture_features(self, pixel_values: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        """(slices, query_num, hidden): the resampled features of every slice, in order."""
        step = max(1, int(self.config.vision_batch_size))
        dtype = self.resampler.query.dtype
        out = []
        for start in range(0, pixel_values.shape[0], step):
            sizes = tgt_sizes[start : start + step]
            width = int((sizes[:, 0] * sizes[:, 1]).max()) * self.config.vision_config.patch_size
            pixels = pixel_values[start : start + step, :, :, :width]
            hidden = self.vpm(pixels, sizes).to(dtype)
            out.append(self.resampler(hidden, sizes))
        return torch.cat(out, dim=0)

    def bounds(self, ids: list[int]) -> list[tuple[int, int]]:
        """(first, end) of each run of query tokens, in order (their image_bound)."""
        starts = [i + 1 for i, t in enumerate(ids) if t in self.opening_ids]
        ends = [i for i, t in enumerate(ids) if t in self.closing_ids]
        return list(zip(starts, ends))

    def embed(self, input_ids: torch.Tensor, pixel_values=None, tgt_sizes=None) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        if pixel_values is None or tgt_sizes is None or pixel_values.shape[0] == 0:
            return embeds
        features = self.picture_features(pixel_values, tgt_sizes).to(embeds.dtype)
        k = 0
        for row in range(input_ids.shape[0]):
            for first, end in self.bounds(input_ids[row].tolist()):
                if k >= features.shape[0] or end - first != features.shape[1]:
                    continue
                embeds[row, first:end] = features[k]
                k += 1
        return embeds

    def forward(self, input_ids=None, pixel_values=None, tgt_sizes=None, attention_mask=None, position_ids=None,
                cache=None, past_key_values=None, inputs_embeds=None, use_cache=None, logits_to_keep=0, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values, tgt_sizes)
        # transformers renamed past_key_values to cache in 5.x; hand it on under the name this one takes
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            kwargs["cache" if _LLM_TAKES_CACHE else "past_key_values"] = cache
        return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, tgt_sizes=None, is_first_iteration=False,
                                      **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        # the pictures go in with the prompt; later steps see only the new token
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["tgt_sizes"] = tgt_sizes
        return model_inputs
