"""`python -m exporter` runs the same CLI as `llm-probe-exporter`."""

from exporter.cli import main

raise SystemExit(main())
