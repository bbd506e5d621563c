"""The MLP GAN reference: sizes that fit a chip, seeded players, data and noise order."""
import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hil.metrics.gan_quality import MnistGanScorer  # noqa: E402
from hil.models import mnist_gan as m  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared machine run far faster on one thread; results are the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_scorer(mnist):
    return MnistGanScorer(mnist.test_x[:1000])


def _weights(*modules):
    return [v.detach().clone() for mod in modules for v in mod.state_dict().values()]


def test_default_players_fit_one_million_device_chip_as_pairs():
    g, d = m.build_players(m.GanConfig())
    weights = sum(p.numel() for mod in (g, d) for n, p in mod.named_parameters()
                  if n.endswith("weight"))
    biases = sum(p.numel() for mod in (g, d) for n, p in mod.named_parameters()
                 if n.endswith("bias"))
    assert weights == 317_568 and biases == 1_169
    assert 2 * (weights + biases) == 637_474 <= 512 * 2048


def test_default_players_start_from_the_weights_the_reference_results_came_from():
    """A chip run copies these weights; if torch ever draws them differently, the fp32
    reference figures in docs/reference-models.md no longer apply."""
    h = hashlib.sha256()
    for mod in m.build_players(m.GanConfig()):
        for k, v in mod.state_dict().items():
            h.update(k.encode())
            h.update(v.numpy().tobytes())
    assert h.hexdigest() == "a82f8d507400b94aff382983688b5b4e05ccd14b193fe3f27811747f6307711e"


def test_players_are_a_function_of_the_seed_and_images_lie_in_0_1():
    cfg = m.GanConfig(g_hidden=32, d_hidden=32)
    torch.manual_seed(1)
    a = _weights(*m.build_players(cfg))
    torch.manual_seed(2)
    b = _weights(*m.build_players(cfg))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    g, d = m.build_players(cfg)
    x = m.generate(g, m.eval_latents(m.GanConfig(eval_samples=300, latent=64)))
    assert x.shape == (300, 784) and x.min() >= 0 and x.max() <= 1
    assert d(torch.from_numpy(x)).shape == (300,)


def test_training_is_bit_identical_for_the_same_config(mnist, small_scorer):
    cfg = m.GanConfig(g_hidden=32, d_hidden=32, batch=16, epochs=2, eval_samples=500)
    data = mnist.train_x[:800]
    runs = []
    for _ in range(2):
        g, d = m.build_players(cfg)
        res = m.train(g, d, cfg, data, small_scorer, max_steps=10)
        runs.append((_weights(g, d), res))
    (wa, ra), (wb, rb) = runs
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert [(e.d_loss, e.g_loss, e.fid) for e in ra.epochs] == \
        [(e.d_loss, e.g_loss, e.fid) for e in rb.epochs]
    assert [e.steps for e in ra.epochs] == [10, 10]
    assert all(np.isfinite([e.fid, e.inception_score, e.d_loss, e.g_loss]).all()
               for e in ra.epochs)


def test_a_hundred_and_fifty_steps_move_samples_towards_digits(mnist, small_scorer):
    cfg = m.GanConfig(g_hidden=128, d_hidden=128, epochs=1, eval_samples=1000)
    g, d = m.build_players(cfg)
    before = small_scorer.score(m.generate(g, m.eval_latents(cfg))).fid
    res = m.train(g, d, cfg, mnist.train_x[:m.TRAIN_DIGITS], small_scorer, max_steps=150)
    assert res.epochs[0].fid < 0.8 * before


def test_train_uses_the_optimizers_it_is_given(mnist, small_scorer):
    cfg = m.GanConfig(g_hidden=16, d_hidden=16, batch=8, epochs=1, eval_samples=200)
    g, d = m.build_players(cfg)
    before = _weights(g, d)
    frozen = lambda g_, d_: (torch.optim.SGD(g_.parameters(), lr=0.0),  # noqa: E731
                             torch.optim.SGD(d_.parameters(), lr=0.0))
    m.train(g, d, cfg, mnist.train_x[:100], small_scorer, make_optimizers=frozen, max_steps=3)
    assert all(torch.equal(x, y) for x, y in zip(before, _weights(g, d)))
    g2, d2 = m.build_players(m.GanConfig(optimizer="sgd"))
    opt_g, opt_d = m.reference_optimizers(m.GanConfig(optimizer="sgd"))(g2, d2)
    assert isinstance(opt_g, torch.optim.SGD) and opt_g.defaults["momentum"] == 0.5
    with pytest.raises(ValueError, match="'adam' or 'sgd'"):
        m.reference_optimizers(m.GanConfig(optimizer="lbfgs"))(g2, d2)


def test_sample_grid_tiles_images_dark_on_white():
    imgs = np.zeros((64, 784), np.float32)
    imgs[5] = 1.0
    grid = m.sample_grid(imgs, rows=8, cols=8, pad=2)
    assert grid.shape == (8 * 30 + 2, 8 * 30 + 2) and grid.dtype == np.uint8
    assert (grid[2:30, 2 + 5 * 30:30 + 5 * 30] == 0).all()     # image 5 at row 0, column 5
    assert (grid[2:30, 2:30] == 255).all() and (grid[0] == 255).all()
    with pytest.raises(ValueError, match="need 64 images"):
        m.sample_grid(imgs[:10])
