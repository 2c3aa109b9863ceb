"""LoRA adapters: the paper's settings, attaching them, and saving them with safetensors.

Liu et al. (2024, §4 of the digest) fine-tune LLaMA with PEFT LoRA: rank 16, α 16 (scale 1),
dropout 0.05, no bias, on the attention projections ``q_proj``, ``k_proj``, ``v_proj`` and
``o_proj``, with the base weights frozen in fp32.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

__all__ = ["PAPER_LORA", "LoraSettings", "attach_lora", "trainable_parameters"]


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyperparameters (defaults: the paper's).

    The update of a target weight ``W`` is ``W + (alpha / r) · B A`` with ``A`` ``[r, d_in]``
    (Kaiming-uniform init) and ``B`` ``[d_out, r]`` (zero init), so training starts from the
    base model exactly (Hu et al. 2022, "LoRA").
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj")
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")

    def as_dict(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": list(self.target_modules)}


#: The paper's LoRA settings.
PAPER_LORA = LoraSettings()


def _missing_targets(model: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [t for t in targets if t not in names]


def attach_lora(model: PreTrainedModel, settings: LoraSettings = PAPER_LORA) -> PeftModel:
    """Wrap a causal LM in fresh LoRA adapters; every base weight is frozen.

    Parameters
    ----------
    model : transformers causal LM
        Modified in place (the adapters are injected into its target modules).
    settings : LoraSettings

    Raises
    ------
    ValueError
        If a target module name does not occur in the model.
    """
    from peft import LoraConfig, get_peft_model

    missing = _missing_targets(model, settings.target_modules)
    if missing:
        raise ValueError(
            f"LoRA target module(s) {missing} not found in {type(model).__name__}; "
            "set LoraSettings(target_modules=...) to the model's attention projection names"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        return get_peft_model(model, config)


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters that require gradients, by name."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}
