"""`ovgen batch INPUT --output OUTPUT`: a dataset of prompts through the batched loop, resumable.

INPUT is JSONL (or Parquet, with pyarrow): one row per line, `{"id": ..., "prompt": "..."}` or
`{"id": ..., "messages": [...]}`, plus any GenerationConfig settings, which override the command's
for that row. A row without an id is known by its line number. OUTPUT is JSONL, one line per row:
`{"id", "text", "token_ids", "finish_reason"}` (+ `logprobs`, `metrics` when asked), or
`{"id", "error"}` for a row that cannot run (bad settings, empty prompt, ...): the others go on.

Resume: rows whose id OUTPUT already holds are skipped, so rerunning the same command after Ctrl-C
or a kill appends only the missing rows. Each line is written whole and flushed once its row ends;
a line cut off by a kill (no final newline, not JSON) is dropped when the next run starts, and that
row runs again. Nothing is lost or written twice.

Batches are chunks of `batch_size` consecutive input rows (their valid rows share the infers), the
same rule for `ovgen batch --ray` (ovgen/raybatch.py), so both give the same answers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import GenerationConfig

PROMPT_KEYS = ("id", "prompt", "messages")


def read_rows(path: str | Path) -> list[dict]:
    """Every input row as {"id", "row", "error"}, in order; duplicate ids refuse the job. A row without
    an id is known by its line number (JSONL: the file's line, blank lines counted; Parquet: the row's
    number, from 1)."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not an input file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such input file")
    raw = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)
    rows, seen = [], {}  # id -> (its line, whether the row gives it)
    for line, row, error in raw:
        given = "id" in row
        rid = row["id"] if given else line
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            rid, given, error = line, False, error or f"id must be a string or an integer, got {rid!r}"
        if rid in seen:
            first, first_given = seen[rid]
            how = "" if first_given and given else "; a row without an id is known by its line number"
            raise ValueError(f"{path}: id {rid!r} appears twice (lines {first} and {line}{how}); ids must be unique")
        seen[rid] = (line, given)
        rows.append({"id": rid, "row": row, "error": error})
    return rows


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict, str | None]]:
    """(line number from 1, row, error) per non-blank line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:  # (a byte-order mark, as Windows editors write, opens line 1)
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield n, {}, f"line {n} is not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield n, {}, f"line {n} is not JSON ({e.msg})"
                continue
            yield (n, row, None) if isinstance(row, dict) else (n, {}, f"line {n} is not a JSON object")


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict, str | None]]:
    import pyarrow.parquet as pq  # the `ray` extra brings pyarrow

    for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
        yield n, {k: v for k, v in row.items() if v is not None}, None


_LINE_START = b'{"id": '  # how every line Writer writes begins (result_line puts the id first)


def _held(output: Path) -> tuple[set, int | None, int]:
    """(ids OUTPUT holds, where a last line cut off by a kill begins - None: leave the file as it is -, its
    size). A file ovgen did not write (binary, or a last line no result line begins like) is refused."""
    if not output.is_file():
        return set(), None, 0
    data = output.read_bytes()
    keep = len(data) if data.endswith(b"\n") or not data else data.rfind(b"\n") + 1
    tail = data[keep:]
    try:
        if tail and not (tail.startswith(_LINE_START) or _LINE_START.startswith(tail)):
            raise ValueError("its last line, without a newline, is not one ovgen writes")
        text = data[:keep].decode("utf-8")
    except ValueError as e:  # (UnicodeDecodeError: not text)
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
        raise ValueError(f"{output}: not an ovgen batch output ({why}); give another --output") from None
    ids = set()
    for line in text.splitlines():
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            keep = None  # a damaged line inside the file: leave the file alone, that row reruns
    return ids, keep, len(data)


def done_ids(output: str | Path) -> set:
    """Ids OUTPUT holds; a last line cut off by a kill is removed from the file first."""
    ids, keep, size = _held(Path(output))
    if keep is not None and keep < size:
        with open(output, "r+b") as f:
            f.truncate(keep)
    return ids


def prepare_row(model, item: dict, base: dict):
    """(prompt, config) for one input row, or ValueError naming the problem."""
    row = item["row"]
    if item["error"]:
        raise ValueError(item["error"])
    has = [k for k in ("prompt", "messages") if k in row]
    if len(has) != 1:
        raise ValueError("a row needs exactly one of 'prompt' and 'messages'")
    messages = row.get("messages")
    if has == ["messages"] and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        got = f"a list of {type(messages[0]).__name__}" if isinstance(messages, list) else type(messages).__name__
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {got}")
    settings = {k: v for k, v in row.items() if k not in PROMPT_KEYS}
    from .generate import constraint_stages, prompt_ids, resolve_config

    cfg = resolve_config(model, {**base, **settings})
    ids = prompt_ids(model, row[has[0]], config=cfg)
    return ids, cfg, constraint_stages(model, cfg)


def result_line(rid, records, *, logprobs: bool, timings: bool, prompt_tokens: int) -> dict:
    """The row's output line: its first (best) sequence; all of them under "sequences" when several."""
    from .generate import json_numbers, top_logprobs_field
    from .profiling import summarize

    seqs = {}
    for r in records:
        seqs.setdefault(r.sequence, []).append(r)

    def one(recs):
        out = {"text": "".join(r.text for r in recs), "token_ids": [r.token_id for r in recs],
               "finish_reason": recs[-1].finish_reason if recs else "length"}
        if logprobs:
            out["logprobs"] = json_numbers(r.logprob for r in recs)
        return {**out, **top_logprobs_field(recs)}

    out = {"id": rid, **one(seqs.get(0, []))}
    if len(seqs) > 1:
        out["sequences"] = [one(seqs[s]) for s in sorted(seqs)]
    if timings:
        first = seqs.get(0, [])
        out["metrics"] = summarize(first, first[0].start_ns if first else 0, prompt_tokens=prompt_tokens)
    return out


def run_chunk(model, session, items: list[dict], base: dict, *, logprobs=False, timings=False) -> Iterator[dict]:
    """One chunk of input rows: error lines for the bad ones, then the good ones batched together;
    a line per row as soon as it ends."""
    from .batch import batch_stream

    good, ids, cfgs, extras = [], [], [], []
    for item in items:
        try:
            p, c, e = prepare_row(model, item, base)
        except (ValueError, TypeError, NotImplementedError, FileNotFoundError) as err:
            yield {"id": item["id"], "error": str(err)}
            continue
        good.append(item)
        ids.append(p)
        cfgs.append(c)
        extras.append(e)
    if not good:
        return
    per_row: dict[int, list] = {i: [] for i in range(len(good))}
    ended = [0] * len(good)  # sequences of the row that have ended (a row's sequences interleave)
    for rec in batch_stream(model, ids, cfgs, extras=extras, batch_size=max(1, len(good)), session=session):
        per_row[rec.row].append(rec)
        ended[rec.row] += rec.finish_reason is not None
        if ended[rec.row] == cfgs[rec.row].num_return_sequences:
            yield result_line(good[rec.row]["id"], per_row.pop(rec.row), logprobs=logprobs, timings=timings,
                              prompt_tokens=len(ids[rec.row]))
    for i, recs in per_row.items():  # rows that made no token (max_new_tokens 0, a prompt filling the context)
        yield result_line(good[i]["id"], recs, logprobs=logprobs, timings=timings, prompt_tokens=len(ids[i]))


def chunks(items: list, size: int) -> Iterator[list]:
    for at in range(0, len(items), size):
        yield items[at:at + size]


class Writer:
    """Appends whole lines to OUTPUT, each flushed to the OS as it is written (a kill loses no row that
    has ended: they were held in Python's buffer until the chunk's end), synced to disk per chunk."""

    def __init__(self, output: str | Path):
        self.f = open(output, "a", encoding="utf-8")

    def write(self, line: dict) -> None:
        self.f.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.f.flush()

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.sync()
        self.f.close()


def _rough_length(item: dict) -> int:
    """A row's prompt size before tokenizing: its text's (or its messages' JSON's) characters."""
    prompt = item["row"].get("prompt", item["row"].get("messages", ""))
    return len(prompt) if isinstance(prompt, str) else len(json.dumps(prompt, ensure_ascii=False, default=str))


def check_output(input: str | Path, output: str | Path, *, contents: bool = True) -> None:
    """OUTPUT must not be INPUT (nor a link to it): its rows would count as done, the others' results
    would be appended to the input; nor a file ovgen did not write (see _held)."""
    if Path(output).exists() and os.path.samefile(input, output):
        raise ValueError(f"--output {output} is the input file; write the results to another file")
    if contents:
        _held(Path(output))  # a file ovgen did not write: refused before anything runs (done_ids reads it too)


def pending(input: str | Path, output: str | Path, started: Callable[[int], None] | None = None) -> tuple[list, dict]:
    """(the input rows OUTPUT does not hold yet, the job's counts so far); `started(len(todo))` once
    known (the CLI's progress bar total). Shared by `run_job` and the Ray driver."""
    items = read_rows(input)
    check_output(input, output, contents=False)
    done = done_ids(output)
    # in order of prompt size, so a chunk (one batch) holds rows of similar lengths: left padding gives
    # each row its chunk's widest prompt (ovgen/batch.py sorts a list of prompts the same way)
    todo = sorted((it for it in items if it["id"] not in done), key=_rough_length)
    if started:
        started(len(todo))
    return todo, {"rows": len(items), "skipped": len(items) - len(todo), "done": 0, "errors": 0}


def run_job(model, input: str | Path, output: str | Path, base: dict | None = None, *, batch_size: int = 8,
            logprobs: bool = False, timings: bool = False,
            progress: Callable[[int, int], None] | None = None, started: Callable[[int], None] | None = None) -> dict:
    """Run every row OUTPUT does not hold yet; returns counts. `started(rows to run)` once,
    `progress(rows, tokens)` per row."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    base = dict(base or {})
    GenerationConfig.from_dict(base)  # unknown command-level settings fail before anything runs
    todo, counts = pending(input, output, started)
    session = model.session()
    write_all(output, (run_chunk(model, session, chunk, base, logprobs=logprobs, timings=timings)
                       for chunk in chunks(todo, batch_size)), counts, progress)
    return counts


def write_all(output: str | Path, batches, counts: dict, progress=None) -> None:
    """Append every line of every batch to OUTPUT as it comes, counting done rows and errors, and
    sync after each batch (shared by `run_job` and the Ray driver)."""
    writer = Writer(output)
    try:
        for lines in batches:
            for line in lines:
                writer.write(line)
                counts["errors" if "error" in line else "done"] += 1
                if progress:
                    progress(1, len(line.get("token_ids", ())))
            writer.sync()
    finally:
        writer.close()

