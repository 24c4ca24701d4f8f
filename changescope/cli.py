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


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not three comma-separated numbers") from None
    if len(parts) != 3:
        raise typer.BadParameter(f"'{text}' must give three fractions: train,val,test")
    return parts  # type: ignore[return-value]


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Directory to create (must not exist or be empty)."),
    pairs: int = typer.Option(200, "--pairs", help="Number of image pairs."),
    size: int = typer.Option(256, "--size", help="Image side in pixels (>= 64)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    splits: str = typer.Option("0.7,0.15,0.15", "--splits", help="train,val,test fractions."),
) -> None:
    """Generate SynthChange: aerial-looking pairs, masks, captions, QA, grounding and retrieval records."""
    from rich.progress import Progress

    from changescope.data.synth import generate

    fractions = _parse_fractions(splits)
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
    counts = summary.get("counts", {})
    typer.echo(f"wrote {pairs} pairs to {out} ({json.dumps(counts.get('splits', counts))})")


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="Dataset directory."),
    format: str | None = typer.Option(None, "--format", help="Dataset format; detected when omitted."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Validate a dataset: counts per split, change balance, inconsistencies; exit 1 on any error."""
    from changescope.data.check import check_dataset

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
    min_freq: int = typer.Option(5, "--min-freq", help="Keep words seen at least this often in train."),
) -> None:
    """Build the word vocabulary from the train split only (rule: count >= --min-freq)."""
    from changescope.data.readers import open_dataset
    from changescope.data.text import Vocabulary

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

    result = score_predictions(pred, data, split=split, format=format, meteor=meteor)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(caption_table(result))


@app.command()
def version() -> None:
    """Print the version."""
    from changescope import __version__

    typer.echo(__version__)


def main(argv: list[str] | None = None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)
    except ChangescopeError as err:
        typer.echo(f"error: {err}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as err:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.ClickException):
            err.show()
            return err.exit_code
        if isinstance(err, click.exceptions.Abort):
            return 1
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
