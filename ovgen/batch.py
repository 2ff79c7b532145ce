"""Batched generation: B prompts through one Session, one infer per step for all rows.

    prompts --left-pad--> Session.prefill_rows -> logits [B, vocab]
    per step, per row: that row's token-choice stage (its own chain, chooser and generator: a row's
    seeded output does not depend on its neighbours) -> record (row = the prompt's index)
    rows that finish leave the batch: Session.reorder(the rows that go on) gathers the KV rows, the
    attention mask and the padding inside the next infer, so a finished row costs nothing more
    (openvino-genai's stateful pipeline drops finished rows the same way)

Left padding is masked and takes no position, so each row computes what it would alone (up to the
last bits a batched matrix product sums differently). Prompts beyond `batch_size` run in further
batches. Rows whose settings need a loop of their own (beam search, speculative decoding,
classifier-free guidance, several sequences) run one at a time after the batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter_ns

import numpy as np

from .choice import TokenChoice, token_choice
from .config import GenerationConfig
from .search import TokenRecord, _text, top_logprobs
from .stopping import StopStrings, Stopping
from .tokenizer import IncrementalDecoder


def batchable(cfg: GenerationConfig) -> bool:
    """Settings the batched loop runs (the others need a loop of their own)."""
    return (cfg.num_beams == 1 and cfg.num_return_sequences == 1 and not cfg.prompt_lookup
            and cfg.guidance_scale == 1.0)


@dataclass
class _Row:
    index: int  # the prompt's position in the input
    ids: list[int]
    cfg: GenerationConfig
    choice: TokenChoice
    stopping: Stopping
    detok: IncrementalDecoder
    stops: StopStrings
    n: int = 0


def _row(model, index: int, ids: list[int], cfg: GenerationConfig, processors, extra) -> _Row:
    max_new = cfg.max_new_tokens
    if model.max_context:
        max_new = min(max_new, model.max_context - len(ids))
    choice = token_choice(cfg, prompt_len=len(ids), processors=[_fresh(p) for p in processors], model=model,
                          extra=extra)
    choice.reset()
    return _Row(index, ids, cfg, choice, Stopping(eos_token_ids=cfg.eos_token_id, max_new_tokens=max_new,
                                                  max_time=cfg.max_time, ignore_eos=cfg.ignore_eos),
                IncrementalDecoder(model.tokenizer), StopStrings(cfg.stop_strings, cfg.include_stop_str_in_output))


def _fresh(p):
    """A processor per row: stages with state are cloned, plain callables shared."""
    return p.clone() if hasattr(p, "clone") else p


def batch_decode(model, session, rows: list[_Row], t_start_ns: int) -> Iterator[TokenRecord]:
    """One batch to the end: a TokenRecord per token of every row (`record.row`: the prompt's index)."""
    live = [r for r in rows if r.stopping.max_new_tokens > 0]
    if not live:
        return
    logits = np.atleast_2d(session.prefill_rows([r.ids for r in live]))
    model_ns, infer_start = session.infer_ns, session.infer_start_ns
    while live:
        lse = np.atleast_1d(session.logsumexp)
        tops = session.top_rows if len(live) > 1 else (None if session.top is None else
                                                         (session.top[0][None], session.top[1][None]))
        going, tokens = [], []
        for j, row in enumerate(live):
            top = None if tops is None else (tops[0][j], tops[1][j])
            rec = _choose(session, j, row, logits[j], lse[j], top, t_start_ns, model_ns, infer_start)
            yield rec
            if rec.finish_reason is None:
                going.append(j)
                tokens.append(rec.token_id)
        if not going:
            return
        if len(going) < len(live):
            session.reorder(going)  # finished rows leave the batch (gathered inside the next infer)
            live = [live[j] for j in going]
        logits = np.atleast_2d(session.step(np.asarray(tokens, np.int64)))
        model_ns, infer_start = session.infer_ns, session.infer_start_ns


def _choose(session, j: int, row: _Row, logits, lse, top, t_start_ns: int, model_ns: int, infer_start: int):
    t0 = perf_counter_ns()
    history = session.tokens[j, int(session.pad[j]):]
    ch = row.choice.choose(history, logits, lse, top)
    token = ch.token
    lp = float(logits[token] - lse)
    tl = top_logprobs(logits, row.cfg.top_logprobs, lse) if row.cfg.top_logprobs else None
    t2 = perf_counter_ns()
    row.n += 1
    reason = row.stopping.check(token, row.n, (t2 - t_start_ns) / 1e9)
    ta = perf_counter_ns()
    row.choice.accept(token)
    tb = perf_counter_ns()
    text, reason = _text(row.detok, row.stops, token, reason)
    t3 = perf_counter_ns()  # accept and detok timed apart, as in search.decode
    return TokenRecord(row.n - 1, token, text, lp, ch.logprob, reason, tl, 0, model_ns, row.choice.process_ns,
                       t2 - t0 - row.choice.process_ns, t3 - t2 - (tb - ta), t3, dict(row.choice.timings_ns), None,
                       infer_start, t0, top_choice=ch.top_choice, allowed=row.choice.chain.allowed, subset=ch.subset,
                       accept_ns=tb - ta, row=row.index)


def batch_stream(model, prompts: Sequence[list[int]], configs: Sequence[GenerationConfig], *, processors=(),
                 extras: Sequence[list] | None = None, batch_size: int = 8, session=None) -> Iterator[TokenRecord]:
    """Every prompt (token ids, validated configs) through batches of at most `batch_size` rows;
    records of a batch interleave across its rows (`record.row` is the prompt's index)."""
    from .generate import run  # the loop of one prompt, for rows that need their own

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    extras = extras or [[] for _ in prompts]
    session = session or model.session()
    batched = [i for i, c in enumerate(configs) if batchable(c)]
    t_start = perf_counter_ns()
    for at in range(0, len(batched), batch_size):
        group = batched[at:at + batch_size]
        rows = [_row(model, i, list(prompts[i]), configs[i], processors, extras[i]) for i in group]
        yield from batch_decode(model, session, rows, t_start)
    for i in (i for i, c in enumerate(configs) if not batchable(c)):
        for rec in run(model, session, list(prompts[i]), configs[i], processors, extra=extras[i]):
            rec.row = i
            yield rec
