"""OpenVINO graph passes over a `openvino.Model`, applied before compilation.

`slice_last_position`: decoder IRs exported for text generation compute the LM head for every input
position, so a 2,048-token prefill makes a [1, 2048, vocab] logits tensor that the loop never reads
but the last row of. Slicing the hidden state to the last position before the LM-head MatMul makes
prefill's LM head cost one row (openvino-genai applies the same idea,
`apply_slice_before_matmul_transformation`).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
from openvino import opset8

# Ops that may sit between the LM-head MatMul and the logits Result (dtype casts, softcapping).
_PASS_THROUGH = {"Convert", "Multiply", "Divide", "Tanh", "Add"}


def find_lm_head(model: ov.Model, output: str = "logits"):
    """The MatMul producing `output`, walking back through casts / elementwise ops; None if absent."""
    node = model.output(output).get_node()
    for _ in range(8):
        if node.get_type_name() == "MatMul":
            return node
        if node.get_type_name() not in _PASS_THROUGH | {"Result"}:
            return None
        node = node.input_value(0).get_node()
    return None


def slice_last_position(model: ov.Model, output: str = "logits") -> bool:
    """Insert `hidden[:, -1:, :]` before the LM head, in place. Returns False (model unchanged) when
    no LM-head MatMul over a [batch, seq, hidden] input is found."""
    matmul = find_lm_head(model, output)
    if matmul is None or matmul.input(0).get_partial_shape().rank.get_length() != 3:
        return False
    hidden = matmul.input_value(0)
    if hidden.get_node().get_type_name() == "Slice":  # already sliced (idempotent)
        return False
    last = opset8.slice(hidden, np.array([-1], np.int64), np.array([np.iinfo(np.int64).max], np.int64),
                        np.array([1], np.int64), np.array([1], np.int64))
    matmul.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
    return True


def slice_logits_to_keep(model: ov.Model, output: str = "logits", name: str = "logits_to_keep", axis: int = 1) -> bool:
    """Like `slice_last_position`, but the number of last positions is an input: a new parameter
    `logits_to_keep: [1] int64` (>= 1), so one compiled model returns the last position's logits
    for a prompt and the last k + 1 positions' when k proposed tokens are verified in one infer
    (speculative decoding). `axis` is the positions' axis of the LM head's input: 1 for [batch, seq,
    hidden], 0 for a PagedAttention IR's [tokens, 1, hidden]. In place; False (model unchanged)
    when no LM head is found or the input exists already."""
    if any(name in p.get_names() for p in model.inputs):
        return False
    matmul = find_lm_head(model, output)
    if matmul is None or matmul.input(0).get_partial_shape().rank.get_length() != 3:
        return False
    from openvino import opset13

    keep = opset13.parameter([1], ov.Type.i64, name=name)
    keep.output(0).get_tensor().set_names({name})
    hidden = matmul.input_value(0)
    last = opset8.slice(hidden, opset13.negative(keep), np.array([np.iinfo(np.int64).max], np.int64),
                        np.array([1], np.int64), np.array([axis], np.int64))
    matmul.input(0).replace_source_output(last.output(0))
    model.add_parameters([keep])
    model.validate_nodes_and_infer_types()
    return True


def add_logsumexp_output(model: ov.Model, output: str = "logits") -> bool:
    """Add an output `logsumexp: [batch, seq, 1]` = log(sum(exp(logits), -1)), in place.

    With it, a token's log-probability is `logits[token] - logsumexp`: O(1) in the loop instead of
    an exp over the whole vocabulary in NumPy. Returns False when the output already exists."""
    if any("logsumexp" in o.get_names() for o in model.outputs):
        return False
    from openvino import opset13

    logits = model.output(output).get_node().input_value(0)  # the Result's source
    axis = np.array([-1], np.int64)
    peak = opset13.reduce_max(logits, axis, keep_dims=True)
    total = opset13.reduce_sum(opset13.exp(opset13.subtract(logits, peak)), axis, keep_dims=True)
    lse = opset13.add(opset13.log(total), peak)
    result = opset13.result(lse)
    result.output(0).get_tensor().set_names({"logsumexp"})
    model.add_results([result])
    model.validate_nodes_and_infer_types()
    return True


def add_argmax_output(model: ov.Model, output: str = "logits") -> bool:
    """Add an output `argmax: [batch, seq, 1]` int64, the index of the largest logit, lowest index
    on ties (np.argmax / torch.argmax's rule: TopK-11 with stable=True), in place.

    Not compiled by `ovgen.load`: on CPU the stable TopK-1 over a 49,152-token vocabulary costs
    ~0.5 ms of a ~23 ms decode step (benchmarks/graph_kernels.py, "head_cost"), more than the top-k
    head it would sit beside; greedy reads its token from those candidates (`Session.argmax`).
    Returns False when the output already exists."""
    if any("argmax" in o.get_names() for o in model.outputs):
        return False
    from openvino import opset11

    logits = model.output(output).get_node().input_value(0)
    top = opset11.topk(logits, np.array(1, np.int64), -1, "max", "value", "i64", stable=True)
    result = opset11.result(top.output(1))
    result.output(0).get_tensor().set_names({"argmax"})
    model.add_results([result])
    model.validate_nodes_and_infer_types()
    return True


def add_topk_output(model: ov.Model, k: int, output: str = "logits", gate: str | None = None) -> bool:
    """Add outputs `topk_values: [batch, seq, k]` float32 and `topk_ids: [batch, seq, k]` int64, the
    k largest logits in token-id order (which of several equal values at the k-th place is taken is
    not specified), in place.

    The sampling loop runs top-k / top-p / the draw on these k candidates instead of the whole
    vocabulary whenever that provably chooses the same token (`processors.Chain.run_on_candidates`).
    TopK-11 with stable=False: the stable variant costs ~14 ms per token on CPU for k = 64 (measured).
    Over a large vocabulary the candidates come from `_block_topk` (the k blocks of 64 logits with the
    largest maxima, then the k largest of those blocks): half to two thirds of a flat TopK's time,
    which at 16 rows was 1.6-3.7 % of a decode step (Zen 4 EPYC, f32).

    `gate`: the name of a boolean scalar input that turns the TopK on per infer. The TopK then sits
    in an If whose other branch writes zeros of the same shape: an infer that does not need the
    candidates (greedy decoding, beam search) skips it. Measured on SmolLM2, CPU, f32: off, the If
    runs at 1.004 / 0.991 / 1.005x the plugin latency of the graph without a TopK at B = 1 / 4 / 16,
    and turning it off saves 0.5 / 0.6 / 2.5 % of a decode step's model time. Returns False when the
    outputs already exist."""
    if any("topk_ids" in o.get_names() for o in model.outputs):
        return False
    from openvino import opset11, opset13

    logits = model.output(output).get_node().input_value(0)
    if gate is None:
        ports = top_candidates(logits, k)
    else:
        ports = _gated_topk(model, logits, k, gate, opset13)
    for port, name in zip(ports, ("topk_values", "topk_ids")):
        result = opset11.result(port)
        result.output(0).get_tensor().set_names({name})
        model.add_results([result])
    model.validate_nodes_and_infer_types()
    return True


def _gated_topk(model: ov.Model, logits, k: int, gate: str, opset13):
    """The TopK inside If(gate): then the top k of `logits`, else zeros of the same [batch, seq, k] shapes."""
    flag = opset13.parameter([], ov.Type.boolean, name=gate)
    flag.output(0).get_tensor().set_names({gate})
    vocab = logits.get_partial_shape()[-1]
    then_in = opset13.parameter(ov.PartialShape([-1, -1, vocab]), logits.get_element_type())
    then_body = ov.Model([opset13.result(port) for port in top_candidates(then_in.output(0), k)], [then_in])
    shape_in = opset13.parameter([3], ov.Type.i64)
    lead = opset8.slice(shape_in, np.array([0], np.int64), np.array([2], np.int64), np.array([1], np.int64))
    shape = opset13.concat([lead, opset13.constant(np.array([k], np.int64))], 0)
    zeros = [opset13.broadcast(opset13.constant(np.zeros((), dtype)), shape) for dtype in (np.float32, np.int64)]
    else_body = ov.Model([opset13.result(z) for z in zeros], [shape_in])
    branch = opset8.if_op(flag.output(0))
    branch.set_then_body(then_body)
    branch.set_else_body(else_body)
    branch.set_input(logits, then_in, None)
    branch.set_input(opset13.shape_of(logits, "i64").output(0), None, shape_in)
    model.add_parameters([flag])
    return [branch.set_output(t, e) for t, e in zip(then_body.get_results(), else_body.get_results())]


BLOCK = 64  # logits per block of `_block_topk`


def top_candidates(logits, k: int) -> list:
    """(values, ids) ports of the k largest of `logits` along the vocabulary (the last axis), ids
    ascending: `_block_topk` for [batch, seq, vocab] logits whose vocabulary holds 4k blocks or
    more, a flat TopK otherwise."""
    from openvino import opset11

    shape = logits.get_partial_shape()
    if (shape.rank.is_static and shape.rank.get_length() == 3 and shape[-1].is_static
            and -(-shape[-1].get_length() // BLOCK) >= 4 * k):
        return _block_topk(logits, k)
    return opset11.topk(logits, np.array(k, np.int64), -1, "max", "index", "i64", stable=False).outputs()


def _block_topk(logits, k: int) -> list:
    """The k largest logits in two small TopKs: the vocabulary cut into blocks of BLOCK (the last one
    padded with -inf), the k blocks with the largest maxima (in block order), then the k largest of
    their k * BLOCK logits (in the order they sit, which is token-id order); ids = block * BLOCK +
    place. Every logit left out is <= the smallest one kept, as a flat TopK's: one in a block left
    out is <= that block's maximum, which is <= each kept block's maximum, and the k kept blocks hold
    k logits at least that large. Which of several equal values at the k-th place is taken is not
    specified, as for a flat TopK. A row holding a NaN gets NaN values (the ids as they fall)."""
    from openvino import opset10, opset11, opset13

    vocab = logits.get_partial_shape()[-1].get_length()
    dtype = logits.get_element_type().to_dtype()
    blocks = -(-vocab // BLOCK)
    x = logits
    if blocks * BLOCK != vocab:
        x = opset13.pad(x, np.zeros(3, np.int64), np.array([0, 0, blocks * BLOCK - vocab], np.int64), "constant",
                        opset13.constant(np.array(-np.inf, dtype)))
    lead = opset8.slice(opset13.shape_of(x, "i64"), np.array([0], np.int64), np.array([2], np.int64),
                        np.array([1], np.int64))  # [batch, seq]
    tiles = opset13.reshape(x, opset13.concat([lead, opset13.constant(np.array([blocks, BLOCK], np.int64))], 0), False)
    peaks = opset13.reduce_max(tiles, np.array([-1], np.int64), keep_dims=False)  # [batch, seq, blocks]
    best = opset11.topk(peaks, np.array(k, np.int64), -1, "max", "index", "i64", stable=False).output(1)
    picked = opset8.gather(tiles, best, np.array(2, np.int64), 2)  # [batch, seq, k, BLOCK]
    pool = opset13.reshape(picked, opset13.concat([lead, opset13.constant(np.array([k * BLOCK], np.int64))], 0), False)
    top = opset11.topk(pool, np.array(k, np.int64), -1, "max", "index", "i64", stable=False)
    size = opset13.constant(np.array(BLOCK, np.int64))
    block = opset8.gather(best, opset13.divide(top.output(1), size), np.array(2, np.int64), 2)
    ids = opset13.add(opset13.multiply(block, size), opset13.mod(top.output(1), size))
    # ReduceMax passes over a NaN, which one TopK would keep: a row holding one gets NaN candidates,
    # which the token-choice stage refuses (it then meets the NaN on the whole row, as before)
    nan = opset13.reduce_logical_or(opset10.is_nan(tiles), np.array([-2, -1], np.int64), keep_dims=False)
    values = opset13.select(opset13.unsqueeze(nan, np.array([-1], np.int64)),
                            opset13.constant(np.array(np.nan, dtype)), top.output(0))
    return [values.output(0), ids.output(0)]
