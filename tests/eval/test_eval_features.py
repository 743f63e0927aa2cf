import torch
from torch.utils.data import DataLoader, TensorDataset

import vitkit
from vitkit.data import load_digits
from vitkit.eval import extract_features, knn_classifier


def small_digits(n=40):
    train, _ = load_digits()
    train.images, train.labels = train.images[:n], train.labels[:n]
    return train


def test_extract_features_shape_modes_and_inputs():
    torch.manual_seed(0)
    # dropout and stochastic depth on, so a forgotten eval() would show
    model = vitkit.create_model("vit_micro_patch2_8", drop_rate=0.5, drop_path_rate=0.5)
    model.train()
    model.blocks[0].eval()  # a part frozen in eval mode by the caller stays so
    split = small_digits()

    feats = extract_features(model, split, batch_size=16, normalize="model")
    assert feats.shape == (40, model.num_features) == (40, 64)
    assert feats.dtype == torch.float32 and not feats.requires_grad and not feats.is_inference()
    assert model.training and not model.blocks[0].training and model.blocks[1].training

    model.eval()
    with torch.no_grad():
        x = (split.images - 0.5) / 0.5  # the model's pretrained_cfg mean and std
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    model.train()
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
    # the same from a tensor, another batch size, explicit (mean, std), and a DataLoader of (x, y)
    torch.testing.assert_close(extract_features(model, split.images, 7, normalize=((0.5,), (0.5,))), feats)
    loader = DataLoader(TensorDataset(split.images, split.labels), batch_size=9)
    torch.testing.assert_close(extract_features(model, loader, normalize="model", device="cpu"), feats)
    assert model.training


def test_features_feed_the_evaluators():
    model = vitkit.create_model("vit_micro_patch2_8", num_classes=0)
    split = small_digits(30)
    feats = extract_features(model, split, normalize="model")
    res = knn_classifier(feats, split.labels, feats, split.labels, ks=(1,))
    assert res[1]["top1"] == 100.0  # every sample is its own nearest neighbour


def test_uint8_images_are_scaled_to_unit_range():
    """8-bit pixels (MNIST's and CIFAR's in-memory splits) give the features of the same images as floats in
    [0, 1], so `normalize` statistics of [0, 1] images apply to them."""
    torch.manual_seed(0)
    model = vitkit.create_model("vit_micro_patch2_8").eval()
    pixels = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    as_bytes = extract_features(model, pixels, normalize="model")
    as_floats = extract_features(model, pixels.float() / 255, normalize="model")
    torch.testing.assert_close(as_bytes, as_floats, rtol=0, atol=0)
    assert not torch.allclose(as_floats, extract_features(model, pixels.float(), normalize="model"), atol=1e-3)
