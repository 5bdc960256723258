"""This server's full-text search index over the model registry, in a local SQLite database.

Why a separate index: the replicated state machine is pure and holds models in sorted
dictionaries, which answer "get by name" and "list by prefix" but not "which models mention
instruct, ranked". The index is *derived* state: every server builds its own from the replicated
state, can throw it away and rebuild it at any time (a rebuild of 22,000 models takes 3.5-4.5
seconds), and never feeds anything back into the log.

It is kept across restarts all the same, so that a restarted server catches up from the revision
its index reached instead of rebuilding it (indexer.py decides whether a kept index may be
trusted). Every transaction records, with the rows it writes, the revision they reflect and a
fingerprint of the state at that revision (``index_meta``), so the file says exactly which state
it holds: SQLite's atomic commit keeps the rows and that record together whatever happens to the
process (WAL journal; ``synchronous = NORMAL`` only gives up the last transactions on a power
cut, never consistency). ``open`` keeps a file whose record it can read and whose layout and
engine match; any other file (absent, another layout, another engine, not a database, corrupt)
is replaced by an empty index at revision 0. ``LAYOUT`` says how documents become rows: change
it whenever that changes, so an index written by other code is rebuilt rather than trusted.

Invariants:

* Every answer is tagged with the replicated-state revision the index reflected when it was
  computed. ``rebuild`` and ``apply`` each change the index in one SQLite transaction and move
  the revision at its commit; one ``asyncio.Lock`` serialises them against ``search`` (they share
  one aiosqlite connection, which would otherwise let a search read a half-applied transaction).
  So a page is always the full answer at exactly the revision it reports. A rebuild or apply
  that has started always finishes (or rolls back) even if its caller is cancelled, so the
  revision never disagrees with the contents. ``advance`` moves the revision without the lock or a
  transaction, only across revisions that changed no model: the rows are the registry at each of
  them, so a search that reports the later one is still exact.
* The same documents give the same answer: the order (see Ranking) ends in the name, bm25 depends
  only on the set of documents (not on the order they arrived in), and names are unique ignoring case.
  So a server that rebuilt and a server that applied increments agree at the same revision.
* ``apply`` never moves the revision backwards (that would be an indexer bug: ValueError).
  ``rebuild`` may set any revision, because it replaces everything (e.g. after a backup restore).
* The revision and fingerprint ``open`` reports are the ones committed with the rows it holds.
  An apply that changes no model (a KV write moved the revision) commits its revision at most
  every ``META_WRITE_INTERVAL_S``, and on ``close``: the rows are the same at either revision, and
  a transaction per KV write cost the servers' CPU a thread hand-off and an SQLite commit each.
  Between those commits the indexer moves the revision with ``advance``, without a fingerprint
  (building and hashing an event per KV write was the indexer's main cost); what is committed, or
  written on ``close``, is always the last revision given a fingerprint (``fingerprint_revision``),
  which the indexer brings up to the revision before it closes.

Two engines answer the same queries:

* ``fts5``: an FTS5 table (tokenizer ``unicode61 remove_diacritics 2 tokenchars '-_'``, so
  "llama-3-8b-instruct" is one token and "Café" matches "cafe") over name, name parts, family,
  tags and description; a match whose name does not hold every term (see Ranking) is scored by
  ``bm25`` with the name weighted highest, the others are not (their score is 0).
* ``like``: for SQLite builds without FTS5 (or ``use_fts5=False``), a ``LIKE '% term%'`` scan of
  one normalised text per model, built so that a term matches exactly when it is a prefix of a
  token, as in FTS5. Results are ranked as FTS5's, without bm25 (the score is 0).

How names are found: text is indexed and queried *canonical*, with '.' and '_' between letters or
digits written '-', so the three separators are one ("qwen2.5-coder_7b" is "qwen2-5-coder-7b",
and "2.5" stays one token). Beside the name itself, the name parts column holds the name's
suffix from every inner word start: after a separator, at a letter/digit change, at a camelCase
step, and at every CJK character; and the name with its separators dropped. A prefix of any of
these is a match, so "coder", "coder-7b", "2.5" (with or without "qwen " before it), "qwen25",
"seek" in "DeepSeekCoder", "x7b" in "Mixtral-8x7B" and "千问" in "通义千问-7B" all find their
model, while a substring that starts no word ("struct" in "instruct") still does not. A name has
at most ``_MAX_NAME_PARTS`` suffixes. A description is indexed with the same suffixes of its CJK
runs ("对话" inside "140亿参数对话模型"). A query of up to ``_MAX_JOINED_TERMS`` words that
finds nothing as typed is tried with neighbouring words joined, fewest joins first ("sd xl
turbo" finds sdxl-turbo): the first that finds models is the answer, on every page alike.

Query language, the same on both engines: ``tag:``, ``family:``, ``status:``, ``format:`` and
``owner:`` words are filters (status and format by name, "status:ready"), and so are what the
versions record of themselves: ``tag:KEY=VALUE`` (a version tag; model tags hold no '='),
``run:ID``, ``parent:MODEL`` or ``parent:MODEL/VERSION`` (models with a version derived from it)
and ``metric:NAME>=NUMBER`` (also ``>``, ``<=``, ``<``, ``=``); the rest is split on
anything that is not a letter, digit, ``-`` or ``_``; every remaining term is a prefix and all
are required (AND). Nothing a user types is ever FTS5 syntax: each term goes in as a quoted
string (``"qwen"* "inst"*``), so quotes, parentheses, ``NEAR``, ``OR`` or a leading ``-`` are
plain text. A query with neither terms nor filters matches nothing (the proto says so) and never
reaches SQLite; filters alone browse their models by name.

Ranking: a model named exactly what was typed first, then names starting with it, then names
holding every term (separators dropped), then the rest; within each group, names holding the
terms together in the order typed ("v3 large" in MobileNetV3Large) first, then the models most
*cited*: named by other models, in their descriptions (a fine-tune's "fine-tune of
Llama-3.1-8B-Instruct") or as their versions' parent, so a base comes before the many derivatives
named after it. Then the models with a ready version before those with none (every version
pending, deprecated or failed, or no version yet), as npm's search sinks deprecated packages. Then, among names starting
with the query or holding every term, the shortest (what was typed and least else), and these
are not scored by bm25 (score 0: bm25 is the dearest part of ranking a match, and on the labelled
set it only broke ties of two names of one length there); among the rest, bm25 (whose length
normalisation alone would rank "x-7b" above "x" for "x"); then the name. "Holding every term"
compares the name with its separators dropped, so a name can hold a term it has no word for
("a01m" holds "m"). The score is therefore not the ranking: the order of the hits is.
The citation counts are kept by the index itself (``citations``), so they follow every change,
at one primary-key lookup per match; whether a model has a ready version is read from its row.

"Did you mean": a first page that found nothing corrects each term that matches no model on its
own into a word of the model names one edit away (terms up to 4 characters) or two (longer),
nearest then commonest first, and offers the corrected queries that do find models
(``SearchPage.suggestions``), written as the person typed the words it did not correct (unless
so written the text would be read as another query). Candidates are the words with the term's
first letter, and any word one deletion from the term, or the term from it, or both from one
text (SymSpell's way to a mistyped first letter: "kwen" -> "qwen"). A term of letters joined to
a version has its letters corrected ("qwne2.5" -> "qwen2.5"). Both engines correct from an
in-memory tally of the indexed names' words (kept by rebuild and apply), and only when a search
found nothing; whether a term or a corrected query finds anything is asked without ranking the
matches.

Filters are exact (tag and family ignoring case; format, status and the version filters: the
model has at least one current version with that value), not string matching: family, owner,
format and status read the model's row (formats and statuses as bit masks), the others side tables
keyed by the value. One value per filter: two metric bounds, or two version tags, are refused. Note
that format and status are independent facets: ``format=GGUF, status=READY`` means "has a GGUF
version and has a ready version", not necessarily the same version.

Cost: a search merges the doclists of every token its terms start (the prefix indexes hold
them merged for prefixes of up to 8 characters), counts the matches, then ranks every match
before it can return the best, so it costs O(matches), not O(page): about 1 µs per match, a
few more for a match bm25 scores. Above 500 matches the page is first looked for among
the names starting with what was typed, which rank before every other match: a full page there is
the answer, and the rest is never ranked (a one-letter prefix matching all 20,000 models of
``make bench``'s registry ranks the 2,000 names starting with it: ~4 ms, was ~35 ms). The pass runs
only when a range of an index says a page of names start with it; when the other words or the
filters leave it short of a page, it is wasted: about a fifth of ranking everything. The
LIKE engine scans every model on every search (tens of ms at 20,000 models). A query that finds
nothing costs more: up to four joined forms, then "did you mean", each asked with a statement
that stops at the first match (FTS5) or scans every model (LIKE), on every page of it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import functools
import hashlib
import itertools
import json
import re
import sqlite3
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from controlplane.errors import InvalidArgument
from controlplane.server.datadir import create_private_file
from controlplane.v1 import models_pb2

__all__ = [
    "DEFAULT_LIMIT",
    "ENGINE_FTS5",
    "ENGINE_LIKE",
    "LAYOUT",
    "MAX_LIMIT",
    "MAX_QUERY_CHARS",
    "MAX_QUERY_TERMS",
    "ModelDoc",
    "SearchIndex",
    "SearchPage",
    "model_doc",
    "page_offset",
    "page_token",
    "query_terms",
]

log = structlog.get_logger("controlplane.search")

ENGINE_FTS5 = "fts5"
ENGINE_LIKE = "like"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
# Nobody pages a million deep; a bound keeps every offset well inside SQLite's 64-bit integers.
MAX_OFFSET = 1_000_000
# Bounds on the work one query can ask of SQLite; far beyond anything a person types.
MAX_QUERY_CHARS = 1024
MAX_QUERY_TERMS = 32

# bm25 weights, in the FTS5 column order below: a hit in the name counts most, then in the
# name's inner parts, then family and tags, then the free-text description.
_BM25_WEIGHTS = (10.0, 5.0, 3.0, 3.0, 1.0)
# Matches above which a relevance page is first looked for among the names starting with the
# query (SearchIndex._page): below it, ranking them all costs about what the extra pass would.
_NAME_STARTS_FIRST_ABOVE = 500
# A model's formats and statuses are bit masks in its row (bit F: a current version has format
# F), so that their filters and the ready ranking read the row a match already joins. Every
# enum value must fit a signed 64-bit INTEGER's bits (tests/test_search.py checks it).
_MASK_BITS = 62

# A token, as both engines see it: letters, digits, '_' and '-' (unicode61 with tokenchars '-_').
_TOKEN = re.compile(r"[\w-]+")
# '.' and '_' between two letters or digits, which both engines read as '-' (see _canonical).
_SEPARATOR_BETWEEN_WORDS = re.compile(r"(?<=[^\W_])[._](?=[^\W_])")
# A name is cut into at most this many suffixes (see _name_parts): a bound on one model's tokens.
_MAX_NAME_PARTS = 32
# Query words of the form key:value that filter instead of matching text.
_QUERY_FILTER = re.compile(r"(?<!\S)(tag|family|status|format|owner|run|parent|metric):(\S*)", re.IGNORECASE)
# metric:NAME>=NUMBER (also >, <=, <, =): a version's metric compared with a number.
_METRIC_FILTER = re.compile(r"([^\W_][\w.-]*)(>=|<=|>|<|=)([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_METRIC_OPS = {">=": "metric_ge", ">": "metric_gt", "<=": "metric_le", "<": "metric_lt", "=": "metric_eq"}
# "Did you mean": corrections offered for a query that found nothing, and how far a typed word
# may be from the word it is taken for (edits: insert, delete, substitute, swap two neighbours).
MAX_SUGGESTIONS = 3
_MIN_CORRECTED_CHARS = 3

# ``models.id`` is the FTS5 rowid, so a match joins to its model by primary key. The side tables
# are keyed (filter value, model id) for the filters; the indexes by model id serve deletes.
# A rebuild creates the indexes after loading the rows, which is faster than maintaining them.
_TABLES = (
    """CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        name_key TEXT NOT NULL,    -- casefolded name, for the citations
        name_joined TEXT NOT NULL, -- the name as the ranking compares it: see _joined_key
        family_key TEXT NOT NULL,  -- casefolded family, for the family filter
        owner_key TEXT NOT NULL,   -- casefolded owner, for the owner filter
        created INTEGER NOT NULL,  -- the model's create_revision, for SEARCH_SORT_CREATED
        updated INTEGER NOT NULL,  -- its last change or its versions', for SEARCH_SORT_UPDATED
        format_mask INTEGER NOT NULL,  -- bit F set: a current version has ModelFormat F
        status_mask INTEGER NOT NULL,  -- bit S set: a current version has VersionStatus S
        like_text TEXT             -- LIKE engine only: see _like_text
    )""",
    """CREATE TABLE model_tags (
        tag TEXT NOT NULL,  -- casefolded
        model_id INTEGER NOT NULL,
        PRIMARY KEY (tag, model_id)
    ) WITHOUT ROWID""",
    # What the versions say of themselves, for tag:KEY=VALUE, run: and parent: (casefolded).
    """CREATE TABLE version_facets (
        facet TEXT NOT NULL,  -- 'tag' (KEY=VALUE), 'run' (run id), 'parent' (MODEL/VERSION and MODEL)
        value TEXT NOT NULL,
        model_id INTEGER NOT NULL,
        PRIMARY KEY (facet, value, model_id)
    ) WITHOUT ROWID""",
    # Which names each model's description mentions, and the versions' parents: a model named by
    # many others (the base its fine-tunes cite) ranks first among names that start alike.
    """CREATE TABLE model_mentions (
        model_id INTEGER NOT NULL,
        name_key TEXT NOT NULL,  -- casefolded
        PRIMARY KEY (model_id, name_key)
    ) WITHOUT ROWID""",
    """CREATE TABLE citations (
        name_key TEXT PRIMARY KEY,  -- casefolded; a name mentioned, whether or not a model has it
        count INTEGER NOT NULL      -- models mentioning it
    ) WITHOUT ROWID""",
    """CREATE TABLE version_metrics (
        name TEXT NOT NULL,  -- casefolded
        value REAL NOT NULL,
        model_id INTEGER NOT NULL,
        PRIMARY KEY (name, value, model_id)
    ) WITHOUT ROWID""",
)
_INDEXES = (
    "CREATE INDEX models_by_family ON models (family_key)",
    "CREATE INDEX models_by_owner ON models (owner_key)",
    "CREATE INDEX models_by_created ON models (created)",
    "CREATE INDEX models_by_updated ON models (updated)",
    # How many names start with what was typed (_counts_statement).
    "CREATE INDEX models_by_name_joined ON models (name_joined)",
    "CREATE INDEX model_tags_by_model ON model_tags (model_id)",
    "CREATE INDEX version_facets_by_model ON version_facets (model_id)",
    "CREATE INDEX version_metrics_by_model ON version_metrics (model_id)",
)
# detail=full (the default) is required: a quoted term that the tokenizer splits in two is a
# phrase query, which detail=column/none would refuse. Every term is a prefix query, and with
# '-' and '_' inside tokens a common word starts thousands of distinct tokens ("llama" starts
# "llama-3-8b-instruct-gguf", ...), whose doclists FTS5 would merge for every search. A prefix
# index holds each prefix's merged doclist, for the lengths listed: 1 to 8 characters covers the
# words people type, and cut the labelled set's p99 from 13-15 ms to 3.6-6.1 ms for 30% more index
# (39 -> 50 MB at 22,222 models). A longer term reads the token lists as before.
_FTS_TABLE = """CREATE VIRTUAL TABLE models_fts USING fts5 (
    name, name_parts, family, tags, description,
    tokenize = "unicode61 remove_diacritics 2 tokenchars '-_'",
    prefix = '1 2 3 4 5 6 7 8'
)"""
# Kept across restarts, and only ever trusted whole: the rows and their revision must survive a
# crash together. WAL with synchronous=NORMAL does that (a kill -9 loses nothing committed, a
# power cut at most the last transactions) with no fsync per transaction, only at checkpoints.
# journal_size_limit: a rebuild writes the whole index to the WAL once; do not keep that size.
_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA journal_size_limit = 8388608",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA cache_size = -65536",
)
# How documents become rows (tables, tokenizer, name parts, folding). An index of another layout
# is rebuilt, not trusted: bump this whenever a change here would index a model differently.
LAYOUT = 9
# How often an apply that changed no model commits its revision (see the module docstring).
META_WRITE_INTERVAL_S = 1.0
# Documents per insert statement in a rebuild.
_INSERT_SLICE = 2000
# One row: what the index holds (see the module docstring). Written in every transaction.
_META_TABLE = """CREATE TABLE index_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    layout INTEGER NOT NULL,
    engine TEXT NOT NULL,
    revision INTEGER NOT NULL,
    fingerprint TEXT NOT NULL
)"""
_WRITE_META = "UPDATE index_meta SET revision = ?, fingerprint = ? WHERE id = 1"


@dataclass(frozen=True)
class ModelDoc:
    """What the index holds for one model."""

    name: str
    description: str
    family: str
    tags: tuple[str, ...]
    owner: str
    formats: frozenset[int]  # ModelFormat values of its current versions
    statuses: frozenset[int]  # VersionStatus values of its current versions
    created: int = 0  # the model's create_revision
    updated: int = 0  # the latest mod_revision of the model and its versions
    # (facet, casefolded value) of its current versions: ("tag", "key=value"), ("run", id),
    # ("parent", "model/3") and ("parent", "model").
    version_facets: frozenset[tuple[str, str]] = frozenset()
    # (casefolded name, value) of its current versions' metrics.
    metrics: frozenset[tuple[str, float]] = frozenset()


def model_doc(model: models_pb2.Model, versions: Iterable[models_pb2.ModelVersion]) -> ModelDoc:
    """The index document for ``model`` and its current versions."""
    formats: set[int] = set()
    statuses: set[int] = set()
    facets: set[tuple[str, str]] = set()
    metrics: set[tuple[str, float]] = set()
    updated = model.mod_revision
    for version in versions:
        if version.model != model.name:
            raise ValueError(f"version {version.model}/{version.version} does not belong to model {model.name!r}")
        formats.add(version.format)
        statuses.add(version.status)
        updated = max(updated, version.mod_revision)
        facets.update(("tag", f"{key}={value}".casefold()) for key, value in version.tags.items())
        if version.run_id:
            facets.add(("run", version.run_id.casefold()))
        if version.HasField("parent"):
            parent = version.parent.model.casefold()
            facets.update((("parent", parent), ("parent", f"{parent}/{version.parent.version}")))
        metrics.update((name.casefold(), value) for name, value in version.metrics.items())
    return ModelDoc(
        name=model.name,
        description=model.description,
        family=model.family,
        tags=tuple(model.tags),
        owner=model.owner,
        formats=frozenset(formats),
        statuses=frozenset(statuses),
        created=model.create_revision,
        updated=updated,
        version_facets=frozenset(facets),
        metrics=frozenset(metrics),
    )


@dataclass(frozen=True)
class SearchPage:
    # (model name, score), best first; score: bm25 (lower is better) of a match whose name does not
    # hold every term, 0.0 for one whose name does (separators dropped) and for LIKE; the order of
    # the hits, not the score, is the ranking
    hits: list[tuple[str, float]]
    total: int  # all matches, for pagination
    query_ms: float  # time spent in SQLite
    revision: int  # the replicated-state revision the index reflected for this answer
    engine: str  # ENGINE_FTS5 or ENGINE_LIKE
    suggestions: list[str] = field(default_factory=list)  # "did you mean": corrected queries that find models


def _fold(text: str) -> str:
    """Lowercase without diacritics ("Café" -> "cafe"), as unicode61 remove_diacritics folds."""
    if text.isascii():  # most text: decomposing every character is most of a LIKE rebuild's time
        return text.lower()
    return " ".join(word.lower() if word.isascii() else _fold_word(word) for word in text.split())


def _fold_word(word: str) -> str:
    decomposed = unicodedata.normalize("NFKD", word)
    # Recomposed: NFKD also splits Hangul syllables into jamo, which are no combining marks and
    # which the FTS5 tokenizer never produces, so "한국어" would match nothing.
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return unicodedata.normalize("NFC", stripped).lower()


def _canonical(text: str) -> str:
    """``text`` with '.' and '_' between letters or digits written '-': the three are one separator.

    Both engines index and query canonical text, so "qwen2.5-coder_7b", "qwen2-5-coder-7b" and
    "qwen2_5 coder.7b" are the same words, and "2.5" stays one token ("2-5") instead of two.
    One character for one, so positions (and camelCase, which needs the case) are kept.
    """
    return _SEPARATOR_BETWEEN_WORDS.sub("-", text)


def query_terms(query: str) -> list[str]:
    """The terms of a user's query, canonical and folded; every one is matched as a token prefix.

    A term needs a letter or digit: "-", "__" or "--" alone would otherwise match every token
    that happens to start with them. Any other punctuation splits terms, as it splits tokens.
    """
    return [term for term in _TOKEN.findall(_fold(_canonical(query))) if any(char.isalnum() for char in term)]


@dataclass(frozen=True)
class ParsedQuery:
    """A query split into its words and the ``key:value`` filters typed among them."""

    text: str  # the query without its filters
    filters: dict[str, str]  # key (casefolded) -> value, as typed


def parse_query(query: str) -> ParsedQuery:
    """Take ``tag:``, ``family:``, ``status:``, ``format:`` and ``owner:`` out of ``query``.

    Raises InvalidArgument for a filter without a value, or one key given two different values
    (every filter is one value; "tag:chat tag:code" would be ambiguous between AND and OR).
    Any other ``word:word`` is text, as before filters existed.
    """
    filters: dict[str, str] = {}
    for match in _QUERY_FILTER.finditer(query):
        key, value = match.group(1).casefold(), match.group(2)
        if key == "tag":
            key = _tag_filter(value)
        if not value:
            raise InvalidArgument(f"'{key}:' in the query needs a value, e.g. {key}:{_FILTER_EXAMPLES[key]}")
        if key in filters and filters[key].casefold() != value.casefold():
            typed = _typed_key(key)
            raise InvalidArgument(f"the query gives {typed}: twice ({filters[key]!r} and {value!r}); give one")
        filters[key] = value
    return ParsedQuery(text=" ".join(_QUERY_FILTER.sub(" ", query).split()), filters=filters)


def _tag_filter(value: str) -> str:
    """Which filter a tag value is: "vtag" for a version's KEY=VALUE tag (a model tag holds no
    '='), else "tag"; InvalidArgument for "=VALUE", which names no key."""
    if value.startswith("="):
        raise InvalidArgument(f"tag:{value} needs a key before '=', e.g. tag:stage=eval")
    return "vtag" if "=" in value else "tag"


def _typed_key(key: str) -> str:
    """How a parsed filter's key is typed: a version tag is ``tag:KEY=VALUE`` too."""
    return "tag" if key == "vtag" else key


_FILTER_EXAMPLES = {
    "tag": "chat",
    "family": "qwen",
    "status": "ready",
    "format": "gguf",
    "owner": "team-ml",
    "run": "run-42",
    "parent": "llama-3-8b/2",
    "metric": "accuracy>=0.9",
}


def _enum_value(kind: str, typed: str, enum: Any, prefix: str) -> int:
    """The enum number a person typed by name ("ready", "GGUF", "VERSION_STATUS_READY")."""
    name = typed.upper()
    names = [key for key in enum.keys() if not key.endswith("UNSPECIFIED")]  # noqa: SIM118 (a protobuf enum)
    for candidate in (name, prefix + name):
        if candidate in names:
            return int(enum.Value(candidate))
    known = ", ".join(key.removeprefix(prefix).lower() for key in names)
    raise InvalidArgument(f"unknown {kind} {typed!r} in the query; known: {known}")


def _is_cjk(char: str) -> bool:
    """Whether ``char`` is written without spaces between words (Chinese, Japanese kana, Korean)."""
    code = ord(char)
    return 0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF


def _word_starts(name: str) -> list[int]:
    """Where a word starts inside ``name`` (beyond its first character).

    After a separator; at a letter/digit change ("qwen|2", "8|x|7|b"); at a camelCase step
    ("Deep|Seek|Coder"); and at every character of CJK text, which has no separators
    ("通|义|千|问").
    """
    starts = []
    for index in range(1, len(name)):
        before, char = name[index - 1], name[index]
        if not char.isalnum():
            continue
        if (
            not before.isalnum()
            or (before.isalpha() and char.isdigit())
            or (before.isdigit() and char.isalpha())
            or (before.islower() and char.isupper())
            or _is_cjk(char)
        ):
            starts.append(index)
        if before.isupper() and char.islower() and index >= 2 and name[index - 2].isupper():
            # After an upper-case run, a word starts at its last letter ("XML|Parser") or after it
            # ("YOLO|v8n"): which one, the letters cannot tell, so both ("arser" costs little).
            starts += [index - 1, index]
    return sorted(set(starts))


def _name_parts(name: str) -> list[str]:
    """The tokens a name is found by beyond itself: its suffixes from every inner word, and the
    name with its separators dropped.

    "Qwen2.5-Coder_7B" -> "2-5-Coder-7B", "5-Coder-7B", "Coder-7B", "7B", "B" and
    "Qwen25Coder7B". Each suffix is one token (tokenchars keep '-'), so a prefix query matches a
    word ("coder"), a run of words ("coder-7b", "2.5"), an infix at a word start ("x7b" in
    "Mixtral-8x7B"), and the joined form matches a name typed without separators ("qwen25").
    """
    canonical = _canonical(name)
    starts = _word_starts(canonical)
    parts = [canonical[start:] for start in starts][:_MAX_NAME_PARTS]
    # Joined forms of the name and of every suffix after a separator, so "llama3" finds
    # "Meta-Llama-3-8B" and "q4km" finds "...-q4_k_m".
    for start in [0, *(start for start in starts if canonical[start - 1] == "-")][:_MAX_NAME_PARTS]:
        suffix = canonical[start:]
        joined = suffix.replace("-", "")
        if joined and joined != suffix and joined.isalnum() and joined not in parts:
            parts.append(joined)
    return parts


# At most this many inner CJK words of a description are indexed (see _description_text).
_MAX_DESCRIPTION_PARTS = 64
_MAX_CJK_PART_CHARS = 16


def _description_text(description: str) -> str:
    """The description as indexed: canonical, then the tail of every CJK run from each inner character.

    CJK text has no spaces, so "通义千问 140亿参数对话模型" is two tokens and "对话" would start
    none. As in names, a token from every inner CJK character ("对话模型", "话模型", ...; at most
    ``_MAX_CJK_PART_CHARS`` long, ``_MAX_DESCRIPTION_PARTS`` of them) lets a prefix find the word.
    """
    canonical = _canonical(description)  # as the index holds it: "千问.对话" is one token there
    parts = []
    for token in _TOKEN.findall(canonical):
        parts += [token[start : start + _MAX_CJK_PART_CHARS] for start in range(1, len(token)) if _is_cjk(token[start])]
    return " ".join([canonical, *parts[:_MAX_DESCRIPTION_PARTS]]) if parts else canonical


def _spellings(term: str) -> tuple[str, str]:
    """A term as typed and without its separators: "phi-3" also finds "Phi3-mini" (by its joined form)."""
    joined = _SEPARATOR_BETWEEN_WORDS.sub("", term.replace("-", "."))  # only '-' between letters or digits
    return (term, joined if joined.isalnum() else term)


def _match_expression(terms: Sequence[str]) -> str:
    """An FTS5 MATCH expression that requires every term as a prefix and has no other syntax."""

    def quoted(text: str) -> str:
        # Terms cannot hold '"' (see _TOKEN); doubling it keeps this safe should that ever change.
        return '"' + text.replace('"', '""') + '"*'

    alternatives = [sorted(set(_spellings(term))) for term in terms]
    return " AND ".join(
        quoted(spellings[0]) if len(spellings) == 1 else "(" + " OR ".join(map(quoted, spellings)) + ")"
        for spellings in alternatives
    )


def _like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"% {escaped}%"


def _name_words(name: str) -> set[str]:
    """The words of a name, folded, for "did you mean": its single words and the runs between its
    separators ("CodeLlama-34b" -> code, llama, 34, b, codellama, 34b)."""
    canonical = _canonical(name)
    cuts = [0, *_word_starts(canonical), len(canonical)]
    pieces = [canonical[start:end].strip("-") for start, end in itertools.pairwise(cuts)]
    pieces += canonical.split("-")
    # Only words of letters and digits: "foo._bar" holds a "." the separators leave, which no
    # term holds ("." splits a query), so a suggestion of it would be a phrase on one engine only.
    return {_fold(piece) for piece in pieces if piece and piece.isalnum()}


# A name as a description writes it: letters or digits, with '.', '_', '-' between them.
_NAME_IN_TEXT = re.compile(r"[^\W_](?:[\w.-]*[^\W_])?")
# At most this many distinct names per model are counted as its mentions.
_MAX_MENTIONS = 64


def _mentioned(doc: ModelDoc) -> set[str]:
    """The names a model points at, casefolded, at most ``_MAX_MENTIONS`` (its own name never):
    its versions' parents first, then the words of its description that could be model names (a
    fine-tune's "fine-tune of Llama-3.1-8B-Instruct"), in sorted order so every server keeps
    the same ones."""
    own = doc.name.casefold()
    parents = {value for facet, value in doc.version_facets if facet == "parent" and "/" not in value} - {own}
    parents = set(sorted(parents)[:_MAX_MENTIONS])
    # Words with a digit or a separator: model names nearly always have one, prose rarely.
    words = {
        word.casefold()
        for word in _NAME_IN_TEXT.findall(doc.description)
        if any(char.isdigit() or char in "-_." for char in word)
    }
    words -= parents | {own}
    return parents | set(sorted(words)[: _MAX_MENTIONS - len(parents)])


def _like_text(doc: ModelDoc) -> str:
    """Every token the FTS5 table would hold for ``doc``, folded, each preceded by a space.

    ``LIKE '% term%'`` on this text then means "term is a prefix of one of the tokens".
    """
    # Fields joined by a space, which is no token character, so no token spans two fields.
    fields = " ".join([doc.name, *_name_parts(doc.name), doc.family, *doc.tags, _description_text(doc.description)])
    return " " + " ".join(_TOKEN.findall(_fold(_canonical(fields)))) + " "


# Every query is driven by its terms (FTS5, or the LIKE scan), so each filter is a check per
# match: of the model's row (family, owner, format, status) or a primary-key lookup in a side
# table keyed by the filter value first.
_READY = models_pb2.VERSION_STATUS_READY
_FILTERS = {
    "family": "AND m.family_key = :family",
    "owner": "AND m.owner_key = :owner",
    "tag": "AND EXISTS (SELECT 1 FROM model_tags WHERE tag = :tag AND model_id = m.id)",
    # :format and :status are known enum values (_merged_filters refuses others), so each shift
    # is by a bit the mask can hold.
    "format": "AND (m.format_mask >> :format) & 1",
    "status": "AND (m.status_mask >> :status) & 1",
    **{
        name: f"AND EXISTS (SELECT 1 FROM version_facets WHERE facet = '{facet}' "
        f"AND value = :{name} AND model_id = m.id)"
        for name, facet in (("vtag", "tag"), ("run", "run"), ("parent", "parent"))
    },
    **{
        name: "AND EXISTS (SELECT 1 FROM version_metrics WHERE name = :metric_name "
        f"AND value {op} :{name} AND model_id = m.id)"
        for op, name in _METRIC_OPS.items()
    },
}


# The orders other than relevance (SearchSort values), each ending in the name: the order is total.
_BY_NAME = "name COLLATE NOCASE, name"
_SORTS: dict[int, str] = {
    models_pb2.SEARCH_SORT_NAME: _BY_NAME,
    models_pb2.SEARCH_SORT_UPDATED: f"m.updated DESC, {_BY_NAME}",
    models_pb2.SEARCH_SORT_CREATED: f"m.created DESC, {_BY_NAME}",
}


def _joined_key(text: str) -> str:
    """``text`` as the ranking compares names, what was typed and its terms: folded as the terms
    are ("Café" -> "cafe"), without '-', '_', '.' and spaces."""
    return "".join(char for char in _fold(text) if char not in "-_. ")


def _like_terms(term_count: int) -> str:
    """The LIKE engine's condition that a model holds every term (typed or joined) as a token prefix."""
    return " AND ".join(
        f"(m.like_text LIKE :term{index} ESCAPE '\\' OR m.like_text LIKE :joined{index} ESCAPE '\\')"
        for index in range(term_count)
    )


@functools.lru_cache(maxsize=1024)
def _statements(
    engine: str, term_count: int, filters: tuple[str, ...], sort: int = 0, *, name_starts_only: bool = False
) -> tuple[str, str]:
    """The SQL for one shape of search (engine, number of terms, filters used, order): (page, total).

    One text per shape, so sqlite3's statement cache prepares each shape once. With
    ``name_starts_only`` (FTS5, relevance order) the page holds only the matches whose name starts
    with what was typed: the group every other match ranks after (see ``SearchIndex._page``).
    """
    where = " ".join(_FILTERS[name] for name in filters)
    # A model named exactly what was typed comes first, then models whose name starts with it,
    # then names holding every term, then the rest; within each, names holding the terms together
    # in the order typed, then the most cited (see the module docstring), then those with a ready
    # version, then bm25: its
    # length normalisation alone ranks "x-7b" above "x" for the query "x".
    # Then the name: the order is total (names are unique).
    # Names compare without separators ('-', '_', '.', ' ') and ignoring case, so "gemma 2 9b it"
    # is the name gemma-2-9b-it and "qwen 2.5 7b" starts Qwen2.5-7B-Instruct. Among names that
    # start with what was typed, or hold every term, cited alike and alike in readiness, the shortest first: a
    # base model before its fine-tunes ("Llama-3.1-8B-Instruct" before
    # "Llama-3.1-8B-Instruct-abliterated-GGUF"), whose descriptions repeat the base's name and
    # would win on bm25.
    # Stored, not computed per row: the order reads it up to ten times for every match.
    key = "m.name_joined"
    starts_with = f"substr({key}, 1, length(:exact)) = :exact"
    cited = "coalesce((SELECT count FROM citations AS c WHERE c.name_key = m.name_key), 0)"
    # Every term inside the name (separators dropped): a name match is never outranked by a
    # model that only its description or tags match, however often it is cited.
    in_name = " AND ".join(f"instr({key}, :in_name{index}) > 0" for index in range(term_count)) or "0"
    # A model with a ready version before one with none (all pending, deprecated or failed, or no
    # version yet), as npm's search sinks deprecated packages: cited alike, the one people can use.
    # Read from the model's row, not looked up in a side table: a lookup per match was a quarter
    # of ranking one.
    ready = f"(m.status_mask >> {_READY}) & 1"
    order = (
        f"ORDER BY {key} = :exact DESC, {starts_with} DESC, {in_name} DESC, instr({key}, :phrase) > 0 DESC, "
        f"{cited} DESC, {ready} DESC, "
        f"CASE WHEN {starts_with} OR ({in_name}) THEN length(m.name) END, score, {_BY_NAME} LIMIT :limit OFFSET :offset"
    )
    if sort in _SORTS:
        order = f"ORDER BY {_SORTS[sort]} LIMIT :limit OFFSET :offset"
    if term_count == 0:
        # No words, only filters: browse the models they select, by name unless asked otherwise.
        browse = f"FROM models AS m WHERE 1 = 1 {where}"
        return (
            f"SELECT m.name AS name, 0.0 AS score, COUNT(*) OVER () AS total {browse} "
            f"ORDER BY {_SORTS.get(sort, _BY_NAME)} LIMIT :limit OFFSET :offset",
            f"SELECT COUNT(*) {browse}",
        )
    if name_starts_only:
        where += f" AND {starts_with}"
    if engine == ENGINE_FTS5:
        # CROSS JOIN keeps FTS5 as the outer loop. Left to itself the planner may start from the
        # family index and run the whole MATCH once per model of the family (a second, not a
        # millisecond). bm25 is the expensive part (a few microseconds per match, the rest is
        # nothing next to it), so the total comes from a separate count that does not rank.
        weights = ", ".join(str(weight) for weight in _BM25_WEIGHTS)
        matches = (
            f"FROM models_fts CROSS JOIN models AS m ON m.id = models_fts.rowid WHERE models_fts MATCH :match {where}"
        )
        # A name that starts with the query or holds every term ranks on how close the name is
        # (its length), and bm25 orders only what ties on that too: two names of one length
        # (measured on bench.search_quality's labelled set: the same recall, MRR 0.918 -> 0.921).
        # So such a hit is not scored: bm25 is the dearest part of ranking a match, and these
        # are the matches of a word typed at the start of a name (every "llama" model for "llama").
        page = (
            f"SELECT m.name AS name, CASE WHEN {starts_with} OR ({in_name}) THEN 0.0 "
            f"ELSE bm25(models_fts, {weights}) END AS score {matches} {order}"
        )
        if not filters:  # every FTS5 row has its models row: no join needed to count
            return page, "SELECT COUNT(*) FROM models_fts WHERE models_fts MATCH :match"
        return page, f"SELECT COUNT(*) {matches}"
    likes = _like_terms(term_count)
    matches = f"FROM models AS m WHERE {likes} {where}"
    # Here every statement scans every model, so one scan gives the page and (taken before
    # LIMIT applies) the total; the separate count is only for a page past the last match.
    page = f"SELECT m.name AS name, 0.0 AS score, COUNT(*) OVER () AS total {matches} {order}"
    return page, f"SELECT COUNT(*) {matches}"


@functools.lru_cache(maxsize=256)
def _counts_statement(engine: str, term_count: int, filters: tuple[str, ...]) -> str:
    """The SQL for a relevance page's two counts, in one statement (one trip to SQLite's thread):
    the matches, and the model names starting with what was typed (whatever they match, up to
    the end of the page: a range of an index), without which the page cannot be among them."""
    _, count = _statements(engine, term_count, filters)
    names_starting = (
        "SELECT COUNT(*) FROM (SELECT 1 FROM models "
        "WHERE name_joined >= :exact AND name_joined < :exact_end LIMIT :page_end)"
    )
    return f"SELECT ({count}), ({names_starting})"


@functools.lru_cache(maxsize=256)
def _exists_statement(engine: str, term_count: int, filters: tuple[str, ...]) -> str:
    """The SQL that finds one model matching ``term_count`` terms and ``filters``, ranking nothing."""
    where = " ".join(_FILTERS[name] for name in filters)
    if engine == ENGINE_FTS5 and not filters:
        return "SELECT 1 FROM models_fts WHERE models_fts MATCH :match LIMIT 1"
    if engine == ENGINE_FTS5:
        return (
            "SELECT 1 FROM models_fts CROSS JOIN models AS m ON m.id = models_fts.rowid "
            f"WHERE models_fts MATCH :match {where} LIMIT 1"
        )
    return f"SELECT 1 FROM models AS m WHERE {_like_terms(term_count)} {where} LIMIT 1"


class SearchIndex:
    """A local, rebuildable search index over the model registry; see the module docstring."""

    def __init__(self, connection: aiosqlite.Connection, engine: str) -> None:
        # Use ``open``: the tables are created or checked there.
        self._connection: aiosqlite.Connection | None = connection
        self._engine = engine
        # The words of the indexed names, by first character, with how many models hold each:
        # what "did you mean" corrects into. Derived from the rows, kept in step after each
        # commit (rebuild, apply) and read back from them by open.
        self._words: dict[str, dict[str, int]] = {}
        # Each word's texts one deletion away -> the words: what finds "qwen" for "kwen" (see _corrections).
        self._near: dict[str, set[str]] = {}
        self._names: set[str] = set()  # the names whose words are counted
        self._revision = 0
        self._fingerprint = ""
        self._fingerprint_revision = 0  # the revision _fingerprint is of (advance moves only _revision)
        # The fingerprinted revision is ahead of what is committed: a revision-only apply.
        self._meta_unwritten = False
        self._meta_written_at = -META_WRITE_INTERVAL_S
        # Held for every statement on the connection: a search between two statements of a
        # rebuild or apply would read that transaction's uncommitted, half-done state.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path = ":memory:", *, use_fts5: bool = True) -> SearchIndex:
        """The index kept at ``path``, or an empty one at revision 0 if there is none it can use.

        A kept index comes back at the revision and fingerprint committed with its rows (whether
        it may be trusted for the current state is the caller's decision: see indexer.py).
        Anything else at ``path`` (another layout or engine, not a database, corrupt) is replaced.
        FTS5 is used when ``use_fts5`` and this SQLite build has it, otherwise the LIKE engine.
        """
        try:
            return await cls._open(path, use_fts5)
        except sqlite3.DatabaseError as error:  # "file is not a database", "malformed", ...
            if str(path) == ":memory:":
                raise
            log.warning("search_index_discarded", path=str(path), error=str(error))
            for leftover in _files_of(Path(path)):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            return await cls._open(path, use_fts5)

    @classmethod
    async def _open(cls, path: str | Path, use_fts5: bool) -> SearchIndex:
        if str(path) != ":memory:":
            # SQLite creates files 0644 (its journals copy the database's mode): the index is
            # the registry's contents, as private as the rest of the data directory.
            create_private_file(Path(path))
        # isolation_level=None: we issue BEGIN and COMMIT, so a transaction is exactly one
        # rebuild or apply.
        connection = await aiosqlite.connect(str(path), isolation_level=None, cached_statements=256)
        try:
            for pragma in _PRAGMAS:
                await connection.execute(pragma)
            engine = ENGINE_FTS5 if use_fts5 and await _has_fts5(connection) else ENGINE_LIKE
            index = cls(connection, engine)
            if not await index._load():
                await index._reset()
            index._remember([name for (name,) in await connection.execute_fetchall("SELECT name FROM models")])
        except BaseException:
            await connection.close()
            raise
        return index

    @property
    def engine(self) -> str:
        """ENGINE_FTS5 or ENGINE_LIKE, fixed at open."""
        return self._engine

    @property
    def revision(self) -> int:
        """The replicated-state revision the committed rows are the registry at (0 for an empty new index)."""
        return self._revision

    @property
    def fingerprint(self) -> str:
        """What the indexer recorded about the state at ``fingerprint_revision`` ("" for none); see indexer.py."""
        return self._fingerprint

    @property
    def fingerprint_revision(self) -> int:
        """The revision ``fingerprint`` is of: ``revision``, or an earlier one after an ``advance``."""
        return self._fingerprint_revision

    def meta_due(self) -> bool:
        """Whether an ``apply`` that changes no model would commit its revision now (see the
        module docstring): the one place the indexer needs a fingerprint for such a revision."""
        return time.monotonic() - self._meta_written_at >= META_WRITE_INTERVAL_S

    def advance(self, revision: int) -> None:
        """Move the revision to ``revision``, up to which no model changed since the index's own
        (so the rows are the registry there too): no transaction, no fingerprint. Raises
        ValueError for an older revision."""
        _check_revision(revision)
        if revision < self._revision:
            raise ValueError(f"advance to revision {revision} is older than the index's revision {self._revision}")
        self._revision = revision

    async def rebuild(self, docs: Iterable[ModelDoc], revision: int, fingerprint: str = "") -> None:
        """Replace the whole index with ``docs`` at ``revision``, in one transaction."""
        _check_revision(revision)
        # Sorted so every server writes the same rows in the same order.
        ordered = sorted(_unique_by_name(docs).values(), key=lambda doc: doc.name)
        await self._exclusively(lambda: self._rebuild(ordered, revision, fingerprint))
        # Fold the rebuild's WAL (the whole index) into the database now, not at some later apply.
        async with self._lock:
            await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def apply(
        self, upserts: Iterable[ModelDoc], deleted: Iterable[str], revision: int, fingerprint: str = ""
    ) -> None:
        """Add or replace ``upserts`` and remove the models named in ``deleted``, in one transaction.

        A name in ``deleted`` that the index does not hold is ignored, so deleting is idempotent.
        Raises ValueError (changing nothing) for a revision older than the index's, a model given
        twice, or a model both upserted and deleted.
        """
        _check_revision(revision)
        by_name = _unique_by_name(upserts)
        gone = sorted(set(deleted))
        both = by_name.keys() & set(gone)
        if both:
            raise ValueError(f"{len(both)} models both upserted and deleted in one apply, e.g. {min(both)!r}")
        upserted = sorted(by_name.values(), key=lambda doc: doc.name)
        await self._exclusively(lambda: self._apply(upserted, gone, revision, fingerprint))

    async def search(
        self,
        query: str,
        *,
        tag: str = "",
        family: str = "",
        format: int = 0,
        status: int = 0,
        owner: str = "",
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        sort: int = models_pb2.SEARCH_SORT_RELEVANCE,
    ) -> SearchPage:
        """A page of the models matching every term of ``query`` (as prefixes) and every filter,
        in the ``sort`` order (a SearchSort value).

        Filters come from the arguments and from ``key:value`` words in the query (tag, family,
        status, format, owner); an empty filter (``""`` or ``0``) does not filter. A first page
        that finds nothing carries "did you mean" corrections that do find models. Raises
        InvalidArgument for a limit outside 1..MAX_LIMIT, a negative offset, an overlong query,
        an unknown format or status, or a filter given two different values.
        """
        _check_page(query, limit, offset)
        _check_sort(sort)
        parsed = parse_query(query)
        filters = _merged_filters(parsed.filters, tag=tag, family=family, format=format, status=status, owner=owner)
        terms = _check_terms(parsed.text)
        used = _used_filters(filters)
        if not terms and not used:
            # The same answer at every revision, so there is nothing to wait for.
            return SearchPage(hits=[], total=0, query_ms=0.0, revision=self._revision, engine=self._engine)
        async with self._lock:
            started = time.perf_counter()
            rows, total = await self._page(terms, filters, used, parsed.text, limit, offset, sort)
            if not total:
                # Words typed apart that a name writes together ("sd xl turbo" for sdxl-turbo).
                for joined in _joinings(terms):
                    if await self._exists(joined, filters, used):
                        terms = joined
                        rows, total = await self._page(terms, filters, used, parsed.text, limit, offset, sort)
                        break
            suggestions: list[str] = []
            if not rows and offset == 0 and terms:
                suggestions = await self._suggestions(terms, filters, used, parsed)
            query_ms = (time.perf_counter() - started) * 1000.0
            revision = self._revision
        return SearchPage(
            hits=[(row[0], float(row[1])) for row in rows],
            total=total,
            query_ms=query_ms,
            revision=revision,
            engine=self._engine,
            suggestions=suggestions,
        )

    def _params(self, terms: list[str], filters: dict[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
        """The named parameters every statement of ``_statements`` and ``_exists_statement`` takes
        for these terms and filters (sqlite3 ignores the ones a statement does not name)."""
        params: dict[str, Any] = {}
        params.update((f"in_name{index}", _joined_key(term)) for index, term in enumerate(terms))
        params["phrase"] = _joined_key("".join(terms))
        # Without terms the filters alone select (a browse): there is nothing to match.
        if terms and self._engine == ENGINE_FTS5:
            params["match"] = _match_expression(terms)
        elif terms:
            for index, term in enumerate(terms):
                typed, joined = _spellings(term)
                params[f"term{index}"], params[f"joined{index}"] = _like_pattern(typed), _like_pattern(joined)
        params.update((name, filters[name]) for name in used)
        params["metric_name"] = filters.get("metric_name", "")
        return params

    async def _exists(self, terms: list[str], filters: dict[str, Any], used: tuple[str, ...]) -> bool:
        """Whether any model matches every term and filter. Hold the lock.

        Ranks nothing: "did you mean" asks this of each term and each corrected query, and ranking
        every match of a common word ("instruct": thousands) only to see that there is one cost
        most of a misspelt query's time.
        """
        sql = _exists_statement(self._engine, len(terms), used)
        return bool(list(await self._conn.execute_fetchall(sql, self._params(terms, filters, used))))

    async def _page(
        self,
        terms: list[str],
        filters: dict[str, Any],
        used: tuple[str, ...],
        exact: str,
        limit: int,
        offset: int,
        sort: int = models_pb2.SEARCH_SORT_RELEVANCE,
    ) -> tuple[list[Any], int]:
        """One page of matches and the number of matches in all. Hold the lock."""
        params = self._params(terms, filters, used)
        # The typed text as the order compares names (see _statements).
        params.update(limit=limit, offset=offset, exact=_joined_key(exact))
        page_sql, count_sql = _statements(self._engine, len(terms), used, sort)
        if self._engine == ENGINE_FTS5 and terms and sort not in _SORTS:
            # Ranking costs O(matches), counting a small part of that. When there are many, the
            # page is first looked for among the names starting with what was typed, the group
            # that ranks before every other match: a full page from it is the page, and the
            # rest is never ranked ("m" ranks its 2,000 names starting with "m", not the 20,000
            # models a description word starting with "m" matches).
            # Every text starting with ``exact`` sorts at or after it and before it followed by
            # the last code point (the index compares UTF-8 bytes, as these strings do).
            params.update(exact_end=params["exact"] + "\U0010ffff", page_end=offset + limit)
            counts = await self._conn.execute_fetchall(_counts_statement(self._engine, len(terms), used), params)
            total, names_starting = (int(count) for count in next(iter(counts)))
            if total <= offset:
                return [], total
            if total >= _NAME_STARTS_FIRST_ABOVE and names_starting == offset + limit:
                starts_sql, _ = _statements(self._engine, len(terms), used, sort, name_starts_only=True)
                rows = list(await self._conn.execute_fetchall(starts_sql, params))
                if len(rows) == limit:
                    return rows, total
            return list(await self._conn.execute_fetchall(page_sql, params)), total
        rows = list(await self._conn.execute_fetchall(page_sql, params))
        if rows and (self._engine == ENGINE_LIKE or not terms):
            total = rows[0][2]
        elif 0 < len(rows) < limit or (not rows and offset == 0):
            total = offset + len(rows)  # this page holds the last match
        else:
            total = next(iter(await self._conn.execute_fetchall(count_sql, params)))[0]
        return rows, int(total)

    async def _suggestions(
        self, terms: list[str], filters: dict[str, Any], used: tuple[str, ...], parsed: ParsedQuery
    ) -> list[str]:
        """Corrected queries that find models, best first, for a query that found none. Hold the lock.

        Only a term that matches no model on its own is corrected (a query of real words that
        simply find nothing together is not misspelt), into words the model names hold: a
        word typed with one edit (up to 4 characters) or two (longer) from it, the nearest and
        then the commonest first; a term that is letters joined to a version ("qwne2.5") has its
        letters corrected. A correction is offered only if the corrected query, with the same
        filters, finds something.
        """
        options: list[list[str]] = []  # per term: itself, or its corrections best first
        for term in terms:
            # A word of a model's name matches that model: no statement needed to know it.
            if self._word_models(term) or await self._exists([term], {}, ()):
                options.append([term])
                continue
            corrections = self._corrections(term) or self._piece_corrections(term)
            if not corrections:
                return []  # a word nothing resembles: no correction of the query can find it
            options.append(corrections)
        best = [choices[0] for choices in options]
        candidates = [best]
        varied = next((index for index, choices in enumerate(options) if len(choices) > 1), None)
        if varied is not None:
            for choice in options[varied][1:]:
                candidates.append([*best[:varied], choice, *best[varied + 1 :]])
        typed_filters = [f"{_typed_key(key)}:{value}" for key, value in parsed.filters.items()]
        suggestions: list[str] = []
        for corrected in candidates:
            if corrected != terms and await self._exists(corrected, filters, used):
                suggestion = " ".join([_as_typed(parsed.text, terms, corrected), *typed_filters])
                if suggestion not in suggestions:
                    suggestions.append(suggestion)
        return suggestions[:MAX_SUGGESTIONS]

    def _word_models(self, word: str) -> int:
        """How many indexed names hold ``word`` (folded) as a word; 0 for none."""
        return self._words.get(word[:1], {}).get(word, 0)

    def _corrections(self, term: str) -> list[str]:
        """Words of model names close to ``term``, best first (see ``_suggestions``).

        Candidates: every word with the same first letter (people rarely mistype the first), and,
        whatever its first letter, every word one deletion from the term, the term one deletion
        from it, or both one deletion from the same text ("kwen" and "qwen" are both "wen"), as
        SymSpell finds them. Each is then measured exactly.
        """
        if len(term) < _MIN_CORRECTED_CHARS:
            return []
        allowed = 1 if len(term) <= 4 else 2
        candidates = set(self._words.get(term[0], {}))
        for variant in [term, *_deletions(term)]:
            candidates.update(self._near.get(variant, ()))
            if self._word_models(variant):
                candidates.add(variant)
        scored = []  # (edits, -models holding the word, word)
        for word in candidates:
            edits = _edit_distance(term, word, allowed)
            if 0 < edits <= allowed:
                scored.append((edits, -self._word_models(word), word))
        return [word for _, _, word in sorted(scored)[:MAX_SUGGESTIONS]]

    def _piece_corrections(self, term: str) -> list[str]:
        """``term`` with each run of letters that no name holds corrected ("qwne2-5" -> "qwen2-5"),
        as one suggestion; none if no run could be corrected."""
        pieces = _LETTER_RUN.split(term)
        if len(pieces) > 2 * _MAX_CORRECTED_PIECES + 1:  # split gives 2k+1 pieces for k runs
            return []  # not a word and its version: each run costs a scan of the vocabulary
        changed = False
        for index in range(1, len(pieces), 2):  # split keeps the runs at the odd places
            piece = pieces[index]
            if piece == term or self._word_models(piece):
                continue
            corrections = self._corrections(piece)
            if corrections:
                pieces[index], changed = corrections[0], True
        return ["".join(pieces)] if changed else []

    def _count_words(self, names: Iterable[str], change: int) -> None:
        """Add (``change`` 1) or take away (-1) the words of ``names`` in the vocabulary."""
        for name in names:
            for word in _name_words(name):
                words = self._words.setdefault(word[0], {})
                count = words.get(word, 0) + change
                if count > 0:
                    if word not in words and _reached_by_deletion(word):
                        for variant in _deletions(word):
                            self._near.setdefault(variant, set()).add(word)
                    words[word] = count
                elif words.pop(word, None) is not None and _reached_by_deletion(word):
                    for variant in _deletions(word):
                        near = self._near[variant]
                        near.discard(word)
                        if not near:
                            del self._near[variant]

    async def close(self) -> None:
        """Release the connection, after any rebuild, apply or search in progress. Idempotent.

        Required, not optional: aiosqlite's worker thread is not a daemon, so an index that is
        never closed keeps the process from exiting.
        """
        async with self._lock:
            if self._connection is not None:
                if self._meta_unwritten:
                    await self._write_meta()
                connection, self._connection = self._connection, None
                await connection.close()

    # ------------------------------------------------------------------ internals

    async def _exclusively(self, change: Callable[[], Awaitable[None]]) -> None:
        """Run ``change`` holding the lock, to its end even if the caller is cancelled.

        A rebuild or apply cut short between COMMIT and moving the revision would leave the
        contents and the revision disagreeing, and one cut short before COMMIT must roll back
        before a search may run. The caller is queued for the lock like any search (FIFO), then
        ``change`` runs in a task of its own that releases the lock when done; a cancelled
        caller gets CancelledError at once and the change completes behind it.
        """
        await self._lock.acquire()

        async def run() -> None:
            try:
                await change()
            finally:
                self._lock.release()

        await asyncio.shield(asyncio.ensure_future(run()))

    async def _rebuild(self, docs: list[ModelDoc], revision: int, fingerprint: str) -> None:
        async with self._transaction():
            await self._create_tables()
            # In slices, so the rows of the next slice are built on the loop while SQLite inserts.
            for start in range(0, len(docs), _INSERT_SLICE):
                await self._insert(docs[start : start + _INSERT_SLICE], first_id=start + 1)
            for statement in _INDEXES:
                await self._conn.execute(statement)
            if self._engine == ENGINE_FTS5:
                # Merge what the bulk insert left into one b-tree, so a query reads one segment.
                await self._conn.execute("INSERT INTO models_fts (models_fts) VALUES ('optimize')")
            await self._conn.execute(_WRITE_META, (revision, fingerprint))
        self._words, self._near, self._names = {}, {}, set()
        self._remember([doc.name for doc in docs])
        self._mark(revision, fingerprint)
        self._meta_unwritten, self._meta_written_at = False, time.monotonic()

    def _remember(self, added: list[str], removed: Iterable[str] = ()) -> None:
        """Keep the vocabulary of "did you mean" in step with a committed change of the rows."""
        gone = [name for name in removed if name in self._names]
        self._names.difference_update(gone)
        self._count_words(gone, -1)
        self._names.update(added)
        self._count_words(added, 1)

    async def _apply(self, upserts: list[ModelDoc], deleted: list[str], revision: int, fingerprint: str) -> None:
        if revision < self._revision:
            raise ValueError(f"apply at revision {revision} is older than the index's revision {self._revision}")
        if not upserts and not deleted and not self.meta_due():
            self._mark(revision, fingerprint)
            self._meta_unwritten = True
            return
        async with self._transaction():
            # The indexer also applies revisions that changed no model, only to move the revision.
            if upserts or deleted:
                await self._delete([*(doc.name for doc in upserts), *deleted])
                # Ids are private (never in an answer), so a replaced model may get a new one.
                rows = list(await self._conn.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM models"))
                await self._insert(upserts, first_id=rows[0][0] + 1)
            await self._conn.execute(_WRITE_META, (revision, fingerprint))
        self._remember([doc.name for doc in upserts], [*(doc.name for doc in upserts), *deleted])
        self._mark(revision, fingerprint)
        self._meta_unwritten, self._meta_written_at = False, time.monotonic()

    async def _write_meta(self) -> None:
        async with self._transaction():
            await self._conn.execute(_WRITE_META, (self._fingerprint_revision, self._fingerprint))
        self._meta_unwritten, self._meta_written_at = False, time.monotonic()

    def _mark(self, revision: int, fingerprint: str) -> None:
        """The index is at ``revision``, and ``fingerprint`` is of that revision (advance moves the first only)."""
        self._revision = self._fingerprint_revision = revision
        self._fingerprint = fingerprint

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise RuntimeError("the search index is closed")
        return self._connection

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        await self._conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        await self._conn.execute("COMMIT")

    async def _load(self) -> bool:
        """Take the revision and fingerprint of a kept index; False if there is none to keep."""
        try:
            rows = list(
                await self._conn.execute_fetchall("SELECT layout, engine, revision, fingerprint FROM index_meta")
            )
        except sqlite3.OperationalError:  # "no such table": a new file, or one from before LAYOUT 1
            return False
        if len(rows) != 1:
            return False
        layout, engine, revision, fingerprint = rows[0]
        if layout != LAYOUT or engine != self._engine or not isinstance(revision, int) or revision < 0:
            return False
        self._mark(revision, str(fingerprint))
        return True

    async def _reset(self) -> None:
        """Make this an empty index at revision 0, whatever the file held."""
        async with self._lock, self._transaction():
            await self._conn.execute("DROP TABLE IF EXISTS index_meta")
            await self._create_tables()
            for statement in _INDEXES:
                await self._conn.execute(statement)
            await self._conn.execute(_META_TABLE)
            await self._conn.execute(
                "INSERT INTO index_meta (id, layout, engine, revision, fingerprint) VALUES (1, ?, ?, 0, '')",
                (LAYOUT, self._engine),
            )
        self._mark(0, "")

    async def _create_tables(self) -> None:
        """Drop and create every table, without the indexes: O(1), where deleting every FTS5 row is O(index)."""
        # models_vocab: an fts5vocab table an index of this layout once had; model_facets: the
        # formats and statuses of layouts up to 8.
        for table in (
            "models_vocab",
            "models_fts",
            "version_metrics",
            "version_facets",
            "model_mentions",
            "citations",
            "model_facets",
            "model_tags",
            "models",
        ):
            await self._conn.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in _TABLES:
            await self._conn.execute(statement)
        if self._engine == ENGINE_FTS5:
            await self._conn.execute(_FTS_TABLE)

    async def _delete(self, names: list[str]) -> None:
        rows = [(name,) for name in names]
        model_id = "(SELECT id FROM models WHERE name = ?)"
        if self._engine == ENGINE_FTS5:
            await self._conn.executemany(f"DELETE FROM models_fts WHERE rowid = {model_id}", rows)
        await self._conn.executemany(f"DELETE FROM model_tags WHERE model_id = {model_id}", rows)
        await self._conn.executemany(f"DELETE FROM version_facets WHERE model_id = {model_id}", rows)
        await self._conn.executemany(f"DELETE FROM version_metrics WHERE model_id = {model_id}", rows)
        mentioned = f"(SELECT name_key FROM model_mentions WHERE model_id = {model_id})"
        await self._conn.executemany(f"UPDATE citations SET count = count - 1 WHERE name_key IN {mentioned}", rows)
        # Only the names these models mentioned can have dropped to 0: no scan of the whole table.
        await self._conn.executemany(f"DELETE FROM citations WHERE name_key IN {mentioned} AND count <= 0", rows)
        await self._conn.executemany(f"DELETE FROM model_mentions WHERE model_id = {model_id}", rows)
        await self._conn.executemany("DELETE FROM models WHERE name = ?", rows)

    async def _insert(self, docs: list[ModelDoc], first_id: int) -> None:
        fts = self._engine == ENGINE_FTS5
        models: list[tuple[int, str, str, str, str, str, int, int, int, int, str | None]] = []
        mentions: list[tuple[int, str]] = []
        cited: collections.Counter[str] = collections.Counter()
        texts: list[tuple[int, str, str, str, str, str]] = []
        tags: list[tuple[str, int]] = []
        version_facets: list[tuple[str, str, int]] = []
        metrics: list[tuple[str, float, int]] = []
        for model_id, doc in enumerate(docs, start=first_id):
            like_text = None if fts else _like_text(doc)
            name_key = doc.name.casefold()
            models.append(
                (
                    model_id,
                    doc.name,
                    name_key,
                    _joined_key(doc.name),
                    doc.family.casefold(),
                    doc.owner.casefold(),
                    doc.created,
                    doc.updated,
                    _mask(doc.formats),
                    _mask(doc.statuses),
                    like_text,
                )
            )
            named = _mentioned(doc)
            mentions.extend((model_id, key) for key in sorted(named))
            cited.update(named)
            if fts:
                texts.append(
                    (
                        model_id,
                        _canonical(doc.name),
                        " ".join(_name_parts(doc.name)),
                        _canonical(doc.family),
                        _canonical(" ".join(doc.tags)),
                        _description_text(doc.description),
                    )
                )
            tags.extend((tag, model_id) for tag in sorted({tag.casefold() for tag in doc.tags}))
            version_facets.extend((facet, value, model_id) for facet, value in sorted(doc.version_facets))
            metrics.extend((name, value, model_id) for name, value in sorted(doc.metrics))
        await self._conn.executemany(
            "INSERT INTO models (id, name, name_key, name_joined, family_key, owner_key, created, updated, "
            "format_mask, status_mask, like_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            models,
        )
        await self._conn.executemany("INSERT INTO model_mentions (model_id, name_key) VALUES (?, ?)", mentions)
        await self._conn.executemany(
            "INSERT INTO citations (name_key, count) VALUES (?, ?) "
            "ON CONFLICT (name_key) DO UPDATE SET count = count + excluded.count",
            sorted(cited.items()),
        )
        if fts:
            await self._conn.executemany(
                "INSERT INTO models_fts (rowid, name, name_parts, family, tags, description) VALUES (?, ?, ?, ?, ?, ?)",
                texts,
            )
        # In primary-key order, each row is an append to its b-tree.
        await self._conn.executemany("INSERT INTO model_tags (tag, model_id) VALUES (?, ?)", sorted(tags))
        await self._conn.executemany(
            "INSERT INTO version_facets (facet, value, model_id) VALUES (?, ?, ?)", sorted(version_facets)
        )
        await self._conn.executemany(
            "INSERT INTO version_metrics (name, value, model_id) VALUES (?, ?, ?)", sorted(metrics)
        )


def _mask(values: Iterable[int]) -> int:
    """The bit mask of enum ``values`` (formats or statuses) as a model's row holds it."""
    mask = 0
    for value in values:
        # The state machine refuses unknown values (from the API and from a backup); should one
        # reach the index all the same, it matches no filter rather than stopping every rebuild.
        if 0 <= value <= _MASK_BITS:
            mask |= 1 << value
    return mask


async def _has_fts5(connection: aiosqlite.Connection) -> bool:
    """Whether this SQLite build has FTS5: creating our FTS5 table, as a temporary one, says."""
    try:
        await connection.execute(_FTS_TABLE.replace("models_fts", "temp.fts5_probe", 1))
    except sqlite3.OperationalError as error:
        if "fts5" not in str(error):  # "no such module: fts5"
            raise
        return False
    await connection.execute("DROP TABLE temp.fts5_probe")
    return True


def _files_of(path: Path) -> list[Path]:
    """The database and what SQLite keeps beside it."""
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def _check_revision(revision: int) -> None:
    if revision < 0:
        raise ValueError(f"revision must not be negative, got {revision}")


def _unique_by_name(docs: Iterable[ModelDoc]) -> dict[str, ModelDoc]:
    """The docs by name; a name given twice is an indexer bug (which one would be meant?)."""
    by_name: dict[str, ModelDoc] = {}
    for doc in docs:
        if doc.name in by_name:
            raise ValueError(f"model {doc.name!r} appears twice")
        by_name[doc.name] = doc
    return by_name


# A page token: "p1." + base64url(JSON {"o": offset, "k": the search it belongs to}). Stateless, so
# any server continues any server's search; not a secret (it says where the next page starts).
_TOKEN_PREFIX = "p1."
_MAX_TOKEN_CHARS = 256


def search_key(request: models_pb2.SearchRequest) -> str:
    """What a page token is bound to: the query, the filters and the order (not the page size)."""
    fields = [request.query, request.tag, request.family, request.format, request.status, request.owner, request.sort]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def page_token(request: models_pb2.SearchRequest, offset: int, revision: int) -> str:
    """The token for the page of ``request``'s search that starts at ``offset``, continued from a
    page answered at ``revision`` (the next one is never answered from an older one)."""
    body = json.dumps({"o": offset, "r": revision, "k": search_key(request)}, separators=(",", ":")).encode()
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def _natural(value: object, bound: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= bound


def page_offset(request: models_pb2.SearchRequest) -> tuple[int, int]:
    """(where ``request``'s page starts, the least revision to answer it at): from its page_token,
    or its offset and 0. InvalidArgument for a token that is damaged or belongs to another search,
    for both a token and an offset, or for an unknown sort: all before any work is done."""
    _check_sort(request.sort)
    token = request.page_token
    if not token:
        return request.offset, 0
    if request.offset:
        raise InvalidArgument("give page_token or offset, not both")
    try:
        if not token.startswith(_TOKEN_PREFIX) or len(token) > _MAX_TOKEN_CHARS:
            raise ValueError
        encoded = token[len(_TOKEN_PREFIX) :]
        body = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        offset, revision, key = body["o"], body["r"], body["k"]
        if not _natural(offset, MAX_OFFSET) or not _natural(revision, 2**63 - 1) or not isinstance(key, str):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("page_token is not one this search returned (damaged?); start again without it") from None
    if key != search_key(request):
        raise InvalidArgument(
            "page_token belongs to another search: keep the query, filters and sort of the page that returned it"
        )
    return offset, revision


def _check_sort(sort: int) -> None:
    if sort != models_pb2.SEARCH_SORT_RELEVANCE and sort not in _SORTS:
        raise InvalidArgument(f"unknown sort {sort}; use relevance, name, updated or created")


def _check_page(query: str, limit: int, offset: int) -> None:
    """Refuse a page no search should be asked for (InvalidArgument)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidArgument(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")


def _check_terms(text: str) -> list[str]:
    terms = query_terms(text)
    if len(terms) > MAX_QUERY_TERMS:
        raise InvalidArgument(f"query has {len(terms)} terms; the limit is {MAX_QUERY_TERMS}")
    return terms


def _used_filters(filters: dict[str, Any]) -> tuple[str, ...]:
    """The filters a search applies, in ``_FILTERS`` order: a metric bound when given (0.0 is a
    bound), any other when not empty ("" or 0)."""
    metric_bounds = _METRIC_OPS.values()
    return tuple(name for name in _FILTERS if (filters[name] is not None if name in metric_bounds else filters[name]))


def _merged_filters(
    typed: dict[str, str], *, tag: str, family: str, format: int, status: int, owner: str
) -> dict[str, Any]:
    """The request's filters and those typed in the query, as the SQL takes them (InvalidArgument on a clash)."""
    if format and format not in models_pb2.ModelFormat.values():
        raise InvalidArgument(f"format {format} is not a known ModelFormat")
    if status and status not in models_pb2.VersionStatus.values():
        raise InvalidArgument(f"status {status} is not a known VersionStatus")
    given: dict[str, Any] = {"tag": "", "family": family.casefold(), "owner": owner.casefold()}
    given.update(format=format, status=status, vtag="", run="", parent="", metric_name="")
    given.update(dict.fromkeys(_METRIC_OPS.values()))
    if tag:
        key = _tag_filter(tag)
        if key in typed and typed[key].casefold() != tag.casefold():
            raise InvalidArgument(f"the query says tag:{typed[key]} but the request's tag filter says {tag}; give one")
        typed = {**typed, key: tag}
    for key, value in typed.items():
        if key == "metric":
            match = _METRIC_FILTER.fullmatch(value)
            if match is None:
                raise InvalidArgument(
                    f"metric:{value} is not NAME, then one of >= > <= < =, then a number, e.g. metric:accuracy>=0.9"
                )
            given["metric_name"] = match.group(1).casefold()
            given[_METRIC_OPS[match.group(2)]] = float(match.group(3))
            continue
        if key == "format":
            number: Any = _enum_value("format", value, models_pb2.ModelFormat, "MODEL_FORMAT_")
        elif key == "status":
            number = _enum_value("status", value, models_pb2.VersionStatus, "VERSION_STATUS_")
        else:
            number = value.casefold()
        if given[key] and given[key] != number:
            raise InvalidArgument(
                f"the query says {key}:{value} but the request's {key} filter says otherwise; give one"
            )
        given[key] = number
    return given


def _as_typed(text: str, terms: list[str], corrected: list[str]) -> str:
    """``corrected`` (one word per term of ``text``) written as the person typed ``text``: only the
    corrected words change ("lamma 3.1 8b" -> "llama 3.1 8b", not "llama 3-1 8b"). The terms
    themselves, as the index compares them, when their places in the text cannot be told, or when
    the text so written would be read as another query ("qwe_.5" corrected to "qwen 5" must not
    show "qwen.5", one term; "tga:chat" corrected must not show the filter "tag:chat")."""
    shown = _written_as_typed(text, terms, corrected)
    try:
        reread = parse_query(shown)
    except InvalidArgument:  # "tga: x" corrected reads as "tag:" without a value
        return " ".join(corrected)
    if reread.filters or query_terms(reread.text) != corrected:
        return " ".join(corrected)
    return shown


def _written_as_typed(text: str, terms: list[str], corrected: list[str]) -> str:
    """``text`` with each corrected term's place replaced (see ``_as_typed``)."""
    spans = []  # (start, end, folded term) of each term in the text
    for match in _TOKEN.finditer(_canonical(text)):  # _canonical keeps every character's place
        folded = _fold(match.group())
        if any(char.isalnum() for char in folded):  # as query_terms keeps a term
            spans.append((match.start(), match.end(), folded))
    if [folded for _, _, folded in spans] != terms:  # folding changed how the text splits
        return " ".join(corrected)
    pieces, last = [], 0
    for (start, end, term), word in zip(spans, corrected, strict=True):
        typed = text[start:end]
        pieces += [text[last:start], typed if word == term else _corrected_as_typed(typed, term, word)]
        last = end
    return "".join([*pieces, text[last:]])


def _corrected_as_typed(typed: str, term: str, word: str) -> str:
    """The typed word with only its corrected pieces replaced ("Qwne2.5" -> "qwen2.5", "07b" -> "7b");
    the correction as it is when the three do not split alike at letter runs."""
    typed_runs, term_runs, word_runs = (_LETTER_RUN.split(text) for text in (typed, term, word))
    if not len(typed_runs) == len(term_runs) == len(word_runs):
        return word
    # Each piece (a run of letters, or what lies between two) as typed unless the correction changed it.
    return "".join(new if new != old else kept for kept, old, new in zip(typed_runs, term_runs, word_runs, strict=True))


# Queries of at most this many terms are tried with neighbouring terms joined when they find nothing.
_MAX_JOINED_TERMS = 4


def _joinings(terms: list[str]) -> list[list[str]]:
    """``terms`` with neighbouring pairs joined, fewest joins first, then the leftmost join first.

    "sd xl turbo" -> [sdxl turbo], [sd xlturbo]: a term joins at most one neighbour, so three terms
    give two, four give four. None for a single term, or beyond ``_MAX_JOINED_TERMS``.
    """
    if not 2 <= len(terms) <= _MAX_JOINED_TERMS:
        return []
    found: list[list[str]] = []

    def segment(start: int, done: list[str], joins: int) -> None:
        if start == len(terms):
            if joins:
                found.append(done)
            return
        if start + 1 < len(terms):
            segment(start + 2, [*done, terms[start] + terms[start + 1]], joins + 1)
        segment(start + 1, [*done, terms[start]], joins)

    segment(0, [], 0)
    # Fewer joins first (closest to what was typed); sorted() keeps the build order within a count.
    return sorted(found, key=lambda joined: len(terms) - len(joined))


# Words longer than this are found only from their own first letter (see _reached_by_deletion).
_MAX_NEAR_CHARS = 20
# At most this many runs of letters are corrected in one term ("qwne2.5": one).
_MAX_CORRECTED_PIECES = 3
# A run of letters inside a term: what "did you mean" corrects in "qwne2-5" (split keeps the runs).
_LETTER_RUN = re.compile(r"([^\W\d_]+)")


def _reached_by_deletion(word: str) -> bool:
    """Whether "did you mean" finds ``word`` from other first letters through its deletions
    (``SearchIndex._near``): a word of letters of 3 to ``_MAX_NEAR_CHARS`` characters. A term has
    at least 3, so a shorter word's deletions are never looked up (a 2-letter word one deletion
    from a term is found as a word). Numbers and long ids (a hex digest as a name's last word)
    would cost memory in proportion to their length and are never mistyped words."""
    return 3 <= len(word) <= _MAX_NEAR_CHARS and not any(char.isdigit() for char in word)


def _deletions(word: str) -> set[str]:
    """The texts one character shorter than ``word`` (none for a word of one character)."""
    return {word[:index] + word[index + 1 :] for index in range(len(word))} if len(word) > 1 else set()


def _edit_distance(typed: str, word: str, bound: int) -> int:
    """Edits from ``typed`` to ``word`` (insert, delete, substitute, swap neighbours); bound + 1 if more."""
    if abs(len(typed) - len(word)) > bound:
        return bound + 1
    before_previous: list[int] = []
    previous = list(range(len(word) + 1))
    for row, typed_char in enumerate(typed, start=1):
        current = [row] + [0] * len(word)
        for column, word_char in enumerate(word, start=1):
            current[column] = min(
                previous[column] + 1,
                current[column - 1] + 1,
                previous[column - 1] + (typed_char != word_char),
            )
            if row > 1 and column > 1 and typed_char == word[column - 2] and typed[row - 2] == word_char:
                current[column] = min(current[column], before_previous[column - 2] + 1)
        if min(current) > bound:
            return bound + 1
        before_previous, previous = previous, current
    return previous[-1]
