"""Publishing: the model card, the Hub push and the demo Space."""

from .card import render, write_card
from .push import PushConfig, PushResult, check_push, push
from .space import build_local_demo, serve

__all__ = ["PushConfig", "PushResult", "build_local_demo", "check_push", "push", "render", "serve", "write_card"]
