"""`launch` flags from a config file and SHEPHERD_* variables: precedence, conversion, errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import shepherd
from shepherd.cli import build_parser, config_from_args, parse_args
from shepherd.config_sources import ConfigSourceError, options


def _launch(argv: list[str], env: dict[str, str] | None = None, config: dict | None = None,
            tmp_path: Path | None = None) -> argparse.Namespace:
    argv = ["launch", *argv]
    if config is not None:
        assert tmp_path is not None
        path = tmp_path / "shepherd.yaml"
        path.write_text(yaml.safe_dump(config))
        argv += ["--config", str(path)]
    return parse_args(argv, env or {})


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    assert _launch([]).port == 30000
    assert _launch([], config={"port": 1001}, tmp_path=tmp_path).port == 1001
    assert _launch([], {"SHEPHERD_PORT": "1002"}, {"port": 1001}, tmp_path).port == 1002
    assert _launch(["--port", "1003"], {"SHEPHERD_PORT": "1002"}, {"port": 1001}, tmp_path).port == 1003
    # The config file itself can come from the environment.
    path = tmp_path / "env.yaml"
    path.write_text("policy: cache_aware\n")
    assert _launch([], {"SHEPHERD_CONFIG": str(path)}).policy == "cache_aware"


def test_values_are_converted_with_each_flags_own_type(tmp_path: Path) -> None:
    config = {
        "worker_urls": ["http://127.0.0.1:1", "http://127.0.0.1:2"],  # underscores work as well as dashes
        "max-payload-size": "64M",
        "disable-metrics": True,
        "remove-unhealthy-workers": True,
        "prefill": [["http://127.0.0.1:3", 8998], "http://127.0.0.1:4 none"],
        "decode": ["http://127.0.0.1:5"],
        "health-check-interval-secs": 2,
        "prefill-selector": "app=engine role=prefill",  # a string for a list flag is split like a shell would
        "decode-selector": ["app=engine", "role=decode"],
        "service-discovery": True,
    }
    args = _launch(["--pd-disaggregation"], config=config, tmp_path=tmp_path)
    assert args.worker_urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert args.max_payload_size == 64 * 1024 * 1024
    assert args.disable_metrics is True and args.remove_unhealthy_workers is True
    assert args.prefill == [["http://127.0.0.1:3", "8998"], ["http://127.0.0.1:4", "none"]]
    gateway = config_from_args(args).validate()
    assert gateway.prefill_urls == (("http://127.0.0.1:3", 8998), ("http://127.0.0.1:4", None))
    assert gateway.decode_urls == ("http://127.0.0.1:5",) and gateway.health.interval_secs == 2.0
    assert gateway.discovery.provider == "kubernetes"
    assert gateway.discovery.prefill_selector == (("app", "engine"), ("role", "prefill"))
    assert gateway.discovery.decode_selector == (("app", "engine"), ("role", "decode"))

    env = {"SHEPHERD_WORKER_URLS": "http://127.0.0.1:7 http://127.0.0.1:8", "SHEPHERD_DISABLE_HEALTH_CHECK": "yes",
           "SHEPHERD_PREFILL": '"http://127.0.0.1:9 8998" http://127.0.0.1:10', "SHEPHERD_LOG_JSON": "off",
           "SHEPHERD_API_KEY": "from-a-secret", "SHEPHERD_REMOVE_UNHEALTHY_WORKERS": "false"}
    args = _launch(["--pd-disaggregation"], env)
    assert args.worker_urls == ["http://127.0.0.1:7", "http://127.0.0.1:8"]
    assert args.disable_health_check is True and args.log_json is False and args.api_key == "from-a-secret"
    assert args.remove_unhealthy_workers is False
    assert args.prefill == [["http://127.0.0.1:9", "8998"], ["http://127.0.0.1:10"]]


def test_a_repeatable_flag_on_the_command_line_replaces_the_sourced_list(tmp_path: Path) -> None:
    args = _launch(["--pd-disaggregation", "--decode", "http://127.0.0.1:2"],
                   {"SHEPHERD_DECODE": "http://127.0.0.1:1"}, {"decode": ["http://127.0.0.1:0"]}, tmp_path)
    assert args.decode == ["http://127.0.0.1:2"]
    args = _launch(["--worker-urls"], {"SHEPHERD_WORKER_URLS": "http://127.0.0.1:1"})
    assert args.worker_urls == []  # given (empty) on the command line: the command line wins


@pytest.mark.parametrize(("env", "config", "message"), [
    ({"SHEPHERD_PORT": "eighty"}, None, "environment variable SHEPHERD_PORT: --port: invalid value 'eighty'"),
    ({"SHEPHERD_POLICY": "fastest"}, None, "--policy: 'fastest' is not one of"),
    ({"SHEPHERD_PORT": "tcp://10.0.0.1:80"}, None, "enableServiceLinks: false"),
    ({"SHEPHERD_DISABLE_METRICS": "maybe"}, None, "expected true or false"),
    ({}, {"prot": 1}, "unknown settings: prot"),
    ({}, {"port": [1, 2]}, "expected a single value"),
    ({}, {"request-id-headers": []}, "needs at least one value"),
])
def test_bad_values_name_their_source(env: dict[str, str], config: dict | None, message: str,
                                      tmp_path: Path) -> None:
    with pytest.raises(ConfigSourceError, match=message):
        _launch([], env, config, tmp_path)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigSourceError, match="No such file"):
        _launch(["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1\n")
    with pytest.raises(ConfigSourceError, match="not valid YAML"):
        _launch(["--config", str(bad)])
    bad.write_text("- port\n")
    with pytest.raises(ConfigSourceError, match="expected a mapping"):
        _launch(["--config", str(bad)])


def test_unknown_environment_variables_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert _launch([], {"SHEPHERD_PROT": "1", "OTHER": "x"}).port == 30000
    assert "ignoring SHEPHERD_PROT: no --prot flag" in capsys.readouterr().err


def test_every_launch_flag_is_a_config_key_and_an_environment_variable() -> None:
    launch = build_parser()._subparsers._group_actions[0].choices["launch"]  # type: ignore[union-attr]
    known = options(launch)
    long_flags = {next(s[2:] for s in a.option_strings if s.startswith("--")) for a in launch._actions}
    assert long_flags - set(known) == {"help", "config"}
    assert known["worker-startup-check-interval"].env == "SHEPHERD_WORKER_STARTUP_CHECK_INTERVAL"
    assert len({o.env for o in known.values()}) == len(known)


def test_version_and_bad_source_exit_cleanly(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "shepherd", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"shepherd {shepherd.__version__}"
    done = subprocess.run([sys.executable, "-m", "shepherd", "launch"], capture_output=True, text=True, timeout=60,
                          env={"SHEPHERD_PORT": "x", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "shepherd: environment variable SHEPHERD_PORT: --port: invalid value 'x' " \
                                  "(invalid literal for int() with base 10: 'x')"


def test_the_flag_defaults_are_the_config_defaults_and_same_named_flags_need_no_mapping() -> None:
    from shepherd.cli import _same_named
    from shepherd.config import GatewayConfig

    assert config_from_args(parse_args(["launch"], {})) == GatewayConfig()
    # A new flag whose dest is a GatewayConfig field reaches the config with no line in config_from_args.
    built = _same_named(GatewayConfig, argparse.Namespace(port=1234, worker_urls=["http://127.0.0.1:1"], other=1),
                        host="127.0.0.1")
    assert (built.port, built.worker_urls, built.host) == (1234, ("http://127.0.0.1:1",), "127.0.0.1")
