"""infra.checkpoint: atomic writes, round trips, run directories, and clear errors."""

import os
import random

import numpy as np
import pytest
import torch

from wmrl.infra import (
    CheckpointError,
    load_checkpoint,
    prepare_run_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def test_round_trip_of_tensors_and_state_dicts(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"net": net.state_dict(), "opt": opt.state_dict(), "step": 7,
                           "returns": [1.5, -2.0]}, meta={"env": "dmc:walker-walk"})  # fmt: skip
    state = load_checkpoint(path, expect_meta={"env": "dmc:walker-walk"})
    assert state["step"] == 7 and state["returns"] == [1.5, -2.0]
    torch.testing.assert_close(state["net"]["weight"], net.weight.detach())
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(state["opt"])
    assert fresh.state_dict()["state"][0]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.randn(100, 100)})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a zip" * 50,
                      "empty": b""}[damage])  # fmt: skip
    with pytest.raises(CheckpointError, match="corrupt or truncated.*new --logdir"):
        load_checkpoint(path)


def test_mismatched_or_foreign_checkpoints_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1}, meta={"env": "dmc:walker-walk", "deter": 200})
    with pytest.raises(CheckpointError, match="env: checkpoint 'dmc:walker-walk', this run "
                                              "'dmc:cheetah-run'"):  # fmt: skip
        load_checkpoint(path, expect_meta={"env": "dmc:cheetah-run", "deter": 200})
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this toolkit"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_run_directory_is_never_reused_by_accident(tmp_path):
    run = prepare_run_dir(tmp_path / "a" / "run", resume=False)
    assert run.is_dir()
    with pytest.raises(CheckpointError, match="holds no run"):
        prepare_run_dir(run, resume=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_run_dir(run, resume=False)
    assert prepare_run_dir(run, resume=True) == run


def test_rng_states_survive_a_checkpoint(tmp_path):
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    draws()
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = draws()
    seed_everything(4)  # anything else in between
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert draws() == expected


def test_a_full_disk_is_one_clear_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    expected = r"could not write .*MiB free.*previous checkpoint is intact: free some space"
    with pytest.raises(CheckpointError, match=expected):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and os.listdir(tmp_path) == ["checkpoint.pt"]
