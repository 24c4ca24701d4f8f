"""Remote-sensing CLIP encoders for language search: text <-> pair retrieval and zero-shot change questions.

RemoteCLIP, GeoRSCLIP and SkyCLIP are open_clip models; Git-RSCLIP is a SigLIP in Hugging Face format. Their
weights cannot be fetched at run time (no hub access), so ``load_clip`` takes a local file (a directory for
Git-RSCLIP) and a missing one fails with one line saying where to download it. ``open_clip`` and
``transformers`` are imported inside functions: ``import changescope`` never pulls them.

A pair is embedded as the unit vector of ``embed(after) - embed(before)``: what the two dates share (season,
sensor, the unchanged city) cancels, and what remains points towards the concepts that appeared. That is the
design of this module, not a published method's recipe.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from changescope.errors import ChangescopeError, DataError, MissingDependencyError

#: what identity()'s vectors are, so a pair index built with them refuses other embeddings
EMBEDDING = "changescope-clip/1"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: keys that do not change an embedding: a checkpoint without them still loads (model's init kept)
_OPTIONAL_KEYS = {"logit_scale", "logit_bias"}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class ClipSpec:
    name: str
    title: str  # for messages: "RemoteCLIP ViT-B-32"
    library: str  # "open_clip" | "transformers"
    architecture: str  # open_clip model name, or the transformers model type
    weights_file: str  # the file (or archive) the authors publish
    source: str  # the page to download it from
    licence: str
    gsd: str  # ground sampling distance of the training imagery: where the model is in-domain
    prompt: str = "a satellite image of {}."
    fetch: str = ""  # any step between the download and the path to pass


# Checked (Jan 2025 pages): RemoteCLIP and GeoRSCLIP file names and repos, SkyScript's checkpoint URL,
# Git-RSCLIP repos. Unsure: the activation (GELU vs QuickGELU: the authors' loading code is followed:
# RemoteCLIP's README builds "ViT-B-32", GeoRSCLIP's loads OpenAI weights, which older open_clip built with
# QuickGELU; override with load_clip(architecture=...)), the name of the .pt inside SkyCLIP's zip, the
# licences of SkyCLIP and Git-RSCLIP-base, the GSD ranges (approximate, from the papers) and the prompts.
_REMOTECLIP = dict(
    library="open_clip",
    source="https://huggingface.co/chendelong/RemoteCLIP",
    licence="Apache-2.0 per github.com/ChenDelong1999/RemoteCLIP (the model card names none)",
    gsd="mixed aerial and satellite, about 0.1-30 m",
)
_GIT_RSCLIP = dict(
    library="transformers",
    architecture="siglip",
    weights_file="model.safetensors",
    gsd="mixed, global Git-10M imagery, about 0.5-30 m",
    prompt="a remote sensing image of {}.",
    fetch="with its config, tokenizer and preprocessor files, and pass the directory",
)
_SPECS = (
    ClipSpec(
        name="remoteclip-vit-b-32",
        title="RemoteCLIP ViT-B-32",
        architecture="ViT-B-32",
        weights_file="RemoteCLIP-ViT-B-32.pt",
        **_REMOTECLIP,
    ),
    ClipSpec(
        name="remoteclip-vit-l-14",
        title="RemoteCLIP ViT-L-14",
        architecture="ViT-L-14",
        weights_file="RemoteCLIP-ViT-L-14.pt",
        **_REMOTECLIP,
    ),
    ClipSpec(
        name="georsclip-vit-b-32",
        title="GeoRSCLIP ViT-B-32 (RS5M)",
        library="open_clip",
        architecture="ViT-B-32-quickgelu",
        weights_file="RS5M_ViT-B-32.pt",
        source="https://huggingface.co/Zilun/GeoRSCLIP/tree/main/ckpt",
        licence="CC-BY-4.0 (model card)",
        gsd="mixed: RS5M gathers web images and RS datasets, GSD unstated per image",
    ),
    ClipSpec(
        name="skyclip-vit-b-32",
        title="SkyCLIP ViT-B-32 (top 50%)",
        library="open_clip",
        architecture="ViT-B-32",
        weights_file="SkyCLIP_ViT_B32_top50pct.zip",
        source="https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/SkyCLIP_ViT_B32_top50pct.zip",
        licence="not stated on the download page: see github.com/wangzhecheng/SkyScript",
        gsd="0.1-30 m (SkyScript: Google Earth Engine imagery)",
        fetch="unzip it and pass the .pt checkpoint (or the folder holding only it)",
    ),
    ClipSpec(
        name="git-rsclip",
        title="Git-RSCLIP (SigLIP-L/16, 256 px)",
        source="https://huggingface.co/lcybuaa/Git-RSCLIP",
        licence="Apache-2.0 (model card)",
        **_GIT_RSCLIP,
    ),
    ClipSpec(
        name="git-rsclip-base",
        title="Git-RSCLIP-base (SigLIP-B/16)",
        source="https://huggingface.co/lcybuaa/Git-RSCLIP-base",
        licence="MIT (model card; unsure)",
        **_GIT_RSCLIP,
    ),
)
CLIP_MODELS: dict[str, ClipSpec] = {spec.name: spec for spec in _SPECS}


def clip_spec(name: str) -> ClipSpec:
    if name not in CLIP_MODELS:
        raise ChangescopeError(f"unknown CLIP model {name!r}; known: {', '.join(CLIP_MODELS)}")
    return CLIP_MODELS[name]


def _import(module: str, spec_title: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = "open_clip_torch" if module == "open_clip" else module
        raise MissingDependencyError(package, "clip", spec_title) from err


def weights_source(spec: ClipSpec) -> str:
    """Where the right file comes from: every error about a weights file ends with it."""
    return f"{spec.title} weights are {spec.weights_file} from {spec.source}"


def _weights_path(spec: ClipSpec, weights: str | Path | None) -> Path:
    """The checked local path: the one place that says where to download missing weights."""
    how = f"download {spec.weights_file} from {spec.source} (no hub access at run time)"
    how += f", {spec.fetch}" if spec.fetch else " and pass its path"
    if weights is None:
        raise ChangescopeError(f"{spec.title} needs its weights: {how}")
    path = Path(weights).expanduser()
    if not path.exists():
        raise DataError(path, f"{spec.title} weights not found: {how}")
    if spec.library == "transformers":
        return path.parent if path.is_file() else path  # model.safetensors itself: its directory
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in _CHECKPOINT_SUFFIXES and p.is_file())
        if len(found) != 1:
            raise DataError(
                path,
                f"holds {len(found)} checkpoint files ({', '.join(_CHECKPOINT_SUFFIXES)}), not one: pass the "
                f"file itself ({weights_source(spec)})",
            )
        path = found[0]
    if path.suffix.lower() == ".zip":  # SkyCLIP is published zipped
        raise DataError(
            path, f"is an archive: unzip it and pass the checkpoint inside ({weights_source(spec)})"
        )
    return path


def _read_state_dict(path: Path, spec: ClipSpec) -> dict[str, Tensor]:
    """A plain state dict, or one wrapped as {"state_dict": ...} with DDP's "module." prefixes (training)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle needing code, a truncated file: one line either way
        raise DataError(path, f"not a readable checkpoint ({_reason(err)}; {weights_source(spec)})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise DataError(path, f"holds no state dict of tensors ({weights_source(spec)})")
    return {k.removeprefix("module."): v for k, v in data.items()}


def _reason(err: BaseException) -> str:
    """A loader's error as a short clause: torch's weights-only refusal by its own detail line (not its
    paragraph about PyTorch 2.6), anything else by its first sentence."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("\n\n")
        detail = next((part.strip() for part in detail if part.strip()), "")
        text = f"not a tensor-only torch file: {detail}" if detail else "not a tensor-only torch file"
    else:
        text = (text.strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
    return " ".join(text.split())[:200]


def _load_state(model: nn.Module, path: Path, architecture: str, spec: ClipSpec) -> None:
    state, target = _read_state_dict(path, spec), model.state_dict()
    for key in _OPTIONAL_KEYS & state.keys() & target.keys():  # a scalar saved as [1], or the reverse
        if state[key].numel() == target[key].numel():
            state[key] = state[key].reshape(target[key].shape)
    missing = [k for k in target if k not in state and k not in _OPTIONAL_KEYS]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        if wrong:
            first = (
                f"{wrong[0]}: {list(state[wrong[0]].shape)} in the file, {list(target[wrong[0]].shape)} here"
            )
        else:
            first = (missing + unexpected)[0]
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped keys"
        raise DataError(
            path, f"does not fit open_clip {architecture} (first: {first}; {counts}; {weights_source(spec)})"
        )
    model.load_state_dict(state, strict=False)


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _state_sha256(model: nn.Module) -> str:
    """A randomly initialised model's identity: its parameters' bytes (two random inits differ)."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "random-init:" + digest.hexdigest()


@contextmanager
def _quiet() -> Iterator[None]:
    """open_clip warns on the root logger that a model "initialized randomly" before its weights load."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _as_tensor(out) -> Tensor:
    """transformers 5 returns the features as a pooled output object, 4.x as a tensor."""
    return out if isinstance(out, Tensor) else out.pooler_output


def _unit(x: Tensor) -> Tensor:
    """Rows scaled to length 1; a zero row stays zero (it means "no direction", never NaN)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ------------------------------------------------------------------------------------------------ questions
_QUESTION_RULES = (
    r"^(?:is|are) there (?:any |a |an )?new (.+)$",  # is there a new building / are there any new roads
    r"^(?:was|were|has|have) (?:any |a |an )?new (.+?) (?:been )?(?:built|added|constructed|appeared)$",
)


def question_to_phrase(question: str) -> str:
    """The noun phrase of a "new X" question, by two documented patterns (lower-cased, "?" dropped):
    "is/are there (a|an|any) new X", "was/were/has/have (a|an|any) new X (been) built|added|constructed|
    appeared". Anything else is returned whole (stripped), so a plain phrase ("building") passes through."""
    text = " ".join(question.strip().rstrip("?.! ").split())
    for rule in _QUESTION_RULES:
        if match := re.match(rule, text.lower()):
            return match.group(1)
    return text


# ------------------------------------------------------------------------------------------------- encoder
class ClipEncoder:
    """A CLIP's two towers behind one interface: unit image, text and change (pair) embeddings."""

    def __init__(
        self,
        model: nn.Module,
        spec: ClipSpec,
        image_fn: Callable[[Tensor], Tensor],
        text_fn: Callable[[list[str]], Tensor],
        mean: tuple,
        std: tuple,
        image_size: tuple[int, int],
        dim: int,
        architecture: str,
        weights: list[Path] | None = None,
        location: Path | None = None,
        config: dict | None = None,
    ):
        self.model, self.spec, self.dim, self.architecture = model.eval(), spec, int(dim), architecture
        self.image_size = tuple(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._image_fn, self._text_fn, self._weights, self._sha = image_fn, text_fn, weights, None
        #: what a user passes to load it again: the checkpoint file, or the transformers directory
        self.location = location if location is not None else (weights[0] if weights else None)
        #: the explicit open_clip config it was built from (None for a named architecture)
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def resize(self, images: Tensor) -> Tensor:
        """[..., 3, H, W] in [0, 1] -> [..., 3, S, S] at the model's input size, still in [0, 1]. The whole
        tile is resized (no centre crop: a change at the border counts as much as one in the middle);
        bicubic with antialiasing, as the towers saw. A no-op at the model's size."""
        if images.ndim < 3 or images.shape[-3] != 3:
            raise ValueError(f"expected images [..., 3, H, W] in [0, 1], got {tuple(images.shape)}")
        x = images.float()
        if tuple(x.shape[-2:]) == self.image_size:
            return x.clamp(0, 1)
        lead = x.shape[:-3]
        x = F.interpolate(
            x.reshape(-1, *x.shape[-3:]),
            size=self.image_size,
            mode="bicubic",
            antialias=True,
            align_corners=False,
        )
        return x.clamp(0, 1).reshape(*lead, 3, *self.image_size)  # bicubic overshoots

    def _pixels(self, images: Tensor) -> Tensor:
        """[B,3,H,W] in [0,1] -> the model's input (resized, normalised)."""
        x = self.resize(images.to(self.device, torch.float32))
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def embed_images(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Unit image embeddings [B, D], float32 on the CPU (what an index stores)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        if len(images) == 0:
            return torch.empty(0, self.dim)
        self.model.eval()
        chunks = [_as_tensor(self._image_fn(self._pixels(c))) for c in images.split(batch_size)]
        return _unit(torch.cat(chunks).float().cpu())

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        """Unit text embeddings [N, D], float32 on the CPU."""
        self.model.eval()
        if not texts:
            return torch.empty(0, self.dim)
        return _unit(_as_tensor(self._text_fn(list(texts))).float().cpu())

    def embed_pairs(self, before: Tensor, after: Tensor) -> Tensor:
        """Change embeddings [B, D]: unit(embed(after) - embed(before)), both [B, 3, H, W] in [0, 1]. An
        unchanged pair (identical embeddings) gives a zero row: it has no direction, so its cosine with
        every query is 0 (a pair index refuses such rows; ``tasks.search`` skips them as unchanged)."""
        if before.shape != after.shape:
            raise ValueError(f"before {tuple(before.shape)} and after {tuple(after.shape)} differ in shape")
        # two calls of the same batch shape: an unchanged pair's two embeddings are bit-identical
        return _unit(self.embed_images(after) - self.embed_images(before))

    def prompts(self, phrases: list[str]) -> list[str]:
        return [self.spec.prompt.format(p) for p in phrases]

    def embed_queries(self, queries: list[str]) -> Tensor:
        """Unit embeddings of search queries: each reduced to its noun phrase (``question_to_phrase``) and
        put in the model's prompt, as ``zero_shot`` does, so a search ranks what ``zero_shot`` scores."""
        return self.embed_texts(self.prompts([question_to_phrase(q) for q in queries]))

    def zero_shot(self, before: Tensor, after: Tensor, queries: list[str]) -> list[dict[str, dict]]:
        """Per pair, per query noun phrase: ``score`` = cos(after, t) - cos(before, t), the gain in similarity
        to the prompted concept, and the two cosines as ``present_before`` / ``present_after``."""
        texts = self.embed_texts(self.prompts(queries))
        cos_b, cos_a = self.embed_images(before) @ texts.T, self.embed_images(after) @ texts.T
        return [
            {
                q: {"score": float(a[j] - b[j]), "present_before": float(b[j]), "present_after": float(a[j])}
                for j, q in enumerate(queries)
            }
            for b, a in zip(cos_b, cos_a, strict=True)
        ]

    def answer_new(
        self, before: Tensor, after: Tensor, thing: str, margin: float = 0.0
    ) -> tuple[bool, float]:
        """ "Is there a new X?" for one pair ([3,H,W] or [1,3,H,W]): yes when the gain exceeds ``margin``.
        ``thing`` may be the question itself (see question_to_phrase)."""
        before, after = (x.unsqueeze(0) if x.ndim == 3 else x for x in (before, after))
        if before.shape[0] != 1 or after.shape[0] != 1:
            raise ValueError("answer_new takes one pair; use zero_shot for a batch")
        phrase = question_to_phrase(thing)
        score = self.zero_shot(before, after, [phrase])[0][phrase]["score"]
        return score > margin, score

    def identity(self) -> dict:
        """What a pair index records: the same name, architecture and weights hash mean the same vectors.
        ``sha256`` is the weights files' hash, or for a random init (``build_clip_from_config``)
        ``random-init:`` and the hash of its parameters; ``path`` is what ``load_clip`` takes to load it
        again; ``config`` the explicit open_clip config, when it was built from one."""
        if self._sha is None:
            self._sha = _sha256(self._weights) if self._weights else _state_sha256(self.model)
        out = {"name": self.spec.name, "architecture": self.architecture, "sha256": self._sha}
        if self.location is not None:
            out["path"] = str(Path(self.location).resolve())
        if self.config is not None:
            out["config"] = self.config
        return {**out, "embedding": EMBEDDING, "dim": self.dim}


# ------------------------------------------------------------------------------------------------- loading
def _open_clip_model(spec: ClipSpec, architecture: str, cfg: dict | None, device: str):
    open_clip = _import("open_clip", spec.title)
    if cfg is None:
        with _quiet():
            model = open_clip.create_model(architecture, pretrained=None, device=device)
        tokenizer = open_clip.get_tokenizer(architecture)
    else:  # an explicit config (tests, custom sizes): the same CLIP class the named configs build
        model = open_clip.model.CLIP(**cfg).to(device)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return model, tokenizer


def _open_clip_encoder(
    model, tokenizer, spec: ClipSpec, architecture: str, weights=None, config: dict | None = None
) -> ClipEncoder:
    pre = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    size = pre.get("size", model.visual.image_size)
    size = (size, size) if isinstance(size, int) else tuple(size)

    def text_fn(texts: list[str]) -> Tensor:
        return model.encode_text(tokenizer(texts).to(next(model.parameters()).device))

    mean, std = pre.get("mean", OPENAI_MEAN), pre.get("std", OPENAI_STD)
    dim = model.visual.output_dim
    return ClipEncoder(
        model, spec, model.encode_image, text_fn, mean, std, size, dim, architecture, weights, config=config
    )


def _config_name(cfg: dict) -> str:
    """A config-built model's architecture label: two configs differ in their label."""
    return "config " + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def build_clip_from_config(cfg: dict, name: str = "remoteclip-vit-b-32", device: str = "cpu") -> ClipEncoder:
    """A randomly initialised open_clip CLIP from ``cfg`` (``embed_dim``, ``vision_cfg``, ``text_cfg``), with
    ``name``'s prompt: for tests and for checking a pipeline without weights. identity() says random-init."""
    spec, architecture = clip_spec(name), _config_name(cfg)
    if spec.library != "open_clip":
        raise ChangescopeError(f"{name} is a transformers model: build_clip_from_config makes open_clip ones")
    model, tokenizer = _open_clip_model(spec, architecture, cfg, device)
    return _open_clip_encoder(model, tokenizer, spec, architecture, config=cfg)


def _transformers_encoder(spec: ClipSpec, path: Path, device: str) -> ClipEncoder:
    transformers = _import("transformers", spec.title)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on stderr
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True).to(device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        images = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except ImportError as err:  # SigLIP's sentencepiece tokenizer, without the package
        package = err.name or "sentencepiece"
        raise ChangescopeError(f"{spec.title} needs the '{package}' package: pip install {package}") from None
    except Exception as err:  # no config, a damaged safetensors file, another model type: one line
        raise DataError(path, f"cannot load {spec.title} ({_reason(err)}; {weights_source(spec)})") from None
    size = images.size
    size = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    length = model.config.text_config.max_position_embeddings  # SigLIP was trained on max-length padding

    def text_fn(texts: list[str]) -> Tensor:
        tokens = tokenizer(
            texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        return model.get_text_features(input_ids=tokens["input_ids"].to(model.device))

    def image_fn(pixels: Tensor) -> Tensor:
        return model.get_image_features(pixel_values=pixels)

    files = sorted(p for p in path.iterdir() if p.suffix in _CHECKPOINT_SUFFIXES)
    mean, std, dim = tuple(images.image_mean), tuple(images.image_std), model.config.vision_config.hidden_size
    if not files:
        raise DataError(
            path, f"holds no weights file ({', '.join(_CHECKPOINT_SUFFIXES)}; {weights_source(spec)})"
        )
    return ClipEncoder(model, spec, image_fn, text_fn, mean, std, size, dim, spec.architecture, files, path)


def load_clip(
    name: str,
    weights: str | Path | None,
    device: str = "cpu",
    model_cfg: dict | None = None,
    architecture: str | None = None,
) -> ClipEncoder:
    """The encoder ``name`` (a key of CLIP_MODELS) with the weights at ``weights``: a checkpoint file for
    open_clip models (plain or wrapped state dict), the downloaded repository directory for transformers
    ones. ``model_cfg`` replaces the named architecture by an explicit open_clip config (tests), and
    ``architecture`` overrides the spec's open_clip model name (e.g. "ViT-B-32-quickgelu")."""
    spec = clip_spec(name)
    path = _weights_path(spec, weights)
    if spec.library == "transformers":
        if model_cfg is not None or architecture is not None:
            raise ValueError(f"{name} is a transformers model: its config comes from the weights directory")
        return _transformers_encoder(spec, path, device)
    architecture = architecture or spec.architecture
    model, tokenizer = _open_clip_model(spec, architecture, model_cfg, device)
    shown = architecture if model_cfg is None else _config_name(model_cfg)
    _load_state(model, path, shown, spec)
    return _open_clip_encoder(model, tokenizer, spec, shown, [path], config=model_cfg)
