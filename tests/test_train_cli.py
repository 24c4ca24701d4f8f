"""Training, resuming, evaluating and describing through the real `changescope` command.

A tiny architecture (set through the YAML config's `overrides`) on 64 SynthChange pairs at 64 px keeps this
in the fast suite; the shipped model's training command is the same with the `lite` preset as it is.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

TINY_YAML = """\
preset: lite
epochs: 1
batch_size: 16
min_freq: 1
image_size: 64
pretrained: false
seed: 3
overrides:
  encoder_kwargs: {d_model: 32, num_layers: 1, num_heads: 4}
  decoder_kwargs: {d_model: 32, num_layers: 1, num_heads: 4, ffn_dim: 64, max_len: 24}
"""


def cli(*args, check=True, **kwargs):
    proc = subprocess.run(
        [sys.executable, "-m", "changescope", *map(str, args)], capture_output=True, text=True, **kwargs
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def test_train_one_epoch_then_evaluate_and_describe(tmp_path, synth, config):
    out = tmp_path / "run"
    cli("train", "--config", config, "--data", synth, "--out", out)
    model = out / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "config.json",
        "model.safetensors",
        "training.json",
        "vocab.json",
    ]
    assert json.loads((model / "config.json").read_text())["image_size"] == 64
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0] and "val/CIDEr-D" in rows[0]

    result = json.loads(
        cli("evaluate", out, "--data", synth, "--split", "test", "--json", "--no-meteor").stdout
    )
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D", "S*m", "no_change_accuracy"):
        assert key in result
    assert result["decoding"]["beam_size"] == 1 and result["seed"] == 3 and len(result["vocab_sha256"]) == 64

    a, b = synth / "images/test/A/test_000000.png", synth / "images/test/B/test_000000.png"
    one = json.loads(cli("describe", model, a, b, "--json", "--beam", "3").stdout)
    assert one["id"] == "test_000000" and isinstance(one["caption"], str)
    assert "<" not in one["caption"]  # never a special token

    jsonl = tmp_path / "captions.jsonl"
    cli("describe", model, synth / "images" / "test", "--out", jsonl)
    captions = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(captions) == len(list((synth / "images/test/A").iterdir()))

    # a run directory is never trained over by accident
    again = cli("train", "--config", config, "--data", synth, "--out", out, check=False)
    assert again.returncode == 1 and "--resume" in again.stderr


def test_killed_run_resumes_and_loses_at_most_the_current_epoch(tmp_path, synth, config):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "changescope",
        "train",
        "--config",
        str(config),
        "--data",
        str(synth),
        "--out",
        str(out),
        "--epochs",
        "4",
        "--patience",
        "10",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert last.exists(), "no checkpoint was written"
    os.kill(proc.pid, signal.SIGKILL)  # mid-run, as a power cut would
    proc.wait()
    before = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (out / "model" / "config.json").is_file()  # the best model so far survived the kill

    summary = json.loads(cli("train", "--out", out, "--resume").stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    # epochs that finished before the kill are kept, not re-run (the last one may be, if the kill fell
    # between its metrics and its checkpoint)
    assert rows[: len(before) - 1] == before[:-1]
    assert summary["epochs_run"] == 4

    bad = cli("train", "--out", tmp_path / "elsewhere", "--resume", check=False)
    assert bad.returncode == 1 and "run.json not found" in bad.stderr


def test_bad_training_input_is_one_line(tmp_path, synth):
    broken = tmp_path / "bad.yaml"
    broken.write_text("epochs: [1\n")
    proc = cli("train", "--config", broken, "--data", synth, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "bad.yaml: invalid YAML" in proc.stderr and "Traceback" not in proc.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epoks: 3\n")
    proc = cli("train", "--config", unknown, "--data", synth, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "unknown training options ['epoks']" in proc.stderr
    proc = cli("train", "--preset", "nope", "--data", synth, "--out", tmp_path / "o2", check=False)
    assert proc.returncode == 1 and "unknown preset 'nope'" in proc.stderr
    assert not (tmp_path / "o2" / "model").exists()


def test_ddp_training_on_two_cpu_processes(tmp_path, synth, config):
    """Real multi-process training: Lightning's DDP launcher, gloo, two CPU processes, one shard each."""
    from changescope.data.readers import open_dataset

    out = tmp_path / "ddp"
    proc = cli("train", "--config", config, "--data", synth, "--out", out, "--devices", "2", "--epochs", "2")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    summary = json.loads(lines[0])
    assert summary["epochs_run"] == 2 and (out / "model" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_pairs = len(open_dataset(synth, "train"))
    per_rank = math.ceil(train_pairs / 2)  # DistributedSampler pads the shards to equal size
    steps_per_epoch = math.ceil(per_rank / 16)
    assert [r["step"] for r in rows] == [steps_per_epoch, 2 * steps_per_epoch]
    assert "val/CIDEr-D" in rows[-1] and "val/mIoU_no_bg" in rows[-1]


def test_every_train_option_is_a_flag_with_its_help():
    """The `train` command's flags are made from TrainOptions: each field (but the YAML-only ones) is one,
    with its help and its default."""
    from dataclasses import fields

    from changescope.tasks.train_options import TrainOptions, cli_flag

    proc = cli("train", "--help", env={**os.environ, "COLUMNS": "200"})
    text = " ".join(proc.stdout.replace("│", " ").split())  # rich's box and line breaks, undone
    shown = 0
    for f in fields(TrainOptions):
        flag, help = cli_flag(f), " ".join(f.metadata["help"].split())
        if not f.metadata["cli"]:
            assert flag not in text and "YAML only" in help, f.name
            continue
        assert f" {flag} " in text, flag
        if f.type.startswith("bool"):
            assert f" --no-{flag[2:]} " in text, flag
        assert help in text, flag
        if f.default not in (None, ""):
            value = f.default
            if isinstance(value, bool):  # shown as the switch: [default: (augment)] or (no-augment)
                value = flag[2:] if value else f"no-{flag[2:]}"
            assert f"{help} [default: ({value})]" in text, flag
            shown += 1
    assert shown >= 20 and " --config " in text and " --resume " in text


def test_train_flags_win_over_the_yaml_and_the_yaml_fills_the_rest(tmp_path, synth, monkeypatch, capsys):
    from dataclasses import asdict

    import changescope.tasks.training as training
    from changescope.cli import main

    seen = []
    monkeypatch.setattr(training, "train", lambda options, resume=False: seen.append((options, resume)))
    config = tmp_path / "c.yaml"
    config.write_text(
        "epochs: 3\nbatch-size: 4\ngsd: [1.0]\naugment: false\ndice_weight: 2.0\n"
        "overrides: {encoder_kwargs: {d_model: 32}}\n"
    )
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--data", str(synth), "--out", str(out)]
    assert main([*argv, "--epochs", "7", "--gsd", "0.5,10", "--augment", "--weight-decay", "0"]) == 0
    options, resume = seen.pop()
    flagged = {"epochs": 7, "gsd": ["0.5", "10"], "augment": True, "weight_decay": 0.0, "data": str(synth)}
    from_yaml = {"batch_size": 4, "dice_weight": 2.0, "overrides": {"encoder_kwargs": {"d_model": 32}}}
    defaults = {"lr": 2e-4, "questions_per_pair": 3, "cache_features": True, "preset": "lite"}
    expected = {**flagged, **from_yaml, **defaults}
    assert not resume and {k: v for k, v in asdict(options).items() if k in expected} == expected
    assert main(argv) == 0  # no flags: the YAML's values
    options, _ = seen.pop()
    expected = {"epochs": 3, "gsd": [1.0], "augment": False, "weight_decay": 0.01, "batch_size": 4}
    assert {k: v for k, v in asdict(options).items() if k in expected} == expected
    capsys.readouterr()

    # the same through the real validation (no run starts): a flag hides a bad YAML value, and a bad YAML
    # value that no flag replaces is refused
    monkeypatch.undo()
    config.write_text("preset: nope\naugment: 'yes'\nepochs: 0\n")
    assert main([*argv, "--preset", "lite", "--no-augment"]) == 1
    assert "--epochs must be >= 1, got 0" in capsys.readouterr().err
    assert main([*argv, "--preset", "lite"]) == 1
    assert "--augment takes true or false, got 'yes'" in capsys.readouterr().err
    assert main([*argv, "--no-augment"]) == 1
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_init_from_the_default_builds_its_backbone_from_the_package(tmp_path):
    """The shipped default keeps its frozen backbone in the weights package, not in model.safetensors:
    fine-tuning from it must start from those ImageNet weights, not from a random backbone."""
    import torch

    from changescope.models.change_model import ChangeModel
    from changescope.models.hub import from_pretrained
    from changescope.tasks.inference import resolve_model
    from changescope.tasks.training import TrainOptions, _keep_init_heads, build_config, load_init_weights

    options = TrainOptions(data=str(tmp_path), out=str(tmp_path / "run"), init="default", tasks="mask")
    config, _ = _keep_init_heads(options, build_config("lite", 0), None, ("mask",))
    assert config.backbone_pretrained
    model = ChangeModel(config)
    counts = load_init_weights(model, "default")
    assert counts["new"] == 0 and counts["packaged"] > 0
    shipped, _ = from_pretrained(resolve_model("default"))
    mine = model.state_dict()
    backbone = [name for name in shipped.state_dict() if name.startswith("backbone.")]
    assert backbone and all(name in mine for name in backbone)
    for name, tensor in shipped.state_dict().items():
        if name.startswith(("backbone.", "encoder.")):
            torch.testing.assert_close(mine[name], tensor, msg=name)

    config.backbone_pretrained = False  # a random backbone with weights that expect the packaged one
    with pytest.raises(Exception, match="random one"):
        load_init_weights(ChangeModel(config), "default")


def test_a_retrieval_head_is_added_with_every_other_tensor_fixed(tmp_path, synth, config):
    """``--init MODEL --tasks retrieval`` (how the shipped default got its head): only the new head trains."""
    from safetensors.torch import load_file

    cli("train", "--config", config, "--data", synth, "--out", tmp_path / "base", "--tasks", "caption,mask")
    base = tmp_path / "base" / "model"
    out = tmp_path / "search"
    run = cli(
        "train", "--config", config, "--data", synth, "--out", out, "--init", base, "--tasks", "retrieval"
    )
    assert "kept fixed: encoder, decoder, mask_head, change_head" in run.stdout
    old, new = load_file(str(base / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    for name in old:  # batch-norm statistics included
        assert name in new and bool((new[name] == old[name]).all()), name
    added = {name.split(".")[0] for name in set(new) - set(old)}
    assert added == {"retrieval_head"}
    assert json.loads((out / "model" / "config.json").read_text())["retrieval_dim"] > 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= row["val/retrieval_R@5"] <= 1
