"""Tokenisation for feature extraction: prompt templates, truncation inside them, label tokens.

Liu et al. (2024) wrap every input, ID and OOD alike, in ``### Input:\\n{text}\\n\\n### Output:\\n``
and read the hidden state and the next-token logits at the prompt's last token. Truncating the
whole prompt on the right (as their 20NG runs do at 600 tokens, pitfall 8 of the paper digest)
cuts the ``### Output:`` suffix off long documents, so the "last token" silently becomes a content
token. Here the template's prefix and suffix are tokenised once and only the text's own tokens
are truncated, so every sequence ends with the suffix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Template", "encode", "label_token_ids", "label_word_ids", "special_frame"]

Encoded = dict[str, list[list[int]]]


@dataclass(frozen=True)
class Template:
    """A prompt with one ``{text}`` slot, split into the ``prefix`` and ``suffix`` around it."""

    prefix: str
    suffix: str

    @classmethod
    def parse(cls, template: str) -> Template:
        """Split ``template`` at its single ``{text}`` placeholder.

        Raises
        ------
        ValueError
            If ``{text}`` is missing or occurs more than once.
        """
        if not isinstance(template, str) or template.count("{text}") != 1:
            raise ValueError(
                f"template must contain '{{text}}' exactly once, got {template!r}"
            )
        prefix, suffix = template.split("{text}")
        return cls(prefix, suffix)

    def format(self, text: str) -> str:
        """The prompt for ``text`` (as a string; :func:`encode` works on token ids)."""
        return self.prefix + text + self.suffix


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def special_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (BOS; ``[CLS]``/``[SEP]``).

    Read from the special-tokens mask of a probe text, so it works for any tokenizer.
    """
    probe = tokenizer("a b", add_special_tokens=True, return_special_tokens_mask=True)
    ids, mask = list(probe["input_ids"]), list(probe["special_tokens_mask"])
    content = [i for i, m in enumerate(mask) if not m]
    if not content:  # the probe is all special: assume no frame
        return [], []
    return ids[: content[0]], ids[content[-1] + 1 :]


def encode(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    template: Template | None = None,
) -> tuple[Encoded, int]:
    """Token ids for ``texts`` (no padding), with the template and special tokens.

    Without a template the tokenizer truncates on the right as usual. With one, the sequence is
    ``frame_start + prefix + text[:budget] + suffix + frame_end``, where the text's tokens are cut
    to ``budget = max_length - len(frame) - len(prefix) - len(suffix)``, so the suffix survives.

    Returns
    -------
    (encoded, n_trailing)
        ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the model takes them), and
        the number of special tokens after the text or suffix (the model's "output position" is
        ``len(ids) - 1 - n_trailing``).
    """
    lead, trail = special_frame(tokenizer)
    names = set(getattr(tokenizer, "model_input_names", ())) | {"input_ids", "attention_mask"}
    if not texts:
        return {"input_ids": [], "attention_mask": []}, len(trail)
    if template is None:
        raw = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
        encoded = {key: [list(v) for v in value] for key, value in raw.items() if key in names}
        encoded.setdefault("attention_mask", [[1] * len(ids) for ids in encoded["input_ids"]])
        return encoded, len(trail)
    prefix, suffix = _ids(tokenizer, template.prefix), _ids(tokenizer, template.suffix)
    budget = max_length - len(lead) - len(trail) - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for text: the template takes "
            f"{len(prefix) + len(suffix)} tokens and special tokens {len(lead) + len(trail)}"
        )
    bodies = tokenizer(list(texts), add_special_tokens=False, padding=False)["input_ids"]
    ids = [lead + prefix + list(body[:budget]) + suffix + trail for body in bodies]
    encoded = {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}
    if "token_type_ids" in names:
        encoded["token_type_ids"] = [[0] * len(row) for row in ids]
    return encoded, len(trail)


def label_word_ids(
    tokenizer: PreTrainedTokenizerBase, word: str, template: Template | None = None
) -> list[int]:
    """The token ids of ``word`` as the model would emit it right after the prompt.

    The word is tokenised in context, ``suffix + word``, and the tokens after the suffix's own
    tokens are kept (the paper's CLINC rule ``tokenizer('### Output:\\n' + label)[5:]``). This
    gets leading-space handling right for BPE and SentencePiece tokenizers. Without a template,
    or when the word merges with the end of the suffix (with a warning), the word is tokenised on
    its own (give ``" word"`` if a space should precede it).

    Raises
    ------
    ValueError
        If the word tokenises to no tokens.
    """
    suffix = template.suffix if template is not None else ""
    context = _ids(tokenizer, suffix)
    ids = _ids(tokenizer, suffix + word)
    if len(ids) > len(context) and ids[: len(context)] == context:
        return ids[len(context):]
    alone = _ids(tokenizer, word)
    if not alone:
        raise ValueError(f"label word {word!r} tokenises to no tokens")
    warnings.warn(
        f"label word {word!r} merges with the end of the template suffix {suffix!r} when "
        "tokenised in context; using the tokens of the word on its own",
        stacklevel=3,
    )
    return alone


def label_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    label_words: Sequence[str],
    template: Template | None = None,
) -> list[int]:
    """The first sub-token of each label word as the model would emit it after the prompt
    (:func:`label_word_ids`).

    Raises
    ------
    ValueError
        If two labels share a first token (the paper paraphrases CLINC labels for this reason).
    """
    firsts = [label_word_ids(tokenizer, word, template)[0] for word in label_words]
    seen: dict[int, str] = {}
    for word, token in zip(label_words, firsts, strict=True):
        if token in seen:
            piece = tokenizer.convert_ids_to_tokens(token)
            raise ValueError(
                f"label words {seen[token]!r} and {word!r} share their first token {piece!r} "
                f"(id {token}); MSP/energy need a unique first token per label, so rephrase one"
            )
        seen[token] = word
    return firsts
