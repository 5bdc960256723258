"""``search_quality``: how well and how fast the model search finds what people type (issue 18).

The labelled set (``bench/search_queries.jsonl``, one JSON object a line) holds what people type
into a model hub's search box: exact names, names typed with other separators or case,
prefixes while typing, version numbers with and without separators, sizes and other infixes,
camelCase parts, CJK words, Ollama-style ``name:tag``, misspellings, filters typed in the query,
and description words. Each line names the models a person would want (``relevant``, all
among ``search_anchors.txt``), its ``kind``, and optionally the request's own
``filters``. The set was written from what people type, not from what the engine does: some
of its queries fail, and are meant to until the search handles them.

The catalogue (``search_catalogue.catalogue``) is those hand-written models among generated
fine-tunes and quantisations of the same bases, so a query finds its model among hundreds that
also match. For each engine (FTS5, LIKE) the scenario builds a ``SearchIndex`` in-process from
the catalogue (file under ``bench/.work/search/``), then:

* quality: every query with ``limit=10``. A misspelling (``kind: typo``) that finds nothing is
  judged by the results of its first "did you mean" suggestion, as a person would click it.
  ``recall_at_10``: the mean over queries of the share of its relevant models in the first 10
  hits; ``mrr``: the mean of 1 / rank of the first relevant hit (0 if none in the first 10);
  ``suggestions_ok``: misspellings whose target the (followed) suggestion finds. The queries
  that miss anything go to stderr.
* scale: ``rebuild_s`` (the whole catalogue, one transaction, as a server's indexer does),
  ``index_bytes`` (the database file after the rebuild's checkpoint), and the latency of every
  query of the set at ``limit=20``, several passes: ``query_p50_ms``/``query_p99_ms`` are the
  index's own ``query_ms`` (time in SQLite, what a server reports), ``call_p50_ms``/``call_p99_ms``
  the whole ``SearchIndex.search`` call (parsing, the lock, aiosqlite's thread hand-off);
  ``found_query_p99_ms`` over the searches that found models, ``empty_query_p50_ms``/``_p99_ms``
  over those that found none and so also computed "did you mean" (the misspellings).

One JSON line per engine on stdout. Alone: ``python -m bench.search_quality [--models N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, WORK_DIR, emit, log
from bench.load import percentile
from bench.search_catalogue import Catalogue, catalogue
from controlplane.server.search import ENGINE_FTS5, ENGINE_LIKE, MAX_LIMIT, SearchIndex

QUERIES_FILE = BENCH_DIR / "search_queries.jsonl"
# 22,222 models of 1 to 8 versions: ~100,000 versions, the scale.
DEFAULT_MODELS = 22_222
LATENCY_PASSES = 3
TOP = 10


@dataclass(frozen=True)
class Labelled:
    query: str
    relevant: tuple[str, ...]
    kind: str
    filters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    case: Labelled
    hits: list[str]  # the first TOP names judged (after following a suggestion, for a typo)
    recall: float
    reciprocal_rank: float
    followed: str | None  # the suggestion followed, if any


def load_queries(path: Path = QUERIES_FILE) -> list[Labelled]:
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        if not item.get("relevant"):
            raise ValueError(f"{path.name}:{number}: a labelled query needs at least one relevant model")
        cases.append(Labelled(item["query"], tuple(item["relevant"]), item["kind"], item.get("filters", {})))
    return cases


def check_labels(cases: list[Labelled], names: set[str]) -> None:
    """Every relevant model must be in the catalogue: a typo in the labels would read as a miss."""
    missing = sorted({name for case in cases for name in case.relevant if name not in names})
    if missing:
        raise ValueError(f"labelled models not in the catalogue: {missing}")


async def judge(index: SearchIndex, case: Labelled) -> Outcome:
    page = await index.search(case.query, limit=TOP, **case.filters)
    hits = [name for name, _ in page.hits]
    followed = None
    if not hits and page.suggestions and case.kind == "typo":
        followed = page.suggestions[0]
        hits = [name for name, _ in (await index.search(followed, limit=TOP, **case.filters)).hits]
    found = [name for name in case.relevant if name in hits]
    ranks = [hits.index(name) + 1 for name in found]
    return Outcome(
        case=case,
        hits=hits,
        recall=len(found) / len(case.relevant),
        reciprocal_rank=1.0 / min(ranks) if ranks else 0.0,
        followed=followed,
    )


async def evaluate(index: SearchIndex, cases: list[Labelled]) -> tuple[dict[str, Any], list[Outcome]]:
    """Recall@10, MRR, per kind, and the outcomes of every case."""
    outcomes = [await judge(index, case) for case in cases]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for outcome in outcomes:
        by_kind[outcome.case.kind].append(outcome.recall)
    typos = [outcome for outcome in outcomes if outcome.case.kind == "typo"]
    summary = {
        "queries": len(cases),
        "recall_at_10": round(sum(o.recall for o in outcomes) / len(outcomes), 4),
        "mrr": round(sum(o.reciprocal_rank for o in outcomes) / len(outcomes), 4),
        "suggestion_cases": len(typos),
        "suggestions_ok": sum(1 for o in typos if o.recall > 0),
        "recall_by_kind": {kind: round(sum(values) / len(values), 3) for kind, values in sorted(by_kind.items())},
        "failing": sum(1 for o in outcomes if o.recall < 1.0),
    }
    return summary, outcomes


async def describe_failure(index: SearchIndex, outcome: Outcome) -> str:
    """What a failing case missed, and where the missed models rank (a ranking miss) or that the
    search does not match them at all (a matching miss)."""
    case = outcome.case
    deep = await index.search(outcome.followed or case.query, limit=MAX_LIMIT, **case.filters)
    ranked = [name for name, _ in deep.hits]
    missed = [
        f"{name} (rank {ranked.index(name) + 1} of {deep.total})" if name in ranked else f"{name} (not matched)"
        for name in case.relevant
        if name not in outcome.hits
    ]
    filters = f" {case.filters}" if case.filters else ""
    via = f" via suggestion {outcome.followed!r}" if outcome.followed else ""
    top = ", ".join(outcome.hits[:3]) or "nothing"
    return f"[{case.kind}] {case.query!r}{filters}{via}: missed {', '.join(missed)}; top: {top}"


async def latency(index: SearchIndex, cases: list[Labelled], passes: int) -> dict[str, Any]:
    query_ms: list[float] = []
    call_ms: list[float] = []
    found_ms: list[float] = []  # searches that found models
    empty_ms: list[float] = []  # searches that found none, so also looked for "did you mean"
    slowest: dict[str, float] = {}
    for _ in range(passes):
        for case in cases:
            started = time.perf_counter()
            page = await index.search(case.query, limit=20, **case.filters)
            call_ms.append((time.perf_counter() - started) * 1e3)
            query_ms.append(page.query_ms)
            (found_ms if page.hits else empty_ms).append(page.query_ms)
            slowest[case.query] = max(slowest.get(case.query, 0.0), page.query_ms)
    worst = sorted(slowest.items(), key=lambda item: -item[1])[:5]
    log("search_quality: slowest queries (ms in the index): " + ", ".join(f"{q!r} {ms:.1f}" for q, ms in worst))
    for sample in (query_ms, call_ms, found_ms, empty_ms):
        sample.sort()
    return {
        "query_p50_ms": round(percentile(query_ms, 0.5), 3),
        "query_p99_ms": round(percentile(query_ms, 0.99), 3),
        "call_p50_ms": round(percentile(call_ms, 0.5), 3),
        "call_p99_ms": round(percentile(call_ms, 0.99), 3),
        "found_query_p99_ms": round(percentile(found_ms, 0.99), 3),
        "empty_query_p50_ms": round(percentile(empty_ms, 0.5), 3),
        "empty_query_p99_ms": round(percentile(empty_ms, 0.99), 3),
        "searches": len(query_ms),
    }


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def run_engine(engine: str, data: Catalogue, cases: list[Labelled], passes: int) -> dict[str, Any]:
    directory = WORK_DIR / "search" / engine
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    path = directory / "index.sqlite"
    index = await SearchIndex.open(path, use_fts5=engine == ENGINE_FTS5)
    try:
        if index.engine != engine:
            raise RuntimeError(f"asked for the {engine} engine, SQLite gave {index.engine}")
        started = time.perf_counter()
        await index.rebuild(data.docs, revision=1)
        rebuild_s = time.perf_counter() - started
        size = _file_bytes(path)
        summary, outcomes = await evaluate(index, cases)
        for outcome in outcomes:
            if outcome.recall < 1.0:
                log(f"search_quality {engine}: {await describe_failure(index, outcome)}")
        timing = await latency(index, cases, passes)
    finally:
        await index.close()
    return {
        "scenario": "search_quality",
        "system": "ours",
        "engine": engine,
        "models": len(data.docs),
        "versions": data.versions,
        **summary,
        "target_recall_at_10": 0.95,
        "rebuild_s": round(rebuild_s, 2),
        "index_bytes": size,
        **timing,
        "target_query_p99_ms": 5.0,
    }


async def bench_search_quality(models: int, engines: list[str], passes: int = LATENCY_PASSES) -> list[dict[str, Any]]:
    cases = load_queries()
    data = catalogue(models)
    check_labels(cases, {doc.name for doc in data.docs})
    log(f"search_quality: {len(cases)} labelled queries over {len(data.docs)} models ({data.versions} versions)")
    lines = []
    for engine in engines:
        line = await run_engine(engine, data, cases, passes)
        log(
            f"search_quality {engine}: recall@10 {line['recall_at_10']} MRR {line['mrr']} "
            f"suggestions {line['suggestions_ok']}/{line['suggestion_cases']}; query p50 {line['query_p50_ms']} ms "
            f"p99 {line['query_p99_ms']} ms; rebuild {line['rebuild_s']} s; {line['index_bytes'] / 1e6:.1f} MB"
        )
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--models", type=int, default=DEFAULT_MODELS, help="models in the catalogue")
    parser.add_argument("--engines", default=f"{ENGINE_FTS5},{ENGINE_LIKE}", help="comma-separated: fts5,like")
    parser.add_argument("--passes", type=int, default=LATENCY_PASSES, help="latency passes over the query set")
    args = parser.parse_args(argv)
    engines = [engine for engine in args.engines.split(",") if engine]
    for line in asyncio.run(bench_search_quality(args.models, engines, args.passes)):
        emit(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
