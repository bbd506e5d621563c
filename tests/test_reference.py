"""The fp32 reference runs' command line, on tiny slices."""
import json

import pytest

torch = pytest.importorskip("torch")

from hil.models.reference import main  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared machine run far faster on one thread; results are the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_char_lstm_run_reports_every_epoch_and_test_bpc(tmp_path, capsys):
    out = tmp_path / "lstm.json"
    assert main(["char-lstm", "--hidden", "8", "--epochs", "2", "--max-steps", "2",
                 "--seq-len", "10", "--batch", "4", "--validation-chars", "3000", "--test",
                 "--sample", "20", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["config"]["hidden"] == 8 and got["weights"] == 4 * 8 * (79 + 8 + 2) + 79 * 9
    assert [e["epoch"] for e in got["epochs"]] == [1, 2]
    assert all(e["steps"] == 2 and e["tokens"] == 80 for e in got["epochs"])
    assert 4 < got["test_bpc"] < 8 and len(got["sample"]) == 20
    printed = capsys.readouterr().out
    assert "epoch 2: train" in printed and "test " in printed


def test_mnist_gan_run_reports_losses_fid_and_writes_a_png(tmp_path, capsys):
    out, png = tmp_path / "gan.json", tmp_path / "grid.png"
    assert main(["mnist-gan", "--g-hidden", "16", "--d-hidden", "16", "--epochs", "1",
                 "--max-steps", "3", "--eval-samples", "200", "--json", str(out),
                 "--png", str(png)]) == 0
    got = json.loads(out.read_text())
    assert got["score_against"] == "validation" and got["epochs"][0]["steps"] == 3
    assert got["epochs"][0]["fid"] > 0 and 1 <= got["epochs"][0]["inception_score"] <= 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FID" in capsys.readouterr().out


def test_bad_hyperparameter_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["char-lstm", "--hidden", "many"])
    assert "--hidden: invalid int value" in capsys.readouterr().err
