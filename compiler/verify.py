"""IR verifier: run between passes (tests, ``--verify-each``).

Checks: the op graph is acyclic; every value is defined exactly once (graph input, constant
or one op output); every operand is defined; every graph output is defined; every non-constant
value has a shape. Raises ``VerifyError`` naming the op and the rule.
"""

from __future__ import annotations

import networkx as nx

from .ir import Graph


class VerifyError(Exception):
    """The IR broke an invariant: a compiler bug, not a user error."""


def verify(graph: Graph, after: str = "") -> None:
    where = f" (after {after})" if after else ""
    if not nx.is_directed_acyclic_graph(graph.g):
        raise VerifyError(f"graph has a cycle{where}")
    defined = set(graph.inputs) | set(graph.constants)
    for op in graph.ops():
        for name in op.inputs:
            if name and name not in defined:
                raise VerifyError(f"{op.id} ({op.kind}): operand %{name} is undefined{where}")
        for name in op.outputs:
            if name in defined:
                raise VerifyError(f"{op.id}: %{name} is defined twice{where}")
            if name not in graph.values:
                raise VerifyError(f"{op.id}: output %{name} has no type{where}")
            defined.add(name)
    for name in graph.outputs:
        if name not in defined:
            raise VerifyError(f"graph output %{name} is undefined{where}")
