"""The admin's catalogue edit of tests/test_prefill.py (数电票, a strong word of 12366), shared
with tests/conftest.py: on a machine whose cache lacks it, the main test process learns its
pre-fill beside the shipped one, each on a CPU, before the test processes start — as it learns
the shipped one, so that no test process learns a whole pre-fill (about a minute under load)
while the others run. The test builds its Prefiller the product's way all the same (the
per-machine cache, keyed by everything the model is learned from: the catalogue's bytes)."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def admins_catalogue(folder: Path) -> Path:
    """The shipped catalogue with 数电票 added to 12366's strong words, as ``folder/subjects.yaml``."""
    from ivr.prefill import SUBJECTS_PATH

    shipped = SUBJECTS_PATH.read_text(encoding="utf-8")
    old = "    strong: [个人所得税, 个税,"
    assert old in shipped, f"{SUBJECTS_PATH} changed: update tests/prefill_support.py"
    extended = Path(folder) / "subjects.yaml"
    extended.write_text(shipped.replace(old, "    strong: [数电票, 个人所得税, 个税,"), encoding="utf-8")
    return extended


def learn_admins_prefill(rules_path: Path = ROOT / "transfer_rules.yaml") -> None:
    """The pre-fill with the admin's catalogue, learned into the per-machine cache (or loaded)."""
    from call_routing.rules import load_rules
    from ivr.prefill import Prefiller, load_catalogue

    rules = load_rules(rules_path)
    with tempfile.TemporaryDirectory(prefix="admins-catalogue-") as folder:
        Prefiller(rules, load_catalogue(admins_catalogue(Path(folder)), rules))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    learn_admins_prefill()
