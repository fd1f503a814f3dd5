"""What a study leaves in its folder: best.yaml (the best trial's resolved recipe), trials.csv, history.png and
importances.png, and the table of trials on stderr (or the JSON document with --json)."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

from bigmodel_cli import atomic, console
from bigmodel_cli.errors import named_line


def trial_rows(study, space) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            continue
        state = "INTERRUPTED" if t.state.name == "FAIL" and t.user_attrs.get("interrupted") else t.state.name
        value = t.value if t.value is not None else (t.intermediate_values[t.last_step]
                                                     if t.last_step is not None else None)
        rows.append({"trial": t.number, "state": state,
                     "value": value if value is None or math.isfinite(value) else None,
                     "epochs": t.user_attrs.get("epochs"), "duration_s": t.user_attrs.get("duration_s"),
                     "params": decode(space, t.params), "run_dir": t.user_attrs.get("run_dir"),
                     "resumes": t.user_attrs.get("resumes"), "error": t.user_attrs.get("error"),
                     "worker": t.user_attrs.get("worker")})
    return rows


def decode(space, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored values back to recipe values (list choices are stored as their YAML text)."""
    from bigmodel_cli.tuning.space import _label

    out = {}
    for p in space.params:
        if p.key not in params:
            continue
        value = params[p.key]
        if p.kind == "choice":
            labels = [_label(c) for c in p.choices]
            value = p.choices[labels.index(value)] if value in labels else value
        out[p.key] = value
    return out


def write(study, setup, space, objective: str, direction: str, n_trials: int, store_label: str, out: Path,
          elapsed: float, resolve_args: tuple[str, list[str]]) -> dict[str, Any]:
    rows = trial_rows(study, space)
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    files: dict[str, Any] = {"trials_csv": str(out / "trials.csv"), "plots": []}
    if complete:
        pick = max if direction == "maximize" else min
        best = pick(complete, key=lambda r: r["value"])
        files["best"] = str(_write_best(out, best, objective, direction, setup.study_name, resolve_args))
    _write_csv(out / "trials.csv", rows, space)
    files["plots"] = _plots(study, out, objective)
    document = {
        "study": setup.study_name, "storage": store_label, "objective": objective, "direction": direction,
        "trials_requested": n_trials,
        "counts": {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "INTERRUPTED",
                                                                    "RUNNING")},
        "best": best, "trials": rows, "files": files, "time_s": elapsed,
        "training_time_s": sum(r["duration_s"] or 0.0 for r in rows),
    }
    _print_table(rows, objective, best)
    return document


def _write_best(out: Path, best: dict[str, Any], objective: str, direction: str, study: str,
                resolve_args: tuple[str, list[str]]) -> Path:
    """The best trial's recipe.yaml as it trained (or, when its run is on another machine, resolved again)."""
    text = None
    if best["run_dir"] and (Path(best["run_dir"]) / "recipe.yaml").is_file():
        text = (Path(best["run_dir"]) / "recipe.yaml").read_text()
    if text is None:
        from bigmodel_cli.config.recipe import dump, resolve
        from bigmodel_cli.tuning.space import set_arg

        ref, sets = resolve_args
        text = dump(resolve(ref, None, [*sets, *(set_arg(k, v) for k, v in best["params"].items())]))
    header = (f"# best trial of study '{study}': trial {best['trial']}, {objective} = {best['value']:.6g} "
              f"({direction})\n# run: {best['run_dir']}\n#   bigmodel train -r {out / 'best.yaml'}\n")
    return atomic.write_text(out / "best.yaml", header + text)


def _write_csv(path: Path, rows: list[dict[str, Any]], space) -> None:
    buf = io.StringIO()
    keys = [p.key for p in space.params]
    writer = csv.writer(buf)
    writer.writerow(["trial", "state", "value", "epochs", "duration_s", *keys, "run_dir", "resumes", "error"])
    for r in rows:
        writer.writerow([r["trial"], r["state"], "" if r["value"] is None else r["value"], r["epochs"] or "",
                         r["duration_s"] or "", *(r["params"].get(k, "") for k in keys), r["run_dir"] or "",
                         "" if r["resumes"] is None else r["resumes"], r["error"] or ""])
    atomic.write_text(path, buf.getvalue())


def _plots(study, out: Path, objective: str) -> list[str]:
    """Optimisation history and parameter importances (Optuna's matplotlib plots), when there is enough to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    written = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    plots = [("history.png", optuna.visualization.matplotlib.plot_optimization_history, 1),
             ("importances.png", optuna.visualization.matplotlib.plot_param_importances, 2)]
    for name, plot, needed in plots:
        if len(complete) < needed:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study, target_name=objective)
                figure = ax.figure if hasattr(ax, "figure") else ax[0].figure
                figure.set_size_inches(8, 5)
                figure.tight_layout()
                with atomic.atomic_path(out / name) as tmp:
                    figure.savefig(tmp, format="png", dpi=100)
                plt.close(figure)
            written.append(str(out / name))
        except Exception as e:  # e.g. importances when no parameter varied
            console.warn(f"{name}: not drawn ({named_line(e, 160)})")
    return written


def _print_table(rows: list[dict[str, Any]], objective: str, best: dict[str, Any] | None) -> None:
    if console.is_quiet():
        return
    from rich.table import Table

    keys = sorted({k for r in rows for k in r["params"]})
    table = Table(title=f"trials ({objective})", title_justify="left")
    for col in ["trial", "state", objective, "epochs", "s", *(k.rsplit(".", 1)[-1] for k in keys)]:
        table.add_column(col, overflow="fold")
    for r in rows:
        mark = " *" if best and r["trial"] == best["trial"] else ""
        table.add_row(str(r["trial"]) + mark, r["state"].lower(), console.fmt(r["value"]), str(r["epochs"] or ""),
                      f"{r['duration_s']:.1f}" if r["duration_s"] else "",
                      *(_cell(r["params"].get(k)) for k in keys))
    console.console.print(table)
    if best:
        console.info(f"best: trial {best['trial']}, {objective} {best['value']:.4f}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
