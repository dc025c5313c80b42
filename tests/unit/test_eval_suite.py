"""Suite files: built-ins load, bad input is one readable error."""

from __future__ import annotations

import pytest

from evaluation.suite import builtin_suites, load_suite
from tuneserve.errors import UserError


def test_builtin_suites_load_and_point_at_the_shared_data(shared_data):
    assert {"docker-commands", "hotel"} <= set(builtin_suites())
    docker = load_suite("docker-commands")
    assert docker.dataset_path() == (shared_data / "dockerNLcommands.json").resolve()
    assert docker.metrics == ["exact_match", "chrf", "bleu", "rouge_l"]
    hotel = load_suite("hotel")
    assert hotel.dataset_path().is_file() and hotel.judge is not None


def test_overrides_win(tmp_path):
    suite = load_suite("docker-commands", {"dataset": {"limit": 5}, "concurrency": 3})
    assert suite.dataset.limit == 5 and suite.concurrency == 3
    assert suite.dataset.seed == 42  # the rest of the block is kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", "dataset: Field required"),
        ("name: x\ndataset: {path: a.json}\nmetrics: [rouge]\n", "unknown text metric"),
        ("name: x\ndataset: {path: a.json}\nbogus: 1\n", "bogus: Extra inputs"),
        ("name: x\ndataset: {path: a.json}\nregression: {margins: {speed: 1}}\n", "unknown metric"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("name: [\n", "not valid YAML"),
    ],
)
def test_bad_suites_are_user_errors(tmp_path, text, message):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_suite(str(path))


def test_unknown_suite_lists_the_known_ones():
    with pytest.raises(UserError, match="docker-commands"):
        load_suite("nope")
