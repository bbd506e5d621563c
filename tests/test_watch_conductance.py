"""G+/G- histograms per layer and the chip map, for MLP and PyTorch-style layouts."""
import numpy as np
import pytest

from hil.run_log import RunLog
from hil.watch import conductance as c
from watch_logs import GEOMETRY, finished_log, mlp_layout, torch_layout

GEO = c.Geometry2D(GEOMETRY["arrays"], GEOMETRY["rows"], GEOMETRY["cols"])


def test_layers_are_the_layout_keys_without_their_plus_minus_suffix():
    groups = c.layer_groups(torch_layout())
    assert [g.name for g in groups] == ["conv1.weight", "fc.weight"]
    assert groups[0].plus == slice(0, 54) and groups[0].minus == slice(54, 108)
    assert groups[1].plus == slice(108, 168) and groups[1].minus == slice(168, 228)
    odd = c.layer_groups({"bias": np.arange(3), "layer0.plus": np.arange(3, 5)})
    assert [(g.name, g.other, g.plus, g.minus) for g in odd] == [
        ("bias", slice(0, 3), None, None), ("layer0", None, slice(3, 5), None)]


@pytest.mark.parametrize("layout", [mlp_layout(), torch_layout()], ids=["mlp", "torch"])
def test_histograms_count_every_device_of_each_layer_as_the_log_has_it(tmp_path, layout):
    with RunLog(finished_log(str(tmp_path / "r.h5"), layout)) as lg:
        state = lg.state(lg.complete_step)
        g = lg.conductance(lg.complete_step)
    hists = c.layer_histograms(g, c.layer_groups(layout), 0.1, 20.0)
    for h in hists:
        edges = np.linspace(0.1, 20.0, c.HIST_BINS + 1)
        assert np.array_equal(h.edges, edges)
        for sign in ("plus", "minus"):
            inside = np.clip(state[f"{h.name}.{sign}"], edges[0], edges[-1])
            assert np.array_equal(getattr(h, sign), np.histogram(inside, edges)[0])
        assert h.devices == h.plus.sum() + h.minus.sum() and h.unread == 0


def test_a_device_never_read_is_not_counted_but_reported():
    groups = c.layer_groups({"a.plus": np.arange(3), "a.minus": np.arange(3, 6)})
    g = np.array([1.0, np.nan, 30.0, 0.0, 5.0, 5.0], np.float32)
    (h,) = c.layer_histograms(g, groups, 0.1, 20.0)
    assert h.plus.sum() == 2 and h.minus.sum() == 3 and h.unread == 1
    assert h.plus[-1] == 1 and h.minus[0] == 1      # out of range: the end bins


def test_region_means_are_the_mean_conductance_of_the_mapped_devices_in_each_region():
    grid = c.MapGrid(GEO, 4, 8)
    layout = torch_layout()
    addr = np.concatenate([a.ravel() for a in layout.values()])
    g = np.random.default_rng(1).uniform(0.1, 20, addr.size).astype(np.float32)
    g[::17] = np.nan
    full = np.full(GEO.n_devices, np.nan)
    full[addr] = g
    blocks = full.reshape(GEO.total_rows // 4, 4, GEO.cols // 8, 8).transpose(0, 2, 1, 3)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        want = np.nanmean(blocks.reshape(*blocks.shape[:2], -1), axis=2)
    got = c.region_means(grid, addr, g)
    assert got.shape == grid.shape == (16, 16)
    assert np.allclose(got, want, equal_nan=True)


@pytest.mark.parametrize("layout", [mlp_layout(start=100), torch_layout()],
                         ids=["mlp", "torch"])
def test_the_blocks_of_each_key_cover_exactly_its_devices(layout):
    grid = c.map_grid(GEO)
    b = c.layout_blocks(layout, grid)
    for key, a in layout.items():
        covered = set()
        for i in np.flatnonzero(np.array(b.key) == key):
            rows = range(b.y0[i], b.y1[i])
            cols = range(b.x0[i], b.x1[i])
            covered |= {r * GEO.cols + col for r in rows for col in cols}
        assert covered == set(a.ravel().tolist()), key


def test_a_contiguous_block_is_at_most_three_rectangles():
    first, last = c.address_runs(np.arange(100, 1000))
    x0, x1, y0, y1 = c.runs_to_rects(first, last, 128)
    assert x0.tolist() == [100 % 128, 0, 0] and x1.tolist() == [128, 128, 999 % 128 + 1]
    assert y0.tolist() == [0, 1, 7] and y1.tolist() == [1, 7, 8]


def test_bad_devices_are_marked_at_their_place_or_counted_per_region():
    grid = c.map_grid(GEO)
    marks = c.bad_marks(np.array([5, 130, 130, 10 ** 9]), grid)
    assert marks["address"].tolist() == [5, 130]
    assert marks["x"].tolist() == [5.5, 2.5] and marks["y"].tolist() == [0.5, 1.5]
    big = c.Geometry2D(1, 512, 2048)
    dense = c.bad_marks(np.arange(0, big.n_devices, 20), c.map_grid(big))
    assert dense["count"].sum() == -(-big.n_devices // 20)
    assert dense["x"].size == c.map_grid(big).shape[0] * c.map_grid(big).shape[1]
