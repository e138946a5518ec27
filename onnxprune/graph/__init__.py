"""Graph layer: an index over the ModelProto plus the channel-label machinery."""

from .channels import ChannelMap, ChannelSpace
from .model_graph import ModelGraph

__all__ = ["ChannelMap", "ChannelSpace", "ModelGraph"]
