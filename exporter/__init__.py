"""llm-probe-exporter: how many users can each model serve at once?"""

__version__ = "0.1.0"
