"""`make gpu-check`: the paths only a GPU reaches, in one script of under 5 minutes.

    make gpu-check                       # on a machine with an NVIDIA GPU
    python benchmarks/gpu_check.py --images 10000 --epochs 2 --out gpu-check.json

Model and size: cifar10-resnet18's model (ResNet-18, 3x3 stem, 11.2M parameters) on 32x32x3 images
in CIFAR-10's python-batch format, generated (`recipe_data.cifar10`), batch 256. It runs, each
through the real `bigmodel` command:
1. training at precision 32, bf16-mixed and 16-mixed (GradScaler), printing samples/s and the
   GPU's utilisation sampled while it trains (nvidia-smi);
2. the GPU tests of the suite (`pytest -m gpu`), which are skipped on machines without one;
3. `export --quantize fp16`, verified on onnxruntime's CUDA provider when it has one (else on
   the CPU provider, and it says so);
4. `bigmodel benchmark RUN --device cuda` (skipped, and said so, where onnxruntime has no CUDA provider:
   the plain `onnxruntime` wheel some GPU images ship instead of the project's `onnxruntime-gpu`);
5. benchmarks/bench_train.py on the GPU at bf16-mixed: `bigmodel train` against a hand-written loop
   and Lightning (cnn_small width 32 and resnet18), samples/s side by side.
A step that fails is reported and the others still run; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def bigmodel(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "CI": "1"}
    return subprocess.run([sys.executable, "-m", "bigmodel_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


class Utilisation:
    """GPU utilisation (%) sampled every 0.2 s by nvidia-smi while a block runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                if out:
                    self.samples.append(float(out[0]))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def mean(self) -> float | None:
        """Over the samples from the first busy one on (process and CUDA start-up excluded)."""
        first = next((i for i, v in enumerate(self.samples) if v > 0), len(self.samples))
        busy = self.samples[first:]
        return round(sum(busy) / len(busy), 1) if busy else None

    @property
    def peak(self) -> float | None:
        return max(self.samples) if self.samples else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="training images generated")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--bench-rows", type=int, default=65536, help="bench_train.py's --rows (resnet18: 1/8)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the same steps on the CPU (tiny sizes "
                        "advised) to check the script itself where there is no GPU; 16-mixed is skipped")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("gpu-check: no CUDA GPU visible to PyTorch; nothing to check", file=sys.stderr)
        return 1
    device = "cpu" if args.cpu_dry_run else "cuda"
    import onnxruntime as ort

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run)"
    results: dict = {"gpu": gpu, "torch": torch.__version__,
                     "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
                     "model": "resnet18 (cifar10-resnet18, 32x32x3, 10 classes)", "images": args.images,
                     "batch_size": args.batch_size, "steps": {}}
    print(json.dumps({k: v for k, v in results.items() if k != "steps"}), flush=True)
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        from recipe_data import cifar10

        cifar10(work / "raw", args.images // 5, 1000)
        recipe = str(REPO / "recipes/cifar10-resnet18.yaml")
        prep = bigmodel("prepare-data", "-r", recipe, "--source", f"torchvision:cifar10:{work / 'raw'}", cwd=work)
        if prep.returncode:
            print(prep.stderr[-2000:], file=sys.stderr)
            return 1
        for precision in ("32", "bf16-mixed", "16-mixed")[: 2 if args.cpu_dry_run else 3]:
            run_dir = f"runs/{precision}"
            started = time.perf_counter()
            with Utilisation() as util:
                done = bigmodel("train", "-r", recipe, "--run-dir", run_dir, "--devices", device, "--json",
                                "--set", f"train.precision={precision}", "--set", f"train.epochs={args.epochs}",
                                "--set", f"train.batch_size={args.batch_size}", "--set", "train.loader_workers=4",
                                "--set", "train.early_stopping.patience=null", cwd=work)
            step = {"exit": done.returncode, "wall_s": round(time.perf_counter() - started, 1),
                    "gpu_utilisation_pct": util.mean, "gpu_utilisation_peak_pct": util.peak}
            if done.returncode == 0:
                summary = json.loads(done.stdout)
                step.update(samples_per_s=summary["samples_per_s"],
                            last_epoch_samples_per_s=summary["last_metrics"]["samples_per_s"],
                            val_accuracy=summary["last_metrics"]["val_accuracy"])
            else:
                failed.append(f"train {precision}")
                step["error"] = done.stderr.strip().splitlines()[-1:]
            results["steps"][f"train_{precision}"] = step
            print(f"train {precision}: {json.dumps(step)}", flush=True)

        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                str(REPO / "tests/gpu")], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=300)
        results["steps"]["pytest_gpu"] = {"exit": tests.returncode, "tail": tests.stdout.strip().splitlines()[-3:]}
        print(f"pytest -m gpu: {tests.stdout.strip().splitlines()[-1:]}", flush=True)
        if tests.returncode:
            failed.append("pytest -m gpu")
            print(tests.stdout[-3000:], file=sys.stderr)

        run = "runs/bf16-mixed"
        exported = bigmodel("export", run, "--quantize", "fp16", "--json", cwd=work)
        step = {"exit": exported.returncode}
        if exported.returncode == 0:
            report = json.loads(exported.stdout)
            step.update(verification=report.get("verification"), file=report.get("model"))
        else:
            failed.append("export fp16")
            step["error"] = exported.stderr.strip().splitlines()[-1:]
        results["steps"]["export_fp16"] = step
        print(f"export fp16: {json.dumps(step)[:600]}", flush=True)

        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            step = {"skipped": f"onnxruntime {ort.__version__} here has no CUDA provider (providers: "
                               f"{', '.join(ort.get_available_providers())}); the project installs onnxruntime-gpu"}
        else:
            bench = bigmodel("benchmark", run, "--device", device, "--batch-sizes", "1,64,256", "--json", cwd=work)
            step = {"exit": bench.returncode}
            if bench.returncode == 0:
                step["report"] = json.loads(bench.stdout)
            else:
                failed.append("benchmark cuda")
                step["error"] = bench.stderr.strip().splitlines()[-1:]
        results["steps"]["benchmark_cuda"] = step
        print(f"benchmark cuda: {json.dumps(step)[:1500]}", flush=True)

    compare = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_train.py"), "--device", device,
                              "--precision", "bf16-mixed", "--rows", str(args.bench_rows), "--epochs", "3"],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}"
                                                                      f"{os.environ.get('PYTHONPATH', '')}"},
                             capture_output=True, text=True, timeout=600)
    results["steps"]["bench_train"] = {"exit": compare.returncode, "output": compare.stdout.strip().splitlines()}
    print(f"bench_train ({device}, bf16-mixed):\n{compare.stdout.strip()}", flush=True)
    if compare.returncode:
        failed.append("bench_train")
        print(compare.stderr[-3000:], file=sys.stderr)

    results["failed"] = failed
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(("gpu-check FAILED: " + ", ".join(failed)) if failed else "gpu-check passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
