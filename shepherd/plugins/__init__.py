"""WebAssembly plugins: the WIT contract (wit/plugin.wit), the wasmtime host and the registry."""

from pathlib import Path

WIT_PATH = Path(__file__).parent / "wit" / "plugin.wit"
