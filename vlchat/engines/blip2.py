"""BLIP-2 and InstructBLIP: no chat template, one picture, a 512-token window.

These models were trained on single questions, so a conversation is rendered as the chain their
authors show for chat-style prompting (LAVIS README, "prompt with context"):

    Question: which city is this? Answer: singapore. Question: why? Answer:

An empty question with no history asks for a plain caption (the picture alone, no text). The
Q-Former sees one picture: the latest one in the conversation. OPT and Flan-T5 were trained with a
short text window, so the chain keeps the newest turns that fit in CONTEXT tokens (picture queries,
prompt and room for the answer together) and drops the oldest; the stream's stats say so in
``notice`` for the app to show. InstructBLIP's processor also gives the same text to the Q-Former,
tokenized again with its own BERT tokenizer into a window of 512 positions of its own; code and
punctuation take far more BERT tokens than language-model tokens, so its chain must fit both.
"""

from __future__ import annotations

from typing import Any

from vlchat.core.conversation import Conversation, GenerationParams
from vlchat.engines.base import ContextTooLongError, GenerationError
from vlchat.engines.transformers import TransformersEngine

CONTEXT = 512  # BLIP-2's text window, whatever the language model's own maximum
ANSWER_ROOM = 64  # tokens kept free for the answer when older turns have to go
FAMILIES = ("blip-2", "blip_2", "instructblip")


def _sentence(text: str) -> str:
    """An earlier answer closes with a full stop, as in the authors' template "Answer: {}."."""
    text = " ".join(text.split())
    return text if not text or text[-1] in ".!?" else text + "."


def qa_pairs(conversation: Conversation) -> tuple[list[tuple[str, str]], str]:
    """(earlier question, its answer) pairs and the question to answer now."""
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for message in conversation.messages:
        if message.role == "user":
            if question is not None:  # a question left unanswered (stopped, failed): keep it, answer empty
                pairs.append((question, ""))
            question = " ".join(message.text.split())
        elif message.role == "assistant" and question is not None:
            pairs.append((question, _sentence(message.text)))
            question = None
    return pairs, question or ""


def render_chain(pairs: list[tuple[str, str]], question: str) -> str:
    """The exact prompt text: earlier turns, then the open question. Empty when only a caption is asked."""
    if not pairs and not question:
        return ""
    parts = [f"Question: {q} Answer: {a}".rstrip() for q, a in pairs]
    parts.append(f"Question: {question} Answer:")
    return " ".join(parts)


def fit_chain(
    pairs: list[tuple[str, str]], question: str, count_tokens, budget: int
) -> tuple[str, int]:
    """The longest chain, dropping oldest turns first, whose prompt is at most ``budget`` tokens.

    Returns the prompt and how many turns were dropped. ``count_tokens(text)`` counts the text
    tokens of a prompt (the picture's query tokens are already out of ``budget``).
    """
    return fit_chain_within(pairs, question, lambda prompt: count_tokens(prompt) <= budget)


def fit_chain_within(pairs: list[tuple[str, str]], question: str, fits) -> tuple[str, int]:
    """The longest chain, dropping oldest turns first, for which ``fits(prompt)`` holds."""
    for dropped in range(len(pairs) + 1):
        prompt = render_chain(pairs[dropped:], question)
        if fits(prompt):
            return prompt, dropped
    raise ContextTooLongError(
        f"the question alone is longer than this model's {CONTEXT}-token window",
        "ask a shorter question",
    )


class Blip2Engine(TransformersEngine):
    """TransformersEngine with the Question/Answer chain instead of a chat template."""

    # The prompt holds only the last picture and drops old turns to fit: no stable prefix to reuse.
    prefix_reuse = False
    dropped_turns = 0

    def context_length(self) -> int | None:
        own = super().context_length()
        return min(CONTEXT, own) if own else CONTEXT

    def _query_tokens(self) -> int:
        return int(getattr(self.model.config, "num_query_tokens", 32) or 32)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _qformer_fits(self):
        """Whether a prompt fits the Q-Former's own text window (InstructBLIP); None for BLIP-2."""
        tokenizer = getattr(self.processor, "qformer_tokenizer", None)
        if tokenizer is None:
            return None
        config = getattr(self.model.config, "qformer_config", None)
        limit = int(getattr(config, "max_position_embeddings", CONTEXT) or CONTEXT)
        return lambda prompt: len(tokenizer(prompt, add_special_tokens=True)["input_ids"]) <= limit

    def prompt_for(self, conversation: Conversation, max_new_tokens: int = ANSWER_ROOM) -> tuple[str, int]:
        """The prompt text for the conversation and the number of oldest turns left out."""
        pairs, question = qa_pairs(conversation)
        budget = CONTEXT - self._query_tokens() - min(max_new_tokens, ANSWER_ROOM)
        qformer_fits = self._qformer_fits()
        if qformer_fits is None:
            return fit_chain(pairs, question, self._count, budget)
        return fit_chain_within(pairs, question, lambda prompt: self._count(prompt) <= budget and qformer_fits(prompt))

    answer_room = ANSWER_ROOM

    def _load_processor(self, source: str, kwargs: dict[str, Any]):
        from transformers import AutoConfig

        if getattr(AutoConfig.from_pretrained(source, **kwargs), "model_type", None) == "instructblip":
            # As InstructBLIP's model card does: its published processor_config.json names the
            # video processor (InstructBlipVideoProcessor), which AutoProcessor builds only with
            # torchvision, and which is not the processor for pictures
            from transformers import InstructBlipProcessor

            return InstructBlipProcessor.from_pretrained(source, **kwargs)
        return super()._load_processor(source, kwargs)

    def load(self, progress=None) -> None:
        super().load(progress)
        token = getattr(self.processor, "image_token", None)
        if isinstance(token, str):
            # transformers 5.23's BLIP processors take the tokenizer's image token as a plain string
            # when the tokenizer names one, then read its ``.content``: give them the object they expect
            from tokenizers import AddedToken

            self.processor.image_token = AddedToken(token, normalized=False, special=True)

    def prepare(self, conversation: Conversation) -> dict[str, Any]:
        self.require_question(conversation)
        pictures = conversation.images()
        if not pictures:
            raise GenerationError(
                f"{self.name} answers about a picture, and this conversation has none",
                "add one with /image PATH",
            )
        prompt, self.dropped_turns = self.prompt_for(conversation, self.answer_room)
        inputs = self.processor(images=self._picture(pictures[-1]), text=prompt, return_tensors="pt")
        return self.on_device(inputs)

    def stream(self, conversation: Conversation, params: GenerationParams, cancel=None):
        self.answer_room = min(params.validate().max_new_tokens, ANSWER_ROOM)
        stream = super().stream(conversation, params, cancel)
        if self.dropped_turns:
            turns = "turn" if self.dropped_turns == 1 else "turns"
            stream.stats.notice = (
                f"{self.name} reads only {CONTEXT} tokens: the oldest {self.dropped_turns} {turns} "
                "of this conversation were left out of its prompt"
            )
        return stream
