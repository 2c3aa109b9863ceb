"""The zero-grad benchmark: every detector on frozen LM features, over settings and seeds.

:func:`run_bench` runs a suite (:mod:`ood_zoo.bench.suites`) in four steps:

1. **Pools.** Each corpus of the suite is loaded and one pool of texts is drawn from it
   (``max_per_split`` texts per split it needs, or the whole corpus with ``full=True``).
2. **Features, once.** Every pool goes through the model once: hidden states of *all* layers,
   pooled (``[n, L, d]``), plus, for a causal LM, the next-token logits of every ID label word and
   the log-sum-exp over the whole vocabulary at the prompt's last position. A causal LM also
   scores each text in a second pass (:func:`~ood_zoo.features.next_token_statistics`, same
   template and truncation) for the ``perplexity``, ``renyi``, ``fisher_rao`` and
   ``self_certainty`` detectors. Every setting, seed, layer and detector reuses them.
3. **Seeds × ID tasks × detectors.** Per seed each ID pool is split anew; each registered detector
   is fit on the bank (the ID *validation* part, as in the paper; ``bank="train"`` for the train
   part) and scored on the ID test part against each OOD set of the suite. The layer sweep refits
   the sweep detectors (cosine and Mahalanobis by default) on every layer.
4. **Outputs.** Per-seed rows, mean ± std over seeds, tables, plots, all written atomically.

Logits for MSP, MaxLogit and Energy
-----------------------------------
*Decoder LMs* (zero-grad, as the paper): the ID class names are verbalised (``negative`` /
``positive``, topic names) and the logits of each word's first token are read at the last prompt
position. The registered ``msp``, ``maxlogit`` and ``energy`` detectors get those label-token
logits, so ``energy`` is the paper's energy (logsumexp over label tokens, T = 1) and ``msp`` is the
softmax **renormalised over the label tokens**. The paper's MSP takes the softmax over the **full
vocabulary** and the max over the label tokens, not renormalised; it is reported as the row
``msp_vocab``: the ``maxlogit`` detector on the label tokens' vocabulary log-probabilities
``logit_c - logsumexp(vocab)``, i.e. the log of the paper's MSP (same AUROC, FPR95 and AUPR).
*Encoders* (MiniLM): a linear probe fit on the bank (:func:`~ood_zoo.bench.runner.fit_probe`)
gives the class logits. The head detectors (``vim``, ``fdbd``, ``nci``) get the linear map behind
those logits: the label tokens' LM-head rows at the final layer with last-token pooling
(:meth:`~ood_zoo.features.Extraction.label_head`), the probe's weights folded through its
scaler (:func:`~ood_zoo.bench.runner.probe_head`); with none (other layers and poolings, the
sweep) they report an error row, as the logit detectors do without logits.

Pools and tasks come from :mod:`ood_zoo.bench.pools`, the detectors run in
:func:`~ood_zoo.bench.runner.run_detectors`, and the tables are written with
:mod:`ood_zoo.bench.tables`.

Language-model detectors
------------------------
``perplexity`` gets the base model's ``(log p(text | prompt), n_tokens)`` per text, ``renyi``,
``fisher_rao`` and ``self_certainty`` the sums of their next-token divergences from uniform
(decoders only; :data:`~ood_zoo.features.NEXT_TOKEN_STATS`, cached like the features).
``likelihood_ratio`` needs a fine-tuned model as well and is skipped here.
"""

from .outputs import CSV_COLUMNS, TABLE_COLUMNS, render_tables, write_outputs
from .run import (
    DEFAULT_MAX_PER_SPLIT,
    SWEEP_DETECTORS,
    BenchConfig,
    BenchResult,
    ModelExtractor,
    run_bench,
)

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_MAX_PER_SPLIT",
    "SWEEP_DETECTORS",
    "TABLE_COLUMNS",
    "BenchConfig",
    "BenchResult",
    "ModelExtractor",
    "render_tables",
    "run_bench",
    "write_outputs",
]
