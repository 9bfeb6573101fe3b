"""``python -m ivr.prefill`` (JSON lines -> ticket fields) and ``python -m ivr.prefill evaluate``."""
import sys

if sys.argv[1:2] == ["evaluate"]:
    from .evaluate import main

    sys.exit(main(sys.argv[2:]))
from . import main

sys.exit(main())
