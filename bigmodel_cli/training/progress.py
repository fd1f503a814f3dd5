"""What a person sees while training: a rich progress bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

import contextlib
from typing import Any

from bigmodel_cli import console
from bigmodel_cli.console import fmt


class PlainLog:
    """One line per epoch (CI, pipes); `--json` silences it."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def start_epoch(self, epoch: int, batch: int) -> None:
        pass

    def advance(self, loss: float, lr: float, samples_per_s: float) -> None:
        pass

    def end_epoch(self, row: dict[str, Any], improved: bool) -> None:
        metrics = " ".join(f"{k}={fmt(v)}" for k, v in row.items() if k.startswith(("train_", "val_")))
        sps = row.get("samples_per_s") or 0.0
        lrs = " ".join(f"{k}={v:.3g}" for k, v in row.items() if k == "lr" or k.startswith("lr_"))
        console.info(f"epoch {row['epoch']}/{self.epochs} {metrics} {lrs} "
                     f"{sps:.0f} samples/s {row['time_s']:.1f}s{' *' if improved else ''}")


class RichBar(PlainLog):
    """A progress bar with loss, learning rate, samples/s and ETA, when stderr is a terminal."""

    def __init__(self, epochs: int, batches: int, progress):
        super().__init__(epochs)
        self.progress, self.batches = progress, batches
        self.task = progress.add_task("train", total=batches, loss=float("nan"), lr=0.0, sps=0.0)

    def start_epoch(self, epoch: int, batch: int) -> None:
        self.progress.reset(self.task, total=self.batches, completed=batch,
                            description=f"epoch {epoch + 1}/{self.epochs}")

    def advance(self, loss: float, lr: float, samples_per_s: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss, lr=lr, sps=samples_per_s)

    def end_epoch(self, row: dict[str, Any], improved: bool) -> None:
        metrics = " ".join(f"{k}={fmt(v)}" for k, v in row.items() if k.startswith(("train_", "val_")))
        self.progress.console.print(f"epoch {row['epoch']}/{self.epochs} {metrics}{' *' if improved else ''}")


@contextlib.contextmanager
def progress(epochs: int, batches: int):
    if not console.interactive() or console.is_quiet():
        yield PlainLog(epochs)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} {task.fields[sps]:.0f} samples/s"),
               TimeRemainingColumn())
    with Progress(*columns, console=console.console, transient=True) as bar:
        yield RichBar(epochs, batches, bar)


def plot_curves(history: list[dict[str, Any]], monitor: str, dest) -> None:
    """`curves.png`: train/val loss and the monitored metric per epoch."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bigmodel_cli import atomic

    epochs = [r["epoch"] for r in history]
    losses = [k for k in history[-1] if k.startswith("train_")] + (["val_loss"] if "val_loss" in history[-1] else [])
    panels = [("loss", losses)]
    if monitor not in losses:
        panels.append((monitor, [monitor]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", ms=3, label=key)
        ax.set(xlabel="epoch", title=title)
        ax.legend()
        ax.grid(alpha=0.3)
    with atomic.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
