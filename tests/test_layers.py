"""The layers of the house (.importlinter, docs/architecture.md) hold, and the check catches a
break: each deliberate violation below, made in a copy of the code in a temp dir, fails
``lint-imports`` naming the contract and the import."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tools", "bench", "consoles", "agi_scripts", "ivr", "intake", "call_routing", "runtime")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache", "--config", str(root / ".importlinter")], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_the_layer_contract_holds():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_every_module_of_the_product_sits_in_a_layer():
    """A new module outside every listed layer would escape the contract unseen."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    layers = [name.strip() for line in cfg["importlinter:contract:layers"]["layers"].splitlines()
              for name in line.replace(":", "|").split("|") if name.strip()]
    outside = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            if module != "ivr" and not any(module == layer or module.startswith(layer + ".") for layer in layers):
                outside.append(module)
    assert outside == []


VIOLATIONS = {
    "the core imports Flask": ("call_routing/router.py", "import flask\n",
                               "The routing core imports no front-end"),
    "the core imports the call flow": ("call_routing/numbers.py", "import ivr.flow\n",
                                       "call_routing is not allowed to import ivr.flow"),
    "the Asterisk front-end imports the Twilio one": ("ivr/asterisk/agi.py", "from ivr.twilio import twiml\n",
                                                       "The Asterisk front-end does not import the Twilio one"),
    "the Twilio front-end imports the Asterisk one": ("ivr/twilio/twiml.py", "import agi_scripts.session\n",
                                                       "The Twilio front-end does not import the Asterisk one"),
    "intake imports a console": ("intake/tickets.py", "import consoles.db\n",
                                 "intake is not allowed to import consoles"),
    "a console imports the simulator": ("consoles/db.py", "import tools.simulate\n",
                                        "consoles is not allowed to import tools"),
    "the product imports app.py": ("consoles/auth.py", "import app\n", "No part of the product imports app.py"),
    "a circle inside intake": ("intake/speech.py", "import intake.jobs\n", "No circles inside any package"),
}


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_a_deliberate_violation_breaks_the_contract(violation, tmp_path):
    path, line, broken = VIOLATIONS[violation]
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "app.py", tmp_path / "app.py")
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    target = tmp_path / path
    text = target.read_text()
    head, sep, rest = text.partition("\nfrom __future__ import annotations\n")
    target.write_text(head + sep + line + rest if sep else line + text)
    r = lint(tmp_path)
    assert r.returncode != 0, f"{violation}: not caught\n{r.stdout}"
    assert broken in r.stdout, r.stdout
    assert "BROKEN" in r.stdout
