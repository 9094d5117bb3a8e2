"""Devices: ``train.device``, placement, and checks that catch device mistakes on a machine without a GPU.

The ``meta`` device holds shapes and no data; an elementwise op between a meta tensor and a (non-scalar) CPU
tensor fails there exactly as it would between a CUDA and a CPU tensor. Every model's training step and its
inference path run on ``meta`` after :meth:`Task.to`, so a tensor created on the CPU in hot code, or a table
the task forgot to move, fails here without a GPU. The ``-m gpu`` tests at the end run the same paths on a real
GPU and skip when CUDA is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx.experimental._config as fx_config

from sidrec.config import load_config
from sidrec.data.protocol import LeaveOneOut
from sidrec.device import for_rebuild, resolve, to_device
from sidrec.errors import SidrecError
from sidrec.methods.registry import get_builder
from sidrec.pipeline import dataset_from_config

META = torch.device("meta")
BASE = ["size=none", "data.path=synthetic", "data.synthetic_users=300", "data.synthetic_items=100", "data.max_len=10",
        "features.kind=attributes", "eval.ks=[5,10]", "train.batch_size=32", "train.progress=false",
        "train.threads=1", "tokenizer.progress=false"]
TIGER = ["tokenizer.kind=rqkmeans", "tokenizer.levels=2", "tokenizer.codebook_sizes=[8]",
         "tokenizer.collision_codebook=64", "tiger.d_model=16", "tiger.encoder_layers=1", "tiger.decoder_layers=1",
         "tiger.n_heads=2", "tiger.head_dim=8", "tiger.ffn_dim=32", "tiger.beam=10"]
SETTINGS = {
    "sasrec": ["method=sasrec", "sasrec.d_model=16", "sasrec.n_layers=1", "sasrec.n_heads=2"],
    "sasrec-content": ["method=sasrec", "sasrec.d_model=16", "sasrec.n_layers=1", "sasrec.n_heads=2",
                       "sasrec.item_content=init"],
    "tiger": ["method=tiger", *TIGER],
    "tiger-decoder": ["method=tiger", *TIGER, "tiger.arch=decoder"],
    "diger": ["method=diger", *TIGER[3:], "tokenizer.kind=rqvae", "tokenizer.levels=2", "tokenizer.codebook_sizes=[8]",
              "tokenizer.hidden_dims=[16]", "tokenizer.latent_dim=8", "tokenizer.epochs=2",
              "tokenizer.collision_codebook=64"],
    "acerec": ["method=acerec", "tokenizer.kind=opq", "tokenizer.subspaces=4", "tokenizer.subspace_codes=16",
               "acerec.d_model=16", "acerec.n_latents=2", "acerec.n_layers=1", "acerec.n_heads=2", "acerec.ffn_dim=32"],
    "acerec-full": ["method=acerec", "tokenizer.kind=opq", "tokenizer.subspaces=4", "tokenizer.subspace_codes=16",
                    "acerec.d_model=16", "acerec.n_latents=2", "acerec.n_layers=1", "acerec.n_heads=2",
                    "acerec.ffn_dim=32", "acerec.merge=atm", "acerec.intent_token=true", "acerec.isa=true"],
    "acerec-codes-cosine": ["method=acerec", "tokenizer.kind=opq", "tokenizer.subspaces=4",
                            "tokenizer.subspace_codes=16", "acerec.d_model=16", "acerec.n_latents=2",
                            "acerec.n_layers=1", "acerec.n_heads=2", "acerec.ffn_dim=32", "acerec.merge=atm",
                            "acerec.atm_values=codes", "acerec.atm_cosine_scale=4"],
}


@pytest.fixture(autouse=True)
def _meta_data_dependent_ops(monkeypatch):
    """Boolean-mask indexing and ``unique`` have data-dependent shapes; on meta they are allowed by assuming every
    entry is selected and distinct (the shapes are then an upper bound, which is all these tests read)."""
    old = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True
    real = torch.unique

    def unique(x, *args, **kwargs):
        if x.device != META:
            return real(x, *args, **kwargs)
        out = (x.clone(),)
        if kwargs.get("return_inverse"):
            out += (torch.arange(x.numel(), device=META).view(x.shape),)
        if kwargs.get("return_counts"):
            out += (torch.ones_like(x),)
        return out if len(out) > 1 else out[0]

    monkeypatch.setattr(torch, "unique", unique)
    yield
    fx_config.meta_nonzero_assume_all_nonzero = old


def _task(name: str, tmp_path):
    cfg = load_config(None, BASE + SETTINGS[name] + [f"run_dir={tmp_path / name}"])
    ds = dataset_from_config(cfg)
    split = LeaveOneOut.from_dataset(ds, cfg.data.max_len, cfg.data.cold_threshold)
    (tmp_path / name).mkdir()
    return get_builder(cfg.method)(cfg, ds, split, tmp_path / name), split


# ---------------------------------------------------------------------------------------------- the setting
def test_train_device_is_a_setting_and_auto_is_the_cpu_here(capsys):
    from typer.testing import CliRunner

    from sidrec.cli import app

    out = CliRunner().invoke(app, ["config", "show"]).output
    assert 'device: "auto"' in out and "compile: false" in out
    with pytest.raises(SidrecError, match="train.device.*expected auto, cpu, cuda or cuda:N"):
        load_config(None, ["train.device=gpu0"])
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: auto resolves to it")
    assert resolve("auto") == torch.device("cpu")
    with pytest.raises(SidrecError, match="CUDA is not available"):
        resolve("cuda:0")
    assert for_rebuild("cuda") == torch.device("cpu")  # a GPU-trained run is evaluated on a CPU-only machine


def test_a_cuda_run_on_a_cpu_machine_fails_before_any_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from sidrec.pipeline import train

    run = tmp_path / "r"
    with pytest.raises(SidrecError, match="train.device is 'cuda'"):
        train(load_config(None, BASE + SETTINGS["sasrec"] + [f"run_dir={run}", "train.device=cuda"]))
    assert not run.exists()


# ---------------------------------------------------------------------------------------------- meta device
@pytest.mark.parametrize("name", list(SETTINGS))
def test_one_training_step_and_inference_on_the_meta_device(name, tmp_path, one_thread):
    task, split = _task(name, tmp_path)
    batch = task.train_batches(0)[0]  # built on the host, as the trainer gets them
    task.to(META)
    assert all(p.device == META for p in task.model.parameters())
    assert all(b.device == META for b in task.model.buffers())
    task.model.train()
    loss = task.loss(task.model, to_device(batch, META))
    assert loss.device == META and loss.dim() == 0
    loss.backward()
    opt = torch.optim.AdamW([p for p in task.model.parameters() if p.requires_grad])
    opt.step()
    hist = to_device(split.valid.padded_histories(np.arange(4), pad=-1), META)
    if task.scoring == "dense":
        scores = task.model_scores(task.model, hist)
        assert scores.device == META and scores.shape == (4, split.n_items)
    else:
        from sidrec.decoding.beam import beam_search, sequence_log_probs

        core = task._decoder(task.model)
        core.eval()
        users = task._users(to_device(torch.from_numpy(split.valid.users[:4]).long(), META))
        res = beam_search(core, (task.codes_of(hist), users), task.trie, 5, 5)
        assert res.items.device == META and res.items.shape == (4, 5)
        cand = torch.zeros(4, 3, dtype=torch.long, device=META)
        lp = sequence_log_probs(core, (task.codes_of(hist), users), task.codes_of(cand))
        assert lp.device == META and lp.shape == (4, 3)


def test_content_grounding_on_the_meta_device(tmp_path):
    from sidrec import fusion
    from sidrec.fusion import Fusion

    task, split = _task("sasrec", tmp_path)
    g = fusion.grounding_for(task.cfg, dataset_from_config(task.cfg), split).to(META)
    hist = to_device(split.valid.padded_histories(np.arange(4), pad=-1), META)
    sim = g.index.similarity(hist)
    sc = g.index.ranker_scores(sim)
    assert sim.device == META and sc.device == META and sc.shape == (4, split.n_items)
    fused = g.dense(torch.zeros(4, split.n_items, device=META), sim, Fusion(2.0, 3.0))
    assert fused.device == META


def test_cpde_step_on_the_meta_device(tmp_path, one_thread):
    """DREAM's CPDE: the LoRA-adapted backbone, the hypotheses' log-probabilities, their NLL, the KL to the
    reference and the weight update, on meta."""
    from sidrec.dream.cpde import add_lora, update_weights
    from sidrec.dream.uc3 import hypothesis_log_probs, level_log_probs, nll_from_log_probs

    task, split = _task("tiger", tmp_path)
    task.to(META)
    peft_model = add_lora(task.model, 4, 8)
    model = peft_model.base_model.model
    assert all(p.device == META for p in peft_model.parameters())
    hist = to_device(split.valid.padded_histories(np.arange(4), pad=-1), META)
    users = task._users(to_device(torch.from_numpy(split.valid.users[:4]).long(), META))
    mem, val = model.encode(task.codes_of(hist), users)
    hyps = torch.zeros(4, 3, task.sids.length, dtype=torch.long, device=META)
    lps = hypothesis_log_probs(model, mem, val, hyps)
    nll = nll_from_log_probs(lps, hyps, "mean")
    lp = level_log_probs(model, mem, val, hyps[:, 0])
    loss = nll.mean() + torch.stack([x.mean() for x in lp]).sum()
    loss.backward()
    w = torch.full((4, 3), 1 / 3, device=META)
    valid = torch.ones(4, 3, dtype=torch.bool, device=META)
    new = update_weights(w, w, nll.detach(), torch.ones_like(w), valid, 0.5, 0.0)
    assert new.device == META and new.shape == (4, 3)


# ---------------------------------------------------------------------------------------------- saved state
def test_resume_state_from_a_gpu_run_resumes_on_the_cpu(tmp_path, one_thread):
    """A state written on a GPU (with every rank's CUDA RNG, row per rank) resumes on a CPU-only machine: the
    weights and optimizer moments are mapped to the current device and the CUDA RNG rows are left unused."""
    from sidrec.pipeline import train
    from sidrec.training.state import STATE_FILE, load_state, save_state

    run = tmp_path / "r"
    over = BASE + SETTINGS["sasrec"] + [f"run_dir={run}", "train.epochs=2", "train.device=cpu"]
    train(load_config(None, over))
    path = run / "checkpoints" / STATE_FILE
    st = load_state(path)
    st["epoch"] = 1  # as if stopped after epoch 1
    st["cuda_rng"] = torch.zeros(2, 16, dtype=torch.uint8)  # as two ranks' GPUs would have left it
    save_state(path, st)
    res = train(load_config(None, over), resume=True)
    assert res["summary"]["epochs"] == 2


def _rewind(run, epoch):
    """Mark a finished run's last state as written after ``epoch`` (so ``--resume`` trains the rest again)."""
    from sidrec.training.state import STATE_FILE, load_state, save_state

    st = load_state(run / "checkpoints" / STATE_FILE)
    st["epoch"], st["bad_epochs"] = epoch, 0
    save_state(run / "checkpoints" / STATE_FILE, st)


# ---------------------------------------------------------------------------------------------- a real GPU
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _gpu_train(tmp_path, name, extra=()):
    from sidrec.pipeline import train

    run = tmp_path / name
    over = BASE + SETTINGS[name] + [f"run_dir={run}", "train.epochs=3", "train.device=cuda", *extra]
    return run, train(load_config(None, over))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sasrec", "tiger", "acerec", "diger"])
def test_gpu_training_and_evaluation(name, tmp_path):
    from sidrec.pipeline import load_run

    run, res = _gpu_train(tmp_path, name)
    assert res["test"]["all"]["ndcg@10"] > 0
    cfg, ds, split, task = load_run(run)
    assert task.device.type == "cuda" and next(task.model.parameters()).is_cuda
    assert task.evaluate(task.model, "test")["all"]["ndcg@10"] == pytest.approx(res["test"]["all"]["ndcg@10"])
    # the same weights on the CPU rank (almost) the same: only float rounding differs between devices
    _, _, _, cpu_task = load_run(run, overrides=["train.device=cpu"])
    cpu = cpu_task.evaluate(cpu_task.model, "test")["all"]["ndcg@10"]
    assert cpu == pytest.approx(res["test"]["all"]["ndcg@10"], abs=0.02)


@gpu
@pytest.mark.gpu
def test_gpu_decoding_matches_the_cpu(tmp_path):
    from sidrec.pipeline import load_run

    run, _ = _gpu_train(tmp_path, "tiger")
    _, _, split, g = load_run(run)
    _, _, _, c = load_run(run, overrides=["train.device=cpu"])
    es = split.test.subset(np.arange(32))
    gi, gs = g.decode(g.model, es, 5)
    ci, cs = c.decode(c.model, es, 5)
    assert gi.device.type == "cpu"  # results come back to the host
    assert (gi[:, 0] == ci[:, 0]).float().mean() > 0.9
    torch.testing.assert_close(gs[:, 0], cs[:, 0], atol=1e-3, rtol=1e-3)


@gpu
@pytest.mark.gpu
def test_gpu_run_resumes_on_the_cpu_and_back(tmp_path):
    from sidrec.pipeline import train

    run = tmp_path / "r"
    over = BASE + SETTINGS["tiger"] + [f"run_dir={run}", "train.epochs=3"]
    train(load_config(None, over + ["train.device=cuda"]))
    _rewind(run, 1)
    res = train(load_config(None, over + ["train.device=cpu"]), resume=True)  # GPU state, CPU machine
    assert res["summary"]["epochs"] == 3
    _rewind(run, 2)
    res = train(load_config(None, over + ["train.device=cuda"]), resume=True)  # and back
    assert res["summary"]["epochs"] == 3


@pytest.mark.slow
def test_the_gpu_check_dry_run_runs_end_to_end(tmp_path):
    """``benchmarks/gpu_check.py --device cpu`` (the dry run of the prepared GPU check) on the synthetic data."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "dry.json"
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--dataset", "synthetic",
                          "--minutes", "0.05", "--skip-tests", "--cpu-steps", "1", "--out", str(out)],
                         cwd=repo, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    recs = json.loads(out.read_text())
    assert {r["method"] for r in recs} == {"tiger", "acerec"}
    for r in recs:
        assert r["metrics"]["samples_per_s"] > 0 and r["metrics"]["cpu_samples_per_s"] > 0
        assert r["per_epoch"] and r["device"] == {"device": "cpu"}
