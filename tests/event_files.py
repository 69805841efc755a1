"""Reads tensorboardX event files back, for tests.

The venv has tensorboardX's protos but no TensorBoard reader, so the
TFRecord framing (length, its CRC, the serialised Event, its CRC) is read
here.
"""

import struct

from tensorboardX.proto import event_pb2


def read_events(path: str) -> list[event_pb2.Event]:
  """Every Event of the event file at `path`, in order."""
  with open(path, 'rb') as f:
    data = f.read()
  events, offset = [], 0
  while offset < len(data):
    length, = struct.unpack('<Q', data[offset:offset + 8])
    events.append(event_pb2.Event.FromString(
        data[offset + 12:offset + 12 + length]))
    offset += 12 + length + 4
  return events
