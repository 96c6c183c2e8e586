"""`specc train --nnodes`: the flags that make a run span several machines, checked before anything starts, and the
torchrun arguments they become (docs/training.md, "Several processes, several machines"). Torch-free.

torchrun offers two ways for the nodes to meet (`python -m torch.distributed.run --help`, and its documentation):
- c10d, the one it recommends: every node runs the same command; the nodes meet at a TCP store on --rdzv-endpoint
  (hosted by the node whose address that is) and torchrun numbers them as they join, so it ignores --node-rank
  (it warns "node_rank is only used for static rdzv_backend"). --nnodes may be a range MIN:MAX (elastic).
- static: each node is told its --node-rank, and node 0 hosts the store at the endpoint (torchrun's
  --master-addr/--master-port are that endpoint). The number of nodes is fixed.
specc takes the static rendezvous when --node-rank is given and c10d otherwise, so a flag is never ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import Span, SpecError

BACKENDS = ("c10d", "static")
_NODES = re.compile(r"^(\d+)(?::(\d+))?$")
_HINT = "docs/training.md, 'Several processes, several machines'"


@dataclass(frozen=True)
class Rendezvous:
    """Where and how the nodes of one run meet."""

    nnodes: str  # "N" or "MIN:MAX"
    endpoint: str  # HOST:PORT
    backend: str  # c10d or static
    node_rank: int | None = None  # static only
    run_id: str | None = None  # torchrun's --rdzv-id ("none" when not given)

    def torchrun_args(self) -> list[str]:
        # the underscore spellings: every torchrun takes them (the dashed ones came later)
        args = [f"--nnodes={self.nnodes}", f"--rdzv_backend={self.backend}", f"--rdzv_endpoint={self.endpoint}"]
        if self.run_id is not None:
            args.append(f"--rdzv_id={self.run_id}")
        if self.node_rank is not None:
            args.append(f"--node_rank={self.node_rank}")
        return args


def _refuse(flag: str, message: str, hint: str = _HINT) -> None:
    raise SpecError(message, Span(flag, 0, 0), hint=hint)


def check(nproc: int | None, nnodes: str | None, node_rank: int | None, endpoint: str | None,
          run_id: str | None, backend: str | None) -> Rendezvous | None:
    """The rendezvous the flags ask for (None: one machine), or a SpecError on the flag that is wrong."""
    if nnodes is None:
        given = [flag for flag, value in (("--node-rank", node_rank), ("--rdzv-endpoint", endpoint),
                                          ("--rdzv-id", run_id), ("--rdzv-backend", backend)) if value is not None]
        if given:
            _refuse(given[0], f"{given[0]} is for a run on several machines, and --nnodes is not given",
                    hint="add --nnodes N (the number of machines), or drop it to train on this machine")
        return None
    low, high = _node_counts(nnodes)
    if nproc is None:
        _refuse("--nnodes", "say how many processes each node starts: --nproc N with --nnodes",
                hint="--nproc 8 on a machine of 8 GPUs; --nproc 1 for one process a node")
    backend = backend or ("static" if node_rank is not None else "c10d")
    if backend not in BACKENDS:
        _refuse("--rdzv-backend", f"unknown rendezvous '{backend}': {' or '.join(BACKENDS)}")
    if endpoint is None:
        _refuse("--nnodes", "the nodes meet at --rdzv-endpoint HOST:PORT, which is not given",
                hint="the address of one node (node 0 with --node-rank) and a free port, the same on every node")
    _check_endpoint(endpoint)
    if run_id is not None and not run_id.strip():
        _refuse("--rdzv-id", "the rendezvous id is empty", hint="a name for the run, the same on every node")
    if backend == "static":
        if node_rank is None:
            _refuse("--rdzv-backend", "the static rendezvous needs each node's --node-rank",
                    hint="--node-rank 0 on the node at --rdzv-endpoint, 1, 2, ... on the others")
        if low != high:
            _refuse("--nnodes", f"the static rendezvous has a fixed number of nodes, not a range ({nnodes})",
                    hint="--nnodes N; a range needs the c10d rendezvous (without --node-rank)")
        if node_rank >= high:
            _refuse("--node-rank", f"node rank {node_rank} of {high} nodes: the ranks are 0 to {high - 1}")
    elif node_rank is not None:
        _refuse("--node-rank", "the c10d rendezvous numbers the nodes itself: torchrun ignores --node-rank with it",
                hint="drop --node-rank (every node runs the same command), or drop --rdzv-backend c10d to use the "
                     "static rendezvous with it")
    return Rendezvous(nnodes, endpoint, backend, node_rank, run_id)


def _node_counts(nnodes: str) -> tuple[int, int]:
    match = _NODES.match(nnodes.strip())
    low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
    if not match or low < 1 or high < low:
        _refuse("--nnodes", f"--nnodes takes a number of nodes N or a range MIN:MAX of them, got '{nnodes}'")
    return low, high


def _check_endpoint(endpoint: str) -> None:
    """HOST:PORT, HOST a name or an address ([...] for IPv6, as torchrun writes it), PORT 1 to 65535."""
    host, colon, port = endpoint.rpartition(":")
    if not colon or not host or host in ("[]",):
        _refuse("--rdzv-endpoint", f"'{endpoint}' is not HOST:PORT", hint="node0.example.com:29400, "
                "10.0.0.1:29400 or [fe80::1]:29400: one node's address and a free port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        _refuse("--rdzv-endpoint", f"the port of '{endpoint}' is not a number from 1 to 65535: '{port}'",
                hint="a free TCP port on that node, the same on every node (torchrun's default is 29400)")
