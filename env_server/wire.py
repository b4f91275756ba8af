"""Conversions between backend observations, the worker wire tuples and ``desktop.v1`` protos."""

from __future__ import annotations

import io

import numpy as np

import env_server.proto  # noqa: F401  (generates the modules in a source checkout)
from env_server.ipc import Shot, WireObs
from env_server.proto import desktop_pb2 as pb
from env_server.types import Observation

RESULTS_TAG = b"\x0a"  # field 1 (results), wire type 2: a Response is these entries back to back


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def pack_screenshot(image: np.ndarray | None, shot: int) -> tuple[int, int, int, bytes] | None:
    if image is None or shot == Shot.NONE:
        return None
    h, w = image.shape[:2]
    if shot == Shot.PNG:
        return h, w, Shot.PNG, encode_png(image)
    return h, w, Shot.RAW, np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def unpack_screenshot(shot: tuple[int, int, int, bytes] | None) -> np.ndarray | None:
    if shot is None:
        return None
    h, w, enc, data = shot
    if enc == Shot.PNG:
        return decode_png(data)
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)


def to_wire(obs: Observation, shot: int) -> WireObs:
    return WireObs(obs.instruction, obs.a11y, float(obs.reward), bool(obs.terminated),
                   bool(obs.truncated), obs.error, obs.task_id, dict(obs.info),
                   pack_screenshot(obs.screenshot, shot))


def truncated_wire(message: str, cause: str) -> WireObs:
    """The observation of an episode the server had to end (``truncated``, no a11y, ``error`` says why).

    ``cause`` goes to ``info["truncated_by"]``: ``worker_lost``, ``deadline``, ``server_lost``.
    """
    return WireObs("", "", 0.0, False, True, message, "", {"truncated_by": cause}, None)


def observation_proto(obs: WireObs) -> pb.Observation:
    msg = pb.Observation(instruction=obs.instruction, a11y=obs.a11y, reward=obs.reward,
                         terminated=obs.terminated, truncated=obs.truncated, error=obs.error,
                         task_id=obs.task_id, info=obs.info)
    if obs.screenshot is not None:
        h, w, enc, data = obs.screenshot
        msg.screenshot.CopyFrom(pb.Image(height=h, width=w, channels=3, encoding=enc, data=data))
    return msg


def result_bytes(meta: tuple[int, int], kind: int, env_id: int, episode_id: int, step_index: int,
                 code: int = 0, message: str = "", obs: WireObs | None = None,
                 request_error: bool = False) -> bytes:
    """A serialized ``Result``."""
    msg = pb.Result(request_id=meta[0], index=meta[1], kind=kind, env_id=env_id,
                    episode_id=episode_id, step_index=step_index, request_error=request_error)
    if code or message:
        msg.status.code = code
        msg.status.message = message
    if obs is not None:
        msg.observation.CopyFrom(observation_proto(obs))
    return msg.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def framed_result(result: bytes) -> bytes:
    """One ``results`` entry of a Response (tag, length, bytes); join entries to build a Response."""
    return RESULTS_TAG + _varint(len(result)) + result


def observation_from_proto(msg: pb.Observation, step: int) -> Observation:
    shot = None
    if msg.HasField("screenshot"):
        img = msg.screenshot
        shot = unpack_screenshot((img.height, img.width, img.encoding, img.data))
    return Observation(instruction=msg.instruction, a11y=msg.a11y, reward=msg.reward,
                       terminated=msg.terminated, truncated=msg.truncated, error=msg.error,
                       step=step, task_id=msg.task_id, screenshot=shot, info=dict(msg.info))
