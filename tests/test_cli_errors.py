"""The CLI's error boundary: every mistake a user can make ends in one message naming it, exit code 2 and no
traceback (`--debug` adds the traceback); settings are checked before any data is read; model sizes before
anything is allocated; checkpoints of every pickle protocol are read as data only; atomic writes get the mode
`open()` would give."""

import contextlib
import json
import logging
import os
import pickle
import resource
import shutil
import signal
import stat
import struct
import subprocess
import zlib

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.hub import CheckpointError, from_pretrained
from vitkit.validate import ModelConfigError

TINY = "vit_micro_patch2_8"
TRAIN_FAST = [
    "--sched.epochs=1",
    "--data.train_fraction=0.02",
    "--run.batch_size=16",
    "--run.progress=false",
    "--run.tensorboard=false",
]


def run_cli(capsys, *argv):
    """(exit code, stderr) of `vitkit ARGV` run in this process."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_user_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err, err
    assert "weights_only=False" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


# ------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "setting, needle",
    [
        ("--sched.epochs=0", "--sched.epochs=0 is out of range: it must be at least 1"),
        ("--sched.warmup_epochs=-1", "--sched.warmup_epochs=-1.0 is out of range"),
        ("--run.batch_size=0", "--run.batch_size=0 is out of range"),
        ("--optim.accum_steps=0", "--optim.accum_steps=0 is out of range"),
        ("--run.ema_decay=2", "--run.ema_decay=2.0 is out of range: it must be in [0, 1)"),
        ("--optim.lr=.nan", "--optim.lr=nan is out of range"),
        ("--optim.lr=-1e-3", "--optim.lr=-0.001 is out of range"),
        ("--optim.lr=[", "is not plain YAML"),
        ("--model.overrides.depth=-1", "depth = -1 must be at least 1"),
        ("--model.overrides.num_heads=0", "num_heads = 0 must be at least 1"),
        ("--model.overrides.num_heads=3", "num_heads = 3 with embed_dim = 64: embed_dim is not divisible by num_heads"),
        ("--model.overrides.patch_size=0", "patch_size = 0 must be at least 1"),
        ("--model.overrides.embed_dim=1000000000", "embed_dim = 1000000000 is over vitkit's limit"),
        (
            "--model.overrides.dept=3",
            "--model.overrides.dept: vit_micro_patch2_8 (ViTConfig) has no field 'dept' (did you mean 'depth'?)",
        ),
        ("--model.overrides.img_size=16", "--model.overrides.img_size: the image size comes from the dataset"),
        ("--model.overrides.qkv_bias=maybe", "qkv_bias = 'maybe' must be true or false"),
        ("--model.overrides.mlp_ratio=[4]", "mlp_ratio = [4] must be a number"),
        ("--model.overrides.hybrid_layers=3", "hybrid_layers = 3 must be a list of integers or null"),
        ("--data.name=mnsit", "--data.name='mnsit' is not a dataset vitkit reads; known: digits, mnist"),
        ("--distill.teacher=/no/such/teacher", "--distill.teacher=/no/such/teacher does not exist"),
        ("--optim.name=adam", "--optim.name='adam' is out of range: it must be one of adamw, sgd"),
    ],
)
def test_bad_settings_fail_before_any_data_is_read(capsys, tmp_path, setting, needle):
    # data_dir names a folder that does not exist: reaching the data would be a different error
    code, err = run_cli(capsys, "train", "--data.name=folder", f"--data.data_dir={tmp_path / 'none'}", setting)
    assert_user_error(code, err, needle)
    assert err.count("error:") == 1


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["predict", "m", "a.png", "--top-k", "0"], "argument --top-k: 0 is out of range: it must be >= 1"),
        (["calibrate", "m", "--budget", "2"], "argument --budget: 2 is out of range: it must be in (0, 1]"),
        (["inspect", "m", "--out", "o", "--discard-ratio", "1"], "argument --discard-ratio: 1 is out of range"),
    ],
)
def test_bad_flags_are_usage_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle in err and "Traceback" not in err


def test_debug_shows_the_traceback(capsys):
    code, err = run_cli(capsys, "--debug", "train", "--sched.epochs=0")
    assert code == 2 and "Traceback" in err and "--sched.epochs=0 is out of range" in err
    code, err = run_cli(capsys, "train", "--sched.epochs=0", "--debug")  # after the command too
    assert code == 2 and "Traceback" in err


def test_a_bug_still_shows_its_traceback(monkeypatch, tmp_path):
    # an error vitkit does not expect is not passed off as the user's mistake: it propagates (Python prints it)
    import vitkit.cli.models
    from vitkit.cli import user_error_message

    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(vitkit.cli.models, "cmd_info", broken)
    with pytest.raises(KeyError):
        main(["info", TINY])
    assert user_error_message(TypeError("unsupported operand")) is None
    assert user_error_message(ZeroDivisionError("division by zero")) is None
    assert user_error_message(ImportError("cannot import name 'x'", name="vitkit.train.engine")) is None
    assert user_error_message(RuntimeError("a tensor shape mismatch deep in torch")) is None  # not vitkit's raise
    model = vitkit.create_model(TINY)  # a torch operator failing on a line of vitkit's is a bug too
    model.pos_embed = torch.nn.Parameter(torch.zeros(1, 3, model.pos_embed.shape[-1]))
    with pytest.raises(RuntimeError) as info:
        model(torch.randn(1, model.config.in_chans, 8, 8))
    assert info.traceback[-1].path.name == "vit.py" and user_error_message(info.value) is None
    from vitkit.train import TrainingDiverged

    with pytest.raises(TrainingDiverged) as info:  # raised by vitkit on purpose: a message
        vitkit.train.train(
            vitkit.train.apply_overrides(
                vitkit.train.TrainConfig(),
                [
                    "--optim.lr=1e30",
                    "--sched.epochs=1",
                    "--data.train_fraction=0.1",
                    "--run.progress=false",
                    "--run.tensorboard=false",
                    f"--run.out={tmp_path / 'run'}",
                ],
            )
        )
    assert user_error_message(info.value).startswith("the loss became")
    assert user_error_message(ValueError("bad value")) == "bad value"
    with pytest.raises(RuntimeError) as info:  # more than any address space: torch's CPU allocator refuses
        torch.empty(2**50, dtype=torch.uint8)
    assert user_error_message(info.value).startswith("out of memory (")
    # create_model's unknown argument is a TypeError as timm's, and still the user's mistake
    with pytest.raises(TypeError) as info:
        vitkit.create_model(TINY, dept=3)
    assert "unexpected keyword argument(s) ['dept']" in user_error_message(info.value)
    assert "pip install scikit-learn" in user_error_message(ModuleNotFoundError("No module", name="sklearn"))


def test_recipe_with_a_python_tag_is_refused(capsys, tmp_path):
    marker = tmp_path / "ran"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"sched:\n  epochs: !!python/object/apply:os.mkdir ['{marker}']\n")
    code, err = run_cli(capsys, "train", "--recipe", recipe)
    assert_user_error(code, err, f"recipe {recipe} is not a plain YAML file", "!!python")
    assert not marker.exists()
    recipe.write_text("sched:\n  epochs: 0\n")
    code, err = run_cli(capsys, "train", "--recipe", recipe)
    assert_user_error(code, err, f"recipe {recipe}: --sched.epochs=0 is out of range")


def test_help_lists_every_setting(capsys):
    from vitkit.train.config import TrainConfig
    from vitkit.train.pretrain import PretrainConfig

    for command, cfg in (("train", TrainConfig()), ("pretrain", PretrainConfig())):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps nothing in the epilog; join anyway
        for section in vars(cfg):
            for name in vars(getattr(cfg, section)):
                entry = f"--{section}.{name} ("
                assert entry in out, entry
                described = out.split(entry, 1)[1].split(" --", 1)[0]
                assert "default" in described and described.split("):", 1)[1].strip(), entry  # a description
    assert "--sched.epochs (int, default 20)" in out  # pretrain's own defaults


# ------------------------------------------------------------------------------------ data files
def _cifar_dir(tmp_path, content: bytes):
    d = tmp_path / "cifar" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(content)
    return d.parent


def test_malicious_and_truncated_data_pickles(capsys, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    data = _cifar_dir(tmp_path / "a", pickle.dumps({"data": Evil()}, protocol=2))
    code, err = run_cli(capsys, "train", "--data.name=cifar10", f"--data.data_dir={data}", "--out", tmp_path / "r1")
    assert_user_error(code, err, "refusing to load", "data_batch_1", "mkdir")
    assert not marker.exists()
    data = _cifar_dir(tmp_path / "b", pickle.dumps({"data": list(range(1000))}, protocol=2)[:100])
    code, err = run_cli(capsys, "train", "--data.name=cifar10", f"--data.data_dir={data}", "--out", tmp_path / "r2")
    assert_user_error(code, err, "data_batch_1", "truncated or corrupt")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (Pillow reads the size before decoding any pixel)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m"
    vitkit.create_model(TINY).save_pretrained(path)
    return path


def test_decompression_bomb_in_predict(capsys, tmp_path, model_dir):
    pytest.importorskip("PIL")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000))
    code, err = run_cli(capsys, "predict", model_dir, bomb)
    assert_user_error(code, err, f"{bomb} is refused", "decompression bomb")


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_checkpoints_of_every_pickle_protocol_load(tmp_path, protocol):
    model = vitkit.create_model(TINY)
    torch.nn.init.normal_(model.head.weight)
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path, pickle_protocol=protocol)
    loaded = vitkit.create_model(TINY, pretrained=path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_checkpoint_is_refused_at_every_protocol(tmp_path, protocol):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path, pickle_protocol=protocol)
    with pytest.raises(CheckpointError, match="refusing to load .*could run code") as info:
        vitkit.create_model(TINY, pretrained=path)
    assert not marker.exists() and "weights_only=False" not in str(info.value)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(vitkit.create_model(TINY).state_dict(), path, pickle_protocol=4)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        vitkit.create_model(TINY, pretrained=path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One real `vitkit train` run (tiny: a fraction of digits, one epoch) with its checkpoint."""
    pytest.importorskip("sklearn")
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(run), *TRAIN_FAST]) == 0
    return run


@pytest.mark.parametrize("damage", ["malicious", "truncated", "truncated behind the marker's back"])
def test_damaged_state_on_resume(capsys, tmp_path, trained_run, damage):
    """A state.pt that is a malicious pickle, or truncated (with the checkpoint's marker listing the new size, so
    that the reader sees it), is refused by the reader; truncated under a marker that lists its size when written
    (a disk error), the checkpoint is called damaged. Nothing runs, and the message never suggests
    weights_only=False."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = next(run.rglob("state.pt"))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    if damage == "malicious":
        torch.save({"optimizer": Evil()}, state)
    else:
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    if damage != "truncated behind the marker's back":
        listed = json.loads((state.parent / "complete.json").read_text())
        listed["files"][state.name] = state.stat().st_size
        (state.parent / "complete.json").write_text(json.dumps(listed))
    capsys.readouterr()
    code, err = run_cli(capsys, "train", "--out", run, "--resume", *TRAIN_FAST)
    needle = {
        "malicious": "refusing to load",
        "truncated": "truncated, corrupt",
        "truncated behind the marker's back": f"state.pt has {state.stat().st_size} bytes where complete.json lists",
    }[damage]
    assert_user_error(code, err, str(state), needle)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ model configs
def _hf_vit_dir(tmp_path, **config):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
        num_labels=5,
    )
    model = transformers.ViTForImageClassification(cfg)
    model.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    values = json.loads(path.read_text())
    values.update(config)
    path.write_text(json.dumps(values))
    return tmp_path / "hf"


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("hidden_size", 10**9, "hidden_size = 1000000000 must be at most 65,536"),
        ("num_hidden_layers", 10**6, "num_hidden_layers = 1000000 must be at most 1,024"),
        ("num_attention_heads", 0, "num_attention_heads = 0 must be at least 1"),
        ("patch_size", 0, "patch_size = 0 must be at least 1"),
        ("hidden_size", "768", "hidden_size = '768' must be an integer"),
    ],
)
def test_hf_config_sizes_are_checked_before_building(capsys, tmp_path, field, value, needle):
    directory = _hf_vit_dir(tmp_path, **{field: value})
    with pytest.raises(ModelConfigError, match=needle.replace("(", r"\(")) as info:
        from_pretrained(directory)
    # raised while reading config.json: no model constructor ran
    frames = [(entry.path.name, entry.name) for entry in info.traceback]
    assert ("hf.py", "config_from_hf") in frames and all(name != "__init__" for _, name in frames)
    image = tmp_path / "a.png"
    image.write_bytes(_png_header(16, 16))
    code, err = run_cli(capsys, "predict", directory, image)
    assert_user_error(code, err, needle)


def test_model_config_implied_size_is_capped(tmp_path):
    with pytest.raises(ModelConfigError, match="implies about .* parameters"):
        vitkit.create_model(TINY, embed_dim=60_000, depth=1000)
    # a vitkit config.json with a bad field fails the same way
    vitkit.create_model(TINY).save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["depth"] = -1
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelConfigError, match="depth = -1 must be at least 1"):
        from_pretrained(tmp_path / "m")


def test_every_registered_model_passes_the_checks():
    from vitkit.models import FAMILIES
    from vitkit.registry import get_model_spec
    from vitkit.validate import check_model_config

    for name in vitkit.list_models():
        spec = get_model_spec(name)
        check_model_config(dict(spec.config), source=name, config_class=FAMILIES[spec.family].config_class)


def test_hf_labels_disagreeing_with_the_weights_are_refused(capsys, tmp_path):
    directory = _hf_vit_dir(
        tmp_path, id2label={str(i): c for i, c in enumerate("abc")}, label2id={c: i for i, c in enumerate("abc")}
    )
    with pytest.raises(ModelConfigError, match="describes 3 classes .* has 5 outputs: the weights are the truth"):
        from_pretrained(directory)
    assert from_pretrained(directory, num_classes=3).head.out_features == 3  # asked for: a new head
    image = tmp_path / "a.png"
    image.write_bytes(_png_header(16, 16))
    code, err = run_cli(capsys, "predict", directory, image)
    assert_user_error(code, err, "fix id2label")


# ------------------------------------------------------------------------------------ files written
@contextlib.contextmanager
def unwritable(d):
    """No file can be created in folder `d`: mode 0555, or for root (whom modes do not stop) the immutable flag."""
    d.chmod(0o555)
    immutable = False
    try:
        (d / "probe").touch()
    except OSError:
        pass
    else:
        (d / "probe").unlink()
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode:
            d.chmod(0o755)
            pytest.skip("running as root without chattr: no folder is unwritable")
        immutable = True
    try:
        yield d
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(d)], check=True)
        d.chmod(0o755)


@pytest.fixture
def unwritable_dir(tmp_path):
    d = tmp_path / "readonly"
    d.mkdir()
    with unwritable(d):
        yield d


def test_export_to_an_unwritable_folder(capsys, unwritable_dir):
    pytest.importorskip("onnxscript")
    code, err = run_cli(capsys, "export", TINY, "--out", unwritable_dir / "m.onnx")
    assert_user_error(code, err, f"{unwritable_dir / 'm.onnx'}:", "choose another --out")


def test_export_refuses_an_opset_it_cannot_write(capsys, tmp_path):
    pytest.importorskip("onnxscript")
    code, err = run_cli(capsys, "export", TINY, "--out", tmp_path / "m.onnx", "--opset", "3", "--no-check")
    assert_user_error(code, err, "cannot write this model in opset 3", "nothing was written")
    assert not list(tmp_path.iterdir())
    code, err = run_cli(capsys, "export", TINY, "--out", tmp_path / "m.onnx", "--opset", "1000")
    assert_user_error(code, err, "ONNX opset 1000 does not exist")


def test_eval_in_a_read_only_model_folder(capsys, caplog, tmp_path, trained_run):
    # the numbers stand without the confusion-matrix figure: a warning, not an error
    model = tmp_path / "model"
    shutil.copytree(trained_run / "model", model)
    with unwritable(model), caplog.at_level(logging.WARNING, logger="vitkit"):
        assert main(["eval", str(model)]) == 0
    captured = capsys.readouterr()
    assert "top-1" in captured.out and "Traceback" not in captured.err
    assert "could not write the confusion matrix" in caplog.text and not list(model.glob("*.png"))


def test_full_disk_during_training(capsys, tmp_path):
    """A file-size limit makes every write past 64 KiB fail as a full disk does (EFBIG instead of ENOSPC)."""
    pytest.importorskip("sklearn")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        code, err = run_cli(capsys, "train", "--out", tmp_path / "run", *TRAIN_FAST)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert_user_error(code, err, "File too large")
    assert not [p for p in (tmp_path / "run").rglob("*.tmp")]  # no half file left behind


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        vitkit.create_model(TINY).save_pretrained(tmp_path / "m")
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == expected, name


def test_a_full_disk_while_saving_names_the_file(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError) as info:  # safetensors' SafetensorError, as an OSError naming the file
            vitkit.create_model(TINY).save_pretrained(tmp_path / "m")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert info.value.errno == 27 and info.value.filename == str(tmp_path / "m" / "model.safetensors")
    assert list((tmp_path / "m").iterdir()) == []  # no half file


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("num_heads", 0, "num_heads = 0 must be at least 1"),
        ("patch_size", 0, "patch_size = 0 must be at least 1"),
        ("depth", -1, "depth = -1 must be at least 1"),
        ("patch_size", 16, "patch_size = 16 is larger than img_size = 8"),
        ("class_token", 7, "class_token = 7 must be true or false"),
        ("img_size", [8, 8, 8], r"img_size = \[8, 8, 8\] must be an integer or a list of 2 integers"),
    ],
)
def test_create_model_checks_before_building(field, value, needle):
    with pytest.raises(ModelConfigError, match=needle):
        vitkit.create_model(TINY, **{field: value})


def test_from_pretrained_checks_a_vitkit_config_before_building(tmp_path):
    vitkit.create_model(TINY).save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["num_heads"] = 0  # the config's own check would divide by it
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelConfigError, match="num_heads = 0 must be at least 1"):
        from_pretrained(tmp_path / "m")


def test_an_interrupted_run_names_the_command_that_continues_it(monkeypatch, capsys):
    import vitkit.cli.pretrain
    import vitkit.cli.train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(vitkit.cli.train, "cmd_train", interrupted)
    monkeypatch.setattr(vitkit.cli.pretrain, "cmd_pretrain", interrupted)
    assert main(["train", "--out", "runs/x"]) == 130
    assert capsys.readouterr().err.strip() == (
        "vitkit train: interrupted; continue it from its last checkpoint with `vitkit train --out runs/x --resume`"
    )
    assert main(["pretrain", "mae", "--run.out=runs/m"]) == 130
    assert "with `vitkit pretrain mae --out runs/m --resume`" in capsys.readouterr().err
    assert main(["train"]) == 130
    assert "`vitkit train --out RUN_DIR --resume`" in capsys.readouterr().err
