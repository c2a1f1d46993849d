"""Real LLM servers for the tests: llama.cpp built from registry packages, and a tiny model.

- `build`: builds (once, cached outside the repo) `llama-cpp-python[server]` and llama.cpp's
  own `llama-server`; `python -m tests.realservers.build` pre-builds both for CI.
- `tiny_model`: writes a < 1 MB GGUF whose answers are exactly `max_tokens` ASCII letters.
- `servers`: context managers that run either server on 127.0.0.1 with that model.
"""
