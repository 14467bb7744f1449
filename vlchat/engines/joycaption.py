"""JoyCaption (a LLaVA-architecture captioner on Llama 3.1): system prompt and string-content template.

JoyCaption's own example renders the conversation with plain string contents and a system prompt
("You are a helpful image captioner."), then hands the text and the pictures to the processor. Its
template already opens with <|begin_of_text|>, so the text is tokenized without adding special
tokens again: a second BOS measurably worsens its captions. Pictures go in as the processor's image
token at the start of the turn they were added in, unless the template puts one there itself.

A JoyCaption folder is a plain ``llava`` model to transformers, so a folder given by path is known
by what it is: a LLaVA whose chat template is Llama 3's header format over string contents only
(it never looks at a content item's type, so it cannot place a picture by itself).
"""

from __future__ import annotations

import json
from typing import Any

from vlchat.core.conversation import Conversation
from vlchat.engines.base import GenerationError
from vlchat.engines.transformers import TransformersEngine

SYSTEM_PROMPT = "You are a helpful image captioner."


def chat_template(source: str) -> str | None:
    """The model's chat template as its folder stores it (processor file first, then the tokenizer's)."""
    from vlchat.engines.novideo import model_file

    try:
        path = model_file(source, "chat_template.jinja", {"local_files_only": True})
        if path is not None:
            return path.read_text(encoding="utf-8")
        for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
            path = model_file(source, name, {"local_files_only": True})
            if path is None:
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
            template = data.get("chat_template") if isinstance(data, dict) else None
            if isinstance(template, list):  # named templates: the default one
                template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
            if isinstance(template, str):
                return template
    except (OSError, ValueError):
        return None
    return None


def is_joycaption(source: str, config: dict[str, Any] | None) -> bool:
    """A LLaVA folder whose template is Llama 3's header format over string contents: JoyCaption's shape."""
    if not config or config.get("model_type") != "llava":
        return False
    template = chat_template(source)
    if not template or "<|start_header_id|>" not in template:
        return False
    return not any(probe in template for probe in ("'type'", '"type"', ".type"))


class JoyCaptionEngine(TransformersEngine):
    def describe(self):
        from dataclasses import replace

        return replace(super().describe(), family="joycaption")

    def _image_token(self) -> str:
        return getattr(self.processor, "image_token", None) or "<image>"

    def _template_adds_image(self) -> bool:
        """Some JoyCaption template revisions put the image token in the first user turn themselves."""
        probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
        text = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        return self._image_token() in text

    def render(self, conversation: Conversation) -> tuple[str, list[Any]]:
        """The prompt text and the pictures in the order their tokens appear in it."""
        token = self._image_token()
        template_adds = self._template_adds_image()
        messages: list[dict[str, str]] = []
        pictures: list[Any] = []
        if conversation.system is None:
            messages.append({"role": "system", "content": SYSTEM_PROMPT})
        first_user = True
        for message in conversation.for_model().messages:  # unanswered questions left out
            text = message.text
            if message.role == "user" and message.images:
                refs = message.images
                if template_adds and first_user:
                    # the template's one token stands for this turn's first picture
                    extra = refs[1:]
                else:
                    extra = refs
                text = token * len(extra) + ("\n" if extra else "") + text
                pictures.extend(self._picture(ref) for ref in refs)
            elif message.role == "user" and template_adds and first_user:
                raise GenerationError(
                    f"{self.name} wants its picture in the first question",
                    "start the conversation with a picture (/image PATH, then ask)",
                )
            if message.role == "user":
                first_user = False
            messages.append({"role": message.role, "content": text})
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt, pictures

    def prepare(self, conversation: Conversation) -> dict[str, Any]:
        self.require_question(conversation)
        prompt, pictures = self.render(conversation)
        inputs = self.processor(
            text=[prompt], images=pictures or None, return_tensors="pt", add_special_tokens=False
        )
        return self.on_device(inputs)
