"""Evaluation: suites, local `evaluate` metric modules, runner, reports, history, scheduler."""
