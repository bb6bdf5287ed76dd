import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training.train import TrainConfig, Trainer, _device, main, make_dataset, parse_args


def _config(pool, out, **kw) -> TrainConfig:
    base = dict(data=str(pool), out=str(out), patch_size=64, batch_size=4, steps=6,
                channels=[4, 8, 16], lr=3e-3, threads=1, log_every=2, val_every=1000,
                checkpoint_every=1000, seed=5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_a_tiny_training_run_lowers_the_loss(pool, tmp_path):
    cfg = _config(pool, tmp_path, steps=60, lr=5e-3)
    trainer = Trainer(cfg)
    image, height = next(trainer.batches())  # a few patches, seen again and again
    losses = [trainer.train_step(image, height)["total"] for _ in range(60)]
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
    trainer.save()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["steps"] == 60 and saved["channels"] == [4, 8, 16]


def test_validation_scores_a_fixed_set(pool, tmp_path):
    cfg = _config(pool, tmp_path, val_batches=2)
    trainer = Trainer(cfg)
    fixed = make_dataset(str(pool), cfg, validation=True)
    first, again = trainer.validate(fixed), trainer.validate(fixed)
    assert first == again and first["l1"] > 0
    assert set(first) == {"l1", "gradient"}  # unweighted: runs with other weights compare
    # All 24 patches in batches of 5, the last of 4: the mean over patches, not over batches.
    whole = dataclasses.replace(cfg, batch_size=5, val_batches=100)
    scores = Trainer(whole).validate(make_dataset(str(pool), whole, validation=True))
    one = dataclasses.replace(cfg, batch_size=1, val_batches=100)
    each = Trainer(one).validate(make_dataset(str(pool), one, validation=True))
    assert scores["l1"] == pytest.approx(each["l1"], rel=1e-5)


def _straight_and_resumed(pool, tmp_path, **options) -> tuple[Trainer, Trainer]:
    """Six steps in one go, and the same run stopped after three and resumed."""
    straight = Trainer(_config(pool, tmp_path / "a", keep_steps=[3], **options))
    straight.fit()
    resumed = Trainer(_config(pool, tmp_path / "b", resume=str(tmp_path / "a" / "step_3.pt"),
                              **options))
    assert resumed.step == 3
    resumed.fit()
    return straight, resumed


def test_a_checkpoint_holds_only_tensors_and_plain_values(pool, tmp_path):
    # A pickled numpy array names numpy's internal modules, which numpy 2 renamed: a run saved
    # on a numpy 2 machine (a GPU cluster) could not be resumed or exported under numpy 1.
    Trainer(_config(pool, tmp_path, steps=2, gan=True)).fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # refuses any other object
    assert state["step"] == 2 and len(state["rng"]["numpy"][1]) == 624


class _OpensAFile:
    """Unpickled, it would create a file: what a hostile checkpoint could do instead."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_checkpoint_that_would_run_code_is_refused_unread(pool, tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"generator": {}, "payload": _OpensAFile(marker)}, tmp_path / "hostile.pt")
    code = main(["--data", str(pool), "--out", str(tmp_path / "o"),
                 "--init-from", str(tmp_path / "hostile.pt")])
    assert code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'hostile.pt'} holds objects that are neither")
    assert "open), which no training checkpoint does and which could run code" in err


def _as_saved(checkpoint: Path, out: Path, numpy_state: tuple, numpy_values: bool,
              other_numpy: bool) -> None:
    """``checkpoint`` with ``numpy_state`` as its numpy random state; with ``numpy_values``, as
    the trainer saved it before it held plain values only (that state as an array, the learning
    rate as a numpy float), by this numpy's module names or, with ``other_numpy``, by the other
    major version's (numpy 2 renamed ``numpy.core`` to ``numpy._core``)."""
    state = torch.load(checkpoint, weights_only=True)
    kind, key, *rest = numpy_state
    state["rng"]["numpy"] = (kind, np.array(key, np.uint32) if numpy_values else key, *rest)
    if numpy_values:
        group = state["g_opt"]["param_groups"][0]
        group["lr"] = np.float64(group["lr"])
    torch.save(state, out)
    if other_numpy:
        ours = np.zeros(0).__reduce__()[0].__module__  # where this numpy rebuilds arrays
        theirs = ours.replace("._core.", ".core.") if "._core." in ours \
            else ours.replace(".core.", "._core.")
        with zipfile.ZipFile(out) as saved:
            entries = [(info, saved.read(info)) for info in saved.infolist()]
        with zipfile.ZipFile(out, "w") as renamed:
            for info, data in entries:
                if info.filename.endswith("/data.pkl"):
                    assert ours.encode() in data
                    data = data.replace(ours.encode(), theirs.encode())
                renamed.writestr(info, data)


@pytest.mark.parametrize("saved", ["plain", "numpy values", "numpy values, other numpy"])
def test_a_resumed_run_restores_numpy_s_random_state(pool, tmp_path, saved):
    Trainer(_config(pool, tmp_path, steps=4, keep_steps=[2])).fit()
    # Training draws nothing from numpy's global generator, so the state saved is the seed's,
    # which the new trainer sets too: another state shows whether resuming restores it.
    kind, key, *rest = np.random.RandomState(99).get_state()
    wanted = (kind, key.tolist(), *rest)
    run = tmp_path / "resumed"
    run.mkdir()
    _as_saved(tmp_path / "step_2.pt", run / "step_2.pt", wanted, saved != "plain",
              "other" in saved)
    resumed = Trainer(_config(pool, run, steps=4, resume=str(run / "step_2.pt")))
    restored = np.random.get_state()
    assert (restored[0], restored[1].tolist(), *restored[2:]) == wanted
    resumed.fit()
    straight = torch.load(tmp_path / "last.pt", weights_only=True)["generator"]
    assert all(torch.equal(straight[k], v) for k, v in resumed.generator.state_dict().items())


_GPU = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason="needs a CUDA GPU"))


@pytest.fixture
def deterministic_kernels_reset(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored afterwards
    yield
    torch.use_deterministic_algorithms(False)  # process-wide: not for the tests after


@pytest.mark.parametrize("device", ["cpu", _GPU])
@pytest.mark.parametrize("gan", [False, True])
def test_resume_continues_bit_for_bit(pool, tmp_path, gan, device, deterministic_kernels_reset):
    # On a GPU, some kernels (the shading prior's among them) add up in no fixed order unless
    # told to; the CPU's always do.
    straight, resumed = _straight_and_resumed(pool, tmp_path, gan=gan, device=device,
                                              deterministic=device == "cuda")
    assert resumed.device.type == device
    a, b = straight.generator.state_dict(), resumed.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if gan:
        da, db = straight.disc.state_dict(), resumed.disc.state_dict()
        assert all(torch.equal(da[k], db[k]) for k in da)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_rendered_stream_resumes_exactly_without_rendering_what_was_used(
        pool, tmp_path, monkeypatch, workers):
    from training.data import SyntheticPatches

    rendered = []
    raw = SyntheticPatches.raw
    monkeypatch.setattr(SyntheticPatches, "raw",
                        lambda self, rng: rendered.append(1) or raw(self, rng))
    straight, resumed = _straight_and_resumed(pool, tmp_path, data="synthetic", patch_size=32,
                                              workers=workers)
    a, b = straight.generator.state_dict(), resumed.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if not workers:  # rendered in this process: six steps of 4 patches, then only the last 3
        assert len(rendered) == 6 * 4 + 3 * 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_a_gpu_without_one_is_one_clear_error(pool, tmp_path, capsys):
    code = main(["--data", str(pool), "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: the run's device is cuda (--device, or the saved options of a resumed run), "
        "but PyTorch sees no CUDA GPU here; give --device cpu or auto")
    assert not (tmp_path / "o").exists()


def test_a_resumed_run_may_change_its_device_and_kernels(pool, tmp_path,
                                                        deterministic_kernels_reset):
    Trainer(_config(pool, tmp_path, steps=2)).fit()
    cfg = parse_args(["--resume", str(tmp_path / "last.pt"), "--device", "cpu",
                      "--deterministic", "true"])
    assert (cfg.device, cfg.deterministic, cfg.channels) == ("cpu", True, [4, 8, 16])
    Trainer(cfg)
    assert torch.are_deterministic_algorithms_enabled()
    Trainer(dataclasses.replace(cfg, deterministic=False))  # the latest trainer's choice holds
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_started_on_the_cpu_goes_on_on_the_gpu(pool, tmp_path):
    # Its mixed-precision scaler starts afresh: the CPU run saved none.
    Trainer(_config(pool, tmp_path, steps=2, device="cpu")).fit()
    resumed = Trainer(parse_args(["--resume", str(tmp_path / "last.pt"), "--steps", "4",
                                  "--device", "cuda"]))
    assert resumed.step == 2 and resumed.amp
    resumed.fit()
    assert resumed.step == 4


def test_without_local_rank_ranks_fill_each_nodes_gpus_in_blocks(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU cannot exist here
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("RANK", "6")  # the third GPU of the second node of four GPUs
    assert _device("auto") == torch.device("cuda", 2) and chosen == [2]
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _device("cuda") == torch.device("cuda", 1)


def test_an_unknown_device_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data", str(tmp_path), "--device", "gpu"])
    assert exit_info.value.code == 2
    assert "--device must be one of auto, cuda, cpu, not 'gpu'" in capsys.readouterr().err


def test_fine_tuning_starts_from_the_weights_with_a_fresh_schedule(pool, tmp_path):
    first = Trainer(_config(pool, tmp_path / "a", steps=3))
    first.fit()
    tuned = Trainer(_config(pool, tmp_path / "b", steps=100, gan=True,
                            init_from=str(tmp_path / "a" / "last.pt")))
    assert tuned.step == 0 and tuned.lr_at(0) < tuned.cfg.lr  # warm-up again
    assert tuned.prior_steps == 3 and tuned.state()["prior_steps"] == 3  # exports count them
    a, b = first.generator.state_dict(), tuned.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = tuned.train_step(*next(tuned.batches()))  # a fresh discriminator joins in
    assert logs["adversarial"] > 0 and logs["d_loss"] > 0


def test_a_held_prior_gain_stays_put_while_the_rest_learns(pool, tmp_path):
    first = Trainer(_config(pool, tmp_path / "a", steps=3))
    first.fit()
    assert first.generator.prior_gain.item() != 0.0  # learned
    straight, resumed = _straight_and_resumed(pool, tmp_path / "held", prior_gain=0.3,
                                              init_from=str(tmp_path / "a" / "last.pt"))
    for trainer in (straight, resumed):  # held through a resume too
        assert trainer.generator.prior_gain.item() == np.float32(0.3)  # exactly
        assert not trainer.generator.prior_gain.requires_grad
    a, b = straight.generator.state_dict(), resumed.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = first.generator.state_dict()
    assert not torch.equal(start["stem.0.0.weight"], a["stem.0.0.weight"])


def test_a_prior_gain_without_the_prior_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--shading-prior", "false", "--prior-gain", "0.3"])
    assert "--prior-gain 0.3 needs --shading-prior true" in capsys.readouterr().err


def test_ranks_of_a_run_read_disjoint_shares_and_validation_reads_all(pool, tmp_path,
                                                                      monkeypatch):
    cfg = _config(pool, tmp_path, seed=3)
    shares, validation = {}, []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        data = make_dataset(str(pool), cfg)  # as every rank's Trainer makes it
        for epoch in (0, 1, 2):
            data.set_epoch(epoch)
            shares[rank, epoch] = {p.key for p in data._patches()}
        validation.append({p.key for p in make_dataset(str(pool), cfg, True)._patches()})
    # Disjoint and complete in every epoch, and even between ranks an epoch apart.
    for epoch, other in ((0, 0), (1, 1), (0, 1), (2, 1)):
        assert not shares[0, epoch] & shares[1, other]
        assert len(shares[0, epoch] | shares[1, epoch]) == 24
    assert len(validation[0]) == 24  # rank 0 validates on every patch, not its share


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_damaged_shard_stops_the_run_in_one_sentence(pool, tmp_path, capsys, workers):
    import shutil

    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(pool, data)
    options = ["--patch-size", "32", "--channels", "4,8,16", "--threads", "1", "--batch-size",
               "2", "--workers", workers]
    assert main(["--data", str(data), "--out", str(run), "--steps", "2", *options]) == 0
    shard = sorted(data.glob("*.tar"))[-1]
    shard.write_bytes(shard.read_bytes()[:20_000])  # a cut copy
    for args, step, kept in (
            (["--data", str(data), "--out", str(tmp_path / "new"), "--steps", "50", *options],
             0, "no checkpoint was written"),
            (["--resume", str(run / "last.pt"), "--steps", "50"], 2,
             f"its last checkpoint is kept: replace the shard and continue with --resume "
             f"{run / 'last.pt'}")):
        capsys.readouterr()
        assert main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: the shard {shard} cannot be read (")
        assert err[-1].endswith(f"the run stopped at step {step} ({kept})")
        assert "Traceback" not in "\n".join(err)


def test_validation_data_that_gives_no_patch_is_refused(pool, tmp_path, capsys):
    # The pool's patches are 64 px; a 64 px patch turned to the canonical sun is smaller, and
    # this pool's sun is already canonical, so only a larger --patch-size empties it.
    code = main(["--data", "synthetic", "--val-data", str(pool), "--out", str(tmp_path / "run"),
                 "--patch-size", "96", "--channels", "4,8,16", "--threads", "1", "--steps", "2",
                 "--val-every", "1", "--batch-size", "1"])
    assert code == 2
    assert f"the validation data {pool} gave no batch" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any of the run is written


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 7, "lr": 0.5}))
    cfg = parse_args(["--config", str(path), "--lr", "0.25", "--channels", "4,8", "--gan",
                      "true"])
    assert (cfg.steps, cfg.lr, cfg.channels, cfg.gan) == (7, 0.25, [4, 8], True)


def test_unknown_config_key_is_refused(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"stepz": 7}))
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(path)])
    assert exit_info.value.code != 0
    assert "stepz" in capsys.readouterr().err
    path.write_text(json.dumps({"patch-size": 64}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)])
    assert "patch-size (keys are written with _, not -)" in capsys.readouterr().err


def test_the_shading_prior_needs_the_sun_from_the_left(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--shading-prior", "true",
              "--canonical-azimuth", "0"])
    assert exit_info.value.code == 2
    assert "needs --canonical-azimuth 270" in capsys.readouterr().err


def test_a_dem_with_voids_is_refused_by_name(tmp_path, capsys):
    from tests.rasters import write_raster

    heights = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    heights[10:12, 20:30] = -9999.0
    write_raster(tmp_path / "holey.tif", heights, (0, 1.0, 0, 0, 0, -1.0), nodata=-9999.0)
    code = main(["--data", f"dem:{tmp_path}", "--out", str(tmp_path / "o"), "--patch-size", "32"])
    assert code == 2
    assert "holey.tif has 20 nodata pixels" in capsys.readouterr().err


def test_a_dem_that_cannot_be_read_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 a download cut short")
    code = main(["--data", f"dem:{tmp_path}", "--out", str(tmp_path / "o"), "--patch-size", "32"])
    assert code == 2
    assert "broken.tif cannot be read as a raster" in capsys.readouterr().err


def test_missing_data_folder_is_one_clear_error(tmp_path, capsys):
    code = main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no shard files" in capsys.readouterr().err
    code = main(["--data", f"dem:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"no DEM shapes (*.tif) in {tmp_path / 'nowhere'}" in capsys.readouterr().err


def test_a_config_that_is_not_utf8_is_one_sentence(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(path)])
    assert exit_info.value.code == 2
    assert f"cannot read the config file {path}" in capsys.readouterr().err


def _ddp(pool, out, *options: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "-m", "training.train", "--data", str(pool), "--out", str(out),
               "--patch-size", "64", "--batch-size", "2", "--channels", "4,8,16",
               "--threads", "1", "--device", "cpu", *options]  # gloo, also beside a GPU
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(pool, tmp_path):
    result = _ddp(pool, tmp_path, "--steps", "3", "--gan", "true", "--checkpoint-every", "3",
                  "--prior-gain", "0.3")  # a parameter without gradient beside DDP's
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["disc"] is not None
    assert state["generator"]["prior_gain"].item() == np.float32(0.3)


@pytest.mark.slow
def test_ddp_ranks_stop_together_when_time_is_up(pool, tmp_path):
    # Rank 0's clock decides: a rank stopping alone would leave the other in an all-reduce.
    result = _ddp(pool, tmp_path, "--steps", "100000", "--max-minutes", "0.01",
                  "--checkpoint-every", "100000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("--max-minutes 0.01 reached; continue with --resume") == 1
    assert 0 < torch.load(tmp_path / "last.pt", weights_only=True)["step"] < 100000


def test_missing_validation_folder_is_one_clear_error(pool, tmp_path, capsys):
    code = main(["--data", str(pool), "--val-data", str(tmp_path / "none"), "--out",
                 str(tmp_path / "o"), "--patch-size", "64"])
    assert code == 2
    assert "no shard files" in capsys.readouterr().err


def _tiny_run(pool, out, *options: str) -> int:
    return main(["--data", str(pool), "--out", str(out), "--patch-size", "32", "--batch-size",
                 "2", "--channels", "4,8,16", "--threads", "1", "--checkpoint-every", "1000",
                 "--lr", "0.003", *options])


def test_resume_alone_takes_the_saved_options_and_folder(pool, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert _tiny_run(pool, run, "--steps", "2") == 0
    monkeypatch.chdir(tmp_path)  # the default --out would be runs/model here
    assert main(["--resume", str(run / "last.pt"), "--steps", "3"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3
    saved = json.loads((run / "config.json").read_text())
    assert (saved["data"], saved["channels"], saved["lr"]) == (str(pool), [4, 8, 16], 0.003)
    assert saved["steps"] == 3 and not (tmp_path / "runs").exists()


def test_resuming_a_run_stopped_early_says_it_has_nothing_to_train(pool, tmp_path, capsys):
    run = tmp_path / "run"
    assert _tiny_run(pool, run, "--steps", "4", "--stop-at", "2") == 0
    capsys.readouterr()
    assert main(["--resume", str(run / "last.pt")]) == 0  # the saved --stop-at 2 holds
    assert "nothing to train: the run is at step 2 and stops at 2" in capsys.readouterr().err
    assert main(["--resume", str(run / "last.pt"), "--stop-at", "0"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 4


def test_the_defaults_are_the_bundled_recipes_network():
    recipe = json.loads((Path(__file__).parents[2] / "training/configs/quick.json").read_text())
    defaults = dataclasses.asdict(parse_args([]))
    # All but how long and on what machine the recipe runs, and its GAN ablation's weight.
    run_length = {"steps", "workers", "threads", "val_every", "checkpoint_every", "max_minutes"}
    learned = {k: v for k, v in recipe["train"].items() if k not in run_length}
    assert {k: defaults[k] for k in learned} == learned


def _strip_saved(run: Path, *names: str) -> None:
    """Make ``run`` look saved before ``names`` were options."""
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"] = {k: v for k, v in state["config"].items() if k not in names}
    torch.save(state, run / "last.pt")


def test_a_run_saved_before_an_option_existed_keeps_what_it_was_trained_with(pool, tmp_path,
                                                                             capsys):
    run = tmp_path / "run"
    assert _tiny_run(pool, run, "--steps", "2", "--input-scaling", "percentile",
                     "--norm-mean", "0.5", "--norm-std", "0.25", "--shading-prior",
                     "false", "--prior-window", "0") == 0
    _strip_saved(run, "input_scaling", "shading_prior", "prior_window")
    cfg = parse_args(["--resume", str(run / "last.pt")])
    assert (cfg.input_scaling, cfg.shading_prior, cfg.prior_window) == ("percentile", False, 0)
    code = _tiny_run(pool, tmp_path / "tuned", "--steps", "2", "--norm-mean", "0.5",
                     "--norm-std", "0.25", "--init-from", str(run / "last.pt"))
    assert code == 2
    assert "was trained with shading_prior False, this run has True" in capsys.readouterr().err


def test_resume_with_a_config_keeps_the_saved_data(pool, tmp_path):
    run = tmp_path / "run"
    assert _tiny_run(pool, run, "--steps", "2") == 0
    config = tmp_path / "c.json"  # as make_model writes it, less the data folder
    saved = json.loads((run / "config.json").read_text())
    config.write_text(json.dumps({k: v for k, v in saved.items() if k != "data"}))
    cfg = parse_args(["--config", str(config), "--resume", str(run / "last.pt")])
    assert cfg.data == str(pool) and cfg.out == str(run)


def test_resume_refuses_to_change_what_the_run_learns(pool, tmp_path, capsys):
    run = tmp_path / "run"
    assert _tiny_run(pool, run, "--steps", "2") == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["--resume", str(run / "last.pt"), "--lr", "0.5", "--steps", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--lr cannot change" in err and "Traceback" not in err
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2


def test_an_onnx_model_given_as_weights_is_named_as_such(tmp_path, capsys):
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"\x08\x07onnx")
    code = main(["--data", "synthetic", "--out", str(tmp_path / "run"),
                 "--init-from", str(exported)])
    assert code == 2
    assert f"{exported} is an exported ONNX model, not a training checkpoint" in \
        capsys.readouterr().err


def test_resume_of_a_file_that_is_no_checkpoint_is_one_sentence(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_text("not a pickle")
    with pytest.raises(SystemExit) as exit_info:
        main(["--resume", str(bad)])
    assert exit_info.value.code == 2
    assert f"cannot read the checkpoint {bad}" in capsys.readouterr().err


def test_a_run_out_of_time_says_where_it_stopped(pool, tmp_path, capsys):
    assert _tiny_run(pool, tmp_path, "--steps", "1000", "--max-minutes", "1e-6") == 0
    err = capsys.readouterr().err
    assert "stopped at step 1 of 1000: --max-minutes 1e-06 reached" in err
    assert f"--resume {tmp_path / 'last.pt'}" in err


def test_a_patch_size_off_the_size_multiple_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--patch-size", "48", "--channels", "4,8,16,32,64,128"])
    assert exit_info.value.code == 2
    assert "--patch-size 48 must be a positive multiple of 32" in capsys.readouterr().err


def test_a_wrongly_typed_config_value_is_refused_by_name(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"patch_size": "abc"}))
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(path)])
    assert exit_info.value.code == 2
    assert f"patch_size in the config file {path} must be an integer" in capsys.readouterr().err


def test_patches_all_too_small_are_one_clear_error(pool, tmp_path, capsys):
    # The pool's patches are 64 px: none holds a 128 px training patch.
    code = main(["--data", str(pool), "--out", str(tmp_path / "run"), "--patch-size", "128",
                 "--channels", "4,8,16", "--threads", "1", "--steps", "2"])
    assert code == 2
    assert "cut tiles of at least 182 px" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # no logs of a run that never started


@pytest.mark.parametrize("flag, value, said", [
    ("--val-every", "0", "--val-every must be at least 1, not 0"),
    ("--batch-size", "0", "--batch-size must be at least 1, not 0"),
    ("--threads", "0", "--threads must be at least 1, not 0"),
    ("--max-minutes", "-1", "--max-minutes must be at least 0, not -1.0"),
    ("--channels", "4,0,16", "--channels must be at least 1, not [4, 0, 16]"),
    ("--norm-std", "0", "--norm-std must be above 0, not 0.0"),
    ("--mean-jitter", "1", "--mean-jitter must be below 1 (a mean scaled by 1 - it), not 1.0"),
    ("--low-relief", "1.5", "--low-relief is a share of the patches, at most 1, not 1.5"),
    ("--keep-steps", "3,abc", "argument --keep-steps: expected numbers separated by commas, "
                              "got '3,abc' (see --help)"),
    ("--keep-steps", "0", "--keep-steps 0 is not a step of the run (1 to 6000): no checkpoint "
                          "would be kept there"),
    ("--keep-steps", "100,7000", "--keep-steps 7000 is not a step of the run (1 to 6000)"),
    ("--percentiles", "99,1", "--percentiles must be two percentiles, low then high, between "
                              "0 and 100, not [99, 1]"),
    ("--percentiles", "1", "--percentiles must be two percentiles, low then high, between "
                           "0 and 100, not [1]"),
    ("--prior-window", "64", "--prior-window must be 0 or an odd number of pixels, not 64"),
    ("--distribution-window", "24", "--distribution-window must divide the patch size (32 px) "
                                    "into whole windows, not 24"),
    ("--distribution-window", "64", "--distribution-window must divide the patch size (32 px) "
                                    "into whole windows, not 64"),
    ("--input-scaling", "meanratio",
     "--input-scaling must be one of percentile, mean_ratio, not 'meanratio'"),
    ("--gradient", "nan", "--gradient must be a finite number, not nan"),
    ("--prior-gain", "nan", "--prior-gain must be a finite number, not nan"),
    ("--lr", "inf", "--lr must be a finite number, not inf"),
])
def test_values_that_cannot_work_are_refused_before_training(capsys, flag, value, said):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--channels", "4,8,16", "--patch-size", "32", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1  # one sentence, without fifty options' usage


def test_one_patch_a_batch_with_a_one_pixel_deepest_level_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--channels", "4,8,16", "--patch-size", "4", "--batch-size", "1"])
    assert exit_info.value.code == 2
    assert "whose batch norm needs at least 2 patches a batch" in capsys.readouterr().err
    assert parse_args(["--channels", "4,8,16", "--patch-size", "8", "--batch-size", "1"])


def test_low_relief_patches_need_ratio_scaled_input(capsys):
    """A percentile stretch would undo the lower contrast: flatter heights, the same input."""
    with pytest.raises(SystemExit):
        parse_args(["--low-relief", "0.2", "--input-scaling", "percentile"])
    assert "--low-relief needs --input-scaling mean_ratio" in capsys.readouterr().err


def test_a_new_run_does_not_write_over_another(pool, tmp_path, capsys):
    assert _tiny_run(pool, tmp_path, "--steps", "2") == 0
    before = (tmp_path / "last.pt").read_bytes()
    capsys.readouterr()
    assert _tiny_run(pool, tmp_path, "--steps", "3") == 2
    assert f"{tmp_path} already holds a run; continue it with --resume " \
        f"{tmp_path / 'last.pt'}" in capsys.readouterr().err
    assert (tmp_path / "last.pt").read_bytes() == before


def test_a_resumed_run_does_not_write_over_another_either(pool, tmp_path, capsys):
    assert _tiny_run(pool, tmp_path / "a", "--steps", "2") == 0
    assert _tiny_run(pool, tmp_path / "b", "--steps", "2", "--seed", "9") == 0
    before = (tmp_path / "b" / "last.pt").read_bytes()
    capsys.readouterr()
    code = main(["--resume", str(tmp_path / "a" / "last.pt"), "--steps", "4",
                 "--out", str(tmp_path / "b")])
    assert code == 2
    assert f"{tmp_path / 'b'} already holds a run" in capsys.readouterr().err
    assert (tmp_path / "b" / "last.pt").read_bytes() == before
    # Into a new folder it continues there (a branch of the run).
    assert main(["--resume", str(tmp_path / "a" / "last.pt"), "--steps", "3",
                 "--out", str(tmp_path / "c")]) == 0
    # An older checkpoint of a run does not go on over the run's own last.pt.
    assert _tiny_run(pool, tmp_path / "d", "--steps", "3", "--keep-steps", "1") == 0
    latest = (tmp_path / "d" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "d" / "step_1.pt"), "--stop-at", "2"]) == 2
    assert f"{tmp_path / 'd'} already holds a run" in capsys.readouterr().err
    assert (tmp_path / "d" / "last.pt").read_bytes() == latest


def test_fine_tuning_weights_of_another_architecture_is_one_sentence(pool, tmp_path, capsys):
    assert _tiny_run(pool, tmp_path / "a", "--steps", "1") == 0
    capsys.readouterr()
    code = main(["--data", str(pool), "--out", str(tmp_path / "b"), "--patch-size", "32",
                 "--channels", "4,8,32", "--threads", "1", "--steps", "1",
                 "--init-from", str(tmp_path / "a" / "last.pt")])
    assert code == 2
    assert f"{tmp_path / 'a' / 'last.pt'} was trained with channels [4, 8, 16], this run has " \
        "[4, 8, 32]" in capsys.readouterr().err
    assert not (tmp_path / "b" / "last.pt").exists()


def test_no_channels_in_a_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"channels": []}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])
    assert "--channels needs at least one value" in capsys.readouterr().err


def test_a_diverging_run_stops_in_one_sentence_before_saving_at_that_step(pool, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    code = _tiny_run(pool, run, "--steps", "40", "--lr", "1e30", "--checkpoint-every", "1")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "training diverged (lower --lr, or check the data)" in err
    step = int(err.split(" at step ")[1].split(":")[0])
    assert step < 40
    if (run / "last.pt").exists():  # saved every step, but not at the step that diverged
        state = torch.load(run / "last.pt", weights_only=True)
        assert state["step"] == step - 1
        assert all(torch.isfinite(t).all() for t in state["generator"].values())


def test_a_saved_config_starts_a_new_run_not_a_resumed_one(pool, tmp_path):
    run = tmp_path / "run"
    assert _tiny_run(pool, run, "--steps", "4", "--stop-at", "2") == 0
    assert main(["--resume", str(run / "last.pt"), "--stop-at", "0"]) == 0
    assert "resume" not in json.loads((run / "config.json").read_text())
    fresh = tmp_path / "fresh"
    assert main(["--config", str(run / "config.json"), "--out", str(fresh), "--steps", "3"]) == 0
    assert torch.load(fresh / "last.pt", weights_only=True)["step"] == 3


def test_a_run_given_relative_paths_resumes_from_another_folder(pool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _tiny_run(os.path.relpath(pool), "run", "--steps", "4", "--stop-at", "2") == 0
    assert json.loads((tmp_path / "run/config.json").read_text())["data"] == str(pool.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["--resume", "../run/last.pt", "--stop-at", "0"]) == 0
    assert torch.load(tmp_path / "run/last.pt", weights_only=True)["step"] == 4


def test_an_output_that_is_a_file_is_refused(pool, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("notes")
    assert _tiny_run(pool, taken, "--steps", "2") == 2
    assert f"--out {taken} is a file; give a folder for the run" in capsys.readouterr().err
    assert taken.read_text() == "notes"


def test_ctrl_c_says_where_the_run_stopped_and_keeps_its_checkpoint(pool, tmp_path):
    import signal
    import time

    root = Path(__file__).parents[2]
    command = [sys.executable, "-m", "training.train", "--data", str(pool), "--out",
               str(tmp_path), "--patch-size", "32", "--batch-size", "2", "--channels",
               "4,8,16", "--threads", "1", "--steps", "100000", "--checkpoint-every", "1"]
    with subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}) as run:
        deadline = time.monotonic() + 120
        while not (tmp_path / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        err = run.communicate(timeout=60)[1]
    assert run.returncode == 130 and "Traceback" not in err
    assert "error: interrupted at step " in err
    assert f"its last checkpoint is kept: continue with --resume {tmp_path / 'last.pt'}" in err
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] >= 1


def test_a_checkpoint_the_disk_cannot_take_stops_the_run_in_one_sentence(pool, tmp_path):
    """A file size limit below a checkpoint's: writes fail as on a full disk."""
    import resource
    import signal

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    root = Path(__file__).parents[2]
    command = [sys.executable, "-m", "training.train", "--data", str(pool), "--out",
               str(tmp_path), "--patch-size", "32", "--batch-size", "2", "--channels",
               "4,8,16", "--threads", "1", "--steps", "2", "--checkpoint-every", "1"]
    run = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                         preexec_fn=limit_file_size, env={**os.environ, "PYTHONPATH": str(root),
                                                          "PYTHONDONTWRITEBYTECODE": "1"})
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "error: the checkpoint could not be written: unexpected pos " in run.stderr
    assert (f" (is the disk full?) ({tmp_path / 'last.tmp'}); the run stopped at step 1 (no "
            "checkpoint was written)" in run.stderr)
    assert not list(tmp_path.glob("last*"))  # nothing half-written
