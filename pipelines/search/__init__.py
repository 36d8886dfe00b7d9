"""Ray Tune searches: the driver, one trial, the objective it is judged on, the space, baselines, results, report and plots."""
