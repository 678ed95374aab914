"""Tensor Programs IV module: config, the Word2Vec toy pieces against closed forms and brute force, the exact
muP limit against wide networks, the word2vec-recipe equivalence, and tiny end-to-end runs."""

import itertools
import math

import numpy as np
import pytest
import torch

from repro.core.data import DataUnavailable
from repro.infinite_width import mup_feature_learning as mfl
from repro.profiles import PROFILES, ConfigError

TINY_TOY = dict(n_a=3, n_b=3, ctx_per_value=2, w2v_pairs=600, w2v_widths=(8, 32), w2v_steps=40, w2v_batch=32)


def test_every_profile_has_a_valid_config_and_overrides_apply():
    for profile in PROFILES:
        cfg = mfl.config(profile)
        assert cfg.profile == profile and cfg.coord_depth == 3 and cfg.w2v_negatives == 5
    cfg = mfl.config("cpu", w2v_widths="[256, 64]", coord_seeds=None)
    assert cfg.w2v_widths == (64, 256) and cfg.coord_seeds == mfl.config("cpu").coord_seeds
    assert mfl.config("smoke", w2v_parametrizations="mup").w2v_parametrizations == ("mup",)


def test_bad_knobs_raise_errors_that_name_them():
    with pytest.raises(ConfigError, match="unknown knob"):
        mfl.config("cpu", width=3)
    with pytest.raises(ConfigError, match="w2v_parametrizations"):
        mfl.config("cpu", w2v_parametrizations=("mup", "ntp"))
    with pytest.raises(ConfigError, match="coord_widths"):  # beyond the cpu profile's time budget
        mfl.config("cpu", coord_widths=(64, 8192))
    with pytest.raises(ConfigError, match="text8_tokens"):
        mfl.config("cpu", text8_tokens=1000)
    with pytest.raises(ConfigError, match="coord_widths"):
        mfl.config("smoke", coord_widths=(32, -4))
    with pytest.raises(ConfigError, match="n_a"):
        mfl.config("smoke", n_a=1)


def test_theory_table_puts_mup_alone_with_standard_view_in_feature_learning():
    rows = {r["parametrization"]: r for r in mfl.theory_table()}
    assert rows["muP"]["feature_learning"] and rows["muP"]["r"] == 0
    assert rows["NTK"]["kernel_regime"] and rows["NTK"]["r"] == pytest.approx(0.5)
    assert not rows["SP, fixed lr (c = 0)"]["stable"] and rows["SP, lr 1/n (c = 1)"]["kernel_regime"]


def test_analogy_quadruples_are_all_parallelograms_of_the_grid():
    n_a, n_b = 4, 3
    quads = mfl.analogy_quadruples(n_a, n_b)
    assert quads.shape == (n_a * (n_a - 1) * n_b * (n_b - 1), 4) and len({tuple(q) for q in quads}) == len(quads)
    a, b = np.divmod(quads, n_b)
    assert np.all(a[:, 0] == a[:, 1]) and np.all(a[:, 2] == a[:, 3]) and np.all(a[:, 0] != a[:, 2])
    assert np.all(b[:, 0] == b[:, 3]) and np.all(b[:, 1] == b[:, 2]) and np.all(b[:, 0] != b[:, 1])


def test_analogy_accuracy_matches_brute_force_and_is_one_for_additive_embeddings():
    rng = np.random.default_rng(0)
    n_a, n_b, dim = 4, 4, 6
    quads = mfl.analogy_quadruples(n_a, n_b)
    emb = rng.normal(size=(n_a * n_b, dim))

    def brute(e):
        hits = 0
        for q in quads:
            v = e[q[0]] - e[q[1]] + e[q[2]]
            cos = [-np.inf if w in q[:3] else v @ e[w] / np.linalg.norm(v) / np.linalg.norm(e[w])
                   for w in range(len(e))]
            hits += int(np.argmax(cos) == q[3])
        return hits / len(quads)

    assert mfl.analogy_accuracy(emb, quads) == pytest.approx(brute(emb))
    alpha, beta = rng.normal(size=(n_a, dim)), rng.normal(size=(n_b, dim))
    additive = (alpha[:, None, :] + beta[None, :, :]).reshape(-1, dim)  # e(w_ab) = alpha_a + beta_b
    assert mfl.analogy_accuracy(additive, quads) == 1.0
    # one-hot attributes plus a large one-hot part per word: the query is then closest to w1 and w3 themselves,
    # and only excluding them finds w4 (which shares both attributes with the query, every other word at most one)
    words = np.arange(n_a * n_b)
    noisy = np.concatenate([np.eye(n_a)[words // n_b], np.eye(n_b)[words % n_b], 5 * np.eye(n_a * n_b)], axis=1)
    v = noisy[quads[:, 0]] - noisy[quads[:, 1]] + noisy[quads[:, 2]]
    nearest = np.argmax(v @ (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).T, axis=1)
    assert np.all((nearest == quads[:, 0]) | (nearest == quads[:, 2]))
    assert mfl.analogy_accuracy(noisy, quads) == 1.0


def test_negative_sampling_loss_is_the_closed_form():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    sig = torch.sigmoid
    expected = (-torch.log(sig(logits[:, 0])) - torch.log(sig(-logits[:, 1:])).sum(1)).mean()
    torch.testing.assert_close(mfl.negative_sampling_loss(logits), expected)


def test_skipgram_parametrizations_at_initialization():
    n_words, n_ctx, width = 20, 30, 4096
    mup = mfl.SkipGram(n_words, n_ctx, width, "mup", generator=torch.Generator().manual_seed(0))
    ntk = mfl.SkipGram(n_words, n_ctx, width, "ntk", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(mup.all_logits().abs().max()) == 0.0  # zero readout: the function starts at 0 (Cor. 3.10)
        assert float(ntk.all_logits().std()) == pytest.approx(1.0, abs=0.1)  # NTK: O(1) random logits
        assert float(mup.embeddings().std()) == pytest.approx(1.0, abs=0.02)  # one-hot fan-in 1: N(0, 1)
    assert (mup.scale_u.lr_mult, mup.scale_o.lr_mult) == (width, 1 / width)
    assert (ntk.scale_o.forward_mult, ntk.scale_u.lr_mult) == (pytest.approx(width**-0.5), 1.0)


def _tiny_world():
    cfg = mfl.config("smoke", **TINY_TOY)
    world = mfl.word2vec_world(cfg, seed=1)
    return cfg, world, mfl.word2vec_stream(cfg, world, seed=1)


def test_exact_mup_limit_is_what_wide_networks_converge_to():
    cfg, world, stream = _tiny_world()
    n_words, n_ctx = int(world["n_words"]), int(world["n_contexts"])
    lr = 0.5

    def final_logits(model):
        mfl.train_skipgram(model, world, stream, lr)
        with torch.no_grad():
            return model.all_logits().double().numpy()

    limit = final_logits(mfl.SkipGram.infinite_mup(n_words, n_ctx, dtype=torch.float64))
    err = {}
    for width in (64, 16384):
        runs = [final_logits(mfl.SkipGram(n_words, n_ctx, width, "mup", dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(s))) for s in range(2)]
        err[width] = np.mean([np.abs(r - limit).max() for r in runs])
    assert np.abs(limit).max() > 0.5  # training moved the function by O(1)
    assert err[16384] < 0.1 * np.abs(limit).max() and err[16384] < err[64] / 4  # fluctuations ~ n^(-1/2)


def test_mup_recipe_trains_exactly_like_the_official_word2vec_initialization():
    """Official word2vec: ``U ~ var 1/n``, ``O = 0``, one rate ``alpha``; ours: ``U ~ N(0, 1)`` with lr ``alpha n``
    and ``O = 0`` with lr ``alpha / n``. The rescaling ``U -> U / sqrt(n)``, ``O -> sqrt(n) O`` maps one onto the
    other, so the logits agree at every step."""
    cfg, world, stream = _tiny_world()
    n_words, n_ctx, width, alpha = int(world["n_words"]), int(world["n_contexts"]), 32, 0.3
    ours = mfl.SkipGram(n_words, n_ctx, width, "mup", dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    u = (ours.U.detach().clone() / math.sqrt(width)).requires_grad_()
    o = torch.zeros(n_ctx, width, dtype=torch.float64, requires_grad=True)
    centers, contexts = torch.as_tensor(world["center"]), torch.as_tensor(world["context"])
    opt = torch.optim.SGD([u, o], lr=alpha)
    for step in range(10):
        idx = stream[0][step]
        targets = torch.cat([contexts[idx, None], stream[1][step]], dim=1)
        loss = mfl.negative_sampling_loss((u @ o.T)[centers[idx][:, None], targets])
        opt.zero_grad()
        loss.backward()
        opt.step()
    short = (stream[0][:10], stream[1][:10])
    mfl.train_skipgram(ours, world, short, alpha)
    with torch.no_grad():
        torch.testing.assert_close(ours.all_logits(), u @ o.T)
        assert float((u @ o.T).abs().max()) > 1e-3


def test_tiny_word2vec_toy_returns_consistent_results():
    cfg = mfl.config("smoke", **TINY_TOY)
    toy = mfl.word2vec_toy(cfg, seed=0)
    keys = {(p, w) for p in cfg.w2v_parametrizations for w in cfg.w2v_widths} | {("mup", mfl.INFINITE)}
    assert set(toy["runs"]) == keys and toy["chance"] == pytest.approx(1 / 6)
    for run in toy["runs"].values():
        assert not run["diverged"] and np.all(np.isfinite(run["losses"])) and run["losses"].shape == (40,)
        assert 0 <= run["accuracy"] <= 1 and run["movement"] > 0 and run["pca"].shape == (6, 2)
        sim = run["similarity"]
        assert sim.shape == (9, 9) and np.allclose(np.diag(sim), 1, atol=1e-5) and np.allclose(sim, sim.T)
    mup = toy["runs"][("mup", 32)]["losses"]
    assert mup[-10:].mean() < mup[:10].mean()  # muP training reduces the loss
    acc = mfl.accuracy_table(toy)
    assert set(acc) == {"mup", "ntk"} and set(acc["mup"]) == {8, 32, mfl.INFINITE}


def test_tiny_coordinate_check_has_one_row_per_width():
    cfg = mfl.config("smoke", coord_widths=(16, 48), coord_steps=2, coord_probe=8, coord_batch=8)
    cc = mfl.coordinate_check(cfg, seed=0)
    assert list(cc["record_at"]) == [0, 1, 2] and cc["names"] == ["h1", "h2", "h3", "output"]
    for p in cfg.coord_parametrizations:
        assert cc[p]["mean_change"].shape == (2, 3, 4) and cc[p]["slopes_last"].shape == (4,)
        assert np.all(cc[p]["mean_change"][:, 0] == 0) and np.all(cc[p]["mean_change"][:, 1:] > 0)


def _write_text8(root, n_sentences=600, seed=0):
    """A tiny corpus in text8's format with a planted analogy structure (country / capital pairs)."""
    rng = np.random.default_rng(seed)
    pairs = [("c%d" % i, "k%d" % i) for i in range(6)]
    filler = ["the", "of", "and", "in", "a", "to", "is", "was"]
    words = []
    for _ in range(n_sentences):
        c, k = pairs[rng.integers(len(pairs))]
        words += [c, rng.choice(filler), "capital", k, rng.choice(filler), rng.choice(filler)]
    folder = root / "text8"
    folder.mkdir(parents=True)
    (folder / "text8").write_text(" " + " ".join(words))
    lines = [": capital-common-countries"] + [f"{a} {b} {c} {d}" for (a, b), (c, d) in itertools.permutations(pairs, 2)]
    (folder / "questions-words.txt").write_text("\n".join(lines) + "\n")


def test_text8_pipeline_runs_on_a_tiny_corpus_and_says_when_data_are_missing(tmp_path):
    cfg = mfl.config("full", text8_tokens=0, text8_widths=(8, 16), text8_batch=256, text8_min_count=2,
                     text8_sample=1e-2)
    missing = mfl.text8_word2vec(cfg, root=tmp_path / "nowhere")
    assert not missing["available"] and "text8" in missing["reason"]
    with pytest.raises(DataUnavailable, match="questions-words"):
        mfl.load_analogy_questions(tmp_path / "nowhere")
    _write_text8(tmp_path)
    out = mfl.text8_word2vec(cfg, root=tmp_path)
    assert out["available"] and out["n_questions"] == 30 and out["vocab"] == 21
    assert set(out["accuracy"]) == {8, 16} and all(0 <= a <= 1 for a in out["accuracy"].values())
    assert mfl.text8_word2vec(mfl.config("full", text8_tokens=-1))["available"] is False


def test_cbow_batches_hold_only_real_context_words_inside_the_window():
    cfg = mfl.config("full", text8_window=2, text8_batch=7, text8_sample=1.0)
    ids, counts = np.arange(30) % 5, np.full(5, 6.0)
    for ctx, centre in mfl.cbow_batches(ids, counts, cfg, np.random.default_rng(0), 0):
        assert ctx.shape == (centre.size, 4) and np.all((ctx >= -1) & (ctx < 5))
        assert np.all((ctx >= 0).sum(1) >= 1)
