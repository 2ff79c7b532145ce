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
from .batch import sequence_rows, side_by_side
from .beam import beam_search, check_beam_config
from .choice import as_chooser, token_choice
from .config import GenerationConfig
from .processors import Processor, as_stage
from .profiling import Profile, summarize
from .runtime import physical_memory
from .search import TokenRecord, decode, sequence_records
from .session import owned
from .speculative import DraftModel, PromptLookup, speculative_decode
from .stopping import StopStrings, Stopping
from .structured import constraint_of, grammar_stage
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
                           "score": s.score, "logprobs": json_numbers(s.logprobs), **top_logprobs_field(s.records)}
                          for s in self.sequences],
            "metrics": self.metrics,
        }


def json_numbers(values) -> list:
    """Floats for JSON: NaN (a value the runtime does not report, e.g. onnxruntime-genai's beam search's
    log-probabilities) becomes None, since NaN is not JSON."""
    return [None if v != v else v for v in values]


def top_logprobs_field(records) -> dict:
    """`{"top_logprobs": [[[token_id, logprob], ...] per token]}` when the records carry them
    (config.top_logprobs > 0), else `{}`: the JSON outputs of `generate --json` and `ovgen batch`."""
    if not records or records[0].top_logprobs is None:
        return {}
    return {"top_logprobs": [[list(pair) for pair in r.top_logprobs or ()] for r in records]}


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
    with `config.truncate_prompt` - cut to its last tokens that do leave room; and the config's rows
    side by side must fit in memory (`check_rows`)."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty")
        ids = model.tokenizer.encode(prompt, add_special_tokens=False)
    elif not isinstance(prompt, (list, tuple, np.ndarray)):
        raise TypeError("a prompt is a string, a list of token ids or a list of chat messages (a list of those: "
                        f"a batch), got {type(prompt).__name__}")
    elif isinstance(prompt, np.ndarray) or (len(prompt) and not isinstance(prompt[0], dict)):
        if isinstance(prompt, np.ndarray) and (prompt.ndim > 2 or prompt.ndim == 2 and prompt.shape[0] != 1):
            raise ValueError(f"prompt token ids in an array must be [T] or [1, T], got shape {prompt.shape}; a batch "
                             "is a list of prompts (each row without its padding)")
        flat = np.asarray(prompt, dtype=object).reshape(-1)
        bad = next((i for i, t in enumerate(flat) if isinstance(t, bool) or not isinstance(t, (int, np.integer))), None)
        if bad is not None:
            raise TypeError(f"prompt token ids must be integers, got {flat[bad]!r} ({type(flat[bad]).__name__}) "
                            f"at position {bad}")
        ids = [int(t) for t in flat]
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
            where = getattr(model, "context_name", "max_position_embeddings")
            raise ValueError(f"prompt has {len(ids)} tokens; the model's context ({where}) is "
                             f"{limit}; set truncate_prompt=True (CLI --truncate-prompt) to keep its last {keep}")
        ids = ids[len(ids) - keep:]
    if config is not None:
        check_rows(model, config, len(ids))
    return ids


def is_batch(prompt) -> bool:
    """A list of prompts (texts, token-id lists or message lists), not one prompt (a text, token ids,
    or one conversation's messages)."""
    if isinstance(prompt, (str, np.ndarray)) or not isinstance(prompt, (list, tuple)) or not prompt:
        return False
    return isinstance(prompt[0], (str, list, tuple, np.ndarray))


class Stream:
    """What `stream()` returns: iterate it for the TokenRecords. The prompt's token ids and the
    validated config are known (and every error raised) before the first record is asked for.
    `with ovgen.stream(...) as st:` closes it when the block is left, however it is left."""

    def __init__(self, model, prompt_ids: list[int], config: GenerationConfig, records: Iterator[TokenRecord]):
        self.model, self.prompt_ids, self.config, self._records = model, prompt_ids, config, records

    def __iter__(self) -> Iterator[TokenRecord]:
        return self._records

    def __next__(self) -> TokenRecord:
        return next(self._records)

    def close(self) -> None:
        self._records.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream(model, prompt: Prompt, config: GenerationConfig | dict | None = None, *, session=None,
           processors: Sequence[Processor] = (), chooser=None, assistant=None, proposer=None,
           prefix_cache=None, chat_template: str | None = None, overlap: bool = True, configs=None,
           batch_size: int = 8) -> Stream:
    """Generate, yielding one TokenRecord per token as soon as it is chosen (its `.text` is the
    streamed delta). With num_return_sequences > 1, sequences follow one another (`.sequence`), each
    whole; they are made side by side, as one batch over the prompt's forked KV row (ovgen/batch.py),
    sequence i drawing from child i of the seed's SeedSequence (sequence 0: the seed's own stream).
    With num_beams > 1 the records come once the search has ended.

    `session`: reuse a Session (its KV state is replaced; see `chat.Chat` for prefix reuse).
    `processors`: user callables `(token_ids, logits) -> logits`, transformers processors, or
    `processors.Stage`s, run after the built-in penalties and before the sampling warpers (the
    whole order: ovgen/processors.py). `chooser`: replaces greedy / the sampler (ovgen/choice.py).
    `assistant`: a draft Model (or Session) for speculative decoding; `proposer`: any object with
    `propose(tokens, k)` and `feedback(proposed, accepted)`; `config.prompt_lookup` proposes from
    the sequence itself (ovgen/speculative.py). The first record of each verification carries
    its `draft` step (proposed, accepted, timings).
    `prefix_cache`: a `prefix.PrefixCache`; the prompt reuses its longest cached prefix.
    A list of prompts runs batched (ovgen/batch.py): `configs[i]` (a dict or GenerationConfig) is
    prompt i's settings over `config`, at most `batch_size` rows share an infer (a prompt's
    num_return_sequences are rows of the batch), and each record's `row` says which prompt it belongs
    to, its `sequence` which of that prompt's sequences (a batch's records interleave).
    `overlap`: the next token's infer runs while the consumer handles a record (search.decode); the
    consumer must then not call the session itself before asking for the next record."""
    _check_parts(model, session, processors, chooser=chooser, proposer=proposer, prefix_cache=prefix_cache,
                 configs=configs, batch_size=batch_size, chat_template=chat_template)
    if is_batch(prompt):
        given = {"chooser": chooser, "assistant": assistant, "proposer": proposer, "prefix_cache": prefix_cache}
        for name, value in given.items():
            if value is not None:
                raise ValueError(f"{name} applies to one prompt at a time; a list of prompts runs batched without "
                                 "it (run the prompts one by one to use it)")
        return _batch_stream(model, prompt, config, configs, session=session, processors=processors,
                             chat_template=chat_template, batch_size=batch_size, overlap=overlap)
    if configs is not None:
        raise ValueError("configs gives each prompt of a list its settings; one prompt takes config")
    cfg = resolve_config(model, config)
    ids = prompt_ids(model, prompt, chat_template=chat_template, config=cfg)
    extra = constraint_stages(model, cfg)  # a grammar compiles now: its errors come before any inference
    session = session or model.session()
    proposer = proposer_for(model, session, cfg, assistant, proposer)
    records = run(model, session, ids, cfg, processors, chooser=chooser, overlap=overlap, extra=extra,
                  proposer=proposer, prefix_cache=prefix_cache)
    return Stream(model, ids, cfg, owned(session, records))


def _check_parts(model, session, processors, *, chooser=None, proposer=None, prefix_cache=None, configs=None,
                 batch_size=8, chat_template=None) -> None:
    """The parts a call brings (session, processors, chooser, proposer, prefix cache, a batch's
    configs and size, a chat template), checked before anything runs."""
    from .prefix import PrefixCache

    if chooser is not None:
        as_chooser(chooser)  # TypeError naming what it got
    for name in ("propose", "feedback"):
        if proposer is not None and not callable(getattr(proposer, name, None)):
            raise TypeError(f"proposer must have propose(tokens, k) and feedback(proposed, accepted) methods "
                            f"(ovgen/speculative.py), got {type(proposer).__name__}")
    if prefix_cache is not None and not isinstance(prefix_cache, PrefixCache):
        raise TypeError(f"prefix_cache must be an ovgen.prefix.PrefixCache, got {type(prefix_cache).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if configs is not None:
        if isinstance(configs, (str, bytes, dict)) or not isinstance(configs, Sequence):
            raise TypeError(f"configs must be a list (one dict or GenerationConfig per prompt), "
                            f"got {type(configs).__name__}")
        for i, row in enumerate(configs):
            if row is not None and not isinstance(row, (dict, GenerationConfig)):
                raise TypeError(f"configs[{i}] must be a dict, a GenerationConfig or None, got {type(row).__name__}")
    if session is not None and getattr(session, "model", None) is not model:
        what = type(session).__name__ if not hasattr(session, "model") else "a session of another model"
        raise TypeError(f"session must be a session of this model (model.session()), got {what}")
    if isinstance(processors, (str, bytes)) or not isinstance(processors, Sequence):
        raise TypeError(f"processors must be a list of processors, got {type(processors).__name__}")
    for p in processors:
        as_stage(p)  # TypeError naming what is not a processor
    if chat_template is not None and not isinstance(chat_template, str):  # (a text prompt ignored any value)
        raise TypeError(f"chat_template must be a template's text or None, got {type(chat_template).__name__}")


def _batch_stream(model, prompts, config, configs, *, session, processors, chat_template, batch_size, overlap
                  ) -> Stream:
    """Validate every prompt and its settings (errors name the prompt), then the batched loop."""
    from .batch import batch_stream

    if configs is not None and len(configs) != len(prompts):
        raise ValueError(f"configs has {len(configs)} entries for {len(prompts)} prompts")
    session = session or model.session()
    if session.one_row:
        raise NotImplementedError(f"a list of prompts runs as one batch: {session.one_row}, or run the prompts one "
                                  "by one")
    cfgs, ids, extras = [], [], []
    for i, prompt in enumerate(prompts):
        try:
            cfg = resolve_config(model, _merged(model, config, None if configs is None else configs[i]))
            ids.append(prompt_ids(model, prompt, chat_template=chat_template, config=cfg))
            extras.append(constraint_stages(model, cfg))
            cfgs.append(cfg)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise type(e)(f"prompts[{i}]: {e}") from None
    records = batch_stream(model, ids, cfgs, processors=processors, extras=extras, batch_size=batch_size,
                           session=session, overlap=overlap)
    return Stream(model, ids, cfgs, records)


def _merged(model, config, row) -> GenerationConfig | dict | None:
    """A row's settings over the call's: dicts merge; a GenerationConfig row replaces the call's."""
    if row is None:
        return config
    if isinstance(row, GenerationConfig):
        return row
    base = resolve_config(model, config)
    return base.replace(**row)


def check_rows(model, cfg: GenerationConfig, prompt_tokens: int) -> None:
    """Before anything runs: the rows a prompt decodes side by side (num_beams, or num_return_sequences
    sampled as one batch) must have room for their KV cache at the prompt + max_new_tokens, at the
    least (`Model.kv_bytes_per_token`), in this machine's memory: ValueError naming the field
    otherwise (a typo such as num_return_sequences=10**6 ran the prompt, then ran out of memory)."""
    rows = max(cfg.num_beams, cfg.num_return_sequences)  # (where sequences run in turn, their stages are built
    # at once all the same: a paged session's 10**12 sequences filled the memory too)
    per_token = getattr(model, "kv_bytes_per_token", 0)
    ram = physical_memory()
    if rows == 1 or not per_token or not ram:
        return
    tokens = prompt_tokens + cfg.max_new_tokens
    if model.max_context:
        tokens = min(tokens, model.max_context)
    need = rows * tokens * per_token
    if need > ram:
        name = "num_beams" if cfg.num_beams >= cfg.num_return_sequences else "num_return_sequences"
        raise ValueError(f"{name}={rows}: {rows} rows side by side need at least {need / 2 ** 30:.3g} GiB of KV cache "
                         f"({tokens} tokens each, {per_token / 1024:.1f} KiB per token), more than this machine's "
                         f"{ram / 2 ** 30:.3g} GiB of memory; ask for fewer rows or fewer max_new_tokens")


def constraint_stages(model, cfg: GenerationConfig) -> list:
    """The structured-output mask for the config's constraint (json_schema, regex, grammar, choices),
    one matcher per beam; [] without one."""
    stage = grammar_stage(model, cfg, rows=max(1, cfg.num_beams)) if constraint_of(cfg) else None
    return [stage] if stage is not None else []


def proposer_for(model, session, cfg: GenerationConfig, assistant=None, proposer=None):
    """The proposer speculative decoding uses (None: none asked for), checked before inference."""
    if proposer is None and assistant is None and not cfg.prompt_lookup:
        return None
    if sum(x is not None and x is not False for x in (proposer, assistant, cfg.prompt_lookup or None)) > 1:
        raise ValueError("choose one of prompt_lookup, assistant and proposer")
    if cfg.num_beams > 1:
        raise ValueError(f"speculative decoding verifies one sequence: num_beams must be 1, got {cfg.num_beams}")
    if not getattr(session, "_has_keep", False):
        raise NotImplementedError("speculative decoding needs several positions' logits from one infer "
                                  "(an OpenVINO IR loaded with last_logits_only=True; not the onnxruntime-genai path)")
    if assistant is not None:
        if not (hasattr(assistant, "session") or hasattr(assistant, "rewind")):
            raise TypeError(f"assistant must be a Model or a Session (the draft), got {type(assistant).__name__}")
        vocab = getattr(assistant, "vocab_size", None) or getattr(getattr(assistant, "model", None), "vocab_size", None)
        if vocab not in (None, model.vocab_size):
            raise ValueError(f"assistant's vocabulary ({vocab}) differs from the model's "
                             f"({model.vocab_size}): a draft must share the tokenizer")
        return DraftModel(assistant, cfg.num_assistant_tokens, cfg.num_assistant_tokens_schedule)
    if cfg.prompt_lookup:
        return PromptLookup(cfg.max_ngram_size, cfg.num_assistant_tokens, cfg.eos_token_id,
                            cfg.num_assistant_tokens_schedule)
    return proposer


def run(model, session, ids: list[int], cfg: GenerationConfig, processors=(), *, chooser=None, logits=None,
        overlap=True, extra=(), proposer=None, prefix_cache=None) -> Iterator[TokenRecord]:
    """The loop over a validated config and checked ids. `logits`: the caller has already run the
    prompt through `session` (chat prefix reuse) and passes its last-position logits."""
    max_new = cfg.max_new_tokens
    if model.max_context:
        max_new = min(max_new, model.max_context - len(ids))
    if prefix_cache is not None:
        prefix_cache.check(session)  # a session it cannot serve, before anything runs
    if cfg.num_beams > 1 and not session.reorder_kv:  # a runtime with its own beam search
        yield from session.beam_records(ids, cfg, max_new, processors)
        return
    if cfg.num_beams > 1:  # BeamSearch checks the beam settings before it runs anything
        if logits is None and prefix_cache is not None and max_new > 0:  # (beam search ignored the cache)
            logits = prefix_cache.prefill(session, ids)
        hyps, steps = beam_search(session, ids, cfg, max_new_tokens=max_new, processors=processors, logits=logits,
                                  model=model, extra=extra)
        yield from sequence_records(model.tokenizer, hyps, steps, cfg.stop_strings, cfg.include_stop_str_in_output)
        return
    if max_new == 0:
        return
    session.reserve(len(ids) + max_new)  # a runtime that allocates its KV buffer whole sizes it now
    t_start = perf_counter_ns()
    if logits is None:
        logits = prefix_cache.prefill(session, ids) if prefix_cache is not None else session.prefill(ids)
    choice = token_choice(cfg, prompt_len=len(ids), processors=processors, model=model, chooser=chooser, extra=extra)
    # Each returned sequence has its own stage (for_sequence: its own generator) where the chooser can
    # give one: side by side as one batch where the session forks its KV row, else one after another.
    # A chooser without one serves every sequence in turn, its generator running on.
    choices = [choice] + [choice.for_sequence(i) for i in range(1, cfg.num_return_sequences)]
    if None in choices:
        choices = [choice] * cfg.num_return_sequences
    elif side_by_side(session, cfg, proposer):
        choice.chain.reset()
        yield from sequence_rows(model, session, ids, cfg, choices, logits, t_start, overlap)
        return
    first = np.array(logits, copy=True) if cfg.num_return_sequences > 1 else None
    prefill_ns = session.infer_ns
    # a session that takes no snapshots (paged) runs the prompt again for each further sequence: the same
    # computation (it raised NotImplementedError after the first prefill)
    snap = session.snapshot() if cfg.num_return_sequences > 1 and session.snapshots else None
    for seq, choice in enumerate(choices):
        if seq:  # the next sequence starts from the prompt again
            if snap is not None:
                session.restore(snap)
            else:
                session.prefill(ids)
            session.infer_ns = prefill_ns
        choice.chain.reset()
        stopping = Stopping(eos_token_ids=cfg.eos_token_id, max_new_tokens=max_new, max_time=cfg.max_time,
                            ignore_eos=cfg.ignore_eos)
        loop = dict(choice=choice, stopping=stopping, detok=IncrementalDecoder(model.tokenizer),
                    stop_strings=StopStrings(cfg.stop_strings, cfg.include_stop_str_in_output),
                    top_n=cfg.top_logprobs, sequence=seq, t_start_ns=t_start)
        if proposer is not None:
            yield from speculative_decode(session, first if seq else logits, proposer=proposer, overlap=overlap,
                                          **loop)
        else:
            yield from decode(session, first if seq else logits, overlap=overlap, **loop)


def generate(model, prompt: Prompt, config: GenerationConfig | dict | None = None, *, session=None,
             processors: Sequence[Processor] = (), chooser=None, assistant=None, proposer=None, prefix_cache=None,
             on_token: Callable[[TokenRecord], None] | None = None, chat_template: str | None = None,
             overlap: bool = True, configs=None, batch_size: int = 8) -> GenerationResult | list[GenerationResult]:
    """Generate to the end (a consumer of `stream`) and return ids, text, finish reasons and metrics.
    `on_token(record)` is called for every token as it is chosen, while the next token's infer runs
    (`overlap`, see `stream`). `result.profile` has every token's timings and the exports."""
    if on_token is not None and not callable(on_token):
        raise TypeError(f"on_token must be a callable taking a TokenRecord, got {type(on_token).__name__}")
    t_start = perf_counter_ns()
    s = stream(model, prompt, config, session=session, processors=processors, chooser=chooser, assistant=assistant,
               proposer=proposer, prefix_cache=prefix_cache, chat_template=chat_template, overlap=overlap,
               configs=configs, batch_size=batch_size)
    records: list[TokenRecord] = []
    for rec in s:
        records.append(rec)
        if on_token is not None:
            on_token(rec)
    if isinstance(s.config, list):  # a batch: one result per prompt
        return [collect(ids, [r for r in records if r.row == i], cfg.num_return_sequences, t_start)
                for i, (ids, cfg) in enumerate(zip(s.prompt_ids, s.config))]
    return collect(s.prompt_ids, records, s.config.num_return_sequences, t_start)


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
