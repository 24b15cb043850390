"""The checks that need more than the config itself: names that other layers own.

`GatewayConfig.validate` checks what plain data can check. Whether `--policy` names a policy, a
parser flag a parser, or `--external-provider` a provider is known only to those modules, so the
check lives here, where the gateway is put together, and config.py stays at the bottom.
"""

from __future__ import annotations

import os

from shepherd.config import ConfigError, GatewayConfig
from shepherd.parsers.reasoning import REASONING_PARSER_NAMES
from shepherd.parsers.tool import TOOL_PARSER_NAMES
from shepherd.policies.factory import MAIN_POLICY_NAMES, POLICY_NAMES
from shepherd.providers.startup import ProviderFlagError, parse_external_provider


def checked(config: GatewayConfig) -> GatewayConfig:
    """The config, validated and with every name it uses known; ConfigError names the first bad value."""
    config.validate()
    if config.policy not in MAIN_POLICY_NAMES:
        raise ConfigError(f"--policy must be one of {', '.join(MAIN_POLICY_NAMES)}, got {config.policy!r}"
                          + (" (bucket is a --prefill-policy only, as in SMG)" if config.policy == "bucket" else ""))
    if config.prefill_policy is not None and config.prefill_policy not in POLICY_NAMES:
        raise ConfigError(f"--prefill-policy must be one of {', '.join(POLICY_NAMES)}")
    if config.decode_policy is not None and config.decode_policy not in MAIN_POLICY_NAMES:
        raise ConfigError(f"--decode-policy must be one of {', '.join(MAIN_POLICY_NAMES)}")
    if config.tool_call_parser is not None and config.tool_call_parser not in TOOL_PARSER_NAMES:
        raise ConfigError(f"--tool-call-parser must be one of {', '.join(sorted(TOOL_PARSER_NAMES))}, "
                          f"got {config.tool_call_parser!r}")
    if config.reasoning_parser is not None and config.reasoning_parser not in REASONING_PARSER_NAMES:
        raise ConfigError(f"--reasoning-parser must be one of {', '.join(sorted(REASONING_PARSER_NAMES))}, "
                          f"got {config.reasoning_parser!r}")
    for value in config.external_providers:
        try:
            parse_external_provider(value).to_spec(os.environ)
        except ProviderFlagError as exc:
            raise ConfigError(str(exc)) from None
    return config
