"""Acceptance of the wire path: training through the firmware emulator, over a real TCP
socket and a real pty, equals training on the in-process simulated chip bit for bit."""
import numpy as np
import pytest

from drivers.fpga import FpgaChip
from drivers.geometry import Geometry
from hil.backend_url import open_backend
from hil.commands.train import sim_defaults
from hil.training import run_experiment
from sim_backend import EmulatorServer, FaultConfig, Firmware, PcmModel, SimulatedChip

from conftest import small_config

KEYS = ("test_accuracy", "train_accuracy", "set_pulses", "reset_pulses", "refreshes",
        "program_commands", "read_commands", "examples", "state_digest")


def _cfg():
    return small_config(seed=5, data={"train_examples": 400, "test_examples": 300},
                        optimizer={"refresh": {"period_steps": 40}})


@pytest.fixture(scope="module")
def in_process(small_data):
    cfg = _cfg()
    return run_experiment(cfg, open_backend("sim://", sim_defaults(cfg)), data=small_data)


def _emulated(small_data, faults=None, timeout_s=5.0, **where):
    cfg = _cfg()
    chip = SimulatedChip(PcmModel.preset(cfg.chip.model), Geometry(1, 512, 2048),
                         seed=cfg.chip_seed)
    server = EmulatorServer(Firmware(chip), faults=faults, **where).start()
    try:
        with FpgaChip(server.url, timeout_s=timeout_s, retries=20) as backend:
            summary = run_experiment(cfg, backend, data=small_data)
    finally:
        server.stop()
    return summary, server


@pytest.mark.parametrize("where", [{"listen": ("127.0.0.1", 0)}, {"pty": True}],
                         ids=["tcp", "pty"])
def test_training_through_emulator_matches_in_process(small_data, in_process, where):
    summary, _ = _emulated(small_data, **where)
    for k in KEYS:
        assert summary[k] == in_process[k], k
    assert [e["test_accuracy"] for e in summary["per_epoch"]] == \
        [e["test_accuracy"] for e in in_process["per_epoch"]]


def test_training_through_faulty_link_matches_in_process(small_data, in_process):
    faults = FaultConfig(corrupt=0.002, drop=0.01, seed=3)
    summary, server = _emulated(small_data, faults=faults, timeout_s=0.3,
                                listen=("127.0.0.1", 0))
    for k in KEYS:
        assert summary[k] == in_process[k], k
    stats = server.stats()
    assert sum(stats["faults"].values()) > 0
