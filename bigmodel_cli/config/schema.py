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
    tokenizer: Literal["word", "bpe", "wordpiece"] = "word"  # fitted on train texts with `tokenizers`
    vocab_size: int = Field(default=20000, ge=3)  # including [PAD]=0 and [UNK]=1
    lowercase: bool = True
    max_length: int = Field(default=128, ge=1)  # ids per text: longer truncated, shorter padded with 0


class ColorJitterSection(Section):
    brightness: float = Field(default=0.0, ge=0.0)
    contrast: float = Field(default=0.0, ge=0.0)
    saturation: float = Field(default=0.0, ge=0.0)
    hue: float = Field(default=0.0, ge=0.0, le=0.5)


class AugmentSection(Section):
    """Random image augmentation applied on the fly by train (torchvision.transforms.v2), never stored."""

    crop_padding: int | None = Field(default=None, ge=0)  # random crop back to size after padding by N pixels
    horizontal_flip: float = Field(default=0.0, ge=0.0, le=1.0)  # probability
    vertical_flip: float = Field(default=0.0, ge=0.0, le=1.0)  # probability
    rotation: float = Field(default=0.0, ge=0.0, le=180.0)  # degrees, uniform in [-rotation, rotation]
    color_jitter: ColorJitterSection | None = None
    grayscale: float = Field(default=0.0, ge=0.0, le=1.0)  # probability of turning an RGB image grey


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


class ModelSection(Section):
    name: str | None = None  # a registered model (bigmodel info lists them)
    component: str | None = None  # or your own factory, "package.module:function"
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments for the model factory
    weights: str | None = None  # local pretrained weights (.pt/.pth state dict or .safetensors); new heads skipped
    freeze: list[str] = Field(default_factory=list)  # parameter-name prefixes to freeze, or "backbone" (all but head)

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
    name: Literal["sgd", "adam", "adamw", "adagrad", "rmsprop"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)  # L2 / decoupled decay on weights
    decay_norm_and_bias: bool = False  # also decay biases and normalisation weights
    momentum: float = Field(default=0.9, ge=0.0)  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = Field(default=1e-8, gt=0.0)


class SchedulerSection(Section):
    name: Literal["constant", "step", "exponential", "linear", "cosine", "onecycle", "plateau"] = "constant"
    warmup_epochs: float = Field(default=0.0, ge=0.0)  # linear warm-up from lr * warmup_start_factor, in epochs
    warmup_steps: int | None = Field(default=None, ge=0)  # or in optimiser steps (wins over warmup_epochs)
    warmup_start_factor: float = Field(default=0.01, gt=0.0, le=1.0)
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
    min_delta: float = Field(default=0.0, ge=0.0)


class TrainSection(Section):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)  # per process
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    loss: Literal["auto", "cross_entropy", "bce", "mse", "mae", "huber"] = "auto"  # auto: bce if binary, else
    #   cross_entropy; mse for regression. bce trains a one-logit head (logits reported as [0, z])
    huber_delta: float = Field(default=1.0, gt=0.0)
    class_weights: Literal["auto"] | list[float] | None = None  # auto: inverse class frequency in train
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)  # cross_entropy only
    precision: Literal["32", "bf16-mixed", "16-mixed", "bf16-true"] = "32"  # 16-mixed needs a GPU
    accumulate: int = Field(default=1, ge=1)  # gradient accumulation steps (effective batch = batch_size x this)
    clip_grad_norm: float | None = Field(default=None, gt=0.0)
    l1: float = Field(default=0.0, ge=0.0)  # L1 penalty on weights, added to the loss
    compile: bool = False  # torch.compile the model (falls back with a warning)
    deterministic: bool = False  # torch.use_deterministic_algorithms
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (needs the tensorboard package)
    devices: str = "auto"  # auto | cpu | cuda | N (N processes: one per GPU, or CPU processes with gloo)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"  # with N processes; auto: ddp
    activation_checkpointing: bool = False  # fsdp: recompute activations of each sharded block in backward
    checkpoint_every_steps: int | None = Field(default=None, ge=1)  # also save last.pt every N optimiser steps
    loader_workers: int = Field(default=0, ge=0)  # 0: gather batches in a background thread; N: N worker processes
    sync_batchnorm: bool = False  # ddp on GPUs: BatchNorm statistics over all processes (N x batch == 1 x N*batch)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)

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


class EvalSection(Section):
    split: Literal["test", "val", "train"] = "test"
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


class VerifySection(Section):
    atol: float = Field(default=1e-4, ge=0.0)  # max |onnx - torch| allowed on probabilities
    rtol: float = Field(default=1e-3, ge=0.0)
    samples: int = Field(default=512, ge=1)  # validation rows compared
    min_agreement: float = Field(default=0.999, ge=0.0, le=1.0)  # fraction of equal predicted classes
    fp16_atol: float = Field(default=1e-2, ge=0.0)  # --quantize fp16: looser tolerance on probabilities
    fp16_rtol: float = Field(default=5e-2, ge=0.0)
    fp16_min_agreement: float = Field(default=0.99, ge=0.0, le=1.0)


class ExportSection(Section):
    opset: int = Field(default=18, ge=13)
    quantize: Literal["none", "fp16", "int8"] = "none"  # int8: static QDQ per-channel (dynamic for mlp/text)
    format: Literal["onnx", "torchscript"] = "onnx"  # torchscript: a traced .pt for libtorch
    max_metric_drop: float = Field(default=1.0, ge=0.0)  # int8: largest allowed drop of the main metric, points
    calibration_batches: int = Field(default=16, ge=1)  # int8: train batches (of 32 rows) used to calibrate
    verify: VerifySection = Field(default_factory=VerifySection)


class ServeSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
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
    task: Literal["classification", "regression"] = "classification"
    seed: int = 0
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)
    serve: ServeSection = Field(default_factory=ServeSection)

    @property
    def prepared_dir(self) -> str:
        return self.data.prepared or f"data/{self.name}"
