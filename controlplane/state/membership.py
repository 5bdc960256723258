"""The membership domain of the state machine: nodes and their liveness, networks, client places, flags.

Pure and deterministic like the rest of the machine. The rules it keeps (tested in
tests/test_membership_state.py against a naive model):

* **capacity**: a network never holds more clients than its ``max_clients``; a join checks and
  takes the place in the same command, so two joins never both get the last one;
* **one place per client**: a client id is placed in at most one network at a time;
* **a client is served by a live member**: every placement's ``node_id`` is an ACTIVE member of
  its network. When a member dies, drains, leaves or is deregistered, each client it served moves
  to the least-loaded other active member of the same network, or (when there is none) to the best
  network for its model by the assignment policy, or is unplaced when nothing has room;
* **a gone node holds nothing**: a LEFT or DEAD node is a member of no network, serves no client,
  has no place of its own and no lease;
* **flags gate**: with ``multi_network`` off there is at most one network;
* **an unplaced client waits**: a client the cluster took a place from and could not place again
  is kept (from cluster level UNPLACED_CLIENTS) until it is placed again or its lease ends; a kept
  record never names a placed client.

Liveness is a lease from the lease table, granted in the registration's own command. Heartbeats
renew it without a revision (as etcd does for keepalives); the leader expires it (housekeeping)
and the lease table calls back ``release_lease``, which marks the node DEAD and frees what it held
in that same command.

Every stored record is replaced, never mutated in place: readers and the watch history hold
references outside the state lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import ClassVar

from sortedcontainers import SortedDict

from controlplane.state import levels, limits
from controlplane.state.journal import Journal
from controlplane.state.leases import LeaseTable
from controlplane.state.refusal import Handler, Refused, refusing
from controlplane.state.refusal import check as _check
from controlplane.state.refusal import invalid as _invalid
from controlplane.state.refusal import not_found as _not_found
from controlplane.state.refusal import precondition as _precondition
from controlplane.state.tables import BackupSource
from controlplane.v1 import command_pb2, common_pb2, membership_pb2, watch_pb2

DOMAIN_MEMBERSHIP = "membership"
DEFAULT_NODE_TTL_MS = 10_000
# Left and dead nodes stay visible (the unified view shows who died) up to this many; the oldest
# are forgotten first.
MAX_GONE_NODES = 10_000
# Clients the cluster took a place from and could not place again are kept (ListUnplaced) until
# they are placed again or their lease ends, up to this many; the oldest are forgotten first.
MAX_UNPLACED_CLIENTS = 1_000
MAX_LABELS = 64
MAX_CAPABILITIES = 64
MAX_ADDRESSES = 16
MAX_DESCRIPTION_CHARS = 1024
MAX_INSTANCE_ID_CHARS = 64

# Known flags and their defaults. Users may set others (cluster-wide switches for their own code).
KNOWN_FLAGS: dict[str, tuple[bool, str]] = {
    "multi_network": (False, "allow more than one network (off: creating a second network is refused)"),
    "auto_reassign": (
        True,
        "move the clients of a member that dies, drains or leaves to another member or network "
        "(off: they are unplaced and must be assigned again)",
    ),
}

NodeRecord = membership_pb2.NodeRecord
Network = membership_pb2.Network
Placement = membership_pb2.Placement
UnplacedClient = membership_pb2.UnplacedClient
CommandResult = command_pb2.CommandResult

ACTIVE = membership_pb2.NODE_STATE_ACTIVE
JOINING = membership_pb2.NODE_STATE_JOINING
LEAVING = membership_pb2.NODE_STATE_LEAVING
LEFT = membership_pb2.NODE_STATE_LEFT
DEAD = membership_pb2.NODE_STATE_DEAD
GONE_STATES = frozenset({LEFT, DEAD})
NETWORK_FIELDS = ("model", "max_clients", "priority", "labels", "required_capabilities", "description")


def state_name(state: int) -> str:
    return membership_pb2.NodeState.Name(state).removeprefix("NODE_STATE_").lower()  # type: ignore[arg-type]


def model_base(model: str) -> str:
    """The registry name a network or assignment refers to, folded: "Llama-3@prod" -> "llama-3"."""
    return model.partition("@")[0].casefold()


def check_model_reference(model: str) -> None:
    name, at, version = model.partition("@")
    _check(limits.check_model_name(name, "model"))
    if at:
        _check(limits.check_name(version, "model version or alias"))


def check_labels(labels: Mapping[str, str], what: str = "label") -> None:
    items = sorted(labels.items())  # in key order: a map iterates differently in each process
    if len(items) > MAX_LABELS:
        raise _invalid(f"at most {MAX_LABELS} {what}s")
    for key, value in items:
        _check(limits.check_name(key, f"{what} key") or limits.check_text(value, f"{what} {key!r}", 256))


def check_names(names: Iterable[str], what: str, limit: int) -> None:
    listed = list(names)
    if len(listed) > limit:
        raise _invalid(f"at most {limit} {what}s")
    for name in listed:
        _check(limits.check_name(name, what))
    if len(set(listed)) != len(listed):
        raise _invalid(f"a {what} appears twice")


def check_node_spec(spec: membership_pb2.NodeSpec) -> None:
    """Everything about a registration that does not depend on the state."""
    _check(limits.check_member_id(spec.id, "node id"))
    if spec.role not in (membership_pb2.NODE_ROLE_SERVER, membership_pb2.NODE_ROLE_AGENT):
        raise _invalid("role must be server or agent")
    if len(spec.addresses) > MAX_ADDRESSES:
        raise _invalid(f"at most {MAX_ADDRESSES} addresses")
    for purpose, address in spec.addresses.items():
        _check(limits.check_name(purpose, "address purpose") or limits.check_address(address, f"{purpose} address"))
    check_names(spec.capabilities, "capability", MAX_CAPABILITIES)
    check_labels(spec.labels)
    _check(limits.check_text(spec.version, "version", 64))


def check_network_fields(network: Network, fields: Iterable[str] = NETWORK_FIELDS) -> None:
    chosen = set(fields)
    _check(limits.check_name(network.name, "network name"))
    if "model" in chosen:
        check_model_reference(network.model)
    if "max_clients" in chosen and network.max_clients == 0:
        raise _invalid("max_clients must be at least 1 (a network nobody can use is a mistake)")
    if "labels" in chosen:
        check_labels(network.labels)
    if "required_capabilities" in chosen:
        check_names(network.required_capabilities, "capability", MAX_CAPABILITIES)
    if "description" in chosen:
        _check(limits.check_text(network.description, "description", MAX_DESCRIPTION_CHARS))


class MembershipTable:
    name: ClassVar[str] = "membership"
    state_type: ClassVar[type[membership_pb2.MembershipState]] = membership_pb2.MembershipState
    backup_noun: ClassVar[str] = "bad membership"

    def __init__(
        self,
        journal: Journal,
        leases: Callable[[], LeaseTable],
        node_ended: Callable[[str, str], None] | None = None,
        model_problem: Callable[[str], str | None] = lambda reference: None,
    ) -> None:
        # leases() rather than the table itself: the machine builds the two tables together.
        self._journal = journal
        self._leases = leases
        # Why a network's model reference names nothing in the registry, or None: a warning in the
        # answer, not a refusal (a network may be set up before its model is registered).
        self._model_problem = model_problem
        # Told when a node goes DEAD or LEFT, in that command (its service instances turn critical).
        self._node_ended = node_ended
        self.reset()

    def reset(self) -> None:
        self.nodes: SortedDict = SortedDict()  # id -> NodeRecord
        self._node_by_lease: dict[int, str] = {}
        # Left and dead ids, oldest first (the order they went), for the tombstone bound.
        self._gone: OrderedDict[str, None] = OrderedDict()
        self.networks: SortedDict = SortedDict()  # name -> Network (stored without derived fields)
        self.members: dict[str, set[str]] = {}  # network -> node ids
        self._memberships_of: dict[str, set[str]] = {}  # node id -> networks
        self.placements: SortedDict = SortedDict()  # client id -> Placement
        self._clients_of_network: dict[str, set[str]] = {}
        self._clients_of_node: dict[str, set[str]] = {}
        self._clients_of_lease: dict[int, set[str]] = {}
        self.flags: SortedDict = SortedDict()  # name -> Flag (only those set)
        # Client id -> UnplacedClient, oldest first; never a client that is placed.
        self.unplaced: OrderedDict[str, UnplacedClient] = OrderedDict()
        self._unplaced_by_lease: dict[int, set[str]] = {}

    def handlers(self) -> dict[str, Callable[[command_pb2.Command], CommandResult]]:
        def wrap(handler: Handler) -> Handler:
            return refusing(lambda: self._journal.revision, handler)

        return {
            "node_register": wrap(lambda c: self._register(c.node_register)),
            "node_heartbeat": wrap(lambda c: self._heartbeat(c.node_heartbeat)),
            "node_drain": wrap(lambda c: self._drain(c.node_drain)),
            "node_deregister": wrap(lambda c: self._deregister(c.node_deregister)),
            "node_forget": wrap(lambda c: self._forget(c.node_forget)),
            "network_create": wrap(lambda c: self._create_network(c.network_create)),
            "network_update": wrap(lambda c: self._update_network(c.network_update)),
            "network_delete": wrap(lambda c: self._delete_network(c.network_delete)),
            "network_join": wrap(lambda c: self._join(c.network_join)),
            "network_leave": wrap(lambda c: self._leave(c.network_leave)),
            "network_assign": wrap(lambda c: self._assign(c.network_assign)),
            "flag_set": wrap(lambda c: self._set_flag(c.flag_set)),
        }

    # ------------------------------------------------------------------ lookups (also the read API)

    def node(self, node_id: str) -> NodeRecord:
        _check(limits.check_member_id(node_id, "node id"))
        found: NodeRecord | None = self.nodes.get(node_id)
        if found is None:
            raise _not_found(f"no node {node_id!r} is registered")
        return found

    def network(self, name: str) -> Network:
        _check(limits.check_name(name, "network name"))
        found: Network | None = self.networks.get(name)
        if found is None:
            raise _not_found(f"no network {name!r}")
        return found

    def network_view(self, name: str) -> Network:
        """The network with its derived fields (members, clients) filled in: a new message."""
        view = Network()
        view.CopyFrom(self.network(name))
        members = sorted(self.members.get(name, ()))
        view.members.extend(members)
        view.clients = len(self._clients_of_network.get(name, ()))
        view.active_members = sum(1 for node_id in members if self.nodes[node_id].state == ACTIVE)
        return view

    def list_networks(self, model: str = "") -> list[Network]:
        wanted = model_base(model) if model else ""
        return [
            self.network_view(name)
            for name, net in self.networks.items()
            if not wanted or model_base(net.model) == wanted
        ]

    def networks_of(self, node_id: str) -> list[str]:
        return sorted(self._memberships_of.get(node_id, ()))

    def clients_served_by(self, node_id: str) -> int:
        return len(self._clients_of_node.get(node_id, ()))

    def list_placements(self, network: str = "", node_id: str = "", client_id: str = "") -> list[Placement]:
        if network:
            self.network(network)
        if client_id:
            found = self.placements.get(client_id)
            candidates = [found] if found is not None else []
        elif network:
            candidates = [self.placements[c] for c in sorted(self._clients_of_network.get(network, ()))]
        elif node_id:
            candidates = [self.placements[c] for c in sorted(self._clients_of_node.get(node_id, ()))]
        else:
            candidates = list(self.placements.values())
        return [
            p for p in candidates if (not network or p.network == network) and (not node_id or p.node_id == node_id)
        ]

    def list_unplaced(self, network: str = "") -> list[UnplacedClient]:
        """The clients the cluster took a place from and could not place again, newest first."""
        if network:
            _check(limits.check_name(network, "network name"))
        return [record for record in reversed(self.unplaced.values()) if not network or record.network == network]

    def flag(self, name: str) -> bool:
        found = self.flags.get(name)
        if found is not None:
            return bool(found.enabled)
        return KNOWN_FLAGS.get(name, (False, ""))[0]

    def list_flags(self) -> list[membership_pb2.Flag]:
        out = dict(self.flags.items())
        for name, (default, description) in KNOWN_FLAGS.items():
            if name not in out:
                out[name] = membership_pb2.Flag(name=name, enabled=default, description=description, set=False)
        return [out[name] for name in sorted(out)]

    # ------------------------------------------------------------------ recording

    @property
    def _now(self) -> int:
        return self._journal.time_unix_ms

    def _result(self, **body: object) -> CommandResult:
        return CommandResult(revision=self._journal.revision, **body)  # type: ignore[arg-type]

    def _record(self, key: str, event_type: watch_pb2.EventType, **detail: object) -> int:
        event = membership_pb2.MembershipEvent(**detail)  # type: ignore[arg-type]
        return self._journal.record_detail(DOMAIN_MEMBERSHIP, key, event_type, event)

    def _store_node(self, record: NodeRecord, reason: str = "") -> NodeRecord:
        record.mod_revision = self._journal.revision + 1
        record.reason = reason or record.reason
        self.nodes[record.spec.id] = record
        self._record(f"nodes/{record.spec.id}", watch_pb2.EVENT_TYPE_PUT, node=record, reason=reason)
        return record

    def _copy_node(self, node_id: str) -> NodeRecord:
        record = NodeRecord()
        record.CopyFrom(self.nodes[node_id])
        return record

    def _store_network(self, network: Network, reason: str = "") -> None:
        network.mod_revision = self._journal.revision + 1
        self.networks[network.name] = network
        self._record(f"networks/{network.name}", watch_pb2.EVENT_TYPE_PUT, network=network, reason=reason)

    def _place(self, placement: Placement, previous: Placement | None, reason: str) -> Placement:
        if previous is not None:
            self._unindex_placement(previous)
        placement.revision = self._journal.revision + 1
        self.placements[placement.client_id] = placement
        self._forget_unplaced(placement.client_id)
        self._clients_of_network.setdefault(placement.network, set()).add(placement.client_id)
        if placement.node_id:
            self._clients_of_node.setdefault(placement.node_id, set()).add(placement.client_id)
        if placement.lease_id:
            self._clients_of_lease.setdefault(placement.lease_id, set()).add(placement.client_id)
        detail: dict[str, object] = {"placement": placement, "reason": reason}
        if previous is not None:
            detail["previous"] = previous
        self._record(f"placements/{placement.client_id}", watch_pb2.EVENT_TYPE_PUT, **detail)
        return placement

    def _unindex_placement(self, placement: Placement) -> None:
        for index, key in (
            (self._clients_of_network, placement.network),
            (self._clients_of_node, placement.node_id),
        ):
            held = index.get(key)
            if held is not None:
                held.discard(placement.client_id)
                if not held:
                    del index[key]
        if placement.lease_id:
            by_lease = self._clients_of_lease.get(placement.lease_id)
            if by_lease is not None:
                by_lease.discard(placement.client_id)
                if not by_lease:
                    del self._clients_of_lease[placement.lease_id]

    def _unplace(self, client_id: str, reason: str) -> tuple[Placement, int]:
        """Free ``client_id``'s place: the place it had, and the revision of its DELETE event."""
        placement: Placement = self.placements.pop(client_id)
        self._unindex_placement(placement)
        revision = self._record(
            f"placements/{client_id}", watch_pb2.EVENT_TYPE_DELETE, previous=placement, reason=reason
        )
        return placement, revision

    def _keep_unplaced(self, placement: Placement, reason: str, revision: int) -> None:
        """Remember a client the cluster took ``placement`` from (at ``revision``, its DELETE event)
        and could not place again."""
        if self._journal.cluster_level < levels.UNPLACED_CLIENTS:
            return  # the releases below it keep no such record: neither may this one
        # No record to replace: a placed client has none (_place forgets it).
        record = UnplacedClient(
            client_id=placement.client_id,
            network=placement.network,
            node_id=placement.node_id,
            model=placement.model,
            lease_id=placement.lease_id,
            reason=reason,
            unplaced_unix_ms=self._now,
            revision=revision,
        )
        self._index_unplaced(record)
        while len(self.unplaced) > MAX_UNPLACED_CLIENTS:
            self._forget_unplaced(next(iter(self.unplaced)))

    def _index_unplaced(self, record: UnplacedClient) -> None:
        self.unplaced[record.client_id] = record
        if record.lease_id:
            self._unplaced_by_lease.setdefault(record.lease_id, set()).add(record.client_id)

    def _forget_unplaced(self, client_id: str) -> None:
        record = self.unplaced.pop(client_id, None)
        if record is not None and record.lease_id:
            held = self._unplaced_by_lease.get(record.lease_id)
            if held is not None:
                held.discard(client_id)
                if not held:
                    del self._unplaced_by_lease[record.lease_id]

    def _forget_unplaced_on_lease(self, lease_id: int) -> None:
        """The client is gone (its lease ended): it waits for no place any more."""
        for client_id in sorted(self._unplaced_by_lease.get(lease_id, ())):
            self._forget_unplaced(client_id)

    # ------------------------------------------------------------------ the assignment policy

    def _active_members(self, network: str) -> list[str]:
        return sorted(node_id for node_id in self.members.get(network, ()) if self.nodes[node_id].state == ACTIVE)

    def _least_loaded_member(self, network: str, exclude: str = "") -> str:
        candidates = [node_id for node_id in self._active_members(network) if node_id != exclude]
        if not candidates:
            return ""
        return min(candidates, key=lambda node_id: (len(self._clients_of_node.get(node_id, ())), node_id))

    def free_places(self, network: str) -> int:
        return int(self.networks[network].max_clients) - len(self._clients_of_network.get(network, ()))

    def best_network(self, model: str, exclude: Iterable[str] = ()) -> str:
        """The network a new client for ``model`` goes to, or "" when none can take it.

        Eligible: serves the model (by name, ignoring case and version), has a free place and at
        least one ACTIVE member. Best: highest priority, then least load (clients per active
        member), then most free places, then name (so the choice is a pure function of the state).
        """
        wanted = model_base(model)
        skipped = set(exclude)
        best: tuple[tuple[int, float, int, str], str] | None = None
        for name, network in self.networks.items():
            if name in skipped or model_base(network.model) != wanted:
                continue
            free = self.free_places(name)
            active = len(self._active_members(name))
            if free <= 0 or active == 0:
                continue
            load = len(self._clients_of_network.get(name, ())) / active
            key = (-int(network.priority), load, -free, name)
            if best is None or key < best[0]:
                best = (key, name)
        return best[1] if best is not None else ""

    def _rehome(self, client_id: str, reason: str, exclude_network: str = "", exclude_node: str = "") -> bool:
        """Move a client whose member or network is going away; False if it ended up unplaced.

        Same network with another active member first (the client keeps its place), then the
        best network for its model; with ``auto_reassign`` off, it is unplaced.
        """
        current: Placement = self.placements[client_id]
        if self.flag("auto_reassign"):
            if current.network != exclude_network:
                member = self._least_loaded_member(current.network, exclude=exclude_node)
                if member:
                    moved = Placement()
                    moved.CopyFrom(current)
                    moved.node_id = member
                    self._place(moved, current, reason)
                    return True
            model = current.model or self.networks[current.network].model
            target = self.best_network(model, exclude={current.network})
            if target:
                moved = Placement()
                moved.CopyFrom(current)
                moved.network = target
                moved.node_id = self._least_loaded_member(target)
                moved.placed_unix_ms = self._now
                self._place(moved, current, reason)
                return True
        why = f"{reason}; no network for its model has room" if self.flag("auto_reassign") else reason
        # The watch event keeps the text older releases wrote; the kept record says why nothing moved it.
        kept = why if self.flag("auto_reassign") else f"{reason}; auto_reassign is off"
        placement, revision = self._unplace(client_id, why)
        self._keep_unplaced(placement, kept, revision)
        return False

    def _move_clients(
        self, clients: Iterable[str], reason: str, exclude_network: str = "", exclude_node: str = ""
    ) -> tuple[list[Placement], list[str]]:
        moved: list[Placement] = []
        unplaced: list[str] = []
        for client_id in sorted(clients):
            if self._rehome(client_id, reason, exclude_network, exclude_node):
                moved.append(self.placements[client_id])
            else:
                unplaced.append(client_id)
        return moved, unplaced

    def _evict(self, node_id: str, reason: str) -> tuple[list[Placement], list[str]]:
        """Take a node out of every network and move the clients it served; it keeps its own places."""
        networks = sorted(self._memberships_of.pop(node_id, set()))
        # Out of every member set first: a client moving to another network must not land on this
        # node again through a membership it is about to lose (found by the stateful test).
        for name in networks:
            self.members[name].discard(node_id)
        moved, unplaced = self._move_clients(list(self._clients_of_node.get(node_id, ())), reason, exclude_node=node_id)
        for name in networks:
            self._touch_network(name, f"member {node_id} left: {reason}")
        return moved, unplaced

    def _touch_network(self, name: str, reason: str) -> None:
        """Record a change of the network's members (a new record: stored ones are never mutated)."""
        network = Network()
        network.CopyFrom(self.networks[name])
        self._store_network(network, reason)

    def _remove_member(self, network: str, node_id: str) -> None:
        self.members[network].discard(node_id)
        held = self._memberships_of.get(node_id)
        if held is not None:
            held.discard(network)
            if not held:
                del self._memberships_of[node_id]

    def _end_node(
        self, node_id: str, state: membership_pb2.NodeState, reason: str
    ) -> tuple[list[Placement], list[str]]:
        """A node goes LEFT or DEAD: it serves nothing, holds no place and no lease afterwards."""
        moved, unplaced = self._evict(node_id, reason)
        record = self._copy_node(node_id)
        lease_id = record.lease_id
        if lease_id:
            self._node_by_lease.pop(lease_id, None)
        # Its own places (as a client) hang on its lease.
        for client_id in sorted(self._clients_of_lease.get(lease_id, ())) if lease_id else ():
            self._unplace(client_id, reason)
        if lease_id:
            self._forget_unplaced_on_lease(lease_id)
        record.state = state
        record.lease_id = 0
        record.state_changed_unix_ms = self._now
        record.activity = ""
        self._store_node(record, reason)
        if self._node_ended is not None:
            self._node_ended(node_id, f"{state_name(state)} ({reason})")
        self._gone[node_id] = None
        while len(self._gone) > MAX_GONE_NODES:
            oldest, _ = self._gone.popitem(last=False)
            self._drop_node(oldest, "forgotten: too many left and dead nodes are kept")
        if lease_id:
            # A clean stop ends the lease too, releasing anything else hung on it (ports); when the
            # lease's own end brought us here, it is already out of the table and this does nothing.
            self._leases().end(lease_id, reason)
        return moved, unplaced

    def _drop_node(self, node_id: str, reason: str) -> None:
        previous = self.nodes.pop(node_id)
        self._gone.pop(node_id, None)
        self._record(f"nodes/{node_id}", watch_pb2.EVENT_TYPE_DELETE, node=previous, reason=reason)

    def node_problem(self, node_id: str) -> str | None:
        """Why ``node_id`` is no node to hold anything now (never registered, dead, left), or None."""
        record: NodeRecord | None = self.nodes.get(node_id)
        if record is None:
            return f"node {node_id!r} is not registered in membership"
        if record.state in GONE_STATES:
            return f"node {node_id!r} is {state_name(record.state)}"
        return None

    def is_gone(self, node_id: str) -> bool:
        """Whether ``node_id`` names a node that is dead or left (not one never registered)."""
        record: NodeRecord | None = self.nodes.get(node_id)
        return record is not None and record.state in GONE_STATES

    def live_capabilities(self, node_id: str) -> tuple[str, ...] | None:
        """A live node's capabilities (what its agent consents to: exec checks, runs); None when the
        node is unknown, left or dead."""
        record: NodeRecord | None = self.nodes.get(node_id)
        if record is None or record.state in GONE_STATES:
            return None
        return tuple(record.spec.capabilities)

    def live_nodes(self) -> list[NodeRecord]:
        """Every node that is neither left nor dead, by id."""
        return [record for record in self.nodes.values() if record.state not in GONE_STATES]

    def release_lease(self, lease_id: int, reason: str, expired: bool) -> None:
        """A lease ended (the lease table calls this): its node dies, its client places are freed."""
        node_id = self._node_by_lease.get(lease_id)
        if node_id is not None:
            self._end_node(node_id, DEAD if expired else LEFT, reason)
        for client_id in sorted(self._clients_of_lease.get(lease_id, ())):
            self._unplace(client_id, reason)
        self._forget_unplaced_on_lease(lease_id)

    # ------------------------------------------------------------------ nodes

    def _register(self, request: membership_pb2.RegisterNodeRequest) -> CommandResult:
        spec = request.node
        check_node_spec(spec)
        ttl_ms = request.lease_ttl_ms or DEFAULT_NODE_TTL_MS
        _check(limits.check_lease_ttl(ttl_ms))
        _check(limits.check_text(request.instance_id, "instance id", MAX_INSTANCE_ID_CHARS))
        leases = self._leases()
        previous: NodeRecord | None = self.nodes.get(spec.id)
        if previous is not None and previous.state not in GONE_STATES:
            self._check_same_instance(previous, request.instance_id)  # refuses before anything changed
            if spec != previous.spec:
                self._check_memberships_still_allowed(spec)
            lease = leases.leases.get(previous.lease_id)
            record = self._copy_node(spec.id)
            record.spec.CopyFrom(spec)
            if request.instance_id:
                record.instance_id = request.instance_id
            if lease is not None and lease.ttl_ms != ttl_ms:
                lease.ttl_ms = ttl_ms
            if lease is not None:
                leases.renew(lease.id)
            if record.spec != previous.spec or record.instance_id != previous.instance_id:
                record = self._store_node(record, "registration updated")
            return self._result(node_register=membership_pb2.RegisterNodeResponse(node=record, lease_ttl_ms=ttl_ms))
        lease = leases.grant(ttl_ms)
        record = NodeRecord(
            state=JOINING,
            lease_id=lease.id,
            registered_unix_ms=self._now,
            state_changed_unix_ms=self._now,
            create_revision=self._journal.revision + 1,
            incarnation=previous.incarnation + 1 if previous is not None else 1,
            instance_id=request.instance_id,
        )
        record.spec.CopyFrom(spec)
        self._gone.pop(spec.id, None)
        self._node_by_lease[lease.id] = spec.id
        record = self._store_node(record, "registered")
        return self._result(node_register=membership_pb2.RegisterNodeResponse(node=record, lease_ttl_ms=ttl_ms))

    def _check_same_instance(self, previous: NodeRecord, instance_id: str) -> None:
        """Refuse a live node's registration by another agent process (issue 17): two agents run with
        the same id would otherwise share one lease, and the one stopping first ends it for both.
        Unknown on either side (servers, older agents, old snapshots): allowed, as before."""
        if not instance_id or not previous.instance_id or instance_id == previous.instance_id:
            return
        lease = self._leases().leases.get(previous.lease_id)
        # The replicated renewal time lags the leader's memory by up to a checkpoint interval, so
        # this deadline is the earliest the lease can expire, not the latest.
        expiry = (
            f"its lease expires no earlier than {_utc(self._leases().deadline_ms(lease))} UTC (TTL "
            f"{lease.ttl_ms / 1000:g} s), later while that agent keeps renewing it"
            if lease is not None
            else "its lease is ending"
        )
        raise _precondition(
            f"node id {previous.spec.id} is in use by another running agent (instance "
            f"{previous.instance_id[:12]}, {state_name(previous.state)}): {expiry}. Stop that agent (it "
            "deregisters) or give this one another --id; once the lease has expired the id is free again"
        )

    def _check_memberships_still_allowed(self, spec: membership_pb2.NodeSpec) -> None:
        have = set(spec.capabilities)
        for name in sorted(self._memberships_of.get(spec.id, ())):
            missing = sorted(set(self.networks[name].required_capabilities) - have)
            if missing:
                raise _precondition(
                    f"node {spec.id} is a member of network {name!r}, which requires {', '.join(missing)}; "
                    "leave the network before dropping the capability"
                )

    def _live_node(self, node_id: str) -> NodeRecord:
        record = self.node(node_id)
        if record.state in GONE_STATES:
            raise _not_found(
                f"node {node_id} is {state_name(record.state)} ({record.reason}); register it again to bring it back"
            )
        return record

    def _heartbeat(self, request: membership_pb2.HeartbeatRequest) -> CommandResult:
        record = self._live_node(request.node_id)
        _check(limits.check_text(request.activity, "activity", 64))
        if request.instance_id and record.instance_id and request.instance_id != record.instance_id:
            raise _precondition(
                f"node {request.node_id} was registered again by another agent (instance "
                f"{record.instance_id[:12]}, incarnation {record.incarnation}) after this one's lease "
                f"expired: it is theirs now; stop this agent or give it another --id"
            )
        lease = self._leases().renew(record.lease_id)
        if lease is None:  # cannot happen while the node lives (its lease ends it); kept safe
            raise _not_found(f"node {request.node_id} has no live lease; register it again")
        changed = (record.state == JOINING) or (request.activity and request.activity != record.activity)
        if changed:
            updated = self._copy_node(request.node_id)
            reason = ""
            if updated.state == JOINING:
                updated.state = ACTIVE
                updated.state_changed_unix_ms = self._now
                reason = "first heartbeat"
            if request.activity:
                updated.activity = request.activity
            record = self._store_node(updated, reason or f"activity {request.activity}")
        return self._result(
            node_heartbeat=membership_pb2.HeartbeatResponse(state=record.state, lease_ttl_ms=lease.ttl_ms)
        )

    def _drain(self, request: membership_pb2.DrainNodeRequest) -> CommandResult:
        record = self._live_node(request.node_id)
        moved: list[Placement] = []
        unplaced: list[str] = []
        if record.state != LEAVING:
            updated = self._copy_node(request.node_id)
            updated.state = LEAVING
            updated.state_changed_unix_ms = self._now
            record = self._store_node(updated, "draining")
            moved, unplaced = self._move_clients(
                list(self._clients_of_node.get(request.node_id, ())),
                f"member {request.node_id} is draining",
                exclude_node=request.node_id,
            )
        return self._result(node_drain=membership_pb2.DrainNodeResponse(node=record, moved=moved, unplaced=unplaced))

    def _deregister(self, request: membership_pb2.DeregisterNodeRequest) -> CommandResult:
        record = self.node(request.node_id)
        if record.state in GONE_STATES:
            return self._result(node_deregister=membership_pb2.DeregisterNodeResponse(deregistered=False))
        moved, unplaced = self._end_node(request.node_id, LEFT, f"node {request.node_id} deregistered")
        return self._result(
            node_deregister=membership_pb2.DeregisterNodeResponse(deregistered=True, moved=moved, unplaced=unplaced)
        )

    def _forget(self, request: membership_pb2.ForgetNodeRequest) -> CommandResult:
        _check(limits.check_member_id(request.node_id))
        record = self.nodes.get(request.node_id)
        if record is None:
            return self._result(node_forget=membership_pb2.ForgetNodeResponse(forgotten=False))
        if record.state not in GONE_STATES:
            raise _precondition(
                f"node {request.node_id} is {state_name(record.state)}; deregister it (or let its lease expire) "
                "before forgetting it"
            )
        self._drop_node(request.node_id, "forgotten")
        return self._result(node_forget=membership_pb2.ForgetNodeResponse(forgotten=True))

    # ------------------------------------------------------------------ networks

    def _create_network(self, request: membership_pb2.CreateNetworkRequest) -> CommandResult:
        spec = request.network
        check_network_fields(spec)
        if spec.name in self.networks:
            existing = self.networks[spec.name]
            if _same_definition(existing, spec):
                return self._result(
                    network_create=membership_pb2.CreateNetworkResponse(network=self.network_view(spec.name))
                )
            raise Refused(
                common_pb2.ERROR_CODE_ALREADY_EXISTS, f"network {spec.name!r} already exists with another definition"
            )
        if self.networks and not self.flag("multi_network"):
            raise _precondition(
                f"network {next(iter(self.networks))!r} already exists and the multi_network flag is off; "
                "turn it on with `cpctl flags set multi_network on` to run several networks"
            )
        network = Network(
            name=spec.name,
            model=spec.model,
            max_clients=spec.max_clients,
            priority=spec.priority,
            labels=spec.labels,
            required_capabilities=spec.required_capabilities,
            description=spec.description,
            create_revision=self._journal.revision + 1,
        )
        warnings = self._model_warnings(spec.model)
        self.members[spec.name] = set()
        self._store_network(network, "created")
        return self._result(
            network_create=membership_pb2.CreateNetworkResponse(network=self.network_view(spec.name), warnings=warnings)
        )

    def _update_network(self, request: membership_pb2.UpdateNetworkRequest) -> CommandResult:
        spec = request.network
        current = self.network(spec.name)
        fields = list(request.update_mask) or list(NETWORK_FIELDS)
        unknown = sorted(set(fields) - set(NETWORK_FIELDS))
        if unknown:
            raise _invalid(f"update_mask names unknown field(s) {', '.join(unknown)}; use {', '.join(NETWORK_FIELDS)}")
        check_network_fields(spec, fields)
        clients = len(self._clients_of_network.get(spec.name, ()))
        if "max_clients" in fields and spec.max_clients < clients:
            raise _precondition(
                f"network {spec.name!r} holds {clients} clients; max_clients {spec.max_clients} would be over "
                "capacity (move clients away first)"
            )
        if "model" in fields and model_base(spec.model) != model_base(current.model) and clients:
            raise _precondition(
                f"network {spec.name!r} serves {clients} clients of model {current.model!r}; move them before "
                "changing its model"
            )
        if "required_capabilities" in fields:
            for node_id in sorted(self.members.get(spec.name, ())):
                missing = sorted(set(spec.required_capabilities) - set(self.nodes[node_id].spec.capabilities))
                if missing:
                    raise _precondition(
                        f"member {node_id} of network {spec.name!r} lacks {', '.join(missing)}; it must leave first"
                    )
        updated = Network()
        updated.CopyFrom(current)
        for field in fields:
            if field in ("labels", "required_capabilities"):
                updated.ClearField(field)  # type: ignore[arg-type]
                if field == "labels":
                    updated.labels.update(spec.labels)
                else:
                    updated.required_capabilities.extend(spec.required_capabilities)
            else:
                setattr(updated, field, getattr(spec, field))
        warnings = self._model_warnings(updated.model) if "model" in fields else []
        if updated != current:
            self._store_network(updated, "updated")
        return self._result(
            network_update=membership_pb2.UpdateNetworkResponse(network=self.network_view(spec.name), warnings=warnings)
        )

    def _model_warnings(self, reference: str) -> list[str]:
        """A network answer's warnings about its model reference (none when it names something registered)."""
        problem = self._model_problem(reference)
        return [problem] if problem else []

    def _delete_network(self, request: membership_pb2.DeleteNetworkRequest) -> CommandResult:
        _check(limits.check_name(request.name, "network name"))
        if request.name not in self.networks:
            return self._result(network_delete=membership_pb2.DeleteNetworkResponse(deleted=False))
        members = sorted(self.members.get(request.name, ()))
        clients = sorted(self._clients_of_network.get(request.name, ()))
        if (members or clients) and not request.force:
            raise _precondition(
                f"network {request.name!r} has {len(members)} members and {len(clients)} clients; "
                "use force to delete it anyway (its clients move to other networks for the same model)"
            )
        moved, unplaced = self._move_clients(clients, f"network {request.name} deleted", exclude_network=request.name)
        for node_id in members:
            self._remove_member(request.name, node_id)
        del self.members[request.name]
        previous = self.networks.pop(request.name)
        self._record(f"networks/{request.name}", watch_pb2.EVENT_TYPE_DELETE, network=previous, reason="deleted")
        return self._result(
            network_delete=membership_pb2.DeleteNetworkResponse(deleted=True, moved=moved, unplaced=unplaced)
        )

    def _client_lease(self, client_id: str, lease_id: int) -> int:
        """The lease a client's place hangs on: its node's when it is a registered live node."""
        node = self.nodes.get(client_id)
        if node is not None and node.state not in GONE_STATES:
            if lease_id and lease_id != node.lease_id:
                raise _invalid(f"client {client_id} is a registered node: its place hangs on its own lease")
            return int(node.lease_id)
        if lease_id and not self._leases().exists(lease_id):
            raise _not_found(f"lease {lease_id} has expired or never existed")
        return lease_id

    def _join(self, request: membership_pb2.JoinNetworkRequest) -> CommandResult:
        network = self.network(request.network)
        if bool(request.node_id) == bool(request.client_id):
            raise _invalid("name exactly one of node_id (a member joining) or client_id (a client taking a place)")
        if request.node_id:
            record = self._live_node(request.node_id)
            if record.state == LEAVING:
                raise _precondition(f"node {request.node_id} is draining; it cannot join networks")
            missing = sorted(set(network.required_capabilities) - set(record.spec.capabilities))
            if missing:
                raise _precondition(
                    f"network {network.name!r} requires {', '.join(missing)}; node {request.node_id} lacks "
                    f"{'it' if len(missing) == 1 else 'them'}"
                )
            existing = request.node_id in self.members[network.name]
            if not existing:
                self.members[network.name].add(request.node_id)
                self._memberships_of.setdefault(request.node_id, set()).add(network.name)
                self._touch_network(network.name, f"member {request.node_id} joined")
            return self._result(
                network_join=membership_pb2.JoinNetworkResponse(
                    network=self.network_view(network.name), existing=existing
                )
            )
        _check(limits.check_member_id(request.client_id, "client id"))
        current: Placement | None = self.placements.get(request.client_id)
        if current is not None:
            if current.network != network.name:
                raise _precondition(
                    f"client {request.client_id} is placed in network {current.network!r}; leave it first "
                    "(a client holds one place at a time)"
                )
            return self._result(
                network_join=membership_pb2.JoinNetworkResponse(
                    network=self.network_view(network.name), placement=current, existing=True
                )
            )
        lease_id = self._client_lease(request.client_id, request.lease_id)
        placement = self._new_placement(network.name, request.client_id, lease_id, "")
        return self._result(
            network_join=membership_pb2.JoinNetworkResponse(
                network=self.network_view(network.name), placement=placement
            )
        )

    def _new_placement(self, network: str, client_id: str, lease_id: int, model: str) -> Placement:
        if self.free_places(network) <= 0:
            raise Refused(
                common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED,
                f"network {network!r} is full ({self.networks[network].max_clients} clients)",
            )
        member = self._least_loaded_member(network)
        if not member:
            raise _precondition(f"network {network!r} has no active member to serve a client; join a node to it first")
        placement = Placement(
            client_id=client_id,
            network=network,
            node_id=member,
            lease_id=lease_id,
            model=model,
            placed_unix_ms=self._now,
        )
        return self._place(placement, None, "joined" if not model else f"assigned for model {model}")

    def _leave(self, request: membership_pb2.LeaveNetworkRequest) -> CommandResult:
        network = self.network(request.network)
        if bool(request.node_id) == bool(request.client_id):
            raise _invalid("name exactly one of node_id (a member leaving) or client_id (a client leaving)")
        if request.node_id:
            _check(limits.check_member_id(request.node_id))
            if request.node_id not in self.members[network.name]:
                return self._result(network_leave=membership_pb2.LeaveNetworkResponse(left=False))
            reason = f"member {request.node_id} left network {network.name}"
            served_here = [
                c for c in self._clients_of_node.get(request.node_id, ()) if self.placements[c].network == network.name
            ]
            moved, unplaced = self._move_clients(served_here, reason, exclude_node=request.node_id)
            self._remove_member(network.name, request.node_id)
            self._touch_network(network.name, reason)
            return self._result(
                network_leave=membership_pb2.LeaveNetworkResponse(left=True, moved=moved, unplaced=unplaced)
            )
        current = self.placements.get(request.client_id)
        if current is None or current.network != network.name:
            return self._result(network_leave=membership_pb2.LeaveNetworkResponse(left=False))
        self._unplace(request.client_id, f"client {request.client_id} left")
        return self._result(network_leave=membership_pb2.LeaveNetworkResponse(left=True))

    def _assign(self, request: membership_pb2.AssignClientRequest) -> CommandResult:
        _check(limits.check_member_id(request.client_id, "client id"))
        check_model_reference(request.model)
        current: Placement | None = self.placements.get(request.client_id)
        if current is not None:
            network = self.networks[current.network]
            if model_base(network.model) == model_base(request.model):
                return self._result(
                    network_assign=membership_pb2.AssignClientResponse(
                        placement=current, network=self.network_view(current.network), existing=True
                    )
                )
            raise _precondition(
                f"client {request.client_id} is placed in network {current.network!r} for model {network.model!r}; "
                "leave it first (a client holds one place at a time)"
            )
        target = self.best_network(request.model)
        if not target:
            serving = [name for name, n in self.networks.items() if model_base(n.model) == model_base(request.model)]
            if not serving:
                raise _not_found(f"no network serves model {request.model!r}; create one first")
            raise Refused(
                common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED,
                f"every network serving {request.model!r} ({', '.join(serving)}) is full or has no active member",
            )
        lease_id = self._client_lease(request.client_id, request.lease_id)
        placement = self._new_placement(target, request.client_id, lease_id, request.model)
        return self._result(
            network_assign=membership_pb2.AssignClientResponse(placement=placement, network=self.network_view(target))
        )

    # ------------------------------------------------------------------ flags

    def _set_flag(self, request: membership_pb2.SetFlagRequest) -> CommandResult:
        _check(limits.check_name(request.name, "flag name") or limits.check_text(request.description, "description"))
        if request.name == "multi_network" and not request.enabled and len(self.networks) > 1:
            raise _precondition(
                f"{len(self.networks)} networks exist; delete all but one before turning multi_network off"
            )
        previous = self.flags.get(request.name)
        description = request.description or (
            previous.description if previous is not None else KNOWN_FLAGS.get(request.name, (False, ""))[1]
        )
        flag = membership_pb2.Flag(name=request.name, enabled=request.enabled, description=description, set=True)
        if previous is not None and previous.enabled == flag.enabled and previous.description == flag.description:
            return self._result(flag_set=membership_pb2.SetFlagResponse(flag=previous))
        flag.mod_revision = self._journal.revision + 1
        self.flags[request.name] = flag
        self._record(f"flags/{request.name}", watch_pb2.EVENT_TYPE_PUT, flag=flag)
        return self._result(flag_set=membership_pb2.SetFlagResponse(flag=flag))

    # ------------------------------------------------------------------ snapshot

    def to_state(self) -> membership_pb2.MembershipState:
        state = membership_pb2.MembershipState()
        # Gone nodes last, in the order they went: load() rebuilds the tombstone order from it.
        state.nodes.extend(record for node_id, record in self.nodes.items() if node_id not in self._gone)
        state.nodes.extend(self.nodes[node_id] for node_id in self._gone)
        state.networks.extend(self.networks.values())
        state.placements.extend(self.placements.values())
        state.flags.extend(self.flags.values())
        state.unplaced.extend(self.unplaced.values())
        state.memberships.extend(
            f"{network}/{node_id}" for network in sorted(self.members) for node_id in sorted(self.members[network])
        )
        return state

    @staticmethod
    def validate_state(state: membership_pb2.MembershipState) -> None:
        """Refuse a snapshot that breaks an invariant (a backup being restored is outside input)."""
        nodes = {}
        lease_holders: dict[int, str] = {}
        for record in state.nodes:
            check_node_spec(record.spec)
            _check(limits.check_text(record.instance_id, f"node {record.spec.id}'s instance id", MAX_INSTANCE_ID_CHARS))
            if record.spec.id in nodes:
                raise _invalid(f"node {record.spec.id} appears twice")
            nodes[record.spec.id] = record
            if record.state not in GONE_STATES:
                if not record.lease_id or record.lease_id in lease_holders:
                    raise _invalid(f"live node {record.spec.id} needs a lease of its own")
                lease_holders[record.lease_id] = record.spec.id
        networks = {}
        for network in state.networks:
            check_network_fields(network)
            networks[network.name] = network
        for entry in state.memberships:
            network_name, _, node_id = entry.partition("/")
            if network_name not in networks or node_id not in nodes:
                raise _invalid(f"membership {entry!r} names an unknown network or node")
            if nodes[node_id].state in GONE_STATES:
                raise _invalid(f"membership {entry!r}: node {node_id} is gone")
        members = set(state.memberships)
        counts: dict[str, int] = {}
        clients = set()
        for placement in state.placements:
            if placement.client_id in clients:
                raise _invalid(f"client {placement.client_id} is placed twice")
            clients.add(placement.client_id)
            if placement.network not in networks:
                raise _invalid(f"client {placement.client_id} is placed in unknown network {placement.network!r}")
            if placement.node_id and f"{placement.network}/{placement.node_id}" not in members:
                raise _invalid(f"client {placement.client_id} is served by {placement.node_id}, not a member")
            counts[placement.network] = counts.get(placement.network, 0) + 1
        for name, count in counts.items():
            if count > networks[name].max_clients:
                raise _invalid(f"network {name!r} holds {count} clients, over its max_clients")
        unplaced = set()
        for waiting in state.unplaced:
            _check(
                limits.check_member_id(waiting.client_id, "unplaced client id")
                or limits.check_text(waiting.network, f"unplaced client {waiting.client_id}'s network")
                or limits.check_text(waiting.node_id, f"unplaced client {waiting.client_id}'s member")
                or limits.check_text(waiting.model, f"unplaced client {waiting.client_id}'s model")
                or limits.check_text(waiting.reason, f"unplaced client {waiting.client_id}'s reason", 4096)
            )
            if waiting.client_id in unplaced or waiting.client_id in clients:
                raise _invalid(f"client {waiting.client_id} is listed as unplaced twice, or as placed too")
            unplaced.add(waiting.client_id)
        if len(unplaced) > MAX_UNPLACED_CLIENTS:
            raise _invalid(f"{len(unplaced)} unplaced clients, over the {MAX_UNPLACED_CLIENTS} kept")

    def load_state(self, state: membership_pb2.MembershipState | None) -> None:
        """A snapshot's table, as this cluster's level holds it (the machine loads the level first)."""
        if state is None:
            state = membership_pb2.MembershipState()
        levels.membership_state_at(state, self._journal.cluster_level)
        self.load(state)

    def check_backup(self, state: membership_pb2.MembershipState | None, backup: BackupSource) -> None:
        if state is None:
            return
        # As this cluster's releases read it, and as the backup's cluster held it.
        levels.membership_state_at(state, min(self._journal.cluster_level, backup.cluster_level))
        self.validate_state(state)

    def restore_backup(self, state: membership_pb2.MembershipState | None, backup: BackupSource) -> None:
        """Load the backup's, then end what hangs on a lease it lacks (the lease table restores first)."""
        self.load_state(state)
        self.drop_dangling_leases(self._leases().exists)

    def load(self, state: membership_pb2.MembershipState) -> None:
        self.reset()
        for record in state.nodes:
            self.nodes[record.spec.id] = record
            if record.state in GONE_STATES:
                self._gone[record.spec.id] = None
            elif record.lease_id:
                self._node_by_lease[record.lease_id] = record.spec.id
        for network in state.networks:
            self.networks[network.name] = network
            self.members[network.name] = set()
        for entry in state.memberships:
            network_name, _, node_id = entry.partition("/")
            self.members[network_name].add(node_id)
            self._memberships_of.setdefault(node_id, set()).add(network_name)
        for placement in state.placements:
            self.placements[placement.client_id] = placement
            self._clients_of_network.setdefault(placement.network, set()).add(placement.client_id)
            if placement.node_id:
                self._clients_of_node.setdefault(placement.node_id, set()).add(placement.client_id)
            if placement.lease_id:
                self._clients_of_lease.setdefault(placement.lease_id, set()).add(placement.client_id)
        for flag in state.flags:
            self.flags[flag.name] = flag
        for waiting in state.unplaced:  # none below UNPLACED_CLIENTS (load_state)
            self._index_unplaced(waiting)

    def drop_dangling_leases(self, lease_exists: Callable[[int], bool]) -> None:
        """After a restore: a node whose lease the backup lacks is dead, a place on a missing lease freed."""
        for lease_id, node_id in sorted(self._node_by_lease.items()):
            if not lease_exists(lease_id):
                self._end_node(node_id, DEAD, f"lease {lease_id} missing from the restored backup")
        for lease_id in sorted(self._clients_of_lease):
            if not lease_exists(lease_id):
                for client_id in sorted(self._clients_of_lease.get(lease_id, ())):
                    self._unplace(client_id, f"lease {lease_id} missing from the restored backup")
        for lease_id in sorted(self._unplaced_by_lease):
            if not lease_exists(lease_id):
                self._forget_unplaced_on_lease(lease_id)


def _utc(unix_ms: int) -> str:
    """A leader-stamped time for a message: a pure function of the number (no clock is read)."""
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _same_definition(a: Network, b: Network) -> bool:
    return all(getattr(a, field) == getattr(b, field) for field in NETWORK_FIELDS)
