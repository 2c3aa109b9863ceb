"""An OOD gate for transformers: a pipeline that answers and scores each input in one forward pass.

:class:`OODGatePipeline` runs a sequence-classification model (the answer is a label and its
probability, as the ``text-classification`` pipeline gives) or a causal LM (the answer is the
generated text, as ``text-generation`` gives) and, from the hidden states of that same forward
pass, pools one feature vector per input exactly as :func:`ood_zoo.features.extract` does and
scores it with a fitted ood_zoo detector:

>>> import ood_zoo
>>> from ood_zoo.pipeline import ood_gate
>>> gate = ood_gate(classifier, ood_zoo.create("knn", k=10)).fit(id_texts)  # doctest: +SKIP
>>> gate(["a gripping, funny film", "what time is it?"])                    # doctest: +SKIP
[{'label': 'POSITIVE', 'score': 0.98, 'ood_score': 0.71, 'is_ood': False}, ...]

Importing this module registers the custom task ``"ood-gate"`` with transformers'
``PIPELINE_REGISTRY`` (:func:`register`), so ``transformers.pipeline("ood-gate", model=...,
tokenizer=..., detector=...)`` builds the same gate; :func:`ood_gate` wraps an existing
``pipeline(...)`` object. :meth:`OODGatePipeline.fit` fits the detector on ID texts through
:func:`~ood_zoo.features.extract` with the gate's own layers, pooling, template and length limit,
so training and gated features match; :meth:`OODGatePipeline.calibrate` does the same
for a calibration set, after which every answer also carries its conformal ``p_value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import torch
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .api import Detector
from .errors import InputError, NotFittedError
from .features import (
    POOLING_MODES,
    Template,
    avg_avg,
    default_pooling,
    extract,
    is_causal_lm,
    n_hidden_states,
    pool,
    resolve_layers,
    token_budget,
)
from .features.encode import encode

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TASK", "OODGatePipeline", "ood_gate", "register"]

#: The transformers task name of the gate.
TASK: Final[str] = "ood-gate"

Layers = int | Sequence[int] | Literal["all"]


class OODGatePipeline(Pipeline):
    """A transformers pipeline that returns, per input, the model's answer and its OOD verdict.

    Parameters
    ----------
    model : transformers model
        A sequence-classification model (answer: ``label`` and ``score`` of the top class, as
        ``text-classification`` gives them: softmax, sigmoid for one logit or multi-label, the
        raw value for regression) or a model that can generate (answer: ``generated_text``).
    tokenizer : transformers tokenizer
        The model's tokenizer.
    detector : ood_zoo.Detector
        A feature detector (``requires``: features, no logits or head), fitted on features of the
        same model, layers and pooling (:meth:`fit` does this), or fitted later with :meth:`fit`.
    layers : int, list of int or "all"
        The hidden states to pool, as in :func:`~ood_zoo.features.extract`: an int gives
        ``[d]`` features, a list or ``"all"`` ``[L, d]`` (for a ``layered`` detector).
    pooling : {"last", "mean", "first", "avg_avg"}, optional
        Default :func:`~ood_zoo.features.default_pooling` of the model (``last`` for a causal LM).
    template : str, optional
        A prompt with one ``{text}`` slot, wrapped around every input for the answer and the
        features alike.
    max_length : int
        Tokens per input at most (capped by the tokenizer's ``model_max_length``).
    max_new_tokens : int
        Generated tokens per input (generation only); also a call parameter.
    generate_kwargs : dict, optional
        Further ``model.generate`` arguments (``do_sample``, ...); also a call parameter.
    return_full_text : bool
        Generation only: the prompt followed by the new text (default, as ``text-generation``),
        or the new text alone; also a call parameter.
    **kwargs
        Passed to :class:`transformers.Pipeline` (``device``, ``batch_size``, ...).

    Notes
    -----
    Each call returns, per input, a dict with the answer's keys and ``ood_score`` (the
    detector's score, higher = more in-distribution), ``is_ood`` (``not detector.predict``)
    and, once the detector is calibrated (:meth:`calibrate`), ``p_value`` (its conformal
    p-value, :meth:`ood_zoo.Detector.pvalues`; small = OOD). The features come from the
    answer's own forward pass: the classification forward with ``output_hidden_states=True``,
    or, for generation, the prompt's hidden states from the first forward pass of ``generate``.
    Batches are re-padded on the side each pass needs (right for classification, so position
    ids match ``extract``; left for generation), whatever ``tokenizer.padding_side`` says;
    pooling reads the attention mask, so the features equal
    :func:`~ood_zoo.features.extract`'s up to float rounding.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        detector: Detector,
        layers: Layers = -1,
        pooling: str | None = None,
        template: str | None = None,
        max_length: int = 512,
        **kwargs: Any,
    ) -> None:
        if not isinstance(detector, Detector):
            raise TypeError(f"detector must be an ood_zoo Detector, got {type(detector).__name__}")
        needs = detector.requires
        if not needs.features or needs.logits or needs.head or needs.language_model:
            raise InputError(
                f"{detector.name}: the gate feeds hidden-state features only; choose a detector "
                f"whose requires are features without logits, head or language model, got "
                f"{needs.as_dict()}"
            )
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLING_MODES)}")
        if tokenizer is None:
            raise TypeError("the ood-gate pipeline needs the model's tokenizer")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        self.detector = detector
        self.layers = layers
        self.pooling = pooling if pooling is not None else default_pooling(model)
        self.template = template
        self.max_length = max_length
        self._parsed_template = Template.parse(template) if template is not None else None
        self._generates = bool(model.can_generate())
        super().__init__(model, tokenizer, **kwargs)
        self._check_layers()

    # ------------------------------------------------------------------ fitting
    def features(self, texts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
        """The gate's features of ``texts``: :func:`~ood_zoo.features.extract` with the gate's
        model, tokenizer, layers, pooling, template and ``max_length`` (float32, CPU)."""
        return extract(
            texts, self.model, self.tokenizer, layers=self.layers, pooling=self.pooling,
            template=self.template, max_length=self.max_length, batch_size=batch_size,
            progress=False,
        ).features

    def fit(
        self, texts: Sequence[str], labels: Sequence[int] | None = None, *, batch_size: int = 32,
    ) -> Self:
        """Fit the detector on in-distribution ``texts`` (and ``labels`` where it needs them)
        through :meth:`features`, so fit and gated features match; returns the gate."""
        self.detector.fit(self.features(texts, batch_size=batch_size),
                          None if labels is None else torch.as_tensor(labels))
        self._check_layers()
        return self

    def calibrate(
        self, texts: Sequence[str], *, alpha: float | None = None, tpr: float | None = None,
        batch_size: int = 32,
    ) -> Self:
        """Calibrate the fitted detector on held-out ID ``texts`` through :meth:`features`
        (:meth:`ood_zoo.Detector.calibrate`; with ``alpha``, split-conformal: ``is_ood`` then
        has false-alarm rate at most ``alpha``); from then on each answer carries its
        ``p_value``. Returns the gate."""
        self.detector.calibrate(self.features(texts, batch_size=batch_size), tpr=tpr, alpha=alpha)
        return self

    # ------------------------------------------------------------------ transformers hooks
    def _sanitize_parameters(
        self,
        max_new_tokens: int | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        return_full_text: bool | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        forward: dict[str, Any] = {}
        if max_new_tokens is not None:
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or (
                    max_new_tokens < 1):
                raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
            forward["max_new_tokens"] = max_new_tokens
        if generate_kwargs is not None:
            forward["generate_kwargs"] = dict(generate_kwargs)
        post = {} if return_full_text is None else {"return_full_text": bool(return_full_text)}
        return {}, forward, post

    def preprocess(self, text: str) -> dict[str, Any]:
        if not isinstance(text, str):
            raise TypeError(f"the ood-gate pipeline takes strings, got {type(text).__name__}")
        if not self.detector.is_fitted_:
            raise NotFittedError(f"{self.detector.name}: fit the gate's detector first "
                                 "(gate.fit(id_texts))")
        encoded, _ = encode([text], self.tokenizer, template=self._parsed_template,
                            max_length=token_budget(self.tokenizer, self.max_length))
        if not encoded["input_ids"][0]:
            raise ValueError(f"text {text!r} tokenises to no tokens")
        inputs: dict[str, Any] = {key: torch.tensor(value) for key, value in encoded.items()}
        prompt = text if self._parsed_template is None else self._parsed_template.format(text)
        return {**inputs, "prompt_text": prompt}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        max_new_tokens: int = 20,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        prompt = model_inputs.pop("prompt_text")
        if self._generates:
            batch = _repad(model_inputs, "left")
            options = {"pad_token_id": self.tokenizer.pad_token_id, **(generate_kwargs or {}),
                       "max_new_tokens": max_new_tokens, "output_hidden_states": True,
                       "return_dict_in_generate": True}
            output = self.model.generate(**batch, **options)
            states = output.hidden_states[0]  # the prompt's forward pass
            answer = {"new_tokens": output.sequences[:, batch["input_ids"].shape[1]:]}
        else:
            batch = _repad(model_inputs, "right")
            output = self.model(**batch, output_hidden_states=True, return_dict=True)
            logits = getattr(output, "logits", None)
            if logits is None:
                raise TypeError(f"{type(self.model).__name__} returned no logits; the gate needs "
                                "a sequence-classification model or one that can generate")
            states, answer = output.hidden_states, {"logits": logits}
        features = self._pool(states, batch["attention_mask"])
        calibrated = self.detector.calibration_scores_ is not None
        return {"ood_score": self.detector.score(features),
                "is_id": self.detector.predict(features),
                "p_value": self.detector.pvalues(features) if calibrated else None,
                **answer, "prompt_text": prompt}

    def postprocess(
        self, model_outputs: dict[str, Any], return_full_text: bool = True,
    ) -> dict[str, Any]:
        verdict = {"ood_score": float(model_outputs["ood_score"][0]),
                   "is_ood": not bool(model_outputs["is_id"][0])}
        if model_outputs["p_value"] is not None:
            verdict["p_value"] = float(model_outputs["p_value"][0])
        if self._generates:
            new_text = self.tokenizer.decode(model_outputs["new_tokens"][0],
                                             skip_special_tokens=True)
            prompt = model_outputs["prompt_text"]
            return {"generated_text": prompt + new_text if return_full_text else new_text,
                    **verdict}
        logits = model_outputs["logits"][0].float()
        problem = self.model.config.problem_type
        if problem == "regression":
            probabilities = logits
        elif problem == "multi_label_classification" or logits.numel() == 1:
            probabilities = logits.sigmoid()
        else:
            probabilities = logits.softmax(dim=-1)
        best = int(probabilities.argmax())
        return {"label": self.model.config.id2label[best],
                "score": float(probabilities[best]), **verdict}

    # ------------------------------------------------------------------ helpers
    def _pool(self, states: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Pool the hidden states as :func:`~ood_zoo.features.extract` does: float32, CPU."""
        if self.pooling == "avg_avg":
            return avg_avg(states[1:], mask, skip_first=is_causal_lm(self.model)).float().cpu()
        indices, single = resolve_layers(self.layers, len(states))
        pooled = torch.stack([pool(states[i], mask, self.pooling) for i in indices], dim=1)
        return (pooled[:, 0] if single else pooled).float().cpu()

    def _check_layers(self) -> None:
        """Refuse layers, pooling and detector that do not fit each other or the model."""
        if self.pooling == "avg_avg" and (isinstance(self.layers, bool) or self.layers != -1):
            raise ValueError(f"pooling 'avg_avg' takes no layers; leave layers at -1, got "
                             f"{self.layers!r}")
        n_states = n_hidden_states(self.model)
        single = self.pooling == "avg_avg" or not isinstance(self.layers, str | Sequence)
        if n_states is not None:
            resolve_layers(self.layers, n_states)
        if self.detector.requires.layered == single:
            shape = "[n, d] (one int layer)" if single else "[n, L, d] (a list of layers)"
            raise InputError(f"{self.detector.name}: layers={self.layers!r} gives features "
                             f"{shape}, but the detector's requires.layered is "
                             f"{self.detector.requires.layered}")
        width = self.model.config.get_text_config().hidden_size
        fitted = self.detector.n_features_in_
        if fitted is not None and fitted != width:
            raise InputError(f"{self.detector.name} was fitted on {fitted}-wide features, but "
                             f"{type(self.model).__name__}'s hidden states are {width} wide")


def _repad(batch: dict[str, torch.Tensor], side: Literal["left", "right"]) -> dict[str, Any]:
    """The batch with each row's real tokens moved to one side and its padding to the other.

    A stable sort of each row on "is padding" (right) or "is real" (left) keeps the real tokens
    in order, whichever side the pipeline's collate padded on.
    """
    real = batch["attention_mask"] != 0
    key = (~real if side == "right" else real).to(torch.int8)
    order = torch.sort(key, dim=1, stable=True).indices
    return {name: value.gather(1, order) if isinstance(value, torch.Tensor) and value.dim() == 2
            else value for name, value in batch.items()}


def ood_gate(pipe: Pipeline, detector: Detector, **options: Any) -> OODGatePipeline:
    """Wrap an existing ``text-classification`` or ``text-generation`` pipeline in an OOD gate.

    Parameters
    ----------
    pipe : transformers.Pipeline
        Its model, tokenizer and device are reused (nothing is copied or reloaded).
    detector : ood_zoo.Detector
        As for :class:`OODGatePipeline`.
    **options
        :class:`OODGatePipeline` options: ``layers``, ``pooling``, ``template``,
        ``max_length``, ``max_new_tokens``, ``batch_size``, ...
    """
    if not isinstance(pipe, Pipeline):
        raise TypeError(f"ood_gate wraps a transformers pipeline, got {type(pipe).__name__}")
    return OODGatePipeline(pipe.model, pipe.tokenizer, detector=detector, device=pipe.device,
                           task=TASK, **options)


def register() -> None:
    """Register the ``"ood-gate"`` task with transformers (done on import; repeat calls are
    no-ops). A model given by path loads as its checkpoint's own architecture."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=OODGatePipeline, type="text")


register()
