"""deploy.stack.process: the ports tests and side-by-side stacks take, and what a server that exits says."""

import pytest

from deploy.stack.process import SERVER_PORTS, ManagedProcess, StackError, free_port


def test_free_ports_are_below_the_ephemeral_range_and_never_handed_out_twice():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(p in SERVER_PORTS and p < 32768 for p in ports)


def test_a_server_that_exits_during_start_up_says_why_in_the_error(tmp_path):
    server = ManagedProcess("failing", tmp_path / "failing")
    server.start(["sh", "-c", "echo starting; echo 'ERROR Address already in use' ; echo bye; exit 1"])
    with pytest.raises(StackError, match="exited during start-up \\(ERROR Address already in use\\); see"):
        server.wait_ready(lambda: False, timeout_s=10)


def test_the_reason_given_is_this_starts_not_an_earlier_runs(tmp_path):
    server = ManagedProcess("restarted", tmp_path / "restarted")
    server.workdir.mkdir(parents=True)
    server.log_file.write_text("ERROR an earlier run's shutdown\n")  # the log is appended across starts
    server.start(["sh", "-c", "echo 'this start: no config'; exit 1"])
    with pytest.raises(StackError, match="exited during start-up \\(this start: no config\\); see"):
        server.wait_ready(lambda: False, timeout_s=10)
