"""Fuzzing the batched service: random, invalid and oversized requests (hypothesis).

Every bad input must get a clear answer -- a gRPC status or a per-item / per-request error whose
message names what is wrong -- and the server must keep serving (checked after every example and
with a normal episode at the end). INTERNAL or UNKNOWN would mean the server itself broke.
"""

from __future__ import annotations

import queue
import time

import grpc
import pytest
from fake_backend import KNOBS, fake_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from env_server.client import BatchedClient, check
from env_server.proto import desktop_pb2 as pb
from env_server.proto import desktop_pb2_grpc as pb_grpc
from env_server.server import ServerThread

MAX_ITEMS = 256
GOOD = {pb.OK, pb.INVALID_ARGUMENT, pb.NOT_FOUND, pb.FAILED_PRECONDITION, pb.DEADLINE_EXCEEDED,
        pb.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server():
    cfg = fake_config(workers=1, max_envs=48, max_message_bytes=1 << 20, max_batch_items=MAX_ITEMS,
                      step_timeout_s=2.0)
    with ServerThread(cfg) as st_:
        yield st_


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(server.address)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def known(channel):
    """A few envs (with episodes) that fuzzed requests may hit."""
    batch = _raw_batch(channel)
    ids = [r.env_id for r in pb.Response.FromString(
        batch(pb.Request(create=pb.CreateRequest(count=4)).SerializeToString(), timeout=10)).results]
    batch(pb.Request(reset=pb.ResetRequest(items=[pb.ResetItem(env_id=e) for e in ids]))
          .SerializeToString(), timeout=10)
    return ids


def _raw_batch(channel):
    return channel.unary_unary("/desktop.v1.DesktopEnv/Batch")  # bytes in, bytes out


def _info(channel) -> pb.ServerInfo:
    return pb_grpc.DesktopEnvStub(channel).Info(pb.InfoRequest(), timeout=10)


# ---------------------------------------------------------------- strategies
def _safe_action(text: str) -> bool:
    return not any(k in text for k in KNOBS)


def requests(known_ids: list[int]):
    env_ids = st.one_of(st.sampled_from(known_ids), st.integers(0, 2**64 - 1))
    tasks = st.builds(pb.TaskRef,
                      family=st.one_of(st.sampled_from(["", "count", "invalid"]), st.text(max_size=40))
                      .filter(lambda f: f != "hang"),
                      seed=st.integers(-(2**63), 2**63 - 1),
                      split=st.one_of(st.sampled_from(["", "train", "heldout"]), st.text(max_size=20)))
    actions = st.one_of(st.text(max_size=200),
                        st.sampled_from(["done()", "click(#1)", "\x00\x01", "(((((", ""]),
                        st.integers(1_000, 60_000).map(lambda n: "x" * n))  # long lines
    ops = st.one_of(
        st.none(),
        st.builds(lambda n: {"create": pb.CreateRequest(count=n)},
                  st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1))),
        st.builds(lambda items: {"reset": pb.ResetRequest(items=items)},
                  st.lists(st.builds(pb.ResetItem, env_id=env_ids, task=tasks), max_size=12)),
        st.builds(lambda items: {"step": pb.StepRequest(items=items)},
                  st.lists(st.builds(pb.StepItem, env_id=env_ids,
                                     action=actions.filter(_safe_action)), max_size=12)),
        st.builds(lambda ids: {"close": pb.CloseRequest(env_ids=ids)},
                  st.lists(st.integers(10_000, 2**64 - 1), max_size=12)),  # never the known envs
    )
    return st.builds(
        lambda rid, shot, timeout, op: pb.Request(request_id=rid, screenshot=shot,
                                                  timeout_ms=timeout, **(op or {})),
        st.integers(0, 2**64 - 1),
        st.one_of(st.sampled_from([0, 1, 2]), st.integers(-(2**31), 2**31 - 1)),
        st.one_of(st.just(0), st.integers(1, 2**32 - 1)),
        ops)


def _expected_results(req: pb.Request, max_envs: int) -> int | None:
    which = req.WhichOneof("op")
    if which is None or req.screenshot not in (0, 1, 2):
        return 1
    n = {"create": req.create.count, "reset": len(req.reset.items), "step": len(req.step.items),
         "close": len(req.close.env_ids)}[which]
    return 1 if n > MAX_ITEMS else n


def _check_result(req: pb.Request, r: pb.Result) -> None:
    assert r.request_id == req.request_id
    code, msg = r.status.code, r.status.message
    assert code in GOOD, (code, msg, req)
    if code != pb.OK:
        assert msg, f"no message for code {code}"
    if r.request_error:
        assert code != pb.OK
        if req.WhichOneof("op") is None:
            assert "no operation" in msg
        elif req.screenshot not in (0, 1, 2):
            assert f"unknown screenshot mode {req.screenshot}" in msg
        else:
            assert f"at most {MAX_ITEMS}" in msg
    elif code == pb.NOT_FOUND:
        assert f"env {r.env_id} does not exist" in msg
    elif code == pb.INVALID_ARGUMENT:
        assert "reset failed for task" in msg and "family=" in msg


def _cleanup(batch, results) -> None:
    made = [r.env_id for r in results if r.kind == pb.CREATE and r.status.code == pb.OK]
    if made:
        batch(pb.Request(close=pb.CloseRequest(env_ids=made)).SerializeToString(), timeout=10)


# ---------------------------------------------------------------- tests
@FUZZ
@given(data=st.data())
def test_fuzzed_unary_requests_get_clear_answers(server, channel, known, data):
    req = data.draw(requests(known))
    batch = _raw_batch(channel)
    try:
        response = pb.Response.FromString(batch(req.SerializeToString(), timeout=10))
    except grpc.RpcError as err:
        # a response over the 1 MiB message limit is refused as a whole, with the reason
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert "smaller batches" in err.details()
    else:
        assert len(response.results) == _expected_results(req, 48), req
        for r in response.results:
            _check_result(req, r)
        _cleanup(batch, response.results)
    assert _info(channel).backend == "fake"  # still serving


@FUZZ
@given(blob=st.binary(max_size=2048))
def test_random_bytes_are_rejected_or_parsed(server, channel, blob):
    batch = _raw_batch(channel)
    try:
        req = pb.Request.FromString(blob)
    except Exception:
        req = None
    try:
        response = pb.Response.FromString(batch(blob, timeout=10))
    except grpc.RpcError as err:
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            assert req is None and "not a valid desktop.v1.Request" in err.details()
        return
    assert req is not None  # the bytes happened to be a valid Request
    for r in response.results:
        _check_result(req, r)
    _cleanup(batch, response.results)


def test_stream_survives_a_burst_of_bad_requests(server, known):
    """Garbage, oversized batches and bad fields on one stream; then a good request still works."""
    ch = grpc.insecure_channel(server.address)
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    call = ch.stream_stream("/desktop.v1.DesktopEnv/Stream")(iter(outbox.get, None), timeout=60)
    bad = [
        b"\xff\xff\xff\xff",  # not a protobuf
        pb.Request(request_id=1).SerializeToString(),  # no operation
        pb.Request(request_id=2, screenshot=7, step=pb.StepRequest()).SerializeToString(),
        pb.Request(request_id=3, create=pb.CreateRequest(count=2**32 - 1)).SerializeToString(),
        pb.Request(request_id=4, step=pb.StepRequest(items=[pb.StepItem(env_id=5**20, action="x")]
                                                     * (MAX_ITEMS + 1))).SerializeToString(),
        pb.Request(request_id=5, step=pb.StepRequest(items=[pb.StepItem(env_id=5**20 + i)
                                                            for i in range(200)])).SerializeToString(),
        pb.Request(request_id=6, reset=pb.ResetRequest(items=[pb.ResetItem(
            env_id=known[0], task=pb.TaskRef(family="invalid", seed=3))])).SerializeToString(),
    ]
    for blob in bad:
        outbox.put(blob)
    good = pb.Request(request_id=99, reset=pb.ResetRequest(items=[pb.ResetItem(env_id=known[1])]))
    outbox.put(good.SerializeToString())
    got: dict[int, list[pb.Result]] = {}
    want = {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 200, 6: 1, 99: 1}
    deadline = time.monotonic() + 30
    for raw in call:
        for r in pb.Response.FromString(raw).results:
            got.setdefault(r.request_id, []).append(r)
        if {k: len(v) for k, v in got.items()} == want or time.monotonic() > deadline:
            break
    outbox.put(None)
    ch.close()
    assert {k: len(v) for k, v in got.items()} == want
    assert "not a valid desktop.v1.Request" in got[0][0].status.message
    assert "no operation" in got[1][0].status.message
    assert "unknown screenshot mode 7" in got[2][0].status.message
    assert f"at most {MAX_ITEMS}" in got[3][0].status.message and got[3][0].request_error
    assert f"has {MAX_ITEMS + 1} items" in got[4][0].status.message
    assert all(r.status.code == pb.NOT_FOUND and f"env {r.env_id} does not exist" in r.status.message
               for r in got[5])
    assert got[6][0].status.code == pb.INVALID_ARGUMENT
    assert "family='invalid'" in got[6][0].status.message
    [ok] = got[99]
    assert ok.status.code == pb.OK and ok.observation.instruction


def test_client_fills_request_errors_for_every_item(server):
    with BatchedClient(server.address, timeout=10) as c:
        results = c.step_async([1] * (MAX_ITEMS + 1), ["x"] * (MAX_ITEMS + 1)).result()
        assert len(results) == MAX_ITEMS + 1
        assert all(r.code == grpc.StatusCode.INVALID_ARGUMENT and r.request_error for r in results)
        assert [r.index for r in results] == list(range(MAX_ITEMS + 1))
        with pytest.raises(ValueError, match="unknown screenshot mode 'jpeg'"):
            c.step([1], ["x"], screenshot="jpeg")


def test_server_still_runs_episodes_after_the_fuzzing(server):
    with BatchedClient(server.address, timeout=10) as c:
        ids = c.create(3)
        check(c.reset(ids, [1, 2, 3]))
        results = check(c.step(ids, ["click(#1)", "done()", "x"]))
        assert results[1].done and results[1].reward == 1.0
        check(c.close(ids))
