"""``python -m webhook`` is the same program as the ``flannel-guard`` console script."""

from webhook.cli import main

raise SystemExit(main())
