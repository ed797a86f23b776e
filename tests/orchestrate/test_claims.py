"""Claims: atomic creation, liveness of the owner, take-over of stale claims, heartbeats."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from repro_lits.orchestrate.claims import ClaimStore, Owner, process_start_time


def exited_process_owner() -> Owner:
    """Return the identity of a process on this host that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    start_time = psutil.Process(process.pid).create_time()
    process.communicate(b"")
    return Owner(host=socket.gethostname(), pid=process.pid, start_time=start_time)


def test_claim_file_names_owner(tmp_path):
    store = ClaimStore(tmp_path)
    claim = store.acquire("seed-000")
    assert claim is not None
    content = json.loads(store.path("seed-000").read_text())
    assert content["pid"] == store.owner.pid
    assert content["host"] == socket.gethostname()
    assert content["token"] == claim.token
    assert content["start_time"] == pytest.approx(process_start_time(store.owner.pid))


def test_live_claim_not_taken(tmp_path):
    first = ClaimStore(tmp_path)
    second = ClaimStore(tmp_path)
    assert first.acquire("seed-000") is not None
    assert second.acquire("seed-000") is None


def test_dead_owner_claim_taken_over(tmp_path):
    dead = ClaimStore(tmp_path, owner=exited_process_owner())
    stale = dead.acquire("seed-000")
    assert stale is not None

    claim = ClaimStore(tmp_path).acquire("seed-000")
    assert claim is not None
    assert claim.token != stale.token
    assert json.loads((tmp_path / "seed-000.json").read_text())["token"] == claim.token


def test_reused_pid_claim_taken_over(tmp_path):
    this = Owner.current()
    impostor = Owner(host=this.host, pid=this.pid, start_time=this.start_time - 1000.0)
    assert ClaimStore(tmp_path, owner=impostor).acquire("seed-000") is not None
    assert ClaimStore(tmp_path).acquire("seed-000") is not None


def test_remote_claim_stale_after_heartbeat_timeout(tmp_path):
    remote = Owner(host="other-node.invalid", pid=12345, start_time=1.0)
    ClaimStore(tmp_path, stale_after_s=60.0, owner=remote).acquire("seed-000")
    local = ClaimStore(tmp_path, stale_after_s=60.0)
    assert local.acquire("seed-000") is None

    path = local.path("seed-000")
    content = json.loads(path.read_text())
    content["heartbeat_at"] = time.time() - 61.0
    path.write_text(json.dumps(content))
    assert local.acquire("seed-000") is not None


def test_unreadable_claim_taken_over(tmp_path):
    (tmp_path / "seed-000.json").write_text("")
    assert ClaimStore(tmp_path).acquire("seed-000") is not None


def test_release_keeps_claim_taken_over(tmp_path):
    dead = ClaimStore(tmp_path, owner=exited_process_owner())
    stale = dead.acquire("seed-000")
    current = ClaimStore(tmp_path).acquire("seed-000")
    dead.release(stale)
    assert json.loads((tmp_path / "seed-000.json").read_text())["token"] == current.token

    ClaimStore(tmp_path).release(current)
    assert not (tmp_path / "seed-000.json").exists()


def test_heartbeat_refreshes_and_reports_lost(tmp_path):
    store = ClaimStore(tmp_path)
    kept = store.acquire("seed-000")
    lost = store.acquire("seed-001")
    before = json.loads(store.path("seed-000").read_text())["heartbeat_at"]
    store.path("seed-001").unlink()
    time.sleep(0.01)

    assert store.heartbeat([kept, lost]) == [lost]
    assert json.loads(store.path("seed-000").read_text())["heartbeat_at"] > before


def test_live_tokens_exclude_dead_owners(tmp_path):
    alive = ClaimStore(tmp_path).acquire("seed-000")
    ClaimStore(tmp_path, owner=exited_process_owner()).acquire("seed-001")
    assert ClaimStore(tmp_path).live_tokens() == {alive.token}


RACE_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from repro_lits.orchestrate.claims import ClaimStore
    claims_dir, go = Path(sys.argv[1]), Path(sys.argv[2])
    store = ClaimStore(claims_dir)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    print("won" if store.acquire("seed-000") is not None else "lost", flush=True)
    sys.stdin.read()  # stay alive, so that the winner's claim stays live until every racer has tried
""")


@pytest.mark.parametrize("stale_first", [False, True], ids=["fresh", "stale"])
def test_racing_processes_one_winner(tmp_path, stale_first):
    claims_dir = tmp_path / "claims"
    if stale_first:
        ClaimStore(claims_dir, owner=exited_process_owner()).acquire("seed-000")
    go = tmp_path / "go"
    racers = [
        subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(claims_dir), str(go)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    go.touch()
    results = [racer.stdout.readline().strip() for racer in racers]
    for racer in racers:
        racer.communicate("")

    assert sorted(results) == ["lost", "lost", "lost", "won"]
