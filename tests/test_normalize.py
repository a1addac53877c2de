"""Feature standardisation: fitted on training rows, stored in the checkpoint, same transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from zoommil.errors import ZoomMILError
from zoommil.training.config import load_config
from zoommil.training.normalize import FeatureNorm, fit_feature_norm


def test_fit_matches_numpy_over_all_rows_of_all_bags():
    rng = np.random.default_rng(0)
    bags = [rng.normal(10.0, 2.0, size=(1, n, 8)).astype(np.float32) for n in (3, 7, 20)]
    norm = fit_feature_norm(torch.from_numpy(b) for b in bags)
    rows = np.concatenate([b[0] for b in bags])
    np.testing.assert_allclose(norm.mean.numpy(), rows.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.std.numpy(), rows.std(0), rtol=1e-4)
    out = norm(torch.from_numpy(rows))
    np.testing.assert_allclose(out.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(0, unbiased=False).numpy(), 1.0, atol=1e-3)


def test_constant_dimensions_are_only_centred():
    """A dimension that never varied in training (a dead channel) keeps scale 1: a new slide
    where it fires must not land thousands of standard deviations out."""
    rng = np.random.default_rng(0)
    rows = rng.normal(10.0, 2.0, size=(50, 4)).astype(np.float32)
    rows[:, 1] = 0.0  # dead
    rows[:, 3] = 7.0  # constant, away from zero (float cancellation leaves a tiny spread)
    norm = fit_feature_norm([torch.from_numpy(rows)])
    assert norm.std[1].item() == 1.0 and norm.std[3].item() == 1.0
    new = torch.tensor([[10.0, 2.5, 10.0, 8.0]])
    out = norm(new)[0]
    assert out[1].item() == pytest.approx(2.5) and out[3].item() == pytest.approx(1.0)
    np.testing.assert_allclose(norm.std[[0, 2]].numpy(), rows[:, [0, 2]].std(0), rtol=1e-4)


def test_round_trip_through_plain_config():
    norm = FeatureNorm(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0]))
    again = FeatureNorm.from_config(norm.to_config())
    x = torch.tensor([[2.0, 2.0]])
    assert torch.equal(again(x), torch.tensor([[2.0, 1.0]]))
    assert FeatureNorm.from_config(None) is None


def test_fit_on_nothing_is_an_error():
    with pytest.raises(ValueError):
        fit_feature_norm([])


def test_config_accepts_known_norms_and_rejects_others(tmp_path):
    base = {"features_dir": "f", "sheet": "s.tsv", "mags": [10]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**base, "feature_norm": "standardize"}))
    assert load_config(path).feature_norm == "standardize"
    path.write_text(yaml.safe_dump(base))
    assert load_config(path).feature_norm == "none"
    path.write_text(yaml.safe_dump({**base, "feature_norm": "zscore"}))
    with pytest.raises(ZoomMILError, match="feature_norm"):
        load_config(path)
