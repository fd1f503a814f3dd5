"""Pre-trained transformers (issue 17), side by side on the same model and data, CPU unless a GPU is there:

    .venv/bin/python benchmarks/bench_hf.py                       # every part
    .venv/bin/python benchmarks/bench_hf.py --parts trainer,lora,ort --hidden 128 --layers 4
    .venv/bin/python benchmarks/bench_hf.py --parts ort --hidden 256 --layers 4 --heads 4    # BERT-mini's shape
    .venv/bin/python benchmarks/bench_hf.py --parts pretrained --reviews 4000
    .venv/bin/python benchmarks/bench_hf.py --parts generate --hidden 256 --layers 4

Parts (each prints one block and a JSON line):
  trainer     `bigmodel train` against the Hugging Face Trainer: one BERT written in the HF layout (hidden
              --hidden, --layers layers), the same rows, batch --batch, sequence --length, AdamW, 2 epochs;
              samples/s of the second epoch for both (goal: >= 1.0x the Trainer).
  lora        full fine-tuning against LoRA (r 8 on query/value): trainable parameters, and peak memory of a
              training process (on a GPU: torch.cuda.max_memory_allocated; on CPU: the peak resident size
              of a fresh process minus its size once the model is built, over 20 steps).
  ort         a classifier of the same BERT fine-tuned (--ort-epochs) and exported: onnxruntime fp32 against
              PyTorch eager at batch 1, sequence --length (goal >= 1.5x), dynamic int8 against fp32 (goal
              >= 1.5x) and its accuracy drop on the validation split (goal <= 1 point), each also with
              --optimize (onnxruntime's transformer fusions: attention, LayerNorm, GELU).
  generate    a GPT-2 (hidden --hidden, --layers layers, --length positions) fine-tuned one epoch and exported:
              greedy generation to its longest sequence with the export's key/value cache against the same graph
              run over the whole sequence each step; tokens/s of both, and whether the texts are equal.
  pretrained  no pre-trained weights can be downloaded here, so a BERT (hidden --hidden, --layers layers) is
              pre-trained by masked language modelling (--pretrain-epochs) on generated unlabelled reviews
              (--corpus leaning: each leans one way, as real reviews do; recipe: the recipe's own generator,
              another seed), then fine-tuned with text-bert-finetune on the text-transformer recipe's data;
              against the same architecture fine-tuned from random weights and the text-transformer recipe
              from scratch, on the same split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit" / "hf"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))
os.environ["HF_HUB_OFFLINE"] = "1"


def heads_for(hidden: int, heads: int = 0) -> int:
    """Attention heads: `heads` when given (--heads), else one per 32 hidden units."""
    return heads or max(1, hidden // 32)


def write_model(folder: Path, hidden: int, layers: int, length: int, seed: int = 0, heads: int = 0) -> Path:
    import torch
    from hf_tiny import _silence, wordpiece_tokenizer
    from transformers import BertConfig, BertForMaskedLM

    _silence()
    torch.manual_seed(seed)
    tok = wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads_for(hidden, heads), intermediate_size=4 * hidden,
                        max_position_embeddings=max(length, 64), pad_token_id=tok.pad_token_id)
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prepared(root: Path, model: Path, rows: int, length: int, name: str = "text-bert-finetune", sets=(),
             learnable: bool = False):
    """The recipe's data prepared from generated reviews (`learnable`: texts whose label is plain from their
    words, tests/unit/hf/conftest.py; else the text-transformer recipe's reviews, negations and 5 % noise)."""
    from hf_tiny import write_labelled

    from bigmodel_cli import console
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare

    console.quiet(True)
    root.mkdir(parents=True, exist_ok=True)
    source = root / "reviews.csv"
    if not source.exists():
        if learnable:
            write_labelled(source, rows)
        else:
            from test_recipe_text import write_reviews  # (imports tritonclient: the dev extra)

            write_reviews(source, rows)
    recipe = resolve(name, {"data.prepared": str(root / f"data-{name}"), "data.source": str(source),
                            "model.path": str(model)}, [f"data.text.max_length={length}", *sets])
    prepare(recipe, force=True)
    return recipe


# ---------------------------------------------------------------- trainer


def part_trainer(args, root: Path) -> dict:
    """Ours and the Trainer alternately (--repeats times: the machine's load changes), the best of each."""
    import shutil

    from bigmodel_cli.training.loop import fit

    model = write_model(root / "bert", args.hidden, args.layers, args.length, heads=args.heads)
    sets = [f"train.batch_size={args.batch}", "train.epochs=2", "train.optimizer.lr=0.002", "train.head_lr=null",
            "train.scheduler.name=constant", "train.scheduler.warmup_epochs=0", "train.clip_grad_norm=null",
            "train.early_stopping.patience=null", "train.loss=cross_entropy", "train.optimizer.weight_decay=0"]
    recipe = prepared(root, model, args.rows, args.length, sets=sets, learnable=True)
    ours, theirs = [], []
    for rep in range(args.repeats):
        run = root / "run"
        shutil.rmtree(run, ignore_errors=True)
        fit(recipe, run)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        ours.append(rows[-1]["samples_per_s"])
        theirs.append(_hf_trainer(recipe, model, args, root))
        print(f"  round {rep + 1}: bigmodel {ours[-1]:.2f} samples/s, HF Trainer {theirs[-1]:.2f} samples/s")
    out = {"part": "trainer", "rows": len(np.load(Path(recipe.prepared_dir) / "train" / "y.npy")),
           "batch": args.batch, "length": args.length, "hidden": args.hidden, "layers": args.layers,
           "bigmodel_samples_per_s": max(ours), "hf_trainer_samples_per_s": max(theirs),
           "ratio": max(ours) / max(theirs), "rounds": {"bigmodel": ours, "hf_trainer": theirs}}
    print(f"fine-tuning, epoch 2, best of {args.repeats}: bigmodel {max(ours):.2f} samples/s, HF Trainer "
          f"{max(theirs):.2f} samples/s -> {out['ratio']:.2f}x (goal >= 1.0x)")
    return out


def _hf_trainer(recipe, model: Path, args, root: Path) -> float:
    """The Hugging Face Trainer on the same prepared rows (ids, mask ids != pad), its defaults (fused AdamW);
    samples/s of its second epoch."""
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    x = np.load(Path(recipe.prepared_dir) / "train" / "x.npy").astype(np.int64)
    y = np.load(Path(recipe.prepared_dir) / "train" / "y.npy")
    manifest = json.loads((Path(recipe.prepared_dir) / "manifest.json").read_text())
    pad = manifest["preprocessing"]["text"]["pad_id"]

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            ids = torch.from_numpy(x[i])
            return {"input_ids": ids, "attention_mask": (ids != pad).long(), "labels": int(y[i])}

    times: list[float] = []

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_epoch_end(self, *a, **k):
            times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    net = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=2, local_files_only=True)
    targs = TrainingArguments(output_dir=str(root / "hf-trainer"), per_device_train_batch_size=args.batch,
                              num_train_epochs=2, learning_rate=2e-3, lr_scheduler_type="constant",
                              save_strategy="no", logging_strategy="no", report_to=[], eval_strategy="no",
                              dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                              max_grad_norm=0.0, weight_decay=0.0)
    Trainer(model=net, args=targs, train_dataset=Rows(), callbacks=[EpochTimer()]).train()
    return len(x) / times[-1]


# ---------------------------------------------------------------- lora


class PeakRSS:
    """The largest resident size seen by a thread sampling every 2 ms (CPU: torch has no allocator statistics)."""

    def __init__(self):
        import threading

        import psutil

        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def _child_memory(kind: str, root: str, steps: int, batch: int) -> None:
    """In a fresh process: build the network (full or LoRA), then train `steps` steps; print JSON."""
    import torch

    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.manifest import read
    from bigmodel_cli.models.build import build_network

    recipe = resolve("text-bert-finetune" if kind == "full" else "text-bert-finetune-lora",
                     {"data.prepared": f"{root}/lora/data-text-bert-finetune", "model.path": f"{root}/lora/bert"})
    manifest = read(recipe.prepared_dir)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    net = build_network(recipe, manifest).to(device)
    x = torch.from_numpy(np.load(f"{recipe.prepared_dir}/train/x.npy")[: batch * steps].astype(np.int64))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    import gc

    gc.collect()
    built = PeakRSS().stop()  # the process with the model built, before training
    sampler = PeakRSS()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps):
        ids = x[i * batch:(i + 1) * batch].to(device)
        loss = net(ids).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    peak = torch.cuda.max_memory_allocated() if gpu else sampler.stop() - built
    print(json.dumps({"trainable": trainable, "total": total, "peak_bytes": peak, "gpu": gpu}))


def part_lora(args, root: Path) -> dict:
    lora = root / "lora"
    lora.mkdir(exist_ok=True)
    write_model(lora / "bert", args.lora_hidden, args.layers, args.length)
    prepared(lora, lora / "bert", args.rows, args.length, learnable=True)
    results = {}
    for kind in ("full", "lora"):
        proc = subprocess.run([sys.executable, __file__, "--child", kind, "--root", str(root),
                               "--batch", str(args.batch)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])})
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    where = "GPU max allocated" if full["gpu"] else "CPU peak resident size over the built model's"
    print(f"hidden {args.lora_hidden}, {args.layers} layers, batch {args.batch}, sequence {args.length}, 20 steps")
    print(f"trainable parameters: full {full['trainable']:,}, LoRA {lora['trainable']:,} "
          f"({100 * lora['trainable'] / full['trainable']:.2f} %)")
    print(f"peak training memory ({where}): full {full['peak_bytes'] / 2**20:.1f} MiB, "
          f"LoRA {lora['peak_bytes'] / 2**20:.1f} MiB")
    return {"part": "lora", "hidden": args.lora_hidden, "layers": args.layers, "full": full, "lora": results["lora"]}


# ---------------------------------------------------------------- ort


def _median_ms(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def part_ort(args, root: Path) -> dict:
    import torch

    from bigmodel_cli.export.module import exportable
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.inference.session import create_session
    from bigmodel_cli.run import load_run
    from bigmodel_cli.training.loop import fit

    model = write_model(root / "bert-ort", args.hidden, args.layers, args.length, heads=args.heads)
    sets = [f"train.batch_size={args.batch}", f"train.epochs={args.ort_epochs}", "train.optimizer.lr=0.0005",
            "train.head_lr=0.002", "train.early_stopping.patience=null", "eval.fail_under={}"]
    recipe = prepared(root / "ort", model, args.rows, args.length, sets=sets, learnable=True)
    run = root / "ort" / "run"
    fit(recipe, run)  # a model that has learnt the task, so that int8's accuracy drop means something
    fp32 = export_run(run)
    int8 = export_run(run, quantize="int8")
    module, _ = exportable(load_run(run), "best")
    from bigmodel_cli.export.hf import use_attention

    use_attention(module, "sdpa")  # PyTorch eager as its users run it (the export writes attention out as "eager")
    x = np.load(Path(load_run(run).recipe.prepared_dir) / "val" / "x.npy")[:1].astype(np.int64)
    torch_x = torch.from_numpy(x)
    drop = int8["int8"]["metric"]["drop_points"]
    # the transformer optimiser on top (fused attention, LayerNorm, GELU), then int8 of the fused graph
    optimized = export_run(run, out=run / "model.opt.onnx", optimize=True)
    opt_int8 = export_run(run, out=run / "model.opt.int8.onnx", quantize="int8", optimize=True)
    names = ("model.onnx", "model.int8.onnx", "model.opt.onnx", "model.opt.int8.onnx")
    sessions = {name: create_session(run / name, device="cpu") for name in names}
    rounds: dict[str, list[float]] = {k: [] for k in ("eager", "eager_1_thread", *names)}
    for _ in range(args.ort_rounds):  # interleaved, so that a slow spell of the machine hits every variant
        with torch.inference_mode():
            rounds["eager"].append(_median_ms(lambda: module(torch_x)))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            rounds["eager_1_thread"].append(_median_ms(lambda: module(torch_x)))
            torch.set_num_threads(threads)
        for name, session in sessions.items():
            rounds[name].append(_median_ms(lambda s=session: s.run(None, {"input": x})))
    times = {k: float(np.median(v)) for k, v in rounds.items()}
    eager, eager_one = times["eager"], times["eager_1_thread"]
    described = f"BERT hidden {args.hidden}, {args.layers} layers, {heads_for(args.hidden, args.heads)} heads"
    out = {"part": "ort", "model": described, "batch": 1, "length": int(x.shape[1]), "ms": times,
           "ort_fp32_vs_eager": eager / times["model.onnx"],
           "ort_fp32_vs_eager_1_thread": eager_one / times["model.onnx"],
           "val_accuracy_fp32": int8["int8"]["metric"]["fp32"],
           "int8_vs_fp32": times["model.onnx"] / times["model.int8.onnx"], "int8_drop_points": drop,
           "optimized_vs_fp32": times["model.onnx"] / times["model.opt.onnx"],
           "optimized_vs_eager": eager / times["model.opt.onnx"],
           "optimized_int8_vs_optimized": times["model.opt.onnx"] / times["model.opt.int8.onnx"],
           "optimized_int8_drop_points": opt_int8["int8"]["metric"]["drop_points"],
           "fused": optimized.get("optimize", {}).get("fused"),
           "verified": fp32["verification"]["passed"] and optimized["verification"]["passed"]}
    print(f"{described}, batch 1, sequence {x.shape[1]}: eager {eager:.2f} ms ({eager_one:.2f} ms on one thread), "
          f"ORT fp32 {times['model.onnx']:.2f} ms "
          f"({out['ort_fp32_vs_eager']:.2f}x, goal >= 1.5x), int8 {times['model.int8.onnx']:.2f} ms "
          f"({out['int8_vs_fp32']:.2f}x fp32, goal >= 1.5x; drop {drop:.2f} points, goal <= 1)")
    print(f"  --optimize: fp32 {times['model.opt.onnx']:.2f} ms ({out['optimized_vs_fp32']:.2f}x fp32, "
          f"{out['optimized_vs_eager']:.2f}x eager; fused {out['fused']}), int8 {times['model.opt.int8.onnx']:.2f} ms "
          f"({out['optimized_int8_vs_optimized']:.2f}x optimised fp32; drop "
          f"{out['optimized_int8_drop_points']:.2f} points)")
    return out


# ---------------------------------------------------------------- pretrained


def pretrain_mlm(folder: Path, texts: list[str], epochs: int, batch: int = 64, lr: float = 1e-3) -> float:
    """Masked language modelling (15 % of tokens: 80 % [MASK], 10 % random, 10 % kept) of the folder's BERT."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = BertForMaskedLM.from_pretrained(str(folder), local_files_only=True)
    collate = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    encoded = [tok(t, truncation=True, max_length=48)["input_ids"] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(0)
    loss = float("nan")
    model.train()
    for _ in range(epochs):
        order = np.random.default_rng(0).permutation(len(encoded))
        for start in range(0, len(order), batch):
            batch_ids = collate([{"input_ids": encoded[i]} for i in order[start:start + batch]])
            out = model(**batch_ids)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            loss = float(out.loss)
    model.save_pretrained(folder)
    return loss


def leaning_review(rng: np.random.Generator) -> str:
    """An unlabelled review as real ones are written: it leans one way, and its sentiment words mostly agree
    (85 %; "not" before a word of the other side), among the same neutral words as the recipe's reviews."""
    from test_recipe_text import NEGATIVE, NEUTRAL, POSITIVE

    words = list(rng.choice(NEUTRAL, size=int(rng.integers(4, 20))))
    lean = bool(rng.random() < 0.5)
    for _ in range(int(rng.integers(2, 7))):
        agree = bool(rng.random() < 0.85)
        negated = bool(rng.random() < 0.2)
        positive = lean == agree
        phrase = [str(rng.choice(POSITIVE if positive != negated else NEGATIVE))]
        if negated:
            phrase.insert(0, "not")
        at = int(rng.integers(0, len(words) + 1))
        words[at:at] = phrase
    return " ".join(words)


def pretraining_checks(folder: Path, texts: list[str], labelled: list[tuple[str, str]]) -> dict[str, float]:
    """What a BERT's weights know before fine-tuning: with one sentiment word of a held-out leaning review
    masked, how often the masked-word head puts more probability on the right side; and a logistic regression
    (a linear probe) on its frozen mean-pooled features, trained on 70 % of `labelled`, scored on the rest."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from test_recipe_text import NEGATIVE, POSITIVE
    from transformers import AutoTokenizer, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = BertForMaskedLM.from_pretrained(str(folder), local_files_only=True).eval()
    sides = {True: tok.convert_tokens_to_ids(POSITIVE), False: tok.convert_tokens_to_ids(NEGATIVE)}
    right = asked = 0
    with torch.no_grad():
        for text in texts:
            words = text.split()
            at = next((i for i, w in enumerate(words) if w in POSITIVE + NEGATIVE and words[i - 1:i] != ["not"]),
                      None)
            if at is None:
                continue
            positive, words[at] = words[at] in POSITIVE, tok.mask_token
            enc = tok(" ".join(words), return_tensors="pt")
            where = int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0])
            p = model(**enc).logits[0, where].softmax(-1)
            right += int(bool(p[sides[True]].sum() > p[sides[False]].sum()) == positive)
            asked += 1
        features = []
        for start in range(0, len(labelled), 256):
            enc = tok([t for t, _ in labelled[start:start + 256]], padding=True, truncation=True, max_length=48,
                      return_tensors="pt")
            hidden = model.bert(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            features.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    x, y = np.concatenate(features), np.array([label == "positive" for _, label in labelled])
    cut = int(0.7 * len(x))
    probe = LogisticRegression(max_iter=3000).fit(x[:cut], y[:cut])
    return {"masked_side_accuracy": right / max(asked, 1),
            "linear_probe_accuracy": float(probe.score(x[cut:], y[cut:]))}


def part_pretrained(args, root: Path) -> dict:
    from test_recipe_text import review

    from bigmodel_cli.evaluation.evaluate import evaluate
    from bigmodel_cli.training.loop import fit

    rng = np.random.default_rng(99)
    unlabelled = [leaning_review(rng) if args.corpus == "leaning" else review(rng)[0]
                  for _ in range(args.pretrain_texts)]
    scores = {}
    random_body = write_model(root / "bert-random", args.hidden, args.layers, 48, seed=1, heads=args.heads)
    body = write_model(root / "bert-mlm", args.hidden, args.layers, 48, seed=1, heads=args.heads)
    started = time.perf_counter()
    mlm_loss = pretrain_mlm(body, unlabelled, args.pretrain_epochs)
    described = f"BERT hidden {args.hidden}, {args.layers} layers"
    print(f"MLM pre-training of a {described} on {len(unlabelled)} unlabelled reviews, {args.pretrain_epochs} "
          f"epochs: final loss {mlm_loss:.3f} ({time.perf_counter() - started:.0f} s)")
    rng = np.random.default_rng(5)  # not the pre-training corpus's seed (99)
    held_out = [leaning_review(rng) for _ in range(600)]
    labelled = [review(rng) for _ in range(4000)]
    checks = {tag: pretraining_checks(folder, held_out, labelled)
              for tag, folder in (("pre-trained", body), ("random", random_body))}
    for tag, found in checks.items():
        print(f"before fine-tuning, {tag} weights: masked sentiment word on the right side "
              f"{found['masked_side_accuracy']:.3f}, linear probe {found['linear_probe_accuracy']:.3f}", flush=True)
    (root / "reviews.csv").unlink(missing_ok=True)
    fine = [f"train.epochs={args.finetune_epochs}", "train.batch_size=64", f"train.optimizer.lr={args.finetune_lr}",
            "train.head_lr=0.002", "eval.fail_under={}"]
    for label, model in (("pre-trained (MLM) BERT", body), ("same BERT, random weights", random_body)):
        tag = "mlm" if model == body else "random"
        recipe = prepared(root / tag, model, args.reviews, 48, sets=fine)
        fit(recipe, root / tag / "run")
        scores[label] = evaluate(root / tag / "run")["metrics"]["accuracy"]
    recipe = prepared(root / "scratch", body, args.reviews, 48, name="text-transformer",
                      sets=["eval.fail_under={}"])
    fit(recipe, root / "scratch" / "run")
    scores["text-transformer from scratch"] = evaluate(root / "scratch" / "run")["metrics"]["accuracy"]
    for label, accuracy in scores.items():
        print(f"test accuracy, {label}: {accuracy:.4f}")
    return {"part": "pretrained", "model": described, "reviews": args.reviews, "pretrain_texts": args.pretrain_texts,
            "mlm_loss": mlm_loss, "before_fine_tuning": checks, "test_accuracy": scores}


# ---------------------------------------------------------------- generate


def part_generate(args, root: Path) -> dict:
    """The exported decoder's text generation with its key/value cache against the same export run over the whole
    sequence each step (what it did before the cache), greedy, one process, alternating rounds."""
    import torch
    from hf_tiny import _silence, bpe_tokenizer, write_corpus
    from transformers import GPT2Config, GPT2LMHeadModel

    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.inference.session import create_session
    from bigmodel_cli.inference.text_generation import OnnxDecoder, Sampling, continue_text, tokenizer
    from bigmodel_cli.training.loop import fit

    _silence()
    torch.manual_seed(0)
    folder = root / "gpt2-gen"
    tok = bpe_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=args.hidden, n_layer=args.layers,
                               n_head=heads_for(args.hidden), n_positions=args.length,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    corpus = write_corpus(root / "corpus.txt", paragraphs=200)
    recipe = resolve("text-gpt-lm", {"data.prepared": str(root / "gen-data"), "data.source": str(corpus),
                                     "model.path": str(folder)},
                     [f"data.text.max_length={args.length}", "train.epochs=1", "train.batch_size=8",
                      "train.accumulate=1", "data.split.val=0.1", "data.split.test=0.1"])
    prepare(recipe)
    fit(recipe, root / "gen-run")
    export_run(root / "gen-run")
    session = create_session(root / "gen-run" / "model.onnx", device="cpu")
    spec = json.loads(session.get_modelmeta().custom_metadata_map["text_preprocessing"])
    tok = tokenizer(spec)
    prompt = "one two three four five six seven eight"
    sampling = Sampling(max_new_tokens=args.length, temperature=0.0)  # to the model's longest sequence

    def run(cached: bool) -> tuple[float, str, int]:
        decoder = OnnxDecoder(session, spec)
        if not cached:
            decoder.cache = []
        start = time.perf_counter()
        text = continue_text(decoder, tok, prompt, sampling)
        return time.perf_counter() - start, text, len(decoder.ids)

    timing: dict[str, list[float]] = {"cache": [], "recompute": []}
    texts = {}
    for _ in range(3):
        for name in timing:
            seconds, texts[name], tokens = run(name == "cache")
            timing[name].append(seconds)
    new = tokens - len(tok.encode(prompt).ids)
    cache, recompute = float(np.median(timing["cache"])), float(np.median(timing["recompute"]))
    out = {"part": "generate", "model": f"GPT-2 hidden {args.hidden}, {args.layers} layers, {args.length} positions",
           "new_tokens": new, "cache_tokens_per_s": new / cache, "recompute_tokens_per_s": new / recompute,
           "speedup": recompute / cache, "same_text": texts["cache"] == texts["recompute"]}
    print(f"greedy generation of {new} tokens ({out['model']}): with the key/value cache {cache * 1000:.0f} ms "
          f"({out['cache_tokens_per_s']:.0f} tokens/s), the whole sequence each step {recompute * 1000:.0f} ms: "
          f"{out['speedup']:.2f}x; same text: {out['same_text']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="trainer,lora,ort,generate,pretrained")
    parser.add_argument("--rows", type=int, default=1024, help="generated reviews for trainer/lora/ort")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=0, help="attention heads of the BERT (0: hidden / 32)")
    parser.add_argument("--repeats", type=int, default=2, help="trainer: rounds of ours then the Trainer")
    parser.add_argument("--lora-hidden", type=int, default=256, help="lora: hidden size of its BERT")
    parser.add_argument("--reviews", type=int, default=4000, help="labelled reviews for `pretrained`")
    parser.add_argument("--pretrain-texts", type=int, default=20000)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--ort-epochs", type=int, default=3, help="ort: epochs of the model it exports")
    parser.add_argument("--ort-rounds", type=int, default=5, help="ort: interleaved timing rounds (median)")
    parser.add_argument("--corpus", choices=("leaning", "recipe"), default="leaning",
                        help="pretrained: unlabelled reviews that lean one way, or the recipe's own generator")
    parser.add_argument("--child", choices=("full", "lora"))
    parser.add_argument("--root")
    args = parser.parse_args()
    if args.child:
        _child_memory(args.child, args.root, 20, args.batch)
        return
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        root = Path(tmp)
        for part in args.parts.split(","):
            where = root / ("pretrained" if part == "pretrained" else "shared")
            where.mkdir(exist_ok=True)
            result = globals()[f"part_{part}"](args, where)
            print(json.dumps(result))


if __name__ == "__main__":
    main()
