"""`ovgen batch ... --ray`: the same job as ovgen/jobs.py as a Ray Data pipeline (the `ray` extra).

    rows OUTPUT does not hold yet -> ray.data.from_items -> map_batches(Generate, batch_size=B)
    -> each actor loads the model once (its __init__) and runs chunks of B rows through the batched
    loop -> the driver appends every line to OUTPUT as batches complete

The driver reads INPUT itself (it needs every id for the resume rule), and writes one JSONL file
with the single-process writer, so OUTPUT's format and the resume rule are the same; chunks are the
same B consecutive rows, so the answers are the same (tested against `ovgen batch` without --ray).

A cluster: `ray start --head` on one node, `ray start --address HEAD:6379` on the others, then
`ovgen batch ... --ray --ray-address HEAD:6379` (or RAY_ADDRESS=...). Every node needs ovgen installed
(`pip install 'ovgen[ray]'`) and the model at the same path (`ovgen prepare` on each, or a shared
OVGEN_HOME); each actor takes `num_cpus` CPUs and the actor count defaults to the cluster's CPUs
divided by that.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import jobs


class Generate:
    """The Ray actor: loads the model once, then turns batches of rows into output lines."""

    def __init__(self, model_dir: str, device: str, precision: str, ov_config: dict | None, base: dict,
                 logprobs: bool, timings: bool):
        import ovgen

        self.model = ovgen.load(model_dir, device, ov_config, precision=precision)
        self.session = self.model.session()
        self.base, self.logprobs, self.timings = base, logprobs, timings

    def __call__(self, batch: dict) -> dict:
        """`batch["chunk"]`: chunks of input rows (JSON), each run as one batch of the loop."""
        import json

        lines = []
        for chunk in batch["chunk"]:
            lines += jobs.run_chunk(self.model, self.session, json.loads(chunk), self.base, logprobs=self.logprobs,
                                    timings=self.timings)
        return {"line": np.array([json.dumps(x, ensure_ascii=False) for x in lines], dtype=object)}


def run_job_ray(model_dir: str | Path, input: str | Path, output: str | Path, base: dict | None = None, *,
                batch_size: int = 8, device: str = "CPU", precision: str = "exact", ov_config: dict | None = None,
                logprobs: bool = False, timings: bool = False, address: str | None = None,
                concurrency: int | None = None, num_cpus: int = 2, progress=None, started=None) -> dict:
    """The job on Ray: a local instance unless `address` (or RAY_ADDRESS) names a cluster."""
    import json

    import ray

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    todo, counts = jobs.pending(input, output, started)
    if not todo:
        return counts
    address = address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, **({} if address else {"num_cpus": num_cpus}), include_dashboard=False,
                 log_to_driver=False)
    try:
        cpus = int(ray.cluster_resources().get("CPU", num_cpus))
        # one item per chunk of B consecutive rows: every run (Ray or not) batches the same rows together
        chunks = [{"chunk": json.dumps(c, ensure_ascii=False)} for c in jobs.chunks(todo, batch_size)]
        ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
        out = ds.map_batches(Generate, batch_size=1, batch_format="numpy", num_cpus=min(num_cpus, cpus),
                             concurrency=concurrency or max(1, cpus // num_cpus),
                             fn_constructor_kwargs=dict(model_dir=str(model_dir), device=device, precision=precision,
                                                        ov_config=ov_config, base=dict(base or {}),
                                                        logprobs=logprobs, timings=timings))
        jobs.write_all(output, ((json.loads(text) for text in batch["line"])
                                for batch in out.iter_batches(batch_size=None, batch_format="numpy")), counts, progress)
    finally:
        if started:
            ray.shutdown()
    return counts
