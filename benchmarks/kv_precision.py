"""Which KV-cache precision ovgen compiles with by default (ovgen.model.CPU_DEFAULTS), measured.

One ovgen Session per KV_CACHE_PRECISION (u8 is the CPU plugin's default, f16, f32) plus a second u8
session as a control (its ratio to the first is this machine's noise floor), all on the same IR and
prompt. Lock-step interleaving: every session takes decode step i before any takes step i + 1 (in a
balanced order, see _timing.balanced), so a slow second of this shared machine hits all of them;
the figure is the median of the paired per-step ratios to u8. Prefill likewise, once per
repetition. Greedy tokens are compared with u8's.

    python benchmarks/kv_precision.py [--prompt-tokens 32,1024] [--steps 64] [--reps 3]
"""

from __future__ import annotations

import argparse

import ovgen
from _results import default_path, save_result
from _timing import lockstep
from ovgen.bench import synthetic_prompt

VARIANTS = {"u8": "u8", "u8 (control)": "u8", "f16": "f16", "f32": "f32"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model")
    ap.add_argument("--prompt-tokens", default="32,1024")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=default_path("kv_precision"))
    args = ap.parse_args()

    models = {n: ovgen.load(args.model, ov_config={"KV_CACHE_PRECISION": kv}) for n, kv in VARIANTS.items()}
    sessions = {n: m.session() for n, m in models.items()}
    tok = models["u8"].tokenizer
    results = {}
    print(f"{'KV cache':<14} {'prompt':>6} {'prefill ms':>10} {'step ms':>8}   /u8: {'prefill':>7} {'step':>6}   same tokens")
    for n in (int(x) for x in args.prompt_tokens.split(",")):
        prompt = synthetic_prompt(tok, n)
        results[n] = lockstep(list(sessions), lambda s: sessions[s].prefill(prompt),
                              lambda s, t: sessions[s].step(t), args.steps, args.reps)
        for name, r in results[n].items():
            print(f"{name:<14} {n:>6} {r['prefill_ms']:>10.1f} {r['step_ms']:>8.2f}   {'':>5}{r['prefill_ratio']:>7.3f} "
                  f"{r['step_ratio']:>6.3f}   {'yes' if r['same_tokens'] else 'no'}")
    save_result(args.out, "kv_precision", steps=args.steps, reps=args.reps, results=results)


if __name__ == "__main__":
    main()
