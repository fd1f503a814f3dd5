"""`bigmodel info`: versions, devices, CUDA, onnxruntime providers and registered models.

    bigmodel info
    bigmodel info --json | jq .torch.cuda_available
"""

from __future__ import annotations

from bigmodel_cli.cli.common import JSON, finish, start


def info(as_json: bool = JSON) -> None:
    """Show what this installation can use."""
    from bigmodel_cli.environment import describe

    start(as_json)
    report = describe()
    finish(report, as_json)
    if not as_json:
        from bigmodel_cli.console import console

        console.print(f"bigmodel {report['bigmodel_version']}  python {report['python']}  {report['platform']}")
        t = report["torch"]
        console.print(f"torch {t['version']}  cuda available: {t['cuda_available']}  devices: "
                      f"{', '.join(d['name'] for d in t['devices']) or 'none'}")
        d = report["distributed"]
        console.print(f"torch.distributed: gloo {'yes' if d['gloo'] else 'no'}, nccl {'yes' if d['nccl'] else 'no'}; "
                      f"--devices N uses {d['backend']} on {d['visible_gpus'] or 'CPU'} "
                      f"{'GPU(s)' if d['visible_gpus'] else 'processes'}")
        o = report["onnxruntime"]
        console.print(f"onnxruntime {o['version']}  providers: {', '.join(o['providers'])} "
                      f"(used: {', '.join(o['usable_providers'])})")
        console.print("libraries: " + ", ".join(f"{k} {v}" for k, v in report["libraries"].items()))
        console.print("extras: " + "; ".join(
            f"{extra} ({', '.join(f'{k} {v}' for k, v in libs.items())})" if all(libs.values())
            else f"{extra} (not installed: pip install 'bigmodel-cli[{extra}]')"
            for extra, libs in report["extras"].items()), markup=False)  # plain text: [hf] is no style
        console.print("models: " + ", ".join(f"{k} ({'/'.join(v['kinds'])})" for k, v in report["models"].items()))
