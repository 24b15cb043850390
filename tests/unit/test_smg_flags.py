"""Every `smg launch` flag of the reference list (shepherd/data/smg_launch_flags.json) fed to `shepherd launch`:
accepted with SMG's meaning, or refused with its one documented line. Parse only, no server."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import shepherd
from shepherd.assembly import checked
from shepherd.cli import build_parser, config_from_args, parse_args
from shepherd.config_sources import ConfigSourceError
from shepherd.smg_flags import REFUSED, REFUSED_VALUES, reference

pytestmark = pytest.mark.unit

REFERENCE = reference()
ALL_NAMES = [(entry, name) for entry in REFERENCE["flags"] for name in (entry["flag"], *entry["aliases"])]

# Values for flags whose value has a shape of its own (the rest get one from their choices or type).
SAMPLES: dict[str, list[str]] = {
    "--worker-urls": ["http://127.0.0.1:8000"],
    "--prefill": ["http://127.0.0.1:8001", "9000"], "--decode": ["http://127.0.0.1:8002"],
    "--selector": ["app=engine"], "--prefill-selector": ["role=prefill"], "--decode-selector": ["role=decode"],
    "--model-id-from": ["namespace"], "--control-plane-api-keys": ["k1:ops:admin:secret"],
    "--jwt-role-mapping": ["Gateway.Admin=admin"], "--request-id-headers": ["x-request-id"],
    "--routing-key-headers": ["x-session"], "--cors-allowed-origins": ["https://example.com"],
    "--cache-boundaries": ["64,128"], "--max-payload-size": ["1048576"], "--max-buffered-request-bytes": ["1G"],
    "--prometheus-duration-buckets": ["0.1", "1", "10"], "--history-backend": ["memory"],
    "--otlp-traces-endpoint": ["localhost:4317"], "--redis-retention-days": ["7"],
    "--health-check-endpoint": ["/health"], "--log-level": ["debug"], "--host": ["127.0.0.1"],
    "--prometheus-host": ["127.0.0.1"], "--worker-startup-check-interval": ["2"], "--discovery-provider": ["file"],
    "--kv-index": ["positional"], "--tenant-api-key": ["team-a:secret-a"],
    "--priority-scheduler-default-max-class": ["interactive"], "--model-alias": ["fast=mock-model"],
}
FILES = {"--tls-cert-path", "--tls-key-path", "--client-cert-path", "--client-key-path", "--ca-cert-paths",
         "--chat-template", "--discovery-file", "--log-dir", "--model-path", "--tokenizer-path"}
# Flags that only make sense with another one (SMG checks the same pairs).
COMPANIONS: dict[str, list[str]] = {
    "--tls-cert-path": ["--tls-key-path", "key.pem"], "--tls-key-path": ["--tls-cert-path", "cert.pem"],
    "--client-cert-path": ["--client-key-path", "key.pem"], "--client-key-path": ["--client-cert-path", "c.pem"],
    "--prefill": ["--pd-disaggregation", "--decode", "http://127.0.0.1:8002"],
    "--decode": ["--pd-disaggregation", "--prefill", "http://127.0.0.1:8001"],
    "--pd-disaggregation": ["--prefill", "http://127.0.0.1:8001", "--decode", "http://127.0.0.1:8002"],
    "--service-discovery": ["--selector", "app=engine"],
    "--selector": ["--service-discovery"],
    "--service-discovery-namespace": ["--service-discovery", "--selector", "a=b"],
    "--model-id-from": ["--service-discovery", "--selector", "a=b"],
    "--prefill-selector": ["--service-discovery", "--pd-disaggregation", "--decode-selector", "role=decode"],
    "--decode-selector": ["--service-discovery", "--pd-disaggregation", "--prefill-selector", "role=prefill"],
    "--discovery-provider": ["--discovery-file", "workers.yaml"],
    "--discovery-file": ["--discovery-provider", "file"],
    "--postgres-db-url": ["--history-backend", "postgres"], "--redis-url": ["--history-backend", "redis"],
    "--jwt-issuer": ["--jwt-jwks-uri", "https://i.example/jwks"],
    "--jwt-audience": ["--jwt-issuer", "https://i.example", "--jwt-jwks-uri", "https://i.example/jwks"],
    "--jwt-jwks-uri": ["--jwt-issuer", "https://i.example"],
    "--jwt-role-mapping": ["--jwt-issuer", "https://i.example", "--jwt-jwks-uri", "https://i.example/jwks"],
    "--tenant-rate-limit-enabled": ["--tenant-rate-limit-config", "tenant-limits.yaml"],
}


def _value(entry: dict[str, Any], flag: str, tmp_path: Path) -> list[str]:
    if not entry["takes_value"]:
        return []
    if flag in FILES or entry["flag"] in FILES:
        path = tmp_path / flag.strip("-")
        path.mkdir(exist_ok=True)
        return [str(path)]
    if entry["flag"] in SAMPLES:
        return SAMPLES[entry["flag"]]
    if entry["choices"]:
        return [str(entry["choices"][0])]
    if entry["flag"] == "--postgres-db-url":
        return ["postgresql://u:p@127.0.0.1:5432/db"]
    if entry["flag"] == "--redis-url":
        return ["redis://127.0.0.1:6379/0"]
    if entry["flag"].startswith("--jwt-"):
        return ["https://issuer.example"]
    default = entry["default"]
    if isinstance(default, bool) or default is None or isinstance(default, str | list):
        return ["2"] if entry["type"] in ("int", "float", "_non_negative_int") else ["x"]
    return [str(default)]


def _argv(entry: dict[str, Any], flag: str, tmp_path: Path) -> list[str]:
    return ["launch", flag, *_value(entry, flag, tmp_path), *COMPANIONS.get(entry["flag"], [])]


def test_the_reference_list_names_its_source() -> None:
    assert REFERENCE["source"] == "smg" and REFERENCE["version"] == "1.13.0"
    assert len(REFERENCE["flags"]) > 200


@pytest.mark.parametrize("entry, flag", ALL_NAMES, ids=[name for _, name in ALL_NAMES])
def test_every_smg_flag_is_accepted_or_refused_by_name(entry: dict[str, Any], flag: str, tmp_path: Path) -> None:
    argv = _argv(entry, flag, tmp_path)
    refused = next((REFUSED_VALUES[(entry["flag"], v)] for v in argv[2:3] if (entry["flag"], v) in REFUSED_VALUES),
                   REFUSED.get(entry["flag"]))
    if refused is not None:
        with pytest.raises(ConfigSourceError) as raised:
            parse_args(argv, {})
        assert str(raised.value).startswith(entry["flag"]) and str(raised.value) == refused.message(
            entry["flag"] if entry["flag"] in REFUSED else f"{entry['flag']} {argv[2]}")
        return
    args = parse_args(argv, {})  # argparse exits (SystemExit) on a flag it does not know
    checked(config_from_args(args))


def test_the_table_lists_no_flag_shepherd_implements() -> None:
    launch = _launch_parser()
    implemented = {name for action in launch._actions for name in action.option_strings  # noqa: SLF001
                   if not (action.dest or "").startswith("refused_smg_")}
    assert not implemented & set(REFUSED)
    smg = {name for _, name in ALL_NAMES}
    assert set(REFUSED) <= smg, "a refused flag SMG does not have"
    assert {flag for flag, _ in REFUSED_VALUES} <= implemented


def test_a_refused_flag_from_the_environment_or_a_config_file_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigSourceError, match=r"^--epd-disaggregation: encode-prefill-decode"):
        parse_args(["launch"], {"SHEPHERD_EPD_DISAGGREGATION": "true"})
    config = tmp_path / "shepherd.yaml"
    config.write_text(yaml.safe_dump({"mesh-peer-urls": ["10.0.0.2:39527"]}))
    with pytest.raises(ConfigSourceError, match=r"^--mesh-peer-urls: the HA mesh is not built yet \(issue 18\)"):
        parse_args(["launch", "--config", str(config)], {})
    assert parse_args(["launch"], {"SHEPHERD_EPD_DISAGGREGATION": "false"}).port == 30000


def test_a_refused_value_of_an_accepted_flag_is_refused() -> None:
    with pytest.raises(ConfigSourceError, match="^--parser symphony: the Symphony parser is not supported"):
        parse_args(["launch", "--parser", "symphony"], {})
    with pytest.raises(ConfigSourceError, match="^--history-backend oracle: Oracle history storage"):
        parse_args(["launch", "--history-backend", "oracle"], {})
    with pytest.raises(ConfigSourceError, match="^--kv-index chain: the run-length 'chain' layout .* positional"):
        parse_args(["launch", "--kv-index", "chain"], {})


def test_the_command_line_says_the_refusal_in_one_line() -> None:
    run = subprocess.run([sys.executable, "-m", "shepherd", "launch", "--epd-disaggregation"],
                         capture_output=True, text=True, timeout=60, cwd=Path(shepherd.__file__).parent.parent)
    assert run.returncode == 2
    line = REFUSED["--epd-disaggregation"].message("--epd-disaggregation")
    assert run.stderr.strip().splitlines() == [f"shepherd: {line}"]


def test_shared_defaults_are_smgs() -> None:
    args = parse_args(["launch"], {})
    config = config_from_args(args)
    assert config.policy == "cache_aware"
    assert config.retry.max_retries == 5 and config.retry.attempts == 5  # SMG counts attempts, the first included
    assert config_from_args(parse_args(["launch", "--disable-retries"], {})).retry.attempts == 1
    assert config.admission.max_concurrent_requests >= 4096  # -1: derived from the host
    assert config.prometheus_host == "0.0.0.0"
    assert config_from_args(parse_args(["launch", "--host", "::1"], {})).prometheus_host == "::"
    assert not config.health.remove_unhealthy
    discovered = parse_args(["launch", "--discovery-provider", "file", "--discovery-file", "w.yaml"], {})
    assert config_from_args(discovered).health.remove_unhealthy  # SMG: recovery by re-discovery


def test_bucket_is_a_prefill_policy_only() -> None:
    with pytest.raises(SystemExit):
        parse_args(["launch", "--policy", "bucket"], {})
    args = parse_args(["launch", "--pd-disaggregation", "--prefill", "http://p:1", "--decode", "http://d:1",
                       "--prefill-policy", "bucket"], {})
    assert checked(config_from_args(args)).prefill_policy == "bucket"


def test_smg_aliases_set_the_same_option() -> None:
    args = parse_args(["launch", "--cache-match-threshold", "0.7", "--spill-abs-threshold", "9",
                       "--sticky-key-idle-secs", "5", "--model", "/models/x", "--no-worker-auto-recovery"], {})
    assert (args.cache_threshold, args.balance_abs_threshold, args.max_idle_secs) == (0.7, 9, 5)
    assert args.model_path == "/models/x" and args.remove_unhealthy_workers is False


def test_every_launch_flag_has_help_that_shows_its_default() -> None:
    launch = _launch_parser()
    formatter = launch._get_formatter()  # noqa: SLF001
    for action in launch._actions:  # noqa: SLF001
        if action.dest in ("help",) or not action.option_strings:
            continue
        assert action.help, f"{action.option_strings[0]} has no help"
        shown = formatter._get_help_string(action) or ""  # noqa: SLF001
        assert "default" in shown.lower() or shown.startswith("refused:"), action.option_strings[0]


def test_shepherd_with_no_arguments_prints_help() -> None:
    run = subprocess.run([sys.executable, "-m", "shepherd"], capture_output=True, text=True, timeout=60,
                         cwd=Path(shepherd.__file__).parent.parent)
    assert run.returncode == 0 and "usage: shepherd" in run.stdout and "launch" in run.stdout


def _launch_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = parser._subparsers  # noqa: SLF001
    assert sub is not None
    launch: argparse.ArgumentParser = sub._group_actions[0].choices["launch"]  # type: ignore[attr-defined,index]  # noqa: SLF001
    return launch
