"""Classifier-free guidance with a negative prompt, on a second Session over the same model.

transformers' `UnbatchedClassifierFreeGuidanceLogitsProcessor` (the processor `generate()` adds
first for `guidance_scale != 1`), step for step: both distributions are log-softmaxed and the scores
become `scale * (cond - uncond) + uncond`. The unconditional sequence is the negative prompt (or,
without one, the prompt's last token) followed by every generated token; its KV state lives in the
stage's own Session, advanced one token per step.
"""

from __future__ import annotations

import numpy as np

from ovgen.kernels.sampling import log_softmax

from .processors import Stage


class Guidance(Stage):
    """CFG as a stage: opaque (it needs the whole vocabulary of both distributions)."""

    name, subset = "guidance", "opaque"

    def __init__(self, scale: float, model, negative_ids: list[int] | None = None):
        self.scale = np.float32(scale)
        self.model = model
        self.negative_ids = list(negative_ids) if negative_ids else None
        self.session = None
        self.first = True

    def reset(self) -> None:
        self.first = True

    def __call__(self, token_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if logits.ndim != 1:
            raise NotImplementedError("guidance_scale runs one sequence at a time (no beams, no batches)")
        if self.session is None:
            self.session = self.model.session()
            self.session.want_top = False  # its logits are used whole (log_softmax), never its candidates
        if self.first:
            uncond = self.session.prefill(self.negative_ids or [int(token_ids[-1])])
            self.first = False
        else:
            uncond = self.session.step(int(token_ids[-1]))
        cond = log_softmax(logits).astype(np.float32)
        unc = log_softmax(uncond).astype(np.float32)
        return self.scale * (cond - unc) + unc


def guidance_stage(config, model) -> Guidance:
    """The CFG stage for `config.guidance_scale` and `config.negative_prompt` (text or token ids)."""
    if model is None:
        raise ValueError("guidance_scale needs the model (its negative prompt runs on a second session)")
    neg = config.negative_prompt
    if isinstance(neg, str):
        neg = model.tokenizer.encode(neg) if neg else None
    return Guidance(config.guidance_scale, model, neg)
