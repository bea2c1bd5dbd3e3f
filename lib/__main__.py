"""``python -m lib``: run the notebooks of a profile (see ``lib.infra.runner``)."""
from lib.infra.runner import main

raise SystemExit(main())
