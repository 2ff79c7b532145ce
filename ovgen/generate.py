"""The user-facing calls: `stream()` (a generator of TokenRecords) and `generate()` (a result).

A prompt is text (tokenised with add_special_tokens=False, as the OpenVINO Phi-3 sample does), a
list of chat messages (rendered with the model's chat template), or token ids. Everything is
validated before the model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns

import numpy as np

from .backend import check_token_ids
from .beam import beam_search, check_beam_config
from .config import GenerationConfig
from .processors import Processor, build_chain
from .profiling import Profile, summarize
from .search import Sampler, TokenRecord, decode, greedy
from .stopping import StopStrings, Stopping
from .tokenizer import IncrementalDecoder

Prompt = str | Sequence[dict] | Sequence[int] | np.ndarray


@dataclass
class SequenceResult:
    token_ids: list[int]  # generated tokens only
    text: str
    finish_reason: str
    score: float | None = None  # beam search score; None for greedy / sampling
    records: list[TokenRecord] = field(default_factory=list, repr=False)

    @property
    def logprobs(self) -> list[float]:
        return [r.logprob for r in self.records]


@dataclass
class GenerationResult:
    prompt_token_ids: list[int]
    sequences: list[SequenceResult]
    metrics: dict[str, float]
    t_start_ns: int = 0  # perf_counter_ns() when generate started (the records' time origin)

    @property
    def profile(self) -> Profile:
        """Every token's timestamps and stage split, with stats and JSON / CSV / Chrome-trace exports."""
        return Profile([r for s in self.sequences for r in s.records], self.t_start_ns,
                       len(self.prompt_token_ids))

    @property
    def text(self) -> str:
        return self.sequences[0].text

    def to_dict(self) -> dict:
        """The `ovgen generate --json` schema."""
        return {
            "prompt_token_ids": self.prompt_token_ids,
            "sequences": [{"token_ids": s.token_ids, "text": s.text, "finish_reason": s.finish_reason,
                           "score": s.score} for s in self.sequences],
            "metrics": self.metrics,
        }


def resolve_config(model, config: GenerationConfig | dict | None) -> GenerationConfig:
    """The model's generation_config.json, updated by `config` (a dict of fields or a whole
    GenerationConfig, whose empty eos list is filled from the model), then validated."""
    if config is None:
        cfg = model.generation_config
    elif isinstance(config, dict):
        cfg = model.generation_config.replace(**config)
    elif isinstance(config, GenerationConfig):
        cfg = config if config.eos_token_id else config.replace(eos_token_id=model.generation_config.eos_token_id)
    else:
        raise TypeError(f"config must be a GenerationConfig, a dict or None, got {type(config).__name__}")
    cfg.validate()
    cfg.check_token_ids(model.vocab_size)
    if cfg.num_beams > 1:
        check_beam_config(cfg)
    return cfg


def prompt_ids(model, prompt: Prompt, *, chat_template: str | None = None,
               config: GenerationConfig | None = None) -> list[int]:
    """Token ids of a prompt (text, chat messages or ids), checked against vocab and context. A
    prompt that leaves no room for `config.max_new_tokens` in the model's context is refused, or -
    with `config.truncate_prompt` - cut to its last tokens that do leave room."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty")
        ids = model.tokenizer.encode(prompt, add_special_tokens=False)
    elif isinstance(prompt, np.ndarray) or (len(prompt) and not isinstance(prompt[0], dict)):
        ids = [int(t) for t in np.asarray(prompt).reshape(-1)]
    else:
        if not prompt:
            raise ValueError("prompt is empty (no messages)")
        ids = model.tokenizer.encode(model.tokenizer.apply_chat_template(list(prompt), template=chat_template))
    if not ids:
        raise ValueError("prompt has no tokens")
    check_token_ids(ids, model.vocab_size, "prompt token ids")
    limit = model.max_context
    if limit and len(ids) >= limit:
        new = config.max_new_tokens if config is not None else 0
        keep = max(1, limit - max(new, 1))
        if config is None or not config.truncate_prompt:
            raise ValueError(f"prompt has {len(ids)} tokens; the model's context (max_position_embeddings) is "
                             f"{limit}; set truncate_prompt=True (CLI --truncate-prompt) to keep its last {keep}")
        ids = ids[len(ids) - keep:]
    return ids


def stream(model, prompt: Prompt, config: GenerationConfig | dict | None = None, *, session=None,
           processors: Sequence[Processor] = (), chat_template: str | None = None,
           overlap: bool = True) -> Iterator[TokenRecord]:
    """Generate, yielding one TokenRecord per token as soon as it is chosen (its `.text` is the
    streamed delta). With num_return_sequences > 1, sequences follow one another (`.sequence`).
    With num_beams > 1 the records come once the search has ended (see `_beam_records`).

    `session`: reuse a Session (its KV state is replaced; see `chat.Chat` for prefix reuse).
    `processors`: user callables `(token_ids, logits) -> logits`, run after the built-in penalties and
    before the sampling warpers (see `processors.build_chain` for the whole order).
    `overlap`: the next token's infer runs while the consumer handles a record (search.decode); the
    consumer must then not call the session itself before asking for the next record."""
    cfg = resolve_config(model, config)
    ids = prompt_ids(model, prompt, chat_template=chat_template, config=cfg)
    session = session or model.session()
    yield from run(model, session, ids, cfg, processors, overlap=overlap)


def run(model, session, ids: list[int], cfg: GenerationConfig, processors=(), *, logits=None, overlap=True):
    """The loop over a validated config and checked ids. `logits`: the caller has already run the
    prompt through `session` (chat prefix reuse) and passes its last-position logits."""
    max_new = cfg.max_new_tokens
    if model.max_context:
        max_new = min(max_new, model.max_context - len(ids))
    if cfg.num_beams > 1 and not session.reorder_kv:  # a runtime with its own beam search
        yield from session.beam_records(ids, cfg, max_new, processors)
        return
    if cfg.num_beams > 1:  # BeamSearch checks the beam settings before it runs anything
        yield from _beam_records(model, session, ids, cfg, processors, max_new, logits)
        return
    if max_new == 0:
        return
    session.reserve(len(ids) + max_new)  # a runtime that allocates its KV buffer whole sizes it now
    t_start = perf_counter_ns()
    logits = session.prefill(ids) if logits is None else logits
    first = np.array(logits, copy=True)
    prefill_ns = session.infer_ns
    snap = session.snapshot() if cfg.num_return_sequences > 1 else None
    sampler = Sampler(cfg.seed) if cfg.do_sample and cfg.temperature > 0 else None
    for seq in range(cfg.num_return_sequences):
        if seq:
            session.restore(snap)
            session.infer_ns = prefill_ns
        chain = build_chain(cfg, prompt_len=len(ids), user=processors)
        stopping = Stopping(eos_token_ids=cfg.eos_token_id, max_new_tokens=max_new, max_time=cfg.max_time,
                            ignore_eos=cfg.ignore_eos)
        yield from decode(session, first if seq else logits, chain=chain, choose=sampler or greedy,
                          stopping=stopping, detok=IncrementalDecoder(model.tokenizer),
                          stop_strings=StopStrings(cfg.stop_strings, cfg.include_stop_str_in_output),
                          top_n=cfg.top_logprobs, sequence=seq, t_start_ns=t_start, overlap=overlap)


def _beam_records(model, session, ids, cfg, processors, max_new, logits) -> Iterator[TokenRecord]:
    """Beam search, then one TokenRecord per token of each returned sequence, best first. The best
    sequence is only known at the end, so records come after the search; each token's timings are
    those of the search step that chose it (`beam.BeamSearch.steps()` shows the search live)."""
    hyps, steps = beam_search(session, ids, cfg, max_new_tokens=max_new, processors=processors, logits=logits)
    for seq, h in enumerate(hyps):
        detok = IncrementalDecoder(model.tokenizer)
        last = len(h.token_ids) - 1
        for i, tok in enumerate(h.token_ids):
            text = detok.push(tok) + (detok.flush() if i == last else "")
            st = steps[i]
            yield TokenRecord(i, tok, text, h.logprobs[i], h.processed_logprobs[i],
                              h.finish_reason if i == last else None, None, seq, st.model_ns, st.process_ns,
                              st.choice_ns, 0, st.ready_ns, st.stage_ns, score=h.score)


def generate(model, prompt: Prompt, config: GenerationConfig | dict | None = None, *, session=None,
             processors: Sequence[Processor] = (), on_token: Callable[[TokenRecord], None] | None = None,
             chat_template: str | None = None, overlap: bool = True) -> GenerationResult:
    """Generate to the end and return ids, text, finish reasons and metrics. `on_token(record)` is
    called for every token as it is chosen (streaming), while the next token's infer runs
    (`overlap`, see `stream`). `result.profile` has every token's timings and the exports."""
    cfg = resolve_config(model, config)
    ids = prompt_ids(model, prompt, chat_template=chat_template, config=cfg)
    t_start = perf_counter_ns()
    records: list[TokenRecord] = []
    for rec in run(model, session or model.session(), ids, cfg, processors, overlap=overlap):
        records.append(rec)
        if on_token is not None:
            on_token(rec)
    return collect(ids, records, cfg.num_return_sequences, t_start)


def collect(ids: list[int], records: list[TokenRecord], n_sequences: int, t_start_ns: int) -> GenerationResult:
    """Group records into sequences and compute metrics (of the first sequence)."""
    seqs = []
    for s in range(n_sequences):
        recs = [r for r in records if r.sequence == s]
        seqs.append(SequenceResult([r.token_id for r in recs], "".join(r.text for r in recs),
                                   recs[-1].finish_reason if recs else "length", recs[-1].score if recs else None,
                                   recs))
    first = seqs[0].records if seqs else []
    return GenerationResult(list(ids), seqs, summarize(first, t_start_ns, prompt_tokens=len(ids)), t_start_ns)

