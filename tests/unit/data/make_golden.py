"""Write tests/unit/data/golden/c423ab6.json with the in-memory prepare-data of commit c423ab6.

    mkdir /tmp/bigmodel-c423ab6 && git archive c423ab6 | tar -x -C /tmp/bigmodel-c423ab6
    ln -s ../recipes /tmp/bigmodel-c423ab6/bigmodel_cli/_recipes
    python -m tests.unit.data.make_golden /tmp/bigmodel-c423ab6

The old checkout's `bigmodel_cli` is put first on the path (it is the one measured); this
checkout's `tests` package supplies the cases.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).with_name("golden") / "c423ab6.json"


def main() -> None:
    old_checkout = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(old_checkout))
    import bigmodel_cli

    if not Path(bigmodel_cli.__file__).resolve().is_relative_to(old_checkout):
        sys.exit(f"bigmodel_cli comes from {bigmodel_cli.__file__}, not {old_checkout}")
    from tests.unit.data.golden_cases import CASES, run_case

    out = {}
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        for name in CASES:
            manifest, digests = run_case(name, Path(tmp) / name)
            out[name] = {"manifest": manifest, "arrays": digests}
            print(name, manifest["splits"], flush=True)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
