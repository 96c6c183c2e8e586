"""`specc train --nnodes`: the multi-node flags are checked before anything starts (one line on the flag, exit 2),
become torchrun's rendezvous arguments, never reach the workers, and a rank that cannot see the run directory rank 0
started (another machine without a shared filesystem) says what it sees. The two-node runs themselves, simulated on
this machine, are in test_train.py (`test_two_nodes_match_two_processes_on_one`)."""

import json

import pytest

from conftest import SPECS, specc_here
from specdsl.cli import LAUNCHER_OPTIONS, _without_option
from specdsl.errors import SpecError
from specdsl.rendezvous import Rendezvous, check

NANO = str(SPECS / "nanogpt-shakespeare.spec")
TWO = ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "head:29400"]


@pytest.mark.parametrize("args, flag, says", [
    (["--nnodes", "2", "--rdzv-endpoint", "head:29400"], "--nnodes", "--nproc N with --nnodes"),
    (["--node-rank", "1"], "--node-rank", "--nnodes is not given"),
    (["--nproc", "2", "--rdzv-endpoint", "head:29400"], "--rdzv-endpoint", "--nnodes is not given"),
    (["--rdzv-id", "job"], "--rdzv-id", "--nnodes is not given"),
    (["--nproc", "1", "--nnodes", "two", "--rdzv-endpoint", "head:29400"], "--nnodes", "got 'two'"),
    (["--nproc", "1", "--nnodes", "0", "--rdzv-endpoint", "head:29400"], "--nnodes", "got '0'"),
    (["--nproc", "1", "--nnodes", "4:2", "--rdzv-endpoint", "head:29400"], "--nnodes", "got '4:2'"),
    (["--nproc", "1", "--nnodes", "2"], "--nnodes", "--rdzv-endpoint HOST:PORT, which is not given"),
    (TWO[:4] + ["--rdzv-endpoint", "head"], "--rdzv-endpoint", "'head' is not HOST:PORT"),
    (TWO[:4] + ["--rdzv-endpoint", "head:port"], "--rdzv-endpoint", "not a number from 1 to 65535: 'port'"),
    (TWO[:4] + ["--rdzv-endpoint", "head:65536"], "--rdzv-endpoint", "not a number from 1 to 65535"),
    (TWO + ["--node-rank", "2"], "--node-rank", "the ranks are 0 to 1"),
    (TWO + ["--node-rank", "1", "--rdzv-backend", "c10d"], "--node-rank", "torchrun ignores --node-rank"),
    (TWO + ["--rdzv-backend", "static"], "--rdzv-backend", "needs each node's --node-rank"),
    (TWO + ["--rdzv-backend", "etcd"], "--rdzv-backend", "unknown rendezvous 'etcd'"),
    (TWO + ["--rdzv-id", " "], "--rdzv-id", "the rendezvous id is empty"),
    (["--nproc", "1", "--nnodes", "1:2", "--rdzv-endpoint", "head:1", "--node-rank", "0"], "--nnodes",
     "fixed number of nodes"),
])
def test_mistakes_in_the_flags_are_one_line_on_the_flag_before_anything_starts(tmp_path, args, flag, says):
    done = specc_here("train", NANO, "--out", tmp_path / "r", *args)
    assert done.returncode == 2 and done.stderr.startswith(f"{flag}: error: "), done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_the_flags_become_torchrun_s_rendezvous():
    c10d = check(1, "2:4", None, "head:29400", "job-7", None)
    assert c10d == Rendezvous("2:4", "head:29400", "c10d", None, "job-7")
    assert c10d.torchrun_args() == ["--nnodes=2:4", "--rdzv_backend=c10d", "--rdzv_endpoint=head:29400",
                                    "--rdzv_id=job-7"]
    static = check(8, "2", 1, "[fe80::1]:29500", None, None)  # --node-rank chooses the static rendezvous
    assert static.torchrun_args() == ["--nnodes=2", "--rdzv_backend=static", "--rdzv_endpoint=[fe80::1]:29500",
                                      "--node_rank=1"]
    assert check(2, None, None, None, None, None) is None and check(None, None, None, None, None, None) is None


def test_the_workers_get_none_of_the_launcher_s_options():
    argv = ["train", NANO, "--nproc", "2", "--nnodes=2", "--node-rank", "0", "--rdzv-endpoint", "h:1",
            "--rdzv-id=x", "--rdzv-backend", "static", "--steps", "3", "--out", "r"]
    for name in LAUNCHER_OPTIONS:
        argv = _without_option(argv, name)
    assert argv == ["train", NANO, "--steps", "3", "--out", "r"]


def test_a_node_that_cannot_see_the_run_says_what_it_sees(tmp_path):
    from specdsl.train import rundir
    from specdsl.train.followers import SHARED_HINT, RunSeen, as_error
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"format": 1}')
    seen = RunSeen(str(run), rundir.sha256(b'{"format": 1}'), None)
    assert seen.problem() is None
    assert "no folder" in RunSeen(str(tmp_path / "elsewhere"), seen.record_sha256, None).problem()
    assert "not the one rank 0 wrote" in RunSeen(str(run), "0" * 64, None).problem()
    (run / "last").mkdir()
    (run / "last" / "trainer.json").write_text(json.dumps({"step": 4}))
    assert RunSeen(str(run), seen.record_sha256, 4).problem() is None
    assert "is of step 4; rank 0 resumes from step 6" in RunSeen(str(run), seen.record_sha256, 6).problem()
    (run / "run.json").unlink()
    with pytest.raises(SpecError, match="error: cannot see the run directory rank 0 started: .* holds no run") as e:
        seen.wait(wait_s=0)
    assert e.value.span.file == "--out" and e.value.hint == SHARED_HINT
    said = as_error((8, "node1", e.value.message, "--out", e.value.hint))  # by rank 0, on its node
    assert str(said).startswith("--out: error: rank 8 (on node1): cannot see the run directory rank 0 started: ")


@pytest.mark.parametrize("report, elsewhere, says", [
    (None, True, ""),  # a node without rank 0, after a run that succeeded: quiet
    ((2, ""), True, "error: the run stopped; the node that runs rank 0 says why\n"),
    ((130, ""), True, "continue with --resume, on every node"),
    ((130, ""), False, ""),  # rank 0's node: rank 0 said it already
    ((2, "--out: error: x"), False, "--out: error: x\n"),
])
def test_each_node_says_once_how_the_run_ended(capsys, report, elsewhere, says):
    from specdsl.launch import _outcome
    code = _outcome(0, report, [], ["I0101 00:00:00.000 1 agent.py:1] torchrun's own line"],
                    Rendezvous("2", "h:1", "static", 1), elsewhere)
    assert code == (report or (0,))[0]
    err = capsys.readouterr().err
    assert says in err and (says or err == "")


def test_a_successful_node_hides_torchs_cpp_warnings_and_keeps_the_workers(capsys):
    """CI saw this on the node without rank 0 after a run that succeeded: its agent's store client warns, with a C++
    stack trace, when rank 0's node closes the store. That is torch's noise; a worker's own warning is shown."""
    from specdsl.launch import _outcome
    log = ["[W1202 05:49:35.272614317 TCPStore.cpp:138] [c10d] recvValueWithTimeout failed on SocketImpl(fd=3): "
           "Failed to recv, got 0 bytes. Connection was likely closed. Did the remote server shutdown or crash?",
           "Exception raised from recvBytes at /__w/pytorch/pytorch/torch/csrc/distributed/c10d/Utils.hpp:787 "
           "(most recent call first):",
           "frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x9d (0x7fe331379b8d in libc10.so)",
           "<omitting python frames>",
           "frame #34: _start + 0x21 (0x5605e7918081 in /venv/bin/python3)",
           "",
           "[rank1]:[W1202 05:49:36.000000000 ProcessGroupGloo.cpp:1] Warning: a rank's own C++ warning",
           "I0101 00:00:00.000 1 agent.py:1] torchrun's own line",
           "UserWarning: the worker's own warning"]
    assert _outcome(0, None, [], log, Rendezvous("2", "h:1", "static", 1), True) == 0
    assert capsys.readouterr().err == "UserWarning: the worker's own warning\n"


@pytest.mark.parametrize("last", ["torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError",
                                  "torch.distributed.DistNetworkError: The client socket has timed out after 600000ms "
                                  "while trying to connect to (head, 29400)."])
def test_nodes_that_never_met_say_so_in_two_lines(capsys, last):
    """torchrun's traceback when the rendezvous timed out (c10d) or the store was out of reach (static), as it
    prints them: only its last line is shown."""
    from specdsl.launch import _outcome
    log = ["Traceback (most recent call last):", "frame #2: c10::DistNetworkError::DistNetworkError(...)", last]
    assert _outcome(1, None, [], log, Rendezvous("2", "head:29400", "c10d"), True) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: the nodes did not meet at head:29400: {last}" and err[1].startswith("hint: start")
    assert len(err) == 2


def test_a_process_that_vanished_is_said_as_such_not_as_a_bug_of_specc():
    """What gloo raised on node 0 when node 1's processes were killed (SIGKILL) mid-run, measured: one paragraph
    naming the checkpoint to resume from (the CLI exits 1: a failure that is not the input's), where it was
    `specc: internal error ... this is a bug in specc`."""
    pytest.importorskip("torch")
    from types import SimpleNamespace

    from specdsl.train.loop import PeerLost, _peer_lost
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:5019: Connection reset by peer. "
                        "This is typically caused by a remote worker hanging")
    with pytest.raises(PeerLost, match=r"(?s)another process of this run stopped .* Connection reset by peer.*"
                                       r"the last checkpoint \(step 200\) is whole; continue with --resume"):
        with _peer_lost(2, SimpleNamespace(saved_step=200)):
            raise gone
    for world, error in ((1, gone), (2, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))):
        with pytest.raises(RuntimeError) as kept:  # one process, or another error: as it was
            with _peer_lost(world, SimpleNamespace(saved_step=0)):
                raise error
        assert kept.value is error

