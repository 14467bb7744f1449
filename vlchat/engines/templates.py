"""Rendering a model's chat template, with one clear line when the template cannot be used.

transformers renders chat templates in a jinja2 sandbox. A template that reaches for what the
sandbox blocks (``''.__class__`` and the like: a hostile or broken model folder), or that gives up
on the conversation itself with ``raise_exception`` (roles that must alternate, no system turn),
raises a jinja2 TemplateError; that is the model's doing, not a bug of vlchat's.
"""

from __future__ import annotations

from typing import Any

from vlchat.core.text import clean
from vlchat.engines.base import GenerationError


def apply_template(processor: Any, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    """``processor.apply_chat_template(messages, **kwargs)``; a template error is a GenerationError."""
    from jinja2.exceptions import TemplateError

    try:
        return processor.apply_chat_template(messages, **kwargs)
    except TemplateError as error:
        reason = " ".join(clean(str(error), keep_newlines=False).split())[:300] or type(error).__name__
        raise GenerationError(
            f"the model's chat template could not be used: {reason.rstrip('.')}",
            "the model folder's chat template is broken or unsafe; use another model or fix its chat_template",
        ) from None
