"""A NumPy simulation of bf16 logits on any CPU, for the tie-aware tests: both sides run the same
compiled graph (ovgen's, `model.build_ir`) with the same properties, and every logits tensor they
read is rounded to bfloat16 first (`ties.bf16_round`), so top candidates tie as they do on a bf16
CPU while each side breaks the ties its own way (ovgen: lowest id; HF: torch)."""

from __future__ import annotations

import numpy as np
import torch
from optimum.intel import OVModelForCausalLM
from transformers import AutoConfig

from ovgen.model import build_ir
from ovgen.session import Session
from ovgen.ties import bf16_round


class RoundedSession(Session):
    """A Session whose logits (and so logsumexp, log-probs, choices) are bf16-rounded. No graph
    candidates (they hold unrounded values) and no asynchronous steps."""

    def _round(self, logits: np.ndarray) -> np.ndarray:
        logits[...] = bf16_round(logits)
        x = logits.astype(np.float64)
        peak = x.max(axis=-1, keepdims=True)
        lse = (np.log(np.exp(x - peak).sum(axis=-1, keepdims=True)) + peak)[..., 0].astype(np.float32)
        self.logsumexp = lse if lse.ndim else np.float32(lse)
        self.top = None
        return logits

    # every infer's logits leave the session through one of these two (whichever way it ran)
    def _end(self, ids, keep):
        return self._round(super()._end(ids, keep))

    def _after_one(self, token):
        return self._round(super()._after_one(token))

    def start_step(self, token):
        return 0


def rounded_hf(model):
    """transformers' generate() (through optimum-intel) on ovgen's own graph and properties, with
    bf16-rounded logits; `.topk_steps` records each beam step's top-K continuations."""

    class Rounded(OVModelForCausalLM):
        def forward(self, input_ids, attention_mask=None, past_key_values=None, position_ids=None, **kwargs):
            out = super().forward(input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                                  position_ids=position_ids, **kwargs)
            out.logits = torch.from_numpy(bf16_round(out.logits.float().numpy()))
            return out

    ir, *_ = build_ir(model.path, keep_input=False)
    hf = Rounded(ir, config=AutoConfig.from_pretrained(model.path), ov_config=model.ov_config,
                 model_save_dir=model.path)
    return record_topk(hf)


def record_topk(hf):
    """Record, per beam step, HF's top-K over `accumulated_log_probs` (indices, values) in `hf.topk_steps`."""
    original = hf._get_top_k_continuations
    hf.topk_steps = []

    def wrapped(accumulated_log_probs, *args, **kwargs):
        k = kwargs["beams_to_keep"] if "beams_to_keep" in kwargs else args[5]
        values, indices = torch.topk(accumulated_log_probs, k=k)
        hf.topk_steps.append((indices[0].numpy().copy(), values[0].numpy().copy()))
        return original(accumulated_log_probs, *args, **kwargs)

    hf._get_top_k_continuations = wrapped
    return hf
