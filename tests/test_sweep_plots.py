"""A sweep's plots: accuracy against pulses with the Pareto front, the spread over seeds."""
from __future__ import annotations

from hil.sweep.plots import accuracy_key, pareto_front, plot_pareto, plot_seeds

PNG = b"\x89PNG\r\n\x1a\n"


def _rows():
    rows = []
    for i, (label, acc, pulses) in enumerate([("a", 0.80, 100), ("a", 0.82, 120),
                                              ("b", 0.90, 400), ("b", 0.88, 380),
                                              ("c", 0.85, 900)]):
        rows.append({"point": f"p{i}", "label": label, "status": "finished",
                     "test_accuracy": acc, "set_pulses": pulses})
    rows.append({"point": "p9", "label": "c", "status": "failed"})
    return rows


def test_the_pareto_front_holds_the_points_nothing_beats_on_both():
    pulses = [100, 120, 400, 380, 900, 100]
    acc = [0.80, 0.82, 0.90, 0.88, 0.85, 0.79]
    assert pareto_front(pulses, acc) == [0, 1, 3, 2]   # 4 (more pulses, less accuracy) and
    # 5 (as many pulses as 0, less accuracy) are dominated


def test_model_selection_prefers_validation_accuracy():
    rows = _rows()
    assert accuracy_key(rows, None) == "test_accuracy"
    rows[0]["validation_accuracy"] = 0.81
    assert accuracy_key(rows, None) == "validation_accuracy"
    assert accuracy_key(rows, "train_accuracy") == "train_accuracy"


def test_both_plots_are_drawn_from_the_finished_points(tmp_path):
    for plot, name in ((plot_pareto, "pareto.png"), (plot_seeds, "seeds.png")):
        path = tmp_path / name
        assert plot(_rows(), "test_accuracy", "set_pulses", str(path))
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000


def test_no_plot_without_the_figures(tmp_path):
    path = tmp_path / "p.png"
    assert not plot_pareto(_rows(), "validation_accuracy", "set_pulses", str(path))
    assert not plot_seeds(_rows(), "test_accuracy", "energy_nj", str(path))
    assert not path.exists()
