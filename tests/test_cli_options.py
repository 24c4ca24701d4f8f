"""Every command's options, tried wrong as a user would: zero, negative, out of range, wrong type, a missing
file, a file where a folder is expected and the reverse, a non-empty output folder.

Each row must end in one line on stderr that names the problem, a non-zero exit, no traceback, and no
output left behind (the ``out`` paths of a row are checked unchanged). The commands run in this process
(``cli.main``) so the table stays fast; tests/test_cli.py runs the same entry point as a subprocess.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from changescope.cli import main

# placeholders in the rows, filled in by the ``paths`` fixture
#   {synth}: a SynthChange dataset   {a} {b}: an image pair   {file}: a text file   {folder}: an empty folder
#   {full}: a non-empty folder changescope did not write   {missing}: a path that does not exist
#   {pred}: a predictions JSONL   {out}: a fresh output path (must not exist after the run)
#   {manifest}: a CSV manifest of pairs whose line 3 names a missing image
ROWS: list[tuple[str, str, str]] = [
    # synth
    ("synth-pairs-zero", "synth --out {out} --pairs 0", "--pairs"),
    ("synth-pairs-negative", "synth --out {out} --pairs -3", "--pairs"),
    ("synth-pairs-type", "synth --out {out} --pairs many", "--pairs"),
    ("synth-size-negative", "synth --out {out} --size -8", "--size"),
    ("synth-size-small", "synth --out {out} --size 16", "--size"),
    ("synth-seed-negative", "synth --out {out} --seed -1", "--seed"),
    ("synth-splits-two", "synth --out {out} --splits 0.5,0.5", "--splits"),
    ("synth-splits-type", "synth --out {out} --splits a,b,c", "--splits"),
    ("synth-splits-sum", "synth --out {out} --splits 0.5,0.5,0.5", "sum to 1"),
    ("synth-splits-negative", "synth --out {out} --splits 1.2,-0.1,-0.1", "--splits"),
    ("synth-out-file", "synth --out {file} --pairs 2", "a file"),
    ("synth-out-full", "synth --out {full} --pairs 2", "not empty"),
    ("synth-out-missing-option", "synth --pairs 2", "--out"),
    ("synth-dates-one", "synth --out {out} --dates 1", "--dates"),
    ("synth-dates-many", "synth --out {out} --dates 17", "--dates"),
    # data check / data vocab
    ("check-missing", "data check {missing}", "not found"),
    ("check-file", "data check {file}", "not a folder"),
    ("check-format", "data check {synth} --format pascal", "unknown format"),
    ("vocab-missing", "data vocab {missing} --out {out}", "not found"),
    ("vocab-out-folder", "data vocab {synth} --out {folder}", "is a folder"),
    ("vocab-min-freq-zero", "data vocab {synth} --out {out} --min-freq 0", "--min-freq"),
    # score
    ("score-missing", "score {missing} --data {synth}", "not found"),
    ("score-pred-folder", "score {folder} --data {synth}", "is a folder"),
    ("score-data-missing", "score {pred} --data {missing}", "not found"),
    ("score-data-file", "score {pred} --data {file}", "not a folder"),
    ("score-split", "score {pred} --data {synth} --split holdout", "unknown split"),
    # train
    ("train-no-data", "train --out {out}", "--data"),
    ("train-data-missing", "train --data {missing} --out {out}", "not found"),
    ("train-data-image", "train --data {a} --out {out}", "mix file"),
    ("train-out-file", "train --data {synth} --out {file}", "a file"),
    ("train-epochs-zero", "train --data {synth} --out {out} --epochs 0", "--epochs"),
    ("train-epochs-type", "train --data {synth} --out {out} --epochs two", "--epochs"),
    ("train-batch-zero", "train --data {synth} --out {out} --batch-size 0", "--batch-size"),
    ("train-lr-zero", "train --data {synth} --out {out} --lr 0", "--lr"),
    ("train-lr-negative", "train --data {synth} --out {out} --lr -0.1", "--lr"),
    (
        "train-backbone-lr-scale-negative",
        "train --data {synth} --out {out} --backbone-lr-scale -0.5",
        "--backbone-lr-scale",
    ),
    ("train-weight-decay-negative", "train --data {synth} --out {out} --weight-decay -1", "--weight-decay"),
    ("train-weight-decay-type", "train --data {synth} --out {out} --weight-decay heavy", "--weight-decay"),
    ("train-min-freq-zero", "train --data {synth} --out {out} --min-freq 0", "--min-freq"),
    ("train-image-size", "train --data {synth} --out {out} --image-size 7", "--image-size"),
    ("train-patience-negative", "train --data {synth} --out {out} --patience -1", "--patience"),
    ("train-tasks", "train --data {synth} --out {out} --tasks caption,colour", "colour"),
    ("train-weight-negative", "train --data {synth} --out {out} --mask-weight -1", "--mask-weight"),
    ("train-dice-weight-negative", "train --data {synth} --out {out} --dice-weight -1", "--dice-weight"),
    (
        "train-free-form-weight-negative",
        "train --data {synth} --out {out} --free-form-weight -0.1",
        "--free-form-weight",
    ),
    (
        "train-questions-per-pair-zero",
        "train --data {synth} --out {out} --questions-per-pair 0",
        "--questions-per-pair",
    ),
    ("train-vqa-weight-negative", "train --data {synth} --out {out} --vqa-weight -1", "--vqa-weight"),
    (
        "train-grounding-weight",
        "train --data {synth} --out {out} --grounding-weight -1",
        "--grounding-weight",
    ),
    (
        "train-retrieval-weight",
        "train --data {synth} --out {out} --retrieval-weight -1",
        "--retrieval-weight",
    ),
    ("train-question-encoder", "train --data {synth} --out {out} --question-encoder bert", "bert"),
    ("train-preset", "train --data {synth} --out {out} --preset huge", "huge"),
    ("train-init-missing", "train --data {synth} --out {out} --init {missing}", "not found"),
    ("train-freeze", "train --data {synth} --out {out} --freeze wings", "wings"),
    ("train-gsd-type", "train --data {synth} --out {out} --gsd fine", "--gsd"),
    ("train-gsd-negative", "train --data {synth} --out {out} --gsd -0.5", "--gsd"),
    ("train-workers-negative", "train --data {synth} --out {out} --num-workers -1", "--num-workers"),
    ("train-limit-zero", "train --data {synth} --out {out} --limit-pairs 0", "--limit-pairs"),
    ("train-devices-zero", "train --data {synth} --out {out} --devices 0", "--devices"),
    ("train-accelerator", "train --data {synth} --out {out} --accelerator toaster", "--accelerator"),
    ("train-seed-negative", "train --data {synth} --out {out} --seed -1", "--seed"),
    ("train-monitor", "train --data {synth} --out {out} --monitor val/accuracy", "val/accuracy"),
    ("train-config-missing", "train --config {missing}", "not found"),
    ("train-config-folder", "train --config {folder}", "not found"),
    ("train-resume-no-out", "train --resume", "--out"),
    ("train-resume-empty", "train --resume --out {folder}", "no training run"),
    ("train-llm-preset", "train --data {synth} --out {out} --llm tiny-llama", "--llm takes an LLM preset"),
    ("train-llm-missing", "train --data {synth} --out {out} --preset llm-tiny --llm {missing}", ".gguf"),
    # evaluate
    ("evaluate-precision", "evaluate default --data {synth} --precision fp8", "--precision"),
    ("evaluate-tta", "evaluate default --data {synth} --tta 3", "--tta"),
    ("evaluate-model-missing", "evaluate {missing} --data {synth}", "not found"),
    ("evaluate-model-file", "evaluate {file} --data {synth}", "{file}"),
    ("evaluate-data-missing", "evaluate default --data {missing}", "not found"),
    ("evaluate-split", "evaluate default --data {synth} --split holdout", "unknown split"),
    ("evaluate-beam-zero", "evaluate default --data {synth} --beam 0", "--beam"),
    ("evaluate-batch-zero", "evaluate default --data {synth} --batch-size 0", "--batch-size"),
    ("evaluate-length-penalty", "evaluate default --data {synth} --length-penalty -1", "--length-penalty"),
    ("evaluate-out-folder", "evaluate default --data {synth} --out {folder}", "is a folder"),
    ("evaluate-predictions-folder", "evaluate default --data {synth} --predictions {folder}", "is a folder"),
    ("evaluate-limit-zero", "evaluate default --data {synth} --limit 0", "--limit"),
    # describe
    ("describe-precision", "describe {a} {b} --precision double", "--precision"),
    ("describe-tta-stack", "describe {a} {b} {a} --tta 4", "--tta"),
    ("describe-gsd", "describe {a} {b} --gsd 0", "--gsd"),
    ("describe-gsd-stack", "describe {a} {b} {a} --gsd 10", "not to a ChangeLLM or a stack"),
    ("describe-one-missing", "describe {missing}", "not found"),
    ("describe-pair-missing", "describe {a} {missing}", "not found"),
    ("describe-stack-dates-count", "describe {a} {b} {a} --dates 2016,2018", "--dates has 2 dates for 3"),
    ("describe-stack-dates-pair", "describe {a} {b} --dates 2016,2018", "--dates orders 3 or more"),
    ("describe-stack-out", "describe {a} {b} {a} --out {out}", "a stack prints one"),
    ("describe-stack-beam", "describe {a} {b} {a} --beam 3", "--beam"),
    ("describe-stack-missing", "describe {a} {b} {missing}", "not found"),
    ("describe-folder-as-image", "describe {a} {folder}", "is a folder"),
    ("describe-folder-no-pairs", "describe {folder}", "A/"),
    ("describe-beam-zero", "describe {a} {b} --beam 0", "--beam"),
    ("describe-batch-zero", "describe {a} {b} --batch-size 0", "--batch-size"),
    ("describe-length-penalty", "describe {a} {b} --length-penalty -2", "--length-penalty"),
    ("describe-out-folder", "describe {synth}/images/test --out {folder}", "is a folder"),
    ("describe-model-missing", "describe {missing} {a} {b}", "not found"),
    ("describe-manifest-bad", "describe {manifest}", "line 3"),
    ("describe-manifest-suffix", "describe {file}", "manifest"),
    # detect
    ("detect-precision", "detect {a} {b} --out {out} --precision int8", "--precision"),
    ("detect-tta", "detect {a} {b} --out {out} --tta 0", "--tta"),
    ("detect-min-area", "detect {a} {b} --out {out} --min-area -1", "--min-area"),
    ("detect-beam", "detect {a} {b} --out {out} --beam 0", "--beam"),
    ("detect-gsd-zero", "detect {a} {b} --out {out} --gsd 0", "--gsd"),
    ("detect-gsd-type", "detect {a} {b} --out {out} --gsd fine", "--gsd"),
    ("detect-no-output", "detect {a} {b}", "--out"),
    ("detect-missing", "detect {a} {missing} --out {out}", "not found"),
    ("detect-one-image", "detect {a} --out {out}", "BEFORE AFTER"),
    ("detect-out-file", "detect {a} {b} --out {file}", "a file"),
    ("detect-out-full", "detect {a} {b} --out {full}", "not empty"),
    ("detect-overwrite-foreign", "detect {a} {b} --out {full} --overwrite", "did not write"),
    ("detect-batch-zero", "detect {a} {b} --out {out} --batch-size 0", "--batch-size"),
    ("detect-batch-type", "detect {a} {b} --out {out} --batch-size many", "--batch-size"),
    ("detect-folder-no-out", "detect {synth}/images/test", "--out"),
    ("detect-stack-no-out", "detect {a} {b} {a}", "--out DIR, --json"),
    ("detect-stack-date", "detect {a} {b} {a} --out {out} --dates 2016,20x8,2020", "not a date"),
    ("detect-stack-same-date", "detect {a} {b} {a} --out {out} --dates 2016,2020,2016", "same date"),
    ("detect-stack-gsd", "detect {a} {b} {a} --out {out} --gsd 0.5", "apply to pairs"),
    ("detect-stack-out-full", "detect {a} {b} {a} --out {full}", "not empty"),
    ("detect-folder-json", "detect {synth}/images/test --out {out} --json", "--json"),
    ("detect-folder-out-full", "detect {synth}/images/test --out {full}", "earlier run"),
    ("detect-folder-out-file", "detect {synth}/images/test --out {file}", "a file"),
    ("detect-manifest-bad", "detect {manifest} --out {out}", "line 3"),
    # ask
    ("ask-precision", "ask {a} {b} 'what changed?' --precision bf32", "--precision"),
    ("ask-tta", "ask {a} {b} 'what changed?' --tta 16", "--tta"),
    ("ask-no-question", "ask {a} {b}", "QUESTION"),
    ("ask-empty-question", "ask {a} {b} ' '", "question"),
    ("ask-min-area", "ask {a} {b} 'what changed?' --min-area -5", "--min-area"),
    ("ask-missing", "ask {missing} {b} 'what changed?'", "not found"),
    ("ask-out-full", "ask {a} {b} 'what changed?' --out {full}", "not empty"),
    ("ask-out-file", "ask {a} {b} 'what changed?' --out {file}", "a file"),
    ("ask-batch-zero", "ask {a} {b} 'what changed?' --batch-size 0", "--batch-size"),
    ("ask-folder-out-folder", "ask {synth}/images/test 'what changed?' --out {folder}", "is a folder"),
    ("ask-manifest-bad", "ask {manifest} 'what changed?' --out {out}", "line 3"),
    ("ask-stack-missing", "ask default {a} {b} {missing} 'when did it change?'", "not found"),
    ("ask-stack-dates", "ask {a} {b} {a} 'when?' --dates 2016,2018,2020,2022", "--dates has 4 dates for 3"),
    ("ask-stack-out-file", "ask {a} {b} {a} 'when?' --out {file}", "a file"),
    # scene
    ("scene-precision", "scene {a} {b} --out {out} --precision half", "--precision"),
    ("scene-tta", "scene {a} {b} --out {out} --tta 5", "--tta"),
    ("scene-missing", "scene {missing} {b} --out {out}", "not found"),
    ("scene-folder", "scene {folder} {b} --out {out}", "folder"),
    ("scene-tile", "scene {a} {b} --out {out} --tile 8", "--tile"),
    ("scene-overlap-negative", "scene {a} {b} --out {out} --overlap -1", "--overlap"),
    ("scene-overlap-large", "scene {a} {b} --out {out} --overlap 200", "--overlap"),
    ("scene-batch", "scene {a} {b} --out {out} --batch-size 0", "--batch-size"),
    ("scene-vector-format", "scene {a} {b} --out {out} --vector-format shp", "--vector-format"),
    ("scene-min-area", "scene {a} {b} --out {out} --min-area -1", "--min-area"),
    ("scene-max-captions", "scene {a} {b} --out {out} --max-captions -1", "--max-captions"),
    ("scene-beam", "scene {a} {b} --out {out} --beam 0", "--beam"),
    ("scene-device", "scene {a} {b} --out {out} --device toaster", "--device"),
    ("scene-gsd", "scene {a} {b} --out {out} --gsd -1", "--gsd"),
    ("scene-bands-two", "scene {a} {b} --out {out} --bands 1,2", "--bands"),
    ("scene-bands-type", "scene {a} {b} --out {out} --bands r,g,b", "--bands"),
    ("scene-bands-zero", "scene {a} {b} --out {out} --bands 0,1,2", "--bands"),
    ("scene-bands-range", "scene {a} {b} --out {out} --bands 1,2,9", "band"),
    ("scene-bands-b", "scene {a} {b} --out {out} --bands-b 1,2", "--bands-b"),
    ("scene-stretch", "scene {a} {b} --out {out} --stretch gamma", "--stretch"),
    ("scene-model-missing", "scene {a} {b} --out {out} --model {missing}", "not found"),
    ("scene-out-file", "scene {a} {b} --out {file}", "a file"),
    ("scene-out-full", "scene {a} {b} --out {full}", "not empty"),
    ("scene-one-file", "scene {a} --out {out}", "2 or more files"),
    ("scene-dates-count", "scene {a} {b} --out {out} --dates 2016", "--dates has 1 dates for 2 files"),
    ("scene-dates-type", "scene {a} {b} --out {out} --dates 2016,May", "--dates: 'May' is not a date"),
    ("scene-dates-order", "scene {a} {b} --out {out} --dates 2018,2016", "not after"),
    # index
    ("index-no-out", "index {synth}", "--out"),
    ("index-out-file", "index {synth} --out {file}", "a file"),
    ("index-out-full", "index {synth} --out {full}", "not an index"),
    ("index-missing", "index {missing} --out {out}", "not found"),
    ("index-one-image", "index {a} --out {out}", "neither a folder"),
    ("index-too-many", "index default {a} {b} {a} --out {out}", "SOURCE"),
    ("index-manifest-bad", "index {manifest} --out {out}", "line 3"),
    ("index-split", "index {synth} --out {out} --split holdout", "holdout"),
    ("index-format", "index {synth} --out {out} --format pascal", "unknown format"),
    ("index-batch-zero", "index {synth} --out {out} --batch-size 0", "--batch-size"),
    ("index-batch-type", "index {synth} --out {out} --batch-size many", "--batch-size"),
    ("index-precision", "index {synth} --out {out} --precision fp8", "--precision"),
    ("index-model-missing", "index {missing} {synth} --out {out}", "not found"),
    ("index-tile-folder", "index {synth} --out {out} --tile 64", "--tile"),
    ("index-tile-small", "index {a} {b} --out {out} --tile 8", "--tile"),
    ("index-tile-type", "index {a} {b} --out {out} --tile big", "--tile"),
    ("index-scene-split", "index {a} {b} --out {out} --split test", "--split"),
    ("index-scene-format", "index {a} {b} --out {out} --format folder", "--format"),
    ("index-scene-missing", "index {a} {missing} --out {out}", "not found"),
    ("index-clip-unknown", "index {synth} --out {out} --clip nosuch --clip-weights {file}", "unknown CLIP"),
    ("index-clip-no-weights", "index {synth} --out {out} --clip remoteclip-vit-b-32", "--clip-weights"),
    (
        "index-clip-weights-missing",
        "index {synth} --out {out} --clip remoteclip-vit-b-32 --clip-weights {missing}",
        "not found",
    ),
    ("index-clip-config-alone", "index {synth} --out {out} --clip-config {file}", "--clip NAME"),
    (
        "index-clip-and-model",
        "index default {synth} --out {out} --clip remoteclip-vit-b-32 --clip-weights {file}",
        "not both",
    ),
    # search
    ("search-missing", "search {missing} roads", "not found"),
    ("search-not-index", "search {folder} roads", "not a search index"),
    ("search-index-file", "search {file} roads", "not a folder"),
    ("search-no-query", "search {folder}", "'query'"),
    ("search-empty-query", "search {folder} ' '", "query is empty"),
    ("search-k-zero", "search {folder} roads --k 0", "--k"),
    ("search-k-type", "search {folder} roads --k many", "--k"),
    ("search-model-missing", "search {folder} roads --model {missing}", "not found"),
    ("search-geojson-folder", "search {folder} roads --geojson {folder}", "is a folder"),
    ("search-clip-weights-not-index", "search {folder} roads --clip-weights {file}", "not a search index"),
    # serve (every row fails before a socket is bound or a model loaded)
    ("serve-precision", "serve --precision fp64", "--precision"),
    ("serve-tta", "serve --tta -1", "--tta"),
    ("serve-port-zero", "serve --port 0", "--port"),
    ("serve-port-large", "serve --port 70000", "--port"),
    ("serve-port-type", "serve --port http", "--port"),
    ("serve-upload-zero", "serve --max-upload-mb 0", "--max-upload-mb"),
    ("serve-model-missing", "serve --model {missing}", "not found"),
    ("serve-llm-url", "serve --llm-url localhost:8080", "--llm-url"),
    ("serve-index-missing", "serve --index {missing}", "not found"),
    ("serve-index-not-index", "serve --index {folder}", "not a search index"),
    # chat
    ("chat-one-image", "chat {a}", "BEFORE AFTER"),
    ("chat-three-images", "chat {a} {b} {a}", "BEFORE AFTER"),
    ("chat-image-missing", "chat {a} {missing}", "not found"),
    ("chat-max-steps", "chat --max-steps 0", "--max-steps"),
    ("chat-out-file", "chat --out {file}", "is a file"),
    ("chat-gguf-missing", "chat --gguf {missing}", "not found"),
    ("chat-model-missing", "chat --model {missing}", "not found"),
    ("chat-llm-url", "chat --llm-url ftp://x", "--llm-url"),
    ("chat-index-missing", "chat --index {missing}", "not found"),
    # no such command / option
    ("unknown-command", "summarise {a} {b}", "summarise"),
    ("unknown-option", "describe {a} {b} --beams 3", "--beams"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, synth) -> dict[str, str]:
    root = tmp_path_factory.mktemp("options")
    test_a = sorted((synth / "images" / "test" / "A").iterdir())[0]
    text = root / "notes.txt"
    text.write_text("not an image\n")
    (root / "empty").mkdir()
    full = root / "full"
    full.mkdir()
    (full / "holiday.jpg").write_bytes(b"\xff\xd8\xff not changescope's")
    manifest = root / "pairs.csv"  # line 3 names an after image that does not exist
    manifest.write_text(f"before,after\n{test_a},{test_a}\n{test_a},nowhere.png\n")
    pred = root / "pred.jsonl"
    pred.write_text('{"id": "x", "caption": "no change"}\n')
    return {
        "synth": str(synth),
        "a": str(test_a),
        "b": str(synth / "images" / "test" / "B" / test_a.name),
        "file": str(text),
        "folder": str(root / "empty"),
        "full": str(full),
        "missing": str(root / "nowhere"),
        "pred": str(pred),
        "manifest": str(manifest),
    }


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("command, fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_option_is_one_line_error(command, fragment, paths, tmp_path, capsys):
    import shlex

    values = {**paths, "out": str(tmp_path / "out")}
    argv = [part.format(**values) for part in shlex.split(command)]
    fragment = fragment.format(**values)
    root = Path(paths["folder"]).parent
    before = _snapshot(root)
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code != 0, f"exit 0 for: {command}\n{captured.out}"
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists(), "a refused run left output behind"
    assert _snapshot(root) == before, "a refused run changed its inputs or the output folders"


def test_table_covers_every_option():
    """Each command's options appear in a row (or are listed here as taking any value)."""
    import typer.main

    from changescope.cli import app

    any_value = {
        "--help", "--json", "--format", "--split", "--meteor", "--no-meteor", "--host", "--llm-model",
        "--pretrained", "--no-pretrained", "--overwrite",
        "--cache-features", "--augment",  # train's on/off switches: any value is right
    }  # fmt: skip
    group = typer.main.get_command(app)
    commands = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer bundles its own click: not click.Group)
            commands += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
        else:
            commands.append((name, command))
    tried = " ".join(r[1] for r in ROWS)
    missing = []
    for name, command in commands:
        rows = " ".join(r[1] for r in ROWS if r[1].startswith(name + " ") or r[1] == name)
        if command.params and not rows and name not in ("models", "version"):
            missing.append(name)
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt not in any_value and opt not in rows:
                    missing.append(f"{name} {opt}")
    assert not missing, f"options without a row in the table: {missing}"
    assert tried


# -- fuzz: random values for random options, with one input that makes the run fail ---------------------

#: per command, arguments that make it fail after its options are parsed (so no run starts: no server
#: binds, no training begins), and that every refusal must still be one line
POISON = {
    "synth": ["--out", "{file}"],
    "data check": ["{missing}"],
    "data vocab": ["{missing}", "--out", "{out}"],
    "score": ["{missing}", "--data", "{missing}"],
    "train": ["--data", "{missing}", "--out", "{out}"],
    "evaluate": ["{missing}", "--data", "{missing}"],
    "describe": ["{missing}", "{missing}"],
    "detect": ["{missing}", "{missing}", "--out", "{out}"],
    "ask": ["{missing}", "{missing}", "what changed?"],
    "scene": ["{missing}", "{missing}", "--out", "{out}"],
    "index": ["{missing}", "--out", "{out}"],
    "search": ["{missing}", "roads"],
    "serve": ["--model", "{missing}"],
    "chat": ["--model", "{missing}"],
}


def _commands():
    import typer.main

    from changescope.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        # typer bundles its own click: test for a group by what it has, not by click's class
        subs = command.commands.items() if hasattr(command, "commands") else [(None, command)]
        for sub, cmd in subs:
            full = name if sub is None else f"{name} {sub}"
            if full in POISON:
                yield full, cmd


def test_fuzz_cli_options_never_trace_back(paths, tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.one_of(
        st.integers(-(10**9), 10**9).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
        ),
        st.sampled_from(["", "0", "-1", "1,2", "a,b,c", "0,0,0", "1e309", "nan", "default", "cpu", "cuda"]),
    )
    commands = list(_commands())
    assert {name for name, _ in commands} == set(POISON)

    @st.composite
    def invocation(draw):
        name, command = draw(st.sampled_from(commands))
        options = [p for p in command.params if p.param_type_name == "option" and p.opts[0] != "--help"]
        argv = name.split()
        for param in draw(st.lists(st.sampled_from(options), max_size=4, unique_by=lambda p: p.name)):
            if param.is_flag:
                argv.append(draw(st.sampled_from(param.opts + list(param.secondary_opts))))
            else:
                argv += [param.opts[0], draw(values)]
        return argv + [part.format(**paths, out=str(tmp_path / "out")) for part in POISON[name]]

    # derandomized: the default run tries the same 150 cases each time (CI must not fail by chance)
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(argv=invocation())
    def check(argv):
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        lines = err.getvalue().strip().splitlines()
        assert code != 0, argv
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err.getvalue())
        assert not (tmp_path / "out").exists(), argv

    check()
