"""The loss curve a job keeps: bounded, evenly spaced, and true to the mean of the steps it stands for."""

import itertools

from worker.progress import LossHistory


def test_every_step_is_a_point_until_the_history_fills():
    history = LossHistory(max_points=8)
    for step in range(1, 8):
        history.add(step, float(step))
    assert history.points == [[step, float(step)] for step in range(1, 8)]


def test_a_long_run_keeps_a_bounded_evenly_spaced_mean_curve():
    history = LossHistory(max_points=8)
    for step in range(1, 1001):
        history.add(step, float(step % 2))  # 1, 0, 1, 0, ...: every span's mean is 0.5
    assert 4 <= len(history.points) < 8
    steps = [point[0] for point in history.points]
    assert len({b - a for a, b in itertools.pairwise(steps)}) == 1  # evenly spaced
    assert all(point[1] == 0.5 for point in history.points)


def test_a_resumed_job_goes_on_with_the_saved_spacing():
    history = LossHistory([[4, 1.0], [8, 2.0]], max_points=8)
    for step in range(9, 17):
        history.add(step, 3.0)
    assert history.points == [[4, 1.0], [8, 2.0], [12, 3.0], [16, 3.0]]
