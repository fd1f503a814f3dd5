"""The recipe's schema: every key, its type and its default. Unknown keys are errors.

Precedence when a recipe is resolved: these defaults < the recipe file < explicit CLI
flags < `--set key=value`. The shipped recipes in `recipes/` document each key in a
comment; this file is the truth for types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """A recipe section: unknown keys rejected, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImageSection(Section):
    size: int | None = Field(default=None, ge=1)  # resize images to size x size (None: keep the source's size)
    channels: int | None = Field(default=None)  # 1 (grey) or 3 (RGB); None: the source's

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int | None) -> int | None:
        if v not in (None, 1, 3):
            raise ValueError("must be 1 or 3")
        return v


class SplitSection(Section):
    val: float = Field(default=0.15, ge=0.0, lt=1.0)  # fraction of rows for validation
    test: float = Field(default=0.15, ge=0.0, lt=1.0)  # fraction of rows for test
    stratify: bool = True  # keep class proportions in every split (classification)
    column: str | None = None  # a table column holding train|val|test per row (predefined split)
    predefined: bool = True  # use the dataset's own train/test (torchvision); val is cut from its train

    @model_validator(mode="after")
    def _fractions(self) -> SplitSection:
        if self.val + self.test >= 1.0:
            raise ValueError("val + test must leave rows for training (sum < 1)")
        return self


class ImputeSection(Section):
    numeric: Literal["mean", "median", "most_frequent", "constant", "drop"] = "mean"  # for numeric columns
    categorical: Literal["most_frequent", "constant", "drop"] = "most_frequent"  # for string/bool columns
    columns: dict[str, Literal["mean", "median", "most_frequent", "constant", "drop"]] = Field(
        default_factory=dict)  # per-column strategy, e.g. {age: median}
    fill_value: dict[str, float | str] = Field(default_factory=dict)  # constant per column (default 0 / "missing")


class OutlierSection(Section):
    method: Literal["none", "zscore", "iqr"] = "none"  # remove training rows with an outlying numeric value
    threshold: float | None = Field(default=None, gt=0.0)  # |z| above this (3.0), or IQRs beyond Q1/Q3 (1.5)
    columns: list[str] | None = None  # numeric columns checked (default: all numeric features)


class CategoricalSection(Section):
    encoding: Literal["onehot", "ordinal"] = "onehot"  # for every string/bool column
    columns: dict[str, Literal["onehot", "ordinal"]] = Field(default_factory=dict)  # per-column override
    max_onehot: int = Field(default=100, ge=2)  # more categories than this in a one-hot column is an error


class BinningSection(Section):
    columns: dict[str, int] = Field(default_factory=dict)  # numeric column -> number of bins, e.g. {age: 5}
    strategy: Literal["quantile", "uniform"] = "quantile"  # bin edges from train quantiles or an even range


class TextSection(Section):
    tokenizer: Literal["word", "bpe", "wordpiece", "model"] = "word"  # fitted on train texts; model: model.path's own
    vocab_size: int = Field(default=20000, ge=3)  # including [PAD]=0 and [UNK]=1
    lowercase: bool = True  # lower-case texts before tokenising (and in serve)
    max_length: int = Field(default=128, ge=1)  # ids per text: longer truncated, shorter padded with 0


class ColorJitterSection(Section):
    brightness: float = Field(default=0.0, ge=0.0)  # brightness factor drawn from [1 - this, 1 + this]
    contrast: float = Field(default=0.0, ge=0.0)  # contrast factor drawn from [1 - this, 1 + this]
    saturation: float = Field(default=0.0, ge=0.0)  # saturation factor drawn from [1 - this, 1 + this]
    hue: float = Field(default=0.0, ge=0.0, le=0.5)  # hue shift drawn from [-this, this] (of a full turn)


class AugmentSection(Section):
    """Random image augmentation applied on the fly by train (torchvision.transforms.v2), never stored."""

    crop_padding: int | None = Field(default=None, ge=0)  # random crop back to size after padding by N pixels
    horizontal_flip: float = Field(default=0.0, ge=0.0, le=1.0)  # probability
    vertical_flip: float = Field(default=0.0, ge=0.0, le=1.0)  # probability
    rotation: float = Field(default=0.0, ge=0.0, le=180.0)  # degrees, uniform in [-rotation, rotation]
    color_jitter: ColorJitterSection | None = None  # random colour changes (torchvision ColorJitter); null: none
    grayscale: float = Field(default=0.0, ge=0.0, le=1.0)  # probability of turning an RGB image grey


class CorruptSection(Section):
    """Corruption of clean images for `task: restoration`, applied on the fly to [0, 1] pixels, never stored."""

    gaussian_noise: float = Field(default=0.0, ge=0.0)  # std of additive Gaussian noise on [0, 1] pixels (0.5)
    mask: float = Field(default=0.0, ge=0.0, lt=1.0)  # inpainting: area fraction of a random square hole set to 0
    clip: bool = True  # true: corrupted images clipped to [0, 1] at 8-bit levels, as photos are (export: UINT8 input);
    # false: additive white Gaussian noise as denoising benchmarks add it (DnCNN, KAIR): unclipped floats (export:
    # FP32 input, pixels on the 0..255 scale)


class DataSection(Section):
    source: str | None = None  # sklearn:NAME, torchvision:mnist:ROOT, a .csv/.parquet/.jsonl file, an image folder
    kind: Literal["auto", "tabular", "image", "text"] = "auto"  # auto: text when the table has data.text_column
    target: str | None = None  # label column of a table (default: "target", "label" or "class" if present)
    text_column: str = "text"  # text column of a text table
    prepared: str | None = None  # where prepared arrays live (default data/<name>)
    features: list[str] | None = None  # table columns to use (default: all but target and drop)
    drop: list[str] = Field(default_factory=list)  # table columns to ignore (ids)
    delimiter: str | None = None  # CSV field separator (default: sniffed from the first lines)
    encoding: str | None = None  # CSV/JSONL text encoding (default: UTF-8, or the byte-order mark's)
    on_bad_file: Literal["skip", "error"] = "skip"  # an unreadable image: skip and list it, or stop (exit 2)
    dedupe: bool = True  # drop exact duplicate rows (features and target)
    impute: ImputeSection = Field(default_factory=ImputeSection)
    outliers: OutlierSection = Field(default_factory=OutlierSection)
    categorical: CategoricalSection = Field(default_factory=CategoricalSection)
    binning: BinningSection = Field(default_factory=BinningSection)
    scaling: Literal["standard", "minmax", "none"] = "standard"  # per-feature normalisation, fitted on train
    split: SplitSection = Field(default_factory=SplitSection)
    image: ImageSection = Field(default_factory=ImageSection)
    text: TextSection = Field(default_factory=TextSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    corrupt: CorruptSection = Field(default_factory=CorruptSection)  # task: restoration only


class LoraSection(Section):
    """LoRA adapters (peft) on a pre-trained `hf` model: only the adapters and the task head are trained."""

    r: int = Field(default=8, ge=1)  # rank of each adapter
    alpha: float = Field(default=16.0, gt=0.0)  # scaling: the update is (alpha / r) * B @ A
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)  # dropout on the adapter's input
    target_modules: list[str] | None = None  # module names (query, value, c_attn, q_proj...); None: peft's default


class ModelSection(Section):
    name: str | None = None  # a registered model (bigmodel info lists them)
    component: str | None = None  # or your own factory, "package.module:function"
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments for the model factory
    weights: str | None = None  # local pretrained weights (.pt/.pth state dict or .safetensors); new heads skipped
    freeze: list[str] = Field(default_factory=list)  # parameter-name prefixes to freeze, or "backbone" (all but head)
    pruned: dict[str, dict[str, Any]] | None = None  # by `bigmodel prune`: per module, what differs from the builder's
    path: str | None = None  # model.name hf: a local Hugging Face model folder (config.json, weights, tokenizer)
    lora: LoraSection | None = None  # model.name hf: train LoRA adapters (and the head) instead of every weight

    @field_validator("freeze", mode="before")
    @classmethod
    def _freeze(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_of(self) -> ModelSection:
        if self.name and self.component:
            raise ValueError("set either model.name or model.component, not both")
        return self


class OptimizerSection(Section):
    name: Literal["sgd", "adam", "adamw", "adagrad", "rmsprop"] = "adamw"  # the torch.optim optimiser
    lr: float = Field(default=1e-3, gt=0.0)  # peak learning rate; warm-up and the schedule scale it
    weight_decay: float = Field(default=0.0, ge=0.0)  # L2 / decoupled decay on weights
    decay_norm_and_bias: bool = False  # also decay biases and normalisation weights
    momentum: float = Field(default=0.9, ge=0.0)  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = Field(default=1e-8, gt=0.0)  # added to denominators (adam, adamw, adagrad, rmsprop)
    fused: bool = False  # adam, adamw: torch's fused kernel (one op per step for all parameters; CPU and GPU)


class SchedulerSection(Section):
    name: Literal["constant", "step", "exponential", "linear", "cosine", "onecycle", "plateau"] = "constant"
    #   learning-rate schedule per optimiser step; plateau: lowered when the early-stopping monitor stalls
    warmup_epochs: float = Field(default=0.0, ge=0.0)  # linear warm-up from lr * warmup_start_factor, in epochs
    warmup_steps: int | None = Field(default=None, ge=0)  # or in optimiser steps (wins over warmup_epochs)
    warmup_start_factor: float = Field(default=0.01, gt=0.0, le=1.0)  # warm-up starts at lr x this
    step_size: int = Field(default=10, ge=1)  # step: epochs between decays
    gamma: float = Field(default=0.1, gt=0.0)  # step/exponential: decay factor (per step_size epochs / per epoch)
    min_lr_factor: float = Field(default=0.0, ge=0.0, le=1.0)  # cosine/linear: final lr = lr * min_lr_factor
    pct_start: float = Field(default=0.3, gt=0.0, lt=1.0)  # onecycle: fraction of steps rising (when no warm-up set)
    div_factor: float = Field(default=25.0, ge=1.0)  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = Field(default=1e4, ge=1.0)  # onecycle: final lr = initial lr / final_div_factor
    factor: float = Field(default=0.1, gt=0.0, lt=1.0)  # plateau: lr multiplier on a plateau
    patience: int = Field(default=5, ge=0)  # plateau: epochs without improvement of the monitor


class EarlyStoppingSection(Section):
    monitor: str = "val_loss"  # any logged metric: val_loss, val_accuracy, val_f1, val_r2, train_loss...
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for losses/errors, max otherwise
    patience: int | None = Field(default=None, ge=1)  # epochs without improvement before stopping; None: never
    min_delta: float = Field(default=0.0, ge=0.0)  # a smaller change of the monitor is no improvement


class GanSection(Section):
    """GAN training (`task: generation` with a GAN model), named as StudioGAN/MMagic users know them."""

    loss: Literal["bce", "hinge", "wgan-gp"] = "bce"  # bce: non-saturating; hinge; wgan-gp: Wasserstein + penalty
    d_steps: int = Field(default=1, ge=1)  # discriminator updates per generator update
    g_lr: float | None = Field(default=None, gt=0.0)  # generator learning rate (None: train.optimizer.lr)
    d_lr: float | None = Field(default=None, gt=0.0)  # discriminator learning rate (None: train.optimizer.lr); TTUR
    g_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of the generator
    d_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of the discriminator
    r1_gamma: float = Field(default=0.0, ge=0.0)  # R1 penalty gamma/2 * |grad D(real)|^2 (0: off)
    gp_lambda: float = Field(default=10.0, ge=0.0)  # wgan-gp: weight of the gradient penalty on interpolates
    ema_decay: float | None = Field(default=0.999, ge=0.0, lt=1.0)  # EMA generator (evaluated, exported); None: off
    #   the decay warms up as min(ema_decay, (1 + n) / (10 + n)) over the n EMA updates so far
    spectral_norm: bool = False  # spectral normalisation of every conv/linear layer of D
    augment: list[Literal["color", "translation", "cutout"]] = []  # DiffAugment policies on D's inputs, real and
    #   fake alike, differentiable (Zhao et al. 2020): translation for small data sets


class VaeSection(Section):
    """VAE training (`task: generation` with a VAE model): the negative ELBO, beta-weighted KL."""

    beta: float = Field(default=1.0, ge=0.0)  # weight of the KL term (beta-VAE); the reported nelbo uses 1
    reconstruction: Literal["bce", "mse"] = "bce"  # bce: Bernoulli on [0, 1] pixels; mse: Gaussian with std sigma
    sigma: float = Field(default=0.1, gt=0.0)  # mse: the decoder's fixed Gaussian std on [0, 1] pixels


class DistillSection(Section):
    """Knowledge distillation from a trained run: loss (1-w)·task + w·T²·KL(teacher_T || student_T)."""

    teacher: str | None = None  # the teacher's run directory (its best checkpoint); --teacher sets it
    weight: float = Field(default=0.5, ge=0.0, le=1.0)  # w: share of the distillation term in the loss
    temperature: float = Field(default=4.0, gt=0.0)  # T: both logits divided by T before the softmax
    cache_logits: bool = False  # the teacher's logits on train computed once (augmentation off), not every step

    @field_validator("teacher")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        from pathlib import Path

        return str(Path(v).expanduser().resolve()) if v else v  # the run means the same from any directory


class TrainSection(Section):
    epochs: int = Field(default=10, ge=1)  # passes over the train split (early stopping may end sooner)
    batch_size: int = Field(default=64, ge=1)  # per process
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    loss: Literal["auto", "cross_entropy", "bce", "mse", "mae", "huber"] = "auto"  # auto: bce if binary, else
    #   cross_entropy; mse for regression. bce trains a one-logit head (logits reported as [0, z])
    huber_delta: float = Field(default=1.0, gt=0.0)  # loss huber: error where it turns from squared to linear
    class_weights: Literal["auto"] | list[float] | None = None  # auto: inverse class frequency in train
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)  # cross_entropy only
    precision: Literal["32", "bf16-mixed", "16-mixed", "bf16-true"] = "32"  # 16-mixed needs a GPU
    accumulate: int = Field(default=1, ge=1)  # gradient accumulation steps (effective batch = batch_size x this)
    clip_grad_norm: float | None = Field(default=None, gt=0.0)  # clip the gradients' total L2 norm; null: never
    l1: float = Field(default=0.0, ge=0.0)  # L1 penalty on weights, added to the loss
    compile: bool = False  # torch.compile the model (falls back with a warning)
    deterministic: bool = False  # torch.use_deterministic_algorithms
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (same as report_to: [tensorboard])
    report_to: list[Literal["mlflow", "tensorboard"]] = Field(default_factory=list)  # trackers (--report-to)
    devices: str = "auto"  # auto | cpu | cuda | N (N processes: one per GPU, or CPU processes with gloo)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"  # with N processes; auto: ddp
    activation_checkpointing: bool = False  # fsdp: recompute activations of each sharded block in backward
    checkpoint_every_steps: int | None = Field(default=None, ge=1)  # also save last.pt every N optimiser steps
    loader_workers: int = Field(default=0, ge=0)  # 0: a thread (in line if gathering takes <100 us); N: N processes
    sync_batchnorm: bool = False  # ddp on GPUs: BatchNorm statistics over all processes (N x batch == 1 x N*batch)
    dist_timeout_s: float = Field(default=45.0, gt=0.0)  # N processes: a rank silent this long fails the run
    layer_decay: float | None = Field(default=None, gt=0.0, le=1.0)  # hf: lr x decay^(depth from the top) per layer
    head_lr: float | None = Field(default=None, gt=0.0)  # hf: learning rate of the new task head (others: optimizer.lr)
    gradient_checkpointing: bool = False  # hf: recompute each layer's activations in backward (less memory)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)  # null or false: off
    gan: GanSection = Field(default_factory=GanSection)  # task: generation, GAN models
    vae: VaeSection = Field(default_factory=VaeSection)  # task: generation, VAE models
    distill: DistillSection = Field(default_factory=DistillSection)  # a teacher run for knowledge distillation

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _early_stopping_off(cls, v: Any) -> Any:
        return {"patience": None} if v is None or v is False else v

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> Any:
        v = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        if isinstance(v, str) and v not in ("auto", "cpu", "cuda") and not (v.isdigit() and int(v) >= 1):
            raise ValueError("must be auto, cpu, cuda or a number of processes (1, 2, ...)")
        return v

    @property
    def processes(self) -> int:
        """Processes per node asked for (`devices: N`); 1 for auto/cpu/cuda."""
        return int(self.devices) if self.devices.isdigit() else 1


class GenerativeEvalSection(Section):
    """Evaluation of generators: FID/KID and friends on the features of a classification run of ours."""

    features: str | None = None  # a classification run dir (same image shape and classes): its penultimate layer
    #   gives FID/KID/precision/recall features and its predictions the class shares (None: eval --features RUN);
    #   or a local Inception-v3 weights file (torch-fidelity's pt_inception-2015-12-05-6726825d.pth; extra inception)
    inception_layer: Literal[64, 192, 768, 2048] = 2048  # the Inception layer FID/KID/precision/recall use
    samples: int = Field(default=1000, ge=2)  # generated images scored by eval
    val_samples: int = Field(default=256, ge=2)  # val_fid each epoch: val images and as many samples (fixed z)
    kid_subsets: int = Field(default=50, ge=1)  # KID: random subsets averaged
    nearest_k: int = Field(default=3, ge=1)  # precision/recall: k-th nearest neighbour radius of each manifold


class EvalSection(Section):
    split: Literal["test", "val", "train"] = "test"  # the prepared split eval reads (--split)
    checkpoint: str = "best"  # best | last | a path
    batch_size: int | None = Field(default=None, ge=1)  # rows per inference batch; None: ~8 MiB of input (64..8192)
    fail_under: dict[str, float] = Field(default_factory=dict)  # quality gates, e.g. {accuracy: 0.9}
    fail_over: dict[str, float] = Field(default_factory=dict)  # gates on losses/errors, e.g. {log_loss: 0.3}
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)  # binary: predict classes[1] when its probability >= this
    threshold_search: Literal["none", "f1", "youden"] = "none"  # binary: use the threshold maximising this on val
    top_k: list[int] = Field(default_factory=lambda: [2, 3, 5])  # top_<k>_accuracy for each k < number of classes
    ci: float | None = Field(default=None, gt=0.0, lt=1.0)  # bootstrap confidence level for headline metrics (0.95)
    ci_resamples: int = Field(default=1000, ge=10)  # bootstrap resamples (seeded by the recipe's seed)
    plots: bool = True  # write the PNG plots (ROC, PR, confusion, calibration; regression: fit, residuals)
    generative: GenerativeEvalSection = Field(default_factory=GenerativeEvalSection)  # generation/restoration


class VerifySection(Section):
    atol: float = Field(default=1e-4, ge=0.0)  # max |onnx - torch| allowed on probabilities
    rtol: float = Field(default=1e-3, ge=0.0)  # relative tolerance, on top of atol
    samples: int = Field(default=512, ge=1)  # validation rows compared
    min_agreement: float = Field(default=0.999, ge=0.0, le=1.0)  # fraction of equal predicted classes
    fp16_atol: float = Field(default=1e-2, ge=0.0)  # --quantize fp16: looser tolerance on probabilities
    fp16_rtol: float = Field(default=5e-2, ge=0.0)  # --quantize fp16: relative tolerance
    fp16_min_agreement: float = Field(default=0.99, ge=0.0, le=1.0)  # --quantize fp16: equal predicted classes


class ExportSection(Section):
    opset: int = Field(default=18, ge=13)  # ONNX opset version (--opset)
    quantize: Literal["none", "fp16", "int8"] = "none"  # int8: static QDQ per-channel (dynamic for mlp/text)
    format: Literal["onnx", "torchscript"] = "onnx"  # torchscript: a traced .pt for libtorch
    max_metric_drop: float = Field(default=1.0, ge=0.0)  # int8: largest allowed drop of the main metric, points
    calibration_batches: int = Field(default=16, ge=1)  # int8: train batches (of 32 rows) used to calibrate
    optimize: bool = False  # hf: onnxruntime's transformer optimiser (fused attention/LayerNorm), verified (--optimize)
    verify: VerifySection = Field(default_factory=VerifySection)


class ServeSection(Section):
    host: str = "127.0.0.1"  # address to listen on; 0.0.0.0: every interface (in a container)
    port: int = Field(default=8000, ge=0, le=65535)  # 0: a free port, printed when the server is ready
    max_batch_size: int = Field(default=32, ge=1)  # rows one session.run (and one request) carries at most
    max_queue_delay_ms: float = Field(default=2.0, ge=0.0)  # longest wait for more rows before a batch runs
    max_queue: int = Field(default=1024, ge=1)  # requests waiting for a batch at most; more get 503
    grace_seconds: float = Field(default=30.0, ge=0.0)  # SIGTERM: time to finish in-flight requests
    max_body_mb: float = Field(default=64.0, gt=0.0)  # larger request bodies get 413
    max_inflight_mb: float = Field(default=256.0, gt=0.0)  # decoded bytes of all requests in flight; more get 503
    request_timeout_s: float = Field(default=30.0, gt=0.0)  # a request head or body not in by then gets 408
    threads: int = Field(default=0, ge=0)  # onnxruntime intra-op threads (0: one per core)
    access_log: bool = True  # one JSON line per request on stderr
    drift_threshold: float = Field(default=0.2, gt=0.0)  # PSI vs the export's reference profile that logs a warning
    log_payloads: float = Field(default=0.0, ge=0.0, le=1.0)  # share of infer requests logged to JSONL (--payload-log)


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # names data/<name> and runs/<name>
    task: Literal["classification", "regression", "generation", "restoration",
                  "language-modeling"] = "classification"  # decides
    #   outputs, loss, metrics, export
    seed: int = 0  # seeds the split, weights, shuffling, augmentation and bootstrap
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)
    serve: ServeSection = Field(default_factory=ServeSection)

    @property
    def prepared_dir(self) -> str:
        return self.data.prepared or f"data/{self.name}"
