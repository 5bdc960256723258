"""A Jepsen-style fault suite: concurrent SDK clients record histories while nemeses kill, pause and
starve real servers; checkers then judge the histories (linearizability of registers, set
completeness, unique ports, a lease never held twice, watch delivery). See docs/faults.md.

Modules: ``history`` (operations and their JSON lines), ``wgl`` (the linearizability checker),
``checks`` (the other checkers and the summary table), ``workloads`` (the clients), ``nemesis``
(the faults), ``runner`` (one run: cluster, clients, schedule, checks), ``run`` (the CLI).
"""
