"""Structured output: what the mask costs per token, against ovgen unconstrained and against
openvino-genai's own structured output (StructuredOutputConfig, xgrammar) on the same IR and schema.

Per round, interleaved in a balanced order: ovgen unconstrained (greedy, ignore_eos, as many tokens
as the constrained answer has), ovgen with the JSON Schema, openvino-genai with the same schema
(same prompt ids and compile properties). TPOT from per-token stamps; medians of per-round ratios.
The per-token mask time comes from ovgen's records: `accept_ns` (the matcher takes the token and
computes the next mask, while the next infer runs) and the mask stage's own time (applying it).

    python benchmarks/structured.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from time import perf_counter_ns

import numpy as np

import ovgen
from ovgen.generate import prompt_ids
from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script
from _timing import balanced, median_ratio

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from structured_cases import SCHEMAS  # noqa: E402

CASES = ["extraction_invoice", "array_of_objects", "tool_call"]


def ovgen_run(model, ids, cfg):
    stamps = []
    res = ovgen.generate(model, ids, cfg, on_token=lambda r: stamps.append(perf_counter_ns()))
    return res.sequences[0], stamps


def genai_run(pipe, ids, schema, n):
    import openvino as ov
    import openvino_genai as og

    from ovgen.compare import token_streamer

    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.do_sample = n, False
    cfg.structured_output_config = og.StructuredOutputConfig(json_schema=json.dumps(schema))
    stamps = []
    inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))
    out = pipe.generate(inputs, cfg, streamer=token_streamer(lambda t: stamps.append(perf_counter_ns())))
    return [int(t) for t in out.tokens[0]], stamps


def tpot(stamps) -> float:
    return (stamps[-1] - stamps[0]) / 1e6 / (len(stamps) - 1)


def main() -> None:
    import openvino_genai as og

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=default_path("structured"))
    args = ap.parse_args()
    model = ovgen.load()
    pipe = og.LLMPipeline(str(model.path), "CPU", ATTENTION_BACKEND="SDPA", **model.ov_config)
    rows = {}
    for name, prompt, schema in (s for s in SCHEMAS if s[0] in CASES):
        ids = prompt_ids(model, [{"role": "user", "content": prompt}])
        constrained = {"max_new_tokens": 300, "json_schema": schema}
        n = len(ovgen_run(model, ids, constrained)[0].token_ids)  # warm-up; the answer's length
        plain = {"max_new_tokens": n, "ignore_eos": True}
        runners = {"unconstrained": lambda: ovgen_run(model, ids, plain)[1],
                   "constrained": lambda: ovgen_run(model, ids, constrained),
                   "genai": lambda: genai_run(pipe, ids, schema, 300)}
        genai_run(pipe, ids, schema, 300)
        t = {k: [] for k in runners}
        accept, apply_, valid = [], [], []
        for r in range(args.rounds):
            for k in balanced(list(runners), r):
                out = runners[k]()
                if k == "constrained":
                    seq, stamps = out
                    accept += [x.accept_ns / 1e3 for x in seq.records]
                    apply_ += [x.stage_ns.get("json_schema", 0) / 1e3 for x in seq.records]
                    valid.append(_valid(seq.text, schema))
                elif k == "genai":
                    tokens, stamps = out
                    valid.append(_valid(model.tokenizer.decode(tokens), schema))
                else:
                    stamps = out
                t[k].append(tpot(stamps))
        rows[name] = {"tokens": n, **{f"{k}_tpot_ms": float(np.median(v)) for k, v in t.items()},
                      "constrained_over_unconstrained": median_ratio(t["constrained"], t["unconstrained"]),
                      "constrained_over_genai": median_ratio(t["constrained"], t["genai"]),
                      "mask_compute_us_p50": float(np.percentile(accept, 50)),
                      "mask_compute_us_p99": float(np.percentile(accept, 99)),
                      "mask_apply_us_p50": float(np.percentile(apply_, 50)),
                      "mask_apply_us_p99": float(np.percentile(apply_, 99)), "all_valid": all(valid)}
        print(name, json.dumps(rows[name]))
    print(f"{'schema':<20} {'tokens':>6} {'plain':>7} {'ovgen':>7} {'genai':>7} {'ovgen/plain':>11} "
          f"{'ovgen/genai':>11} {'mask us p50/p99 (compute, apply)':>34}")
    for name, r in rows.items():
        print(f"{name:<20} {r['tokens']:>6} {r['unconstrained_tpot_ms']:>7.2f} {r['constrained_tpot_ms']:>7.2f} "
              f"{r['genai_tpot_ms']:>7.2f} {r['constrained_over_unconstrained']:>11.3f} "
              f"{r['constrained_over_genai']:>11.3f} {r['mask_compute_us_p50']:>7.0f}/{r['mask_compute_us_p99']:<6.0f}"
              f"{r['mask_apply_us_p50']:>7.0f}/{r['mask_apply_us_p99']:<6.0f}")
    save_result(args.out, "structured", rounds=args.rounds, report=model.report, results=rows)


def _valid(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


if __name__ == "__main__":
    main()
