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

    @model_validator(mode="after")
    def _fractions(self) -> SplitSection:
        if self.val + self.test >= 1.0:
            raise ValueError("val + test must leave rows for training (sum < 1)")
        return self


class DataSection(Section):
    source: str | None = None  # sklearn:NAME, torchvision:mnist:ROOT, a .csv/.parquet/.jsonl file, an image folder
    target: str | None = None  # label column of a table
    text_column: str = "text"  # text column of a text table
    prepared: str | None = None  # where prepared arrays live (default data/<name>)
    features: list[str] | None = None  # table columns to use (default: all but target and drop)
    drop: list[str] = Field(default_factory=list)  # table columns to ignore (ids)
    scaling: Literal["standard", "minmax", "none"] = "standard"  # per-feature normalisation, fitted on train
    split: SplitSection = Field(default_factory=SplitSection)
    image: ImageSection = Field(default_factory=ImageSection)


class ModelSection(Section):
    name: str | None = None  # a registered model (bigmodel info lists them)
    component: str | None = None  # or your own factory, "package.module:function"
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments for the model factory
    weights: str | None = None  # local pretrained weights (.pt state dict or .safetensors)

    @model_validator(mode="after")
    def _one_of(self) -> ModelSection:
        if self.name and self.component:
            raise ValueError("set either model.name or model.component, not both")
        return self


class OptimizerSection(Section):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0)  # sgd only


class SchedulerSection(Section):
    name: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: float = Field(default=0.0, ge=0.0)  # linear warm-up from lr/100, in epochs
    step_size: int = Field(default=10, ge=1)  # step: epochs between decays
    gamma: float = Field(default=0.1, gt=0.0)  # step: decay factor


class EarlyStoppingSection(Section):
    monitor: str = "val_loss"  # any logged metric: val_loss, val_accuracy, val_f1, val_r2...
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for losses/errors, max otherwise
    patience: int | None = Field(default=None, ge=1)  # epochs without improvement before stopping; None: never
    min_delta: float = Field(default=0.0, ge=0.0)


class TrainSection(Section):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)  # per process
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    accumulate: int = Field(default=1, ge=1)  # gradient accumulation steps
    clip_grad_norm: float | None = Field(default=None, gt=0.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    devices: str = "auto"  # auto | cpu | cuda
    checkpoint_every_steps: int | None = Field(default=None, ge=1)  # also save last.pt every N optimiser steps
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> Any:
        v = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        if isinstance(v, str) and v not in ("auto", "cpu", "cuda", "1"):
            if v.isdigit():
                raise ValueError(f"{v} devices: multi-process training is not available in this version; use 1")
            raise ValueError("must be auto, cpu, cuda or 1")
        return v


class EvalSection(Section):
    split: Literal["test", "val", "train"] = "test"
    checkpoint: str = "best"  # best | last | a path
    batch_size: int = Field(default=512, ge=1)
    fail_under: dict[str, float] = Field(default_factory=dict)  # quality gates, e.g. {accuracy: 0.9}


class VerifySection(Section):
    atol: float = Field(default=1e-4, ge=0.0)  # max |onnx - torch| allowed on probabilities
    rtol: float = Field(default=1e-3, ge=0.0)
    samples: int = Field(default=512, ge=1)  # validation rows compared
    min_agreement: float = Field(default=0.999, ge=0.0, le=1.0)  # fraction of equal predicted classes


class ExportSection(Section):
    opset: int = Field(default=18, ge=13)
    quantize: Literal["none"] = "none"
    verify: VerifySection = Field(default_factory=VerifySection)


class ServeSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_batch_size: int = Field(default=32, ge=1)  # rows per inference request at most
    max_queue_delay_ms: float = Field(default=2.0, ge=0.0)


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
