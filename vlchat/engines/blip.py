"""BLIP (the first one): a captioner, and a model that answers one question about one picture.

Captioning checkpoints (``Salesforce/blip-image-captioning-base/-large``, BlipForConditionalGeneration)
work as their model card shows: the picture alone gives a plain caption; a text gives a caption that
continues it ("a photography of" -> "a photography of a woman sitting on the beach"), and the
answer is the whole decoded output, text included, as the card prints it. They cannot answer
questions: a question (text ending in "?") gets the plain caption, and the stream's notice says what
the model can do. Question-answering checkpoints (``Salesforce/blip-vqa-base``,
BlipForQuestionAnswering) answer the latest question about the latest picture; neither kind has a
chat template or reads earlier turns.

``vlchat caption`` batches both: one processor call for the pictures, one generate call.
"""

from __future__ import annotations

from typing import Any, Sequence

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.core.text import clean
from vlchat.engines.base import GenerationError
from vlchat.engines.transformers import TransformersEngine

FAMILY = "blip"


def is_question(text: str) -> bool:
    return text.strip().endswith("?")


class BlipEngine(TransformersEngine):
    """BlipForConditionalGeneration (captions) or BlipForQuestionAnswering (answers), by its config."""

    prefix_reuse = False  # one picture and one text at a time: nothing carries over between turns
    notice: str | None = None

    @property
    def answers_questions(self) -> bool:
        if self.model is not None:
            return type(self.model).__name__ == "BlipForQuestionAnswering"
        from vlchat.engines.remote import read_config

        # before loading: what its config.json says (a hub model not downloaded yet counts as a captioner)
        config = read_config(self.spec.source) or {}
        return "BlipForQuestionAnswering" in (config.get("architectures") or [])

    @property
    def captions_without_text(self) -> bool:
        """A plain caption is what this model gives for no text (`ask` with an empty question)."""
        return not self.answers_questions

    @property
    def answer_includes_prompt(self) -> bool:
        # The card decodes the whole output of a captioner, the text it was given included.
        return not self.answers_questions

    def model_loader(self):
        if self.answers_questions:
            from transformers import BlipForQuestionAnswering

            return BlipForQuestionAnswering
        from transformers import BlipForConditionalGeneration

        return BlipForConditionalGeneration

    def text_for(self, question: str) -> tuple[str | None, str | None]:
        """The text the processor gets for this question, and a notice for the person (or None)."""
        question = " ".join(question.split())
        if self.answers_questions:
            if not question:
                raise GenerationError(f"{self.name} answers questions about the picture", "ask one")
            return question, None
        if is_question(question):
            return None, (
                f"{self.name} writes captions and cannot answer questions: this is its caption of the latest "
                "picture (a text that is not a question starts the caption; blip-vqa answers questions)"
            )
        return question or None, None

    def inputs_for(self, images: Sequence[Any], texts: Sequence[str | None]) -> Any:
        """The processor's output for pictures and their texts, as the model card calls it."""
        kwargs: dict[str, Any] = {"images": list(images), "return_tensors": "pt"}
        if any(texts):
            if len(set(texts)) > 1:
                kwargs["padding"] = True
            kwargs["text"] = [t or "" for t in texts]
        inputs = self.processor(**kwargs)
        if "input_ids" not in inputs:
            # no text: the captioner starts from its BOS alone, as its generate() does without input_ids;
            # kept here for counting, and left out again in generation_kwargs
            import torch

            bos = self.model.config.text_config.bos_token_id
            inputs["input_ids"] = torch.full((len(images), 1), bos, dtype=torch.long)
        return self.on_device(inputs)

    def prepare(self, conversation: Conversation) -> dict[str, Any]:
        self.require_question(conversation)
        pictures = conversation.images()
        if not pictures:
            raise GenerationError(
                f"{self.name} describes a picture, and this conversation has none", "add one with /image PATH"
            )
        text, self.notice = self.text_for(conversation.messages[-1].text)
        return self.inputs_for([self._picture(pictures[-1])], [text])

    def generation_kwargs(self, inputs: dict[str, Any], params: GenerationParams) -> dict[str, Any]:
        kwargs = super().generation_kwargs(inputs, params)
        kwargs.pop("pad_token_id", None)  # BLIP's generate() passes its own (and its end token)
        if not self.answers_questions and kwargs["input_ids"].shape[-1] == 1:
            # the BOS put in by prepare() for the count: generate() adds its own
            kwargs.pop("input_ids")
            kwargs.pop("attention_mask", None)
        return kwargs

    def stream(self, conversation: Conversation, params: GenerationParams, cancel=None):
        stream = super().stream(conversation, params, cancel)
        if self.notice:
            stream.stats.notice = clean(self.notice, keep_newlines=False)
        return stream

    # -- batches for `vlchat caption` -------------------------------------------------------------
    def batch_inputs(self, images: Sequence[Any], prompts: Sequence[str]) -> Any:
        texts = [self.text_for(prompt)[0] for prompt in prompts]
        return self.inputs_for(images, texts)

    def batch_outputs(self, out: Any, inputs: Any) -> list[tuple[list[int], int]]:
        """Per picture: the ids to decode (up to the end token) and how many of them the model wrote."""
        end = self.model.config.text_config.sep_token_id
        # a captioner's output repeats its text (BOS in place of [CLS], without [SEP]); an answer does not
        start = 0 if self.answers_questions else max(int(inputs["input_ids"].shape[-1]) - 1, 1)
        rows = []
        for row in out.tolist():
            stop = next((i for i in range(max(start, 1), len(row)) if row[i] == end), len(row))
            rows.append((row[:stop], stop - start if not self.answers_questions else max(stop - 1, 0)))
        return rows
