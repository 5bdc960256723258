"""Search quality on the labelled queries (bench/search_queries.jsonl), both engines, no network.

The same labelled set and catalogue generator as ``python -m bench.search_quality`` (which
reports the figures at ~100,000 versions), here on 1,000 models so it runs in a second or two.
The floors are what the search measured when they were set, minus a small margin: a change
that makes the search find less fails here. Raise them when the search gets better.

Measured on 1,000 models (2026-12-05): fts5 recall@10 0.928, MRR 0.873, 14 of 16 misspellings;
like recall@10 0.822, MRR 0.687, 11 of 16 (the LIKE engine does not rank: names in order).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bench.search_catalogue import anchors, catalogue
from bench.search_quality import check_labels, evaluate, load_queries
from controlplane.server.search import ENGINE_FTS5, ENGINE_LIKE, SearchIndex

MODELS = 1_000
# engine -> (recall@10, MRR, misspellings whose suggestion finds the target): measured minus a margin
# (measured: fts5 and like alike 0.994, 0.974, 16 of 16, since words typed apart are joined, a
# CJK word inside a description is found, and names holding every word rank by closeness).
FLOORS = {ENGINE_FTS5: (0.98, 0.95, 15), ENGINE_LIKE: (0.98, 0.95, 15)}


@pytest.fixture(params=[ENGINE_FTS5, ENGINE_LIKE])
async def index(request: pytest.FixtureRequest) -> AsyncIterator[SearchIndex]:
    opened = await SearchIndex.open(use_fts5=request.param == ENGINE_FTS5)
    if opened.engine != request.param:
        await opened.close()
        pytest.skip(f"this SQLite build has no {request.param}")
    await opened.rebuild(catalogue(MODELS).docs, revision=1)
    yield opened
    await opened.close()


def test_the_labelled_set_is_large_varied_and_names_real_models() -> None:
    cases = load_queries()
    assert len(cases) >= 100
    kinds = {case.kind for case in cases}
    assert {"exact", "prefix", "separator", "version", "infix", "camelcase", "cjk", "typo", "filter"} <= kinds
    check_labels(cases, {doc.name for doc in anchors()})
    assert len({case.query for case in cases}) == len(cases), "a query is labelled twice"


def test_generated_models_never_take_an_anchors_name() -> None:
    names = [doc.name.casefold() for doc in catalogue(MODELS).docs]
    assert len(names) == MODELS == len(set(names))


async def test_recall_and_mrr_stay_above_their_floors(index: SearchIndex) -> None:
    summary, outcomes = await evaluate(index, load_queries())
    recall, mrr, suggestions = FLOORS[index.engine]
    failing = [f"{o.case.query!r}: {o.hits[:3]}" for o in outcomes if o.recall < 1.0]
    assert summary["recall_at_10"] >= recall, failing
    assert summary["mrr"] >= mrr, failing
    assert summary["suggestions_ok"] >= suggestions, failing


async def test_exact_names_come_first(index: SearchIndex) -> None:
    _, outcomes = await evaluate(index, [case for case in load_queries() if case.kind == "exact"])
    assert [o.case.query for o in outcomes if o.reciprocal_rank < 1.0] == []
