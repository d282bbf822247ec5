"""A client process killed between rounds and started again continues with its private
parameters and pending personalization intact: its numbers equal an uninterrupted
client's, bit for bit."""

import os
import signal
import subprocess
import sys
import textwrap

import fedpurel

from conftest import max_abs_diff

# Trains round 0 for client 0, saves its local parameters, says so, then waits to be killed.
CHILD = textwrap.dedent(
    """
    import sys
    import fedpurel
    config, state, g0, out = sys.argv[1:5]
    client = fedpurel.Client(config, 0, state)
    params, n, metrics = client.fit(fedpurel.load_parameters(g0), 0)
    fedpurel.save_parameters(out, params)
    print("trained", flush=True)
    sys.stdin.read()
    """
)


def numbers(metrics: dict) -> dict:
    """Metrics without timings, NaN (a group without samples) as None so that equal
    records compare equal."""
    return {k: (None if v != v else v) for k, v in metrics.items() if not k.endswith("seconds")}


def test_killed_client_continues_exactly(tmp_path, run_config):
    g0 = fedpurel.Server(str(run_config)).initial_parameters()
    g0_file = tmp_path / "g0.safetensors"
    fedpurel.save_parameters(str(g0_file), g0)

    # Uninterrupted: round 0, its evaluation (stage 2 against the aggregate), round 1.
    ref = fedpurel.Client(str(run_config), 0, str(tmp_path / "ref"))
    p0, n0, _ = ref.fit(g0, 0)
    g1 = {k: (0.5 * v + 0.5 * g0[k]).astype("float32") for k, v in p0.items()}  # an aggregate
    _, e0 = ref.evaluate(g1, 0)
    p1, _, m1 = ref.fit(g1, 1)
    _, e1 = ref.evaluate(p1, 1)

    # Interrupted: a separate process trains round 0 and is killed (SIGKILL) while idle.
    state = tmp_path / "killed"
    out = tmp_path / "p0.safetensors"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run_config), str(state), str(g0_file), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "trained"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert max_abs_diff(fedpurel.load_parameters(str(out)), p0) == 0.0

    # Restarted: a new client object knows only what the state directory holds.
    again = fedpurel.Client(str(run_config), 0, str(state))
    assert (again.last_round, again.pending_round) == (0, 0)
    assert again.private_parameters() is None  # stage 2 of round 0 has not run yet
    _, f0 = again.evaluate(g1, 0)
    assert numbers(f0) == numbers(e0)
    assert again.pending_round is None
    q1, _, n1 = again.fit(g1, 1)
    assert numbers(n1) == numbers(m1)
    assert max_abs_diff(q1, p1) == 0.0
    _, f1 = again.evaluate(q1, 1)
    assert numbers(f1) == numbers(e1)
    assert max_abs_diff(again.private_parameters(), ref.private_parameters()) == 0.0
    print(f"restarted client: local parameters of round 1 and private parameters equal (max abs diff 0); PM {f1['pm-accuracy']:.2f} %")


def test_bad_parameters_and_another_clients_state_are_refused(tmp_path, run_config):
    client = fedpurel.Client(str(run_config), 1, str(tmp_path / "c1"))
    g0 = fedpurel.Server(str(run_config)).initial_parameters()
    bad = {k: v.astype("float64") for k, v in g0.items()}
    try:
        client.fit(bad, 0)
        raise AssertionError("float64 parameters were accepted")
    except fedpurel.Error as e:
        assert "float32" in str(e)
    client.fit(g0, 0)
    try:
        fedpurel.Client(str(run_config), 2, str(tmp_path / "c1"))
        raise AssertionError("client 2 opened client 1's state")
    except fedpurel.Error as e:
        assert "client 1" in str(e)


def test_every_reply_carries_the_same_keys(tmp_path, run_config):
    """Flower aggregates only metric records with equal keys: a client with or without a
    completed personalization, or without test samples of a group, must reply alike."""
    server = fedpurel.Server(str(run_config))
    g0 = server.initial_parameters()
    clients = [fedpurel.Client(str(run_config), k, str(tmp_path / f"c{k}")) for k in range(server.num_clients)]
    fit_keys, eval_keys = set(), set()
    first = [c.fit(g0, 0) for c in clients]
    fit_keys |= {frozenset(m) for _, _, m in first}
    g1 = first[0][0]
    # Clients 0 and 1 are evaluated (their stage 2 completes there); the others are not.
    eval_keys |= {frozenset(c.evaluate(g1, 0)[1]) for c in clients[:2]}
    second = [c.fit(g1, 1) for c in clients]
    assert [m["stage2-round"] for _, _, m in second] == [-1, -1] + [0] * (len(clients) - 2)
    fit_keys |= {frozenset(m) for _, _, m in second}
    eval_keys |= {frozenset(c.evaluate(second[0][0], 1)[1]) for c in clients}
    assert len(fit_keys) == 1 and len(eval_keys) == 1, (fit_keys, eval_keys)
