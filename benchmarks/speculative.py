"""Speculative decoding, measured: prompt lookup and a draft model against plain greedy and against
openvino-genai's prompt-lookup pipeline, on input-grounded prompts, with ovgen on the stateful IR and
on the paged one (`attention="paged"`, the PagedAttention IR genai's pipeline compiles too), with
genai's paged pipeline decoding greedily beside them (one token per infer: what an infer costs
there against ovgen's paged one, speculation aside); and what
a KV trim costs against the context length (ovgen's holes, the paged rewind, copying the state as
openvino-genai's trim_kv_cache does).

Per prompt, rounds interleaved in a balanced order; TPOT = (last - first stamp) / (n - 1) of one
run; ratios are medians of per-round ratios against plain greedy; every mode's tokens are compared
with plain greedy's.

Prompt lookup runs at each `--num-assistant-tokens` k (ovgen and genai alike); what a verification
of w positions costs against one position is printed too: the k that pays depends on that curve.
Paged greedy and paged prompt lookup at the first k also run with `overlap=False` (the next infer
started only after the records are consumed): `*_overlap_over_no_overlap_tpot`.

    python benchmarks/speculative.py [--rounds 5] [--new-tokens 96] [--num-assistant-tokens 3,10] [--plot trim.png]
"""

from __future__ import annotations

import argparse
import json
from time import perf_counter_ns

import numpy as np

import ovgen
from _results import default_path, line_plot, save_result  # benchmarks/ is on sys.path when run as a script
from _timing import balanced, median_ratio
from ovgen import kvstate
from ovgen.bench import synthetic_prompt
from ovgen.generate import prompt_ids
from ovgen.prepare import flavour_dir

CODE = '''import json


def load_config(path):
    """Read a JSON config file and return it as a dict."""
    with open(path) as f:
        config = json.load(f)
    if "name" not in config:
        raise ValueError("config needs a name")
    return config


def save_config(path, config):
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
'''
TEXT = ("The lighthouse stood on a rock a mile from the shore. Every night the keeper climbed its one hundred and "
        "twelve steps to light the lamp, and every morning he wrote the weather in a small green book.")
PROMPTS = {
    "code_edit": "# Original:\n" + CODE + "\n# The same code, with load_config renamed to read_config:\n",
    "summarise_quote": [{"role": "user", "content": f"Text: {TEXT}\n\nQuote the first sentence of the text exactly, "
                                                    "then the second one."}],
    "extract_fields": [{"role": "user", "content": "From this record, list name, email and city as 'field: value' "
                                                   "lines.\nRecord: name=Maria Gonzalez; email=maria.gonzalez@example.org;"
                                                   " city=Valencia; phone=+34 600 123 456"}],
}


def ovgen_mode(model, cfg, **kw):
    def run(ids):
        stamps = []
        res = ovgen.generate(model, ids, cfg, on_token=lambda r: stamps.append(perf_counter_ns()), **kw)
        return res.sequences[0].token_ids, stamps, res.sequences[0].records
    return run


def genai_mode(model, n, k):
    """openvino-genai's prompt lookup at k; k = 0: its paged pipeline (continuous batching, the same
    PagedAttention IR) decoding greedily, one token per step - what one of its infers costs."""
    import openvino as ov
    import openvino_genai as og

    from ovgen.compare import token_streamer

    kind = {"prompt_lookup": True} if k else {"scheduler_config": og.SchedulerConfig()}
    pipe = og.LLMPipeline(str(model.path), "CPU", **kind, **model.ov_config)
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.ignore_eos = n, True
    if k:
        cfg.num_assistant_tokens, cfg.max_ngram_size = k, 3

    def run(ids):
        stamps = []
        inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))
        out = pipe.generate(inputs, cfg, streamer=token_streamer(lambda t: stamps.append(perf_counter_ns())))
        return [int(t) for t in out.tokens[0]], stamps, []
    return run


def tpot(stamps) -> float:
    return (stamps[-1] - stamps[0]) / 1e6 / max(1, len(stamps) - 1)


def compare(model, paged, draft, rounds: int, n: int, ks=(3, 10)) -> dict:
    """Every mode on every prompt; prompt lookup (ovgen stateful, ovgen paged, genai) at each k in
    `ks`, the heuristic schedule starting from the largest."""
    base = {"max_new_tokens": n, "ignore_eos": True}
    modes = {"greedy": ovgen_mode(model, base), "greedy_paged": ovgen_mode(paged, base),
             "genai_greedy_paged": genai_mode(model, n, 0)}
    for k in ks:
        pl = {**base, "prompt_lookup": True, "num_assistant_tokens": k}
        modes |= {f"prompt_lookup_k{k}": ovgen_mode(model, pl), f"prompt_lookup_paged_k{k}": ovgen_mode(paged, pl),
                  f"genai_prompt_lookup_k{k}": genai_mode(model, n, k)}
    # the host's work overlapped with the next infer (the default) against run synchronously
    pl = {**base, "prompt_lookup": True, "num_assistant_tokens": ks[0]}
    modes |= {"greedy_paged_no_overlap": ovgen_mode(paged, base, overlap=False),
              f"prompt_lookup_paged_k{ks[0]}_no_overlap": ovgen_mode(paged, pl, overlap=False)}
    heuristic = {**base, "prompt_lookup": True, "num_assistant_tokens": max(ks),
                 "num_assistant_tokens_schedule": "heuristic"}
    modes |= {"prompt_lookup_heuristic": ovgen_mode(model, heuristic),
              "prompt_lookup_paged_heuristic": ovgen_mode(paged, heuristic),
              "draft_model": ovgen_mode(model, {**base, "num_assistant_tokens": 3}, assistant=draft)}
    out = {}
    for name, prompt in PROMPTS.items():
        ids = prompt_ids(model, prompt)
        for run in modes.values():  # warm-up
            run(ids)
        t = {m: [] for m in modes}
        tokens, acc = {}, {}
        for r in range(rounds):
            for m in balanced(list(modes), r):
                toks, stamps, recs = modes[m](ids)
                t[m].append(tpot(stamps))
                tokens[m] = toks
                steps = [x.draft for x in recs if x.draft is not None]
                if steps:
                    acc[m] = (sum(s.accepted for s in steps), sum(len(s.proposed) for s in steps))
        out[name] = {m: {"tpot_ms": float(np.median(v)), "speedup_vs_greedy": median_ratio(t["greedy"], v),
                         "same_tokens_as_greedy": tokens[m] == tokens["greedy"],
                         **({"accepted": acc[m][0], "proposed": acc[m][1],
                             "acceptance": acc[m][0] / max(1, acc[m][1])} if m in acc else {})}
                     for m, v in t.items()}
        out[name]["ovgen_greedy_paged_over_genai_greedy_paged_tpot"] = median_ratio(t["greedy_paged"],
                                                                                   t["genai_greedy_paged"])
        for k in ks:
            for m in ("prompt_lookup", "prompt_lookup_paged"):
                out[name][f"ovgen_{m}_k{k}_over_genai_pl_k{k}_tpot"] = median_ratio(t[f"{m}_k{k}"],
                                                                                   t[f"genai_prompt_lookup_k{k}"])
        for m in ("greedy_paged", f"prompt_lookup_paged_k{ks[0]}"):
            out[name][f"{m}_overlap_over_no_overlap_tpot"] = median_ratio(t[m], t[f"{m}_no_overlap"])
        print(name, json.dumps(out[name]))
    return out


def trim_cost(model, paged, contexts=(128, 256, 512, 1024, 2048), k: int = 8, reps: int = 5) -> dict:
    """ms to drop the last k tokens: ovgen's rewind (holes) vs a copy of the kept state (what
    openvino-genai's trim_kv_cache and ovgen's compaction do) vs the paged session's rewind."""
    s, sp = model.session(), paged.session()
    out = {}
    for n in contexts:
        ids = synthetic_prompt(model.tokenizer, n)
        holes, copy, blocks = [], [], []
        for _ in range(reps):
            sp.prefill(ids)
            sp.append(list(range(200, 200 + k)))
            t0 = perf_counter_ns()
            sp.rewind(k)
            blocks.append((perf_counter_ns() - t0) / 1e6)
            s.prefill(ids)
            s.append(list(range(200, 200 + k)))
            t0 = perf_counter_ns()
            s.rewind(k)
            holes.append((perf_counter_ns() - t0) / 1e6)
            t0 = perf_counter_ns()
            kvstate.compact(s)
            copy.append((perf_counter_ns() - t0) / 1e6)
        out[n] = {"holes_ms": float(np.median(holes)), "copy_ms": float(np.median(copy)),
                  "paged_ms": float(np.median(blocks))}
        print("trim", n, out[n])
    return out


def verify_cost(model, paged, widths=range(1, 13), reps: int = 7) -> dict:
    """ms of one verification infer of `w` positions (`append(.., logits_to_keep=w)` then a rewind)
    at a 256-token context, the same width repeated (the steady cost; changing the width between
    infers costs more, see README), against w = 1: what choosing k trades."""
    out = {}
    for name, m in (("stateful", model), ("paged", paged)):
        s = m.session()
        s.prefill(synthetic_prompt(m.tokenizer, 256))
        ms = {}
        for w in widths:
            t = []
            for _ in range(reps + 1):
                t0 = perf_counter_ns()
                s.append(list(range(300, 300 + w)), logits_to_keep=w)
                t.append((perf_counter_ns() - t0) / 1e6)
                s.rewind(w)
            ms[w] = float(np.median(t[1:]))
        out[name] = {w: {"ms": v, "over_width_1": v / ms[min(ms)]} for w, v in ms.items()}
        print("verify", name, " ".join(f"{w}:{v:.1f}" for w, v in ms.items()))
    return out


def plot(trim: dict, path: str) -> None:
    ctx = sorted(trim)
    line_plot(path, ctx, {"copy the kept state (genai trim_kv_cache)": [trim[c]["copy_ms"] for c in ctx],
                          "ovgen rewind (attention-mask holes)": [trim[c]["holes_ms"] for c in ctx],
                          "ovgen rewind, attention='paged' (past_lens)": [trim[c]["paged_ms"] for c in ctx]},
              xlabel="context (tokens)", ylabel="ms to drop 8 tokens", xscale="log", yscale="log",
              title="KV trim cost")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--num-assistant-tokens", default="3,10", help="prompt lookup's k values, comma-separated")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--out", default=default_path("speculative"))
    args = ap.parse_args()
    model = ovgen.load()
    paged = ovgen.load(attention="paged")
    draft = ovgen.load(flavour_dir("draft"))
    ks = tuple(int(k) for k in args.num_assistant_tokens.split(","))
    results = compare(model, paged, draft, args.rounds, args.new_tokens, ks)
    verify = verify_cost(model, paged)
    trim = trim_cost(model, paged)
    if args.plot:
        plot(trim, args.plot)
    save_result(args.out, "speculative", rounds=args.rounds, new_tokens=args.new_tokens, report=model.report,
                draft_layers=draft.config.get("num_hidden_layers"), results=results, verify=verify, trim=trim)


if __name__ == "__main__":
    main()
