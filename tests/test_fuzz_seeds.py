"""The fuzz targets' seed corpora replay cleanly without atheris, so a regression on a seed
fails the normal test run. ``fuzz_providers`` and ``fuzz_registry`` are replayed by
``test_providers.py`` and ``test_registry.py``; this file covers the other targets and keeps
every target paired with a corpus."""

from __future__ import annotations

import importlib.util
import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from palyra_py.admin.errors import ApiError
from palyra_py.filters import EventMatcher, parse_filter
from palyra_py.inbound.ingress import parse_payload
from palyra_py.reasons import Rejection

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
REPLAYED_ELSEWHERE = {"providers", "registry"}
HERE = ("envelope", "filters", "stream_query")


@cache
def _target(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"fuzz_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seeds(name: str) -> list[Path]:
    return sorted(p for p in (FUZZ / "corpus" / name).iterdir() if p.is_file())


def test_every_target_has_a_seed_corpus_that_a_test_replays() -> None:
    targets = {p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py")}
    corpora = {p.name for p in (FUZZ / "corpus").iterdir() if p.is_dir()}
    assert targets == corpora
    assert targets == REPLAYED_ELSEWHERE | set(HERE)
    for name in targets:
        assert len(_seeds(name)) >= 5, name
    # fuzz/run_ci.py passes fuzz/dict/<name>.dict to the target of that name.
    assert {p.stem for p in (FUZZ / "dict").glob("*.dict")} <= targets


@pytest.mark.parametrize(
    ("name", "seed"),
    [(name, seed) for name in HERE for seed in _seeds(name)],
    ids=lambda value: value.name if isinstance(value, Path) else value,
)
def test_seed_replays(name: str, seed: Path) -> None:
    _target(name).test_one_input(seed.read_bytes())


@pytest.mark.parametrize("name", HERE)
def test_random_inputs_replay(name: str) -> None:
    target = _target(name)
    rng = random.Random(f"palyra-{name}")
    alphabet = b"=&.,;:\n\"\\%{}[]0123456789eEsmhdZT+-_ atruefalsnyb\xff\xc3\xa9"
    for _ in range(200):
        size = rng.randrange(0, 120)
        if rng.random() < 0.5:
            data = bytes(rng.getrandbits(8) for _ in range(size))
        else:
            data = bytes(rng.choice(alphabet) for _ in range(size))
        target.test_one_input(data)


# ---- the corpora reach past the first check ---------------------------------------------


def test_envelope_seeds_are_both_accepted_and_refused() -> None:
    split = _target("envelope").split_input
    outcomes = {"accepted": 0, "refused": 0}
    for seed in _seeds("envelope"):
        mode, body = split(seed.read_bytes())
        try:
            parse_payload(body, form=bool(mode & 1))
        except Rejection:
            outcomes["refused"] += 1
        else:
            outcomes["accepted"] += 1
    assert outcomes["accepted"] >= 3 and outcomes["refused"] >= 3, outcomes


def test_filter_seeds_build_a_matcher_that_matches() -> None:
    event = _target("filters").EVENT
    matched = 0
    for seed in _seeds("filters"):
        table = {}
        for line in seed.read_text("utf-8").split("\n"):
            try:
                path, value = parse_filter(line)
            except ValueError:
                continue
            table[path] = value
        try:
            matched += EventMatcher([], table).matches(event)
        except ValueError:
            continue
    assert matched >= 1


def test_stream_query_seeds_are_both_parsed_and_refused() -> None:
    target = _target("stream_query")
    outcomes = {"parsed": 0, "refused": 0}
    for seed in _seeds("stream_query"):
        request = target._request(*target.split_input(seed.read_bytes()))
        assert request is not None, f"{seed.name}: aiohttp cannot build this request"
        try:
            target._check(request)
        except ApiError:
            outcomes["refused"] += 1
        else:
            outcomes["parsed"] += 1
    assert outcomes["parsed"] >= 2 and outcomes["refused"] >= 3, outcomes
