"""`precision="fast"` against `exact` and openvino-genai, where the TTFT of a short prompt goes, what
the per-phase split costs in memory, and how often fast's tokens differ from exact's.

Timing (one process, interleaved in a balanced order, greedy, `--new-tokens` with ignore_eos, the
same prompt ids, medians of per-round ratios): ovgen `exact`, ovgen `fast`, ovgen with an explicit
split plan (bf16 prefill / f32 decode where the CPU has bf16; f32 / f32 elsewhere, which measures
the mechanism: two compiles and the KV handover), openvino-genai at its own defaults (SDPA, the
plugin's precision and u8 KV) and openvino-genai at exact's compile properties. For ovgen the first
record splits the TTFT into setup (call to the prefill's start: prompt checks, session reset, the
chain), the prefill infer (handover included) and the first token's host work.

Memory: each of exact / fast / split loads and generates in a worker process of its own; peak RSS.
Exactness: fast and split against exact, greedy, over chat prompts in eight languages.

    python benchmarks/fast.py [--rounds 5] [--new-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from time import perf_counter_ns

import numpy as np

import ovgen
from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script
from _timing import balanced, median_ratio
from ovgen.compare import genai_runner, ovgen_runner
from ovgen.generate import prompt_ids
from ovgen.runtime import describe_cpu, has_bf16

CHATS = ["What is the capital of France?", "Quelle est la capitale de l'Italie ?",
         "Wie funktioniert ein Kühlschrank?", "¿Por qué el cielo es azul?", "用一句话解释光合作用。",
         "日本の首都はどこですか？", "Почему трава зелёная?", "ما هي عاصمة مصر؟"]
LONG = ("The history of the printing press begins in the fifteenth century, when movable type changed how "
        "books were made and who could read them. ")


def split_plan() -> dict:
    return {"prefill": "bf16" if has_bf16("CPU") else "f32", "decode": "f32", "min_prefill_tokens": 0}


def prompts(model, short_words: str, long_tokens: int) -> dict[str, list[int]]:
    short = prompt_ids(model, [{"role": "user", "content": short_words}])
    ids = model.tokenizer.encode(LONG * (long_tokens // 20 + 2))[:long_tokens]
    return {f"{len(short)}": short, f"{long_tokens}": ids}


def ttft_split(model, session, ids, cfg) -> dict:
    res = ovgen.generate(model, ids, cfg, session=session)
    r = res.sequences[0].records[0]
    return {"setup_ms": (r.infer_start_ns - res.t_start_ns) / 1e6, "prefill_ms": r.model_ns / 1e6,
            "first_token_host_ms": (r.ready_ns - r.infer_start_ns - r.model_ns) / 1e6,
            "handover_ms": session.handover_ns / 1e6}


def timing(rounds: int, n: int) -> tuple[dict, dict]:
    import openvino_genai as og

    models = {"exact": ovgen.load(), "fast": ovgen.load(precision="fast"), "split": ovgen.load(precision=split_plan())}
    exact = models["exact"]
    gcfg = og.GenerationConfig()
    gcfg.max_new_tokens, gcfg.ignore_eos, gcfg.do_sample = n, True, False
    cfg = {"max_new_tokens": n, "ignore_eos": True}
    run = {k: ovgen_runner(m, cfg) for k, m in models.items()}
    run["genai-defaults"] = genai_runner(og.LLMPipeline(str(exact.path), "CPU", ATTENTION_BACKEND="SDPA"), gcfg)
    run["genai-same"] = genai_runner(og.LLMPipeline(str(exact.path), "CPU", ATTENTION_BACKEND="SDPA",
                                                    **exact.ov_config), gcfg)
    rows, splits = {}, {}
    for length, ids in prompts(exact, "Hi, who are you?", 1024).items():
        for r in run.values():
            r(ids)  # warm-up: kernels for these shapes
        t = {k: ([], []) for k in run}
        toks = {}
        for i in range(rounds):
            for k in balanced(list(run), i):
                out = run[k](ids)
                t[k][0].append(out.ttft_ms)
                t[k][1].append(out.tpot_ms)
                toks[k] = out.tokens
        rows[length] = {k: {"ttft_ms": float(np.median(a)), "tpot_ms": float(np.median(b)),
                            "ttft_over_genai_defaults": median_ratio(a, t["genai-defaults"][0]),
                            "tpot_over_genai_defaults": median_ratio(b, t["genai-defaults"][1]),
                            "ttft_over_genai_same": median_ratio(a, t["genai-same"][0]),
                            "tpot_over_genai_same": median_ratio(b, t["genai-same"][1]),
                            "ttft_over_exact": median_ratio(a, t["exact"][0]),
                            "same_tokens_as_exact": toks[k] == toks["exact"]} for k, (a, b) in t.items()}
        sessions = {k: m.session() for k, m in models.items()}
        per = {k: [ttft_split(models[k], sessions[k], ids, cfg) for _ in range(rounds)] for k in models}
        splits[length] = {k: {f: float(np.median([x[f] for x in v])) for f in v[0]} for k, v in per.items()}
    return rows, splits | {"reports": {k: m.report.get("plan") for k, m in models.items()}}


def agreement(n: int) -> dict:
    models = {"exact": ovgen.load(), "fast": ovgen.load(precision="fast"), "split": ovgen.load(precision=split_plan())}
    out = {}
    for k in ("fast", "split"):
        same, first = 0, []
        for chat in CHATS:
            msgs = [{"role": "user", "content": chat}]
            a = ovgen.generate(models["exact"], msgs, {"max_new_tokens": n}).sequences[0].token_ids
            b = ovgen.generate(models[k], msgs, {"max_new_tokens": n}).sequences[0].token_ids
            same += a == b
            first.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else
                              min(len(a), len(b))))
        out[k] = {"identical": f"{same}/{len(CHATS)}", "first_divergence": first}
    return out


def rss_worker(precision: str, n: int) -> None:
    model = ovgen.load(precision=json.loads(precision))
    ids = model.tokenizer.encode(LONG * 60)[:1024]
    ovgen.generate(model, ids, {"max_new_tokens": n, "ignore_eos": True})
    # VmHWM, not ru_maxrss: the latter survives exec, so a worker would report its parent's peak
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": int(hwm.split()[1]) / 1024}))


def memory(n: int) -> dict:
    out = {}
    for k, p in {"exact": "exact", "fast": "fast", "split": split_plan()}.items():
        proc = subprocess.run([sys.executable, __file__, "--rss-worker", json.dumps(p), "--new-tokens", str(n)],
                              capture_output=True, text=True, check=True)
        out[k] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--rss-worker")
    ap.add_argument("--out", default=default_path("fast"))
    args = ap.parse_args()
    if args.rss_worker:
        return rss_worker(args.rss_worker, args.new_tokens)
    t0 = perf_counter_ns()
    rss = memory(args.new_tokens)  # first: the workers' numbers are their own either way
    rows, splits = timing(args.rounds, args.new_tokens)
    agree = agreement(48)
    report = ovgen.load().report
    print(f"CPU: {describe_cpu(report)}; fast plan: {splits['reports']['fast']}")
    print(f"{'prompt':>6} {'runner':<15} {'TTFT ms':>8} {'TPOT ms':>8} {'TTFT/genai-def':>14} {'TPOT/genai-def':>14} "
          f"{'TTFT/genai-same':>15} {'TPOT/genai-same':>15} {'TTFT/exact':>10} same-as-exact")
    for length, r in rows.items():
        for k, v in r.items():
            print(f"{length:>6} {k:<15} {v['ttft_ms']:>8.1f} {v['tpot_ms']:>8.2f} {v['ttft_over_genai_defaults']:>14.3f} "
                  f"{v['tpot_over_genai_defaults']:>14.3f} {v['ttft_over_genai_same']:>15.3f} "
                  f"{v['tpot_over_genai_same']:>15.3f} {v['ttft_over_exact']:>10.3f} {v['same_tokens_as_exact']}")
    for length in rows:
        for k, v in splits[length].items():
            print(f"TTFT split, {length} tokens, {k}: " + ", ".join(f"{f} {x:.2f}" for f, x in v.items()))
    print("tokens against exact:", json.dumps(agree))
    print("peak RSS MB:", json.dumps(rss))
    save_result(args.out, "fast", rounds=args.rounds, new_tokens=args.new_tokens, report=report, results=rows,
                ttft_split={k: v for k, v in splits.items() if k != "reports"}, plans=splits["reports"],
                agreement=agree, peak_rss_mb=rss, seconds=(perf_counter_ns() - t0) / 1e9)


if __name__ == "__main__":
    main()
