"""Picture-aware reuse of the key/value cache: the last turn's cache serves as the start of the next
prompt where its tokens repeat, and pictures already in the cache are not encoded again.

``PrefixReuse`` holds TransformersEngine's reuse methods (transformers.py); families with another
picture layout override ``picture_runs`` and ``drop_pictures`` (or ``_cut_outside_pictures``).
"""

from __future__ import annotations

from typing import Any


def cache_argument() -> str:
    """The name generate() takes a key/value cache by: ``cache`` since transformers 5.x deprecated
    ``past_key_values`` (removed in 6), the old name where the installed version predates it."""
    import inspect

    from transformers import GenerationMixin

    return "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"


def generated_cache(out: Any) -> Any:
    """The key/value cache a generate() output holds, under either name (reading the old one warns)."""
    cache = out.get("cache")
    return out.get("past_key_values") if cache is None else cache


class PrefixReuse:
    """TransformersEngine's cache reuse, on the engine's ``_kept`` (the last turn's ids, cache and
    pictures), ``kv_cache_reuse``, ``prefix_reuse``, ``model``, ``processor`` and ``tokenizer``."""

    def _reuse_prefix(self, kwargs: dict[str, Any], pictures: list[str]) -> int:
        """Let generation start from the kept cache where the new prompt repeats what it holds.

        The longest common prefix of token ids with the last turn (its prompt and its answer) is
        kept; the cache is cropped to it and generate() runs only the new tokens. A picture whose
        tokens lie wholly inside the prefix is not encoded again: only the pictures after the cut
        go to the model. The cut never falls inside a picture's tokens, nor after a picture the
        cache did not see. Returns how many tokens were reused (0: a full prefill).
        """
        kept, self._kept = self._kept, None  # this generation will change the cache: never reuse it twice
        if not (self.kv_cache_reuse and self.prefix_reuse) or kept is None:
            return 0
        ids = kwargs["input_ids"]
        if ids.shape[0] != 1:
            return 0
        new_ids = ids[0].tolist()
        kept_ids, cache, kept_pictures = kept
        limit = min(len(kept_ids), cache.get_seq_length(), len(new_ids) - 1)  # at least one token to run
        n = 0
        while n < limit and kept_ids[n] == new_ids[n]:
            n += 1
        same = lambda i: i < min(len(pictures), len(kept_pictures)) and pictures[i] == kept_pictures[i]  # noqa: E731
        n = self._cut_outside_pictures(new_ids, n, kwargs, same=same)
        if n <= 0:
            return 0
        extra = cache.get_seq_length() - n
        if extra > 0:
            cache.crop(-extra)  # a negative count removes that many from the end, in every 4.x and 5.x
        kwargs[cache_argument()] = cache
        return n

    def _cut_outside_pictures(self, ids: list[int], n: int, kwargs: dict[str, Any], same=lambda _i: True) -> int:
        """Move the cut before any picture it would split or that is not the cached one, and take the
        pictures before it out of the model's inputs (picture_runs and drop_pictures say how).

        ``same(i)`` says whether the i-th picture of the prompt is the picture the cache saw there:
        every picture has the same placeholder tokens, so equal ids do not mean equal pictures.
        """
        if kwargs.get("pixel_values") is None:
            return n
        spans = self.picture_runs(ids, kwargs)
        if spans is None:
            return 0  # pictures whose tokens cannot be found: nothing is safe to reuse
        for i, runs in enumerate(spans):
            start, end = runs[0][0], runs[-1][1]
            if start < n and (n < end or not same(i)):
                n = start
                break
        before = sum(1 for runs in spans if runs[-1][1] <= n)
        if before and not self.drop_pictures(kwargs, spans, before):
            n = min(n, spans[0][0][0])  # this layout of pixels is not known: encode every picture
        return n

    def picture_token(self) -> int | None:
        config = getattr(self.model, "config", None)
        token = getattr(config, "image_token_id", None)
        return getattr(config, "image_token_index", None) if token is None else token

    def picture_runs(self, ids: list[int], inputs: dict[str, Any]) -> list[list[tuple[int, int]]] | None:
        """Each picture's runs of image tokens in the prompt, in order: (start, end) of each run.

        A picture the processor cuts into tiles (Idefics3/SmolVLM) has one run per tile, separated
        by row and column tokens; its last run is the whole picture's, after the global-image tag.
        A family with another layout overrides this and drop_pictures (or _cut_outside_pictures
        whole); None: not known.
        """
        token = self.picture_token()
        if token is None:
            return None
        runs: list[tuple[int, int]] = []
        start = None
        for i, t in enumerate(ids):
            if t == token and start is None:
                start = i
            elif t != token and start is not None:
                runs.append((start, i))
                start = None
        if start is not None:
            runs.append((start, len(ids)))
        # Markers of a picture's first run (MiniCPM-V: <image>..</image> then a <slice> run per slice)
        # or of its last (Idefics3: the global picture, after <global-img>, ends it).
        first = None
        last: list[int] = []  # the tokens of the global-image tag (one token, or text where it is no token)
        if getattr(self.processor, "slice_start_token", None):
            first = self.tokenizer.convert_tokens_to_ids(self.processor.image_start_token)
        elif getattr(self.processor, "global_image_tag", None):
            last = self.tokenizer.encode(self.processor.global_image_tag, add_special_tokens=False)

        def after_tag(run: tuple[int, int]) -> bool:
            return bool(last) and run[0] >= len(last) and ids[run[0] - len(last):run[0]] == last

        if first is not None and first not in ids or first is None and not any(map(after_tag, runs)):
            return [[run] for run in runs]
        pictures: list[list[tuple[int, int]]] = []
        opening = True
        for run in runs:
            before = ids[run[0] - 1] if run[0] > 0 else None
            if opening or (first is not None and before == first):
                pictures.append([])
            pictures[-1].append(run)
            opening = after_tag(run)
        return pictures

    def drop_pictures(self, kwargs: dict[str, Any], spans: list[list[tuple[int, int]]], count: int) -> bool:
        """Take the first ``count`` pictures out of the processor's inputs (their tokens are in the
        cache), so the vision tower sees only the new ones; False where the layout is not known.

        Layouts: one row of ``pixel_values`` per picture (LLaVA, LLaVA-NeXT with ``image_sizes``);
        Qwen-VL's patches in one sequence, ``image_grid_thw`` rows saying how many are each
        picture's; Idefics3's tiles along the second dimension (one per run of image tokens);
        MiniCPM-V 4.6's slices side by side (one per run).
        Where a model's positions depend on its pictures (Qwen-VL's 3-D rope), the positions of the
        whole prompt are computed first, with every picture, as generate() would without a cache.
        """
        import torch

        pixels = kwargs["pixel_values"]
        if "image_grid_thw" in kwargs:
            grids = kwargs["image_grid_thw"]
            if grids.shape[0] != len(spans) or not self._whole_prompt_positions(kwargs):
                return False
            rows = int(grids[:count].prod(-1).sum())
            kwargs["pixel_values"], kwargs["image_grid_thw"] = pixels[rows:], grids[count:]
        elif "pixel_attention_mask" in kwargs and pixels.dim() == 5 and pixels.shape[0] == 1:
            tiles = sum(len(runs) for runs in spans[:count])
            if pixels.shape[1] != sum(len(runs) for runs in spans):
                return False
            kwargs["pixel_values"] = pixels[:, tiles:]
            kwargs["pixel_attention_mask"] = kwargs["pixel_attention_mask"][:, tiles:]
        elif pixels.shape[0] == len(spans) and all(
            getattr(kwargs.get(key), "shape", (len(spans),))[0] == len(spans) for key in ("image_sizes",)
        ):
            for key in ("pixel_values", "image_sizes"):
                if kwargs.get(key) is not None:
                    kwargs[key] = kwargs[key][count:]
        elif "target_sizes" in kwargs and pixels.dim() == 4 and pixels.shape[0] == 1:
            # MiniCPM-V 4.6: every slice's patches side by side along the width, its grid in target_sizes
            sizes, patch = kwargs["target_sizes"], pixels.shape[2]
            slices = sum(len(runs) for runs in spans[:count])
            if sizes.shape[0] != sum(len(runs) for runs in spans) or int(sizes.prod(-1).sum()) * patch != pixels.shape[-1]:
                return False
            kwargs["pixel_values"] = pixels[..., int(sizes[:slices].prod(-1).sum()) * patch :]
            kwargs["target_sizes"] = sizes[slices:]
        else:
            return False
        left = kwargs["pixel_values"]
        if not isinstance(left, torch.Tensor) or left.numel() == 0 or count == len(spans):
            for key in ("pixel_values", "image_sizes", "image_grid_thw", "pixel_attention_mask", "target_sizes"):
                kwargs.pop(key, None)
        return True

    def _whole_prompt_positions(self, kwargs: dict[str, Any]) -> bool:
        """Position ids of the whole prompt, as the model computes them from all its pictures,
        passed to generate() so that dropping the cached pictures' inputs cannot change them."""
        from transformers import GenerationMixin

        own = getattr(type(self.model), "_prepare_position_ids_for_generation", None)
        if own is None or own is GenerationMixin._prepare_position_ids_for_generation:
            return True  # plain positions: 0, 1, 2... whatever the pictures
        model_kwargs = {k: v for k, v in kwargs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids",
                                                                  "image_grid_thw", "video_grid_thw")}
        try:
            kwargs["position_ids"] = self.model._prepare_position_ids_for_generation(kwargs["input_ids"], model_kwargs)
        except Exception:  # a version of transformers that computes them otherwise: no picture is reused
            return False
        return True

    def drop_cache(self) -> None:
        """Forget the kept cache (its memory is needed, or the model is going away)."""
        self._kept = None
