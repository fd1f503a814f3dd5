"""Exporting pre-trained transformers (`model.name: hf`): the network as ONNX takes, then optional graph fusions.

    net = exportable_network(net)            # LoRA merged into the weights, eval mode
    optimize(Path("model.onnx"), Path("opt.onnx"), config)    # onnxruntime's transformer optimiser

`bigmodel export RUN_DIR` runs the usual path (`onnx_export`): the graph takes `input` int64 ids
[batch, sequence] (the attention mask is `ids != pad_id`, computed in the graph) and returns logits and
probabilities (classification), a prediction (regression) or next-token logits [batch, sequence, vocab]
(language modelling). `export.optimize: true` then rewrites the fp32 graph with onnxruntime's transformer
optimiser (fused attention, LayerNorm, GELU, embedding layer norm), verified against PyTorch like any export;
`--quantize int8` quantises MatMul weights dynamically, judged by the metric drop on the validation split.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from bigmodel_cli.errors import JobFailed, first_line

# transformers' model_type -> onnxruntime optimiser's model_type (fusion patterns it knows)
ORT_MODEL_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
                   "electra": "bert", "mpnet": "bert", "deberta": "bert", "deberta-v2": "bert", "albert": "bert",
                   "gpt2": "gpt2", "llama": "gpt2", "mistral": "gpt2", "qwen2": "gpt2", "phi": "phi"}


def exportable_network(net: nn.Module) -> nn.Module:
    """The trained network with its LoRA adapters merged (one plain weight per layer), in eval mode, its attention
    written out as transformers' "eager" implementation (MatMul, Softmax, MatMul) instead of torch's
    scaled_dot_product_attention: onnxruntime runs that graph 1.5-1.9x faster on CPU than the one SDPA exports to
    (a BERT with hidden 128 or 384, batch 1, sequence 128), and its transformer optimiser knows its pattern. The
    weights and the answers are the same (the export is verified against the trained network)."""
    from bigmodel_cli.models.hf import merged

    net = merged(net).eval()
    use_attention(net, "eager")
    return net


def fusable(net: nn.Module) -> int:
    """Before an optimised export (`--optimize`): an encoder classifier hands its model the padding mask already
    prepared ([N, 1, L, L], `models.hf.additive_mask`), the same numbers in the graph that onnxruntime's attention
    fusion matches (transformers' own mask construction is not a pattern it knows). Returns how many changed. The
    plain export keeps transformers' mask: unfused, onnxruntime ran that graph 8 % faster (BERT hidden 128)."""
    from bigmodel_cli.models.hf import SequenceClassifier

    changed = 0
    for module in net.modules():
        if isinstance(module, SequenceClassifier) and _takes_additive_mask(module):
            module.additive_mask = True
            changed += 1
    return changed


# encoders whose transformers model takes a prepared [N, 1, L, L] mask as it is (masking_utils' early exit)
ADDITIVE_MASK_TYPES = {"bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra", "albert", "mpnet"}


def _takes_additive_mask(net: nn.Module) -> bool:
    config = getattr(net.model, "config", None)
    return (config is not None and config.model_type in ADDITIVE_MASK_TYPES
            and not getattr(config, "is_decoder", False))


def use_attention(net: nn.Module, implementation: str) -> None:
    """Run the transformers model inside `net` with this attention implementation ("eager", "sdpa"); a model
    that cannot switch keeps its own."""
    for module in net.modules():  # the outermost transformers model comes first
        if hasattr(module, "set_attn_implementation") and hasattr(module, "config"):
            with contextlib.suppress(ValueError, ImportError):
                module.set_attn_implementation(implementation)
            return


def optimize(src: Path, dest: Path, config: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime's transformer optimiser on an fp32 export; returns what it fused (op counts)."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as e:  # pragma: no cover - part of onnxruntime's wheel
        raise JobFailed(f"export.optimize: onnxruntime's transformer optimiser is not available ({e})") from None
    model_type = ORT_MODEL_TYPES.get(config.get("model_type", ""), "bert")
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 0)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions

    options = FusionOptions(model_type)
    options.attention_mask_format = AttentionMaskFormat.AttentionMask  # the mask as it is, any padding pattern
    try:
        split_unsqueezes(src, dest)
        optimized = optimize_model(str(dest), model_type=model_type, num_heads=heads, hidden_size=hidden,
                                   opt_level=1, use_gpu=False, optimization_options=options)
        optimized.save_model_to_file(str(dest))
    except Exception as e:  # noqa: BLE001 - the optimiser raises anything for a graph it cannot take
        raise JobFailed(f"export.optimize: onnxruntime's transformer optimiser failed "
                        f"({first_line(e, 200)})") from None
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return {"model_type": model_type, "fused": fused}


def split_unsqueezes(src: Path, dest: Path) -> None:
    """Write `src` to `dest` with every Unsqueeze of several (ascending, non-negative) axes as a chain of one-axis
    Unsqueezes: the same tensor, in the form onnxruntime's attention fusion matches (the exporter's graph
    optimiser merges `mask[:, None, None, :]` into one Unsqueeze of axes [1, 2])."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        axes = constants.get(node.input[1]) if node.op_type == "Unsqueeze" and len(node.input) > 1 else None
        steps = [] if axes is None else axes.reshape(-1).tolist()
        if len(steps) < 2 or steps != sorted(steps) or steps[0] < 0:
            nodes.append(node)
            continue
        current = node.input[0]
        for i, axis in enumerate(steps):
            name = f"{node.output[0]}__axis{axis}"
            graph.initializer.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), name + "_axes"))
            out = node.output[0] if i == len(steps) - 1 else name
            nodes.append(helper.make_node("Unsqueeze", [current, name + "_axes"], [out], name=f"{node.name}_{i}"))
            current = out
    graph.ClearField("node")
    graph.node.extend(nodes)
    onnx.save(model, str(dest))


class CachedDecoder(nn.Module):
    """A language model's export with its key/value cache: `input` ids [N, T] and, per layer, `past.{i}.key` and
    `past.{i}.value` [1, kv_heads, P, head_dim] -> `logits` [N, T, vocab] and `present.{i}.key/value` (the past
    followed by these T positions). The pasts are optional in the graph (initializers of length 0), so a caller
    that feeds `input` alone runs the whole sequence as before; a cached step feeds one sequence (batch 1)."""

    def __init__(self, model: nn.Module, layers: int):
        from bigmodel_cli.models.hf import cache_argument

        super().__init__()
        self.model, self.layers = model, layers
        self.cache_arg = cache_argument(model)

    def forward(self, input, past):  # noqa: A002  (the ONNX input's name)
        from transformers import DynamicCache

        from bigmodel_cli.models.hf import returned_cache

        n = input.shape[0]
        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i].expand(n, -1, -1, -1), past[2 * i + 1].expand(n, -1, -1, -1), i)
        out = self.model(input_ids=input.long(), **{self.cache_arg: cache}, use_cache=True)
        present = returned_cache(out)
        flat = []
        for layer in present.layers[: self.layers]:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def cache_names(layers: int) -> list[str]:
    return [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def export_decoder(module: nn.Module, sample, dest: Path, opset: int) -> str:
    """Write a language model's graph with its key/value cache (`CachedDecoder`) to `dest`; returns the exporter."""
    import onnx
    import torch
    from onnx import numpy_helper

    from bigmodel_cli.export.exporter import export_graph
    from bigmodel_cli.models.hf import CausalLM, returned_cache

    lm = next(m for m in module.modules() if isinstance(m, CausalLM)).model
    layers = int(lm.config.num_hidden_layers)
    ids = sample[:1].long()
    if ids.shape[1] < 2:
        ids = torch.cat([ids, ids], dim=1)
    with torch.inference_mode():  # the cache's shape per layer: [1, kv_heads, positions, head_dim]
        shapes = [tuple(layer.keys.shape) for layer in returned_cache(lm(input_ids=ids, use_cache=True)).layers]
    decoder = CachedDecoder(lm, layers).eval()
    longest = int(sample.shape[-1])
    kv_shapes = [shape for shape in shapes[:layers] for _ in ("key", "value")]  # in cache_names' order
    past = tuple(torch.zeros(1, h, 2, d) for (_, h, _, d) in kv_shapes)
    batch = torch.export.Dim("batch", min=1)
    dynamic = {"input": {0: batch, 1: torch.export.Dim("sequence", min=1, max=longest)},
               "past": tuple({2: torch.export.Dim("past", min=1, max=longest - 1)} for _ in past)}
    names = cache_names(layers)
    example = torch.cat([ids, ids], dim=0)  # batch 2 and length >= 2: neither is taken for a constant
    export_graph(decoder, (example, past), dest, opset, ["input", *names],
                 ["logits", *[n.replace("past", "present") for n in names]], dynamic, None,
                 what="ONNX export of the decoder with its key/value cache")
    graph = onnx.load(str(dest))
    for name, (_, h, _, d) in zip(names, kv_shapes, strict=True):
        graph.graph.initializer.append(numpy_helper.from_array(np.zeros((1, h, 0, d), np.float32), name))
    onnx.save(graph, str(dest))
    return "dynamo"


def drop_shape_annotations(path: Path) -> None:
    """Remove the intermediate shape annotations (`value_info`) of a graph: the dynamo exporter's annotations of
    a transformer disagree with what onnxruntime's quantiser infers (a dimension 1 against the batch)."""
    import onnx

    model = onnx.load(str(path))
    model.graph.ClearField("value_info")
    onnx.save(model, str(path))
