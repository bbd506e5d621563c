"""The character-level LSTM reference: seeded weights, data order, truncated BPTT, determinism."""
import hashlib
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hil.datasets.shakespeare import VOCAB_SIZE, decode, encode, load_split  # noqa: E402
from hil.models import char_lstm as m  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared machine run far faster on one thread; results are the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def plays():
    """Small slices of three training plays (tests use slices; full runs are scripts)."""
    return [p.codes()[:6000] for p in load_split("train").plays[:3]]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_initial_weights_are_a_function_of_the_seed_alone():
    cfg = m.CharLstmConfig(hidden=16, init_seed=3)
    torch.manual_seed(1)
    a = _weights(m.build_model(cfg))
    torch.manual_seed(2)
    b = _weights(m.build_model(cfg))
    c = _weights(m.build_model(m.CharLstmConfig(hidden=16, init_seed=4)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lstm.weight_hh_l0"], c["lstm.weight_hh_l0"])
    assert torch.all(a["lstm.bias_ih_l0"][16:32] == 1.0)          # forget gate
    assert a["lstm.weight_ih_l0"].shape == (64, VOCAB_SIZE)       # one-hot input
    assert a["out.weight"].abs().max() <= 1 / math.sqrt(16)
    assert a["out.bias"].abs().max() <= 1 / math.sqrt(VOCAB_SIZE)


def test_default_initial_weights_are_the_ones_the_reference_results_came_from():
    """A chip run copies these weights; if torch ever draws them differently, the fp32
    reference figures in docs/reference-models.md no longer apply."""
    h = hashlib.sha256()
    for k, v in m.build_model(m.CharLstmConfig()).state_dict().items():
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    assert h.hexdigest() == "64b1441d96fee2e89985cbf1de8a736b13d417349346e29205be433a174a864a"


def test_every_weight_is_an_lstm_gate_matrix_or_the_output_layer():
    model = m.build_model(m.CharLstmConfig(hidden=16, layers=2))
    names = {n for n, _ in model.named_parameters()}
    assert names == {f"lstm.{k}_l{i}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                     for i in (0, 1)} | {"out.weight", "out.bias"}


def test_epoch_streams_are_seeded_hold_every_play_and_change_per_epoch(plays):
    a = m.epoch_streams(plays, 4, data_seed=0, epoch=1)
    assert np.array_equal(a, m.epoch_streams(plays, 4, data_seed=0, epoch=1))
    assert len({m.epoch_streams(plays, 4, 0, e).tobytes() for e in range(1, 5)}) > 1
    total = sum(len(p) for p in plays) + len(plays) - 1
    assert a.shape == (4, total // 4)
    joined = a.reshape(-1)
    starts = sorted(decode(joined).find(decode(p[:200])) for p in plays)
    assert starts[0] == 0 and all(s >= 0 for s in starts)


def test_windows_are_next_character_targets_covering_each_stream():
    s = np.arange(2 * 23, dtype=np.uint8).reshape(2, 23) % VOCAB_SIZE
    got = list(m.windows(s, 10))
    assert [x.shape for x, _ in got] == [(10, 2), (10, 2), (2, 2)]
    x = np.concatenate([x for x, _ in got])
    y = np.concatenate([y for _, y in got])
    assert np.array_equal(x.T, s[:, :-1]) and np.array_equal(y.T, s[:, 1:])


def test_evaluation_carries_state_so_window_length_does_not_matter(plays):
    model = m.build_model(m.CharLstmConfig(hidden=16))
    codes = plays[0][:1200]
    short = m.evaluate_bpc(model, codes, batch=2, seq_len=7)
    whole = m.evaluate_bpc(model, codes, batch=2, seq_len=10_000)
    assert short == pytest.approx(whole, rel=1e-5)
    assert math.log2(VOCAB_SIZE) - 0.5 < whole < math.log2(VOCAB_SIZE) + 0.5   # untrained


def test_training_is_bit_identical_for_the_same_config_and_learns(plays):
    cfg = m.CharLstmConfig(hidden=24, seq_len=20, batch=4, lr=2.0, momentum=0.9, epochs=2)
    val = plays[0][:2000]
    runs = []
    for _ in range(2):
        model = m.build_model(cfg)
        res = m.train(model, cfg, plays, val, max_steps=40)
        runs.append((_weights(model), res))
    (wa, ra), (wb, rb) = runs
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [e.train_bpc for e in ra.epochs] == [e.train_bpc for e in rb.epochs]
    assert [e.steps for e in ra.epochs] == [40, 40]
    assert ra.epochs[-1].validation_bpc < math.log2(VOCAB_SIZE) - 1.5


def test_train_uses_the_optimizer_it_is_given(plays):
    cfg = m.CharLstmConfig(hidden=8, seq_len=10, batch=2, epochs=1)
    model = m.build_model(cfg)
    before = _weights(model)
    seen = []

    def frozen(mod):
        seen.append(mod)
        return torch.optim.SGD(mod.parameters(), lr=0.0)

    steps = []
    m.train(model, cfg, plays, plays[0][:500], make_optimizer=frozen, max_steps=3,
            on_step=lambda e, k, loss: steps.append((e, k, math.isfinite(loss))))
    assert seen == [model]
    assert steps == [(1, 1, True), (1, 2, True), (1, 3, True)]
    assert all(torch.equal(before[k], v) for k, v in _weights(model).items())


def test_reference_optimizers_and_bad_name():
    model = m.build_model(m.CharLstmConfig(hidden=8))
    assert isinstance(m.reference_optimizer(m.CharLstmConfig(hidden=8))(model), torch.optim.SGD)
    adam = m.reference_optimizer(m.CharLstmConfig(hidden=8, optimizer="adam", momentum=0.9))
    assert isinstance(adam(model), torch.optim.Adam)
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        m.reference_optimizer(m.CharLstmConfig(optimizer="rmsprop"))(model)


def test_samples_are_seeded_text_in_the_vocabulary():
    model = m.build_model(m.CharLstmConfig(hidden=16))
    a = m.sample(model, 60, seed=5, prime="ROMEO.\n")
    assert a == m.sample(model, 60, seed=5, prime="ROMEO.\n") and len(a) == 60
    assert a != m.sample(model, 60, seed=6, prime="ROMEO.\n")
    assert decode(encode(a)) == a


def test_too_little_text_for_the_streams_is_an_error():
    with pytest.raises(ValueError, match="cannot make 8 streams"):
        m.streams(np.zeros(10, np.uint8), 8)
