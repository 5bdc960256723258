"""The local search index (server/search.py): what a query finds, in what order, and at which revision.

Every behaviour that both engines promise is tested on both (FTS5, and the LIKE fallback for
SQLite builds without it); ranking by bm25 only on FTS5, which is the only engine that ranks.
The consistency tests check the index's contract with the indexer: one answer per revision, the
full answer at the revision the page reports, whichever way (rebuild or increments) it got there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from controlplane.errors import InvalidArgument
from controlplane.server import search
from controlplane.server.search import (
    ENGINE_FTS5,
    ENGINE_LIKE,
    ModelDoc,
    SearchIndex,
    model_doc,
    page_offset,
    page_token,
    query_terms,
)
from controlplane.v1 import models_pb2

GGUF = models_pb2.MODEL_FORMAT_GGUF
SAFETENSORS = models_pb2.MODEL_FORMAT_SAFETENSORS
ONNX = models_pb2.MODEL_FORMAT_ONNX
READY = models_pb2.VERSION_STATUS_READY
PENDING = models_pb2.VERSION_STATUS_PENDING
DEPRECATED = models_pb2.VERSION_STATUS_DEPRECATED


def doc(
    name: str,
    description: str = "",
    family: str = "",
    tags: Iterable[str] = (),
    formats: Iterable[int] = (SAFETENSORS,),
    statuses: Iterable[int] = (READY,),
) -> ModelDoc:
    return ModelDoc(
        name=name,
        description=description,
        family=family,
        tags=tuple(tags),
        owner="team-ml",
        formats=frozenset(formats),
        statuses=frozenset(statuses),
    )


CATALOGUE = [
    doc("Qwen2-7B-Instruct", "Instruction-tuned Qwen2 for chat", "qwen", ["chat", "Multilingual"], [SAFETENSORS, GGUF]),
    doc("Qwen2.5-Coder-1.5B", "Code completion model", "qwen", ["code"], [GGUF], [PENDING]),
    doc("Llama-3-8B-Instruct", "Meta's instruction-tuned model", "Llama", ["chat"], [SAFETENSORS], [READY, DEPRECATED]),
    doc("Llama-2-7b", "The base model", "llama", ["base"], [ONNX], [READY]),
    doc("Café", "A small model named after a coffee house", "misc", ["demo"], [ONNX], [PENDING]),
    doc("barista_v2", "Recommends a café au lait", "misc", ["demo"], [GGUF], [READY]),
    doc("Mistral-7B-v0.3", "Dense decoder by Mistral AI", "mistral", ["chat", "base"], [SAFETENSORS], [READY]),
    doc("zephyr-beta", "A fine-tune of mistral for helpful chat", "mistral", ["chat", "Chat"], [SAFETENSORS], [READY]),
]


@pytest.fixture(autouse=True)
async def close_what_a_test_left_open() -> AsyncIterator[None]:
    """Close every index a test opened, after it, even when it failed before its own close: an
    open index's aiosqlite thread (not a daemon) would keep pytest from exiting after the report."""
    opened: list[SearchIndex] = []
    open_index = SearchIndex.open

    async def recorded(*args: Any, **kwargs: Any) -> SearchIndex:
        index = await open_index(*args, **kwargs)
        opened.append(index)
        return index

    # A patch of its own: a test undoing its monkeypatch must not undo this one.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SearchIndex, "open", recorded)
        yield
    async with contextlib.AsyncExitStack() as closing:
        for index in opened:
            closing.push_async_callback(index.close)  # idempotent; each runs even if another raises


@pytest.fixture(params=[True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def index(request: pytest.FixtureRequest) -> AsyncIterator[SearchIndex]:
    opened = await SearchIndex.open(use_fts5=request.param)
    if request.param and opened.engine != ENGINE_FTS5:
        await opened.close()
        pytest.skip("this SQLite build has no FTS5")
    await opened.rebuild(CATALOGUE, revision=10)
    yield opened
    await opened.close()


async def fts5_index(docs: list[ModelDoc]) -> SearchIndex:
    index = await SearchIndex.open()
    if index.engine != ENGINE_FTS5:
        await index.close()
        pytest.skip("this SQLite build has no FTS5")
    await index.rebuild(docs, revision=1)
    return index


async def names(
    index: SearchIndex, query: str, *, tag: str = "", family: str = "", format: int = 0, status: int = 0
) -> list[str]:
    page = await index.search(query, tag=tag, family=family, format=format, status=status)
    return [name for name, _ in page.hits]


# ------------------------------------------------------------------ what a query finds


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("qwen inst", {"Qwen2-7B-Instruct"}),  # inner parts of a hyphenated name
        ("llama", {"Llama-3-8B-Instruct", "Llama-2-7b"}),
        ("llama-3", {"Llama-3-8B-Instruct"}),  # the hyphenated run itself, not Llama-2
        ("3-8b", {"Llama-3-8B-Instruct"}),  # a run of parts from inside the name
        ("cafe", {"Café", "barista_v2"}),  # diacritics removed, in names and descriptions
        ("CAFÉ", {"Café", "barista_v2"}),
        ("v2", {"barista_v2"}),  # '_' separates parts too
        ("qwen2.5", {"Qwen2.5-Coder-1.5B"}),  # '.' splits the query as it splits the name
        ("instruction", {"Qwen2-7B-Instruct", "Llama-3-8B-Instruct"}),  # description
        ("multilingual", {"Qwen2-7B-Instruct"}),  # tags
        ("mistral", {"Mistral-7B-v0.3", "zephyr-beta"}),  # family
    ],
)
async def test_search_quality(index: SearchIndex, query: str, expected: set[str]) -> None:
    assert set(await names(index, query)) == expected


async def test_every_term_is_required(index: SearchIndex) -> None:
    assert set(await names(index, "instruct")) == {"Qwen2-7B-Instruct", "Llama-3-8B-Instruct"}
    assert await names(index, "instruct llama") == ["Llama-3-8B-Instruct"]
    assert await names(index, "instruct llama nothingmatchesthis") == []


async def test_every_term_is_a_prefix(index: SearchIndex) -> None:
    assert await names(index, "lla ins") == ["Llama-3-8B-Instruct"]
    assert await names(index, "q 7 inst") == ["Qwen2-7B-Instruct"]
    assert await names(index, "zep bet") == ["zephyr-beta"]
    # A prefix of a token, not any substring: "struct" starts no token.
    assert await names(index, "struct") == []


@pytest.mark.parametrize(
    "query",
    ["", "   ", "!!!", "-", "--", "__", "-_-", '"', "'", "*", "(", ")", "^", "+", ":", '""""', "\t\n"],
)
async def test_a_query_without_terms_finds_nothing(index: SearchIndex, query: str) -> None:
    page = await index.search(query)
    assert page.hits == []
    assert page.total == 0
    assert page.revision == 10
    assert page.engine == index.engine


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('"llama', {"Llama-3-8B-Instruct", "Llama-2-7b"}),  # unbalanced quotes are dropped
        ('llama"', {"Llama-3-8B-Instruct", "Llama-2-7b"}),
        ('"llama 3"', {"Llama-3-8B-Instruct"}),  # no phrase syntax: two terms
        ("llama*", {"Llama-3-8B-Instruct", "Llama-2-7b"}),
        ("(llama) AND", set()),  # AND is a term like any other, and nothing starts with it
        ("llama OR qwen", set()),
        ("NOT llama", set()),
        ("NEAR(llama qwen)", set()),
        ("name:llama", set()),  # not a filter (see test_filters_typed_in_the_query): "name" is a term
        ("colour:llama", set()),
        ("-llama", set()),  # a leading dash is text (no token starts with "-llama"), not FTS5's NOT
        ("-instruct llama", set()),
        ("llama- 3", {"Llama-3-8B-Instruct"}),
    ],
)
async def test_fts5_syntax_is_plain_text(index: SearchIndex, query: str, expected: set[str]) -> None:
    assert set(await names(index, query)) == expected


async def test_underscore_and_percent_are_not_wildcards(index: SearchIndex) -> None:
    await index.apply([doc("snake_case-model"), doc("snakeXcase-model"), doc("100pct-model")], [], revision=11)
    assert await names(index, "snake_c") == ["snake_case-model"]
    assert await names(index, "snakexc") == ["snakeXcase-model"]
    # Two terms, "1" and "c": no word of it starts with "c", nor with the two joined ("1c"); as
    # a wildcard, "1%c" would match "100pc".
    assert "100pct-model" not in await names(index, "1%c")
    # Nothing starts with "0": found as "10", the two terms joined (any punctuation splits terms).
    assert await names(index, "1%0") == ["100pct-model"]
    assert await names(index, "100%") == ["100pct-model"]


async def test_no_query_is_an_error(index: SearchIndex) -> None:
    """Whatever a person types, the answer is a page (seeded, so a failure replays)."""
    alphabet = "\"'*^:()[]{}-_+.,;!?%\\/ \t\nNEARORNOTand lamaqwé3ß日本\u0301\u00a0\x00"
    rng = random.Random(20260101)
    for _ in range(300):
        query = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        page = await index.search(query)
        assert page.total >= len(page.hits), query


async def test_both_engines_find_the_same_models() -> None:
    fts5 = await fts5_index(CATALOGUE)
    like = await SearchIndex.open(use_fts5=False)
    await like.rebuild(CATALOGUE, revision=1)
    queries = ["l", "q", "m", "in", "b", "cafe", "3-8", "v0", "v0.3", "mistral ai", "au lait", "model base", "1.5b"]
    queries += ["coder-1", "7b", "7b-", "meta's", "coffee-house", "2-7b", "qwen2-7", "multi", "tuned", "fine-t", "s"]
    for query in queries:
        found_by_fts5 = {name for name, _ in (await fts5.search(query)).hits}
        assert found_by_fts5 == {name for name, _ in (await like.search(query)).hits}, query
    await fts5.close()
    await like.close()


def test_query_terms() -> None:
    # '.' and '_' between letters or digits are '-', as in the index: "2.5" stays one term.
    assert query_terms('  "Qwen2.5-7B  Café:instruct -- __ x"y ') == ["qwen2-5-7b", "cafe", "instruct", "x", "y"]
    assert query_terms("-leading trailing- in_side v0.3.") == ["-leading", "trailing-", "in-side", "v0-3"]
    assert query_terms("!!! ... ---") == []


# ------------------------------------------------------------------ filters and pages


async def test_tag_filter_is_exact_and_ignores_case(index: SearchIndex) -> None:
    assert set(await names(index, "instruct", tag="CHAT")) == {"Qwen2-7B-Instruct", "Llama-3-8B-Instruct"}
    assert set(await names(index, "qwen", tag="multilingual")) == {"Qwen2-7B-Instruct"}
    assert await names(index, "qwen", tag="cha") == []
    assert await names(index, "qwen", tag="chat multilingual") == []
    assert await names(index, "zephyr", tag="chat") == ["zephyr-beta"]  # tagged "chat" and "Chat"


async def test_family_filter_is_exact_and_ignores_case(index: SearchIndex) -> None:
    assert set(await names(index, "model", family="LLAMA")) == {"Llama-3-8B-Instruct", "Llama-2-7b"}
    assert await names(index, "model", family="lla") == []
    assert await names(index, "helpful", family="mistral") == ["zephyr-beta"]
    assert await names(index, "helpful", family="llama") == []


async def test_format_and_status_filters_need_one_current_version_with_them(index: SearchIndex) -> None:
    assert set(await names(index, "q", format=GGUF)) == {"Qwen2-7B-Instruct", "Qwen2.5-Coder-1.5B"}
    assert await names(index, "q", format=ONNX) == []
    assert await names(index, "q", status=PENDING) == ["Qwen2.5-Coder-1.5B"]
    assert set(await names(index, "model", status=DEPRECATED)) == {"Llama-3-8B-Instruct"}
    # Filters combine with AND, with each other and with the terms.
    assert await names(index, "cafe", format=GGUF, status=READY, tag="demo", family="misc") == ["barista_v2"]
    assert await names(index, "cafe", format=GGUF, status=PENDING) == []


def _lineage_catalogue() -> list[ModelDoc]:
    """Three models whose versions carry tags, metrics, runs and parents, as the registry holds them."""

    def version(model: str, number: int, **fields: object) -> models_pb2.ModelVersion:
        return models_pb2.ModelVersion(model=model, version=number, **fields)  # type: ignore[arg-type]

    base = models_pb2.VersionRef(model="Llama-3-8B", version=2)
    versions = {
        "Llama-3-8B": [version("Llama-3-8B", 1, metrics={"accuracy": 0.70}), version("Llama-3-8B", 2, run_id="R-1")],
        "llama-ft": [
            version("llama-ft", 1, parent=base, tags={"dataset": "Wiki-2024"}, metrics={"accuracy": 0.91}),
            version("llama-ft", 2, parent=base, tags={"stage": "eval"}, metrics={"accuracy": 0.0, "loss": -1.5}),
        ],
        "llama-q4": [version("llama-q4", 1, parent=models_pb2.VersionRef(model="llama-ft", version=1), run_id="r-2")],
    }
    return [
        model_doc(models_pb2.Model(name=name, description="a llama model", owner="team-ml"), listed)
        for name, listed in versions.items()
    ]


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_a_model_others_cite_ranks_first_among_names_that_start_alike(use_fts5: bool) -> None:
    """Cited: named in other models' descriptions (a fine-tune's "fine-tune of X") or their
    versions' parent. Among names starting with what was typed, and among the rest, the most cited
    first; the counts follow every apply."""
    index = await SearchIndex.open(use_fts5=use_fts5)
    if use_fts5 and index.engine != ENGINE_FTS5:
        await index.close()
        pytest.skip("this SQLite build has no FTS5")
    base = "Mixtral-8x7B-Instruct-v0.1"
    try:
        await index.rebuild(
            [
                doc(base, "Mistral's sparse mixture of experts"),
                doc("mixtral-8x7b_v2", f"a fine-tune of {base}"),
                doc("mixtral-8x7b_ner", f"NER fine-tune of {base}, Q4_K_M quantisation"),
                doc("Mixtral-8x22B", "the larger one"),
                doc("calme-mixtral-8x7b", "merged"),
            ],
            revision=1,
        )
        assert (await names(index, "mixtr"))[0] == base  # the longest name, cited twice
        assert (await names(index, "8x7b"))[0] == base  # not a prefix of any name: cited first too
        # Lineage counts: three versions derived from Mixtral-8x22B put it first.
        derived = [
            dataclasses.replace(
                doc(f"moe-{n}", "an experiment"),
                version_facets=frozenset({("parent", "mixtral-8x22b"), ("parent", "mixtral-8x22b/1")}),
            )
            for n in range(3)
        ]
        await index.apply(derived, [], revision=2)
        assert (await names(index, "mixtr"))[0] == "Mixtral-8x22B"
        await index.apply([], [d.name for d in derived], revision=3)
        assert (await names(index, "mixtr"))[0] == base
        # A citing model rewritten to cite nothing takes its citation away.
        await index.apply(
            [doc("mixtral-8x7b_v2", "a fine-tune"), doc("mixtral-8x7b_ner", "a fine-tune")], [], revision=4
        )
        assert (await names(index, "mixtr"))[0] == "Mixtral-8x22B"  # back to the shortest first
    finally:
        await index.close()


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_a_model_with_a_ready_version_ranks_before_ones_with_none(use_fts5: bool) -> None:
    """Cited alike, a model people can use comes first: one with a ready version before those
    whose versions are all pending or deprecated (shorter names included); a status change moves
    it at once. Names matching better, and citations, still come before."""
    index = await SearchIndex.open(use_fts5=use_fts5)
    if use_fts5 and index.engine != ENGINE_FTS5:
        await index.close()
        pytest.skip("this SQLite build has no FTS5")
    try:
        await index.rebuild(
            [
                doc("phi-3.5-mini-v2", "a fine-tune", statuses=[DEPRECATED]),
                doc("phi-3.5-mini_v1", "a fine-tune", statuses=[PENDING]),
                doc("Phi-3.5-mini-instruct", "Microsoft's small model", statuses=[READY, DEPRECATED]),
                doc("phi-3.5-mini-cited", "cited by others", statuses=[PENDING]),
                *[doc(f"ft-{n}", "a fine-tune of phi-3.5-mini-cited") for n in range(2)],
            ],
            revision=1,
        )
        found = await names(index, "phi-3.5-m")
        assert found[:2] == [
            "phi-3.5-mini-cited",  # cited twice: first whatever its status
            "Phi-3.5-mini-instruct",  # the only other one with a ready version, though the longest
        ]
        assert set(found[2:4]) == {"phi-3.5-mini_v1", "phi-3.5-mini-v2"}  # then the shortest; here, equal
        # The exact name still comes first, whatever its status (and the cited one after it).
        await index.apply([doc("phi-3.5-mini", "pending", statuses=[PENDING])], [], revision=2)
        assert (await names(index, "phi-3.5-mini"))[:2] == ["phi-3.5-mini", "phi-3.5-mini-cited"]
        await index.apply([], ["phi-3.5-mini"], revision=3)
        await index.apply([doc("phi-3.5-mini-v2", "a fine-tune", statuses=[READY])], [], revision=4)
        assert (await names(index, "phi-3.5-m"))[1:3] == ["phi-3.5-mini-v2", "Phi-3.5-mini-instruct"]
    finally:
        await index.close()


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_a_name_match_ranks_above_a_cited_model_only_its_description_matches(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    try:
        citing = [doc(f"ft-{n}", "a fine-tune of llama-3-8b") for n in range(5)]
        await index.rebuild(
            [doc("llama-3-8b", "a general model, a coder too"), doc("qwen2.5-coder-7b", "writes code"), *citing],
            revision=1,
        )
        assert await names(index, "coder") == ["qwen2.5-coder-7b", "llama-3-8b"]
    finally:
        await index.close()


def test_a_models_mentions_are_capped_and_never_its_own_name() -> None:
    parents = frozenset(("parent", f"base-{n:03d}") for n in range(70))
    many = dataclasses.replace(
        doc("m", "of Self-1 and " + " ".join(f"w-{n}" for n in range(100))), version_facets=parents
    )
    mentioned = search._mentioned(many)
    assert len(mentioned) == search._MAX_MENTIONS and mentioned == {f"base-{n:03d}" for n in range(64)}
    few = dataclasses.replace(
        doc("Self-1", "fine-tune of Self-1, Llama-3.1-8B and gpt2; not prose"),
        version_facets=frozenset({("parent", "base"), ("parent", "base/2")}),
    )
    assert search._mentioned(few) == {"base", "fine-tune", "llama-3.1-8b", "gpt2"}  # prose with a "-" counts


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_citation_counts_after_applies_equal_a_rebuilds(use_fts5: bool) -> None:
    rng = random.Random(7)
    bases = ["Base-1", "base-2", "Other-3"]

    def random_doc(n: int) -> ModelDoc:
        cites = " ".join(rng.sample([*bases, "BASE-1", f"model-{n}"], rng.randint(0, 3)))
        return doc(f"model-{n}", f"fine-tune of {cites}")

    async def counts(index: SearchIndex) -> list[tuple[str, int]]:
        rows = await index._conn.execute_fetchall("SELECT name_key, count FROM citations ORDER BY name_key")
        return [(row[0], row[1]) for row in rows]

    live: dict[str, ModelDoc] = {}
    incremental = await SearchIndex.open(use_fts5=use_fts5)
    rebuilt = await SearchIndex.open(use_fts5=use_fts5)
    try:
        for revision in range(1, 40):
            upserts = [random_doc(rng.randrange(12)) for _ in range(rng.randint(0, 3))]
            upserts = list({d.name: d for d in upserts}.values())
            gone = [name for name in rng.sample(sorted(live), min(len(live), rng.randint(0, 2)))]
            gone = [name for name in gone if name not in {d.name for d in upserts}] + ["never-indexed"]
            await incremental.apply(upserts, gone, revision=revision)
            live.update((d.name, d) for d in upserts)
            for name in gone:
                live.pop(name, None)
        await rebuilt.rebuild(live.values(), revision=40)
        assert await counts(incremental) == await counts(rebuilt) != []
        assert all(count > 0 for _, count in await counts(incremental))
    finally:
        await incremental.close()
        await rebuilt.close()


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_version_tags_metrics_runs_and_parents_filter_with_the_same_syntax(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    try:
        await index.rebuild(_lineage_catalogue(), revision=5)

        async def found(query: str, **filters: str) -> set[str]:
            return {name for name, _ in (await index.search(query, **filters)).hits}  # type: ignore[arg-type]

        # Version tags: KEY=VALUE, ignoring case; a model tag filter is another thing.
        assert await found("tag:dataset=wiki-2024") == {"llama-ft"}
        assert await found("llama", tag="STAGE=eval") == {"llama-ft"}
        assert await found("tag:dataset=wiki") == set()
        # Lineage: the models with a version derived from a model, or from one version of it.
        assert await found("parent:llama-3-8b") == {"llama-ft"}
        assert await found("parent:Llama-3-8B/2") == {"llama-ft"}
        assert await found("parent:Llama-3-8B/1") == set()
        assert await found("llama parent:llama-ft/1") == {"llama-q4"}
        assert await found("run:r-1") == {"Llama-3-8B"}
        # Metrics: a version whose metric compares so; 0.0 is a bound like any other.
        assert await found("metric:accuracy>=0.9") == {"llama-ft"}
        assert await found("metric:accuracy>0.5") == {"llama-ft", "Llama-3-8B"}
        assert await found("metric:accuracy<0.5") == {"llama-ft"}  # its version 2 has 0.0
        assert await found("metric:accuracy=0") == {"llama-ft"}
        assert await found("metric:loss<-1e0") == {"llama-ft"}
        assert await found("metric:Accuracy<=0.7 llama") == {"llama-ft", "Llama-3-8B"}
        # Filters combine with AND, and with a model tag filter.
        assert await found("metric:accuracy>0.5 parent:llama-3-8b tag:dataset=wiki-2024") == {"llama-ft"}
        assert await found("metric:accuracy>0.95 parent:llama-3-8b") == set()
        for bad, says in (
            ("metric:accuracy", "metric:accuracy is not NAME"),
            ("metric:accuracy>>1", "is not NAME"),
            ("metric:accuracy>=high", "is not NAME"),
            ("run:a run:b", "gives run: twice"),
            ("tag:a=1 tag:a=2", "gives tag: twice"),
            ("parent:", "parent:llama-3-8b/2"),
            ("tag:=x", "needs a key"),
        ):
            with pytest.raises(InvalidArgument, match=says):
                await index.search(bad)
    finally:
        await index.close()


async def test_unknown_format_or_status_is_invalid(index: SearchIndex) -> None:
    # Only known values reach the SQL, where each is a bit of the model's mask.
    for format in (99, 64, -1):
        with pytest.raises(InvalidArgument, match=f"format {format}"):
            await index.search("llama", format=format)
    for status in (42, -1):
        with pytest.raises(InvalidArgument, match=f"status {status}"):
            await index.search("llama", status=status)


def test_every_format_and_status_is_a_bit_of_the_masks() -> None:
    for enum in (models_pb2.ModelFormat, models_pb2.VersionStatus):
        assert min(enum.values()) >= 0 and max(enum.values()) <= search._MASK_BITS


async def test_a_format_or_status_no_mask_holds_is_indexed_and_matches_no_filter() -> None:
    # The state machine refuses such values; the index must still not fail a rebuild over one.
    odd = doc("odd-model", formats=[-1, 63, 99, GGUF], statuses=[-1, 64, READY])
    index = await fts5_index([odd, doc("plain-model")])
    assert await names(index, "model") == ["odd-model", "plain-model"]
    assert await names(index, "model", format=GGUF) == ["odd-model"]
    assert await names(index, "model", status=READY) == ["odd-model", "plain-model"]
    assert await names(index, "model", format=SAFETENSORS) == ["plain-model"]
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_pages_cover_every_match_once_in_a_stable_order(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    # The word only in descriptions of different lengths: different bm25 scores, ties broken by name.
    docs = [doc(f"item-{n:02d}", "bulk " + "filler " * (n % 4)) for n in range(25)] + [doc("other", "nothing")]
    await index.rebuild(docs, revision=3)
    everything = await index.search("bulk", limit=100)
    assert everything.total == 25
    assert len(everything.hits) == 25
    pages = [await index.search("bulk", limit=10, offset=offset) for offset in (0, 10, 20)]
    assert [len(page.hits) for page in pages] == [10, 10, 5]
    assert all(page.total == 25 for page in pages)
    assert [hit for page in pages for hit in page.hits] == everything.hits
    assert (await index.search("bulk", limit=10, offset=10)).hits == pages[1].hits
    past_the_end = await index.search("bulk", limit=10, offset=40)
    assert (past_the_end.hits, past_the_end.total) == ([], 25)
    exactly_full = await index.search("bulk", limit=5, offset=20)
    assert (len(exactly_full.hits), exactly_full.total) == (5, 25)
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_sort_orders_by_name_newest_change_or_newest_model(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    docs = [
        dataclasses.replace(doc("b-model", "bulk", family="f"), created=9, updated=50),
        dataclasses.replace(doc("A-model", "bulk", family="f"), created=1, updated=20),
        dataclasses.replace(doc("c-model", "bulk bulk bulk", family="f"), created=5, updated=70),
        dataclasses.replace(doc("d-model", "unrelated", family="g"), created=99, updated=99),
    ]
    await index.rebuild(docs, revision=100)

    async def order(query: str, sort: int, **filters: str) -> list[str]:
        return [name for name, _ in (await index.search(query, sort=sort, **filters)).hits]  # type: ignore[arg-type]

    assert await order("bulk", models_pb2.SEARCH_SORT_NAME) == ["A-model", "b-model", "c-model"]
    assert await order("bulk", models_pb2.SEARCH_SORT_UPDATED) == ["c-model", "b-model", "A-model"]
    assert await order("bulk", models_pb2.SEARCH_SORT_CREATED) == ["b-model", "c-model", "A-model"]
    # Browsing (filters, no words) takes the same orders; by name unless asked otherwise.
    assert await order("", models_pb2.SEARCH_SORT_RELEVANCE, family="f") == ["A-model", "b-model", "c-model"]
    assert await order("", models_pb2.SEARCH_SORT_UPDATED, family="f") == ["c-model", "b-model", "A-model"]
    with pytest.raises(InvalidArgument, match="unknown sort"):
        await index.search("bulk", sort=7)
    await index.close()


def test_a_page_token_continues_only_its_own_search() -> None:
    request = models_pb2.SearchRequest(query="llama", tag="chat", sort=models_pb2.SEARCH_SORT_UPDATED, limit=10)
    token = page_token(request, 40, revision=812)
    # The offset, and the revision the next page must not be older than; the page size may change.
    next_page = models_pb2.SearchRequest(query="llama", tag="chat", sort=2, limit=50, page_token=token)
    assert page_offset(next_page) == (40, 812)
    assert page_offset(models_pb2.SearchRequest(query="llama", offset=7)) == (7, 0)  # no token: the offset
    for other in (
        models_pb2.SearchRequest(query="qwen", tag="chat", sort=2, page_token=token),
        models_pb2.SearchRequest(query="llama", tag="chat", page_token=token),  # another order
    ):
        with pytest.raises(InvalidArgument, match="another search"):
            page_offset(other)
    forged = "p1." + base64.urlsafe_b64encode(
        json.dumps({"o": 10**40, "r": 1, "k": search.search_key(next_page)}).encode()
    ).decode().rstrip("=")
    for damaged in ("p1.!!!", "p1.e30", token[:-3], "x" * 300, "p1." + "A" * 10, forged):
        with pytest.raises(InvalidArgument, match="page_token"):
            page_offset(models_pb2.SearchRequest(query="llama", tag="chat", sort=2, page_token=damaged))
    with pytest.raises(InvalidArgument, match="not both"):
        page_offset(models_pb2.SearchRequest(query="llama", tag="chat", sort=2, page_token=token, offset=3))


@pytest.mark.parametrize(
    ("limit", "offset", "message"),
    [(0, 0, "limit"), (1001, 0, "limit"), (-1, 0, "limit"), (20, -1, "offset")],
)
async def test_out_of_range_limit_or_offset_is_invalid(
    index: SearchIndex, limit: int, offset: int, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await index.search("llama", limit=limit, offset=offset)
    assert len((await index.search("llama", limit=1000)).hits) == 2
    assert len((await index.search("llama", limit=1)).hits) == 1


async def test_an_overlong_query_is_invalid(index: SearchIndex) -> None:
    with pytest.raises(InvalidArgument, match="characters"):
        await index.search("a" * (search.MAX_QUERY_CHARS + 1))
    with pytest.raises(InvalidArgument, match="terms"):
        await index.search(" ".join(["llama"] * (search.MAX_QUERY_TERMS + 1)))


# ------------------------------------------------------------------ ranking (FTS5 only)


async def test_a_name_match_ranks_above_a_description_match_and_only_the_latter_is_scored() -> None:
    index = await fts5_index(CATALOGUE)
    page = await index.search("mistral")
    # A name holding every term ranks by the name's closeness, not bm25, and reports score 0.
    assert page.hits[0] == ("Mistral-7B-v0.3", 0.0)
    assert page.hits[1][0] == "zephyr-beta"
    assert page.hits[1][1] < 0  # bm25: lower is better
    await index.close()


async def test_bm25_orders_the_matches_outside_the_name() -> None:
    # The term is in no name: the shorter description, where it weighs more, comes first.
    index = await fts5_index([doc("a-model", "vision " + "filler " * 12), doc("z-model", "vision encoder")])
    page = await index.search("vision")
    assert [name for name, _ in page.hits] == ["z-model", "a-model"]
    assert page.hits[0][1] < page.hits[1][1] < 0
    await index.close()


def names_first_catalogue() -> list[ModelDoc]:
    """31 names start with "m" (one is "m" itself; 10 more with "m1", 8 lack the tag "keep"), 40
    more match "m" only in their description ("model"), half of them with an "m" inside the name
    and two thirds with the tag;
    20 names start with "café", 20 more say it only in their description."""
    docs = [doc("m", "the letter", tags=["keep"])]
    docs += [
        doc(
            f"m{n:02d}-{'x' * (n % 5)}",
            "m-name " * (n % 3),
            tags=["keep"] if n % 4 else [],
            statuses=[READY] if n % 3 else [PENDING],
        )
        for n in range(30)
    ]
    docs += [
        doc(f"a{n:02d}{'m' if n % 2 else ''}", "a model " + "filler " * (n % 4), tags=["keep"] if n % 3 else [])
        for n in range(40)
    ]
    docs += [doc(f"Café-{n:02d}", "a coffee house") for n in range(20)]
    docs += [doc(f"shop-{n:02d}", "café " + "filler " * (n % 3)) for n in range(20)]
    return docs


@pytest.mark.parametrize(
    ("query", "options"),
    [("m", {}), ("m", {"tag": "keep"}), ("m 1", {}), ("cafe", {}), ("m", {"sort": models_pb2.SEARCH_SORT_NAME})],
    ids=["one-letter", "filtered", "two-terms", "folded", "by-name"],
)
async def test_a_page_found_among_names_starting_with_the_query_is_the_page_of_the_full_ranking(
    monkeypatch: pytest.MonkeyPatch, query: str, options: dict[str, Any]
) -> None:
    index = await fts5_index(names_first_catalogue())
    names_first: list[tuple[str, ...]] = []
    statements = search._statements

    def spied(*args: Any, **kwargs: Any) -> tuple[str, str]:
        if kwargs.get("name_starts_only"):
            names_first.append(args)
        return statements(*args, **kwargs)

    monkeypatch.setattr(search, "_statements", spied)
    # Every page size, at every offset: pages inside the names, ending exactly at their end, across
    # it (with the filter, the index range counts names the filter then drops: the names-first
    # page comes back short and the full ranking answers) and past every match.
    asked = [(limit, offset) for limit in (1, 7, 20) for offset in range(0, 115)]
    try:
        monkeypatch.setattr(search, "_NAME_STARTS_FIRST_ABOVE", 10)
        first = [await index.search(query, limit=limit, offset=offset, **options) for limit, offset in asked]
        tried = len(names_first)
        monkeypatch.setattr(search, "_NAME_STARTS_FIRST_ABOVE", 10**9)  # rank every match
        ranked = [await index.search(query, limit=limit, offset=offset, **options) for limit, offset in asked]
        assert [(page.hits, page.total) for page in first] == [(page.hits, page.total) for page in ranked]
        assert len(names_first) == tried
        # The names-first pass ran wherever it could (never for another order than relevance).
        assert bool(tried) == ("sort" not in options)
        assert first[0].total > 10
    finally:
        await index.close()


async def test_equal_scores_are_ordered_by_name() -> None:
    index = await fts5_index([doc(name, "twin") for name in ("b-pair", "C-pair", "a-pair")])
    page = await index.search("twin")  # in the descriptions alone: scored alike by bm25
    assert [name for name, _ in page.hits] == ["a-pair", "b-pair", "C-pair"]
    assert len({score for _, score in page.hits}) == 1
    assert page.hits[0][1] < 0
    await index.close()


async def test_the_like_fallback_orders_by_name_with_score_zero() -> None:
    index = await SearchIndex.open(use_fts5=False)
    await index.rebuild(CATALOGUE, revision=1)
    page = await index.search("mistral")
    assert page.engine == ENGINE_LIKE
    assert page.hits == [("Mistral-7B-v0.3", 0.0), ("zephyr-beta", 0.0)]
    await index.close()


# ------------------------------------------------------------------ changes and revisions


async def test_apply_upserts_and_deletes(index: SearchIndex) -> None:
    changed = doc("Llama-2-7b", "Now a vision model", "llama", ["vision"], [GGUF], [PENDING])
    await index.apply([changed, doc("Phi-3-mini", "Small and fast")], ["Café", "never-existed"], revision=11)
    assert index.revision == 11
    assert await names(index, "base") == ["Mistral-7B-v0.3"]  # the old description is gone
    assert await names(index, "vision") == ["Llama-2-7b"]
    assert await names(index, "llama", tag="base") == []  # so are the old tags and facets
    assert await names(index, "llama", tag="vision", format=GGUF, status=PENDING) == ["Llama-2-7b"]
    assert await names(index, "llama", format=ONNX) == []
    assert await names(index, "phi") == ["Phi-3-mini"]
    assert await names(index, "cafe") == ["barista_v2"]
    page = await index.search("model")
    assert page.revision == 11
    # Applying at the same revision is allowed (nothing new happened in between).
    await index.apply([], ["Phi-3-mini"], revision=11)
    assert await names(index, "phi") == []


async def test_rebuild_replaces_everything(index: SearchIndex) -> None:
    await index.rebuild([doc("Gemma-2-9B", "Google")], revision=3)
    assert index.revision == 3  # a rebuild may move back (e.g. after restoring a backup)
    assert await names(index, "llama") == []
    assert await names(index, "gemma") == ["Gemma-2-9B"]
    await index.rebuild([], revision=4)
    assert (await index.search("gemma")).total == 0
    assert (await index.search("gemma")).revision == 4


async def test_apply_refuses_to_go_back_and_changes_nothing(index: SearchIndex) -> None:
    with pytest.raises(ValueError, match="older"):
        await index.apply([doc("Late-Model")], ["Café"], revision=9)
    assert index.revision == 10
    assert await names(index, "late") == []
    assert set(await names(index, "cafe")) == {"Café", "barista_v2"}


async def test_ambiguous_changes_are_refused(index: SearchIndex) -> None:
    with pytest.raises(ValueError, match="twice"):
        await index.apply([doc("dup"), doc("dup")], [], revision=11)
    with pytest.raises(ValueError, match="both upserted and deleted"):
        await index.apply([doc("Café")], ["Café"], revision=11)
    with pytest.raises(ValueError, match="twice"):
        await index.rebuild([doc("dup"), doc("dup")], revision=11)
    with pytest.raises(ValueError, match="negative"):
        await index.rebuild([], revision=-1)
    assert index.revision == 10
    assert set(await names(index, "cafe")) == {"Café", "barista_v2"}


async def test_a_failed_transaction_rolls_back(index: SearchIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_insert(docs: list[ModelDoc], first_id: int) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(index, "_insert", broken_insert)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await index.apply([doc("Llama-2-7b", "changed")], ["Café"], revision=12)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await index.rebuild([doc("only-one")], revision=13)
    monkeypatch.undo()
    assert index.revision == 10
    assert set(await names(index, "cafe")) == {"Café", "barista_v2"}
    assert set(await names(index, "llama")) == {"Llama-3-8B-Instruct", "Llama-2-7b"}


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_increments_and_a_rebuild_give_the_same_answer(use_fts5: bool) -> None:
    """Two servers at the same revision answer alike, however each index got there."""
    final = {d.name: d for d in CATALOGUE}
    upserts = [doc("Llama-2-7b", "now instruction-tuned", "llama", ["chat"]), doc("Phi-3-mini", "small chat model")]
    final.update((d.name, d) for d in upserts)
    del final["Café"]
    incremental = await SearchIndex.open(use_fts5=use_fts5)
    await incremental.rebuild(CATALOGUE, revision=10)
    await incremental.apply(upserts, ["Café"], revision=12)
    rebuilt = await SearchIndex.open(use_fts5=use_fts5)
    await rebuilt.rebuild(reversed(list(final.values())), revision=12)
    for query in ["model", "chat", "instruct", "llama", "cafe", "m", "q 7"]:
        left, right = await incremental.search(query), await rebuilt.search(query)
        assert (left.hits, left.total, left.revision) == (right.hits, right.total, right.revision), query
    await incremental.close()
    await rebuilt.close()


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_a_concurrent_search_sees_one_revision_whole(use_fts5: bool) -> None:
    """A search racing a large apply gets the full old answer or the full new one, never a mix."""
    index = await SearchIndex.open(use_fts5=use_fts5)
    all_names = [f"model-{n:04d}" for n in range(1500)]
    await index.rebuild([doc(name, "generation old", tags=["old"]) for name in all_names], revision=1)
    # The apply rewrites half the models and deletes a quarter, in many statements: a search
    # run between two of them would see some of each.
    rewritten = all_names[::2]
    deleted = all_names[1::4]
    untouched = set(all_names) - set(rewritten) - set(deleted)
    expected = {1: {"old": set(all_names), "new": set()}, 2: {"old": untouched, "new": set(rewritten)}}

    queries = ["generation old", "generation new", "old", "new"] * 3
    probes = [index.search(query, limit=1000) for query in queries]
    apply = index.apply([doc(name, "generation new", tags=["new"]) for name in rewritten], deleted, revision=2)
    later_probes = [index.search(query, limit=1000) for query in queries]
    results = await asyncio.gather(*probes, apply, *later_probes)
    pages = [page for page in results if page is not None]

    assert {page.revision for page in pages} == {1, 2}  # the lock is fair: queued before or after
    for query, page in zip(queries * 2, pages, strict=True):
        matching = expected[page.revision][query.split()[-1]]
        assert page.total == len(matching), (query, page.revision)
        assert len(page.hits) == min(len(matching), 1000)
        assert {name for name, _ in page.hits} <= matching
    await index.close()


async def test_a_cancelled_apply_still_completes_whole(index: SearchIndex) -> None:
    """Cancelling the caller must not leave the contents and the revision disagreeing."""
    upserts = [doc(f"late-{n:04d}", "arrived late") for n in range(1000)]
    applying = asyncio.create_task(index.apply(upserts, ["Café"], revision=11))
    # Cancel once the apply holds the index (its change is running), not after a guessed number of turns.
    async with asyncio.timeout(5):
        while not index._lock.locked():
            await asyncio.sleep(0)  # one event-loop turn per check of the condition
    applying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await applying
    page = await index.search("late", limit=1000)
    assert (page.revision, page.total, len(page.hits)) == (11, 1000, 1000)
    assert await names(index, "cafe") == ["barista_v2"]


async def test_an_apply_without_changes_only_moves_the_revision(index: SearchIndex) -> None:
    await index.apply([], [], revision=15)
    assert index.revision == 15
    page = await index.search("llama")
    assert (page.revision, page.total) == (15, 2)


# ------------------------------------------------------------------ documents, lifecycle


async def test_a_revision_only_apply_is_committed_lazily_and_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KV writes move the revision without touching a model: committing each would cost an SQLite
    transaction per write. The file may lag (its rows are the same), and close() catches it up."""
    monkeypatch.setattr(search, "META_WRITE_INTERVAL_S", 3600.0)
    path = tmp_path / "search.sqlite"
    index = await SearchIndex.open(path)
    await index.apply([doc("Gemma-2B")], [], revision=5, fingerprint="at-5")
    await index.apply([], [], revision=9, fingerprint="at-9")
    assert (index.revision, (await index.search("gemma")).revision) == (9, 9)
    with sqlite3.connect(path) as reader:
        assert reader.execute("SELECT revision, fingerprint FROM index_meta").fetchone() == (5, "at-5")
    await index.close()
    again = await SearchIndex.open(path)
    assert (again.revision, again.fingerprint, await names(again, "gemma")) == (9, "at-9", ["Gemma-2B"])
    await again.close()


async def test_an_advance_moves_the_revision_and_close_commits_the_last_fingerprinted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over KV writes the indexer moves the revision with advance, without building a fingerprint:
    searches answer at the new revision; the file keeps the last revision given a fingerprint."""
    monkeypatch.setattr(search, "META_WRITE_INTERVAL_S", 3600.0)
    path = tmp_path / "search.sqlite"
    index = await SearchIndex.open(path)
    await index.apply([doc("Gemma-2B")], [], revision=5, fingerprint="at-5")
    assert not index.meta_due()
    await index.apply([], [], revision=7, fingerprint="at-7")  # in memory until close
    index.advance(9)
    assert (index.revision, index.fingerprint_revision, (await index.search("gemma")).revision) == (9, 7, 9)
    with pytest.raises(ValueError, match="older"):
        index.advance(8)
    monkeypatch.setattr(search, "META_WRITE_INTERVAL_S", 0.0)
    assert index.meta_due()
    await index.close()
    again = await SearchIndex.open(path)
    assert (again.revision, again.fingerprint_revision, again.fingerprint) == (7, 7, "at-7")
    assert await names(again, "gemma") == ["Gemma-2B"]
    await again.close()


def test_model_doc_collects_the_formats_and_statuses_of_current_versions() -> None:
    model = models_pb2.Model(
        name="Llama-3-8B",
        description="d",
        family="llama",
        tags=["chat", "x"],
        owner="me",
        create_revision=3,
        mod_revision=9,
    )
    versions = [
        models_pb2.ModelVersion(model="Llama-3-8B", version=1, format=GGUF, status=READY, mod_revision=4),
        models_pb2.ModelVersion(model="Llama-3-8B", version=2, format=GGUF, status=PENDING, mod_revision=12),
        models_pb2.ModelVersion(model="Llama-3-8B", version=4, format=ONNX, status=READY, mod_revision=8),
    ]
    assert model_doc(model, versions) == ModelDoc(
        name="Llama-3-8B",
        description="d",
        family="llama",
        tags=("chat", "x"),
        owner="me",
        formats=frozenset({GGUF, ONNX}),
        statuses=frozenset({READY, PENDING}),
        created=3,
        updated=12,  # a version changed after the model record did
    )
    assert model_doc(model, []).formats == frozenset()
    with pytest.raises(ValueError, match="does not belong"):
        model_doc(model, [models_pb2.ModelVersion(model="other", version=1)])


async def test_a_file_index_is_kept_with_its_revision_and_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "search.sqlite"
    first = await SearchIndex.open(path)
    assert (first.revision, first.fingerprint) == (0, "")
    await first.rebuild(CATALOGUE, revision=5, fingerprint="at-5")
    await first.apply([doc("Gemma-2B")], ["Llama-2-7b"], revision=7, fingerprint="at-7")
    await first.close()
    await first.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await first.search("llama")
    again = await SearchIndex.open(path)
    assert (again.revision, again.fingerprint, again.engine) == (7, "at-7", first.engine)
    assert set(await names(again, "llama")) == {"Llama-3-8B-Instruct"}
    assert await names(again, "gemma") == ["Gemma-2B"]
    await again.close()


async def test_a_file_index_of_another_engine_or_layout_starts_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "search.sqlite"
    first = await SearchIndex.open(path)
    await first.rebuild(CATALOGUE, revision=5, fingerprint="at-5")
    await first.close()
    second = await SearchIndex.open(path, use_fts5=False)
    assert (second.revision, second.fingerprint, second.engine) == (0, "", ENGINE_LIKE)
    assert (await second.search("llama")).total == 0
    await second.rebuild(CATALOGUE, revision=6)
    assert set(await names(second, "llama")) == {"Llama-3-8B-Instruct", "Llama-2-7b"}
    await second.close()
    monkeypatch.setattr(search, "LAYOUT", search.LAYOUT + 1)  # documents now become other rows
    third = await SearchIndex.open(path, use_fts5=False)
    assert (third.revision, await names(third, "llama")) == (0, [])
    await third.close()


async def test_falls_back_to_like_when_fts5_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a build without FTS5 says when the virtual table is created: "no such module: fts5".
    monkeypatch.setattr(search, "_FTS_TABLE", search._FTS_TABLE.replace("USING fts5", "USING fts5_absent"))
    index = await SearchIndex.open()
    assert index.engine == ENGINE_LIKE
    await index.rebuild(CATALOGUE, revision=1)
    assert set(await names(index, "qwen inst")) == {"Qwen2-7B-Instruct"}
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False], ids=[ENGINE_FTS5, ENGINE_LIKE])
async def test_timing_report(use_fts5: bool) -> None:
    """Not a benchmark (see bench/): prints rough numbers for a 2,000-model index, asserts none."""
    index = await SearchIndex.open(use_fts5=use_fts5)
    docs = [
        doc(f"{family}-{n % 7}-{n}B-{variant}", f"{variant} model number {n} for {family}", family, [variant.lower()])
        for n in range(2000)
        for family, variant in [(("llama", "qwen", "mistral")[n % 3], ("Instruct", "Chat", "Base", "Coder")[n % 4])]
    ]
    started = time.perf_counter()
    await index.rebuild(docs, revision=1)
    rebuild_ms = (time.perf_counter() - started) * 1000
    timings = sorted([(await index.search(query)).query_ms for query in ["llama inst", "q", "model 12", "chat"] * 5])
    print(
        f"\n{index.engine}: rebuild 2000 models {rebuild_ms:.0f} ms, search median {timings[len(timings) // 2]:.2f} ms"
    )
    await index.close()


# ------------------------------------------------------------------ exact names, browsing (issue 18)


@pytest.mark.parametrize("use_fts5", [True, False])
async def test_a_model_named_exactly_the_query_comes_first_then_name_prefixes(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild(
        [
            doc("rankprobe173-7b-instruct", "instruct"),
            doc("x-rankprobe173-tuned", "tuned"),
            doc("RankProbe173", "the model itself, with a long description " * 20, "rank", ["rankprobe173"]),
            doc("other", "mentions rankprobe173 once"),
        ],
        revision=1,
    )
    found = [name for name, _ in (await index.search("rankprobe173")).hits]
    assert found[:2] == ["RankProbe173", "rankprobe173-7b-instruct"]
    assert set(found) == {"RankProbe173", "rankprobe173-7b-instruct", "x-rankprobe173-tuned", "other"}
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
async def test_an_empty_query_with_a_filter_browses_by_name(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild(CATALOGUE, revision=1)
    page = await index.search("", family="LLAMA")
    assert [name for name, _ in page.hits] == ["Llama-2-7b", "Llama-3-8B-Instruct"] and page.total == 2
    assert [name for name, _ in (await index.search("", tag="chat", limit=2)).hits] == [
        "Llama-3-8B-Instruct",
        "Mistral-7B-v0.3",
    ]
    assert (await index.search("", tag="chat", limit=2)).total == 4
    assert (await index.search("", status=PENDING)).total == 2
    assert (await index.search("")).hits == []  # no words and no filter: nothing, as before
    await index.close()


# ------------------------------------------------------------------ how names are split (issue 18)

NAMES = [
    doc("qwen2.5-coder_7b", family="qwen", tags=["code"]),
    doc("deepseek-coder-6.7b-instruct", family="deepseek", tags=["code"]),
    doc("DeepSeekCoder", family="deepseek"),
    doc("通义千问-7B", family="qwen", tags=["chat"]),
    doc("Mixtral-8x7B", family="mistral", tags=["chat"], statuses=[PENDING]),
    doc("llama-3-8b", family="llama", tags=["chat"], formats=[GGUF]),
    doc("mistral-7b", family="mistral", tags=["chat"]),
    doc("Phi3-mini", family="phi"),
]


@pytest.mark.parametrize("use_fts5", [True, False])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("qwen 2.5", {"qwen2.5-coder_7b"}),  # a version number after a space
        ("2.5", {"qwen2.5-coder_7b"}),
        ("qwen25", {"qwen2.5-coder_7b"}),  # typed without the separators
        ("qwen2_5", {"qwen2.5-coder_7b"}),  # '_' for '.'
        ("coder-7b", {"qwen2.5-coder_7b"}),  # '-' for '_'
        ("6.7b", {"deepseek-coder-6.7b-instruct"}),
        ("coder", {"qwen2.5-coder_7b", "deepseek-coder-6.7b-instruct", "DeepSeekCoder"}),  # camelCase parts
        ("seek", {"DeepSeekCoder"}),
        ("千问", {"通义千问-7B"}),  # a word inside CJK text
        ("x7b", {"Mixtral-8x7B"}),  # a word inside "8x7B"
        ("phi-3", {"Phi3-mini"}),  # a '-' typed where the name has none
        ("phi-3-mi", {"Phi3-mini"}),
        ("7b", {"qwen2.5-coder_7b", "deepseek-coder-6.7b-instruct", "通义千问-7B", "Mixtral-8x7B", "mistral-7b"}),
        ("struct", set()),  # still a prefix of a word, never any substring
        ("eek", set()),
    ],
)
async def test_names_are_found_by_their_words(use_fts5: bool, query: str, expected: set[str]) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild(NAMES, revision=1)
    assert set(await names(index, query)) == expected
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
async def test_filters_typed_in_the_query(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild([*NAMES, ModelDoc("owned", "", "", (), "Meta-AI", frozenset([ONNX]), frozenset([READY]))], 1)
    assert set(await names(index, "tag:chat family:qwen")) == {"通义千问-7B"}
    assert set(await names(index, "TAG:Chat mi")) == {"Mixtral-8x7B", "mistral-7b"}
    assert set(await names(index, "status:pending")) == {"Mixtral-8x7B"}
    assert set(await names(index, "format:gguf")) == {"llama-3-8b"}
    assert set(await names(index, "format:MODEL_FORMAT_ONNX owner:meta-ai")) == {"owned"}
    assert set(await names(index, "tag:chat", family="llama")) == {"llama-3-8b"}  # typed and given: both apply
    assert set(await names(index, "family:llama", family="LLAMA")) == {"llama-3-8b"}  # the same filter twice agrees
    with pytest.raises(InvalidArgument, match="family"):
        await index.search("family:qwen", family="llama")
    with pytest.raises(InvalidArgument, match="give one"):
        await index.search("tag:chat tag:code")
    with pytest.raises(InvalidArgument, match="needs a value"):
        await index.search("tag: llama")
    with pytest.raises(InvalidArgument, match=r"known: .*ready"):
        await index.search("status:finished")
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
@pytest.mark.parametrize(
    ("query", "suggested"),
    [
        ("lamma", ["llama"]),
        ("qwne", ["qwen"]),  # two letters swapped
        ("mistrl", ["mistral", "mixtral"]),  # the nearest first
        ("lamma 8b", ["llama 8b"]),  # only the misspelt word changes
        ("mistrl tag:chat", ["mistral tag:chat", "mixtral tag:chat"]),  # filters are kept
        ("mixtrl status:ready", ["mistral status:ready"]),  # Mixtral is pending: only what finds something
        ("kwen", ["qwen"]),  # the first letter mistyped
        ("qwne2.5 coder", ["qwen2.5 coder"]),  # the letters of a word joined to its version
        ("Lamma-3 8B", ["llama-3 8B"]),  # the rest as typed
        ("07b", ["7b"]),  # a corrected number is corrected in the suggestion too
        ("mitsral7b", ["mistral7b"]),
        ("llama qwen", []),  # real words that find nothing together are not misspelt
        ("zzzzzz", []),
        ("lam", []),  # a prefix that matches finds models: nothing to correct
    ],
)
async def test_a_query_that_finds_nothing_suggests_one_that_does(
    use_fts5: bool, query: str, suggested: list[str]
) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild(NAMES, revision=1)
    page = await index.search(query)
    assert page.suggestions == suggested
    if suggested:
        assert page.hits == [] and page.total == 0
        assert (await index.search(suggested[0])).hits
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("한국어", {"한국어-llm"}),  # Hangul is not decomposed into jamo the index never holds
        ("v8n", {"YOLOv8n"}),  # a word after an upper-case run
        ("parser", {"XMLParser"}),  # ... or at its last letter
        ("llama3 8b", {"Meta-Llama-3-8B"}),  # a suffix typed without its separators
        ("q4km", {"Meta-Llama-3-8B-q4_k_m"}),
    ],
)
async def test_more_words_people_type(use_fts5: bool, query: str, expected: set[str]) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild(
        [doc("한국어-llm"), doc("YOLOv8n"), doc("XMLParser"), doc("Meta-Llama-3-8B"), doc("Meta-Llama-3-8B-q4_k_m")], 1
    )
    assert expected <= set(await names(index, query))
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
async def test_a_base_model_comes_before_its_fine_tunes(use_fts5: bool) -> None:
    """Names compare without separators, and among names that start with the query the shortest
    comes first, although the fine-tunes' descriptions repeat the base's name (bm25 favours them)."""
    index = await SearchIndex.open(use_fts5=use_fts5)
    tunes = [
        doc(f"gemma-2-9b-it-{tag}", "a fine-tune of gemma-2-9b-it, gemma 2 9b it " * 3) for tag in ("dpo", "slerp")
    ]
    await index.rebuild([*tunes, doc("gemma-2-9b-it", "Google's model")], 1)
    for query in ("gemma 2 9b it", "gemma-2-9b", "gemma_2.9b", "gemma2 9b"):
        assert (await names(index, query))[0] == "gemma-2-9b-it", query
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sd xl turbo", ["sdxl-turbo"]),  # words typed apart that the name writes together
        ("deep seek", ["deepseek-llm-7b"]),
        ("turbo sd xl", ["sdxl-turbo"]),  # the join is of neighbours, in any place
        ("sd xl", ["sd-xl-base"]),  # found as typed: nothing is joined
        ("s d xl", ["sd-xl-base"]),  # "sd xl"; never "sdxl" (sdxl-turbo), which joins a word twice
    ],
)
async def test_words_typed_apart_find_a_name_written_together(use_fts5: bool, query: str, expected: list[str]) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild([doc("sdxl-turbo"), doc("sd-xl-base"), doc("deepseek-llm-7b")], 1)
    page = await index.search(query)
    assert sorted(name for name, _ in page.hits) == sorted(expected)
    assert page.total == len(expected)
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
async def test_every_page_of_a_joined_query_is_its_page(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild([doc("sdxl-turbo"), doc("sdxl-turbo-v2"), doc("sdxl-base")], 1)
    first = await index.search("sd xl turbo", limit=1)
    second = await index.search("sd xl turbo", limit=1, offset=1)
    assert [first.total, second.total] == [2, 2]
    assert {first.hits[0][0], second.hits[0][0]} == {"sdxl-turbo", "sdxl-turbo-v2"}
    assert (await index.search("sd xl turbo", limit=1, offset=2)).hits == []
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
async def test_a_cjk_word_inside_a_description_is_found(use_fts5: bool) -> None:
    index = await SearchIndex.open(use_fts5=use_fts5)
    await index.rebuild([doc("通义千问-14B-Chat", "通义千问 140亿参数对话模型"), doc("other", "基座模型")], 1)
    assert await names(index, "对话") == ["通义千问-14B-Chat"]
    assert set(await names(index, "模型")) == {"通义千问-14B-Chat", "other"}
    assert await names(index, "参数对话") == ["通义千问-14B-Chat"]
    assert await names(index, "话对") == []  # the characters in another order are another word
    await index.apply([doc("dotted", "通义千问.对话模型")], [], revision=2)  # '.' joins the two runs
    assert set(await names(index, "对话")) == {"通义千问-14B-Chat", "dotted"}
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
async def test_among_names_holding_every_word_the_closest_comes_first(use_fts5: bool) -> None:
    """The words in the order typed, together in the name, then the shortest name: ahead of names
    whose descriptions repeat the words (bm25 would favour them)."""
    index = await SearchIndex.open(use_fts5=use_fts5)
    repeated = "whisper large v3 " * 3
    await index.rebuild(
        [
            doc("whisper-large-v3", repeated),
            doc("whisper-large-v3-alpaca", repeated),
            doc("MobileNetV3Large"),
            doc("Mistral-Nemo-Base-2407-imdb", "a fine-tune of Mistral-Nemo-Base-2407 " * 3),
            doc("Mistral-Nemo-Instruct-2407"),
        ],
        1,
    )
    assert (await names(index, "v3 large"))[0] == "MobileNetV3Large"
    assert (await names(index, "large v3"))[:2] == ["whisper-large-v3", "whisper-large-v3-alpaca"]
    assert (await names(index, "mistral nemo 2407"))[0] == "Mistral-Nemo-Instruct-2407"
    await index.close()


@pytest.mark.parametrize("use_fts5", [True, False])
async def test_suggestions_follow_changes_and_a_reopened_index(tmp_path: Path, use_fts5: bool) -> None:
    path = tmp_path / "index.sqlite"
    index = await SearchIndex.open(path, use_fts5=use_fts5)
    await index.rebuild([doc("llama-3-8b")], 1)
    assert (await index.search("lamma")).suggestions == ["llama"]
    assert (await index.search("klama")).suggestions == ["llama"]
    await index.apply([doc("mistral-7b")], ["llama-3-8b"], revision=2)
    assert (await index.search("lamma")).suggestions == []  # the only llama is gone
    assert index._corrections("klama") == []  # also from another first letter: the word is forgotten
    assert (await index.search("mistrl")).suggestions == ["mistral"]
    await index.close()
    reopened = await SearchIndex.open(path, use_fts5=use_fts5)  # the words come back from the rows
    assert reopened.revision == 2 and (await reopened.search("mistrl")).suggestions == ["mistral"]
    await reopened.close()


@pytest.mark.parametrize(
    ("typed", "corrected", "shown"),
    [
        ("lamma 3.1 8b", ["llama", "3-1", "8b"], "llama 3.1 8b"),  # the rest as typed
        ("Qwne2.5 7B", ["qwen2-5", "7b"], "qwen2.5 7B"),  # only the corrected letters
        ("07b", ["7b"], "7b"),
        ("qwe_.5", ["qwen", "5"], "qwen 5"),  # "qwen.5" would be one term, "qwen-5"
        ("tga:chat", ["tag", "chat"], "tag chat"),  # "tag:chat" would be a filter
        ("tga: chat", ["tag", "chat"], "tag chat"),  # "tag:" would be a filter without a value
    ],
)
def test_a_suggestion_is_written_as_typed_unless_it_would_read_as_another_query(
    typed: str, corrected: list[str], shown: str
) -> None:
    assert search._as_typed(typed, search.query_terms(typed), corrected) == shown


# --- both engines, any query -----------------------------------------------------------------------

_ANY_QUERY_NAMES = [
    *(doc.name for doc in NAMES),
    "sdxl-turbo",
    "sd-xl-base",
    "MobileNetV3Large",
    "whisper-large-v3",
    "한국어-llm",
    "Café-Mistral_7b",
]
_ANY_QUERY_DESCRIPTIONS = ["fine-tune of llama-3-8b", "通义千问 140亿参数对话模型", "", "base model", "embeddings"]
_QUERY_WORDS = st.sampled_from(
    ["qwen", "2.5", "coder", "7b", "07b", "deep", "seek", "千问", "对话", "mixtr", "x7b", "llama", "lamma", "kwen",
     "qwne2.5", "sd", "xl", "turbo", "v3", "large", "cafe", "mistrl", "-", "_", "%", '"', "embedding", "model",
     "한국어", "phi-3", "Q", "1%0", "tag:chat", "family:fam"]
)  # fmt: skip
_QUERIES = st.lists(
    st.one_of(_QUERY_WORDS, st.text(alphabet="abcdeqwxyzLQ0123456789-_. 千问", max_size=6)),
    max_size=5,
).map(" ".join)


def test_both_engines_give_every_query_the_same_answer_and_suggestions_that_find_models() -> None:
    """Any mix of the words people type, separators and typos: the FTS5 and LIKE engines match the
    same models, count them alike and suggest the same corrections, and a suggestion finds models."""
    loop = asyncio.new_event_loop()
    docs = [
        ModelDoc(name, _ANY_QUERY_DESCRIPTIONS[i % 5], "fam", ("chat",) if i % 2 else (), "o", frozenset(), frozenset())
        for i, name in enumerate(_ANY_QUERY_NAMES)
    ]

    async def open_both() -> list[SearchIndex]:
        indexes = [await SearchIndex.open(use_fts5=True), await SearchIndex.open(use_fts5=False)]
        for index in indexes:
            await index.rebuild(docs, 1)
        return indexes

    indexes = loop.run_until_complete(open_both())

    suggested: list[str] = []  # every suggestion made, so the test knows it exercised them

    async def answers(query: str) -> list[object]:
        found: list[object] = []
        for index in indexes:
            try:
                page = await index.search(query, limit=100)
            except InvalidArgument:
                found.append("invalid")
                continue
            found.append((sorted(name for name, _ in page.hits), page.total, page.suggestions))
            assert len(set(page.suggestions)) == len(page.suggestions), (query, page.suggestions)
            for suggestion in page.suggestions:
                assert (await index.search(suggestion)).hits, (query, suggestion, index.engine)
                suggested.append(suggestion)
        return found

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(_QUERIES)
    @hypothesis.example("lamma 8b")
    @hypothesis.example("Kwen 2.5")
    @hypothesis.example("qwne2.5 coder")
    @hypothesis.example("07b")
    @hypothesis.example("qwe_.5")  # shown as typed, "qwen.5" would be one term that finds nothing
    @hypothesis.example("mistrl-.7b")
    @hypothesis.example("lage:chat")  # shown as typed, "large:chat" stays words; "tag:" would not
    def same_answer(query: str) -> None:
        fts5, like = loop.run_until_complete(answers(query))
        assert fts5 == like, query

    try:
        if indexes[0].engine != ENGINE_FTS5:
            pytest.skip("this SQLite build has no FTS5")
        same_answer()
        assert suggested, "no example made a suggestion: the property was not exercised"
    finally:
        for index in indexes:
            loop.run_until_complete(index.close())
        loop.close()
