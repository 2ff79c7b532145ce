"""Batched generation: B prompts through one Session, one infer per step for all rows.

    prompts --left-pad--> Session.prefill_rows -> logits [B, vocab]
    per step, per row: that row's token-choice stage (its own chain, chooser and generator: a row's
    seeded output does not depend on its neighbours; plain greedy rows: one argmax over the batch;
    rows sampling with the same top-k (a repetition penalty and a temperature before it, a top-p and a
    min-p after it; nothing else): one pass over their graph candidates, then each row's draw from its
    own generator - the same tokens either way)
    -> record (row = the prompt's index)
    rows that finish leave the batch: Session.reorder(the rows that go on) gathers the KV rows, the
    attention mask and the padding inside the next infer, so a finished row costs nothing more
    (openvino-genai's stateful pipeline drops finished rows the same way)
    a row left alone (a batch of one, or the last row going on) continues in the one-row loop,
    search.decode: its one-token fast path, and the next infer overlapping the record's host work

Left padding is masked and takes no position, so each row computes what it would alone (up to the
last bits a batched matrix product sums differently). Prompts beyond `batch_size` rows run in further
batches. Rows whose settings need a loop of their own (beam search, speculative decoding,
classifier-free guidance) run one at a time after the batches.

A prompt's num_return_sequences > 1 are rows of the batch too: the prompt is prefilled once, its KV
row forked into one row per sequence by the next infer's beam_idx, each row with its own generator
(TokenChoice.for_sequence: what the prompt alone gives, `sequence_rows`), beside the other prompts'
rows; `record.sequence` tells them apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter_ns

import numpy as np

from ovgen.kernels.sampling import NEG_INF as S_NEG_INF
from ovgen.kernels.sampling import pick, softmax

from .backend import TOP_CANDIDATES
from .choice import Choice, Greedy, Sampler, TokenChoice, token_choice
from .config import GenerationConfig
from .processors import MinP, RepetitionPenalty, Temperature, TopK, TopP
from .search import Chosen, TokenRecord, _text, candidates, choose, chosen, decode
from .session import owned
from .stopping import StopStrings, Stopping
from .tokenizer import IncrementalDecoder


def batchable(cfg: GenerationConfig) -> bool:
    """Settings the batched loop runs (the others need a loop of their own)."""
    return cfg.num_beams == 1 and not cfg.prompt_lookup and cfg.guidance_scale == 1.0


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
    sequence: int = 0  # which returned sequence of its prompt (num_return_sequences: one row each)
    greedy: bool = False  # plain greedy (no processors): its token is the row's argmax, taken for all such rows at once
    draw: tuple | None = None  # a plain top-k sampler's (temperature or None, k): rows sharing it draw in one pass


def _rows(model, index: int, ids: list[int], cfg: GenerationConfig, processors, extra) -> list[_Row] | None:
    """Prompt `index`'s rows: one per returned sequence, sequence i >= 1 on TokenChoice.for_sequence(i)
    (its own generator, as the prompt alone runs them); None when its chooser has no such streams."""
    choice = token_choice(cfg, prompt_len=len(ids), processors=[_fresh(p) for p in processors], model=model,
                          extra=extra)
    choice.reset()
    choices = [choice] + [choice.for_sequence(i) for i in range(1, cfg.num_return_sequences)]
    if None in choices:
        return None
    return [_row_of(model, index, ids, cfg, c, sequence=i) for i, c in enumerate(choices)]


def _row_of(model, index: int, ids: list[int], cfg: GenerationConfig, choice: TokenChoice, sequence: int = 0) -> _Row:
    max_new = cfg.max_new_tokens
    if model.max_context:
        max_new = min(max_new, model.max_context - len(ids))
    return _Row(index, ids, cfg, choice, Stopping(eos_token_ids=cfg.eos_token_id, max_new_tokens=max_new,
                                                  max_time=cfg.max_time, ignore_eos=cfg.ignore_eos),
                IncrementalDecoder(model.tokenizer), StopStrings(cfg.stop_strings, cfg.include_stop_str_in_output),
                sequence=sequence, greedy=type(choice.chooser) is Greedy and not choice.chain.stages,
                draw=_draw_key(choice))


def _draw_key(choice: TokenChoice) -> tuple | None:
    """(repetition_penalty, temperature, k, top_p, min_p), None for an absent one, for a Sampler after
    a top-k of k < the graph's candidates, alone or with a repetition penalty (>= 1) and a temperature
    before it and a top-p and / or a min-p after it (HF's order; every stage keeping one token at
    least): `_draw_rows` gives such rows their tokens in one pass. None for any other chain."""
    if type(choice.chooser) is not Sampler:
        return None
    stages = {type(st): st for st in choice.chain.stages}
    kinds = [type(st) for st in choice.chain.stages]
    head = [t for t in (RepetitionPenalty, Temperature) if t in stages]
    if (kinds not in ([*head, TopK, *tail] for tail in ([], [TopP], [MinP], [TopP, MinP]))
            or stages[TopK].width >= TOP_CANDIDATES or any(stages[t].keep != 1 for t in (TopP, MinP) if t in stages)
            or (RepetitionPenalty in stages and not stages[RepetitionPenalty].penalty >= 1.0)):
        return None
    return (stages[RepetitionPenalty].penalty if RepetitionPenalty in stages else None,
            stages[Temperature].temperature if Temperature in stages else None, stages[TopK].width,
            stages[TopP].p if TopP in stages else None, stages[MinP].p if MinP in stages else None)


def _fresh(p):
    """A processor per row: stages with state are cloned, plain callables shared."""
    return p.clone() if hasattr(p, "clone") else p


def batch_decode(model, session, prompts: list[list[_Row]], t_start_ns: int, overlap: bool = True
                 ) -> Iterator[TokenRecord]:
    """One batch to the end: a TokenRecord per token of every row (`record.row`: the prompt's index,
    `record.sequence`: which of its returned sequences). `prompts`: each prompt's rows.

    The prompts are prefilled as one batch; a prompt with several rows then has its KV row forked
    into them (Session.reorder, gathered inside the next infer). Each step chooses every row's token
    first; when no row has stop strings (which need the text to tell whether a row goes on) the next
    infer then starts (`Session.start_rows`) and runs while the rows' grammars advance, their tokens
    are detokenised and the records are consumed (`overlap=False`: each infer runs once every record
    of the step has been consumed)."""
    prompts = [rows for rows in prompts if rows[0].stopping.max_new_tokens > 0]
    if not prompts:
        return
    live = [r for rows in prompts for r in rows]
    with candidates(session, any(r.choice.wants_top for r in live)):
        logits = np.atleast_2d(session.prefill_rows([rows[0].ids for rows in prompts]))
        lse, tops = np.atleast_1d(session.logsumexp), session.top_rows
        if tops is None and session.top is not None:  # one prompt: its candidates as one row's
            tops = (session.top[0][None], session.top[1][None])
        if len(live) > len(prompts):
            fork = np.repeat(np.arange(len(prompts)), [len(rows) for rows in prompts])
            session.reorder(fork)
            logits, lse = logits[fork], lse[fork]
            tops = None if tops is None else (tops[0][fork], tops[1][fork])
        yield from _batch_decode(session, live, t_start_ns, (logits, lse, tops), overlap)


def _batch_decode(session, live: list[_Row], t_start_ns: int, first, overlap: bool = True
                  ) -> Iterator[TokenRecord]:
    """`first`: (logits [rows, vocab], logsumexp [rows], the graph's top candidates per row or None)
    of the rows the session holds."""
    logits, lse, tops = first
    model_ns, infer_start = session.infer_ns, session.infer_start_ns
    started = 0  # the id of the step started asynchronously (0: none)
    try:
        while len(live) > 1:
            picks = _picks(session, live, logits, lse, tops, t_start_ns)
            # From here on nothing reads `logits`: the next infer may write them.
            if overlap and not any(row.stops.stops for row in live):
                going = [j for j, p in enumerate(picks) if p.reason is None]
                if going:
                    if len(going) < len(live):
                        session.reorder(going)  # finished rows leave the batch (gathered inside the next infer)
                    started = session.start_rows([picks[j].token for j in going])
            going = []
            for j, (row, pick) in enumerate(zip(live, picks)):
                rec = _record(row, pick, model_ns, infer_start, bool(started))
                yield rec
                if rec.finish_reason is None:
                    going.append(j)
            if not going:
                return
            if started:
                logits, started = session.finish_step(), 0
            else:
                if len(going) < len(live):
                    session.reorder(going)
                logits = session.step(np.array([picks[j].token for j in going], np.int64))
            live = [live[j] for j in going]
            logits = np.atleast_2d(logits)
            lse, tops = session.logsumexp, session.top_rows
            model_ns, infer_start = session.infer_ns, session.infer_start_ns
    finally:
        if started:  # the consumer stopped early: the running infer finishes before anyone reuses the session
            session.settle(started)
    yield from _alone(session, live[0], logits[0], t_start_ns, overlap)


def _alone(session, row: _Row, logits, t_start_ns: int, overlap: bool = True) -> Iterator[TokenRecord]:
    """The one row left in the session (its only row now) to its end, on the one-row loop."""
    records = decode(session, logits, choice=row.choice, stopping=row.stopping, detok=row.detok, stop_strings=row.stops,
                     top_n=row.cfg.top_logprobs, sequence=row.sequence, t_start_ns=t_start_ns, overlap=overlap,
                     done=row.n, skip=int(session.pad[0]))
    try:
        for rec in records:
            rec.row = row.index
            yield rec
    finally:
        records.close()  # a consumer that stops early: the pending infer is settled now, not at collection


def _picks(session, live: list[_Row], logits, lse, tops, t_start_ns: int) -> list[Chosen]:
    """Every row's token at this step (logits: [rows, vocab], their logsumexp [rows], the graph's
    top candidates per row or None). Plain greedy rows take theirs from one argmax over the whole
    batch (lowest id at ties, as Greedy's; the model's log-probability is then the processed one):
    what each row's own stage would choose, without a stage call per row; so do the rows sampling
    with the same top-k (repetition penalty, temperature, top-p, min-p), drawn in one pass
    (`_draw_rows`). The others run their token-choice stage on their row."""
    t0 = perf_counter_ns()
    best = logits.argmax(axis=1).tolist() if any(row.greedy for row in live) else None
    drawn = _draw_rows(session, live, tops) if tops is not None else {}
    if drawn:
        t0 = perf_counter_ns()  # the rows' shares of the pass are their records' chain and choice times
    picks = []
    for j, row in enumerate(live):
        row.n += 1
        if row.greedy:
            ch = Choice(best[j], float(logits[j, best[j]] - lse[j]), False, True)
            picks.append(chosen(ch, row.choice, logits[j], lse[j], row.cfg.top_logprobs, row.stopping, row.n,
                                t_start_ns, t0))
        elif j in drawn:
            ch, share = drawn[j]
            picks.append(chosen(ch, row.choice, logits[j], lse[j], row.cfg.top_logprobs, row.stopping, row.n,
                                t_start_ns, perf_counter_ns() - share))
        else:
            top = None if tops is None else (tops[0][j], tops[1][j])
            picks.append(choose(row.choice, session.tokens[j, int(session.pad[j]):], logits[j], lse[j], top,
                                row.cfg.top_logprobs, row.stopping, row.n, t_start_ns))
        t0 = perf_counter_ns()  # the next row's choice starts here (the first row's includes the batch argmax)
    return picks


def _draw_rows(session, live: list[_Row], tops) -> dict[int, tuple[Choice, int]]:
    """{row: (its Choice, its share of the pass's ns)} for the rows that sample after a top-k (with a
    repetition penalty and a temperature before it, a top-p and a min-p after it: `_draw_key`) on the
    graph's candidates, two or more with the same stages and k (each with its own settings: a
    temperature sweep shares a pass): one pass of the chain's arithmetic and the softmax over them
    (each row's penalty on the tokens of its own history), then each row's draw from its own
    generator - the very numbers Chain.on_subset and Sampler.choose give that row alone (row-wise
    reductions sum each row as a 1-D one does). A row whose top-k the
    candidates do not decide (a tie at the k-th place; a penalty that lowered the k-th largest to the
    bound outsiders are under) or with a non-finite candidate kept is left to its own stage."""
    groups: dict[tuple, list[int]] = {}
    for j, row in enumerate(live):
        if row.draw is not None:  # grouped by k and which stages are there
            penalty, temperature, k, top_p, min_p = row.draw
            key = (k, penalty is not None, temperature is not None, top_p is not None, min_p is not None)
            groups.setdefault(key, []).append(j)
    out = {}
    for (k, penalty, temperature, top_p, min_p), js in groups.items():
        if len(js) < 2:
            continue
        t0 = perf_counter_ns()
        values, ids = tops[0][js], tops[1][js]
        width = values.shape[1]
        bound = values.min(axis=1)  # every outsider's logit is at most its row's smallest candidate
        if penalty:  # apply_repetition_penalty_on, in float32 (its Python floats round to these)
            hit, p = _held(session, js, ids), _setting(live, js, 0, np.float32)
            values = np.where(hit, np.where(values < 0, values * p, values / p), values)  # it only lowers them
        if temperature:
            t = _setting(live, js, 1, np.float32)
            values, bound = values / t, bound / t[:, 0]  # the bound maps as Temperature's
        kth = np.partition(values, width - k, axis=1)[:, width - k]
        kept = ~(values < kth[:, None])  # apply_top_k's test (a NaN is kept)
        # the top-k is decided on the candidates when the k-th largest beats the bound (Chain.on_subset),
        # and exactly k are kept (no tie at the k-th place)
        ok = (kept.sum(axis=1) == k) & (kth > bound)
        sel = np.flatnonzero(ok)
        support = np.nonzero(kept[sel])[1].reshape(sel.size, k)  # each row's kept places, ascending
        top = np.take_along_axis(values[sel], support, axis=1)
        fine = np.isfinite(top).all(axis=1)  # NaN / inf: the row's own stage raises (or copes)
        sel, support, top = sel[fine], support[fine], top[fine]
        if sel.size == 0:
            continue
        if top_p:  # _top_p_row on the k survivors: descending (stable), mass above < top_p
            order = np.argsort(-top, axis=1, kind="stable")
            desc = np.take_along_axis(top, order, axis=1).astype(np.float64)
            probs = np.exp(desc - desc[:, :1])
            probs /= probs.sum(axis=1, keepdims=True)
            above = np.cumsum(probs, axis=1) - probs  # the mass above each candidate
            nucleus = np.empty_like(order, dtype=bool)
            np.put_along_axis(nucleus, order, above < _setting(live, js, 3, np.float64)[sel], axis=1)
            top = np.where(nucleus, top, S_NEG_INF)
        if min_p:  # apply_min_p on the stage's whole row: the candidates, the masked ones -inf
            row = np.full((sel.size, width), S_NEG_INF, np.float32)
            np.put_along_axis(row, support, top, axis=1)
            probs = softmax(row)
            gone = probs < _setting(live, js, 4, np.float64)[sel] * probs.max(axis=-1, keepdims=True)
            top = np.where(np.take_along_axis(gone, support, axis=1), S_NEG_INF, top)
        # Sampler.choose: softmax over the survivors, multinomial's draw with the row's own uniform
        probs = top.astype(np.float64)
        probs -= probs.max(axis=1, keepdims=True)
        np.exp(probs, out=probs)  # -inf: 0, which leaves the cumulative sums below as they are unpadded
        probs /= _survivor_sums(probs, top != S_NEG_INF)[:, None]
        cdf = np.cumsum(probs, axis=1)
        u = np.array([live[js[r]].choice.chooser.rng.random() for r in sel.tolist()]) * cdf[:, -1]
        place = pick(probs, cdf, u)
        tokens = ids[sel, support[np.arange(sel.size), place]].tolist()
        logprobs = np.log(probs[np.arange(sel.size), place]).tolist()
        share = (perf_counter_ns() - t0) // sel.size
        names = [n for n, on in (("repetition_penalty", penalty), ("temperature", temperature), ("top_k", True),
                                 ("top_p", top_p), ("min_p", min_p)) if on]
        timings = {n: share // len(names) for n in names}
        for r, token, lp in zip(sel.tolist(), tokens, logprobs):
            row = live[js[r]]
            row.choice.process_ns = share
            row.choice.chain.timings_ns = dict(timings)
            out[js[r]] = (Choice(token, lp, True), share)
    return out


def _setting(live: list[_Row], js: list[int], i: int, dtype) -> np.ndarray:
    """Setting i of the draw key (`_draw_key`) of rows `js`, one per row: [rows, 1] of `dtype`."""
    return np.array([live[j].draw[i] for j in js], dtype)[:, None]


def _held(session, js: list[int], ids: np.ndarray) -> np.ndarray:
    """[rows, candidates] bool: whether each candidate token is in its row's history (session rows
    `js`, their left padding left out): the tokens RepetitionPenalty penalises, set(token_ids)."""
    hist, pad = session.tokens[js], session.pad[js]
    vocab = session.model.vocab_size
    mark = np.zeros((len(js), vocab + 1), bool)  # the last column: where left padding goes
    r = np.arange(len(js))[:, None]
    mark[r, np.where(np.arange(hist.shape[1]) < pad[:, None], vocab, hist)] = True
    return mark[r, ids]


def _survivor_sums(x, kept):
    """Each row's sum of x over its kept places, as softmax sums them unpadded (pairwise: its rounding
    depends on how many terms there are and where): rows with as many survivors summed together."""
    count = kept.sum(axis=1)
    if (count == x.shape[1]).all():
        return x.sum(axis=1)
    packed = np.take_along_axis(x, np.argsort(~kept, axis=1, kind="stable"), axis=1)  # survivors first, in order
    sums = np.empty(x.shape[0])
    for n in np.unique(count).tolist():
        rows = np.flatnonzero(count == n)
        sums[rows] = packed[rows, :n].sum(axis=1)
    return sums


def _record(row: _Row, p: Chosen, model_ns: int, infer_start: int, overlapped: bool) -> TokenRecord:
    ta = perf_counter_ns()
    row.choice.accept(p.token)
    tb = perf_counter_ns()
    p.taken(row.choice, tb - ta)
    text, reason = _text(row.detok, row.stops, p.token, p.reason)
    t3 = perf_counter_ns()  # accept and detok timed apart, as in search.decode
    return p.record(row.n - 1, text, reason, t3 - tb, t3, model_ns=model_ns, infer_start_ns=infer_start,
                    overlapped=overlapped, row=row.index, sequence=row.sequence)


def side_by_side(session, cfg: GenerationConfig, proposer=None) -> bool:
    """Whether num_return_sequences > 1 can run as one batch on this session: its KV row can be
    forked (an IR with beam_idx, rows allowed) and no loop of its own is asked for (speculative
    decoding verifies one sequence, classifier-free guidance keeps one negative row)."""
    return (cfg.num_return_sequences > 1 and cfg.num_beams == 1 and proposer is None and cfg.guidance_scale == 1.0
            and not session.one_row and getattr(session, "_has_beam_idx", False))


def sequence_rows(model, session, ids: list[int], cfg: GenerationConfig, choices: Sequence[TokenChoice], logits,
                  t_start_ns: int, overlap: bool = True) -> Iterator[TokenRecord]:
    """num_return_sequences > 1 side by side. The prompt has run once (the session holds it in one
    row; `logits` are its last position's); the next infer's beam_idx gathers that KV row into one
    row per sequence (Session.reorder, as beam search forks beams), then the batched loop runs them,
    each with its own token-choice stage (`choices[i]`: TokenChoice.for_sequence, its own generator)
    and its own stopping. Records come in sequence order - sequence 0's as they are made, a later
    sequence's held until those before it have ended - as when the sequences ran one after another."""
    n = len(choices)
    rows = [_row_of(model, 0, ids, cfg, choice, sequence=i) for i, choice in enumerate(choices)]
    first = (np.repeat(np.asarray(logits)[None], n, axis=0), np.full(n, session.logsumexp, np.float32), None)
    session.reorder(np.zeros(n, np.int32))
    with candidates(session, any(r.choice.wants_top for r in rows)):
        yield from in_sequence_order(_batch_decode(session, rows, t_start_ns, first, overlap), n)


def in_sequence_order(records: Iterator[TokenRecord], n: int) -> Iterator[TokenRecord]:
    """`records` of sequences 0..n-1, interleaved, re-ordered so that each sequence's come whole and
    in order: the current sequence's pass at once, the others wait until it has ended."""
    held: list[list[TokenRecord]] = [[] for _ in range(n)]
    ended = [False] * n
    current = 0
    try:
        for rec in records:
            if rec.finish_reason is not None:
                ended[rec.sequence] = True
            if rec.sequence != current:
                held[rec.sequence].append(rec)
                continue
            yield rec
            while ended[current] and current + 1 < n:
                current += 1
                yield from held[current]
                held[current] = []
    finally:
        records.close()  # a consumer that stops early: the running infer is settled now


def batch_stream(model, prompts: Sequence[list[int]], configs: Sequence[GenerationConfig], *, processors=(),
                 extras: Sequence[list] | None = None, batch_size: int = 8, session=None, overlap: bool = True
                 ) -> Iterator[TokenRecord]:
    """Every prompt (token ids, validated configs) through batches of at most `batch_size` rows;
    records of a batch interleave across its rows (`record.row` is the prompt's index). `overlap`:
    as `generate.stream`'s, for the batches and the prompts that run alone."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    session = session or model.session()
    return owned(session, _batch_records(model, session, prompts, configs, processors, extras or [[] for _ in prompts],
                                         batch_size, overlap))


def padded_groups(indices, lengths, batch_size: int, slack: int = 256, sizes=None) -> Iterator[list[int]]:
    """The batches: prompts in order of length, at most `batch_size` rows each (`sizes[i]`: prompt i's
    rows, one per returned sequence; a prompt with more than `batch_size` is a batch of its own). Left
    padding gives every row its batch's widest prompt, computed in the prefill and attended over after
    it: a short prompt beside an 8,000-token one costs 8,000 positions. So a batch also ends where the
    next prompt would make its padding exceed half its prompts' tokens (and `slack` positions: short
    prompts batch whatever their ratio)."""
    group, total, rows = [], 0, 0
    for i in sorted(indices, key=lambda i: lengths[i]):
        n, r = lengths[i], 1 if sizes is None else sizes[i]
        if group and (rows + r > batch_size or (len(group) + 1) * n - (total + n) > max(slack, (total + n) // 2)):
            yield group
            group, total, rows = [], 0, 0
        group.append(i)
        total += n
        rows += r
    if group:
        yield group


def _batch_records(model, session, prompts, configs, processors, extras, batch_size, overlap
                   ) -> Iterator[TokenRecord]:
    from .generate import run  # the loop of one prompt, for rows that need their own

    forks = not session.one_row and getattr(session, "_has_beam_idx", False)  # a KV row can become several
    batched = [i for i, c in enumerate(configs) if batchable(c) and (forks or c.num_return_sequences == 1)]
    alone = sorted(set(range(len(configs))) - set(batched))
    t_start = perf_counter_ns()
    sizes = [c.num_return_sequences for c in configs]
    for group in padded_groups(batched, [len(p) for p in prompts], batch_size, sizes=sizes):
        rows = {i: _rows(model, i, list(prompts[i]), configs[i], processors, extras[i]) for i in group}
        alone += [i for i, r in rows.items() if r is None]  # a chooser without streams of its own: below
        yield from batch_decode(model, session, [r for r in rows.values() if r is not None], t_start, overlap)
    for i in sorted(alone):
        for rec in run(model, session, list(prompts[i]), configs[i], processors, extra=extras[i], overlap=overlap):
            rec.row = i
            yield rec
