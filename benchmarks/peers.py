"""ovgen against its peers on the same model: TTFT, TPOT and peak RSS, interleaved.

    ovgen           ovgen's loop on the prepared IR (default flavour), ovgen's defaults (f16 KV cache)
    genai-sdpa      openvino-genai LLMPipeline, ATTENTION_BACKEND=SDPA, same IR, its defaults (u8 KV cache)
    genai-sdpa-f16  the same given ovgen's compile properties (ovgen.model.CPU_DEFAULTS): loop against loop
    genai-pa        openvino-genai LLMPipeline, ATTENTION_BACKEND=PA (paged attention), same IR
    optimum         optimum-intel OVModelForCausalLM.generate (the OpenVINO sample's path), same IR
    ort-genai       onnxruntime-genai's own loop on the onnx-int4 flavour (an int4 ONNX export of the
                    same checkpoint: different weights and kernels, so tokens may differ)

Each peer runs in its own worker process (so each one's peak RSS is its own: ru_maxrss), loads its
model once and warms up; then the driver sends the same prompt ids to each in turn, in an order that
changes every round so that each peer runs right after every other one equally often (a Williams
design, `_timing.balanced`: whoever runs right after onnxruntime-genai decodes slower, measured;
use a multiple of the number of peers for --runs), each call after `--gap` seconds of idle, greedy,
every run exactly `--new-tokens` tokens (eos ignored / suppressed), prompts of 32 and 1,024
tokens. Times are taken the same way for everyone: the call starts the clock, a per-token
streamer/callback stamps each token; TTFT = first stamp, TPOT = (last - first) / (n - 1). Figures
are medians over runs; ratios are ovgen / peer (< 1: ovgen is faster / smaller).

    python benchmarks/peers.py [--runs 6] [--new-tokens 128] [--prompt-tokens 32,1024] [--plot PNG]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from time import perf_counter_ns, sleep

import numpy as np

PEERS = ("ovgen", "genai-sdpa", "genai-sdpa-f16", "genai-pa", "optimum", "ort-genai")


# ---- worker side (one process per peer) ------------------------------------------------------------
def make_runner(peer: str, new_tokens: int):
    """(tokenizer-free) run(ids) -> (tokens, ttft_ms, tpot_ms) for one peer, model loaded once."""
    import ovgen
    from ovgen.compare import genai_runner, ort_loop, ovgen_runner, timed
    from ovgen.prepare import default_model_dir, flavour_dir

    ir = default_model_dir()
    if peer == "ovgen":
        return ovgen_runner(ovgen.load(ir), {"max_new_tokens": new_tokens, "ignore_eos": True, "do_sample": False})
    if peer.startswith("genai"):
        import openvino_genai as og

        from ovgen.precision import CPU_DEFAULTS

        props = {"ATTENTION_BACKEND": peer.split("-")[1].upper(), **(CPU_DEFAULTS if peer.endswith("-f16") else {})}
        if peer == "genai-pa":  # no prefix caching: every run must compute its prompt, as the others do
            sched = og.SchedulerConfig()
            sched.enable_prefix_caching = False
            props["scheduler_config"] = sched
        pipe = og.LLMPipeline(str(ir), "CPU", **props)
        gcfg = og.GenerationConfig()
        gcfg.max_new_tokens, gcfg.ignore_eos, gcfg.do_sample = new_tokens, True, False
        return genai_runner(pipe, gcfg)
    if peer == "optimum":
        import torch
        from optimum.intel import OVModelForCausalLM
        from _timing import hf_stamp_streamer

        from ovgen.phi3 import SEED_OV_CONFIG  # the sample's ov_config

        hf = OVModelForCausalLM.from_pretrained(str(ir), device="CPU", ov_config=SEED_OV_CONFIG)
        gen_cfg = hf.generation_config
        gen_cfg.eos_token_id = None  # run exactly new_tokens, like ignore_eos
        gen_cfg.pad_token_id = 0

        def run(ids):
            streamer = hf_stamp_streamer(perf_counter_ns)
            start = perf_counter_ns()
            out = hf.generate(torch.tensor([ids]), generation_config=gen_cfg, max_new_tokens=new_tokens,
                              do_sample=False, streamer=streamer)
            return timed(start, streamer.stamps, [int(t) for t in out[0, len(ids):]])
        return run
    if peer == "ort-genai":
        import onnxruntime_genai as og

        model = og.Model(str(flavour_dir("onnx")))

        def run(ids):
            start = perf_counter_ns()
            params = og.GeneratorParams(model)
            n = len(ids) + new_tokens
            params.set_search_options(max_length=n, min_length=n, do_sample=False)
            return timed(start, *ort_loop(og.Generator(model, params), ids))
        return run
    raise ValueError(f"unknown peer {peer!r}; one of {PEERS}")


def worker(peer: str, new_tokens: int) -> None:
    """Read one JSON command per line: {"ids": [...]} runs, {"quit": true} reports peak RSS."""
    run = make_runner(peer, new_tokens)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
            return
        r = run(cmd["ids"])
        print(json.dumps({"tokens": r.tokens, "ttft_ms": r.ttft_ms, "tpot_ms": r.tpot_ms}), flush=True)


# ---- driver ----------------------------------------------------------------------------------------
class Worker:
    def __init__(self, peer: str, new_tokens: int):
        self.peer = peer
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", peer, "--new-tokens", str(new_tokens)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ask(None)

    def ask(self, cmd: dict | None) -> dict:
        if cmd is not None:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer {self.peer} exited (status {self.proc.wait()})")
        return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", default="32,1024")
    ap.add_argument("--gap", type=float, default=0.5, help="idle seconds before each measured call")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--plot", default=str(Path(__file__).parent / "results" / "peers.png"))
    ap.add_argument("--out")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.new_tokens)
        return

    from _results import default_path, save_result
    from _timing import balanced

    import ovgen
    from ovgen.bench import synthetic_prompt
    from ovgen.compare import first_divergence

    peers = [p for p in args.peers.split(",") if p]
    lengths = [int(x) for x in args.prompt_tokens.split(",")]
    tok = ovgen.load().tokenizer
    prompts = {n: synthetic_prompt(tok, n) for n in lengths}
    workers = {p: Worker(p, args.new_tokens) for p in peers}  # each loads its model
    for w in workers.values():  # warm-up, both prompt lengths
        for n in lengths:
            w.ask({"ids": prompts[n]})
    runs = {(p, n): [] for p in peers for n in lengths}
    for i in range(args.runs):
        for n in lengths:
            for p in balanced(peers, i):
                sleep(args.gap)
                runs[(p, n)].append(workers[p].ask({"ids": prompts[n]}))
        print(f"round {i + 1}/{args.runs} done", file=sys.stderr)
    rss = {p: w.ask({"quit": True})["peak_rss_mb"] for p, w in workers.items()}

    table = {}
    for n in lengths:
        for p in peers:
            rs = runs[(p, n)]
            table[f"{p}@{n}"] = {
                "peer": p, "prompt_tokens": n, "ttft_ms": float(np.median([r["ttft_ms"] for r in rs])),
                "tpot_ms": float(np.median([r["tpot_ms"] for r in rs])), "peak_rss_mb": rss[p],
                "generated": len(rs[0]["tokens"]),
                "first_divergence_vs_ovgen": first_divergence(rs[0]["tokens"], runs[("ovgen", n)][0]["tokens"]),
                "ttft_runs_ms": [r["ttft_ms"] for r in rs], "tpot_runs_ms": [r["tpot_ms"] for r in rs]}
    for row in table.values():
        base = table[f"ovgen@{row['prompt_tokens']}"]
        row["ovgen_over_peer"] = {k: base[k] / row[k] for k in ("ttft_ms", "tpot_ms", "peak_rss_mb")}

    print(f"\n{'peer':<11} {'prompt':>6} {'TTFT ms':>9} {'TPOT ms':>8} {'peak RSS MB':>11}   ovgen/peer: "
          f"{'TTFT':>5} {'TPOT':>5} {'RSS':>5}   same tokens as ovgen")
    for row in table.values():
        r = row["ovgen_over_peer"]
        div = row["first_divergence_vs_ovgen"]
        print(f"{row['peer']:<11} {row['prompt_tokens']:>6} {row['ttft_ms']:>9.1f} {row['tpot_ms']:>8.2f} "
              f"{row['peak_rss_mb']:>11.0f}   {'':>11}{r['ttft_ms']:>5.2f} {r['tpot_ms']:>5.2f} {r['peak_rss_mb']:>5.2f}   "
              f"{'yes' if div is None else f'from token {div}'}")
    save_result(args.out or default_path("peers"), "peers", runs=args.runs, new_tokens=args.new_tokens,
                prompt_tokens=lengths, table=table, orders=[balanced(peers, i) for i in range(args.runs)],
                per_run={f"{p}@{n}": [[r["ttft_ms"], r["tpot_ms"]] for r in runs[(p, n)]] for p, n in runs})
    if args.plot:
        plot(table, peers, lengths, args.plot)
        print(f"wrote {args.plot}")


def plot(table: dict, peers: list[str], lengths: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(lengths)
    x = np.arange(len(peers))
    for j, n in enumerate(lengths):
        for ax, key in ((axes[0], "ttft_ms"), (axes[1], "tpot_ms")):
            ax.bar(x + j * width, [table[f"{p}@{n}"][key] for p in peers], width, label=f"{n}-token prompt")
    axes[2].bar(x, [table[f"{p}@{lengths[0]}"]["peak_rss_mb"] for p in peers])
    for ax, title in zip(axes, ("TTFT (ms, median)", "TPOT (ms, median)", "peak RSS (MB)")):
        ax.set_xticks(x + (width * (len(lengths) - 1) / 2 if ax is not axes[2] else 0), peers, rotation=20)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
