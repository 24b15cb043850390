"""Static facts a simulated gRPC engine reports about itself (GetModelInfo, GetServerInfo, GetTokenizer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shepherd.sim.engine import EngineParams
from shepherd.tokenizer import bundle


@dataclass
class SimInfo:
    model: str
    tokenizer_dir: str  # the model directory it reports: its tokenizer files and a config.json (model_dir.py)
    advertise_tokenizer_path: bool = True  # False: report none, so a gateway must call GetTokenizer
    max_model_len: int = 32768
    default_sampling_params_json: str = ""
    weight_version: str = "sim-1"
    params: EngineParams = field(default_factory=EngineParams)
    _bundle: bytes | None = None

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer_dir if self.advertise_tokenizer_path else ""

    def bundle(self) -> bytes:
        if self._bundle is None:
            self._bundle = bundle.pack(self.tokenizer_dir)
        return self._bundle
