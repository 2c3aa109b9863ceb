"""Generative and discriminative LoRA fine-tuning with the paper's recipe.

Generative (Liu et al. 2024, ``run_gen.py``; §4 of the digest)
    Each example is ``prompt + label tokens + EOS``. The loss is the causal-LM cross-entropy on
    the label tokens and EOS only; prompt tokens are masked:
    ``L = -1/|T| Σ_{t∈T} log p(x_t | x_<t)`` over the target positions ``T`` of the batch.
    Only the hidden states of the positions that predict a target go through the LM head, so the
    ``[batch, seq, vocab]`` logits are never built.
    ID accuracy is greedy generation (at most ``max_new_tokens`` tokens, stopping at EOS), decoded,
    stripped and compared to the label name as an exact string match.
Discriminative (the paper's unused ``LlamaForSequenceClassification``)
    A bias-free linear head ``W ∈ R^{C×d}`` (init N(0, 0.02²), as transformers' score head) on the
    final-layer hidden state of the prompt's last token; loss ``CE(W h_last, y)``; accuracy is
    ``argmax``. It is trained through the same LoRA adapters with the same recipe (the paper gives
    no hyperparameters for it).

Optimisation (both): AdamW (ε 1e-8, weight decay 0.01), learning rate 1e-4 with a linear
schedule and 4% linear warm-up over ``max_epochs`` epochs, batch size 8, no accumulation.
Early stopping as the paper's code: stop once dev accuracy has not improved for more than
``patience`` epochs and more than ``min_epochs`` epochs have run. **Reporting epoch** (the
paper's code logs every epoch and picks none, its pitfall 11): the adapter of the first epoch
with the best dev accuracy, restored at the end of training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, PersistenceError
from ..features import backbone, is_causal_lm, lm_head
from ..features.encode import Template, encode, label_word_ids
from .lora import PAPER_LORA, LoraSettings, attach_lora, trainable_parameters

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["FineTuned", "Objective", "TrainConfig", "fine_tune", "load_fine_tuned"]

Objective = Literal["generative", "discriminative"]
OBJECTIVES: tuple[str, ...] = ("generative", "discriminative")
#: Files of a saved fine-tuning run (peft writes the first two).
ADAPTER_FILE, ADAPTER_CONFIG, HEAD_FILE, META_FILE = (
    "adapter_model.safetensors", "adapter_config.json", "head.safetensors", "fine_tune.json")
_FORMAT = "ood_zoo.fine_tune"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (defaults: the paper's, ``run_gen.py``).

    Attributes
    ----------
    learning_rate, warmup_ratio, weight_decay, adam_epsilon : float
        AdamW with a linear schedule; warm-up is ``ceil(warmup_ratio · steps)`` steps, where
        ``steps = max_epochs · ceil(n_train / batch_size)``.
    batch_size, eval_batch_size : int
        Training and evaluation batch sizes (the paper: 8 or 16, and 16).
    max_epochs, patience, min_epochs : int
        Train at most ``max_epochs`` epochs; stop once the best dev accuracy is more than
        ``patience`` epochs old and more than ``min_epochs`` epochs have run (paper: 50, 6, 15).
    max_length : int
        Tokens per prompt, template included (the text is truncated, never the template).
    max_new_tokens : int
        Greedy generation length for the generative accuracy (paper: 16).
    seed : int
        Seeds the LoRA init, dropout and batch order (the paper fixes it to 5, pitfall 7).
    progress : bool
        Progress bars.
    """

    learning_rate: float = 1e-4
    warmup_ratio: float = 0.04
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    batch_size: int = 8
    eval_batch_size: int = 16
    max_epochs: int = 50
    patience: int = 6
    min_epochs: int = 15
    max_length: int = 512
    max_new_tokens: int = 16
    seed: int = 5
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"learning_rate": self.learning_rate, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "max_epochs": self.max_epochs,
                    "max_new_tokens": self.max_new_tokens}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.patience < 0 or self.min_epochs < 0:
            raise ValueError("weight_decay, patience and min_epochs must be >= 0")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")

    def should_stop(self, epoch: int, best_epoch: int) -> bool:
        """The paper's early stop after ``epoch`` (1-based) with the best dev accuracy at
        ``best_epoch``: ``epoch - best_epoch > patience and epoch > min_epochs``."""
        return epoch - best_epoch > self.patience and epoch > self.min_epochs


# ------------------------------------------------------------------------------- batching
def _pad(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
         ) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _last_hidden(causal_lm: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
    """Final-layer hidden states of the decoder stack (``model.model`` for Llama)."""
    return backbone(causal_lm)(input_ids=ids, attention_mask=mask).last_hidden_state


def _check_data(texts: Sequence[str], labels: Sequence[int] | np.ndarray, n_classes: int,
                what: str) -> np.ndarray:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputError(f"{what} texts must be a sequence of str")
    if len(texts) == 0:
        raise InputError(f"{what} set is empty")
    codes = np.asarray(labels)
    if codes.shape != (len(texts),) or not np.issubdtype(codes.dtype, np.integer):
        raise InputError(f"{what} labels must be {len(texts)} integers, got shape {codes.shape} "
                         f"of {codes.dtype}")
    if codes.min() < 0 or codes.max() >= n_classes:
        raise InputError(f"{what} labels must lie in [0, {n_classes}), got "
                         f"[{codes.min()}, {codes.max()}]")
    return codes.astype(np.int64)


# ------------------------------------------------------------------------------- the result
@dataclass
class FineTuned:
    """A LoRA fine-tuned classifier over ``label_words``, at its reporting epoch.

    Attributes
    ----------
    objective : {"generative", "discriminative"}
    model : peft.PeftModel
        The causal LM with its LoRA adapters.
    tokenizer : transformers tokenizer
    label_words : tuple of str
        Class ``c`` is verbalised as ``label_words[c]``.
    template : str or None
        The prompt (``{text}`` marks the input).
    config : TrainConfig
    lora : LoraSettings
    head : torch.nn.Linear or None
        The classification head (discriminative only), ``[C, d]``, no bias.
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``dev_accuracy``, ``seconds``.
    best_epoch : int
        The reporting epoch (first with the best dev accuracy; 0 = untrained).
    best_dev_accuracy : float
    """

    objective: Objective
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    label_words: tuple[str, ...]
    template: str | None
    config: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings = PAPER_LORA
    head: torch.nn.Linear | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_dev_accuracy: float = math.nan

    # ----------------------------------------------------------------- encoding
    def _prompts(self, texts: Sequence[str]) -> list[list[int]]:
        template = Template.parse(self.template) if self.template else None
        encoded, trailing = encode(texts, self.tokenizer, max_length=self.config.max_length,
                                   template=template)
        if trailing:
            raise InputError(
                "the tokenizer appends special tokens after the text; fine-tuning needs a "
                "causal LM tokenizer whose prompt ends where the answer starts"
            )
        return encoded["input_ids"]

    def _targets(self) -> list[list[int]]:
        template = Template.parse(self.template) if self.template else None
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise InputError("generative fine-tuning needs a tokenizer with an EOS token")
        return [[*label_word_ids(self.tokenizer, w, template), int(eos)]
                for w in self.label_words]

    @property
    def causal_lm(self) -> PreTrainedModel:
        """The wrapped causal LM (its target modules carry the LoRA layers)."""
        return self.model.get_base_model()

    # ----------------------------------------------------------------- training loss
    def loss(self, prompts: Sequence[Sequence[int]], labels: Sequence[int],
             targets: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Mean cross-entropy of one batch (see the module notes for each objective)."""
        device = self.causal_lm.get_input_embeddings().weight.device
        if self.objective == "discriminative":
            logits = self.class_logits_of(prompts)
            return F.cross_entropy(logits, torch.as_tensor(labels, device=logits.device))
        assert targets is not None
        rows = [list(p) + list(targets[c]) for p, c in zip(prompts, labels, strict=True)]
        ids, mask = _pad(rows, _pad_id(self.tokenizer))
        hidden = _last_hidden(self.causal_lm, ids.to(device), mask.to(device))
        row_idx, col_idx, wanted = [], [], []
        for i, (p, c) in enumerate(zip(prompts, labels, strict=True)):
            target = targets[c]
            row_idx += [i] * len(target)
            col_idx += range(len(p) - 1, len(p) - 1 + len(target))
            wanted += target
        picked = hidden[torch.as_tensor(row_idx), torch.as_tensor(col_idx)]
        logits = lm_head(self.causal_lm)(picked).float()
        return F.cross_entropy(logits, torch.as_tensor(wanted, device=logits.device))

    def class_logits_of(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[n, C]`` head logits of encoded prompts (discriminative): ``W h_last``."""
        if self.head is None:
            raise InputError("class logits need the discriminative head")
        device = self.causal_lm.get_input_embeddings().weight.device
        ids, mask = _pad(prompts, _pad_id(self.tokenizer))
        hidden = _last_hidden(self.causal_lm, ids.to(device), mask.to(device))
        last = mask.sum(dim=1).to(device) - 1
        return self.head_logits(hidden[torch.arange(len(prompts), device=device), last])

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits ``W h`` of final-layer last-token features ``[n, d]`` (discriminative)."""
        if self.head is None:
            raise InputError("class logits need the discriminative head")
        weight = self.head.weight
        return features.to(device=weight.device, dtype=torch.float32) @ weight.float().T

    # ----------------------------------------------------------------- inference
    @torch.inference_mode()
    def predict(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Predicted class per text: greedy generation matched exactly against the label words
        (``-1`` when the generation is no label), or the head's argmax."""
        from tqdm.auto import tqdm

        was_training = self.model.training
        self.model.eval()
        prompts = self._prompts(list(texts))
        order = np.argsort([len(p) for p in prompts], kind="stable")
        out = np.full(len(prompts), -1, dtype=np.int64)
        size = self.config.eval_batch_size
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        try:
            for rows in tqdm(batches, desc="predict", unit="batch", disable=not progress):
                chunk = [prompts[i] for i in rows]
                if self.objective == "discriminative":
                    out[rows] = self.class_logits_of(chunk).argmax(dim=1).cpu().numpy()
                else:
                    out[rows] = [self._match(text) for text in self._generate(chunk)]
        finally:
            self.model.train(was_training)
        return out

    def _generate(self, prompts: Sequence[Sequence[int]]) -> list[str]:
        pad = _pad_id(self.tokenizer)
        ids, mask = _pad(prompts, pad, left=True)
        device = self.causal_lm.get_input_embeddings().weight.device
        generated = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
            max_new_tokens=self.config.max_new_tokens, pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new = generated[:, ids.shape[1]:]
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]

    def _match(self, generated: str) -> int:
        try:
            return self.label_words.index(generated)
        except ValueError:
            return -1

    def accuracy(self, texts: Sequence[str], labels: Sequence[int] | np.ndarray, *,
                 progress: bool = False) -> float:
        """Fraction of texts whose prediction is their label (exact match, generative)."""
        codes = _check_data(texts, labels, len(self.label_words), "accuracy")
        return float(np.mean(self.predict(texts, progress=progress) == codes))

    # ----------------------------------------------------------------- export
    def merged(self) -> PreTrainedModel:
        """The LoRA update merged into the base weights: a plain transformers model for feature
        extraction (``W ← W + (α/r) B A``). This consumes the adapters: the :class:`FineTuned`
        cannot be used afterwards. The merged model drops the base weights' file fingerprint, so
        the features cache keys it by its new weights."""
        from ..features.models import FINGERPRINT_ATTR

        model = self.model.merge_and_unload()
        model.eval()
        if hasattr(model, FINGERPRINT_ATTR):
            delattr(model, FINGERPRINT_ATTR)
        self.model = None  # type: ignore[assignment]
        return model

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the adapters (safetensors, by peft), the head and the run's metadata to
        ``directory``, replacing it atomically (a crash leaves the old one or none)."""
        from safetensors.torch import save_file

        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        try:
            self.model.save_pretrained(str(staging), safe_serialization=True)
            if self.head is not None:
                save_file({"weight": self.head.weight.detach().cpu().contiguous()},
                          str(staging / HEAD_FILE))
            meta = {
                "format": _FORMAT, "format_version": 1, "objective": self.objective,
                "label_words": list(self.label_words), "template": self.template,
                "config": asdict(self.config), "lora": self.lora.as_dict(),
                "history": self.history, "best_epoch": self.best_epoch,
                "best_dev_accuracy": self.best_dev_accuracy,
            }
            (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            retired = None
            if target.exists():
                retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
                target.rename(retired)
            staging.rename(target)
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def load_fine_tuned(directory: str | os.PathLike[str], model: PreTrainedModel,
                    tokenizer: PreTrainedTokenizerBase) -> FineTuned:
    """Reload a :meth:`FineTuned.save` directory onto a fresh copy of its base model.

    Raises
    ------
    PersistenceError
        If a file is missing or the metadata is not a fine-tuning run of this format.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    source = Path(directory)
    for name in (ADAPTER_FILE, ADAPTER_CONFIG, META_FILE):
        if not (source / name).is_file():
            raise PersistenceError(f"{source} is not a saved fine-tuning run: {name} is missing")
    try:
        meta = json.loads((source / META_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise PersistenceError(f"{source / META_FILE} is not valid JSON: {exc}") from exc
    if meta.get("format") != _FORMAT or meta.get("format_version") != 1:
        raise PersistenceError(f"{source / META_FILE}: unknown format {meta.get('format')!r} "
                               f"version {meta.get('format_version')!r}")
    if meta.get("objective") not in OBJECTIVES:
        raise PersistenceError(f"{source / META_FILE}: unknown objective {meta.get('objective')!r}")
    peft_model = PeftModel.from_pretrained(model, str(source), is_trainable=False)
    head = None
    if meta["objective"] == "discriminative":
        if not (source / HEAD_FILE).is_file():
            raise PersistenceError(f"{source}: the discriminative head {HEAD_FILE} is missing")
        weight = load_file(str(source / HEAD_FILE))["weight"]
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        head.weight.data.copy_(weight)
    lora = meta["lora"]
    return FineTuned(
        objective=meta["objective"], model=peft_model, tokenizer=tokenizer,
        label_words=tuple(meta["label_words"]), template=meta["template"],
        config=TrainConfig(**meta["config"]),
        lora=LoraSettings(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                          target_modules=tuple(lora["target_modules"])),
        head=head, history=list(meta["history"]), best_epoch=int(meta["best_epoch"]),
        best_dev_accuracy=float(meta["best_dev_accuracy"]),
    )


# ------------------------------------------------------------------------------- training
def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_texts: Sequence[str],
    train_labels: Sequence[int] | np.ndarray,
    dev_texts: Sequence[str],
    dev_labels: Sequence[int] | np.ndarray,
    *,
    label_words: Sequence[str],
    objective: Objective = "generative",
    template: str | None = None,
    lora: LoraSettings = PAPER_LORA,
    config: TrainConfig | None = None,
) -> FineTuned:
    """LoRA fine-tuning of a causal LM as a classifier, with dev-accuracy early stopping.

    Parameters
    ----------
    model : transformers causal LM
        Wrapped in place in fresh LoRA adapters; its base weights stay frozen.
    tokenizer : transformers tokenizer
    train_texts, train_labels, dev_texts, dev_labels
        Texts and integer classes in ``[0, len(label_words))``; dev drives early stopping and
        the reporting epoch.
    label_words : sequence of str
        Class names as the LM should write them (generative) or head columns (discriminative).
    objective : {"generative", "discriminative"}
    template : str, optional
        The prompt with a ``{text}`` slot, e.g. the paper's ``"### Input:\\n{text}\\n\\n###
        Output:\\n"``; the same for training, accuracy and feature extraction.
    lora : LoraSettings
    config : TrainConfig

    Returns
    -------
    FineTuned
        With the adapters (and head) of the reporting epoch.

    Raises
    ------
    InputError
        On empty sets, bad labels, duplicate label words or an unknown objective.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    config = config or TrainConfig()
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    words = tuple(label_words)
    if len(words) < 2 or len(set(words)) != len(words) or not all(words):
        raise InputError(f"need at least 2 distinct, non-empty label words, got {list(words)}")
    if template is not None:
        Template.parse(template)
    train_codes = _check_data(train_texts, train_labels, len(words), "train")
    dev_codes = _check_data(dev_texts, dev_labels, len(words), "dev")
    if not is_causal_lm(model):
        raise InputError(f"{type(model).__name__} is not a causal LM with an LM head")

    torch.manual_seed(config.seed)
    peft_model = attach_lora(model, lora)
    head = None
    if objective == "discriminative":
        hidden_size = model.get_input_embeddings().weight.shape[1]
        head = torch.nn.Linear(hidden_size, len(words), bias=False)
        torch.nn.init.normal_(head.weight, std=0.02)
        head.to(model.get_input_embeddings().weight.device)
    run = FineTuned(objective, peft_model, tokenizer, words, template, config, lora, head)
    params = {**trainable_parameters(peft_model),
              **({f"head.{k}": v for k, v in head.named_parameters()} if head else {})}

    prompts = run._prompts(list(train_texts))
    targets = run._targets() if objective == "generative" else None
    steps_per_epoch = math.ceil(len(prompts) / config.batch_size)
    total_steps = steps_per_epoch * config.max_epochs
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate,
                                  eps=config.adam_epsilon, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)
    order_rng = torch.Generator().manual_seed(config.seed)

    best_state = {k: v.detach().clone() for k, v in params.items()}
    run.best_dev_accuracy = -1.0
    epochs = tqdm(range(1, config.max_epochs + 1), desc=f"fine-tune ({objective})",
                  unit="epoch", disable=not config.progress)
    for epoch in epochs:
        tick = time.perf_counter()
        peft_model.train()
        order = torch.randperm(len(prompts), generator=order_rng).tolist()
        losses = []
        for start in range(0, len(order), config.batch_size):
            rows = order[start:start + config.batch_size]
            loss = run.loss([prompts[i] for i in rows], train_codes[rows].tolist(), targets)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        dev_accuracy = run.accuracy(dev_texts, dev_codes)
        run.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                            "dev_accuracy": dev_accuracy,
                            "seconds": time.perf_counter() - tick})
        if dev_accuracy > run.best_dev_accuracy:
            run.best_epoch, run.best_dev_accuracy = epoch, dev_accuracy
            best_state = {k: v.detach().clone() for k, v in params.items()}
        epochs.set_postfix(loss=f"{np.mean(losses):.3f}", dev=f"{dev_accuracy:.3f}",
                           best=run.best_epoch)
        if config.should_stop(epoch, run.best_epoch):
            break
    with torch.no_grad():
        for name, value in best_state.items():
            params[name].copy_(value)
    peft_model.eval()
    return run
