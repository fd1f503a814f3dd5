"""`bigmodel tune`: an Optuna study whose trials are `bigmodel train` subprocesses (bigmodel_cli.tuning.trial).

    tune("digits-cnn", "space.yaml", trials=30, prune="median")          # -> runs/digits-cnn-tune/
    tune("digits-cnn", "space.yaml", trials=30, parallel=2)              # two trials at a time
    tune(..., storage="postgresql://user:pw@db/optuna", study_name="digits")   # on each of several machines

`trials` is the study's total: trials that ended (complete, pruned or failed) across every worker sharing the
study, so running the same command again resumes a stopped study and finishes the rest. Interrupted trials are
queued again and resume their checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from bigmodel_cli import console
from bigmodel_cli.errors import BigmodelError, Interrupted, UsageError, first_line
from bigmodel_cli.tuning import report
from bigmodel_cli.tuning import trial as trials_mod
from bigmodel_cli.tuning.space import load_space
from bigmodel_cli.tuning.storage import journal_path, open_storage

PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}


def objective_of(recipe, objective: str | None, direction: str | None) -> tuple[str, str]:
    """The metric to optimise (default: the recipe's early-stopping monitor) and its direction."""
    from bigmodel_cli.evaluation.metrics import lower_is_better

    monitor = recipe.train.early_stopping
    objective = objective or monitor.monitor
    if direction is not None:
        if direction.lower() not in DIRECTIONS:
            raise UsageError(f"--direction {direction}: choose max or min")
        return objective, DIRECTIONS[direction.lower()]
    if objective == monitor.monitor and monitor.mode != "auto":
        return objective, DIRECTIONS[monitor.mode]
    return objective, "minimize" if lower_is_better(objective) else "maximize"


def make_pruner(name: str, epochs: int):
    import optuna

    if name == "median":  # after 4 finished trials, stop a trial whose epoch is worse than their median there
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"--prune {name}: choose one of {', '.join(PRUNERS)}")


def tune(recipe_ref: str, space_path: str | Path, trials: int, storage: str | None = None,
         study_name: str | None = None, parallel: int = 1, prune: str = "median", objective: str | None = None,
         direction: str | None = None, sets: list[str] | None = None, out: str | Path | None = None,
         seed: int | None = None) -> dict[str, Any]:
    try:
        import optuna
    except ImportError:
        raise UsageError("bigmodel tune needs Optuna: pip install 'bigmodel-cli[ops]'") from None

    from bigmodel_cli.config.recipe import locate, resolve

    if trials < 1 or parallel < 1:
        raise UsageError("--trials and --parallel must be at least 1")
    recipe = resolve(recipe_ref, None, sets)
    space = load_space(space_path, recipe.model_dump(mode="json"))
    objective, direction = objective_of(recipe, objective, direction)
    pruner = make_pruner(prune, recipe.train.epochs)
    name = study_name or recipe.name
    out = Path(out) if out else Path("runs") / f"{name}-tune"
    store, store_label = open_storage(storage, out / "study.journal", parallel)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    try:
        study = optuna.create_study(study_name=name, storage=store, sampler=sampler, pruner=pruner,
                                    direction=direction, load_if_exists=True)
    except ValueError as e:  # an existing study optimised in the other direction
        raise UsageError(f"study '{name}' in {store_label}: {e}; use another --study") from None
    except Exception as e:
        raise UsageError(f"study '{name}' in {store_label}: cannot open it ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    _check_or_record(study, space, objective, direction, recipe.name, store_label)
    _recover_stale(study)

    ref = str(Path(recipe_ref).resolve()) if Path(recipe_ref).suffix in (".yaml", ".yml") else recipe_ref
    locate(ref)
    env = {**os.environ, "CI": os.environ.get("CI") or "1"}
    if parallel > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    out.mkdir(parents=True, exist_ok=True)
    setup = trials_mod.Setup(recipe_ref=ref, sets=list(sets or []), space=space, objective=objective,
                             direction=direction, out=out, study_name=name, env=env, stop=threading.Event())
    console.info(f"study '{name}' ({store_label}): {trials} trials, {direction} {objective}, prune {prune}, "
                 f"{parallel} at a time -> {out}")
    started = time.perf_counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    # not `<journal>.lock`: that name is Optuna's own lock of the journal file
    ask_lock = Path(f"{store_label}.ask-lock") if journal_path(storage or str(out / "study.journal")) else None

    def next_trial():
        with lock, _file_lock(ask_lock):  # local processes sharing a journal never ask past --trials together
            if setup.stop.is_set():
                return None
            if _counted(study) >= trials:
                return None
            t = study.ask()
            t.set_user_attr("worker", trials_mod.worker_id())
            return t

    def worker() -> None:
        try:
            while (t := next_trial()) is not None:
                _run_one(study, setup, t)
        except BaseException as e:  # handed to the main thread
            errors.append(e)
            setup.stop.set()

    interrupted = _StopOnSignal(setup.stop)
    with interrupted:
        threads = [threading.Thread(target=worker, name=f"tune-{i}", daemon=True) for i in range(parallel)]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            for th in threads:
                th.join(timeout=0.2)
    result = report.write(study, setup, space, objective, direction, trials, store_label, out,
                          time.perf_counter() - started, resolve_args=(ref, list(sets or [])))
    usage = [e for e in errors if isinstance(e, BigmodelError)]
    if usage:
        raise usage[0]
    if errors:
        raise errors[0]
    if interrupted.signal:
        raise Interrupted(f"{interrupted.signal}: study '{name}' stopped; running trials saved checkpoints and are "
                          "queued again: rerun the same command to resume")
    return result


@contextlib.contextmanager
def _file_lock(path: Path | None):
    try:
        import fcntl
    except ImportError:  # not POSIX: threads of this process are still serialised
        fcntl = None
    if path is None or fcntl is None:
        yield
        return

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _counted(study) -> int:
    """Trials that count towards --trials: ended (not interrupted) or running."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in ended or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")))


def _check_or_record(study, space, objective: str, direction: str, recipe_name: str, store_label: str) -> None:
    """A study resumed must search the same space for the same objective (unless no trial has ended yet)."""
    from optuna.trial import TrialState

    wanted = {"space": json.loads(json.dumps(space.describe())), "objective": objective, "recipe": recipe_name}
    attrs = study.user_attrs
    ended = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    if ended and attrs.get("space") is not None:
        for key, value in wanted.items():
            if attrs.get(key) != value:
                raise UsageError(f"study '{study.study_name}' in {store_label} was started with another {key} "
                                 f"({json.dumps(attrs.get(key))[:200]}); use another --study, or the same {key}")
    for key, value in wanted.items():
        if attrs.get(key) != value:
            study.set_user_attr(key, value)


def _recover_stale(study) -> None:
    """Trials left running by a tune process of this machine that no longer exists are queued again."""
    import socket

    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("worker", ""))
        h, _, pid = owner.rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            requeue(study, t)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue(study, frozen) -> None:
    """Queue the trial again with its parameters, to resume its run directory; end it as an interrupted FAIL."""
    import optuna
    from optuna.trial import TrialState

    attrs = {"resumes": frozen.number}
    if frozen.user_attrs.get("run_dir"):
        attrs["resume_dir"] = frozen.user_attrs["run_dir"]
    if frozen.params:
        study.enqueue_trial(frozen.params, user_attrs=attrs)
    optuna.trial.Trial(study, frozen._trial_id).set_user_attr("interrupted", True)
    study.tell(frozen.number, state=TrialState.FAIL)


def _run_one(study, setup: trials_mod.Setup, t) -> None:
    from optuna.trial import TrialState

    try:
        values = setup.space.suggest(t)
        run_dir, resume = trials_mod.prepare_dir(setup, t, values)
        t.set_user_attr("run_dir", str(run_dir))
        outcome = trials_mod.run(setup, t, run_dir, values, resume)
    except BaseException:
        with contextlib.suppress(Exception):
            study.tell(t, state=TrialState.FAIL)
        raise
    t.set_user_attr("epochs", outcome.epochs)
    t.set_user_attr("duration_s", round(outcome.extra.get("duration_s", 0.0), 3))
    label = f"trial {t.number}"
    if outcome.state == "COMPLETE":
        study.tell(t, outcome.value)
        console.info(f"{label}: {setup.objective} {outcome.value:.4f} after {outcome.epochs} epochs "
                     f"({outcome.extra['duration_s']:.1f} s) {_short(values)}")
    elif outcome.state == "PRUNED":
        study.tell(t, state=TrialState.PRUNED)
        console.info(f"{label}: pruned at epoch {outcome.epochs} ({setup.objective} {outcome.value:.4f}) "
                     f"{_short(values)}")
    elif outcome.state == "INTERRUPTED":
        requeue(study, _frozen(study, t.number))
        console.info(f"{label}: interrupted after {outcome.epochs} epochs; queued to resume {run_dir}")
    else:
        t.set_user_attr("error", outcome.error)
        study.tell(t, state=TrialState.FAIL)
        if outcome.missing_objective is not None:
            import difflib

            near = difflib.get_close_matches(setup.objective, outcome.missing_objective, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UsageError(f"--objective '{setup.objective}' is not a logged metric{hint} (trial {t.number} "
                             f"logged: {', '.join(outcome.missing_objective)})")
        if outcome.usage_error:
            raise UsageError(f"trial {t.number} ({run_dir}): {outcome.error}")
        console.warn(f"{label} failed: {outcome.error} (log: {run_dir / 'train.log'})")


def _frozen(study, number: int):
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise LookupError(number)


def _short(values: dict[str, Any]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v:.4g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                    for k, v in values.items())


class _StopOnSignal:
    """SIGINT/SIGTERM stop the study: running trials get SIGTERM once (they save and exit 130)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name
        self.stop.set()

    def __enter__(self) -> _StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
