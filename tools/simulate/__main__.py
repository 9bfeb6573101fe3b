"""``python -m tools.simulate``: see :mod:`tools.simulate` and docs/simulate.md."""
from tools.simulate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
