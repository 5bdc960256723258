"""The model registry in the pure state machine: invariants under random command sequences, and the
rules a person meets (numbering, aliases, immutability, status transitions, bulk all-or-nothing)."""

from __future__ import annotations

import hashlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from controlplane.state.machine import StateMachine, batch_entry
from controlplane.state.models import MAX_VERSION_TAGS
from controlplane.v1 import command_pb2, common_pb2, models_pb2

from machine_driver import MachineDriver, error_code

NAMES = ["Llama-3-8B", "Qwen2-7B", "phi-3"]
ALIASES = ["prod", "staging"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Registry(MachineDriver):
    """A machine driven one command per entry, with a clock the test moves."""

    def register(self, model: str, content: str, **fields: object) -> command_pb2.CommandResult:
        request = models_pb2.RegisterVersionRequest(
            model=model, sha256=sha(content), size_bytes=len(content), format=models_pb2.MODEL_FORMAT_GGUF, **fields
        )
        return self.run(model_register=request)


def test_versions_are_numbered_per_model_and_never_reused() -> None:
    registry = Registry()
    first = registry.register("Llama-3-8B", "a", draft=models_pb2.ModelDraft(family="llama", tags=["chat"]))
    assert first.model_register.model_created and first.model_register.version.version == 1
    assert registry.register("Llama-3-8B", "b").model_register.version.version == 2
    assert registry.register("Qwen2-7B", "c").model_register.version.version == 1
    registry.run(model_delete_version=models_pb2.DeleteVersionRequest(model="Llama-3-8B", version=2))
    assert registry.register("Llama-3-8B", "d").model_register.version.version == 3
    model = registry.machine.registry.models["Llama-3-8B"]
    assert (model.latest_version, model.version_count, model.family, list(model.tags)) == (3, 2, "llama", ["chat"])


def test_the_same_artifact_twice_and_names_differing_in_case_are_refused() -> None:
    registry = Registry()
    registry.register("Llama-3-8B", "a")
    again = registry.register("Llama-3-8B", "a")
    assert error_code(again) == common_pb2.ERROR_CODE_ALREADY_EXISTS and "version 1" in again.error.message
    clash = registry.register("llama-3-8b", "z")
    assert error_code(clash) == common_pb2.ERROR_CODE_ALREADY_EXISTS and "Llama-3-8B" in clash.error.message


def test_aliases_move_atomically_and_protect_their_version() -> None:
    registry = Registry()
    for content in "abc":
        registry.register("m", content)
    moved = registry.run(model_set_alias=models_pb2.SetAliasRequest(model="m", alias="prod", version=2))
    assert moved.model_set_alias.previous_version == 0
    moved = registry.run(model_set_alias=models_pb2.SetAliasRequest(model="m", alias="prod", version=3))
    assert moved.model_set_alias.previous_version == 2
    assert registry.machine.registry.resolve("m", "prod").version == 3
    assert registry.machine.registry.resolve("m", "latest").version == 3
    missing = registry.run(model_set_alias=models_pb2.SetAliasRequest(model="m", alias="prod", version=9))
    assert error_code(missing) == common_pb2.ERROR_CODE_NOT_FOUND
    numeric = registry.run(model_set_alias=models_pb2.SetAliasRequest(model="m", alias="7", version=1))
    assert error_code(numeric) == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    refused = registry.run(model_delete_version=models_pb2.DeleteVersionRequest(model="m", version=3))
    assert error_code(refused) == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "prod" in refused.error.message
    forced = registry.run(model_delete_version=models_pb2.DeleteVersionRequest(model="m", version=3, force=True))
    assert list(forced.model_delete_version.removed_aliases) == ["prod"]
    assert "prod" not in registry.machine.registry.models["m"].aliases


def test_latest_is_reserved_and_aliases_match_ignoring_case() -> None:
    """MLflow reserves "latest"; model names match ignoring case, so aliases do too (issue 18)."""
    registry = Registry()
    for content in "ab":
        registry.register("m", content)
    for reserved in ("latest", "Latest"):
        refused = registry.run(model_set_alias=models_pb2.SetAliasRequest(model="m", alias=reserved, version=1))
        assert error_code(refused) == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "reserved" in refused.error.message
    assert registry.machine.registry.resolve("m", "latest").version == 2
    assert registry.machine.registry.resolve("m", "LATEST").version == 2

    registry.run(model_set_alias=models_pb2.SetAliasRequest(model="m", alias="Prod", version=1))
    assert registry.machine.registry.resolve("m", "prod").version == 1
    moved = registry.run(model_set_alias=models_pb2.SetAliasRequest(model="m", alias="PROD", version=2))
    assert moved.model_set_alias.previous_version == 1
    assert dict(registry.machine.registry.models["m"].aliases) == {"Prod": 2}, "one alias, under its first spelling"
    registry.run(model_set_alias=models_pb2.SetAliasRequest(model="m", alias="prod", version=0))
    assert dict(registry.machine.registry.models["m"].aliases) == {}


def test_status_transitions() -> None:
    registry = Registry()
    registry.register("m", "a")

    def to(status: int) -> command_pb2.CommandResult:
        return registry.run(
            model_set_status=models_pb2.SetVersionStatusRequest(model="m", version=1, status=status)  # type: ignore[arg-type]
        )

    assert error_code(to(models_pb2.VERSION_STATUS_DEPRECATED)) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert to(models_pb2.VERSION_STATUS_READY).model_set_status.version.status == models_pb2.VERSION_STATUS_READY
    assert error_code(to(models_pb2.VERSION_STATUS_PENDING)) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert error_code(to(models_pb2.VERSION_STATUS_DEPRECATED)) == 0


def test_bulk_registration_is_all_or_nothing() -> None:
    registry = Registry()
    good = [
        models_pb2.RegisterVersionRequest(model=f"m{i % 2}", sha256=sha(str(i)), format=models_pb2.MODEL_FORMAT_ONNX)
        for i in range(6)
    ]
    before = (registry.machine.revision, registry.machine.registry.to_state())
    bad = [*good, models_pb2.RegisterVersionRequest(model="m0", sha256="nothex", format=models_pb2.MODEL_FORMAT_ONNX)]
    refused = registry.run(model_bulk_register=models_pb2.BulkRegisterRequest(versions=bad))
    assert error_code(refused) == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "#7" in refused.error.message
    assert (registry.machine.revision, registry.machine.registry.to_state()) == before
    done = registry.run(model_bulk_register=models_pb2.BulkRegisterRequest(versions=good))
    assert [v.version for v in done.model_bulk_register.versions] == [1, 1, 2, 2, 3, 3]
    assert done.model_bulk_register.models_created == 2


def test_replicas_are_a_sorted_set() -> None:
    registry = Registry()
    registry.register("m", "a")
    for node in ("n3", "n1", "n3"):
        registry.run(model_add_replica=models_pb2.ReplicaRequest(model="m", version=1, node_id=node))
    assert list(registry.machine.registry.version("m", 1).replicas) == ["n1", "n3"]
    gone = registry.run(model_remove_replica=models_pb2.ReplicaRequest(model="m", version=1, node_id="n1"))
    assert gone.model_remove_replica.changed and list(gone.model_remove_replica.version.replicas) == ["n3"]


def test_tags_metrics_and_lineage_are_kept_and_only_tags_and_metrics_change() -> None:
    registry = Registry()
    registry.register("Llama-3-8B", "base")
    derived = registry.register(
        "Llama-3-8B-ft",
        "ft",
        tags={"dataset": "wiki-2024", "validated": ""},
        metrics={"accuracy": 0.91, "loss": 1.25},
        run_id="runs/42",
        parent=models_pb2.VersionRef(model="Llama-3-8B", version=1, sha256="a client's word is not kept"),
    ).model_register.version
    assert (dict(derived.tags), dict(derived.metrics)) == (
        {"dataset": "wiki-2024", "validated": ""},
        {"accuracy": 0.91, "loss": 1.25},
    )
    assert (derived.run_id, derived.parent.model, derived.parent.version) == ("runs/42", "Llama-3-8B", 1)
    assert derived.parent.sha256 == sha("base")  # the registry records which artifact the parent was

    update = models_pb2.UpdateVersionRequest(
        model="Llama-3-8B-ft", version=1, set_tags={"stage": "eval"}, remove_tags=["validated", "absent"],
        set_metrics={"accuracy": 0.93}, remove_metrics=["loss"],
    )  # fmt: skip
    result = registry.run(model_update_version=update)
    body = result.model_update_version
    assert body.changed and (dict(body.version.tags), dict(body.version.metrics)) == (
        {"dataset": "wiki-2024", "stage": "eval"},
        {"accuracy": 0.93},
    )
    stored = registry.machine.registry.version("Llama-3-8B-ft", 1)
    assert stored == body.version and stored.mod_revision == result.revision
    # Identity and lineage stay what they were.
    assert (stored.sha256, stored.run_id, stored.parent) == (derived.sha256, "runs/42", derived.parent)
    again = registry.run(model_update_version=update)
    assert not again.model_update_version.changed and again.revision == result.revision  # nothing written

    # Deleting the parent keeps the child's reference: lineage is history.
    registry.run(model_delete_version=models_pb2.DeleteVersionRequest(model="Llama-3-8B", version=1))
    assert registry.machine.registry.version("Llama-3-8B-ft", 1).parent.version == 1


def test_bad_tags_metrics_and_parents_are_refused_with_what_to_change() -> None:
    registry = Registry()
    registry.register("m", "a")
    missing = registry.register("m", "b", parent=models_pb2.VersionRef(model="m", version=7))
    assert error_code(missing) == common_pb2.ERROR_CODE_NOT_FOUND and "no version 7" in missing.error.message
    case = registry.register("n", "c", parent=models_pb2.VersionRef(model="M", version=1))
    assert error_code(case) == common_pb2.ERROR_CODE_NOT_FOUND and "did you mean 'm'" in case.error.message
    nan = registry.register("m", "d", metrics={"acc": float("nan")})
    assert error_code(nan) == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "finite" in nan.error.message
    bad_key = registry.register("m", "e", tags={"has space": "x"})
    assert error_code(bad_key) == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "tag key" in bad_key.error.message
    both = registry.run(
        model_update_version=models_pb2.UpdateVersionRequest(
            model="m", version=1, set_tags={"a": "1"}, remove_tags=["a"]
        )
    )
    assert error_code(both) == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "set and removed" in both.error.message
    too_many = registry.run(
        model_update_version=models_pb2.UpdateVersionRequest(
            model="m", version=1, set_tags={f"k{i}": "v" for i in range(MAX_VERSION_TAGS + 1)}
        )
    )
    assert error_code(too_many) == common_pb2.ERROR_CODE_INVALID_ARGUMENT  # the request alone is too many
    for n in range(MAX_VERSION_TAGS):
        registry.run(model_update_version=models_pb2.UpdateVersionRequest(model="m", version=1, set_tags={f"k{n}": ""}))
    one_more = registry.run(
        model_update_version=models_pb2.UpdateVersionRequest(model="m", version=1, set_tags={"extra": ""})
    )
    assert error_code(one_more) == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "remove some" in one_more.error.message
    gone = registry.run(model_update_version=models_pb2.UpdateVersionRequest(model="m", version=9))
    assert error_code(gone) == common_pb2.ERROR_CODE_NOT_FOUND
    assert len(registry.machine.registry.versions_of("m")[0].tags) == MAX_VERSION_TAGS  # the refusals changed nothing


def test_a_refusal_names_the_first_bad_key_in_key_order() -> None:
    """Protobuf maps iterate in an order that differs from process to process; a refusal (kept by
    the dedupe table, so in every snapshot) must read the same on every server."""
    registry = Registry()
    refused = registry.register("m", "a", metrics={f"m{n}": float("nan") for n in (14, 4, 20, 5)}, request_id="r1")
    assert "metric 'm14'" in refused.error.message  # "m14" < "m20" < "m4" < "m5"
    tags = registry.register("m", "b", tags={"z z": "", "a a": "", "m m": ""})
    assert "tag key 'a a'" in tags.error.message


def test_a_bulk_request_may_name_a_parent_registered_earlier_in_it() -> None:
    registry = Registry()

    def item(model: str, content: str, parent: tuple[str, int] | None = None) -> models_pb2.RegisterVersionRequest:
        ref = models_pb2.VersionRef(model=parent[0], version=parent[1]) if parent else None
        return models_pb2.RegisterVersionRequest(
            model=model, sha256=sha(content), size_bytes=1, format=models_pb2.MODEL_FORMAT_GGUF, parent=ref
        )

    ok = registry.run(
        model_bulk_register=models_pb2.BulkRegisterRequest(
            versions=[item("base", "a"), item("base", "b", ("base", 1)), item("ft", "c", ("base", 2))]
        )
    )
    assert [v.parent.version for v in ok.model_bulk_register.versions] == [0, 1, 2]
    assert [v.parent.sha256 for v in ok.model_bulk_register.versions] == ["", sha("a"), sha("b")]
    forward = registry.run(
        model_bulk_register=models_pb2.BulkRegisterRequest(versions=[item("x", "d", ("y", 1)), item("y", "e")])
    )
    assert error_code(forward) == common_pb2.ERROR_CODE_NOT_FOUND and "version #1" in forward.error.message
    assert "x" not in registry.machine.registry.models  # all or nothing


class RegistryInvariants(RuleBasedStateMachine):
    """Random sequences of registry commands, checked against what must always hold."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry()
        # The identity and lineage of each version ever seen.
        self.seen: dict[tuple[str, int], tuple[str, int, str, bytes]] = {}
        self.counter = 0

    @rule(model=st.sampled_from(NAMES))
    def register(self, model: str) -> None:
        self.counter += 1
        self.registry.register(model, f"artifact-{self.counter}")

    @rule(model=st.sampled_from(NAMES), version=st.integers(1, 6), force=st.booleans())
    def delete_version(self, model: str, version: int, force: bool) -> None:
        self.registry.run(
            model_delete_version=models_pb2.DeleteVersionRequest(model=model, version=version, force=force)
        )

    @rule(model=st.sampled_from(NAMES), alias=st.sampled_from(ALIASES), version=st.integers(0, 6))
    def set_alias(self, model: str, alias: str, version: int) -> None:
        self.registry.run(model_set_alias=models_pb2.SetAliasRequest(model=model, alias=alias, version=version))

    @rule(
        model=st.sampled_from(NAMES),
        version=st.integers(1, 6),
        status=st.sampled_from(list(models_pb2.VersionStatus.values())),
    )
    def set_status(self, model: str, version: int, status: int) -> None:
        self.registry.run(
            model_set_status=models_pb2.SetVersionStatusRequest(model=model, version=version, status=status)  # type: ignore[arg-type]
        )

    # Parents among the first versions, which usually exist: derived registrations mostly succeed.
    @rule(model=st.sampled_from(NAMES), parent=st.sampled_from(NAMES), number=st.integers(1, 2))
    def register_derived(self, model: str, parent: str, number: int) -> None:
        self.counter += 1
        ref = models_pb2.VersionRef(model=parent, version=number)
        self.registry.register(model, f"artifact-{self.counter}", run_id=f"run-{self.counter}", parent=ref)

    @rule(
        model=st.sampled_from(NAMES),
        version=st.integers(1, 6),
        tags=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["", "x", "y"]), max_size=2),
        metrics=st.dictionaries(st.sampled_from(["acc", "loss"]), st.floats(-1e6, 1e6), max_size=2),
        remove=st.lists(st.sampled_from(["a", "b", "c", "acc", "loss"]), max_size=2),
    )
    def update_version(
        self, model: str, version: int, tags: dict[str, str], metrics: dict[str, float], remove: list[str]
    ) -> None:
        self.registry.run(
            model_update_version=models_pb2.UpdateVersionRequest(
                model=model,
                version=version,
                set_tags=tags,
                set_metrics=metrics,
                remove_tags=[k for k in remove if k not in tags],
                remove_metrics=[k for k in remove if k not in metrics],
            )
        )

    @rule(model=st.sampled_from(NAMES), force=st.booleans())
    def delete_model(self, model: str, force: bool) -> None:
        self.registry.run(model_delete=models_pb2.DeleteModelRequest(model=model, force=force))

    @rule()
    def snapshot_round_trip(self) -> None:
        data = self.registry.machine.snapshot()
        copy = StateMachine()
        copy.restore(data)
        assert copy.snapshot() == data

    @invariant()
    def versions_are_immutable(self) -> None:
        table = self.registry.machine.registry
        for name in table.models:
            for version in table.versions_of(name):
                lineage = version.parent.SerializeToString()
                key = (name, version.version)
                # A deleted model's numbers restart with a new model of that name: identities may differ then.
                if key in self.seen and table.models[name].create_revision <= self.seen[key][1]:
                    assert self.seen[key][0] == version.sha256, f"{key} changed its artifact"
                    assert self.seen[key][2:] == (version.run_id, lineage), f"{key} changed its lineage"
                self.seen[key] = (version.sha256, version.create_revision, version.run_id, lineage)

    @invariant()
    def aliases_point_at_existing_versions(self) -> None:
        table = self.registry.machine.registry
        for name, model in table.models.items():
            for alias, number in model.aliases.items():
                assert number in table.versions.get(name, {}), f"{name}:{alias} -> missing {number}"

    @invariant()
    def numbering_has_no_gaps(self) -> None:
        table = self.registry.machine.registry
        for name, model in table.models.items():
            numbers = sorted(table.versions.get(name, {}))
            assert all(1 <= n <= model.latest_version for n in numbers)
            assert model.version_count == len(numbers)
            # Numbers were handed out 1..latest in order: every number up to latest was used once.
            registered = {
                event.key
                for event in self.registry.machine.events_from(model.create_revision)
                if event.domain == "models" and event.model.change == "registered" and event.key.startswith(f"{name}/")
            }
            if self.registry.machine.compacted_revision < model.create_revision:
                assert registered == {f"{name}/{n}" for n in range(1, model.latest_version + 1)}


TestRegistryInvariants = RegistryInvariants.TestCase
TestRegistryInvariants.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_a_backup_whose_registry_revisions_lie_outside_it_is_refused() -> None:
    """Model and version revisions order the search (sort=updated/created) and go into SQLite as
    64-bit integers: a backup must not bring ones its own revision could not have produced."""
    source = StateMachine()
    register = models_pb2.RegisterVersionRequest(
        model="m", sha256=hashlib.sha256(b"m").hexdigest(), size_bytes=1, format=models_pb2.MODEL_FORMAT_ONNX
    )
    source.apply_entry(batch_entry(1_000, "n1", [command_pb2.Command(model_register=register)]))
    good = command_pb2.StateSnapshot.FromString(source.snapshot())
    for damage in ("model", "version"):
        snap = command_pb2.StateSnapshot()
        snap.CopyFrom(good)
        record = snap.models.models[0] if damage == "model" else snap.models.versions[0]
        record.mod_revision = 2**63  # far past the backup's revision
        target = StateMachine()
        command = command_pb2.Command(restore_state=command_pb2.RestoreState(snapshot=snap.SerializeToString()))
        result = target.apply_entry(batch_entry(2_000, "n1", [command]))[0]
        assert result.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT, damage
        assert "impossible in a backup" in result.error.message
        assert "m" not in target.registry.models
    target = StateMachine()
    command = command_pb2.Command(restore_state=command_pb2.RestoreState(snapshot=good.SerializeToString()))
    assert not target.apply_entry(batch_entry(2_000, "n1", [command]))[0].HasField("error")


def test_a_backup_with_metadata_the_api_would_refuse_is_refused() -> None:
    from controlplane.state.models import ModelTable
    from controlplane.state.refusal import Refused

    def state_with(**fields: object) -> models_pb2.ModelsState:
        state = models_pb2.ModelsState()
        state.models.add(name="m", latest_version=1, version_count=1, create_revision=1, mod_revision=1)
        state.versions.add(model="m", version=1, sha256=sha("m"), create_revision=1, mod_revision=1, **fields)  # type: ignore[arg-type]
        return state

    ModelTable.validate_state(state_with(tags={"ok": "1"}, metrics={"acc": 0.5}), revision=5)
    for bad in (
        {"metrics": {"acc": float("inf")}},
        {"tags": {"not a key": "x"}},
        {"tags": {f"k{n}": "" for n in range(65)}},
        {"parent": models_pb2.VersionRef(model="bad name!", version=1)},
        {"format": 99},
        {"status": -1},
    ):
        try:
            ModelTable.validate_state(state_with(**bad), revision=5)
        except Refused as refused:
            assert "model 'm' version 1" in refused.message
        else:
            raise AssertionError(f"a backup with {bad} was accepted")
