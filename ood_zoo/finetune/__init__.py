"""Fine-tuning LLMs with LoRA before OOD detection: the paper's second experiment.

Liu et al., "How Good Are LLMs at Out-of-Distribution Detection?" (LREC-COLING 2024) fine-tune
LLaMA *generatively*: the model learns to emit the label name after the prompt, with the loss
on the label tokens and EOS only. A *discriminative* baseline puts a classification head on the
prompt's last token instead. :func:`fine_tune` runs either with the paper's LoRA recipe and
dev-accuracy early stopping; the result (:class:`FineTuned`) classifies texts, saves and reloads
its adapter with safetensors, and merges into a plain model for feature extraction.
"""

from .lora import PAPER_LORA, LoraSettings, attach_lora
from .train import FineTuned, Objective, TrainConfig, fine_tune, load_fine_tuned

__all__ = [
    "PAPER_LORA",
    "FineTuned",
    "LoraSettings",
    "Objective",
    "TrainConfig",
    "attach_lora",
    "fine_tune",
    "load_fine_tuned",
]
