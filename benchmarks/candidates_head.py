"""What ovgen's graph heads cost a decode step, measured inside openvino-genai's own C++ loop.

ovgen's IR adds outputs to the exported model (kernels/graph.py): a logsumexp (each token's
log-probability in O(1)) and the top-64 logits as candidates for sampling. This runs
openvino-genai's LLMPipeline - one C++ loop for every variant, so no Python host work blurs the
infer - on the same IR saved with each set of heads: none, the logsumexp, + a flat TopK-64 over the
vocabulary (the candidates until 2026-12-07), + the block TopK (`kernels.graph.top_candidates`: the 64
blocks of 64 logits with the largest maxima, then their 64 largest). Each variant samples the same
prompts with top_k 50 (4 chat prompts x 4 sequences: 16 rows; and 1 prompt x 1), its per-step infer
time read from genai's raw perf metrics (median over the decode steps); variants run in a rotating
order, ratios to "no heads" are medians of per-round ratios.

Then the sharper number (a whole step's time drifts by more than these heads cost on a shared
2-core machine): the time of the nodes that compute the candidates, from the CPU plugin's per-node
profile (PERF_COUNT), in ovgen's own IR at 1 / 4 / 16 rows of one token and at one row of 4 / 11
tokens (a verification keeps every position's logits) - behind its `topk_on` If (gate on and off,
the If's own time and its body's counted) and without the If (always computed).

    python benchmarks/candidates_head.py [--rounds 8] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from _results import default_path, save_result  # benchmarks/ is on sys.path when run as a script
from sequences import DATASET


def _flat_top(ir, k: int) -> None:
    """The candidates as one TopK-11 over the vocabulary (what add_topk_output built before)."""
    from openvino import opset11

    logits = ir.output("logits").get_node().input_value(0)
    top = opset11.topk(logits, np.array(k, np.int64), -1, "max", "index", "i64", stable=False)
    for port, name in zip(top.outputs(), ("topk_values", "topk_ids")):
        result = opset11.result(port)
        result.output(0).get_tensor().set_names({name})
        ir.add_results([result])
    ir.validate_nodes_and_infer_types()


def variants(src: Path, into: Path) -> dict[str, Path]:
    """name -> a model folder: `src`'s files with openvino_model.xml/.bin rebuilt with those heads."""
    import openvino as ov

    from ovgen.backend import TOP_CANDIDATES
    from ovgen.kernels import graph
    from ovgen.model import read_ir

    heads = {"no heads": [], "logsumexp": [graph.add_logsumexp_output],
             "logsumexp + flat top-64": [graph.add_logsumexp_output, lambda ir: _flat_top(ir, TOP_CANDIDATES)],
             "logsumexp + block top-64 (ovgen.load)": [graph.add_logsumexp_output,
                                                        lambda ir: graph.add_topk_output(ir, TOP_CANDIDATES)]}
    out = {}
    for i, (name, passes) in enumerate(heads.items()):
        folder = into / f"v{i}"
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("openvino_model.*"))
        ir = read_ir(src)
        graph.slice_last_position(ir)
        for p in passes:
            p(ir)
        ov.save_model(ir, str(folder / "openvino_model.xml"), compress_to_fp16=False)
        out[name] = folder
    return out


def _ancestors(nodes) -> set[str]:
    seen, stack = set(), list(nodes)
    while stack:
        node = stack.pop()
        if node.get_friendly_name() not in seen:
            seen.add(node.get_friendly_name())
            stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return seen


def node_cost(model, rows: int, positions: int = 1, steps: int = 40) -> dict[str, float]:
    """us per infer of `positions` new tokens per row (every position's logits kept, as a verification
    keeps them) of the candidate nodes (median over the steps), ovgen's IR gated (on / off) and ungated."""
    from ovgen.backend import TOP_CANDIDATES, TOP_GATE
    from ovgen.kernels import graph
    from ovgen.model import read_ir
    from ovgen.runtime import core

    rng = np.random.default_rng(rows * 100 + positions)
    out = {}
    for gated in (True, False):
        ir = read_ir(model.path)
        graph.slice_logits_to_keep(ir)
        graph.add_logsumexp_output(ir)
        graph.add_topk_output(ir, TOP_CANDIDATES, gate=TOP_GATE if gated else None)
        tops = [r.input_value(0).get_node() for r in ir.get_results()
                if r.output(0).get_tensor().get_names() & {"topk_values", "topk_ids"}]
        head = _ancestors(tops) - _ancestors([ir.output("logits").get_node()])
        compiled = core().compile_model(ir, model.device, {**model.ov_config, "PERF_COUNT": True})
        for on in ((True, False) if gated else (True,)):
            req = compiled.create_infer_request()
            fixed = {"beam_idx": np.arange(rows, dtype=np.int32), **({TOP_GATE: np.array(on)} if gated else {})}
            past = 38
            req.infer({"input_ids": rng.integers(100, 40000, (rows, past)), "position_ids": np.tile(np.arange(past), (rows, 1)),
                       "attention_mask": np.ones((rows, past), np.int64), "logits_to_keep": np.ones(1, np.int64), **fixed},
                      share_inputs=True)
            us = []
            for s in range(steps):
                req.infer({"input_ids": rng.integers(100, 40000, (rows, positions)),
                           "position_ids": np.tile(np.arange(past, past + positions), (rows, 1)),
                           "attention_mask": np.ones((rows, past + positions), np.int64),
                           "logits_to_keep": np.array([positions], np.int64), **fixed}, share_inputs=True)
                past += positions
                if s >= 8:  # the If's body nodes are named "<If>.<branch>.<node>"
                    us.append(sum(p.real_time.total_seconds() * 1e6 for p in req.profiling_info
                                  if p.node_name.split(".")[0] in head))
            out["ungated" if not gated else f"gated, {'on' if on else 'off'}"] = float(np.median(us))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--out", default=default_path("candidates_head"))
    args = ap.parse_args()

    import openvino as ov
    import openvino_genai as og

    import ovgen
    from ovgen.generate import prompt_ids

    model = ovgen.load()
    print(model.report["cpu_model"], model.report["cpu_flags"], model.report["properties"]["INFERENCE_PRECISION_HINT"],
          flush=True)
    ids = [prompt_ids(model, [{"role": "user", "content": q}]) for q in DATASET[:4]]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = variants(Path(model.path), Path(tmp))
        pipes = {name: og.LLMPipeline(str(f), "CPU", ATTENTION_BACKEND="SDPA", **model.ov_config)
                 for name, f in folders.items()}
        for prompts, count in ((4, 4), (1, 1)):
            batch = ids[:prompts]
            width = max(map(len, batch))
            inputs = og.TokenizedInputs(ov.Tensor(np.array([[0] * (width - len(p)) + p for p in batch], np.int64)),
                                        ov.Tensor(np.array([[0] * (width - len(p)) + [1] * len(p) for p in batch],
                                                           np.int64)))
            cfg = og.GenerationConfig()
            cfg.max_new_tokens, cfg.ignore_eos, cfg.do_sample = args.new_tokens, True, True
            cfg.top_k, cfg.rng_seed, cfg.num_return_sequences = 50, 7, count

            def step_ms(pipe) -> float:
                raw = pipe.generate(inputs, cfg).perf_metrics.raw_metrics
                return float(np.median(np.array(raw.token_infer_durations)[1:])) / 1e3  # [0]: the prompt's

            names = list(pipes)
            for name in names:  # warm-up
                step_ms(pipes[name])
            ms = {name: [] for name in names}
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    ms[name].append(step_ms(pipes[name]))
            base = np.array(ms["no heads"])
            rows = prompts * count
            results[rows] = {name: {"step_ms": float(np.median(v)),
                                    "over_no_heads": float(np.median(np.array(v) / base))} for name, v in ms.items()}
            for name, r in results[rows].items():
                print(f"{rows:>2} rows  {name:<40} {r['step_ms']:7.2f} ms  {r['over_no_heads']:.4f}x no heads",
                      flush=True)
        del pipes
    nodes = {}
    for rows, positions in ((1, 1), (4, 1), (16, 1), (1, 4), (1, 11)):
        key = f"{rows} rows x {positions} positions"
        nodes[key] = node_cost(model, rows, positions)
        print(f"{key:<22} candidate nodes, us per infer: " + ", ".join(f"{k} {v:.0f}" for k, v in nodes[key].items()),
              flush=True)
    save_result(args.out, "candidates_head", rounds=args.rounds, new_tokens=args.new_tokens, report=model.report,
                results=results, node_us=nodes)


if __name__ == "__main__":
    main()
