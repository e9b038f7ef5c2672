"""launch.report's learning-curve summaries: per-objective medians with the seeds'
band, and the dip of a fine-tuning curve below the pretrained score."""

from __future__ import annotations

import numpy as np
import pytest

from launch.report import RunCurve, dip, objective_curves, on_grid


def curve(name, objective, steps, values, normalized=True):
    return RunCurve(name=name, objective=objective, env_steps=list(steps),
                    returns=[10 * v for v in values],
                    normalized=list(values) if normalized else [],
                    updates_per_s=None, sample_wait=None)


def test_a_curve_that_dips_reports_its_lowest_point_and_its_way_back():
    run = curve("odt_td3-seed0", "odt_td3", [0, 100, 200, 300, 400], [20, 12, 8, 19, 30])
    assert dip(run, pretrained=20) == {"lowest": 8.0, "lowest_at": 200, "dips": True,
                                       "back_above_at": 400}
    never_back = curve("odt-seed0", "odt", [0, 100, 200], [20, 5, 10])
    assert dip(never_back, pretrained=20)["back_above_at"] is None
    rising = curve("odt-seed1", "odt", [0, 100, 200], [20, 25, 30])
    assert dip(rising, pretrained=20) == {"lowest": 25.0, "lowest_at": 100, "dips": False,
                                          "back_above_at": 100}
    # The evaluation at step 0 is the pretrained policy, read back as float32.
    flat = curve("odt-seed2", "odt", [0, 100], [np.float32(2.2274132560458786), 2.2274132])
    assert dip(flat, pretrained=2.2274132560458786)["dips"] is False
    assert dip(curve("r", "odt", [0], [20]), pretrained=20)["lowest"] is None


def test_curves_are_interpolated_and_raw_returns_stand_in_without_reference_scores():
    run = curve("r", "odt", [0, 100], [0.0, 10.0])
    np.testing.assert_allclose(on_grid(run, [0, 50, 100, 150]), [0, 5, 10, 10])
    raw = curve("r", "odt", [0, 100], [1.0, 2.0], normalized=False)
    np.testing.assert_allclose(on_grid(raw, [50]), [15.0])


def test_objective_curves_write_a_png_and_give_medians_at_budget_fractions(tmp_path):
    runs = [curve(f"odt-seed{s}", "odt", [0, 200, 400], [10, 10 + s, 20 + s]) for s in range(3)]
    runs += [curve(f"odt_td3-seed{s}", "odt_td3", [0, 200, 400], [10, 30, 40 + s])
             for s in range(3)]
    at = objective_curves(runs, tmp_path / "learning.png", budget=400, pretrained=[10, 10, 11])
    assert (tmp_path / "learning.png").stat().st_size > 10_000
    assert at["odt"]["50%"] == pytest.approx(11.0) and at["odt"]["100%"] == pytest.approx(21.0)
    assert at["odt_td3"]["25%"] == pytest.approx(20.0)
    assert at["odt_td3"]["100%"] == pytest.approx(41.0)


def test_incontext_curves_write_a_png_with_one_line_per_method(tmp_path):
    import matplotlib.image

    from launch.report import incontext_curves

    rising = np.stack([np.linspace(2, 15 + s, 40) for s in range(3)])
    flat = np.full((3, 40), 9.0)
    path = incontext_curves({"AD": rising, "ED": flat}, tmp_path / "incontext.png",
                            optimal=16.0, random=2.0)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 500
    # Lines and bands in colour, not a blank canvas.
    assert (np.ptp(image[..., :3], axis=-1) > 0.2).mean() > 0.005

