"""`bigmodel eval` of a language-modelling run: next-token loss and perplexity on a split, and quality gates.

    bigmodel eval runs/text-gpt-lm                             # test split, best checkpoint -> eval/test.json
    bigmodel eval runs/text-gpt-lm --fail-over perplexity=40   # exit 3 when the perplexity is above 40
    bigmodel eval runs/text-gpt-lm --onnx                      # the exported decoder (RUN_DIR/model.onnx)

Metrics: `loss` (mean cross-entropy per predicted token, nats), `perplexity` (its exponential) and
`tokens` (how many were predicted). `evaluate.plan` hands language-modelling runs to `plan` here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli import atomic, console
from bigmodel_cli.errors import UsageError
from bigmodel_cli.evaluation import gates as G

METRICS = ("loss", "perplexity")
BATCH = 16  # blocks per forward pass


def next_token_loss(logits, ids, reduction: str = "mean"):
    """Cross-entropy of token t+1 given tokens <= t, over every position of every block (torch tensors)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1).long(),
                           reduction=reduction)


def perplexity(loss: float | None) -> float | None:
    return None if loss is None else float(np.exp(min(loss, 50.0)))


def split_loss(net, x: np.ndarray, batch_size: int, device, dist=None, rows: np.ndarray | None = None
               ) -> tuple[float | None, int]:
    """(mean next-token cross-entropy over every block of `x` (or its `rows`), tokens predicted).

    With several processes rank r takes blocks r::world, every rank runs as many forward passes (sharded
    models need every rank's collectives), and the sums are added over ranks.
    """
    import torch

    rows = np.arange(len(x)) if rows is None else rows
    enabled = dist is not None and dist.enabled
    mine = rows[dist.rank::dist.world] if enabled else rows
    share = -(-len(rows) // dist.world) if enabled else len(mine)  # the most blocks any rank has
    steps = -(-share // batch_size)
    total, count = 0.0, 0
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for i in range(steps):
                part = mine[i * batch_size:(i + 1) * batch_size]
                real = len(part)
                ids = torch.from_numpy(np.asarray(x[part if real else rows[:1]], dtype=np.int64)).to(device)
                loss = next_token_loss(net(ids), ids, reduction="sum")
                if real:
                    total += float(loss)
                    count += real * (ids.shape[1] - 1)
    finally:
        net.train(was_training)
    if enabled:
        total, count = dist.sum(total, float(count))
    return (total / count if count else None), int(count)


@dataclass
class LanguageModelPlan:
    """A checked evaluation of a language-modelling run (what `evaluate.execute` runs)."""

    label: str
    run: Any
    split: str
    x: np.ndarray
    gates: list[G.Gate]
    out: Path
    source: dict[str, str]
    losses: Any  # x -> (loss, tokens)

    def execute(self) -> dict[str, Any]:
        started = time.perf_counter()
        loss, tokens = self.losses(self.x)
        metrics = {"loss": loss, "perplexity": perplexity(loss), "tokens": tokens}
        report = {"run": self.label, "split": self.split, "n": int(len(self.x)), **self.source,
                  "task": "language-modeling", "data": str(self.run.recipe.prepared_dir), "metrics": metrics,
                  "gates": G.check(self.gates, metrics), "warnings": [], "time_s": time.perf_counter() - started,
                  "files": {"report": str(self.out), "plots": []}}  # every eval report lists its plots
        atomic.write_json(self.out, report)
        console.info(f"{self.label} {self.split}: loss {loss:.4f}, perplexity {metrics['perplexity']:.3f} on "
                     f"{tokens} tokens ({len(self.x)} blocks) -> {self.out}" if loss is not None else
                     f"{self.label} {self.split}: no blocks to evaluate")
        return report


def plan(run, label: str, options, onnx: Path | None) -> LanguageModelPlan:
    from bigmodel_cli.run import prepared_split

    if options.data is not None:
        raise UsageError("--data: a language-modelling run is evaluated on its own prepared splits; prepare the new "
                         "corpus with the run's recipe and evaluate with --split")
    cfg = run.recipe.eval
    split = options.split or cfg.split
    if split not in ("train", "val", "test"):
        raise UsageError(f"--split {split}: expected train, val or test")
    gates = G.resolve(cfg, options.fail_under, options.fail_over, METRICS)
    x, _ = prepared_split(run, split)
    if onnx is not None:
        from bigmodel_cli.inference.session import create_session

        if not Path(onnx).is_file():
            raise UsageError(f"--onnx {onnx}: no such model file; export the run first: bigmodel export {run.path}")
        session = create_session(onnx, device="cpu")
        return LanguageModelPlan(label, run, split, x, gates, run.path / "eval" / f"{split}.onnx.json",
                                 {"model": str(onnx)}, lambda rows: onnx_loss(session, rows))
    from bigmodel_cli.run import load_network

    which = options.checkpoint or cfg.checkpoint
    net, _, path = load_network(run, which)
    stem = split if which == "best" else f"{split}.{which if which == 'last' else Path(which).stem}"
    return LanguageModelPlan(label, run, split, x, gates, run.path / "eval" / f"{stem}.json",
                             {"checkpoint": str(path)}, lambda rows: split_loss(net, rows, BATCH, "cpu"))


def onnx_loss(session, x: np.ndarray) -> tuple[float | None, int]:
    """The same loss from the exported decoder's logits."""
    total, count = 0.0, 0
    for start in range(0, len(x), BATCH):
        ids = np.asarray(x[start:start + BATCH], dtype=np.int64)
        nll, tokens = next_token_nll(session.run(["logits"], {"input": ids})[0], ids)
        total, count = total + nll, count + tokens
    return (total / count if count else None), count


def next_token_nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of each next token of `ids` [N, L] under `logits` [N, L, vocab], and how
    many tokens that is (numpy: for onnxruntime's outputs)."""
    logits = np.asarray(logits[:, :-1], dtype=np.float64)
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -float(np.take_along_axis(logp, ids[:, 1:, None], axis=-1).sum()), ids.shape[0] * (ids.shape[1] - 1)
