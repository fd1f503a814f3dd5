"""What the served model answers, and whether live traffic drifts from the export's reference profile.

    bigmodel export runs/breast-cancer-mlp      # profile.json beside model.onnx (export/profile.py)
    bigmodel serve runs/breast-cancer-mlp       # /metrics: predicted classes, confidence, features, drift
    curl -s localhost:8000/metrics | grep drift_psi

Every batch the server runs is shown to `Monitor.observe` in the inference worker thread (off the event loop),
right after its session.run; it counts with numpy, 256 rows at a time, never per row in Python:

| metric | type | labels |
|---|---|---|
| bigmodel_predicted_class_total | counter | model, class: rows predicted as each class (classification) |
| bigmodel_confidence | histogram | model: top-1 probability of each row (classification) |
| bigmodel_prediction | histogram | model: the first prediction value of each row (regression; buckets: the profile's |
|  |  | deciles, else powers of ten) |
| bigmodel_input_feature_mean, _std | gauge | model, feature: over the rows of the drift window (tabular models) |
| bigmodel_drift_window_rows | gauge | model: rows in the drift window (the last 1,000 at most) |
| bigmodel_prediction_drift_psi | gauge | model, signal: predicted_class and confidence (classification), prediction |
|  |  | (regression): population stability index of the window against the profile |
| bigmodel_feature_drift_psi | gauge | model, feature: the same for each input feature of a tabular model |

The PSI gauges need a profile and at least 500 rows in the window (fewer give a PSI inflated by chance alone).
Each batch's answers (and a table's rows) are kept as they come and counted 256 rows at a time, and whenever
/metrics is scraped: numpy's cost per call is paid per 256 rows, not per batch. The PSIs are computed when
/metrics is scraped, and when rows are counted but at most once a second (30 features over the window take
about 0.3 ms); one that passes `serve.drift_threshold` (0.2 by default) logs a warning, once, until it falls
back below.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from bigmodel_cli.console import warn
from bigmodel_cli.export import profile as reference

DRIFT_WINDOW = 1000  # rows the PSI and feature summaries are computed over (the latest ones)
MIN_DRIFT_ROWS = 500  # rows the window needs before PSIs are reported and checked
CHECK_EVERY = 100  # rows between two drift checks
CHECK_INTERVAL_S = 1.0  # and seconds, at least
COUNT_ROWS = 256  # rows observed before they are counted (and at every /metrics scrape)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
PREDICTION_BUCKETS = tuple(sorted({s * 10.0 ** k for s in (-1, 1) for k in range(-2, 7)} | {0.0}))


class _Window:
    """The latest `size` rows of a [N, width] stream (order within the window does not matter here)."""

    def __init__(self, size: int, width: int, dtype: Any) -> None:
        self.data = np.zeros((size, width), dtype)
        self.next = 0
        self.filled = 0

    def add(self, rows: np.ndarray) -> None:
        size, n = len(self.data), len(rows)
        if n >= size:
            self.data[:] = rows[-size:]
            self.next, self.filled = 0, size
            return
        end = self.next + n
        if end <= size:
            self.data[self.next:end] = rows
        else:
            first = size - self.next
            self.data[self.next:] = rows[:first]
            self.data[: n - first] = rows[first:]
        self.next = end % size
        self.filled = min(size, self.filled + n)

    def values(self) -> np.ndarray:
        return self.data[: self.filled]


class _Histogram:
    """Prometheus histogram counts kept as numpy (bucket i: values <= bounds[i], past the last: +Inf)."""

    def __init__(self, bounds: tuple[float, ...] | list[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, np.int64)
        self.sum = 0.0

    def add(self, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)]
        self.counts += np.bincount(np.searchsorted(self.bounds, finite, side="left"), minlength=len(self.counts))
        self.sum += float(finite.sum())

    def family(self, name: str, doc: str, model: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=["model"])
        cumulative = np.cumsum(self.counts)
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        family.add_metric([model], buckets, self.sum)
        if self.bounds[0] < 0:  # prometheus_client then leaves out _count and _sum (OpenMetrics); text format has them
            family.samples += [Sample(f"{name}_count", {"model": model}, float(cumulative[-1])),
                               Sample(f"{name}_sum", {"model": model}, self.sum)]
        return family


class Monitor(Collector):
    """Prediction counts, histograms, feature summaries and drift of one served model (a Prometheus collector)."""

    def __init__(self, model_name: str, task: str, *, score_output: str | None, prediction_output: str | None,
                 class_names: list[str] | None, n_classes: int = 0, feature_input: str | None = None,
                 feature_names: list[str] | None = None, profile: dict[str, Any] | None = None,
                 drift_threshold: float = 0.2, window: int = DRIFT_WINDOW) -> None:
        self.model = model_name
        self.task = task
        self.score_output, self.prediction_output = score_output, prediction_output
        self.classes = list(class_names or [str(i) for i in range(n_classes)])
        self.feature_input = feature_input
        self.features = list(feature_names or [])
        self.threshold = drift_threshold
        self.profile = profile or {}
        self._lock = threading.Lock()
        self._since_check = 0
        self._checked = time.monotonic()
        self._drifting: set[str] = set()
        self._pending: list[tuple[np.ndarray | None, np.ndarray | None]] = []  # batches observed, not yet counted
        self._pending_rows = 0
        self.class_counts = np.zeros(len(self.classes), np.int64)
        self.confidence = _Histogram(CONFIDENCE_BUCKETS)
        prediction_cuts = self.profile.get("prediction", {}).get("cuts")
        self.prediction = _Histogram(prediction_cuts or PREDICTION_BUCKETS)
        self.class_window = _Window(window, 1, np.int32)
        self.confidence_window = _Window(window, 1, np.float32)
        self.prediction_window = _Window(window, 1, np.float32)
        self.feature_window = _Window(window, len(self.features), np.float32) if self.features else None
        if "features" in self.profile:
            cuts = self.profile["features"]["cuts"]
            self._feature_cuts = reference.padded_cuts(cuts)
            self._feature_shares = reference.padded_shares(self.profile["features"]["shares"],
                                                           self._feature_cuts.shape[1] + 1)

    # ------------------------------------------------------------------ in the worker thread, once per batch

    def observe(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Keep one batch's answers (and a table's input rows) to be counted with the next ones (`_count`): numpy's
        cost per call, a few microseconds, is paid once per COUNT_ROWS rows instead of once per batch."""
        if self.score_output is not None:
            answers = np.array(outputs[self.score_output])
        elif self.prediction_output is not None:
            answers = np.array(outputs[self.prediction_output])
        else:
            answers = None
        if answers is not None:
            answers = answers.reshape(len(answers), -1)
            if self.score_output is None:
                answers = answers[:, :1]
        x = np.array(inputs[self.feature_input]) if self.feature_window is not None else None
        with self._lock:
            self._pending.append((answers, x))
            self._pending_rows += len(answers) if answers is not None else len(x)
            if self._pending_rows >= COUNT_ROWS:
                self._count()

    def _count(self) -> None:
        """Count the batches kept since the last time (under the lock), and check drift after every CHECK_EVERY
        rows, at most once a CHECK_INTERVAL_S."""
        if not self._pending:
            return
        answers = [a for a, _ in self._pending if a is not None]
        features = [x for _, x in self._pending if x is not None]
        self._pending, rows = [], self._pending_rows
        self._pending_rows = 0
        if answers and self.score_output is not None:
            scores = np.concatenate(answers) if len(answers) > 1 else answers[0]
            top = scores.argmax(axis=1)
            if self.score_output == "probabilities":
                confidence = scores[np.arange(len(top)), top]
            else:  # logits: the top class's softmax probability
                shifted = np.exp(scores - scores[np.arange(len(top)), top][:, None])
                confidence = 1.0 / shifted.sum(axis=1)
            self.class_counts += np.bincount(top, minlength=len(self.class_counts))[: len(self.class_counts)]
            self.confidence.add(confidence)
            self.class_window.add(top[:, None])
            self.confidence_window.add(confidence[:, None])
        elif answers:
            first = (np.concatenate(answers) if len(answers) > 1 else answers[0])[:, 0]
            self.prediction.add(first)
            self.prediction_window.add(first[:, None])
        if features:
            self.feature_window.add(np.concatenate(features) if len(features) > 1 else features[0])
        self._since_check += rows
        if self._since_check >= CHECK_EVERY and time.monotonic() - self._checked >= CHECK_INTERVAL_S:
            self._since_check = 0
            self._checked = time.monotonic()
            self._check_drift()

    def _check_drift(self, psis: dict[str, float] | None = None) -> None:
        """Warn once for each PSI that passes the threshold (again only after it fell back below)."""
        for signal, value in (self._psis() if psis is None else psis).items():
            if value > self.threshold and signal not in self._drifting:
                self._drifting.add(signal)
                warn(f"drift: {signal} PSI {value:.3f} is over serve.drift_threshold {self.threshold:g} (the last "
                     f"{self._window_rows()} rows against the reference profile of {self.profile.get('rows')} "
                     f"{self.profile.get('split', 'val')} rows)")
            elif value <= self.threshold:
                self._drifting.discard(signal)

    # ------------------------------------------------------------------ drift

    def _window_rows(self) -> int:
        windows = [self.class_window, self.prediction_window] + ([self.feature_window] if self.feature_window else [])
        return max(w.filled for w in windows)

    def _psis(self) -> dict[str, float]:
        """'predicted_class', 'confidence', 'prediction', 'feature NAME' -> PSI against the profile, for the
        signals the profile has and whose window holds MIN_DRIFT_ROWS rows."""
        out: dict[str, float] = {}
        profile = self.profile
        if self.class_window.filled >= MIN_DRIFT_ROWS:
            if "predicted_class" in profile:
                counts = np.bincount(self.class_window.values()[:, 0], minlength=len(self.classes))
                out["predicted_class"] = float(reference.psi(profile["predicted_class"]["shares"],
                                                             reference.shares(counts)))
            if "confidence" in profile:
                counts = reference.bin_counts(self.confidence_window.values()[:, 0], profile["confidence"]["cuts"])
                out["confidence"] = float(reference.psi(profile["confidence"]["shares"], reference.shares(counts)))
        if self.prediction_window.filled >= MIN_DRIFT_ROWS and "prediction" in profile:
            counts = reference.bin_counts(self.prediction_window.values()[:, 0], profile["prediction"]["cuts"])
            out["prediction"] = float(reference.psi(profile["prediction"]["shares"], reference.shares(counts)))
        window = self.feature_window
        if window is not None and window.filled >= MIN_DRIFT_ROWS and "features" in profile:
            counts = reference.bin_counts(window.values(), self._feature_cuts)
            values = reference.psi(self._feature_shares, reference.shares(counts))
            out.update({f"feature {name}": float(v) for name, v in zip(self.features, values, strict=True)})
        return out

    # ------------------------------------------------------------------ /metrics

    def collect(self) -> Iterator[Any]:
        with self._lock:
            self._count()
            model = self.model
            if self.score_output is not None:
                family = CounterMetricFamily("bigmodel_predicted_class", "Rows predicted as each class.",
                                             labels=["model", "class"])
                for name, count in zip(self.classes, self.class_counts, strict=True):
                    family.add_metric([model, name], float(count))
                yield family
                yield self.confidence.family("bigmodel_confidence", "Top-1 probability of each row.", model)
            elif self.prediction_output is not None:
                yield self.prediction.family("bigmodel_prediction", "First prediction value of each row.", model)
            window = self.feature_window
            if window is not None and window.filled:
                values = window.values().astype(np.float64)
                for stat, numbers in (("mean", values.mean(axis=0)), ("std", values.std(axis=0))):
                    family = GaugeMetricFamily(f"bigmodel_input_feature_{stat}", f"Input feature {stat} over the "
                                               "drift window.", labels=["model", "feature"])
                    for name, value in zip(self.features, numbers, strict=True):
                        family.add_metric([model, name], float(value))
                    yield family
            yield _gauge("bigmodel_drift_window_rows", "Rows in the drift window.", model, self._window_rows())
            psis = self._psis()
            self._check_drift(psis)
            predictions = GaugeMetricFamily("bigmodel_prediction_drift_psi", "PSI of the model's answers in the "
                                            "drift window against the reference profile.", labels=["model", "signal"])
            features = GaugeMetricFamily("bigmodel_feature_drift_psi", "PSI of each input feature in the drift "
                                         "window against the reference profile.", labels=["model", "feature"])
            for signal, value in psis.items():
                if signal.startswith("feature "):
                    features.add_metric([model, signal[len("feature "):]], value)
                else:
                    predictions.add_metric([model, signal], value)
            yield predictions
            yield features

    def describe(self) -> list[Any]:
        return []


def _gauge(name: str, doc: str, model: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["model"])
    family.add_metric([model], float(value))
    return family


def _le(bound: float) -> str:
    return repr(float(bound))


def for_model(model: Any, profile: dict[str, Any] | None, drift_threshold: float = 0.2,
              window: int = DRIFT_WINDOW) -> Monitor | None:
    """The monitor of a `LoadedModel` (None for tasks other than classification and regression), with the parts
    of `profile` that describe this model (a part that does not is left out, with a warning)."""
    outputs = [s.name for s in model.outputs]
    task = model.task
    if task == "classification":
        score = next((n for n in ("probabilities", "logits") if n in outputs), None)
        if score is None:
            return None
        spec = next(s for s in model.outputs if s.name == score)
        n_classes = len(model.class_names or []) or (spec.shape[-1] if spec.shape and spec.shape[-1] > 0 else 0)
        prediction = None
    elif task == "regression":
        score, n_classes = None, 0
        prediction = "prediction" if "prediction" in outputs else outputs[0]
    else:
        return None
    features, feature_input = _features(model, profile)
    profile = _usable(profile, model, task, n_classes, features)
    return Monitor(model.name, task, score_output=score, prediction_output=prediction, class_names=model.class_names,
                   n_classes=n_classes, feature_input=feature_input, feature_names=features, profile=profile,
                   drift_threshold=drift_threshold, window=window)


def _features(model: Any, profile: dict[str, Any] | None) -> tuple[list[str] | None, str | None]:
    """The names of a tabular model's input features [N, F] (the profile's, else f0, f1, ...) and that input."""
    if model.meta.input_kind != "tabular" or len(model.inputs) != 1:
        return None, None
    spec = model.inputs[0]
    if len(spec.shape) != 2 or spec.shape[1] < 1 or spec.datatype not in ("FP32", "FP64", "FP16"):
        return None, None
    width = spec.shape[1]
    names = (profile or {}).get("features", {}).get("names")
    if not (isinstance(names, list) and len(names) == width):
        names = [f"f{i}" for i in range(width)]
    return [str(n) for n in names], spec.name


def _usable(profile: dict[str, Any] | None, model: Any, task: str, n_classes: int,
            features: list[str] | None) -> dict[str, Any] | None:
    """The profile without the parts that do not fit the model (with a warning naming what does not)."""
    if not profile:
        return None
    where = f"{model.path}: reference profile"
    if profile.get("task") != task:
        warn(f"{where} is of task {profile.get('task')!r}, the model of {task!r}: drift not monitored")
        return None
    if model.path is not None and profile.get("model_sha256") not in (None, reference.file_sha256(model.path)):
        warn(f"{where} was computed for another model file (its SHA-256 differs): drift not monitored; export "
             f"the model again to write a matching profile")
        return None
    usable = dict(profile)
    if "predicted_class" in usable and len(usable["predicted_class"].get("shares", [])) != n_classes:
        warn(f"{where} has {len(usable['predicted_class'].get('shares', []))} classes, the model {n_classes}: "
             f"predicted-class drift not monitored")
        usable.pop("predicted_class")
    if "features" in usable and (features is None or len(usable["features"].get("names", [])) != len(features)):
        warn(f"{where}: its features do not match the model's input: feature drift not monitored")
        usable.pop("features")
    return usable
