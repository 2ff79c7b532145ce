"""Speculative decoding, KV trims, save/load and the prefix cache (ovgen/speculative.py, kvstate.py,
prefix.py): greedy output identical to plain greedy, the sampling rule's output distribution is the
target's, processors see the histories they would without speculation, trims continue like fresh."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from scipy import stats

import ovgen
from conftest import PROMPTS, require_flavour
from ovgen.choice import token_choice
from ovgen.cli import main
from ovgen.config import GenerationConfig
from ovgen.generate import prompt_ids
from ovgen.prefix import PrefixCache
from ovgen.speculative import PromptLookup, accepted_counts, speculative_decode
from ovgen.stopping import StopStrings, Stopping

CODE = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
'''
GROUNDED = ["# Original:\n" + CODE + "\n# The same code, with fibonacci renamed to fib:\n",
            [{"role": "user", "content": "Repeat this text exactly: The quick brown fox jumps over the lazy dog. "
                                         "The quick brown fox jumps over the lazy dog."}]]


def _tokens(model, prompt, n=48, **kw):
    extra = {k: kw.pop(k) for k in ("assistant", "processors") if k in kw}
    res = ovgen.generate(model, prompt, {"max_new_tokens": n, "ignore_eos": True, **kw}, **extra)
    return res.sequences[0]


@pytest.mark.parametrize("prompt", GROUNDED + PROMPTS[:4])
def test_prompt_lookup_greedy_equals_plain_greedy(model, prompt):
    plain = _tokens(model, prompt)
    spec = _tokens(model, prompt, prompt_lookup=True, num_assistant_tokens=8)
    assert spec.token_ids == plain.token_ids


def test_prompt_lookup_accepts_on_grounded_prompts(model):
    proposed, accepted = accepted_counts(_tokens(model, GROUNDED[0], prompt_lookup=True).records)
    assert proposed > 20 and accepted / proposed > 0.3


def test_draft_model_greedy_equals_plain_greedy(model):
    draft = ovgen.load(require_flavour("draft"))
    for prompt in PROMPTS[:3]:
        plain = _tokens(model, prompt, n=32)
        for schedule in ("constant", "heuristic"):
            spec = _tokens(model, prompt, n=32, assistant=draft, num_assistant_tokens_schedule=schedule)
            assert spec.token_ids == plain.token_ids, (prompt, schedule)
    # the target as its own draft: every proposal is accepted
    spec = _tokens(model, PROMPTS[0], n=32, assistant=model)
    proposed, accepted = accepted_counts(spec.records)
    assert proposed > 0 and accepted == proposed


def test_processors_see_the_histories_they_would_without_speculation(model):
    seen_plain, seen_spec = [], []

    def spy(into):
        def record(token_ids, logits):
            into.append(token_ids.tolist())
            return logits
        return record

    kw = dict(repetition_penalty=1.3, no_repeat_ngram_size=3)
    plain = _tokens(model, GROUNDED[0], processors=[spy(seen_plain)], **kw)
    spec = _tokens(model, GROUNDED[0], processors=[spy(seen_spec)], prompt_lookup=True, **kw)
    assert spec.token_ids == plain.token_ids
    assert seen_spec == seen_plain  # one call per emitted token, each with its own history


def test_structured_output_with_prompt_lookup(model):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                                        "maxItems": 3}}, "required": ["name", "tags"],
              "additionalProperties": False}
    msgs = [{"role": "user", "content": 'Copy this JSON: {"name": "Ann", "tags": ["a", "b"]}'}]
    plain = ovgen.generate(model, msgs, {"max_new_tokens": 60, "json_schema": schema})
    spec = ovgen.generate(model, msgs, {"max_new_tokens": 60, "json_schema": schema, "prompt_lookup": True})
    assert spec.sequences[0].token_ids == plain.sequences[0].token_ids
    json.loads(spec.text)


class _ToyLM:
    """A NumPy language model behind the Session protocol speculative decoding uses: logits are a
    fixed random function of the last two tokens; logits_to_keep and rewind as the real Session."""

    reorder_kv, _has_keep, top, argmax = False, True, None, None

    def __init__(self, vocab=6, seed=0):
        self.vocab, self.seed = vocab, seed
        self.model = type("M", (), {"max_context": None, "vocab_size": vocab})()
        self._toks = []
        self.infer_ns = self.infer_start_ns = 0

    def _row(self, ids):
        rng = np.random.default_rng([self.seed, *ids[-2:]])
        return (rng.standard_normal(self.vocab) * 1.5).astype(np.float32)

    @property
    def tokens(self):
        return np.array([self._toks], np.int64)

    @property
    def length(self):
        return len(self._toks)

    def tokens_then(self, token):
        return np.array(self._toks + [token], np.int64)

    def append(self, ids, logits_to_keep=1):
        rows = []
        for t in ids:
            self._toks.append(int(t))
            rows.append(self._row(self._toks))
        out = np.stack(rows[-logits_to_keep:])
        lse = np.log(np.exp(out.astype(np.float64)).sum(-1)).astype(np.float32)
        self.kept_logsumexp, self.logsumexp = lse, lse[-1]
        return out if logits_to_keep > 1 else out[0]

    def prefill(self, ids):
        self._toks = []
        return self.append(ids)

    def rewind(self, n):
        del self._toks[len(self._toks) - n:]

    # the overlapped verification, run when finished (the loop must not read the session in between)
    def start_append(self, ids, logits_to_keep=1):
        self._pending = (list(ids), logits_to_keep)
        return 1

    def finish_step(self):
        (ids, keep), self._pending = self._pending, None
        return self.append(ids, keep)

    def settle(self, step_id=None):
        if getattr(self, "_pending", None):
            self.finish_step()


class _Fixed:
    """Always proposes the same tokens (the rule must still give the target's distribution)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def propose(self, tokens, k):
        return self.tokens[:k]

    def feedback(self, proposed, accepted):
        pass


def _first_two(lm, choice, proposer, seed):
    choice.chooser.rng = np.random.default_rng(seed)
    logits = lm.prefill([1, 2])
    stopping = Stopping(eos_token_ids=[], max_new_tokens=2)
    detok = type("D", (), {"push": lambda self, t: "", "flush": lambda self: ""})()
    recs = list(speculative_decode(lm, logits, choice=choice, proposer=proposer, stopping=stopping, detok=detok,
                                   stop_strings=StopStrings([]), max_draft=3))
    return recs[0].token_id, recs[1].token_id


def test_padded_verifications_stop_at_the_context_end():
    """A session that pads verifications to 1 + k (the paged one) keeps padding while fewer than k
    tokens are left to generate, but never past the model's context: every block fits, the last
    ones narrow only there, and the tokens are those of plain greedy on the same toy model."""
    greedy = GenerationConfig(do_sample=False)
    detok = type("D", (), {"push": lambda self, t: "", "flush": lambda self: ""})()

    def run(proposer, limit):
        lm = _ToyLM(seed=3)
        lm.pad_verify_to, lm.model.max_context = 4, limit
        blocks, append = [], lm.append
        lm.append = lambda ids, logits_to_keep=1: blocks.append((lm.length, len(ids))) or append(ids, logits_to_keep)
        logits = lm.prefill([1, 2, 3, 4])
        stopping = Stopping(eos_token_ids=[], max_new_tokens=limit - 4 if limit else 20)  # as generate() caps it
        recs = list(speculative_decode(lm, logits, choice=token_choice(greedy, prompt_len=4), proposer=proposer,
                                       stopping=stopping, detok=detok, stop_strings=StopStrings([]), max_draft=3))
        return [r.token_id for r in recs], blocks[1:]

    plain, _ = run(_Fixed([]), None)
    for limit in (None, 16, 19):
        lookup = PromptLookup(max_ngram_size=2, num_tokens=3)
        tokens, blocks = run(lookup, limit)
        assert tokens == plain[:len(tokens)] and len(tokens) == (limit - 4 if limit else 20)
        for held, width in blocks:
            fits = limit - held - 2 if limit else 3  # after the block's first: the block and the token after it fit
            assert width == 1 + min(3, fits)
        assert not limit or min(width for _, width in blocks) < 4


def test_speculative_sampling_has_the_targets_distribution():
    """Exact on a 6-token toy model: the joint law of the first two tokens under speculative sampling
    (drafts fixed to tokens the model rarely picks, so both branches of the rule act) is the plain
    sampler's, p(a) p(b | a), by a chi-square test over 12,000 runs."""
    lm = _ToyLM()
    cfg = GenerationConfig(do_sample=True, top_k=0)
    choice = token_choice(cfg, prompt_len=2)
    n = 12_000
    counts = np.zeros((6, 6))
    for seed in range(n):
        a, b = _first_two(lm, choice, _Fixed([3, 3, 3]), seed)
        counts[a, b] += 1
    p1 = np.exp(lm._row([1, 2]).astype(np.float64))
    p1 /= p1.sum()
    expected = np.zeros((6, 6))
    for a in range(6):
        p2 = np.exp(lm._row([1, 2, a]).astype(np.float64))
        expected[a] = p1[a] * p2 / p2.sum()
    _, pvalue = stats.chisquare(counts.ravel(), expected.ravel() * n)
    assert pvalue > 1e-3


def test_speculative_sampling_on_the_real_model_keeps_the_distribution(model):
    """The real model: the prompt makes the first token all but certain (" dog"), prompt lookup then
    drafts the second; over 300 seeds the second token follows the target's processed distribution
    after the first (temperature 1.5, top-k 20; expected counts < 5 pooled), by a chi-square test."""
    ids = model.tokenizer.encode("The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy")
    cfg = {"do_sample": True, "top_k": 20, "temperature": 1.5, "max_new_tokens": 3, "prompt_lookup": True}
    runs = [ovgen.generate(model, ids, {**cfg, "seed": k}).sequences[0] for k in range(300)]
    first = max({r.token_ids[0] for r in runs}, key=[r.token_ids[0] for r in runs].count)
    seconds = [r.token_ids[1] for r in runs if r.token_ids[0] == first]
    assert len(seconds) > 250
    assert all(r.records[1].draft.proposed for r in runs if r.token_ids[0] == first)  # a draft position
    logits = model.session().prefill(ids + [first]).astype(np.float64) / 1.5
    top = np.argsort(-logits, kind="stable")[:20]
    p = np.exp(logits[top] - logits[top].max())
    p /= p.sum()
    counts = np.array([seconds.count(int(t)) for t in top])
    big = p * len(seconds) >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(p[big], p[~big].sum()) * len(seconds)
    assert counts.sum() == len(seconds)
    assert stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue > 1e-3


# ---- KV state ----------------------------------------------------------------------------------------
def _greedy(session, logits, n):
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = session.step(out[-1])
    return out


def test_many_rewinds_compact_and_continue_like_fresh(model):
    ids = model.tokenizer.encode(PROMPTS[4])
    fresh = _greedy(s := model.session(), s.prefill(ids), 24)
    a = model.session()
    a.prefill(ids)
    for _ in range(40):  # 40 x 8 junk tokens rewound: holes pass 256 and half the state
        a.append(list(range(100, 108)))
        a.rewind(8)
    assert a.holes < 320 and a.length == len(ids)
    a.rewind(1)
    assert _greedy(a, a.append(ids[-1:]), 24) == fresh


def test_save_and_load(model, model_dir, tmp_path):
    ids = model.tokenizer.encode(PROMPTS[8])
    fresh = _greedy(s := model.session(), s.prefill(ids), 16)
    a = model.session()
    a.prefill(ids)
    a.append([100, 101])
    a.rewind(2)  # holes travel too
    a.save(tmp_path / "s.npz")
    b = model.session()
    b.load(tmp_path / "s.npz")
    assert b.tokens[0].tolist() == ids and b.holes == 2
    b.rewind(1)
    assert _greedy(b, b.append(ids[-1:]), 16) == fresh
    # refused: another precision, another model, a corrupt file, not a session at all
    u8 = ovgen.load(model_dir, ov_config={"KV_CACHE_PRECISION": "u8"})
    with pytest.raises(ValueError, match="saved at precision"):
        u8.session().load(tmp_path / "s.npz")
    phi3 = ovgen.load(require_flavour("phi3-tiny"))
    with pytest.raises(ValueError, match="saved from another model"):
        phi3.session().load(tmp_path / "s.npz")
    raw = bytearray((tmp_path / "s.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt|not a saved ovgen session"):
        model.session().load(tmp_path / "bad.npz")
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a saved ovgen session"):
        model.session().load(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        model.session().load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"save: cannot write .*nodir.s\.npz \(No such file"):
        a.save(tmp_path / "nodir" / "s.npz")
    assert not (tmp_path / "nodir").exists() and a.tokens[0].tolist() == ids  # the session is untouched


def test_prefix_cache_reuses_a_shared_system_prompt(model):
    cache = PrefixCache()
    system = {"role": "system", "content": "You are a careful assistant. Answer in one short sentence. " * 3}
    shared = None
    for question in PROMPTS[:5]:
        msgs = [system, {"role": "user", "content": question}]
        ids = prompt_ids(model, msgs)
        shared = ids if shared is None else shared[:_common(shared, ids)]
        fresh = ovgen.generate(model, msgs, {"max_new_tokens": 24}).sequences[0].token_ids
        cached = ovgen.generate(model, msgs, {"max_new_tokens": 24}, prefix_cache=cache).sequences[0].token_ids
        assert cached == fresh, question
    assert cache.misses == 1 and cache.hits == 4 and cache.reused_tokens >= 4 * len(shared) > 4 * 30
    # another model (its draft; the same IR with a u8 KV cache) would restore states it did not compute: the
    # draft's failed on a state name, the other precision's (native bf16 here) gave other tokens, silently
    for other in (ovgen.load(require_flavour("draft")), ovgen.load(model.path, ov_config={"KV_CACHE_PRECISION": "u8"})):
        session = other.session()
        with pytest.raises(ValueError, match="this prefix cache holds the KV states of another model"):
            ovgen.generate(other, msgs, {"max_new_tokens": 4}, prefix_cache=cache, session=session)
        assert session.length == 0 and cache.hits == 4
    again = ovgen.load(model.path)  # the same IR and precision, loaded again: the same states, reused
    assert ovgen.generate(again, msgs, {"max_new_tokens": 24}, prefix_cache=cache).sequences[0].token_ids == fresh


def test_beam_search_reuses_the_prefix_cache(model):
    """Beam search prefilled the whole prompt and left the cache as it was (no lookup, nothing stored):
    a prefix_cache passed with num_beams > 1 was silently dropped. The same beams and scores as cold."""
    cache = PrefixCache()
    system = {"role": "system", "content": "You are a careful assistant. Answer in one short sentence. " * 3}
    cfg = {"max_new_tokens": 12, "num_beams": 3, "num_return_sequences": 2}
    for question in PROMPTS[:3]:
        msgs = [system, {"role": "user", "content": question}]
        cold = ovgen.generate(model, msgs, cfg).sequences
        warm = ovgen.generate(model, msgs, cfg, prefix_cache=cache).sequences
        assert [s.token_ids for s in warm] == [s.token_ids for s in cold], question
        # (a chunked prefill computes the last bits differently: scores ~2e-4 apart)
        assert [s.score for s in warm] == pytest.approx([s.score for s in cold], abs=2e-3)
    assert cache.misses == 1 and cache.hits == 2


def test_prefix_cache_settings_are_checked_and_a_one_token_minimum_works(model):
    # min_tokens=0 failed with a bare KeyError on the first prompt (the "longest" match was the empty prefix)
    for kwargs, message in (({"min_tokens": 0}, "min_tokens must be an integer >= 1"),
                            ({"min_tokens": "16"}, "min_tokens must be an integer >= 1.* got '16'"),
                            ({"max_bytes": -1}, "max_bytes must be a number of bytes >= 0, got -1")):
        with pytest.raises(ValueError, match=message):
            PrefixCache(**kwargs)
    cache = PrefixCache(min_tokens=1)
    for prompt in ("Hello there", "Hello you", "Hello you"):
        fresh = ovgen.generate(model, prompt, {"max_new_tokens": 6}).sequences[0].token_ids
        assert ovgen.generate(model, prompt, {"max_new_tokens": 6}, prefix_cache=cache).sequences[0].token_ids == fresh
    assert cache.misses == 1 and cache.hits == 2


def test_a_prefix_cache_shared_by_threads(model):
    """Threads sharing one cache: a lookup iterating the entries while another thread stored one failed
    with 'OrderedDict mutated during iteration'. The container first (small stand-in snapshots, many
    quick calls), then the real model: two threads, their own sessions, one cache, fresh tokens."""
    class Snap:
        states = {"k": np.zeros(4, np.float32)}  # 16 bytes

    cache, errors = PrefixCache(max_bytes=16 * 300, min_tokens=1), []

    def safely(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    writer = threading.Thread(target=safely, args=(lambda: [cache.store([1, 2, i, i + 1], Snap()) for i in range(3000)],))
    reader = threading.Thread(target=safely, args=(lambda: [cache.lookup([1, 2, i, 7]) for i in range(300)],))
    for t in (writer, reader):
        t.start()
    for t in (writer, reader):
        t.join()
    assert errors == [] and len(cache) == 300 and cache.nbytes == 16 * 300

    system = {"role": "system", "content": "You are a careful assistant. Answer in one short sentence. " * 3}
    chats = [[system, {"role": "user", "content": q}] for q in PROMPTS[:4]]
    fresh = [ovgen.generate(model, c, {"max_new_tokens": 12}).sequences[0].token_ids for c in chats]
    shared, got = PrefixCache(), {}

    def run(i):
        session = model.session()
        for j in (i, i + 2):
            got[j] = ovgen.generate(model, chats[j], {"max_new_tokens": 12}, session=session,
                                    prefix_cache=shared).sequences[0].token_ids

    threads = [threading.Thread(target=safely, args=(lambda i=i: run(i),)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and [got[j] for j in range(4)] == fresh and shared.hits >= 2


def _common(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_speculative_errors_come_before_inference(model):
    session = model.session()
    with pytest.raises(ValueError, match="num_beams must be 1"):
        ovgen.generate(model, "hi", {"prompt_lookup": True, "num_beams": 2}, session=session)
    with pytest.raises(ValueError, match="num_assistant_tokens_schedule"):
        ovgen.generate(model, "hi", {"num_assistant_tokens_schedule": "fast"}, session=session)
    with pytest.raises(TypeError, match="assistant must be a Model or a Session .*got str"):
        ovgen.generate(model, "hi", {}, assistant="draft", session=session)
    phi3 = ovgen.load(require_flavour("phi3-tiny"))
    for other in (phi3, phi3.session()):  # another tokenizer: refused, as a Model or as a Session
        with pytest.raises(ValueError, match=f"assistant's vocabulary \\({phi3.vocab_size}\\) differs"):
            ovgen.generate(model, "hi", {}, assistant=other, session=session)
    onnx = ovgen.load(require_flavour("onnx"))
    with pytest.raises(NotImplementedError, match="several positions' logits"):
        ovgen.generate(onnx, "hi", {"prompt_lookup": True})
    assert session.length == 0


def test_cli_speculation(model_dir, capsys):
    args = ["generate", "-m", str(model_dir), "--max-new-tokens", "24", "--ignore-eos", GROUNDED[0]]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--prompt-lookup"]) == 0
    assert capsys.readouterr().out == plain
    assert main(args + ["--draft", str(require_flavour("draft"))]) == 0
    assert capsys.readouterr().out == plain


def test_prompt_lookup_proposals_follow_transformers():
    lookup = PromptLookup(max_ngram_size=3, num_tokens=4, eos_token_ids=[9])
    seq = np.array([5, 6, 7, 8, 1, 2, 5, 6, 7, 3, 5, 6, 7])
    assert lookup.propose(seq, 4) == [8, 1, 2, 5]  # first match of (5, 6, 7), left to right
    assert lookup.propose(np.array([1, 2, 9, 4, 1, 2]), 4) == []  # cut before eos
    assert lookup.propose(np.array([1, 4, 4, 2, 3, 4]), 2) == [4, 2]  # (3, 4) unseen: the 1-gram (4,)
    assert lookup.propose(np.array([1, 2, 3]), 4) == []


def test_prompt_lookup_proposals_equal_transformers_generator():
    """Against transformers' PromptLookupCandidateGenerator itself, on 3,000 random histories over
    small vocabularies (many overlapping matches; token ids up to 2^40, so their int64 bytes also
    repeat across token boundaries), n-gram sizes 1-4, k 1-6, with and without an eos among them."""
    import torch
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    rng = np.random.default_rng(7)
    differ = []
    for case in range(3000):
        vocab = rng.choice([3, 5, 8], p=[0.4, 0.4, 0.2])
        ids = rng.integers(0, vocab, size=int(rng.integers(1, 40)))
        if case % 3 == 0:  # ids whose bytes look alike at other offsets
            ids = ids * 257 + (1 << 40) * (ids % 2)
        n, k = int(rng.integers(1, 5)), int(rng.integers(1, 7))
        eos = [int(ids[rng.integers(len(ids))])] if case % 2 else []
        ref = PromptLookupCandidateGenerator(eos_token_id=torch.tensor(eos, dtype=torch.long), num_output_tokens=k,
                                             max_matching_ngram_size=n, max_length=10_000)
        cand, _ = ref.get_candidates(torch.tensor(ids[None], dtype=torch.long))
        want = cand[0, len(ids):].tolist()
        got = PromptLookup(max_ngram_size=n, num_tokens=k, eos_token_ids=eos).propose(ids.astype(np.int64), k)
        if got != want:
            differ.append((ids.tolist(), n, k, eos, got, want))
    assert not differ, differ[:3]
