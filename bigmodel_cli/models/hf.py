"""Pre-trained transformers from local Hugging Face folders: `model.name: hf` with `model.path: DIR`.

    bigmodel prepare-data -r text-bert-finetune --set model.path=models/bert-tiny   # the folder's tokenizer
    bigmodel train -r text-bert-finetune                                            # fine-tune every weight
    bigmodel train -r text-bert-finetune-lora                                       # LoRA adapters + the head

    net = build(recipe, data, outputs=2)              # ids [N, L] -> logits [N, 2] (sequence classification)
    net = build_causal_lm(recipe, data)               # ids [N, L] -> next-token logits [N, L, vocab]

The folder holds `config.json`, weights (`*.safetensors`, sharded too, or `pytorch_model.bin`) and the
tokenizer; nothing is downloaded (offline is forced). prepare-data stores the folder's tokenizer and its
config.json in the prepared data (`preprocessing.hf`), so a run rebuilds its network from that config and
its checkpoint alone: eval, export and serve never need the folder. `transformers` (and `peft` for LoRA)
come with the optional extra `pip install 'bigmodel-cli[hf]'`; importing this module imports neither.

Token ids are padded at the end with the tokenizer's padding id; the attention mask is `ids != pad_id`,
computed inside the network, so the exported graph takes ids alone (as `serve` sends them).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
from torch import nn

from bigmodel_cli.data.preprocess import HF_EXTRA, max_positions, model_folder
from bigmodel_cli.errors import UsageError, first_line
from bigmodel_cli.models.registry import register_model


def transformers_module():
    """`transformers`, imported offline and quiet; exit 2 naming the extra when it is not installed."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers
    except ImportError:
        raise UsageError(f"model.name hf needs the transformers library: {HF_EXTRA}") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def described(data: dict[str, Any]) -> dict[str, Any]:
    """The model folder as prepare-data described it (path, model_type, config.json)."""
    info = (data.get("preprocessing") or {}).get("hf")
    if not info:
        raise UsageError("model.name hf needs data prepared with the model's own tokenizer: set "
                         "data.text.tokenizer: model (and model.path), then rerun prepare-data")
    return info


def _config(info: dict[str, Any], **overrides: Any):
    transformers = transformers_module()
    values = {k: v for k, v in info["config"].items() if k not in ("transformers_version", "architectures")}
    model_type = values.pop("model_type")
    try:
        config = transformers.AutoConfig.for_model(model_type, **values)
    except (ValueError, KeyError) as e:
        raise UsageError(f"model.path {info['path']}: model_type '{model_type}' is not known to transformers "
                         f"{transformers.__version__} ({first_line(e, 160)})") from None
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _check_architecture(info: dict[str, Any], task: str) -> None:
    from transformers.models.auto import modeling_auto as auto

    model_type = info["model_type"]
    where = f"model.path {info['path']} ({model_type})"
    if task == "language-modeling":
        encoder = model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not info["config"].get("is_decoder")
        if model_type not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder:
            raise UsageError(f"{where}: not a decoder; task language-modeling needs a causal language model "
                             f"(GPT-2, Llama, Mistral, Qwen...), this folder holds an encoder or another kind")
    elif model_type not in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise UsageError(f"{where}: transformers has no sequence-classification head for this architecture; use "
                         f"an encoder (BERT, DistilBERT, RoBERTa...) or a decoder (GPT-2, Llama...)")


def _check_inputs(info: dict[str, Any], data: dict[str, Any]) -> None:
    length = int(data["input_shape"][0])
    longest = info.get("max_positions") or max_positions(info["config"])
    if longest is not None and length > longest:
        raise UsageError(f"sequences of {length} tokens are longer than the model's position embeddings ({longest}, "
                         f"model.path {info['path']}); prepare the data with data.text.max_length={longest} or less")
    vocab = int(info["config"].get("vocab_size") or 0)
    text = data["preprocessing"]["text"]
    if vocab and int(text["vocab_size"]) > vocab:
        raise UsageError(f"the tokenizer has {text['vocab_size']} tokens but the model embeds {vocab} "
                         f"(model.path {info['path']}): they do not belong together")


def _load(auto_class, path: str | None, config, pretrained: bool):
    """From the folder's weights (training), or from the config alone (a trained run: the checkpoint has them)."""
    if not pretrained:
        return auto_class.from_config(config, dtype=torch.float32)
    folder = model_folder(path)
    try:
        return auto_class.from_pretrained(str(folder), config=config, local_files_only=True,
                                          ignore_mismatched_sizes=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"model.path {folder}: cannot load the weights ({first_line(e, 200)})") \
            from None


def _module_names(model: nn.Module) -> list[str]:
    """Qualified names of the layers LoRA can adapt (linear, Conv1D, embedding, convolution)."""
    kinds = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)
    return [n for n, m in model.named_modules() if n and (isinstance(m, kinds) or type(m).__name__ == "Conv1D")]


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Every target names a layer of the model (as peft matches: the whole name or its last parts)."""
    names = _module_names(model)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    for target in targets:
        if not any(n == target or n.endswith(f".{target}") for n in names):
            near = difflib.get_close_matches(target, leaves, n=3, cutoff=0.4)
            hint = f"; nearest: {', '.join(near)}" if near else ""
            raise UsageError(f"model.lora.target_modules: '{target}' is not a layer of this model{hint} "
                             f"(layers LoRA can adapt: {', '.join(leaves[:24])})")


def _lora(model: nn.Module, cfg, task_type: str, where: str) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UsageError(f"model.lora needs the peft library: {HF_EXTRA}") from None
    if cfg.target_modules:
        check_lora_targets(model, cfg.target_modules)
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type=task_type,
                        target_modules=cfg.target_modules)
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in _module_names(model)})
        raise UsageError(f"model.lora ({where}): {first_line(e, 200)}; set model.lora.target_modules "
                         f"(layers: {', '.join(leaves[:24])})") from None


class _Pretrained(nn.Module):
    """What both heads share: the transformers model, the padding id, per-layer learning rates."""

    def __init__(self, model: nn.Module, pad_id: int, layer_decay: float | None, head_scale: float | None):
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)
        self.layer_decay, self.head_scale = layer_decay, head_scale

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate factor per parameter name (`training.optim` reads it): layer-wise decay, a head rate.

        Depth 0 is everything before the first transformer block (embeddings), depth i+1 block i, the
        parameters after the blocks (final norm, pooler) the last depth, the head one more; a parameter at
        depth d gets `layer_decay ** (top - d)`, the head `head_lr / optimizer.lr`.
        """
        if self.layer_decay is None and self.head_scale is None:
            return {}
        blocks_name, blocks = _blocks(self)
        head = _head_names(self)
        depth, seen_blocks, scales = 0, False, {}
        count = len(blocks) if blocks is not None else 0
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name in head:
                scales[name] = self.head_scale if self.head_scale is not None else 1.0
                continue
            if blocks_name and name.startswith(blocks_name + "."):
                depth = int(name[len(blocks_name) + 1:].split(".", 1)[0]) + 1
                seen_blocks = True
            elif seen_blocks:
                depth = count
            else:
                depth = 0
            scales[name] = self.layer_decay ** (count + 1 - depth) if self.layer_decay is not None else 1.0
        return scales


def _blocks(net: nn.Module) -> tuple[str | None, nn.ModuleList | None]:
    """The longest ModuleList of the model: its transformer blocks."""
    best: tuple[str | None, nn.ModuleList | None] = (None, None)
    for name, module in net.named_modules():
        if isinstance(module, nn.ModuleList) and (best[1] is None or len(module) > len(best[1])):
            best = (name, module)
    return best


def _head_names(net: _Pretrained) -> set[str]:
    """Parameter names of the task head (classifier/score; with LoRA, the copy peft trains)."""
    heads = ("classifier", "score", "lm_head")
    return {n for n, _ in net.named_parameters() if any(f".{h}." in f".{n}" for h in heads)}


class SequenceClassifier(_Pretrained):
    """Token ids [N, L] padded with `pad_id` at the end -> logits [N, outputs].

    `additive_mask` (set for `bigmodel export --optimize`, encoders only) hands the model its padding mask already
    in the additive [N, 1, L, L] form instead of letting transformers build it: the same numbers, written as a
    graph that onnxruntime's transformer optimiser recognises (see `additive_mask`)."""

    additive_mask = False

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        mask = ids != self.pad_id
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)  # an empty text still has one token
        if self.additive_mask:
            return self.model(input_ids=ids, attention_mask=additive_mask(mask)).logits
        return self.model(input_ids=ids, attention_mask=mask.long()).logits


def additive_mask(keep: torch.Tensor) -> torch.Tensor:
    """[N, L] bool (True: a token) -> [N, 1, L, L] float32: 0 where a query may attend to the key, the lowest float
    where it may not (the key is padding), as transformers' encoders build it for their eager attention. Written
    as transformers' former SDPA mask preparation (expand, 1 - mask, masked_fill): the pattern onnxruntime's
    transformer optimiser knows, so that it fuses each layer's attention into one Attention op."""
    n, length = keep.shape
    inverted = 1.0 - keep[:, None, None, :].expand(n, 1, length, length).to(torch.float32)
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(torch.float32).min)


class CausalLM(_Pretrained):
    """Token ids [N, L] (packed blocks, no padding) -> next-token logits [N, L, vocab]."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids.long(), use_cache=False).logits


def cache_argument(model: nn.Module) -> str:
    """The keyword of a transformers model's key/value cache: `cache` from transformers 5.20, `past_key_values`
    before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The key/value cache a transformers model returned (`cache`, or `past_key_values` before 5.20)."""
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def from_recipe(recipe, data: dict[str, Any], outputs: int | None = None, pretrained: bool = True) -> nn.Module:
    """The recipe's network: a classifier with `outputs` outputs, or a causal LM (task language-modeling).

    `pretrained`: the folder's weights (training starts from them); False: the architecture alone, for a
    trained run whose checkpoint holds every weight (the folder is not needed then).
    """
    cfg = recipe.train
    options = {"path": recipe.model.path, "lora": recipe.model.lora, "checkpointing": cfg.gradient_checkpointing,
               "layer_decay": cfg.layer_decay, "head_scale": cfg.head_lr / cfg.optimizer.lr if cfg.head_lr else None,
               "pretrained": pretrained}
    if recipe.task == "language-modeling":
        return build_causal_lm(data, **options)
    return build(data, outputs or 1, **options)


def build(data: dict[str, Any], outputs: int, *, path: str | None, lora=None, checkpointing: bool = False,
          layer_decay: float | None = None, head_scale: float | None = None, pretrained: bool = True) -> nn.Module:
    """The sequence classifier (or regressor: outputs 1) of the model folder, with LoRA adapters when `lora`."""
    info = described(data)
    transformers_module()
    _check_architecture(info, "classification")
    _check_inputs(info, data)
    text = data["preprocessing"]["text"]
    config = _config(info, num_labels=outputs, pad_token_id=int(text["pad_id"]))
    from transformers import AutoModelForSequenceClassification

    model = _load(AutoModelForSequenceClassification, path, config, pretrained)
    model = _adapt(model, checkpointing, lora, "SEQ_CLS", info)
    return SequenceClassifier(model, int(text["pad_id"]), layer_decay, head_scale)


def build_causal_lm(data: dict[str, Any], *, path: str | None, lora=None, checkpointing: bool = False,
                    layer_decay: float | None = None, head_scale: float | None = None,
                    pretrained: bool = True) -> nn.Module:
    """The causal language model of the model folder (LoRA adapters when `lora`)."""
    info = described(data)
    transformers_module()
    _check_architecture(info, "language-modeling")
    _check_inputs(info, data)
    text = data["preprocessing"]["text"]
    from transformers import AutoModelForCausalLM

    model = _load(AutoModelForCausalLM, path, _config(info), pretrained)
    model = _adapt(model, checkpointing, lora, "CAUSAL_LM", info)
    return CausalLM(model, int(text["pad_id"]), layer_decay, head_scale)


def _adapt(model: nn.Module, checkpointing: bool, lora, task_type: str, info: dict[str, Any]) -> nn.Module:
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        model = _lora(model, lora, task_type, info["path"])
    return model


def merged(net: nn.Module) -> nn.Module:
    """`net` with LoRA adapters merged into the weights (export, generation speed); unchanged without LoRA."""
    inner = net.net if hasattr(net, "net") and isinstance(net.net, _Pretrained) else net
    if isinstance(inner, _Pretrained) and hasattr(inner.model, "merge_and_unload"):
        inner.model = inner.model.merge_and_unload()
    return net


def trainable_summary(net: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    params = list(net.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@register_model("hf", kinds=("text",), tasks=("classification", "regression", "language-modeling"))
def hf(num_classes: int, input_shape: list[int], path: str | None = None, vocab_size: int | None = None) -> nn.Module:
    """A pre-trained transformer from a local Hugging Face folder (model.path): sequence classification."""
    from bigmodel_cli.config.schema import TextSection
    from bigmodel_cli.data.preprocess import fit_model_tokenizer

    spec, info = fit_model_tokenizer(path, TextSection(tokenizer="model", max_length=input_shape[0]),
                                     "classification")
    return build({"input_shape": list(input_shape), "preprocessing": {"text": spec, "hf": info}}, num_classes,
                 path=path)
