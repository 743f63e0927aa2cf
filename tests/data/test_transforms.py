"""The preprocessing contract: timm's data config and evaluation transform, one image decoder, and the
same input tensor for a file in training's evaluation, `vitkit eval` and `vitkit predict`."""

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import load_dataset
from vitkit.data.transforms import create_transform, load_image, resolve_data_config
from vitkit.models._base import VitkitModel
from vitkit.registry import create_model

timm_data = pytest.importorskip("timm.data")


def _rgb(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------ timm equality
@pytest.mark.parametrize("wh", [(50, 37), (29, 64), (40, 40)])
def test_create_transform_gives_timm_eval_tensors(wh):
    im = _rgb(*wh, seed=sum(wh))
    grid = itertools.product(
        [(3, 32, 32), (3, 24, 40), 28],
        [None, 1.0, 0.95, 1.2],
        [None, "center", "squash", "border"],
        ["bilinear", "bicubic", "nearest", "lanczos"],
    )
    for size, crop_pct, crop_mode, interpolation in grid:
        kw = dict(
            input_size=size,
            crop_pct=crop_pct,
            crop_mode=crop_mode,
            interpolation=interpolation,
            mean=(0.4, 0.5, 0.6),
            std=(0.2, 0.3, 0.25),
        )
        expected, got = timm_data.create_transform(**kw)(im), create_transform(**kw)(im)
        assert got.dtype == expected.dtype and got.shape == expected.shape, kw
        assert torch.equal(got, expected), kw


def test_create_transform_greyscale_uint8_and_no_aug_as_timm():
    grey = _rgb(45, 31, 1).convert("L")
    for crop_mode in ("center", "squash", "border"):
        kw = dict(
            input_size=(1, 20, 20), crop_pct=0.9, crop_mode=crop_mode, interpolation="bicubic", mean=(0.3,), std=(0.2,)
        )
        assert torch.equal(create_transform(**kw)(grey), timm_data.create_transform(**kw)(grey))
        raw = create_transform(**kw, normalize=False)(grey)  # timm: uint8 (C, H, W), not scaled
        assert raw.dtype == torch.uint8 and torch.equal(raw, timm_data.create_transform(**kw, normalize=False)(grey))
    im = _rgb(45, 31, 2)
    for size in (24, (3, 24, 24), (3, 16, 24)):
        kw = dict(input_size=size, is_training=True, no_aug=True, interpolation="bicubic")
        assert torch.equal(create_transform(**kw)(im), timm_data.create_transform(**kw)(im))


def test_resolve_data_config_as_timm():
    model = create_model("vit_micro_patch2_8", img_size=16)
    cases = [
        dict(model=model),
        dict(model=model, args={"crop_pct": 0.9, "interpolation": "bilinear"}),
        dict(args={"img_size": 64, "mean": [0.5], "std": [0.25]}),
        dict(args={"input_size": (1, 32, 48), "mean": [0.5], "std": [0.25], "crop_mode": "squash"}),
        dict(
            pretrained_cfg={
                "input_size": (3, 384, 384),
                "test_input_size": (3, 448, 448),
                "crop_pct": 1.0,
                "test_crop_pct": 0.95,
                "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5),
            }
        ),
        dict(
            pretrained_cfg={
                "input_size": (3, 384, 384),
                "test_input_size": (3, 448, 448),
                "crop_pct": 1.0,
                "test_crop_pct": 0.95,
            },
            use_test_size=True,
        ),
        dict(args={"in_chans": 1}, pretrained_cfg={"interpolation": "lanczos", "crop_mode": "border"}),
    ]
    for case in cases:
        assert resolve_data_config(**case) == timm_data.resolve_data_config(**case), case
    config = resolve_data_config(model=model)
    assert set(config) == {"input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std"}
    assert create_transform(**config)(_rgb(30, 20, 3).convert("L")).shape == config["input_size"]


def test_bad_preprocessing_values_are_named():
    with pytest.raises(ValueError, match="crop_mode='middle'"):
        create_transform(32, crop_mode="middle")
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        create_transform(32, interpolation="cubic")
    with pytest.raises(ValueError, match="no_aug=True"):
        create_transform(32, is_training=True)
    with pytest.raises(ValueError, match="mean=.*2 values for 3 channels"):
        resolve_data_config(args={"mean": [0.5, 0.5]})
    with pytest.raises(ValueError, match="std .* has a zero"):
        create_transform(32, mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="at least one of"):
        resolve_data_config()


# ------------------------------------------------------------------------------------ decoding
def _predict_input(path, model):
    from vitkit.predict import load_image as predict_load

    return predict_load(path, model)


def _folder_input(path, model):
    """The tensor the image-folder loader gives for `path`, normalised as the training loop does."""
    from vitkit.data.folder import ImageFolderDataset
    from vitkit.data.transforms import dataset_transform, model_data_config
    from vitkit.train.engine import Normalise

    config = model_data_config(model)
    ds = ImageFolderDataset(
        [(str(path), 0)],
        ["a"],
        in_chans=model.config.in_chans,
        img_size=tuple(config["input_size"][1:]),
        preprocess=dataset_transform(config),
    )
    return Normalise(config["mean"], config["std"])(ds[0][0][None])[0]


def test_16bit_png_and_float_tiff_read_the_same_by_predict_and_the_folder_loader(tmp_path):
    model = create_model("vit_micro_patch2_8", img_size=16)  # greyscale
    ramp = np.linspace(0, 1, 24 * 20).reshape(20, 24)
    png16 = tmp_path / "ramp16.png"
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(png16)
    tiff = tmp_path / "rampf.tif"
    Image.fromarray(ramp.astype(np.float32), mode="F").save(tiff)
    png8 = tmp_path / "ramp8.png"
    Image.fromarray((ramp * 255).round().astype(np.uint8)).save(png8)
    with Image.open(png16) as im16, Image.open(tiff) as imf:
        assert im16.mode.startswith("I") and imf.mode == "F"  # the files really are 16-bit and float
    reference = _predict_input(png8, model)
    for path in (png16, tiff):
        x = _predict_input(path, model)
        assert torch.equal(x, _folder_input(path, model))
        # not white, not black: the ramp as its 8-bit version gives it (within one grey level)
        assert (x - reference).abs().max() * model.pretrained_cfg["std"][0] <= 1.01 / 255
    for path in (png16, tiff):  # also as RGB, for a 3-channel model
        rgb = load_image(path, in_chans=3)
        assert rgb.mode == "RGB" and 100 < np.asarray(rgb).mean() < 155


def test_exif_orientation_palette_transparency_and_cmyk(tmp_path):
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, :10] = 255  # white on the left of a wide image
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown upright it is tall, white on top
    im.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = np.asarray(load_image(tmp_path / "rotated.jpg"))
    assert upright.shape == (30, 10, 3) and upright[:8].mean() > 200 and upright[-8:].mean() < 50
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "pal.png")).min() == 255  # transparent: composited over white
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "red.jpg")
    red = np.asarray(load_image(tmp_path / "red.jpg"))
    assert red[..., 0].min() > 200 and red[..., 1:].max() < 60
    with pytest.raises(ValueError, match="notes.png is not a readable image"):
        (tmp_path / "notes.png").write_text("text")
        load_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        load_image(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------ train, eval, predict
@pytest.fixture
def model_inputs():
    """Every batch a vitkit model is called with in eval mode, as the model receives it (normalised)."""
    seen = []

    def hook(module, args):
        if isinstance(module, VitkitModel) and not module.training and args and torch.is_tensor(args[0]):
            seen.append(args[0].detach().float().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


def _folder(root, sizes, brightness, seed):
    rng = np.random.default_rng(seed)
    for split, count in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                a = rng.integers(0, 256, (h, w, 3)).astype(np.float64) * brightness
                Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(root / split / c / f"{i}.png")


def _train(tmp_path, out, data_dir, *extra):
    from vitkit.train import TrainConfig, apply_overrides, train

    args = [
        f"--run.out={tmp_path / out}",
        "--data.name=folder",
        f"--data.data_dir={data_dir}",
        "--data.img_size=16",
        "--data.val_fraction=0",
        "--model.overrides.depth=1",
        "--model.overrides.embed_dim=32",
        "--model.overrides.num_heads=2",
        "--run.progress=false",
        "--run.threads=1",
        "--data.num_workers=0",
        "--run.batch_size=4",
        "--sched.epochs=1",
        "--sched.warmup_epochs=0",
        "--model.name=vit_micro_patch2_8",
        *extra,
    ]
    train(apply_overrides(TrainConfig(), args))
    return tmp_path / out


def _check_same_inputs(run_dir, data_dir, model_inputs):
    """Training's final test evaluation, `vitkit eval` and `vitkit predict` feed the model the same tensors."""
    from vitkit.eval import evaluate_dir
    from vitkit.hub import from_pretrained

    trained = torch.cat(model_inputs)
    model_inputs.clear()
    evaluate_dir(run_dir, data_dir=str(data_dir))
    assert torch.equal(torch.cat(model_inputs), trained)
    model = from_pretrained(run_dir / "model")
    test_files = [p for p, _ in load_dataset("folder", data_dir, img_size=16).test.samples]
    assert len(test_files) == len(trained) == 4
    predicted = torch.stack([_predict_input(p, model) for p in test_files])
    assert torch.equal(predicted, trained)
    return json.loads((run_dir / "model" / "config.json").read_text())


def test_train_eval_predict_feed_the_same_tensors_and_fine_tuning_keeps_the_checkpoint_statistics(
    tmp_path, model_inputs
):
    sizes = [(24, 17), (15, 29), (40, 22)]  # not square: a crop that differs from the saved one shows
    _folder(tmp_path / "dark", sizes, 0.4, seed=0)
    run = _train(tmp_path, "scratch", tmp_path / "dark")
    saved = _check_same_inputs(run, tmp_path / "dark", model_inputs)
    cfg = saved.get("pretrained_cfg", saved)
    assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bicubic" and cfg["crop_mode"] == "center"
    dark_mean = cfg["mean"]
    assert max(dark_mean) < 0.3  # the dataset's statistics, from scratch

    # fine-tune on much brighter images: the checkpoint's statistics stay, and what runs is what is saved
    _folder(tmp_path / "bright", sizes, 1.0, seed=1)
    model_inputs.clear()
    tuned = _train(tmp_path, "tuned", tmp_path / "bright", f"--model.pretrained={run / 'model'}")
    cfg = json.loads((tuned / "model" / "config.json").read_text())
    cfg = cfg.get("pretrained_cfg", cfg)
    assert cfg["mean"] == pytest.approx(dark_mean)
    _check_same_inputs(tuned, tmp_path / "bright", model_inputs)

    # told otherwise: the given crop and statistics are used and saved
    model_inputs.clear()
    told = _train(
        tmp_path,
        "told",
        tmp_path / "bright",
        f"--model.pretrained={run / 'model'}",
        "--data.crop_pct=0.8",
        "--data.interpolation=bilinear",
        "--data.mean=[0.5]",
        "--data.std=[0.25]",
    )
    cfg = _check_same_inputs(told, tmp_path / "bright", model_inputs)
    cfg = cfg.get("pretrained_cfg", cfg)
    assert (cfg["crop_pct"], cfg["interpolation"], cfg["mean"], cfg["std"]) == (0.8, "bilinear", [0.5] * 3, [0.25] * 3)


def test_in_memory_dataset_eval_runs_at_the_trained_size(tmp_path, model_inputs):
    """digits resized to 16x16 for training: `vitkit eval` resizes the same way, at the model's size."""
    from vitkit.eval import evaluate_dir
    from vitkit.train import TrainConfig, apply_overrides, train

    pytest.importorskip("sklearn")
    args = [
        f"--run.out={tmp_path / 'run'}",
        "--data.img_size=16",
        "--data.val_fraction=0",
        "--model.overrides.depth=1",
        "--model.overrides.embed_dim=32",
        "--model.overrides.num_heads=2",
        "--run.progress=false",
        "--run.threads=1",
        "--run.batch_size=256",
        "--sched.epochs=1",
    ]
    train(apply_overrides(TrainConfig(), args))
    trained = torch.cat(model_inputs)
    model_inputs.clear()
    evaluate_dir(tmp_path / "run")
    assert torch.equal(torch.cat(model_inputs), trained)
    cfg = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    cfg = cfg.get("pretrained_cfg", cfg)
    assert (cfg["crop_pct"], cfg["interpolation"], cfg["input_size"]) == (1.0, "bilinear", [1, 16, 16])
    with pytest.raises(ValueError, match="--data.crop_pct applies to datasets decoded from image files"):
        train(apply_overrides(TrainConfig(), [*args[1:], f"--run.out={tmp_path / 'bad'}", "--data.crop_pct=0.9"]))


def test_onnx_export_carries_the_data_config_and_preprocesses_like_predict(tmp_path):
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module)
    import onnx

    from vitkit.export import DATA_CONFIG_KEY, export_onnx, onnx_session, randomise_heads
    from vitkit.predict import load_image as predict_load

    torch.manual_seed(0)
    model = create_model(
        "vit_micro_patch4_28",
        pretrained_cfg_overlay=dict(crop_pct=0.9, interpolation="bilinear", mean=(0.3,), std=(0.2,)),
    ).eval()
    randomise_heads(model)
    path = export_onnx(model, tmp_path / "m.onnx").path
    config = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[DATA_CONFIG_KEY])
    assert config == {
        "input_size": [1, 28, 28],
        "interpolation": "bilinear",
        "crop_pct": 0.9,
        "crop_mode": "center",
        "mean": [0.3],
        "std": [0.2],
    }
    _rgb(40, 31, 5).save(tmp_path / "x.png")
    x = create_transform(**config)(load_image(tmp_path / "x.png", in_chans=config["input_size"][0]))
    assert torch.equal(x, predict_load(tmp_path / "x.png", model))
    session = onnx_session(path)
    got = session.run(None, {session.get_inputs()[0].name: x[None].numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(x[None]).numpy(), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------ training crop
def test_random_resized_crop_is_timms_for_the_same_seed():
    import random

    from timm.data.transforms import RandomResizedCropAndInterpolation

    from vitkit.data.transforms import RandomResizedCrop

    images = [_rgb(53, 41, 7), _rgb(200, 12, 8), _rgb(16, 16, 9)]  # 200x12: every try fails, the fallback crop
    for im, (scale, ratio), interpolation in itertools.product(
        images,
        [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (1.0, 1.0)), ((0.3, 0.6), (0.5, 2.0))],
        ["bilinear", "bicubic"],
    ):
        ours = RandomResizedCrop((16, 20), scale, ratio, interpolation)
        theirs = RandomResizedCropAndInterpolation((16, 20), scale, ratio, interpolation)
        for seed in range(4):
            random.seed(seed)
            expected = np.asarray(theirs(im))
            assert np.array_equal(np.asarray(ours(im, random.Random(seed))), expected), (im.size, scale, seed)


def test_training_crops_come_from_the_original_image_in_the_workers(tmp_path, model_inputs):
    """--aug.random_resized_crop on an image folder: each training image is timm's crop of the decoded file,
    from a stream seeded by (run seed, epoch, index), so workers and resumed runs see the same crops."""
    import pickle
    import random

    from vitkit.data.transforms import RandomCropFiles, RandomResizedCrop
    from vitkit.train.engine import Batches, Dist

    _folder(tmp_path / "data", [(24, 17), (15, 29), (40, 22)], 1.0, seed=3)
    train_split = load_dataset("folder", tmp_path / "data", img_size=16, val_fraction=0).train
    crop = RandomResizedCrop(16, interpolation="bicubic")
    wrapped = RandomCropFiles(train_split, crop, seed=5)
    wrapped.set_epoch(1)

    def expected(i, epoch):
        im = load_image(train_split.samples[i][0])
        a = np.asarray(crop(im, random.Random(f"5:{epoch}:{i}")))
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255

    assert torch.equal(wrapped[2][0], expected(2, 1)) and wrapped[2][1] == train_split.samples[2][1]
    assert torch.equal(pickle.loads(pickle.dumps(wrapped))[2][0], expected(2, 1))  # as a worker receives it
    loader = torch.utils.data.DataLoader(wrapped, batch_size=4, num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), torch.stack([expected(i, 1) for i in range(len(wrapped))]))

    # the training loop: the first batch the model sees is those crops, normalised (no other augmentation)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: seen.append(a[0].detach().clone()) if isinstance(m, VitkitModel) and m.training else None
    )
    try:
        run = _train(tmp_path, "run", tmp_path / "data", "--aug.random_resized_crop=true", "--run.seed=5")
    finally:
        handle.remove()
    cfg = json.loads((run / "model" / "config.json").read_text())
    cfg = cfg.get("pretrained_cfg", cfg)
    mean, std = torch.tensor(cfg["mean"]).view(-1, 1, 1), torch.tensor(cfg["std"]).view(-1, 1, 1)
    first = Batches(train_split, 4, Dist(), seed=5).indices(0)[0].tolist()
    want = torch.stack([(expected(i, 0) - mean) / std for i in first])
    torch.testing.assert_close(seen[0], want, rtol=0, atol=1e-6)


def test_worker_pipeline_crops_flips_and_normalises_in_the_workers(tmp_path):
    """worker_pipeline on an image folder: each training image is timm's crop of the decoded file, flipped when
    the item's stream says so, normalised with the training step's float arithmetic (engine.Normalise): the
    old batch path's tensors, with the crop and flip drawn per (seed, epoch, index), whatever the workers."""
    import dataclasses
    import random

    from vitkit.data.augment import AugmentConfig
    from vitkit.data.transforms import AugmentFiles, RandomResizedCrop, training_data_config, worker_pipeline
    from vitkit.train.engine import Normalise

    _folder(tmp_path / "data", [(24, 17), (15, 29), (40, 22)], 1.0, seed=3)
    splits = load_dataset("folder", tmp_path / "data", img_size=16, val_fraction=0)
    model = create_model("vit_micro_patch2_8", img_size=16, num_classes=2, depth=1, embed_dim=32, num_heads=2)
    config = training_data_config(splits, model)
    aug = AugmentConfig(random_resized_crop=True, hflip=0.5, random_erasing=0.25, mixup=0.8)
    data, left, normalised = worker_pipeline(splits.train, aug, config, seed=5)
    assert isinstance(data, AugmentFiles) and normalised
    assert left == dataclasses.replace(aug, random_resized_crop=False, hflip=0.0)  # erasing, mixup: on the batch
    data.set_epoch(1)

    crop = RandomResizedCrop(16, aug.scale, aug.ratio, config["interpolation"])
    norm = Normalise(config["mean"], config["std"])
    flips = []

    def unit(i, epoch):  # the crop, then the flip, in [0, 1]
        rng = random.Random(f"5:{epoch}:{i}")
        x = torch.from_numpy(np.asarray(crop(load_image(splits.train.samples[i][0]), rng)).copy())
        x = x.permute(2, 0, 1).float() / 255
        flips.append(rng.random() < 0.5)
        return x.flip(-1) if flips[-1] else x

    def expected(i, epoch):  # the reference: the crop and flip above, then the training step's Normalise
        return norm(unit(i, epoch)[None])[0]

    want = torch.stack([expected(i, 1) for i in range(len(data))])
    assert any(flips) and not all(flips)  # both outcomes are checked
    assert torch.equal(torch.stack([data[i][0] for i in range(len(data))]), want)
    loader = torch.utils.data.DataLoader(data, batch_size=3, num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), want)  # the same in 2 workers
    assert [y for _, y in loader] and torch.equal(torch.cat([y for _, y in loader]), splits.train.labels)
    data.set_epoch(2)
    assert not torch.equal(data[0][0], want[0])  # another epoch, another crop

    # no crop asked: the folder's own resize and crop, then flip and normalise
    data, left, normalised = worker_pipeline(splits.train, AugmentConfig(hflip=1.0), config, seed=5)
    plain = splits.train[1][0]
    assert normalised and torch.equal(data[1][0], norm(plain.flip(-1)[None])[0])

    # RandAugment needs [0, 1] images: crop and flip in the workers, normalisation in the training step
    aug = AugmentConfig(random_resized_crop=True, hflip=0.5, randaugment="rand-m9-n2")
    data, left, normalised = worker_pipeline(splits.train, aug, config, seed=5)
    assert not normalised and left.randaugment == "rand-m9-n2" and not left.hflip and not left.random_resized_crop
    data.set_epoch(1)
    assert torch.equal(
        torch.stack([data[i][0] for i in range(len(data))]), torch.stack([unit(i, 1) for i in range(len(data))])
    )
    # a training step that needs [0, 1] images (a distillation teacher) keeps them
    assert worker_pipeline(splits.train, AugmentConfig(hflip=0.5), config, normalise=False)[2] is False
    assert worker_pipeline(splits.train, AugmentConfig(), config, normalise=False)[0] is splits.train
    with pytest.raises(TypeError, match="already augments in the workers"):
        worker_pipeline(data, AugmentConfig(hflip=0.5), config)


def test_worker_pipeline_leaves_in_memory_data_and_shards_to_the_batch():
    from vitkit.data.augment import AugmentConfig
    from vitkit.data.transforms import worker_pipeline

    splits = load_dataset("digits", img_size=8)
    aug = AugmentConfig(random_resized_crop=True, hflip=0.5)
    config = {"input_size": (1, 8, 8), "interpolation": "bilinear", "mean": splits.mean, "std": splits.std}
    assert worker_pipeline(splits.train, aug, config, seed=1) == (splits.train, aug, False)


def test_training_on_a_folder_gives_the_same_weights_with_any_number_of_workers(tmp_path):
    """Crop and flip in the workers, erasing and mixup on the normalised batch: the per-item draws are seeded by
    (seed, epoch, index), so 0 and 2 DataLoader workers train the same weights."""
    from safetensors.torch import load_file

    _folder(tmp_path / "data", [(24, 17), (15, 29), (40, 22)], 1.0, seed=4)
    aug = ("--aug.random_resized_crop=true", "--aug.hflip=0.5", "--aug.random_erasing=0.5", "--aug.mixup=0.8")
    runs = [
        _train(tmp_path, f"w{n}", tmp_path / "data", *aug, "--sched.epochs=2", f"--data.num_workers={n}")
        for n in (0, 2)
    ]
    a, b = (load_file(str(r / "model" / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = load_file(
        str(_train(tmp_path, "plain", tmp_path / "data", "--sched.epochs=2") / "model" / "model.safetensors")
    )
    assert not all(torch.equal(a[k], plain[k]) for k in a)  # the augmentation did change the training
