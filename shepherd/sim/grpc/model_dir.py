"""The model directory a simulated gRPC engine reports as its `model_path`.

A real engine's model path is a checkpoint directory: the tokenizer files beside the model's
`config.json`. A gateway reads that config from the path it is told (SMG's gRPC router loads it to
learn whether the model takes images, and without one it retries at every request, holding the
requests that arrive meanwhile for seconds), so the simulator reports a directory that has one: its
tokenizer directory when that already holds a config.json, else a directory of links to the
tokenizer files plus a config.json for a text-only decoder of the tokenizer's vocabulary.

That directory is named after what it holds and kept in the system's temporary directory, so every
simulator of the same tokenizer shares one, and one that is killed leaves nothing new behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from shepherd.tokenizer.tokenizer import Tokenizer


def model_dir(tokenizer_dir: str, tokenizer: Tokenizer, max_model_len: int) -> str:
    if os.path.isfile(os.path.join(tokenizer_dir, "config.json")):
        return tokenizer_dir
    config = json.dumps(_text_model_config(tokenizer, max_model_len), indent=2)
    digest = hashlib.sha256(f"{tokenizer_dir}\n{config}".encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"shepherd-sim-model-{digest}")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    staging = tempfile.mkdtemp(prefix="shepherd-sim-model-staging-")
    for name in os.listdir(tokenizer_dir):
        source = os.path.join(tokenizer_dir, name)
        if os.path.isfile(source):
            os.symlink(source, os.path.join(staging, name))
    with open(os.path.join(staging, "config.json"), "w") as handle:
        handle.write(config)
    try:
        os.rename(staging, path)  # whole or not at all, whichever simulator gets there first
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise
    return path


def _text_model_config(tokenizer: Tokenizer, max_model_len: int) -> dict[str, object]:
    """A decoder-only text model: the architecture the tokenizer belongs to, no vision tower."""
    qwen = str(tokenizer.config.get("tokenizer_class", "")).startswith("Qwen2")  # Qwen2/2.5/3 share it
    architecture, model_type = ("Qwen3ForCausalLM", "qwen3") if qwen else ("LlamaForCausalLM", "llama")
    return {"architectures": [architecture], "model_type": model_type, "vocab_size": tokenizer.vocab_size,
            "max_position_embeddings": max_model_len}
