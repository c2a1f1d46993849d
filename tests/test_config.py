"""The config file: defaults, overrides, secrets, and the exact message of every bad file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import ConfigError, ProbeSettings, load_config

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
servers:
  - name: multi_model_server
    url: http://127.0.0.1:8000
    models:
      - name: phi4_fast
        id: phi4:latest
      - name: qwen_coder
        probe: {max_tokens: 256, levels: [1, 2]}
probe:
  duration: 2.5s
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_seed_methodology(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD.replace("probe:\n  duration: 2.5s\n", "")))
    probe = config.servers[0].models[0].probe
    assert probe.levels == (1, 2, 4, 8, 12, 16, 20)
    assert (probe.duration_s, probe.interval_s, probe.timeout_s) == (25.0, 3.0, 60.0)
    assert probe.memory_limit == 0.90
    assert probe.max_error_ratio == 0.0
    assert config.web.listen_address == ":8464"


def test_per_model_override_keeps_the_rest_of_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    phi, qwen = config.servers[0].models
    assert phi.id == "phi4:latest" and qwen.id == "qwen_coder"
    assert phi.probe.max_tokens == 128 and qwen.probe.max_tokens == 256
    assert qwen.probe.levels == (1, 2) and phi.probe.levels == ProbeSettings().levels
    assert phi.probe.duration_s == qwen.probe.duration_s == 2.5


def test_api_key_from_env_and_file_never_in_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMS_KEY", "sk-env-secret")
    (tmp_path / "key.txt").write_text("sk-file-secret\n")
    text = GOOD.replace("    url:", "    api_key_env: MMS_KEY\n    url:")
    server = load_config(write(tmp_path, text)).servers[0]
    assert server.api_key == "sk-env-secret"
    assert "sk-env-secret" not in repr(server)
    text = GOOD.replace("    url:", "    api_key_file: key.txt\n    url:")
    server = load_config(write(tmp_path, text)).servers[0]
    assert server.api_key == "sk-file-secret"
    assert "secret" not in repr(server)


BAD = [
    (
        GOOD.replace("duration: 2.5s", "duration: 25x"),
        "probe.duration: '25x' is not a duration (use 25s, 1.5m, ...)",
    ),
    (GOOD.replace("servers:", "servrs:"), "servrs: unknown key (did you mean 'servers'?)"),
    (
        GOOD.replace("{max_tokens: 256,", "{max_tokns: 256,"),
        "servers[0].models[1].probe.max_tokns: unknown key (did you mean 'max_tokens'?)",
    ),
    (
        GOOD.replace("    url: http", "    api: grpc\n    url: http"),
        "servers[0].api: 'grpc' is not one of openai, ollama, llamacpp, vllm",
    ),
    (
        GOOD.replace("duration: 2.5s", "memory_limit: 1.5"),
        "probe.memory_limit: 1.5 must be greater than 0 and at most 1",
    ),
    (
        GOOD.replace("duration: 2.5s", "max_error_ratio: -0.1"),
        "probe.max_error_ratio: -0.1 must be between 0 and 1",
    ),
    (
        GOOD.replace("levels: [1, 2]", "levels: [4, 2]"),
        "servers[0].models[1].probe.levels: levels must be strictly increasing, got [4, 2]",
    ),
    (
        GOOD.replace("levels: [1, 2]", "levels: [1, two]"),
        "servers[0].models[1].probe.levels[1]: 'two' is not an integer",
    ),
    (
        GOOD.replace("duration: 2.5s", "stream: yes please"),
        "probe.stream: must be true or false, got 'yes please'",
    ),
    (
        GOOD.replace("    url: http", "    api_key: sk-123\n    url: http"),
        "servers[0].api_key: keys are not accepted in the config file; "
        "use api_key_env or api_key_file",
    ),
    (
        GOOD.replace("    url: http", "    api_key_env: LLM_PROBE_TEST_UNSET\n    url: http"),
        "servers[0].api_key_env: environment variable LLM_PROBE_TEST_UNSET is not set",
    ),
    (
        GOOD.replace("url: http://127.0.0.1:8000", "url: 127.0.0.1:8000"),
        "servers[0].url: '127.0.0.1:8000' is not an http:// or https:// URL",
    ),
    (
        GOOD.replace("name: qwen_coder", "name: phi4_fast"),
        "servers[0].models: duplicate model name 'phi4_fast'",
    ),
    (
        GOOD + "schedule:\n  sweep: every day\n",
        "schedule.sweep: 'every day' is neither an "
        "interval (1h, 30m, ...) nor a cron expression ('0 */6 * * *')",
    ),
    (GOOD + "snapshot:\n  lang: fr\n", "snapshot.lang: 'fr' is not one of en, es"),
    (
        GOOD + "web:\n  listen_address: localhost\n",
        "web.listen_address: 'localhost' is not HOST:PORT (e.g. :8464)",
    ),
    ("servers: []\n", "servers: must be a non-empty list"),
    ("probe: {}\n", "servers: required (a list of model servers to probe)"),
    ("", "the file is empty (expected a mapping with 'servers')"),
    ("- just\n- a list\n", "config: expected a mapping, got a list"),
    (
        "servers:\n  - name: a\n    url: http://x\n   models: [m]\n",
        "line 4: invalid YAML: ",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_config_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llm-probe-exporter: error: {path}: ")
    assert message in err
    assert err.count("\n") == 1, err  # one line, no traceback


def test_missing_and_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert (
        capsys.readouterr().err
        == f"llm-probe-exporter: error: {tmp_path}/nope.yaml: no such file\n"
    )
    assert main(["check-config", "--config", str(tmp_path)]) == 2
    assert "is a directory, not a config file" in capsys.readouterr().err
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["check-config", "--config", str(tmp_path / "bin.yaml")]) == 2
    assert "not a UTF-8 text file" in capsys.readouterr().err


def test_load_config_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"probe\.duration: '25x' is not a duration"):
        load_config(write(tmp_path, GOOD.replace("duration: 2.5s", "duration: 25x")))


def test_bad_flag_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--url", "http://127.0.0.1:9", "--model", "m", "--duration", "25x"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        "llm-probe-exporter: error: --duration: '25x' is not a duration (use 25s, 1.5m, ...)\n"
    )
    assert main(["probe", "--url", "http://127.0.0.1:9", "--model", "m", "--levels", "1,x"]) == 2
    assert "--levels: '1,x' is not a comma-separated list of integers" in capsys.readouterr().err


def test_unknown_model_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert main(["probe", "--config", str(path), "--model", "llama"]) == 2
    assert "--model: 'llama' is not in the config (known: phi4_fast, qwen_coder)" in (
        capsys.readouterr().err
    )


def test_real_process_bad_config_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("duration: 2.5s", "duration: 25x"))
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "probe", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"llm-probe-exporter: error: {path}: probe.duration: '25x' is not a duration "
        "(use 25s, 1.5m, ...)\n"
    )


def test_shipped_example_configs_are_valid() -> None:
    for path in sorted((REPO / "deploy" / "examples").glob("*.yaml")):
        assert main(["check-config", "--config", str(path)]) == 0, path


def test_readme_documents_every_config_key() -> None:
    from exporter.config import KEYS

    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_\[\].]+)`", readme, flags=re.M))
    for section, keys in KEYS.items():
        for key in keys:
            name = f"{section}.{key}" if section else key
            if name in ("servers", "probe", "schedule", "snapshot", "web", "servers[].models"):
                continue  # sections, documented key by key
            assert name in documented, f"README's config table lacks `{name}`"
