"""results.json's summary of a stream that mixes pixel-labelled and image-level tasks."""

from __future__ import annotations

import pytest

from edgead.cl.results import summarise


def _row(*cells):
    return [{"image_auroc": i, "pixel_auroc": p} for i, p in cells]


def test_image_level_tasks_are_left_out_of_pixel_forgetting_not_voiding_it():
    # Task 1 is image-level (no pixel metric); tasks 0 and 2 have masks.
    rows = [_row((0.9, 0.8)), _row((0.7, 0.6), (0.8, None)), _row((0.6, 0.5), (0.7, None), (0.9, 0.9))]
    s = summarise(rows)
    pix, img = s["pixel_auroc"], s["image_auroc"]
    assert pix["forgetting_tasks"] == 1 and pix["forgetting_absolute"] == pytest.approx(0.8 - 0.5)
    assert pix["forgetting_relative"] == pytest.approx(1 - 0.5 / 0.8)
    assert pix["final_average"] == pytest.approx((0.5 + 0.9) / 2) and pix["final_average_tasks"] == 2
    assert img["forgetting_tasks"] == 2 and img["forgetting_absolute"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)


def test_no_task_with_the_metric_gives_none_and_one_task_gives_zero():
    s = summarise([_row((0.9, None)), _row((0.8, None), (0.7, None))])
    assert s["pixel_auroc"]["forgetting_absolute"] is None and s["pixel_auroc"]["final_average"] is None
    one = summarise([_row((0.9, 0.8))])
    assert one["pixel_auroc"]["forgetting_absolute"] == 0.0 and one["image_auroc"]["forgetting_relative"] == 0.0
