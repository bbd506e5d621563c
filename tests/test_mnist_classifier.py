"""The shipped MNIST classifier: its numpy forward pass, its weights file, its torch twin."""
from importlib import resources

import numpy as np
import pytest

from drivers import ConfigError
from hil.metrics.mnist_classifier import (CLASSES, FEATURES, SHAPES, WEIGHTS_FILE,
                                          MnistClassifier, shipped_classifier)


@pytest.fixture(scope="module")
def clf():
    return shipped_classifier()


def test_shipped_weights_are_small_and_complete(clf):
    with resources.as_file(resources.files("hil.metrics") / "data" / WEIGHTS_FILE) as p:
        size = p.stat().st_size
    assert size < 300_000
    assert {k: v.shape for k, v in clf.weights.items()} == SHAPES
    assert all(v.dtype == np.float32 for v in clf.weights.values())


def test_numpy_forward_reaches_the_recorded_test_accuracy(clf, mnist):
    pred = clf.predict(mnist.test_x)
    acc = float((pred == mnist.test_y).mean())
    assert acc >= 0.985
    # the accuracy the training script measured with torch, on the same digits
    assert acc == pytest.approx(clf.meta["test_accuracy"], abs=2e-4)


def test_output_shapes_and_image_layouts(clf, mnist):
    x = mnist.test_x[:7]
    out = clf(x)
    assert out.features.shape == (7, FEATURES) and out.logits.shape == (7, CLASSES)
    assert (out.features >= 0).all()                  # post-ReLU features
    np.testing.assert_allclose(out.probabilities().sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf(x.reshape(7, 28, 28)).logits, out.logits)
    assert clf(x[:0]).features.shape == (0, FEATURES)
    with pytest.raises(ValueError, match=r"\(n, 784\) or \(n, 28, 28\)"):
        clf(np.zeros((3, 780)))


def test_results_do_not_depend_on_the_block_size(clf, mnist):
    x = mnist.test_x[:1100]                           # crosses two internal blocks
    whole = clf(x).logits
    parts = np.concatenate([clf(x[i:i + 37]).logits for i in range(0, 1100, 37)])
    np.testing.assert_allclose(whole, parts, rtol=1e-5, atol=1e-5)


def test_weights_round_trip_through_npz_and_bad_weights_are_named(clf, mnist, tmp_path):
    path = tmp_path / "c.npz"
    clf.save_npz(path)
    back = MnistClassifier.from_npz(path)
    assert back.meta == clf.meta
    np.testing.assert_array_equal(back(mnist.test_x[:5]).logits, clf(mnist.test_x[:5]).logits)
    partial = {k: v for k, v in clf.weights.items() if k != "fc2.bias"}
    with pytest.raises(ConfigError, match="lack fc2.bias"):
        MnistClassifier(partial)
    wrong = dict(clf.weights, **{"fc1.weight": np.zeros((64, 500), np.float32)})
    with pytest.raises(ConfigError, match=r"fc1.weight has shape \(64, 500\)"):
        MnistClassifier(wrong)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ConfigError, match="cannot read classifier weights"):
        MnistClassifier.from_npz(tmp_path / "bad.npz")


def test_numpy_forward_equals_the_torch_model_it_was_trained_as(clf, mnist):
    torch = pytest.importorskip("torch")
    from hil.models.fid_classifier import FidClassifier
    model = FidClassifier()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in clf.weights.items()})
    model.eval()
    x = mnist.test_x[:1000]
    with torch.no_grad():
        feats = model.features(torch.from_numpy(x)).numpy()
        logits = model(torch.from_numpy(x)).numpy()
    out = clf(x)
    np.testing.assert_allclose(out.features, feats, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.logits, logits, rtol=1e-4, atol=1e-4)
    assert (out.logits.argmax(1) == logits.argmax(1)).all()
